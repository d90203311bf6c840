//! The plain path: client messages of a session in its commonest state handled by plain
//! functions, where they lie in the read buffer.
//!
//! The commonest state is transaction pooling on a database that does not route, with
//! nothing held back (a BEGIN, a statement for several shards), pinned, spanning shards or
//! named by the client. There, a Query or an unnamed Parse whose text is no session command
//! and has none of the words of statements that pin a connection, and Bind, Describe,
//! Execute and Sync of the unnamed statement and portals go to the server exactly as they
//! came, and what the session must know of them is one entry each in `pending`. The plain
//! path does that for every such message at the front of the read buffer in one pass,
//! without cutting them into frames or entering the async handlers, and copies each run of
//! them on in one piece.
//! The first message it does not take as it is (any other, a malformed one, one whose
//! handling may wait or refuse) stays in the buffer for the full handlers (`on_message`),
//! which do the same for these messages in every state: the two agree by construction, and
//! the differential, protocol and fault tests run over both.

use super::*;
use bytes::Buf;

impl Session {
    /// Whether the session is in the state the plain path handles.
    fn plain_state(&self) -> bool {
        self.client.mode == PoolMode::Transaction
            && !self.terminated
            && !self.skip_until_sync
            && !self.pinned
            && !self.pin_check
            && !self.copy_in_extended
            && self.held_begin.is_none()
            && self.pending_fanout.is_none()
            && self.names.is_none()
            && self.shard_pools.is_none()
            && self.session_hints.is_none()
            && self.server_shard.is_none()
            && self.client.generation == self.proxy.generation()
            && !self.routes()
            && !self.proxy.maybe_paused()
            && !self.proxy.reads_on_replicas(&self.client.database)
    }

    /// A server for the plain path: the attached one when it takes the next message as it
    /// is, else (between transactions) an idle connection of the home pool that is free now
    /// and already carries the client's settings (one that does not stays attached for the
    /// full handlers).
    fn plain_server(&mut self) -> Server {
        if let Some(server) = self.server.as_ref() {
            return if !server.is_replica() && self.ready_as_is() {
                Server::Ready
            } else {
                Server::NotPlain
            };
        }
        let Some(mut conn) = attach::try_checkout(&self.client.pool, &self.client) else {
            return Server::NoneFree;
        };
        if !attach::conn_in_line(&mut conn, &self.client) {
            // Kept: the full handlers bring its settings in line (checked out again, the
            // pool's order, round-robin, would pass it over for the next).
            self.attach(conn);
            return Server::NotPlain;
        }
        self.attach_plain(conn);
        Server::Ready
    }

    /// Attaches `conn` for a request that begins now, kept for a retry as
    /// [`Self::keep_for_retry`] would keep it.
    fn attach_plain(&mut self, conn: PooledConn) {
        let keep = self.may_keep() && self.wbuf.is_empty();
        self.attach(conn);
        if keep {
            let server = self.server.as_deref_mut().expect("attached");
            server.replay.clear();
            server.replay_on = true;
        }
    }

