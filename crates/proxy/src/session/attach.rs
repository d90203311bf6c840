//! Server attachment and pooling: taking a connection of the right shard, bringing its
//! session settings in line with the client's, and handing it back between transactions.

use super::*;

impl Session {
    /// Attaches the server a statement runs on (by its key, where the database routes); a
    /// key still waiting for its Bind leaves the choice to the session.
    /// A statement for several shards attaches nothing and comes back.
    pub(super) async fn ensure_server_for(
        &mut self,
        stmt: &Statement,
        params: &[Option<String>],
    ) -> Result<Option<Box<Fanout>>, ProxyError> {
        let target = match self.route_statement(stmt, params)? {
            Routing::To(t) => t,
            Routing::AtBind => None,
            Routing::Fanout(f) => return Ok(Some(f)),
        };
        self.ensure_server_on(target).await.map(|()| None)
    }

    /// [`Self::ensure_server`] on a given shard: refused when a transaction already runs on
    /// another one.
    /// After a reload that changed the database's home shard, a connection attached from the
    /// previous home is named by its shard, so that it is never taken for the new home.
    pub(super) fn note_reload(&mut self) {
        if self.client.generation == self.proxy.generation()
            || self.server.is_none()
            || self.server_shard.is_some()
        {
            return;
        }
        let home = self.home_shard();
        let was = self
            .proxy
            .shard_of_pool(&self.client.database, &self.client.user, &self.client.pool)
            .unwrap_or_else(|| "the home shard before the reload".to_owned());
        if was != home {
            self.server_shard = Some(was.into());
        }
    }

    pub(super) async fn ensure_server_on(
        &mut self,
        target: Option<String>,
    ) -> Result<(), ProxyError> {
        self.note_reload();
        if !self.read_intent
            && self.tx_status == b'I'
            && self.held_begin.is_none()
            && !self.unsynced
            && self.server.as_ref().is_some_and(|s| s.is_replica())
        {
            // Pipelined after a read still answering on a replica: that read ends first,
            // and this statement takes the primary.
            Box::pin(self.settle()).await?;
        }
        // Outside a transaction (and between batches) the session's shard is home, even
        // while a server of another shard is still attached (answering, or parked there by
        // session pooling).
        let target = match target {
            None if self.server_shard.is_some()
                && self.tx_status == b'I'
                && self.held_begin.is_none()
                && !self.unsynced
                && !self.pinned =>
            {
                Some(self.home_shard())
            }
            t => t,
        };
        if let Some(t) = &target {
            // Between transactions, or while BEGIN is held (a server attached meanwhile ran
            // only what needs no transaction: a Describe), the attached server is not in
            // the client's transaction.
            let quiet = self.client.mode == PoolMode::Transaction
                && (self.tx_status == b'I' || self.held_begin.is_some())
                && !self.unsynced
                && (!self.pending.is_empty() || self.held_begin.is_some());
            if quiet
                && self.server.is_some()
                && self.server_shard_name().as_deref() != Some(t.as_str())
            {
                // Earlier statements of another shard are still answering; once they have,
                // their server goes back and this one's is taken.
                Box::pin(self.settle()).await?;
            }
            if self.client.mode == PoolMode::Session
                && self.tx_status == b'I'
                && self.held_begin.is_none()
                && !self.unsynced
            {
                if let Some(attached) = self.server_shard_name().filter(|a| a != t) {
                    // Session pooling keeps a connection per shard: between transactions the
                    // attached one is parked and this shard's taken.
                    Box::pin(self.settle()).await?;
                    if self.tx_status == b'I' && self.pending.is_empty() {
                        if let Some(conn) = self.server.take() {
                            crate::cancel::point(&self.client.cancel_slot, None);
                            self.server_shard = None;
                            self.swbuf.clear(); // nothing pending: a Flush at most
                            self.shard_pools
                                .get_or_insert_with(Default::default)
                                .parked
                                .push((attached.into(), conn));
                        }
                    }
                }
            }
            if self.server.is_none() {
                if let Some(conn) = self.unpark(t) {
                    let home = *t == self.home_shard();
                    self.attach(conn);
                    self.server_shard = (!home).then(|| t.as_str().into());
                    return self.ensure_server().await;
                }
            }
            if self.server.is_some() {
                let home;
                let attached = match &self.server_shard {
                    Some(s) => &**s,
                    None => {
                        home = self.home_shard();
                        home.as_str()
                    }
                };
                if attached != t && self.pinned && self.tx_status == b'I' {
                    return Err(ProxyError::error(
                        "0A000",
                        format!("this session keeps its server connection on shard `{attached}` (it holds a temporary table, a WITH HOLD cursor, a prepared statement, LISTEN or an advisory lock there) and the statement needs shard `{t}`"),
                    )
                    .with_hint("Drop that state first (DISCARD ALL drops all of it), or use another connection for the other shard."));
                }
                if attached != t {
                    if self.may_join() {
                        let t = t.clone();
                        return Box::pin(self.join_shard(&t)).await;
                    }
                    return Err(ProxyError::error(
                        "0A000",
                        format!("this transaction runs on shard `{attached}` and the statement needs shard `{t}`, and it cannot span shards here (an extended-protocol batch without BEGIN, a multi-statement query, session pooling, a pinned connection, or cross_shard_transactions: deny)"),
                    )
                    .with_hint("Begin the transaction with BEGIN, or run the statements of each shard in transactions of their own."));
                }
                return self.ensure_server().await;
            }
            if *t != self.home_shard() {
                let pool = match self.replica_for(t) {
                    Some(p) => p,
                    None => self.shard_pool(t)?,
                };
                self.wait_if_paused().await;
                let conn = checkout(&pool, &self.client).await?;
                self.attach(conn);
                self.server_shard = Some(t.as_str().into());
            }
        }
        self.ensure_server().await
    }

