//! Retry once: a request whose server connection died before anything of its answer reached
//! the client, outside a transaction, runs again on a fresh connection.
//!
//! A request that starts with the session at rest (transaction pooling, no transaction, no
//! server attached, nothing in flight or unsent) keeps its client messages on the connection
//! it attaches (`ServerConn::replay`, reused with the connection: nothing is allocated per
//! request once warm) until the server's first answer that says anything happened: a row, a
//! completion, an error, a notice. Answers that only describe (ParseComplete, BindComplete,
//! RowDescription, ...; PostgreSQL sends a query's RowDescription before it runs it) wait in
//! the client's buffer meanwhile. If the server then says it is going away (FATAL 57P01 admin
//! shutdown, 57P02 crash shutdown, 57P03 cannot connect now), the statement did not complete:
//! PostgreSQL commits an autocommit statement before its CommandComplete, which would have
//! come first. The descriptions are dropped and the request runs again on another
//! connection. If the connection just ends, the statement may have committed before the
//! server died, so only reads are retried then.
//!
//! Never retried: anything inside a transaction (its earlier statements are gone with the
//! connection), session pooling and pinned connections (the server session held the
//! client's state), a request the client flushed (it waits for the descriptions), a request
//! whose answer had begun, and a retry itself. To stop a statement for good, cancel it
//! (`pg_cancel_backend`): a cancelled statement is an error, not a dead connection.

use super::*;

/// The server errors that mean the connection is going away before the statement ran.
const GOING_AWAY: [&str; 3] = ["57P01", "57P02", "57P03"];

/// Client messages a kept request may hold; any other (a Flush: the client waits for what
/// is held) stops the keeping.
fn replayable(t: u8) -> bool {
    matches!(
        t,
        tag::QUERY | tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::SYNC | tag::CLOSE
    )
}

/// Server answers that describe and run nothing: held while the request is kept.
fn describes(t: u8) -> bool {
    matches!(
        t,
        tag::PARSE_COMPLETE
            | tag::BIND_COMPLETE
            | tag::CLOSE_COMPLETE
            | tag::PARAMETER_DESCRIPTION
            | tag::ROW_DESCRIPTION
            | tag::NO_DATA
    )
}

impl Session {
    /// Before a client message is handled: keeps it when it continues a kept request, and
    /// returns it when it may begin one (to be kept by [`Self::start_keeping`] once handled,
    /// if it attached a server).
    pub(super) fn keep_for_retry(&mut self, frame: &Frame) -> Option<Frame> {
        match self.server.as_deref().map(|s| s.replay_on) {
            None if replayable(frame.tag()) && self.may_keep() => Some(frame.clone()),
            Some(true) => {
                let server = self.server.as_deref_mut().expect("attached");
                if replayable(frame.tag()) {
                    server.replay.extend_from_slice(frame.raw());
                } else {
                    stop_keeping(server);
                }
                None
            }
            _ => None,
        }
    }

    /// At rest, where a request that now begins may be retried.
    pub(super) fn may_keep(&self) -> bool {
        self.client.mode == PoolMode::Transaction
            && self.tx_status == b'I'
            && self.held_begin.is_none()
            && self.pending.is_empty()
            && !self.pinned
            && !self.pin_check
            && !self.skip_until_sync
            && self.pending_fanout.is_none()
            && self.cross().is_none()
    }

    /// After the request's first message: it attached a server, and nothing waits to go to
    /// the client (what comes now is held while the request is kept).
    pub(super) fn start_keeping(&mut self, first: Frame) {
        if !self.wbuf.is_empty() || self.pending.is_empty() || self.tx_status != b'I' {
            return;
        }
        if let Some(server) = self.server.as_deref_mut() {
            server.replay.clear();
            server.replay.extend_from_slice(first.raw());
            server.replay_on = true;
        }
    }

