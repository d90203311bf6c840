//! The extended query protocol: Parse, Bind, Describe and Close of a client's statements
//! and portals (rewritten to the proxy-wide statement names), and the answers the proxy
//! gives itself in their place (synthetic ParseComplete, errors that skip to Sync).

use super::*;

impl Session {
    /// Session pooling on a database that does not route: the client owns its server
    /// session, so its statements and portals keep the names it gave them and its messages
    /// go through as they came.
    pub(super) fn passes_through(&self) -> bool {
        self.client.mode == PoolMode::Session && !self.routes()
    }

    pub(super) async fn pass_extended(&mut self, frame: Frame) -> Result<(), End> {
        if let Err(e) = self.ensure_server().await {
            return self.extended_error(e);
        }
        let expect = match frame.tag() {
            tag::PARSE => {
                let p = ParseView::new(&frame).map_err(malformed)?;
                self.note_encoding_change(p.query, Words::of(p.query));
                Expect::Parse {
                    visible: true,
                    statement: None,
                    client_name: None,
                }
            }
            tag::BIND => Expect::Bind,
            tag::DESCRIBE => Expect::Describe { statement: None },
            _ => Expect::Close,
        };
        self.forward(&frame);
        self.expect_extended(expect);
        Ok(())
    }

    pub(super) async fn on_parse(&mut self, frame: Frame) -> Result<(), End> {
        let p = ParseView::new(&frame).map_err(malformed)?;
        // The same unnamed Parse as the last, whose text had nothing to look at: nothing
        // to look at again (drivers send one statement's Parse over and over).
        let again = p.name.is_empty()
            && self
                .unnamed_parse
                .as_deref()
                .is_some_and(|k| k.plain && k.frame.raw() == frame.raw());
        let (command, plain) = if again {
            (None, true)
        } else {
            let words = Words::of(p.query);
            self.note_encoding_change(p.query, words);
            self.note_pin_words(p.query, words);
            // A read calling functions learns which are aggregates before it routes (a
            // Describe or the Bind may route it).
            let calls = memchr::memchr(b'(', p.query).is_some();
            if calls {
                self.learn_functions(p.query).await;
            }
            // So does an INSERT without a column list (its table's column order).
            self.learn_insert_columns(p.query).await;
            let command = tracked_with(p.query, words);
            let plain = words.is_none() && !calls && command.is_none() && !maybe_insert(p.query);
            (command, plain)
        };
        if matches!(command, Some(SessionCommand::Set { ref name, .. } | SessionCommand::Reset { ref name }) if name.starts_with("shardgate."))
        {
            return self.extended_error(
                ProxyError::error(
                    "0A000",
                    "SET shardgate.* must be sent as a simple query: the proxy keeps it, and the extended protocol would send it to PostgreSQL",
                )
                .with_hint("Send SET shardgate.shard = '...' as a query of its own."),
            );
        }
        if p.name.is_empty() {
            if let Some(n) = self.names.as_deref_mut() {
                n.ext_begin = None;
            }
            if lone_begin(p.query) && p.param_types.len() <= 2 && self.may_hold_begin().await? {
                // The BEGIN of a driver's pipeline: answered here, held at its Execute.
                self.unnamed_parse = None;
                self.names().ext_begin = Some(ExtBegin {
                    text: Bytes::copy_from_slice(p.query),
                    portal: None,
                });
                self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
                return Ok(());
            }
            if command.is_some() || self.names.is_some() {
                self.names().unnamed_command = command;
            }
            let target = match self.route_plan(p.query, &[]) {
                // While BEGIN is held, the Parse waits for its Bind, which sends the BEGIN
                // first (a BEGIN after it would drop the unnamed statement).
                Ok(Routing::To(_)) if self.held_begin.is_some() => {
                    self.keep_unnamed_parse(&frame, true, plain);
                    self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
                    return Ok(());
                }
                Ok(Routing::To(t)) => t,
                Ok(Routing::AtBind | Routing::Fanout(_))
                    if self.server.is_none() || !self.unsynced =>
                {
                    // The shard is known at Bind; the Parse goes with it.
                    self.keep_unnamed_parse(&frame, true, plain);
                    self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
                    return Ok(());
                }
                Ok(Routing::AtBind | Routing::Fanout(_)) => None,
                Err(e) => return self.extended_error(e),
            };
            if let Err(e) = self.note_statement(p.query) {
                return self.extended_error(e);
            }
            if !self.attached_as_is(&target) {
                if let Err(e) = self.ensure_server_on(target).await {
                    return self.extended_error(e);
                }
            }
            self.keep_unnamed_parse(&frame, false, plain);
            self.forward(&frame);
            self.expect_extended(Expect::Parse {
                visible: true,
                statement: None,
                client_name: None,
            });
            return Ok(());
        }
        let stmt = self.proxy.statements.intern(p.query, p.param_types);
        let name: Box<[u8]> = p.name.into();
        if stmt.begin && self.may_hold_begin().await? {
            // A named BEGIN (JDBC's, once prepared): answered here, held at its Execute.
            self.names().statements.insert(name, stmt);
            self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
            return Ok(());
        }
        let (target, at_bind) = match self.route_statement(&stmt, &[]) {
            Ok(Routing::To(t)) => (t, false),
            Ok(Routing::AtBind | Routing::Fanout(_)) => (None, true),
            Err(e) => return self.extended_error(e),
        };
        self.names().statements.insert(name.clone(), stmt.clone());
        if (self.server.is_none() || !self.unsynced) && (stmt.is_valid() || at_bind) {
            // A text some server has already parsed needs no server connection now: it is
            // prepared on whichever connection runs it. Waiting for a connection here would
            // stall clients that prepare synchronously (libpq's PQprepare) while others hold
            // every connection in open transactions.
            self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
            return Ok(());
        }
        if !self.attached_as_is(&target) {
            if let Err(e) = self.ensure_server_on(target).await {
                return self.extended_error(e);
            }
        }
        let server = self.server.as_mut().expect("ensured");
        if server.prepared.touch(stmt.id) {
            self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
        } else {
            self.parse_on_server(&stmt, Some(name));
        }
        Ok(())
    }