    /// The pool of another shard, remembered by the session for its config generation.
    pub(super) fn shard_pool(&mut self, shard: &str) -> Result<pool::Pool, ProxyError> {
        let generation = self.proxy.generation();
        let cached = self
            .shard_pools
            .as_deref_mut()
            .filter(|c| c.generation == generation);
        if let Some(p) = cached.and_then(|c| c.pools.iter().find(|(n, _)| &**n == shard)) {
            return Ok(p.1.clone());
        }
        let pool = self
            .proxy
            .pool_for(&self.client.database, &self.client.user, shard)?;
        let entry = self.shard_pools.get_or_insert_with(Default::default);
        if entry.generation != generation {
            entry.generation = generation;
            entry.pools.clear();
        }
        entry.pools.push((shard.into(), pool.clone()));
        Ok(pool)
    }

    /// Session pooling: the session's parked connection to `shard`, if it has one.
    pub(super) fn unpark(&mut self, shard: &str) -> Option<PooledConn> {
        let parked = &mut self.shard_pools.as_deref_mut()?.parked;
        let i = parked.iter().position(|(n, _)| &**n == shard)?;
        Some(parked.swap_remove(i).1)
    }

    /// The shard of the attached server.
    pub(super) fn server_shard_name(&self) -> Option<String> {
        self.server.as_ref()?;
        Some(match &self.server_shard {
            Some(s) => s.to_string(),
            None => self.home_shard(),
        })
    }

    pub(super) fn home_shard(&self) -> String {
        let config = self.proxy.config.load();
        config
            .databases
            .get(&self.client.database)
            .and_then(|d| d.shards.first().map(|(n, _)| n.to_owned()))
            .unwrap_or_default()
    }

    pub(super) async fn ensure_server(&mut self) -> Result<(), ProxyError> {
        // The common case needs no waiting: an idle connection is free and its settings are
        // already the client's. Only the rest runs as a boxed future, so that its state does
        // not sit in every idle session.
        if self.server.is_none() {
            self.wait_if_paused().await;
            if self.client.generation != self.proxy.generation() {
                // A reload: this transaction uses the new config's pool.
                self.client.generation = self.proxy.generation();
                self.client.pool = self
                    .proxy
                    .home_pool(&self.client.database, &self.client.user)?;
            }
            if self.read_intent {
                let home = self.home_shard();
                if let Some(pool) = self.replica_for(&home) {
                    self.entry.set_state(crate::stats::ClientState::Waiting);
                    let conn = checkout(&pool, &self.client).await;
                    self.entry.set_state(crate::stats::ClientState::Idle);
                    self.attach(conn?);
                }
            }
            if self.server.is_none() {
                if let Some(conn) = try_checkout(&self.client.pool, &self.client) {
                    self.attach(conn);
                }
            }
        }
        if self.ready_as_is() {
            return Ok(());
        }
        Box::pin(self.ensure_server_slow()).await
    }

    /// A server is attached and takes the next message as it is: [`Self::ensure_server`]
    /// has nothing to do.
    #[inline]
    pub(super) fn ready_as_is(&mut self) -> bool {
        // Settings are brought in line only between transactions: inside one, the server
        // ran every statement the client sent and carries what they made.
        let in_transaction = (self.tx_status != b'I' && self.held_begin.is_none()) || self.unsynced;
        self.server.is_some()
            && (!self.pending.is_empty() || in_transaction || self.settings_in_line())
    }