    /// A server answer to a kept request: `true` when it says the connection is going away
    /// before the statement ran (the request is then to be retried: [`Self::retry`]).
    #[inline]
    pub(super) fn going_away(&mut self, frame: &Msg<'_>) -> bool {
        if describes(frame.tag()) {
            return false;
        }
        self.answered(frame)
    }

    /// [`Self::going_away`] of an answer that says something happened.
    #[inline(never)]
    fn answered(&mut self, frame: &Msg<'_>) -> bool {
        let server = self.server.as_deref_mut().expect("attached");
        let going_away = frame.tag() == tag::ERROR_RESPONSE
            && messages::ErrorFields::parse(frame.body())
                .is_ok_and(|e| e.severity == "FATAL" && GOING_AWAY.contains(&e.code.as_str()));
        if !going_away {
            stop_keeping(server);
        }
        going_away
    }

    /// The connection failed (`end`) while a kept request had no answer but descriptions:
    /// retried
    /// when it only reads; otherwise `end` stands.
    pub(super) async fn lost_before_answer(&mut self, end: End) -> Result<(), End> {
        let Some(server) = self.server.as_deref() else {
            return Err(end);
        };
        if !matches!(end, End::ServerGone(_)) || !server.replay_on || !server.read_buf.is_empty() {
            return Err(end);
        }
        let reads = kept_frames(&server.replay, self.client.conn.decoder)
            .into_iter()
            .all(|f| self.only_reads(&f));
        if !reads {
            return Err(end);
        }
        self.retry("the connection was lost before any answer")
            .await
    }

    /// Whether a kept message runs nothing but reads.
    fn only_reads(&self, frame: &Frame) -> bool {
        let text = match frame.tag() {
            tag::QUERY => messages::query_text(frame).ok(),
            tag::PARSE => ParseView::new(frame).ok().map(|p| p.query),
            tag::BIND => {
                let Ok(b) = BindView::new(frame) else {
                    return false;
                };
                if !b.statement.is_empty() {
                    return self
                        .statement(b.statement)
                        .is_some_and(|s| self.classify(&s.query) != replicas::WRITE);
                }
                None
            }
            _ => return true,
        };
        match text {
            Some(sql) => self.classify(sql) != replicas::WRITE,
            // A Bind of the unnamed statement: its Parse was kept too (or went before).
            None => self
                .unnamed_parse
                .as_deref()
                .and_then(|p| ParseView::new(&p.frame).ok().map(|p| p.query.to_vec()))
                .is_some_and(|sql| self.classify(&sql) != replicas::WRITE),
        }
    }

    /// Drops the dead connection and runs the kept messages again as if they came now; the
    /// fresh connection keeps nothing, so a request is retried once.
    pub(super) async fn retry(&mut self, why: &str) -> Result<(), End> {
        let mut conn = self.server.take().expect("attached");
        let kept = kept_frames(&conn.replay, self.client.conn.decoder);
        conn.replay_on = false;
        tracing::warn!(
            client = self.client.id,
            pid = conn.backend_pid,
            "server connection lost: {why}; retrying the request once on a fresh connection"
        );
        drop(conn); // closed, never pooled
        self.drop_server();
        // Only descriptions of this request can wait there.
        self.wbuf.clear();
        self.skip_until_sync = false;
        self.error_since_ready = false;
        for frame in kept {
            Box::pin(self.on_message(frame)).await?;
        }
        Ok(())
    }
}

/// Whether what waits for the client is held back (the attached server's request is kept).
pub(super) fn holding(server: Option<&PooledConn>) -> bool {
    server.is_some_and(|s| s.replay_on)
}

/// The messages of a kept request (whole, as they were kept).
fn kept_frames(kept: &BytesMut, decoder: FrameDecoder) -> Vec<Frame> {
    let mut rest = kept.clone();
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut rest) {
        frames.push(frame);
    }
    frames
}

fn stop_keeping(server: &mut pool::ServerConn) {
    server.replay_on = false;
    server.replay.clear();
}