    /// Handles the client's complete messages at the front of its read buffer while the
    /// session is in the plain state and each is one the plain path takes as it is. `sent`:
    /// so many of their bytes went to the attached server already (a handoff's), and the
    /// state was found plain before they did.
    pub(super) fn plain_client_messages(&mut self, sent: usize) -> Plain {
        if sent == 0 && !self.plain_state() {
            return Plain::Declined;
        }
        let decoder = self.client.conn.decoder;
        // Out of the connection meanwhile: handling a message never reads from it.
        let mut buf = std::mem::take(&mut self.client.conn.rbuf);
        // The first message is looked at before a server is taken for it.
        let first = match decoder.peek_len(&buf) {
            Ok(Some(len)) => self
                .plain_message(&FrameDecoder::msg(&buf, len), self.server.is_some())
                .map(|t| (len, t)),
            _ => None,
        };
        let server = match first {
            // A handoff's connection, attached and in line: its messages are taken again.
            Some(_) if sent > 0 => Server::Ready,
            Some(_) => self.plain_server(),
            None => Server::NotPlain,
        };
        let (Some((first_len, first)), Server::Ready) = (first, server) else {
            self.client.conn.rbuf = buf;
            debug_assert!(sent == 0, "a handoff's messages are taken again");
            return match server {
                Server::NoneFree => Plain::NoConnection,
                _ => Plain::Declined,
            };
        };
        self.read_intent = false;
        let (mut len, mut t) = (first_len, first);
        let mut done = 0;
        // The start of the handled messages not yet copied on to the server.
        let mut unsent = 0;
        loop {
            match t {
                Take::RepeatedParse | Take::NewParse { .. } => {
                    let raw = &buf[done..done + len];
                    match self.unnamed_parse.as_deref_mut() {
                        Some(kept) if kept.frame.raw()[..] == *raw => {
                            kept.waits_for_bind = false;
                            if let Take::NewParse { plain } = t {
                                kept.plain = plain;
                            }
                        }
                        _ => {
                            let plain = matches!(t, Take::NewParse { plain: true });
                            // A copy of its own: the read buffer goes back when idle.
                            let frame = Frame::from_raw(Bytes::copy_from_slice(raw));
                            self.keep_unnamed_parse(&frame, false, plain);
                            if let Some(kept) = self.unnamed_parse.as_deref_mut() {
                                kept.own_bytes = true;
                            }
                        }
                    }
                    self.expect_extended(Expect::Parse {
                        visible: true,
                        statement: None,
                        client_name: None,
                    });
                }
                Take::Bind | Take::Describe => {
                    if self
                        .unnamed_parse
                        .as_deref()
                        .is_some_and(|p| p.waits_for_bind)
                    {
                        // The unnamed Parse that waited for its Bind goes first.
                        self.swbuf
                            .extend_from_slice(&buf[unsent.max(sent)..done.max(sent)]);
                        unsent = done;
                        self.send_deferred_parse();
                    }
                    self.expect_extended(if let Take::Bind = t {
                        Expect::Bind
                    } else {
                        Expect::Describe { statement: None }
                    });
                }
                Take::Execute => self.expect_extended(Expect::Execute { command: None }),
                Take::Sync => {
                    self.unsynced = false;
                    self.needs_sync = false;
                    if self.tx_status == b'I' {
                        // The batch's portals end with it: its statements may be closed
                        // from the next batch on.
                        if let Some(server) = self.server.as_deref_mut() {
                            server.prepared.batch_done();
                        }
                    }
                    self.pending.push_back(Expect::Sync);
                }
                Take::Query => self.pending.push_back(Expect::Query { commands: None }),
            }
            done += len;
            if self.swbuf.len() + (done - unsent) >= HIGH_WATER {
                break;
            }
            match decoder.peek_len(&buf[done..]) {
                Ok(Some(l)) => {
                    match self.plain_message(&FrameDecoder::msg(&buf[done..], l), true) {
                        Some(next) => (len, t) = (l, next),
                        None => break,
                    }
                }
                _ => break,
            }
        }
        debug_assert!(done >= sent, "a handoff's messages are all taken");
        self.swbuf
            .extend_from_slice(&buf[unsent.max(sent)..done.max(sent)]);
        let server = self.server.as_deref_mut().expect("attached");
        // A handoff's request began when it went out.
        if (server.note_request() || sent > 0) && self.proxy.slow_query_ms() > 0 {
            server.request_text = Some(Bytes::copy_from_slice(&buf[..first_len]));
        }
        if server.replay_on {
            server.replay.extend_from_slice(&buf[..done]);
        }
        consume(&mut buf, done);
        self.client.conn.rbuf = buf;
        Plain::Done
    }

    /// How many bytes at the front of the read buffer the plain path would take as they are,
    /// with a connection just checked out for them (0: none, or not without a deferred
    /// Parse going first, which a handoff cannot send).
    fn plain_run(&self) -> usize {
        let decoder = self.client.conn.decoder;
        let buf = &self.client.conn.rbuf;
        let mut done = 0;
        let mut parsed = false;
        while done < HIGH_WATER {
            let Ok(Some(len)) = decoder.peek_len(&buf[done..]) else {
                break;
            };
            match self.plain_message(&FrameDecoder::msg(&buf[done..], len), true) {
                Some(Take::RepeatedParse | Take::NewParse { .. }) => parsed = true,
                // A connection just attached lacks the kept unnamed statement: the plain
                // path would send it again first.
                Some(Take::Bind | Take::Describe) if !parsed => break,
                Some(_) => {}
                None => break,
            }
            done += len;
        }
        done
    }

    /// Waits in the pool's line with the messages the plain path takes left as a handoff
    /// (see `handoff.rs`), then handles them. Failing to get a connection, leaves them to
    /// the full handlers, which report the failure (without waiting a second time).
    pub(super) async fn plain_wait(&mut self) {
        let n = self.plain_run();
        let handoff = (n > 0 && self.swbuf.is_empty()).then(|| {
            let bytes = Bytes::copy_from_slice(&self.client.conn.rbuf[..n]);
            Arc::new(handoff::PlainHandoff::new(&self.client, bytes))
        });
        self.entry.set_state(crate::stats::ClientState::Waiting);
        let pool = self.client.pool.clone();
        let r = pool
            .get_handing(
                &self.client.settings.opened,
                handoff.clone().map(|h| h as Arc<dyn pool::Handoff>),
            )
            .await;
        self.entry.set_state(crate::stats::ClientState::Idle);
        match r {
            Ok(conn) => {
                self.attach_plain(attach::fresh_for(conn, &self.client));
                let sent = handoff.map_or(0, |h| h.written());
                self.plain_client_messages(sent);
            }
            Err(pool::PoolError::CheckoutTimeout { .. }) => self.waited_out = true,
            Err(_) => {}
        }
    }