    /// [`Self::ensure_server_on`] `target` has nothing to do (the home shard's server,
    /// attached and in line, no replica to leave): decided without entering it, the
    /// commonest case of every extended-protocol message.
    #[inline]
    pub(super) fn attached_as_is(&mut self, target: &Option<String>) -> bool {
        self.note_reload();
        target.is_none()
            && self.server_shard.is_none()
            && self.server.as_ref().is_some_and(|s| !s.is_replica())
            && self.ready_as_is()
    }

    pub(super) async fn ensure_server_slow(&mut self) -> Result<(), ProxyError> {
        if self.server.is_none() && std::mem::take(&mut self.waited_out) {
            // The plain path waited the checkout timeout out already.
            let pool = &self.client.pool;
            let e = pool.timeout_error(pool.settings().checkout_timeout);
            return Err(pool_error(e, false));
        }
        if self.server.is_none() {
            self.entry.set_state(crate::stats::ClientState::Waiting);
            let conn = checkout(&self.client.pool, &self.client).await;
            self.entry.set_state(crate::stats::ClientState::Idle);
            self.attach(conn?);
        }
        if self.pending.is_empty() {
            self.sync_settings().await?;
        }
        Ok(())
    }

    pub(super) fn attach(&mut self, conn: PooledConn) {
        // A connection other than the one the client's unnamed statement was parsed on (or
        // one a statement for several shards used since): it is parsed again before use.
        if let Some(p) = self.unnamed_parse.as_mut() {
            p.waits_for_bind = true;
        }
        crate::cancel::point(
            &self.client.cancel_slot,
            Some(CancelTarget {
                addr: conn.addr,
                backend_pid: conn.backend_pid,
                secret_key: conn.secret_key,
            }),
        );
        self.server = Some(conn);
        if let Some(server) = self.server.as_deref_mut() {
            if server.replay_on {
                server.replay_on = false;
                server.replay.clear();
            }
        }
        self.session_settled = false;
        self.entry.set_state(crate::stats::ClientState::Active);
    }

    /// A new transaction waits while an administrator's `PAUSE` holds its database.
    pub(super) async fn wait_if_paused(&self) {
        if self.proxy.maybe_paused() {
            self.entry.set_state(crate::stats::ClientState::Waiting);
            Box::pin(self.proxy.wait_unpaused(&self.client.database)).await;
            self.entry.set_state(crate::stats::ClientState::Idle);
        }
    }

    /// True when the attached server already carries the client's settings; records that
    /// when it finds the two equal.
    pub(super) fn settings_in_line(&mut self) -> bool {
        let Some(server) = self.server.as_mut() else {
            return false;
        };
        if self.session_settled {
            // Session pooling: the client's server session is its own once attached; what
            // it holds is what the client made it, and the proxy sends nothing on it.
            return true;
        }
        let in_line = conn_in_line(server, &self.client);
        if in_line {
            self.session_settled = self.client.mode == PoolMode::Session;
        }
        in_line
    }

    pub(super) async fn sync_settings(&mut self) -> Result<(), ProxyError> {
        // Nothing is in flight: whatever is still buffered for the server is a Flush.
        self.swbuf.clear();
        let server = self.server.as_mut().expect("attached");
        // Boxed: rare, and its state would otherwise sit in every idle session.
        let r = Box::pin(sync_conn(server, &mut self.client, self.tx_status)).await;
        if r.as_ref().is_err_and(|e| e.code == "08006") {
            self.drop_server();
        } else if r.is_ok() {
            self.session_settled = self.client.mode == PoolMode::Session;
        }
        r
    }

    pub(super) fn drop_server(&mut self) {
        self.unsynced = false;
        self.needs_sync = false;
        crate::cancel::point(&self.client.cancel_slot, None);
        self.server = None;
        self.server_shard = None;
        self.pending.clear();
        self.swbuf.clear();
    }

    /// Transaction pooling: hand the server back once it is idle outside a transaction.
    pub(super) fn maybe_release(&mut self) {
        if self.pinned || self.pin_check {
            return;
        }
        if self.client.mode != PoolMode::Transaction
            || (self.tx_status != b'I' && self.held_begin.is_none())
            || self.unsynced
            || !self.pending.is_empty()
            || self.server.is_none()
        {
            return;
        }
        if let Some(server) = self.server.as_ref() {
            if !server.read_buf.is_empty() {
                return;
            }
        }
        if self.needs_sync {
            // The server waits for a Sync after the batch's Parse/Describe/Close (its
            // implicit transaction is open): the proxy sends its own first, and the
            // connection goes back once it is answered.
            self.needs_sync = false;
            messages::empty_message(&mut self.swbuf, tag::SYNC);
            self.pending.push_back(Expect::OwnSync);
            return;
        }
        // Only Flush messages can be left unsent with nothing pending.
        self.swbuf.clear();
        // The unnamed statement stays with this connection: the next one gets it anew.
        if let Some(p) = self.unnamed_parse.as_mut() {
            p.waits_for_bind = true;
        }
        crate::cancel::point(&self.client.cancel_slot, None);
        self.server_shard = None;
        if let Some(conn) = self.server.take() {
            conn.release();
        }
    }
}

