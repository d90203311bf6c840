//! Server → proxy: the answers of the attached server matched against what the session
//! expects, the session state they confirm (SETs, rollbacks), and the session's end.

use super::*;

impl Session {
    #[cold]
    #[inline(never)]
    pub(super) fn desync(what: &str) -> End {
        End::ServerGone(format!("protocol out of step: unexpected {what}"))
    }

    /// Whether an answer with tag `t` goes to the client as it is, with nothing more to do
    /// than what [`Self::on_server`] would do for it: its expected entry, if it has one,
    /// is taken off the queue here, and nothing of the proxy's own is due after it. The
    /// commonest answers of an extended-protocol batch so join the rows around them in one
    /// copy; any other answer, and these in any other case, take `on_server`.
    #[inline(always)]
    pub(super) fn passes_expected(&mut self, t: u8) -> bool {
        let pop = match (t, self.pending.front()) {
            (
                tag::PARSE_COMPLETE,
                Some(Expect::Parse {
                    visible: true,
                    statement: None,
                    ..
                }),
            ) => true,
            (tag::BIND_COMPLETE, Some(Expect::Bind)) => true,
            (tag::ROW_DESCRIPTION | tag::NO_DATA, Some(Expect::Describe { .. })) => true,
            (tag::ROW_DESCRIPTION, Some(Expect::Query { .. } | Expect::Execute { .. })) => {
                return true
            }
            _ => return false,
        };
        // What comes next is a server's answer too (see `emit_synthetic_head`).
        if pop && extended::nothing_of_our_own(self.pending.get(1)) {
            self.pending.pop_front();
            return true;
        }
        false
    }

    pub(super) fn on_server(&mut self, frame: Msg<'_>) -> Result<(), End> {
        match frame.tag() {
            tag::PARSE_COMPLETE => match self.pending.pop_front() {
                Some(Expect::Parse {
                    visible, statement, ..
                }) => {
                    if let Some(s) = statement {
                        s.mark_valid();
                    }
                    if visible {
                        self.wbuf.extend_from_slice(frame.raw());
                    }
                }
                _ => return Err(Self::desync("ParseComplete")),
            },
            tag::BIND_COMPLETE => match self.pending.pop_front() {
                Some(Expect::Bind) => self.wbuf.extend_from_slice(frame.raw()),
                _ => return Err(Self::desync("BindComplete")),
            },
            tag::CLOSE_COMPLETE => match self.pending.pop_front() {
                Some(Expect::Close) => self.wbuf.extend_from_slice(frame.raw()),
                Some(Expect::HiddenClose) => {}
                _ => return Err(Self::desync("CloseComplete")),
            },
            tag::NO_DATA => match self.pending.pop_front() {
                Some(Expect::Describe { .. }) => self.wbuf.extend_from_slice(frame.raw()),
                _ => return Err(Self::desync("NoData")),
            },
            tag::PARAMETER_DESCRIPTION => {
                if let Some(Expect::Describe {
                    statement: Some(stmt),
                }) = self.pending.front()
                {
                    stmt.set_described(crate::statements::parse_oids(frame.body()));
                }
                self.wbuf.extend_from_slice(frame.raw());
            }
            tag::ROW_DESCRIPTION => {
                if matches!(self.pending.front(), Some(Expect::Describe { .. })) {
                    self.pending.pop_front();
                }
                self.wbuf.extend_from_slice(frame.raw());
            }
            tag::COMMAND_COMPLETE if matches!(self.pending.front(), Some(Expect::HeldBegin)) => {}
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY => {
                self.on_command_complete(&frame)?;
                self.wbuf.extend_from_slice(frame.raw());
            }
            tag::PORTAL_SUSPENDED => match self.pending.pop_front() {
                Some(Expect::Execute { .. }) => self.wbuf.extend_from_slice(frame.raw()),
                _ => return Err(Self::desync("PortalSuspended")),
            },
            tag::COPY_IN_RESPONSE => {
                if matches!(self.pending.front(), Some(Expect::Execute { .. })) {
                    self.on_extended_copy_in();
                }
                self.wbuf.extend_from_slice(frame.raw());
            }
            tag::ERROR_RESPONSE => self.on_server_error(&frame),
            tag::READY_FOR_QUERY => {
                let status =
                    messages::ready_status(&frame).map_err(|e| End::ServerGone(e.to_string()))?;
                match self.pending.pop_front() {
                    Some(Expect::Sync) | Some(Expect::Query { .. }) => self.note_ready(status),
                    Some(Expect::AbortSync) | Some(Expect::OwnSync) => {
                        self.tx_status = status;
                        self.emit_synthetic_head();
                        return Ok(());
                    }
                    Some(Expect::HeldBegin) => {
                        self.tx_status = status;
                        return Ok(());
                    }
                    _ => return Err(Self::desync("ReadyForQuery")),
                }
                if self.held_begin.is_some() {
                    // No server is in the client's transaction yet: the client's status holds.
                    messages::ready_for_query(&mut self.wbuf, self.tx_status);
                    self.error_since_ready = false;
                    self.emit_synthetic_head();
                    return Ok(());
                }
                self.tx_status = status;
                if status == b'I' {
                    if self.wrote {
                        // The client's write has ended: its reads must see it from now on.
                        self.wrote = false;
                        self.last_write = self.proxy.epoch.elapsed().as_millis() as u64 + 1;
                    }
                    if self.error_since_ready {
                        self.roll_back_settings();
                    } else {
                        self.client.settings.commit();
                    }
                    self.mirror_settings();
                    if let Some(server) = self.server.as_mut() {
                        // Statements used in the transaction may be closed from now on.
                        server.prepared.batch_done();
                    }
                }
                self.error_since_ready = false;
                self.wbuf.extend_from_slice(frame.raw());
            }
            tag::PARAMETER_STATUS => self.on_parameter_status(&frame),
            _ => self.wbuf.extend_from_slice(frame.raw()),
        }
        self.emit_synthetic_head();
        Ok(())
    }