    /// Whether the plain path takes `msg` as it is, and as what; `None` leaves it, and what
    /// follows, to the full handlers. `attached`: a server is (or will be) attached.
    fn plain_message(&self, msg: &Msg<'_>, attached: bool) -> Option<Take> {
        let taken = match msg.tag() {
            // The same unnamed Parse as the last, whose text had nothing to look at.
            tag::PARSE
                if self
                    .unnamed_parse
                    .as_deref()
                    .is_some_and(|k| k.plain && k.frame.raw()[..] == *msg.raw()) =>
            {
                Take::RepeatedParse
            }
            // Another unnamed Parse: no session command, nothing that pins a connection
            // (a database that does not route learns nothing of a statement's functions
            // or columns).
            tag::PARSE => {
                let p = ParseView::new(msg).ok().filter(|p| p.name.is_empty())?;
                let words = Words::of(p.query);
                if !self.plain_text(p.query, words, false) {
                    return None;
                }
                let calls = memchr::memchr(b'(', p.query).is_some();
                Take::NewParse {
                    plain: words.is_none() && !calls && !extended::maybe_insert(p.query),
                }
            }
            // Of the unnamed statement, which exists.
            tag::BIND => BindView::new(msg)
                .is_ok_and(|b| b.statement.is_empty() && self.unnamed_parse.is_some())
                .then_some(Take::Bind)?,
            tag::DESCRIBE => TargetView::new(msg)
                .is_ok_and(|d| {
                    d.kind == b'P' || (d.name.is_empty() && self.unnamed_parse.is_some())
                })
                .then_some(Take::Describe)?,
            tag::EXECUTE => messages::execute_view(msg)
                .is_ok()
                .then_some(Take::Execute)?,
            // With no server, the full handlers answer it themselves.
            tag::SYNC => (attached && msg.body().is_empty()).then_some(Take::Sync)?,
            // Outside an extended batch: no session command, nothing that pins a
            // connection.
            tag::QUERY => (!self.needs_sync
                && messages::query_text(msg)
                    .is_ok_and(|sql| self.plain_text(sql, Words::of(sql), true)))
            .then_some(Take::Query)?,
            _ => return None,
        };
        Some(taken)
    }

    /// Whether the full handlers would pass a statement of `sql` (whose words are `words`;
    /// a Query's when `query`, else an unnamed Parse's) on as it is and note no more of it
    /// than the plain path does: nothing that pins a connection or is LOADed, and, for a
    /// word of statements that change session state (`UPDATE t SET ...`), no session
    /// command and no encoding change the settings do not track.
    fn plain_text(&self, sql: &[u8], words: Words, query: bool) -> bool {
        if words.may_pin() || words.load() {
            return false;
        }
        if !words.may_change_session() {
            return true;
        }
        if !self.encoding_doubt && routing::untracked_encoding_change(sql, words) {
            return false;
        }
        if query {
            session_commands(sql, words).is_none()
        } else {
            tracked_with(sql, words).is_none()
        }
    }
}

/// What [`Session::plain_client_messages`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Plain {
    /// Handled the messages at the front of the read buffer (the rest, if any, is not
    /// plain).
    Done,
    /// Left them to the full handlers.
    Declined,
    /// They are plain, but the pool has no connection free now.
    NoConnection,
}

/// What the plain path found for a server.
#[derive(Clone, Copy)]
enum Server {
    Ready,
    NotPlain,
    NoneFree,
}

/// What the plain path takes a message as.
#[derive(Clone, Copy)]
enum Take {
    /// The same unnamed Parse as the last.
    RepeatedParse,
    /// Another unnamed Parse; `plain`: its text has none of the words looked for.
    NewParse {
        plain: bool,
    },
    Bind,
    Describe,
    Execute,
    Sync,
    Query,
}

/// Drops the first `n` bytes of `buf`; all of them: emptied where it starts, so that its
/// whole room stays (advanced past, a buffer's room shrinks until it is reclaimed).
#[inline]
pub(super) fn consume(buf: &mut BytesMut, n: usize) {
    if n == buf.len() {
        buf.clear();
    } else {
        buf.advance(n);
    }
}