/// Brings an idle server connection's settings in line with the client's, in one round trip
/// when they differ. A setting the server refuses (a role dropped since, a value no longer
/// valid) is dropped from the client's settings and reported once; the connection stays
/// usable and the rest are applied at the next statement. An `Err` of 08006 means the
/// connection must be dropped.
pub(super) async fn sync_conn(
    server: &mut pool::ServerConn,
    client: &mut Client,
    tx_status: u8,
) -> Result<(), ProxyError> {
    let key = (client.id, client.settings.generation);
    if server.applied_for == Some(key) && !server.settings_unknown {
        return Ok(());
    }
    let statements = client
        .settings
        .sync_statements(&server.applied, server.settings_unknown);
    if statements.is_empty() {
        // Already in line: only the tag moves.
        server.applied_for = Some(key);
        return Ok(());
    }
    let mut sql = String::new();
    for (_, st) in &statements {
        sql.push_str(st);
        sql.push(';');
    }
    match server.run_simple_counted(&sql).await {
        Ok((_, None)) => {}
        Ok((done, Some(err))) => {
            // The statements ran as one implicit transaction: none of them stands.
            let failed = statements.get(done);
            let name = failed.and_then(|(n, _)| n.clone());
            if let Some(n) = &name {
                client.settings.drop_setting(n);
            } else {
                // A reset failed: start from the connection's defaults next time.
                server.settings_unknown = true;
            }
            tracing::warn!(client = client.id, setting = ?name, error = %err.message, "a session setting could not be applied and is dropped");
            return Err(ProxyError {
                fatal: false,
                code: err.code.into(),
                message: match &name {
                    Some(n) => format!(
                        "could not apply session setting \"{n}\" on a pooled server connection: {}; the setting is dropped",
                        err.message
                    ),
                    None => format!("could not reset a pooled server connection: {}", err.message),
                },
                detail: failed.map(|(_, st)| st.clone()),
                hint: Some("The session goes on without this setting; set it again if it is still wanted.".into()),
            });
        }
        Err(e) => {
            return Err(ProxyError::error(
                "08006",
                format!("server connection lost while applying session settings: {e}"),
            ));
        }
    }
    server.applied = client.settings.desired().clone(); // an Arc: shared, not copied
    server.applied_for = Some(key);
    server.settings_unknown = tx_status != b'I';
    Ok(())
}

/// True when `server` already carries `client`'s settings; records that when it finds the
/// two equal.
pub(super) fn conn_in_line(server: &mut pool::ServerConn, client: &Client) -> bool {
    if server.settings_unknown {
        return false;
    }
    let key = (client.id, client.settings.generation);
    let in_line = server.applied_for == Some(key)
        || client.settings.sync_sql(&server.applied, false).is_none();
    if in_line {
        server.applied_for = Some(key);
    }
    in_line
}

/// An idle connection of `pool` for `client`, if one is free now (see [`checkout`]).
pub(super) fn try_checkout(pool: &pool::Pool, client: &Client) -> Option<PooledConn> {
    pool.try_get_for(&client.settings.opened)
        .map(|c| fresh_for(c, client))
}

/// A connection of `pool` for `client`, waiting up to the checkout timeout. Under session
/// pooling it was opened with the client's startup parameters, so it carries the client's
/// startup settings as its own defaults and nothing need be applied.
pub(super) async fn checkout(pool: &pool::Pool, client: &Client) -> Result<PooledConn, ProxyError> {
    if let Some(c) = try_checkout(pool, client) {
        return Ok(c);
    }
    let c = Box::pin(pool.get_for(&client.settings.opened))
        .await
        .map_err(|e| pool_error(e, false))?;
    Ok(fresh_for(c, client))
}

pub(super) fn fresh_for(mut conn: PooledConn, client: &Client) -> PooledConn {
    if conn.opened_with != 0 && !conn.settings_unknown {
        conn.applied = client.settings.startup().clone();
        conn.applied_for = None;
    }
    conn
}