    /// An ErrorResponse (off the hot path of [`Self::on_server`]).
    #[cold]
    #[inline(never)]
    fn on_server_error(&mut self, frame: &Msg<'_>) {
        if matches!(self.pending.front(), Some(Expect::AbortTx)) {
            self.pending.pop_front();
            self.error_since_ready = true;
            return;
        }
        if let Some(code) = crate::stats::error_code(frame.body()) {
            self.proxy.stats.error(&self.client.database, code);
        }
        self.copy_in_extended = false;
        self.error_since_ready = true;
        self.on_error();
        if self.cross().is_some()
            && crate::stats::error_code(frame.body()) == Some("55P03")
            && wire::messages::ErrorFields::parse(frame.body())
                .is_ok_and(|e| e.message.contains("lock timeout"))
        {
            // A lock wait of a transaction over several shards ran out: the bound
            // that breaks deadlocks no one PostgreSQL can see.
            ProxyError::error(
                "40P01",
                "deadlock detected: a transaction over several shards waited for a lock longer than two_phase.deadlock_timeout_ms",
            )
            .with_hint("Retry the transaction; take locks in the same order everywhere to avoid it.")
            .encode(&mut self.wbuf);
        } else if !self.timeout_error(frame) {
            self.wbuf.extend_from_slice(frame.raw());
        }
    }

    /// A ParameterStatus (off the hot path of [`Self::on_server`]).
    #[cold]
    #[inline(never)]
    fn on_parameter_status(&mut self, frame: &Msg<'_>) {
        // Unless the connection went its own way (a RESET to its own startup value,
        // which the client's differs from), what it reports is the client's too.
        let trusted = self.server.as_ref().is_some_and(|s| !s.settings_unknown);
        if let (true, Ok((name, value))) = (trusted, messages::parameter_status(frame)) {
            self.client.settings.observe(name, value);
        }
        self.wbuf.extend_from_slice(frame.raw());
    }

    /// COPY FROM STDIN started by an Execute: the server ignores every Sync until the client
    /// ends the copy, so the Syncs already queued before that end get no answer.
    pub(super) fn on_extended_copy_in(&mut self) {
        let mut i = 1;
        let mut ended = false;
        while i < self.pending.len() {
            match self.pending[i] {
                Expect::Sync => {
                    self.pending.remove(i);
                }
                Expect::CopyEnd => {
                    ended = true;
                    break;
                }
                _ => i += 1,
            }
        }
        self.copy_in_extended = !ended;
    }

    /// An ErrorResponse: in a simple Query the rest of its statements are skipped; in an
    /// extended batch the server skips everything up to Sync, so those entries go.
    /// A client request was answered: counted, and logged when slow.
    fn note_ready(&mut self, status: u8) {
        let Some(server) = self.server.as_deref_mut() else {
            return;
        };
        let text = server.request_text.take();
        let Some(took) = server.note_ready(status) else {
            return;
        };
        let slow = self.proxy.slow_query_ms();
        if slow > 0 && took.as_millis() as u64 >= slow {
            let sql = text.as_ref().map(statement_text).unwrap_or_default();
            tracing::warn!(
                client = self.client.id,
                user = %self.client.user,
                database = %self.client.database,
                duration_ms = took.as_millis() as u64,
                statement = %sql,
                "slow statement"
            );
        }
    }

