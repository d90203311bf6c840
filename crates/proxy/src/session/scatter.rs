//! Statements for several shards: COPY FROM STDIN split by key, and the scatter/gather of
//! fan-out statements (simple and extended protocol) over one connection per shard.

use super::*;

impl Session {
    /// A `COPY ... FROM STDIN` into a sharded or reference table (without a shard hint):
    /// its rows are split by shard.
    pub(super) fn copy_target(
        &self,
        sql: &[u8],
    ) -> Result<Option<crate::copyin::CopyTarget>, ProxyError> {
        // A quick look first: this runs for every simple query.
        let head = sql.trim_ascii_start();
        let is_copy = head
            .get(..4)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"copy"))
            || ((head.starts_with(b"/*") || head.starts_with(b"--")) && first_word(sql) == "copy");
        if !is_copy {
            return Ok(None);
        }
        if !self.routes() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(sql);
        let Ok(mut hints) = router::hints::parse_hints(&text) else {
            return Ok(None);
        };
        self.merge_session_hints(&mut hints);
        if hints.shard.is_some() || hints.key.is_some() {
            return Ok(None);
        }
        let config = self.proxy.config.load();
        let Some(db) = config.databases.get(&self.client.database) else {
            return Ok(None);
        };
        let Some(Ok(stmt)) = router::copy::parse_copy(&text) else {
            return Ok(None);
        };
        let several = text.trim_end().trim_end_matches(';').contains(';')
            && router::lexer::split_statements(&text).len() > 1;
        if !stmt.from || !stmt.client_side || stmt.query {
            return Ok(None);
        }
        let map = router::plan::map_for(db, &stmt.table).map(|(m, c)| (m.clone(), c.to_vec()));
        if map.is_none() && !db.reference_tables.contains(&stmt.table) {
            return Ok(None);
        }
        if several {
            return Err(refuse(
                "a COPY into a sharded or reference table must be a query of its own".into(),
                "Send the COPY without other statements.",
            ));
        }
        if stmt.format.binary {
            return Err(refuse(
                "binary COPY data cannot be split by shard".into(),
                "Use text or CSV format, or copy each shard's rows with /* shardgate: shard=NAME */.",
            ));
        }
        let ascii_keys = !self.client_utf8()
            || stmt
                .format
                .encoding
                .as_deref()
                .is_some_and(|e| !is_utf8_name(e));
        Ok(Some(crate::copyin::CopyTarget {
            shards: db.shards.iter().map(|(n, _)| n.to_owned()).collect(),
            stmt,
            map,
            ascii_keys,
        }))
    }

    /// Runs a COPY FROM STDIN on every shard, the rows split between them.
    pub(super) async fn copy_in(
        &mut self,
        frame: &Frame,
        target: crate::copyin::CopyTarget,
    ) -> Result<(), End> {
        let mut legs = match self.take_legs(&target.shards).await? {
            Ok(l) => l,
            Err(e) => return self.simple_error(e),
        };
        let in_tx = legs.in_tx;
        let result = Box::pin(crate::copyin::run(
            &mut legs.conns,
            &target,
            frame.raw(),
            &mut self.client.conn,
            &mut self.wbuf,
            &self.client.database,
            in_tx,
        ))
        .await;
        match result {
            Ok((_, status)) => {
                self.put_back(legs);
                if in_tx && status == b'E' && self.server.is_some() {
                    // The attached server's transaction fails too, as PostgreSQL's would.
                    self.abort_server_transaction(true);
                }
                self.tx_status = status;
                self.error_since_ready = false;
                Ok(())
            }
            Err(fanout::Failure::ClientGone) => {
                self.lose_legs(legs);
                Err(End::ClientGone)
            }
            Err(fanout::Failure::Server(why)) => {
                tracing::warn!(client = self.client.id, why = %why, "COPY over several shards failed");
                self.lose_legs(legs);
                self.simple_error(fanout::failure_error(&why))
            }
        }
    }

    /// A simple Query for several shards.
    pub(super) async fn simple_fanout(&mut self, frame: &Frame, f: Box<Fanout>) -> Result<(), End> {
        if let Some(input) = f.merge.as_deref() {
            return match self.run_merge(input, &f.shards, None).await? {
                Ok(outcome) => {
                    self.tx_status = outcome.status;
                    self.error_since_ready = false;
                    Ok(())
                }
                Err(e) => self.simple_error(e),
            };
        }
        let requests: Vec<Bytes> = match &f.parts {
            None => vec![frame.raw().clone(); f.shards.len()],
            Some(parts) => parts
                .iter()
                .map(|p| {
                    let mut b = BytesMut::with_capacity(p.text.len() + 6);
                    messages::query(&mut b, &p.text);
                    b.freeze()
                })
                .collect(),
        };
        let merge = fanout::Merge {
            drop_parse_complete: false,
            drop_bind_complete: false,
            sum: f.sum,
            ready: true,
            copy_header: f.copy_header,
        };
        match self.fan_out(&f, requests, merge).await? {
            Ok(outcome) => {
                self.tx_status = outcome.status;
                self.error_since_ready = false;
                Ok(())
            }
            Err(e) => self.simple_error(e),
        }
    }

    /// The Execute of a statement for several shards: every shard runs it now.
    pub(super) async fn fanout_execute(&mut self, frame: Frame) -> Result<(), End> {
        let (_, max_rows) = messages::execute_view(&frame).map_err(malformed)?;
        if max_rows != 0 {
            self.pending_fanout = None;
            return self.extended_error(
                ProxyError::error(
                    "0A000",
                    "shardgate cannot fetch a statement that runs on several shards in batches of rows",
                )
                .with_hint("Execute it with no row limit, or use a cursor on each shard."),
            );
        }
        let in_tx = self.tx_status != b'I' && self.may_fan_out_in_tx();
        if let Some(p) = self.pending_fanout.as_mut() {
            p.messages.extend_from_slice(frame.raw());
            if p.fanout.write && !in_tx {
                // A write commits on every shard at the batch's Sync, so that nothing else of
                // the batch can fail after it has committed. (Inside a transaction over
                // several shards it runs now, in the transaction.)
                p.executed = true;
                return Ok(());
            }
        }
        self.run_pending_fanout().await
    }

    /// Runs the collected statement for several shards: each gets an unnamed Parse of its
    /// text, the client's Bind and what followed, and a Sync of its own.
    pub(super) async fn run_pending_fanout(&mut self) -> Result<(), End> {
        let Some(p) = self.pending_fanout.take() else {
            return Ok(());
        };
        if let Err(e) = self.settle().await {
            return Err(End::fatal(e));
        }
        if self.error_since_ready {
            // An earlier statement of this batch failed: PostgreSQL skips the rest of it.
            self.skip_until_sync = true;
            return Ok(());
        }
        if self.unsynced && !(self.tx_status != b'I' && self.may_fan_out_in_tx()) {
            return self.extended_error(
                ProxyError::error(
                    "0A000",
                    "shardgate cannot run a statement on several shards in the same batch as statements already run on one: they would not share the batch's transaction",
                )
                .with_hint("Send a Sync before the statement that runs on several shards."),
            );
        }
        if let Some(input) = p.fanout.merge.as_deref() {
            // What the client sent after its Bind: a Describe of the portal, the Execute.
            let (mut describe, mut execute) = (false, false);
            let mut at = 0;
            while let Some(len) = p.messages.get(at + 1..at + 5) {
                match p.messages[at] {
                    tag::DESCRIBE => describe = true,
                    tag::EXECUTE => execute = true,
                    _ => {}
                }
                at += 1 + i32::from_be_bytes([len[0], len[1], len[2], len[3]]).max(4) as usize;
            }
            let ext = super::merge::Extended {
                param_types: &p.param_types,
                bind_rest: &p.bind_rest,
                describe,
                execute,
                bind_complete: !p.bind_answered,
            };
            return match self.run_merge(input, &p.fanout.shards, Some(ext)).await? {
                Ok(outcome) if outcome.error => {
                    self.error_since_ready = true;
                    self.skip_until_sync = true;
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => self.extended_error(e),
            };
        }
        let mut requests: Vec<Bytes> = Vec::with_capacity(p.fanout.shards.len());
        for i in 0..p.fanout.shards.len() {
            let mut b =
                BytesMut::with_capacity(p.query.len() + p.bind_rest.len() + p.messages.len() + 64);
            match p.fanout.parts.as_ref().map(|parts| &parts[i]) {
                None => {
                    messages::parse(&mut b, b"", &p.query, &p.param_types);
                    messages::bind(&mut b, &p.portal, b"", &p.bind_rest);
                }
                Some(part) => {
                    let types = fanout::select_param_types(&p.param_types, &part.params);
                    let Some(values) = fanout::select_bind_values(&p.bind_rest, &part.params)
                    else {
                        return Err(malformed(wire::frame::Malformed("Bind parameters")));
                    };
                    messages::parse(&mut b, b"", part.text.as_bytes(), &types);
                    messages::bind(&mut b, &p.portal, b"", &values);
                }
            }
            b.extend_from_slice(&p.messages);
            messages::empty_message(&mut b, tag::SYNC);
            requests.push(b.freeze());
        }
        let merge = fanout::Merge {
            drop_parse_complete: true,
            drop_bind_complete: p.bind_answered,
            sum: p.fanout.sum,
            ready: false,
            copy_header: p.fanout.copy_header,
        };
        match self.fan_out(&p.fanout, requests, merge).await? {
            Ok(outcome) if outcome.error => {
                self.error_since_ready = true;
                self.skip_until_sync = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => self.extended_error(e),
        }
    }

    /// Runs a statement on several shards (`requests[i]` on `f.shards[i]`) and merges their
    /// answers to the client. What stops it before anything ran comes back as the inner
    /// error, for the caller to report in its protocol's way.
    pub(super) async fn fan_out(
        &mut self,
        f: &Fanout,
        requests: Vec<Bytes>,
        merge: fanout::Merge,
    ) -> Result<Result<fanout::Outcome, ProxyError>, End> {
        let mut legs = match self.take_legs(&f.shards).await? {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let ready = merge.ready;
        let db = &self.client.database;
        let result = if legs.in_tx || f.write {
            // Inside the client's transaction: no transaction of its own, and an error
            // anywhere aborts the client's. Outside one, a write runs in a transaction of its
            // own on each shard: all commit (two-phase), or none does.
            let in_tx = legs.in_tx;
            let merge = fanout::Merge {
                ready: false,
                ..merge
            };
            let out = &mut self.wbuf;
            let stream = &mut self.client.conn.stream;
            Box::pin(async {
                if !in_tx {
                    fanout::begin_all(&mut legs.conns, &f.shards).await?;
                }
                let mut outcome =
                    fanout::run(&mut legs.conns, &f.shards, &requests, stream, out, merge).await?;
                if in_tx {
                    outcome.status = if outcome.error { b'E' } else { b'T' };
                } else if outcome.error {
                    fanout::end_all(&mut legs.conns, "ROLLBACK", &f.shards).await?;
                    outcome.status = b'I';
                } else {
                    let done = crate::twophase::commit_all(db, &mut legs.conns, &f.shards).await;
                    if let Err(e) = done.result {
                        e.encode(out);
                        outcome.error = true;
                    }
                    if done.clean.iter().any(|c| !c) {
                        return Err(fanout::Failure::Server(
                            "a shard's connection was lost while the write committed".into(),
                        ));
                    }
                    outcome.status = b'I';
                }
                if ready {
                    messages::ready_for_query(out, outcome.status);
                }
                Ok(outcome)
            })
            .await
        } else {
            Box::pin(fanout::run(
                &mut legs.conns,
                &f.shards,
                &requests,
                &mut self.client.conn.stream,
                &mut self.wbuf,
                merge,
            ))
            .await
        };
        match result {
            Ok(outcome) if outcome.status == b'I' || legs.in_tx => {
                let failed = legs.in_tx && outcome.error;
                self.put_back(legs);
                if failed && self.server.is_some() {
                    // The attached server's transaction fails too, as PostgreSQL's would.
                    self.abort_server_transaction(true);
                }
                Ok(Ok(outcome))
            }
            Ok(_) => {
                self.lose_legs(legs);
                Ok(Err(fanout::failure_error(
                    "a shard left a transaction open",
                )))
            }
            Err(fanout::Failure::ClientGone) => {
                self.lose_legs(legs);
                Err(End::ClientGone)
            }
            Err(fanout::Failure::Server(why)) => {
                tracing::warn!(client = self.client.id, why = %why, "fan-out failed");
                self.lose_legs(legs);
                Ok(Err(fanout::failure_error(&why)))
            }
        }
    }

    /// One idle connection per shard of `shards`, with the client's settings, for a
    /// statement outside any transaction: the session's own for its shard (and, in session
    /// pooling, its parked ones), the others from their pools, taken in shard order. A
    /// cancel from the client reaches all of them.
    pub(super) async fn take_legs(
        &mut self,
        shards: &[String],
    ) -> Result<Result<Legs, ProxyError>, End> {
        if let Err(e) = self.settle().await {
            return Err(End::fatal(e));
        }
        if self.tx_status != b'I' && self.may_fan_out_in_tx() {
            return self.take_tx_legs(shards).await;
        }
        if self.tx_status != b'I' {
            return Ok(Err(ProxyError::error(
                "0A000",
                format!(
                    "shardgate cannot run this statement in a transaction block: it needs shards {}, and a transaction runs on one shard until two-phase commit is available",
                    shards.join(", ")
                ),
            )
            .with_hint("Run it outside the transaction block, or name one shard: /* shardgate: shard=NAME */.")));
        }
        if self.server.is_none() {
            self.wait_if_paused().await;
        }
        self.proxy.stats.fanout(&self.client.database);
        self.entry.set_state(crate::stats::ClientState::Active);
        let own_shard = match (&self.server, &self.server_shard) {
            (None, _) => None,
            (Some(_), Some(s)) => Some(s.to_string()),
            (Some(_), None) => Some(self.home_shard()),
        };
        let mut legs = Legs::new(shards, false);
        for shard in shards {
            if self.take_own_leg(&mut legs, own_shard.as_deref(), shard) {
                continue;
            }
            if let Some(conn) = self.unpark(shard) {
                legs.parked[legs.conns.len()] = Some(shard.as_str().into());
                legs.conns.push(conn);
                continue;
            }
            // A read outside a transaction reads each shard's fit replica, if it has one.
            let pool = match self.replica_for(shard) {
                Some(p) => Ok(p),
                None => self.shard_pool(shard),
            };
            let conn = match pool {
                Ok(pool) => attach::checkout(&pool, &self.client).await,
                Err(e) => Err(e),
            };
            match conn {
                Ok(c) => legs.conns.push(c),
                Err(e) => {
                    self.put_back(legs);
                    return Ok(Err(e));
                }
            }
        }
        for leg in legs.conns.iter_mut() {
            if let Err(e) = Box::pin(sync_conn(leg, &mut self.client, b'I')).await {
                self.lose_legs(legs);
                return Ok(Err(e));
            }
        }
        self.cancels_reach(&legs);
        Ok(Ok(legs))
    }

    /// The attached server as the leg of `shard`, when it is that shard's (`own_shard`).
    pub(super) fn take_own_leg(
        &mut self,
        legs: &mut Legs,
        own_shard: Option<&str>,
        shard: &str,
    ) -> bool {
        if legs.own.is_some() || own_shard != Some(shard) {
            return false;
        }
        let Some(conn) = self.server.take() else {
            return false;
        };
        legs.own = Some(legs.conns.len());
        legs.conns.push(conn);
        true
    }

    /// A cancel from the client reaches every leg.
    pub(super) fn cancels_reach(&self, legs: &Legs) {
        crate::cancel::point_many(
            &self.client.cancel_slot,
            legs.conns.iter().map(|l| CancelTarget {
                addr: l.addr,
                backend_pid: l.backend_pid,
                secret_key: l.secret_key,
            }),
        );
    }

    /// Idle fan-out connections go back: the session's own to the session, parked ones to
    /// their place, the rest to their pools.
    pub(super) fn put_back(&mut self, legs: Legs) {
        crate::cancel::point(&self.client.cancel_slot, None);
        let Legs {
            conns,
            own,
            mut parked,
            shards,
            in_tx,
        } = legs;
        for (i, leg) in conns.into_iter().enumerate() {
            if Some(i) == own {
                self.attach(leg);
            } else if in_tx {
                self.cross_mut()
                    .expect("a transaction over several shards")
                    .parked
                    .push((shards[i].clone(), leg));
            } else if let Some(shard) = parked[i].take() {
                self.shard_pools
                    .get_or_insert_with(Default::default)
                    .parked
                    .push((shard, leg));
            } else if self.client.mode == PoolMode::Session {
                // Session pooling: what the statement left in the server session (a
                // temporary table, a setting) stays the client's.
                self.shard_pools
                    .get_or_insert_with(Default::default)
                    .parked
                    .push((shards[i].clone(), leg));
            } else {
                leg.release();
            }
        }
    }

    /// Fan-out connections in an unknown state are closed, the session's own included.
    /// Inside a transaction over several shards, that ends the transaction: the rest of
    /// its participants are rolled back and closed, and the session ends.
    pub(super) fn lose_legs(&mut self, legs: Legs) {
        crate::cancel::point(&self.client.cancel_slot, None);
        let own = legs.own;
        let in_tx = legs.in_tx;
        drop(legs);
        if own.is_some() || in_tx {
            self.drop_server();
        }
        if in_tx {
            // Dropped connections roll their transactions back; the client's transaction is
            // gone, so its session ends once the error is out.
            drop(self.take_cross());
            self.terminated = true;
        }
    }

    /// Waits until everything sent to the attached server is answered (the answers go to
    /// the client as usual), so that the next statement starts from a quiet session; in
    /// transaction pooling an idle server goes back to its pool. Errors are fatal: the
    /// server or the client is gone, or the server is out of step.
    pub(super) async fn settle(&mut self) -> Result<(), ProxyError> {
        let server_gone = |e: String| {
            ProxyError::fatal(
                "08006",
                format!("server closed the connection unexpectedly ({e}); the session is closed"),
            )
        };
        if self.server.is_some() && !self.pending.is_empty() {
            // Answers to a batch without its Sync yet come only on a Flush.
            messages::empty_message(&mut self.swbuf, tag::FLUSH);
        }
        while !self.pending.is_empty() {
            let Some(server) = self.server.as_deref_mut() else {
                break;
            };
            if !self.swbuf.is_empty() {
                server
                    .stream
                    .send_all(&self.swbuf)
                    .await
                    .map_err(|e| server_gone(e.to_string()))?;
                self.swbuf.clear();
            }
            let frame = server
                .read_frame()
                .await
                .map_err(|e| server_gone(e.to_string()))?;
            if let Err(end) = self.on_server(frame.msg()) {
                return Err(match end {
                    End::Fatal(e) => *e,
                    End::ServerGone(why) => server_gone(why),
                    End::ClientGone => ProxyError::fatal("08006", "client gone"),
                });
            }
            if self.wbuf.len() >= HIGH_WATER {
                self.client
                    .conn
                    .stream
                    .send_all(&self.wbuf)
                    .await
                    .map_err(|_| ProxyError::fatal("08006", "client gone"))?;
                self.wbuf.clear();
            }
        }
        self.maybe_release();
        if self.server.is_some() && !self.pending.is_empty() {
            // The proxy's own Sync before the connection goes back: answered, it goes.
            return Box::pin(self.settle()).await;
        }
        Ok(())
    }

    /// Sends the unnamed Parse that waited for its Bind, its answer already given.
    pub(super) fn send_deferred_parse(&mut self) {
        if let Some(p) = self.unnamed_parse.as_mut().filter(|p| p.waits_for_bind) {
            p.waits_for_bind = false;
            let raw = p.frame.raw().clone();
            self.swbuf.extend_from_slice(&raw);
            self.expect_extended(Expect::Parse {
                visible: false,
                statement: None,
                client_name: None,
            });
        }
    }
}

/// The first keyword of a query, lower-cased.
pub(super) fn first_word(sql: &[u8]) -> String {
    let text = String::from_utf8_lossy(sql);
    match router::lexer::Lexer::new(&text).next() {
        Some(router::lexer::Token::Word(w)) => w.to_ascii_lowercase(),
        _ => String::new(),
    }
}
