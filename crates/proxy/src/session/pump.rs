//! The session's loop: client and server messages pumped through the session's handlers,
//! and the one wait on both sockets (and the armed timeout) between them.

use super::*;

impl Session {
    pub(super) async fn pump(&mut self) -> End {
        loop {
            // Client messages, while the server side is not backed up.
            if self.swbuf.len() < HIGH_WATER && !self.terminated {
                if !self.client.conn.rbuf.is_empty() {
                    // A request: its answers and what goes to the server need buffers (kept
                    // since the last, or lent).
                    self.linger.stop();
                    if self.swbuf.capacity() == 0
                        || self.wbuf.capacity() == 0
                        || self.pending.capacity() == 0
                    {
                        lent::lend([&mut self.swbuf, &mut self.wbuf], &mut self.pending);
                    }
                    // The commonest messages in the commonest state: handled in place.
                    if self.plain_client_messages(0) == plain::Plain::NoConnection {
                        // Boxed, as every path of the loop that waits.
                        Box::pin(self.plain_wait()).await;
                    }
                }
                let first = match self.client.conn.decoder.decode(&mut self.client.conn.rbuf) {
                    Ok(f) => f,
                    Err(e) => return End::fatal(ProxyError::fatal("08P01", e.to_string())),
                };
                if let Some(first) = first {
                    // Boxed: a message's handling may wait (for a connection, a catalog
                    // answer), and its state, ~1 KiB, would otherwise sit in every idle
                    // session's task. One short-lived allocation per batch of messages read
                    // costs far less than the system call that carried them.
                    if let Err(end) = Box::pin(self.on_client_messages(first)).await {
                        return end;
                    }
                }
                self.waited_out = false;
            }
            // Server messages, while the client side is not backed up.
            match self.on_server_messages() {
                Ok(false) => {}
                Ok(true) => {
                    // Boxed, as every rare path of the loop.
                    let why = "the server ended the connection before running it";
                    if let Err(end) = Box::pin(self.retry(why)).await {
                        return end;
                    }
                }
                Err(end) => return end,
            }
            if self.pin_check && self.releasable() {
                if let Err(end) = self.check_pins().await {
                    return end;
                }
            }
            self.maybe_release();
            if self.proxy.shutting_down() && self.at_rest() {
                return End::fatal(ProxyError::fatal(
                    "57P01",
                    "terminating connection because shardgate is shutting down",
                ));
            }
            self.arm_timeout();
            match self.io().await {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(end) = Box::pin(self.timeout_fired()).await {
                        return end;
                    }
                }
                Err(end) => {
                    if let Err(end) = Box::pin(self.lost_before_answer(end)).await {
                        return end;
                    }
                }
            }
            if self.terminated && self.wbuf.is_empty() {
                return End::ClientGone;
            }
        }
    }

    /// Handles the attached server's complete messages, while the client side is not backed
    /// up. They are read where they arrived (the buffer is out of the connection meanwhile:
    /// handling a message never reads from it), then passed over at once. `Ok(true)`: the
    /// server is going away before it ran the kept request, which is to be retried.
    fn on_server_messages(&mut self) -> Result<bool, End> {
        let Some(server) = self.server.as_deref_mut() else {
            return Ok(false);
        };
        if server.read_buf.is_empty() {
            return Ok(false);
        }
        let decoder = server.decoder;
        let mut keeping = server.replay_on;
        let mut buf = std::mem::take(&mut server.read_buf);
        let mut done = 0;
        // The start of a run of answers that go to the client as they are, not yet copied.
        let mut run = 0;
        let mut outcome = Ok(());
        let mut going_away = false;
        while self.wbuf.len() + (done - run) < HIGH_WATER {
            let len = match decoder.peek_len(&buf[done..]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(End::ServerGone(e.to_string()));
                    break;
                }
            };
            let msg = FrameDecoder::msg(&buf[done..], len);
            if keeping {
                if self.going_away(&msg) {
                    done += len;
                    going_away = true;
                    break;
                }
                keeping = self.server.as_deref().is_some_and(|s| s.replay_on);
            }
            if passes_on(msg.tag()) || self.passes_expected(msg.tag()) {
                // Rows and the like: copied on with their neighbours in one piece.
                done += len;
                continue;
            }
            if run < done {
                self.wbuf.extend_from_slice(&buf[run..done]);
            }
            done += len;
            run = done;
            if let Err(end) = self.on_server(msg) {
                outcome = Err(end);
                break;
            }
        }
        if run < done && !going_away {
            self.wbuf.extend_from_slice(&buf[run..done]);
        }
        plain::consume(&mut buf, done);
        if let Some(server) = self.server.as_deref_mut() {
            debug_assert!(server.read_buf.is_empty());
            server.read_buf = buf;
            // A message begun: room for its rest.
            let _ = decoder.next_len(&mut server.read_buf);
        }
        outcome.map(|()| going_away)
    }

    /// Handles `first` and the client's further complete messages, while the server side
    /// is not backed up.
    async fn on_client_messages(&mut self, first: Frame) -> Result<(), End> {
        let mut frame = first;
        loop {
            let begins = self.keep_for_retry(&frame);
            self.on_message(frame).await?;
            if let Some(first) = begins {
                self.start_keeping(first);
            }
            if self.swbuf.len() >= HIGH_WATER || self.terminated {
                return Ok(());
            }
            frame = match self.client.conn.decoder.decode(&mut self.client.conn.rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::fatal(ProxyError::fatal("08P01", e.to_string()))),
            };
        }
    }

    /// Writes what can be written, then waits until a socket is ready and reads or writes.
    ///
    /// Written as one `poll_fn` over the sockets' readiness rather than a `select!` of
    /// readiness futures: nothing is built per wait, and an idle session stores no futures.
    /// `Ok(true)`: the armed timeout fired instead.
    async fn io(&mut self) -> Result<bool, End> {
        let client_lost = |_| End::ClientGone;
        let server_lost = |e: std::io::Error| End::ServerGone(e.to_string());
        // Held while a request that may be retried has had only descriptions back.
        let hold = retry::holding(self.server.as_ref());
        // Write eagerly: usually the socket takes it all and no wait is needed.
        let mut held = BytesMut::new();
        if hold {
            std::mem::swap(&mut held, &mut self.wbuf);
        }
        if !self.wbuf.is_empty() || self.client.conn.stream.wants_write() {
            let r = self.client.conn.stream.try_write_from(&mut self.wbuf);
            if hold {
                std::mem::swap(&mut held, &mut self.wbuf);
            }
            r.map_err(client_lost)?;
        } else if hold {
            std::mem::swap(&mut held, &mut self.wbuf);
        }
        if let Some(server) = self.server.as_deref_mut() {
            if !self.swbuf.is_empty() || server.stream.wants_write() {
                server
                    .stream
                    .try_write_from(&mut self.swbuf)
                    .map_err(server_lost)?;
            }
        }
        if self.server.is_none() {
            if self.wbuf.is_empty() && !self.client.conn.stream.wants_write() {
                // Active until the last answer is out: a shutdown waits for it.
                self.entry.set_state(crate::stats::ClientState::Idle);
            }
            // Between transactions: hold no buffers while idle (they go back to be lent).
            let rbuf = &mut self.client.conn.rbuf;
            if rbuf.is_empty() && rbuf.capacity() > 0 {
                // A kept unnamed Parse is a slice of that buffer and would keep all of it
                // (4 KiB and more per idle client of a driver that parses unnamed): copied.
                if let Some(p) = self.unnamed_parse.as_deref_mut() {
                    if !p.own_bytes {
                        p.frame = Frame::from_raw(Bytes::copy_from_slice(p.frame.raw()));
                        p.own_bytes = true;
                    }
                }
            }
            let idle = |b: &BytesMut| b.is_empty() && b.capacity() > 0;
            if idle(rbuf)
                || idle(&self.wbuf)
                || idle(&self.swbuf)
                || (self.pending.is_empty() && self.pending.capacity() > 0)
            {
                let all_idle = rbuf.is_empty()
                    && self.wbuf.is_empty()
                    && self.swbuf.is_empty()
                    && self.pending.is_empty();
                let bytes = rbuf.capacity() + self.wbuf.capacity() + self.swbuf.capacity();
                if !(all_idle && self.linger.start(bytes)) {
                    self.linger.stop();
                    lent::give_back([rbuf, &mut self.wbuf, &mut self.swbuf], &mut self.pending);
                }
            }
        }
        let terminated = self.terminated;
        let read_client = !terminated && self.swbuf.len() < HIGH_WATER;
        let read_server = !terminated && self.wbuf.len() < HIGH_WATER;
        let client = &mut self.client.conn.stream;
        let rbuf = &mut self.client.conn.rbuf;
        let wbuf = &mut self.wbuf;
        let swbuf = &mut self.swbuf;
        let mut server = self.server.as_deref_mut();
        if terminated && wbuf.is_empty() && !client.wants_write() {
            return Ok(false);
        }
        let mut timer = self.timeouts.as_deref_mut().map(|t| t.timer.as_mut());
        std::future::poll_fn(|cx| {
            use std::task::Poll;
            if let Some(timer) = timer.as_mut() {
                if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                    return Poll::Ready(Ok(true));
                }
            }
            if (!wbuf.is_empty() && !hold) || client.wants_write() {
                if let Poll::Ready(r) = client.poll_write_ready(cx) {
                    let out = if hold { &mut held } else { &mut *wbuf };
                    return Poll::Ready(
                        r.and_then(|()| client.try_write_from(out))
                            .map_err(client_lost)
                            .map(|()| false),
                    );
                }
            }
            if terminated {
                return Poll::Pending;
            }
            if let Some(server) = server.as_deref_mut() {
                if !swbuf.is_empty() || server.stream.wants_write() {
                    if let Poll::Ready(r) = server.stream.poll_write_ready(cx) {
                        return Poll::Ready(
                            r.and_then(|()| server.stream.try_write_from(swbuf))
                                .map_err(server_lost)
                                .map(|()| false),
                        );
                    }
                }
                if read_server {
                    if let Poll::Ready(r) = server.stream.poll_read_ready(cx) {
                        return Poll::Ready(
                            r.and_then(|()| {
                                server
                                    .stream
                                    .try_read_into(&mut server.read_buf, SERVER_READ_CHUNK)
                            })
                            .map_err(server_lost)
                            .map(|()| false),
                        );
                    }
                }
            }
            if read_client {
                if let Poll::Ready(r) = client.poll_read_ready(cx) {
                    if rbuf.capacity() == 0 {
                        *rbuf = lent::buffer();
                    }
                    return Poll::Ready(
                        r.and_then(|()| client.try_read_into(rbuf, CLIENT_READ_CHUNK))
                            .map_err(client_lost)
                            .map(|()| false),
                    );
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Server answers that go to the client as they are and tell the session nothing (see
/// `on_server`, whose last arm they take).
#[inline]
fn passes_on(t: u8) -> bool {
    matches!(
        t,
        tag::DATA_ROW | tag::NOTICE_RESPONSE | tag::NOTIFICATION | tag::COPY_DATA | tag::COPY_DONE
    )
}