    pub(super) fn on_error(&mut self) {
        match self.pending.front_mut() {
            Some(Expect::Query { commands }) => *commands = None,
            Some(Expect::Sync)
            | Some(Expect::HeldBegin)
            | Some(Expect::AbortSync)
            | Some(Expect::OwnSync)
            | None => {}
            Some(_) => {
                if !self
                    .pending
                    .iter()
                    .any(|e| matches!(e, Expect::Sync | Expect::AbortSync))
                {
                    // The server now ignores everything up to the client's Sync, which has
                    // not come yet: so does the session, as PostgreSQL would.
                    self.skip_until_sync = true;
                }
                while let Some(e) = self.pending.front() {
                    if matches!(e, Expect::Sync | Expect::AbortSync | Expect::OwnSync) {
                        break;
                    }
                    if let Some(Expect::Parse {
                        statement: Some(stmt),
                        client_name,
                        ..
                    }) = self.pending.pop_front()
                    {
                        if let Some(s) = self.server.as_mut() {
                            s.prepared.remove(stmt.id);
                        }
                        if let (Some(name), Some(n)) = (client_name, self.names.as_deref_mut()) {
                            n.statements.remove(&name);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn on_command_complete(&mut self, frame: &Msg<'_>) -> Result<(), End> {
        let command_tag = if frame.tag() == tag::COMMAND_COMPLETE {
            messages::command_tag(frame).map_err(|e| End::ServerGone(e.to_string()))?
        } else {
            &b""[..]
        };
        let command = match self.pending.front_mut() {
            Some(Expect::Query { commands }) => commands.as_mut().and_then(|c| c.pop_front()),
            Some(Expect::Execute { .. }) => match self.pending.pop_front() {
                Some(Expect::Execute { command }) => command.map(|c| *c),
                _ => None,
            },
            _ => None,
        };
        match command_tag {
            b"COMMIT" | b"PREPARE TRANSACTION" => self.client.settings.commit(),
            b"ROLLBACK" if !matches!(command, Some(SessionCommand::RollbackTo(_))) => {
                self.roll_back_settings()
            }
            _ => {}
        }
        if let Some(c) = command {
            self.apply(c, command_tag);
        }
        Ok(())
    }

    /// The transaction that changed settings rolled back: the client's go back to what they
    /// were (and so do the server's, which ran the same statements).
    pub(super) fn roll_back_settings(&mut self) {
        self.client.settings.rollback();
    }

    /// Between transactions, a server that was in line with the client when its statements
    /// began carries what those statements made of the client's settings.
    pub(super) fn mirror_settings(&mut self) {
        let settings = &self.client.settings;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.applied_for.map(|k| k.0) == Some(self.client.id) {
            server.applied = settings.desired().clone(); // an Arc: shared, not copied
            server.applied_for = Some((self.client.id, settings.generation));
        }
    }

    /// A statement that changes session state succeeded: record it for the client. The
    /// server ran it too; where its result differs from the client's (a RESET returns to
    /// the connection's startup value, not the client's), the connection's settings are
    /// marked unknown and set afresh before its next transaction.
    pub(super) fn apply(&mut self, command: SessionCommand, command_tag: &[u8]) {
        let settings = &mut self.client.settings;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        // A connection opened with the client's own startup parameters resets as it would.
        let own_startup = server.opened_with != 0;
        let differs = |name: Option<&str>| {
            !own_startup
                && match name {
                    Some(n) => settings.startup().contains_key(n),
                    None => !settings.startup().is_empty(),
                }
        };
        match (command, command_tag) {
            (SessionCommand::Set { name, sql }, b"SET" | b"SELECT 1") => settings.set(&name, &sql),
            (SessionCommand::Reset { name }, b"RESET") => {
                server.settings_unknown |= differs(Some(&name));
                settings.reset(&name);
            }
            (SessionCommand::ResetAll, b"RESET") => {
                self.session_hints = None;
                server.settings_unknown |= differs(None);
                settings.reset_all();
            }
            (SessionCommand::DiscardAll, b"DISCARD ALL") => {
                self.session_hints = None;
                server.settings_unknown |= differs(None);
                settings.discard_all();
                server.prepared.clear();
                self.names = None;
                self.unnamed_parse = None;
            }
            (SessionCommand::DeallocateAll, b"DEALLOCATE ALL") => {
                server.prepared.clear();
                if let Some(n) = self.names.as_deref_mut() {
                    n.statements.clear();
                }
            }
            (SessionCommand::Savepoint(name), b"SAVEPOINT") => settings.savepoint(name),
            (SessionCommand::Release(name), b"RELEASE") => settings.release(&name),
            (SessionCommand::RollbackTo(name), b"ROLLBACK") => settings.rollback_to(&name),
            _ => {}
        }
    }

    pub(super) async fn finish(&mut self, end: End) {
        match &end {
            End::Fatal(e) => {
                tracing::debug!(client = self.client.id, error = %e, "closing client");
                e.encode(&mut self.wbuf);
            }
            End::ServerGone(why) => {
                tracing::warn!(client = self.client.id, why = %why, "server connection lost");
                ProxyError::fatal(
                    "08006",
                    "server closed the connection unexpectedly; the session is closed",
                )
                .encode(&mut self.wbuf);
                self.drop_server();
            }
            End::ClientGone => {}
        }
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(
                CLEANUP_TIMEOUT,
                self.client.conn.stream.send_all(&self.wbuf),
            )
            .await;
        }
        crate::cancel::point(&self.client.cancel_slot, None);
        self.abandon_cross().await;
        let parked = self
            .shard_pools
            .as_deref_mut()
            .map(|p| std::mem::take(&mut p.parked))
            .unwrap_or_default();
        for (_, mut conn) in parked {
            // Idle between transactions when parked: only the session reset is due.
            if reset_for_reuse(&mut conn).await {
                conn.release();
            }
        }
        let Some(mut conn) = self.server.take() else {
            return;
        };
        if self.unsynced || self.needs_sync {
            // Inside a batch the client never synced: closing rolls its work back.
            return;
        }
        if !self.pending.is_empty() || !conn.read_buf.is_empty() {
            // Something is still running: cancel it and close the connection.
            let key = (conn.backend_pid, conn.secret_key, conn.addr);
            drop(conn);
            cancel_backend(key).await;
            return;
        }
        let mut clean = true;
        if self.tx_status != b'I' {
            clean = matches!(
                tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_simple("ROLLBACK")).await,
                Ok(Ok(None))
            );
            conn.settings_unknown = true;
        }
        if clean && (self.client.mode == PoolMode::Session || self.pinned || self.pin_check) {
            clean = reset_for_reuse(&mut conn).await;
        }
        if clean {
            conn.release();
        }
    }
}

/// Resets a departing client's server session (idle, outside a transaction) for the next
/// client: DISCARD ALL. A session that made a temporary schema keeps it after DISCARD ALL, so
/// the next client would not start as on a new connection (PREPARE TRANSACTION, for one,
/// judges temporary objects by it): false, and the connection is to be closed instead.
async fn reset_for_reuse(conn: &mut PooledConn) -> bool {
    let temp_schema = tokio::time::timeout(
        CLEANUP_TIMEOUT,
        conn.query_bool("SELECT pg_catalog.pg_my_temp_schema() <> 0"),
    )
    .await;
    if !matches!(temp_schema, Ok(Ok(Some(false)))) {
        return false;
    }
    let reset = matches!(
        tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_simple("DISCARD ALL")).await,
        Ok(Ok(None))
    );
    conn.prepared.clear();
    conn.applied = Default::default();
    conn.applied_for = None;
    conn.settings_unknown = false;
    reset
}

pub(super) async fn cancel_backend((pid, key, addr): (i32, i32, std::net::SocketAddr)) {
    use tokio::io::AsyncWriteExt;
    if let Ok(Ok(mut s)) =
        tokio::time::timeout(CLEANUP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
    {
        let _ = s.write_all(&wire::startup::encode_cancel(pid, key)).await;
    }
}

/// The statement text of a Query or Parse message, for the log.
fn statement_text(raw: &bytes::Bytes) -> String {
    let Some((&t, rest)) = raw.split_first() else {
        return String::new();
    };
    let body = rest.get(4..).unwrap_or(&[]);
    let text = match t {
        b'Q' => body,
        b'P' => {
            // Statement name, then the text.
            let at = body
                .iter()
                .position(|&b| b == 0)
                .map_or(body.len(), |i| i + 1);
            &body[at..]
        }
        _ => return format!("(a message of type {})", char::from(t)),
    };
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8_lossy(&text[..end]).into_owned()
}