    /// Keeps the client's last unnamed Parse (reusing its box: one per Parse would be an
    /// allocation per statement of drivers that parse every statement unnamed). The same
    /// message again (a driver running one statement over and over) keeps the bytes kept.
    pub(super) fn keep_unnamed_parse(&mut self, frame: &Frame, waits_for_bind: bool, plain: bool) {
        match self.unnamed_parse.as_deref_mut() {
            Some(kept) if kept.frame.raw() == frame.raw() => {
                kept.waits_for_bind = waits_for_bind;
                kept.plain = plain;
            }
            Some(kept) => {
                *kept = KeptParse {
                    frame: frame.clone(),
                    waits_for_bind,
                    own_bytes: false,
                    plain,
                }
            }
            None => {
                self.unnamed_parse = Some(Box::new(KeptParse {
                    frame: frame.clone(),
                    waits_for_bind,
                    own_bytes: false,
                    plain,
                }))
            }
        }
    }

    pub(super) fn names(&mut self) -> &mut Names {
        self.names.get_or_insert_with(Default::default)
    }

    pub(super) fn statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        self.names.as_deref()?.statements.get(name).cloned()
    }

    /// Remembers whether a portal's statement changes session state.
    pub(super) fn note_portal(&mut self, portal: &[u8], command: Option<SessionCommand>) {
        match command {
            Some(c) => {
                self.names().portal_commands.insert(portal.into(), c);
            }
            None => {
                if let Some(n) = self.names.as_deref_mut() {
                    if !n.portal_commands.is_empty() {
                        n.portal_commands.remove(portal);
                    }
                }
            }
        }
    }

    /// Records that the attached server gets `id` prepared; the statements that makes the
    /// least recently used past `pool.max_prepared_statements` are closed on the server
    /// first (their CloseComplete swallowed).
    fn record_prepared(&mut self, id: u64) {
        let server = self.server.as_mut().expect("attached");
        for old in server.prepared.insert(id) {
            messages::target(
                &mut self.swbuf,
                tag::CLOSE,
                b'S',
                crate::statements::server_name(old).as_bytes(),
            );
            self.pending.push_back(Expect::HiddenClose);
        }
    }

    /// Sends `stmt`'s Parse to the attached server. Its answer goes to the client when the
    /// client parsed it under `client_name`; otherwise (the proxy added it) it is swallowed.
    fn parse_on_server(&mut self, stmt: &Arc<Statement>, client_name: Option<Box<[u8]>>) {
        self.record_prepared(stmt.id);
        messages::parse(
            &mut self.swbuf,
            &stmt.server_name,
            &stmt.query,
            &stmt.param_types,
        );
        self.expect_extended(Expect::Parse {
            visible: client_name.is_some(),
            statement: Some(Arc::clone(stmt)),
            client_name,
        });
    }

    /// Makes sure the attached server has `stmt`, adding a Parse whose answer is swallowed.
    pub(super) fn prepare_on_server(&mut self, stmt: &Arc<Statement>) {
        let server = self.server.as_mut().expect("attached");
        if !server.prepared.touch(stmt.id) {
            self.parse_on_server(stmt, None);
        }
    }

    pub(super) fn unknown_statement(name: &[u8]) -> ProxyError {
        if name.is_empty() {
            return ProxyError::error("26000", "unnamed prepared statement does not exist");
        }
        ProxyError::error(
            "26000",
            format!(
                "prepared statement \"{}\" does not exist",
                String::from_utf8_lossy(name)
            ),
        )
    }

    pub(super) async fn on_bind(&mut self, frame: Frame) -> Result<(), End> {
        let b = BindView::new(&frame).map_err(malformed)?;
        // An INSERT without a column list learns its table's columns before it routes.
        let is_insert = |q: &[u8]| {
            q.trim_ascii_start()
                .get(..6)
                .is_some_and(|h| h.eq_ignore_ascii_case(b"insert"))
                && !router::lexer::insert_names_columns(q)
        };
        // A read calling functions learns which are aggregates before it routes.
        let is_read = |q: &[u8]| {
            let h = q.trim_ascii_start();
            h.get(..6)
                .is_some_and(|h| h.eq_ignore_ascii_case(b"select"))
                || h.get(..4).is_some_and(|h| h.eq_ignore_ascii_case(b"with"))
        };
        // The statement's text looked at once: (INSERT to learn, read to learn); only a
        // database that routes learns either.
        let (insert, read) = if !self.routes() {
            (None, None)
        } else if b.statement.is_empty() {
            match self
                .unnamed_parse
                .as_ref()
                .and_then(|p| ParseView::new(&p.frame).ok().map(|pv| pv.query))
            {
                Some(q) => (
                    is_insert(q).then(|| Bytes::copy_from_slice(q)),
                    (is_read(q) && q.contains(&b'(')).then(|| Bytes::copy_from_slice(q)),
                ),
                None => (None, None),
            }
        } else {
            match self.statement(b.statement) {
                Some(s) => (
                    is_insert(&s.query).then(|| s.query.clone()),
                    (is_read(&s.query) && s.query.contains(&b'(')).then(|| s.query.clone()),
                ),
                None => (None, None),
            }
        };
        if let Some(q) = insert {
            self.learn_insert_columns(&q).await;
        }
        // The read learns which of its functions are aggregates before it routes.
        if let Some(q) = read {
            self.learn_functions(&q).await;
        }
        if b.statement.is_empty() && self.names.as_deref().is_some_and(|n| n.ext_begin.is_some()) {
            return self.bind_held_begin(&b);
        }
        if self.cross().is_some() {
            let text = if b.statement.is_empty() {
                self.unnamed_parse.as_ref().and_then(|p| {
                    ParseView::new(&p.frame)
                        .ok()
                        .map(|pv| Bytes::copy_from_slice(pv.query))
                })
            } else {
                self.statement(b.statement).map(|s| s.query.clone())
            };
            if let Some(q) = text {
                if let Some(done) = self.cross_bind(&q, b.portal).await {
                    return done;
                }
            }
        }
        if b.statement.is_empty() {
            if self.unnamed_parse.is_none() {
                // Never the unnamed statement another client left on a pooled connection.
                return self.extended_error(Self::unknown_statement(b""));
            }
            let routes = self.routes();
            let target = match self
                .unnamed_parse
                .as_ref()
                .filter(|_| routes)
                .map(|p| p.frame.clone())
            {
                Some(parse) => {
                    let pv = ParseView::new(&parse).map_err(malformed)?;
                    let params = crate::statements::bind_params_for_routing(
                        b.rest,
                        &crate::statements::parse_oids(pv.param_types),
                        self.client_utf8(),
                    );
                    match self.route_plan(pv.query, &params) {
                        Ok(Routing::To(t)) => t,
                        Ok(Routing::AtBind) => None,
                        Ok(Routing::Fanout(fanout)) => {
                            self.pending_fanout = Some(PendingFanout::new(
                                fanout,
                                Bytes::copy_from_slice(pv.query),
                                Bytes::copy_from_slice(pv.param_types),
                                &b,
                            ));
                            return Ok(());
                        }
                        Err(e) => return self.extended_error(e),
                    }
                }
                None => None,
            };
            if self.held_begin.is_some() {
                if let Some(e) = self.held_refusal() {
                    return self.extended_error(e);
                }
                if let Err(e) = self.settle().await {
                    return self.extended_error(e);
                }
            }
            let parse = self
                .unnamed_parse
                .as_ref()
                .filter(|_| self.proxy.reads_on_replicas(&self.client.database))
                .map(|p| p.frame.clone());
            if let Some(pv) = parse.as_ref().and_then(|f| ParseView::new(f).ok()) {
                if let Err(e) = self.note_statement(pv.query) {
                    return self.extended_error(e);
                }
            } else {
                self.read_intent = false;
            }
            if !self.attached_as_is(&target) {
                if let Err(e) = self.ensure_server_on(target).await {
                    return self.extended_error(e);
                }
            }
            self.begin_if_held();
            self.send_deferred_parse();
            let command = self
                .names
                .as_deref()
                .and_then(|n| n.unnamed_command.clone());
            self.note_portal(b.portal, command);
            self.forward(&frame);
            self.expect_extended(Expect::Bind);
            return Ok(());
        }
        let Some(stmt) = self.statement(b.statement) else {
            return self.extended_error(Self::unknown_statement(b.statement));
        };
        if stmt.begin && self.may_hold_begin().await? {
            self.names().ext_begin = Some(ExtBegin {
                text: stmt.query.clone(),
                portal: None,
            });
            return self.bind_held_begin(&b);
        }
        let params = if self.routes() {
            crate::statements::bind_params_for_routing(
                b.rest,
                &stmt.param_oids(),
                self.client_utf8(),
            )
        } else {
            Vec::new()
        };
        if self.held_begin.is_some() {
            if let Some(e) = self.held_refusal() {
                return self.extended_error(e);
            }
            if let Err(e) = self.settle().await {
                return self.extended_error(e);
            }
        }
        if let Err(e) = self.note_prepared(&stmt) {
            return self.extended_error(e);
        }
        match self.ensure_server_for(&stmt, &params).await {
            Ok(None) => {}
            Ok(Some(fanout)) => {
                self.pending_fanout = Some(PendingFanout::new(
                    fanout,
                    stmt.query.clone(),
                    stmt.param_types.clone(),
                    &b,
                ));
                return Ok(());
            }
            Err(e) => return self.extended_error(e),
        }
        self.begin_if_held();
        self.prepare_on_server(&stmt);
        messages::bind(&mut self.swbuf, b.portal, &stmt.server_name, b.rest);
        self.expect_extended(Expect::Bind);
        self.note_portal(b.portal, stmt.command.clone());
        Ok(())
    }

    pub(super) async fn on_describe(&mut self, frame: Frame) -> Result<(), End> {
        let d = TargetView::new(&frame).map_err(malformed)?;
        if self.describes_held_begin(&d) || self.describes_cross_portal(d.kind, d.name) {
            return Ok(());
        }
        if d.kind == b'S' && d.name.is_empty() && self.unnamed_parse.is_none() {
            return self.extended_error(Self::unknown_statement(b""));
        }
        if d.kind == b'P' || d.name.is_empty() {
            if !self.attached_as_is(&None) {
                if let Err(e) = self.ensure_server_on(None).await {
                    return self.extended_error(e);
                }
            }
            self.send_deferred_parse();
            self.forward(&frame);
            self.expect_extended(Expect::Describe { statement: None });
            return Ok(());
        }
        let Some(stmt) = self.statement(d.name) else {
            return self.extended_error(Self::unknown_statement(d.name));
        };
        if stmt.begin && self.server.is_none() {
            self.push_synthetic(Expect::SyntheticFrame(NO_PARAMETERS));
            self.push_synthetic(Expect::SyntheticFrame(NO_DATA));
            return Ok(());
        }
        // Any shard can describe a statement whose key is a parameter, or one that runs on
        // several shards: the schema is the same on all.
        let attached = match self.ensure_server_for(&stmt, &[]).await {
            Ok(Some(_)) => self.ensure_server_on(None).await,
            r => r.map(|_| ()),
        };
        if let Err(e) = attached {
            return self.extended_error(e);
        }
        self.prepare_on_server(&stmt);
        messages::target(&mut self.swbuf, tag::DESCRIBE, b'S', &stmt.server_name);
        self.expect_extended(Expect::Describe {
            statement: Some(stmt),
        });
        Ok(())
    }

    pub(super) fn on_close(&mut self, frame: Frame) -> Result<(), End> {
        let c = TargetView::new(&frame).map_err(malformed)?;
        if c.kind == b'S' && !c.name.is_empty() {
            // The server keeps the shared statement; only this client's name goes.
            if let Some(n) = self.names.as_deref_mut() {
                n.statements.remove(c.name);
            }
            self.push_synthetic(Expect::Synthetic(tag::CLOSE_COMPLETE));
            return Ok(());
        }
        if self.server.is_some() {
            self.forward(&frame);
            self.expect_extended(Expect::Close);
        } else {
            // No server: no portal or unnamed statement exists; closing one is no error.
            messages::empty_message(&mut self.wbuf, tag::CLOSE_COMPLETE);
        }
        Ok(())
    }

    /// Queues the answer to an extended-protocol message sent to the server: after a Bind
    /// or Execute, until the client's Sync, the server is in the batch's implicit
    /// transaction and stays with the session. After any of them the server waits for a
    /// Sync before it is idle: a batch that ran nothing gets the proxy's own before the
    /// connection goes back (see `maybe_release`).
    pub(super) fn expect_extended(&mut self, e: Expect) {
        if matches!(e, Expect::Bind | Expect::Execute { .. }) {
            self.unsynced = true;
        }
        self.needs_sync = true;
        self.pending.push_back(e);
    }

    /// Queues an answer of the proxy's own; written now when nothing is in flight before it.
    pub(super) fn push_synthetic(&mut self, e: Expect) {
        self.pending.push_back(e);
        self.emit_synthetic_head();
    }

    #[inline(always)]
    pub(super) fn emit_synthetic_head(&mut self) {
        // Usually the head is a server's answer still to come: nothing to write.
        if nothing_of_our_own(self.pending.front()) {
            return;
        }
        self.emit_synthetic();
    }

    /// The answers of the proxy's own at the head of the queue, written.
    #[inline(never)]
    fn emit_synthetic(&mut self) {
        loop {
            match self.pending.front() {
                Some(Expect::Synthetic(t)) => {
                    messages::empty_message(&mut self.wbuf, *t);
                }
                Some(Expect::SyntheticFrame(f)) => self.wbuf.extend_from_slice(f),
                Some(Expect::SyntheticError(e)) => {
                    e.encode(&mut self.wbuf);
                    self.error_since_ready = true;
                }
                Some(Expect::SyntheticReady) => {
                    messages::ready_for_query(&mut self.wbuf, self.tx_status);
                    self.error_since_ready = false;
                }
                Some(Expect::SyntheticDone(t)) => messages::command_complete(&mut self.wbuf, t),
                Some(Expect::CopyEnd) => {}
                _ => return,
            }
            self.pending.pop_front();
        }
    }

    /// An error the proxy raises for an extended-protocol message: reported in its place,
    /// then the batch is skipped up to Sync, as PostgreSQL does.
    pub(super) fn extended_error(&mut self, e: ProxyError) -> Result<(), End> {
        self.proxy.stats.error(&self.client.database, &e.code);
        if e.fatal {
            return Err(End::fatal(e));
        }
        if self.held_begin.is_some() {
            self.tx_status = b'E';
        } else if self.server.is_some() && (self.tx_status == b'T' || self.unsynced) {
            // The server's transaction (explicit, or the batch's implicit one) fails with
            // the statement, as on PostgreSQL: nothing of it may commit.
            self.abort_server_transaction(false);
        }
        self.push_synthetic(Expect::SyntheticError(Box::new(e)));
        self.skip_until_sync = true;
        Ok(())
    }

    /// Makes the attached server's transaction fail where the proxy refused a statement:
    /// a Parse that cannot succeed (named, so the client's unnamed statement stays), whose
    /// error is swallowed; with `sync`, followed by a Sync whose ReadyForQuery gives the
    /// transaction's status. Without, the server skips the client's batch up to its Sync.
    pub(super) fn abort_server_transaction(&mut self, sync: bool) {
        messages::parse(
            &mut self.swbuf,
            b"sg_abort",
            b"shardgate refused a statement of this transaction",
            b"\0\0",
        );
        self.pending.push_back(Expect::AbortTx);
        if sync {
            messages::empty_message(&mut self.swbuf, tag::SYNC);
            self.pending.push_back(Expect::AbortSync);
        }
    }

    /// An error the proxy raises for a simple Query: the error, then ReadyForQuery.
    pub(super) fn simple_error(&mut self, e: ProxyError) -> Result<(), End> {
        self.proxy.stats.error(&self.client.database, &e.code);
        if e.fatal {
            return Err(End::fatal(e));
        }
        if self.held_begin.is_some() {
            self.tx_status = b'E';
        } else if self.server.is_some() && self.tx_status == b'T' {
            self.abort_server_transaction(true);
        }
        self.push_synthetic(Expect::SyntheticError(Box::new(e)));
        self.push_synthetic(Expect::SyntheticReady);
        Ok(())
    }
}

/// Whether a statement may be an INSERT (which learns its table's columns before it routes).
pub(super) fn maybe_insert(sql: &[u8]) -> bool {
    let head = sql.trim_ascii_start();
    head.starts_with(b"/*")
        || head.starts_with(b"--")
        || head
            .get(..6)
            .is_none_or(|h| h.eq_ignore_ascii_case(b"insert"))
}

/// Whether the expected answer `e` (none: nothing expected) is the plain answer of a server
/// to a client's message, rather than one the proxy writes or swallows itself.
#[inline(always)]
pub(super) fn nothing_of_our_own(e: Option<&Expect>) -> bool {
    matches!(
        e,
        None | Some(
            Expect::Query { .. }
                | Expect::Parse { .. }
                | Expect::Bind
                | Expect::Describe { .. }
                | Expect::Execute { .. }
                | Expect::Sync
        )
    )
}
