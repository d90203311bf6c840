//! The session: one client's message loop.
//!
//! The loop is a duplex pump. Client messages are looked at just enough to keep the session's
//! facts (which statement names mean what, which settings it made, whether a transaction is
//! open) and are forwarded as they arrived, except the few that name a prepared statement,
//! which are rewritten to the proxy-wide name. Server messages go back as they arrived.
//!
//! Every message forwarded to the server has an entry in `pending` that says what answer ends
//! it. That queue is what lets the proxy answer some messages itself (a Parse of a statement
//! the server connection already has, a Close of a client's statement) at exactly the place
//! in the stream where PostgreSQL would have answered, swallow the answers to messages it
//! added (a Parse the server was missing), and know when a server connection is idle and can
//! go back to the pool.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pool::PooledConn;
use router::lexer::split_statements;
use router::SessionCommand;
use sgconfig::PoolMode;
use wire::messages::{self, tag, BindView, ParseView, ProxyError, TargetView};
use wire::Frame;

use crate::cancel::CancelTarget;
use crate::fanout;
use crate::startup::{pool_error, Client};
use crate::statements::Statement;
use crate::Proxy;

/// Stop reading from one side while this much waits to be written to the other.
const HIGH_WATER: usize = 1 << 20;
/// Read buffer growth: clients send small messages; servers stream results.
const CLIENT_READ_CHUNK: usize = 4096;
const SERVER_READ_CHUNK: usize = 16 * 1024;
/// How long cleanup (ROLLBACK, DISCARD ALL) on a departing client may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What answer ends a message forwarded to the server, or an answer the proxy gives itself.
#[derive(Debug)]
enum Expect {
    /// Simple Query or FunctionCall: ends at ReadyForQuery. `commands` has one entry per
    /// statement when any of them changes session state.
    Query {
        commands: Option<VecDeque<SessionCommand>>,
    },
    Parse {
        visible: bool,
        statement: Option<Arc<Statement>>,
        client_name: Option<Box<[u8]>>,
    },
    Bind,
    /// `statement`: a named statement whose parameter types are worth keeping.
    Describe {
        statement: Option<Arc<Statement>>,
    },
    Execute {
        command: Option<SessionCommand>,
    },
    Close,
    Sync,
    /// Where the client ended a COPY FROM STDIN (CopyDone or CopyFail); answers nothing.
    CopyEnd,
    /// A held-back BEGIN sent ahead of the statement that picked the shard: its answers
    /// (the client already had them) are swallowed.
    HeldBegin,
    /// A message the proxy answers itself when its turn comes.
    Synthetic(u8),
    SyntheticError(ProxyError),
    SyntheticReady,
    /// A CommandComplete with this tag, for a statement the proxy ran itself.
    SyntheticDone(&'static str),
}

/// A client's prepared statements and the portals whose statement changes session state.
#[derive(Default)]
struct Names {
    statements: HashMap<Box<[u8]>, Arc<Statement>>,
    portal_commands: HashMap<Box<[u8]>, SessionCommand>,
    unnamed_command: Option<SessionCommand>,
}

/// A session's view of shards other than home.
#[derive(Default)]
struct ShardPools {
    /// Pools by shard name, for one config generation.
    generation: u64,
    pools: Vec<(Box<str>, pool::Pool)>,
    /// Session pooling: the session's own idle connections to shards other than the
    /// attached one's, kept for its next statement there.
    parked: Vec<(Box<str>, PooledConn)>,
}

/// A routing decision.
enum Routing {
    /// This shard (`None`: the session's).
    To(Option<String>),
    /// The key is a parameter: decided at Bind.
    AtBind,
    /// Several shards, the answers merged.
    Fanout(Box<Fanout>),
}

/// A statement for several shards, in the database's shard order (connections are taken in
/// that order, so two fan-outs never wait on each other's).
struct Fanout {
    shards: Vec<String>,
    /// Per shard, its own statement (a multi-row INSERT keeps only that shard's rows, its
    /// parameters renumbered); `None`: every shard runs the statement as the client sent it.
    parts: Option<Vec<router::rewrite::Part>>,
    /// A COPY TO STDOUT with a header line (only the first shard's reaches the client).
    copy_header: bool,
    /// A write: each shard runs it in a transaction of its own, committed only when no shard
    /// reported an error and rolled back everywhere otherwise.
    write: bool,
    /// Row counts are summed; a write to reference tables reports one shard's (every shard
    /// wrote the same rows).
    sum: bool,
}

/// The connections of a statement on several shards, one per shard in order.
struct Legs {
    conns: Vec<PooledConn>,
    shards: Vec<Box<str>>,
    /// Which one is the session's attached connection.
    own: Option<usize>,
    /// Which ones are the session's parked connections, by shard (session pooling).
    parked: Vec<Option<Box<str>>>,
}

/// An extended-protocol statement for several shards, collected from its Bind up to its
/// Execute: the messages every shard gets.
struct PendingFanout {
    fanout: Box<Fanout>,
    /// The statement's text and parameter types, for the unnamed Parse every shard gets.
    query: Bytes,
    param_types: Bytes,
    /// The Bind's portal, and its body after the statement name.
    portal: Bytes,
    bind_rest: Bytes,
    /// What followed the Bind.
    messages: BytesMut,
    /// The proxy already answered the Bind (the client flushed before its Execute).
    bind_answered: bool,
    /// The Execute of a write came: it runs at the Sync.
    executed: bool,
}

/// Why a session ends.
enum End {
    ClientGone,
    Fatal(ProxyError),
    ServerGone(String),
}

struct Session {
    proxy: Arc<Proxy>,
    client: Client,
    /// Bytes for the client.
    wbuf: BytesMut,
    server: Option<PooledConn>,
    /// The shard of the attached server; `None`: the home shard.
    server_shard: Option<Box<str>>,
    /// Bytes for the server.
    swbuf: BytesMut,
    pending: VecDeque<Expect>,
    /// Transaction status from the last ReadyForQuery.
    tx_status: u8,
    /// Set when an error was reported since the last ReadyForQuery.
    error_since_ready: bool,
    /// What the client has named; allocated on first use, so most idle sessions have none.
    names: Option<Box<Names>>,
    /// The last unnamed Parse, and whether it still waits for its Bind to pick the shard.
    unnamed_parse: Option<Box<(Frame, bool)>>,
    /// Pools of shards other than home this session has used, for one config generation.
    shard_pools: Option<Box<ShardPools>>,
    /// `SET shardgate.shard` / `SET shardgate.key`.
    session_hints: Option<Box<router::hints::Hints>>,
    /// A statement for several shards waiting for its Execute.
    pending_fanout: Option<Box<PendingFanout>>,
    /// A BEGIN the client was told succeeded, held back until a statement picks the shard
    /// the transaction runs on. Meanwhile the client's status (`tx_status`) is `T` (or `E`
    /// after an error the proxy raised) while no server is in a transaction.
    held_begin: Option<Box<Bytes>>,
    /// After an error the proxy raised in an extended-protocol batch: drop messages until Sync.
    skip_until_sync: bool,
    /// The client may have changed its encoding in a way the settings do not track.
    encoding_doubt: bool,
    /// Extended-protocol messages went to the attached server since the client's last Sync:
    /// the server is inside that batch (its implicit transaction) and stays attached.
    unsynced: bool,
    /// The server is in COPY FROM STDIN of an extended-protocol Execute and the client has
    /// not ended it yet: the server ignores Sync meanwhile.
    copy_in_extended: bool,
    terminated: bool,
}

/// The session of a logged-in client, to be spawned. `count` is released when it ends.
pub(crate) fn start(
    proxy: Arc<Proxy>,
    client: Client,
    count: crate::ClientCount,
) -> impl std::future::Future<Output = ()> + Send {
    // Built here, outside any async body, so the task stores the session once.
    let session = Session {
        proxy,
        client,
        wbuf: BytesMut::new(),
        server: None,
        server_shard: None,
        swbuf: BytesMut::new(),
        pending: VecDeque::new(),
        tx_status: b'I',
        error_since_ready: false,
        names: None,
        unnamed_parse: None,
        shard_pools: None,
        session_hints: None,
        pending_fanout: None,
        held_begin: None,
        skip_until_sync: false,
        unsynced: false,
        encoding_doubt: false,
        copy_in_extended: false,
        terminated: false,
    };
    drive(session, count)
}

async fn drive(mut s: Session, _count: crate::ClientCount) {
    let id = s.client.id;
    let end = s.pump().await;
    Box::pin(s.finish(end)).await;
    s.proxy.cancels.remove(s.client.cancel_key);
    tracing::debug!(id, "client gone");
}

/// A quick look for words that may start a statement changing session state, so ordinary
/// statements skip the statement splitter.
fn may_change_session(sql: &[u8]) -> bool {
    fn has(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    }
    has(sql, b"set") || has(sql, b"listen") || has(sql, b"discard") || has(sql, b"deallocate")
}

fn session_commands(sql: &[u8]) -> Option<VecDeque<SessionCommand>> {
    if !may_change_session(sql) {
        return None;
    }
    let text = String::from_utf8_lossy(sql);
    let cmds: VecDeque<SessionCommand> = split_statements(&text)
        .into_iter()
        .map(router::classify)
        .collect();
    if cmds.iter().all(|c| *c == SessionCommand::Other) {
        None
    } else {
        Some(cmds)
    }
}

fn is_proxy_setting(c: &SessionCommand) -> bool {
    match c {
        SessionCommand::Set { name, .. } | SessionCommand::Reset { name } => {
            name.starts_with("shardgate.")
        }
        _ => false,
    }
}

/// The value of `SET name {TO|=} value`, unquoted.
fn setting_value(sql: &str) -> String {
    let mut lx = router::lexer::Lexer::new(sql);
    while let Some(t) = lx.next() {
        if t.is_keyword("to") || t.text() == "=" {
            return match lx.next() {
                Some(router::lexer::Token::String(s)) if s.starts_with('\'') => {
                    s[1..s.len() - 1].replace("''", "'")
                }
                Some(t) => t.text().to_owned(),
                None => String::new(),
            };
        }
    }
    String::new()
}

fn tracked(sql: &[u8]) -> Option<SessionCommand> {
    if !may_change_session(sql) {
        return None;
    }
    Some(router::classify(&String::from_utf8_lossy(sql))).filter(|c| *c != SessionCommand::Other)
}

fn malformed(e: wire::frame::Malformed) -> End {
    End::Fatal(ProxyError::fatal("08P01", e.to_string()))
}

impl Session {
    async fn pump(&mut self) -> End {
        loop {
            // Client messages, while the server side is not backed up.
            while self.swbuf.len() < HIGH_WATER && !self.terminated {
                let frame = match self.client.conn.decoder.decode(&mut self.client.conn.rbuf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::Fatal(ProxyError::fatal("08P01", e.to_string())),
                };
                if let Err(end) = self.on_client(frame).await {
                    return end;
                }
            }
            // Server messages, while the client side is not backed up.
            while self.wbuf.len() < HIGH_WATER {
                let Some(server) = self.server.as_deref_mut() else {
                    break;
                };
                let frame = match server.decoder.decode(&mut server.read_buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::ServerGone(e.to_string()),
                };
                if let Err(end) = self.on_server(frame) {
                    return end;
                }
            }
            self.maybe_release();
            if let Err(end) = self.io().await {
                return end;
            }
            if self.terminated && self.wbuf.is_empty() {
                return End::ClientGone;
            }
        }
    }

    /// Writes what can be written, then waits until a socket is ready and reads or writes.
    ///
    /// Written as one `poll_fn` over the sockets' readiness rather than a `select!` of
    /// readiness futures: nothing is built per wait, and an idle session stores no futures.
    async fn io(&mut self) -> Result<(), End> {
        let client_lost = |_| End::ClientGone;
        let server_lost = |e: std::io::Error| End::ServerGone(e.to_string());
        // Write eagerly: usually the socket takes it all and no wait is needed.
        if !self.wbuf.is_empty() {
            try_write(&self.client.conn.stream, &mut self.wbuf).map_err(client_lost)?;
        }
        if let Some(server) = self.server.as_ref() {
            if !self.swbuf.is_empty() {
                try_write(&server.stream, &mut self.swbuf).map_err(server_lost)?;
            }
        }
        if self.server.is_none() {
            // Between transactions: hold no buffers while idle.
            if self.client.conn.rbuf.is_empty() && self.client.conn.rbuf.capacity() > 0 {
                self.client.conn.rbuf = BytesMut::new();
            }
            if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
                self.wbuf = BytesMut::new();
            }
        }
        let terminated = self.terminated;
        let read_client = !terminated && self.swbuf.len() < HIGH_WATER;
        let read_server = !terminated && self.wbuf.len() < HIGH_WATER;
        let client = &self.client.conn.stream;
        let rbuf = &mut self.client.conn.rbuf;
        let wbuf = &mut self.wbuf;
        let swbuf = &mut self.swbuf;
        let mut server = self.server.as_deref_mut();
        if terminated && wbuf.is_empty() {
            return Ok(());
        }
        std::future::poll_fn(|cx| {
            use std::task::Poll;
            if !wbuf.is_empty() {
                if let Poll::Ready(r) = client.poll_write_ready(cx) {
                    return Poll::Ready(
                        r.and_then(|()| try_write(client, wbuf))
                            .map_err(client_lost),
                    );
                }
            }
            if terminated {
                return Poll::Pending;
            }
            if let Some(server) = server.as_deref_mut() {
                if !swbuf.is_empty() {
                    if let Poll::Ready(r) = server.stream.poll_write_ready(cx) {
                        return Poll::Ready(
                            r.and_then(|()| try_write(&server.stream, swbuf))
                                .map_err(server_lost),
                        );
                    }
                }
                if read_server {
                    if let Poll::Ready(r) = server.stream.poll_read_ready(cx) {
                        return Poll::Ready(
                            r.and_then(|()| {
                                try_read(&server.stream, &mut server.read_buf, SERVER_READ_CHUNK)
                            })
                            .map_err(server_lost),
                        );
                    }
                }
            }
            if read_client {
                if let Poll::Ready(r) = client.poll_read_ready(cx) {
                    return Poll::Ready(
                        r.and_then(|()| try_read(client, rbuf, CLIENT_READ_CHUNK))
                            .map_err(client_lost),
                    );
                }
            }
            Poll::Pending
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Client → proxy.

    async fn on_client(&mut self, frame: Frame) -> Result<(), End> {
        let t = frame.tag();
        if t == tag::TERMINATE {
            self.terminated = true;
            return Ok(());
        }
        if let Err(e) = messages::check_frontend(&frame) {
            return Err(malformed(e));
        }
        if self.skip_until_sync && t != tag::SYNC {
            return Ok(());
        }
        if self.pending_fanout.as_ref().is_some_and(|p| p.executed) && t != tag::SYNC {
            // Something more in the batch of a write on several shards: it would share the
            // batch's transaction, which the shards cannot. Nothing of the batch has run.
            self.pending_fanout = None;
            return self.extended_error(
                ProxyError::error(
                    "0A000",
                    "shardgate cannot run more of this batch after a write on several shards: they would not share the batch's transaction",
                )
                .with_hint("Send Sync right after the Execute of a write that runs on several shards."),
            );
        }
        if self.pending_fanout.is_some() {
            match t {
                tag::EXECUTE => return self.fanout_execute(frame).await,
                tag::DESCRIBE if frame.body().first() == Some(&b'P') => {
                    let p = self.pending_fanout.as_mut().expect("pending");
                    p.messages.extend_from_slice(frame.raw());
                    return Ok(());
                }
                tag::FLUSH
                    if self
                        .pending_fanout
                        .as_ref()
                        .is_some_and(|p| p.messages.is_empty()) =>
                {
                    // The client may wait for its BindComplete before it sends the Execute:
                    // the proxy answers the Bind, and the shards' answers to it are dropped.
                    let p = self.pending_fanout.as_mut().expect("pending");
                    if !p.bind_answered {
                        p.bind_answered = true;
                        self.push_synthetic(Expect::Synthetic(tag::BIND_COMPLETE));
                    }
                    if self.server.is_some() {
                        self.forward(&frame);
                    }
                    return Ok(());
                }
                _ => {
                    self.run_pending_fanout().await?;
                    if self.skip_until_sync && t != tag::SYNC {
                        return Ok(());
                    }
                }
            }
        }
        match t {
            tag::QUERY => self.on_query(frame).await,
            tag::PARSE => self.on_parse(frame).await,
            tag::BIND => self.on_bind(frame).await,
            tag::DESCRIBE => self.on_describe(frame).await,
            tag::EXECUTE => {
                if let Err(e) = self.ensure_server().await {
                    return self.extended_error(e);
                }
                let command = match self.names.as_deref() {
                    Some(n) if !n.portal_commands.is_empty() => {
                        let (portal, _) = messages::execute_view(&frame).map_err(malformed)?;
                        n.portal_commands.get(portal).cloned()
                    }
                    _ => None,
                };
                self.forward(&frame);
                self.expect_extended(Expect::Execute { command });
                Ok(())
            }
            tag::CLOSE => self.on_close(frame),
            tag::SYNC => {
                self.skip_until_sync = false;
                self.unsynced = false;
                if self.server.is_some() {
                    self.forward(&frame);
                    if !self.copy_in_extended {
                        self.pending.push_back(Expect::Sync);
                    }
                } else {
                    messages::ready_for_query(&mut self.wbuf, self.tx_status);
                    self.error_since_ready = false;
                }
                Ok(())
            }
            tag::FLUSH => {
                if self.server.is_some() {
                    self.forward(&frame);
                }
                Ok(())
            }
            tag::COPY_DATA => {
                // Outside COPY these are ignored, as by PostgreSQL.
                if self.server.is_some() {
                    self.forward(&frame);
                }
                Ok(())
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                // With nothing in flight no COPY runs: a stray end (after a COPY the proxy
                // refused) is ignored, as by PostgreSQL.
                if self.server.is_some() && !self.pending.is_empty() {
                    self.forward(&frame);
                    self.copy_in_extended = false;
                    self.pending.push_back(Expect::CopyEnd);
                }
                Ok(())
            }
            tag::FUNCTION_CALL => {
                if let Err(e) = self.ensure_server_on(None).await {
                    return self.simple_error(e);
                }
                self.begin_if_held();
                self.forward(&frame);
                self.pending.push_back(Expect::Query { commands: None });
                Ok(())
            }
            _ => Err(End::Fatal(ProxyError::fatal(
                "08P01",
                format!("invalid frontend message type {}", t),
            ))),
        }
    }

    #[inline]
    fn forward(&mut self, frame: &Frame) {
        self.swbuf.extend_from_slice(frame.raw());
    }

    async fn on_query(&mut self, frame: Frame) -> Result<(), End> {
        let sql = messages::query_text(&frame).map_err(malformed)?;
        self.note_encoding_change(sql);
        let commands = session_commands(sql);
        if let Some(cmds) = &commands {
            if cmds.iter().any(is_proxy_setting) {
                return self.proxy_setting(cmds);
            }
        }
        if self.client.mode == PoolMode::Transaction
            && commands
                .as_ref()
                .is_some_and(|c| c.contains(&SessionCommand::Listen))
        {
            return self.simple_error(
                ProxyError::error(
                    "0A000",
                    "LISTEN and UNLISTEN need a server session of their own, which transaction pooling does not give",
                )
                .with_hint("Use pool mode \"session\" for this user (users[].pool_mode: session)."),
            );
        }
        if self.held_begin.is_some() {
            if let Some(done) = self.end_held(sql) {
                return done;
            }
        } else if self.tx_status == b'I'
            && self.client.mode == PoolMode::Transaction
            && !self.unsynced
            && lone_begin(sql)
            && self.routes()
            && (self.server.is_none() || {
                // Pipelined behind statements still answering: once they have, their
                // server goes back and the BEGIN can be held.
                if let Err(e) = self.settle().await {
                    return Err(End::Fatal(e));
                }
                self.server.is_none() && self.tx_status == b'I'
            })
        {
            // Held until a statement picks the shard.
            self.held_begin = Some(Box::new(frame.raw().clone()));
            self.tx_status = b'T';
            self.push_synthetic(Expect::SyntheticDone("BEGIN"));
            self.push_synthetic(Expect::SyntheticReady);
            return Ok(());
        }
        match self.copy_target(sql) {
            Ok(Some(target)) => return self.copy_in(&frame, target).await,
            Ok(None) => {}
            Err(e) => return self.simple_error(e),
        }
        let target = match self.route(sql) {
            Ok(Routing::To(t)) => t,
            Ok(Routing::Fanout(f)) => return self.simple_fanout(&frame, f).await,
            Ok(Routing::AtBind) => None,
            Err(e) => return self.simple_error(e),
        };
        if let Err(e) = self.ensure_server_on(target).await {
            return self.simple_error(e);
        }
        self.begin_if_held();
        self.forward(&frame);
        self.pending.push_back(Expect::Query { commands });
        Ok(())
    }

    async fn on_parse(&mut self, frame: Frame) -> Result<(), End> {
        let p = ParseView::new(&frame).map_err(malformed)?;
        self.note_encoding_change(p.query);
        if matches!(tracked(p.query), Some(SessionCommand::Set { ref name, .. } | SessionCommand::Reset { ref name }) if name.starts_with("shardgate."))
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
            let command = tracked(p.query);
            if command.is_some() || self.names.is_some() {
                self.names().unnamed_command = command;
            }
            let target = match self.route_plan(p.query, &[]) {
                // While BEGIN is held, the Parse waits for its Bind, which sends the BEGIN
                // first (a BEGIN after it would drop the unnamed statement).
                Ok(Routing::To(_)) if self.held_begin.is_some() => {
                    self.unnamed_parse = Some(Box::new((frame.clone(), true)));
                    self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
                    return Ok(());
                }
                Ok(Routing::To(t)) => t,
                Ok(Routing::AtBind | Routing::Fanout(_))
                    if self.server.is_none() || !self.unsynced =>
                {
                    // The shard is known at Bind; the Parse goes with it.
                    self.unnamed_parse = Some(Box::new((frame.clone(), true)));
                    self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
                    return Ok(());
                }
                Ok(Routing::AtBind | Routing::Fanout(_)) => None,
                Err(e) => return self.extended_error(e),
            };
            if let Err(e) = self.ensure_server_on(target).await {
                return self.extended_error(e);
            }
            self.unnamed_parse = Some(Box::new((frame.clone(), false)));
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
        if let Err(e) = self.ensure_server_on(target).await {
            return self.extended_error(e);
        }
        let server = self.server.as_mut().expect("ensured");
        if server.prepared.contains(&stmt.id) {
            self.push_synthetic(Expect::Synthetic(tag::PARSE_COMPLETE));
        } else {
            server.prepared.insert(stmt.id);
            messages::parse(
                &mut self.swbuf,
                &stmt.server_name,
                &stmt.query,
                &stmt.param_types,
            );
            self.expect_extended(Expect::Parse {
                visible: true,
                statement: Some(stmt.clone()),
                client_name: Some(name),
            });
        }
        Ok(())
    }

    fn names(&mut self) -> &mut Names {
        self.names.get_or_insert_with(Default::default)
    }

    fn statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        self.names.as_deref()?.statements.get(name).cloned()
    }

    /// Remembers whether a portal's statement changes session state.
    fn note_portal(&mut self, portal: &[u8], command: Option<SessionCommand>) {
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

    /// Makes sure the attached server has `stmt`, adding a Parse whose answer is swallowed.
    fn prepare_on_server(&mut self, stmt: &Arc<Statement>) {
        let server = self.server.as_mut().expect("attached");
        if server.prepared.insert(stmt.id) {
            messages::parse(
                &mut self.swbuf,
                &stmt.server_name,
                &stmt.query,
                &stmt.param_types,
            );
            self.expect_extended(Expect::Parse {
                visible: false,
                statement: Some(Arc::clone(stmt)),
                client_name: None,
            });
        }
    }

    fn unknown_statement(name: &[u8]) -> ProxyError {
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

    async fn on_bind(&mut self, frame: Frame) -> Result<(), End> {
        let b = BindView::new(&frame).map_err(malformed)?;
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
                .map(|p| p.0.clone())
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
                            self.pending_fanout = Some(Box::new(PendingFanout {
                                fanout,
                                query: Bytes::copy_from_slice(pv.query),
                                param_types: Bytes::copy_from_slice(pv.param_types),
                                portal: Bytes::copy_from_slice(b.portal),
                                bind_rest: Bytes::copy_from_slice(b.rest),
                                messages: BytesMut::new(),
                                bind_answered: false,
                                executed: false,
                            }));
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
            if let Err(e) = self.ensure_server_on(target).await {
                return self.extended_error(e);
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
        match self.ensure_server_for(&stmt, &params).await {
            Ok(None) => {}
            Ok(Some(fanout)) => {
                self.pending_fanout = Some(Box::new(PendingFanout {
                    fanout,
                    query: stmt.query.clone(),
                    param_types: stmt.param_types.clone(),
                    portal: Bytes::copy_from_slice(b.portal),
                    bind_rest: Bytes::copy_from_slice(b.rest),
                    messages: BytesMut::new(),
                    bind_answered: false,
                    executed: false,
                }));
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

    async fn on_describe(&mut self, frame: Frame) -> Result<(), End> {
        let d = TargetView::new(&frame).map_err(malformed)?;
        if d.kind == b'S' && d.name.is_empty() && self.unnamed_parse.is_none() {
            return self.extended_error(Self::unknown_statement(b""));
        }
        if d.kind == b'P' || d.name.is_empty() {
            if let Err(e) = self.ensure_server_on(None).await {
                return self.extended_error(e);
            }
            self.send_deferred_parse();
            self.forward(&frame);
            self.expect_extended(Expect::Describe { statement: None });
            return Ok(());
        }
        let Some(stmt) = self.statement(d.name) else {
            return self.extended_error(Self::unknown_statement(d.name));
        };
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

    fn on_close(&mut self, frame: Frame) -> Result<(), End> {
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
    /// transaction.
    fn expect_extended(&mut self, e: Expect) {
        // Parse, Describe and Close run nothing; a Bind or Execute starts the batch's work.
        if matches!(e, Expect::Bind | Expect::Execute { .. }) {
            self.unsynced = true;
        }
        self.pending.push_back(e);
    }

    /// Queues an answer of the proxy's own; written now when nothing is in flight before it.
    fn push_synthetic(&mut self, e: Expect) {
        self.pending.push_back(e);
        self.emit_synthetic_head();
    }

    fn emit_synthetic_head(&mut self) {
        loop {
            match self.pending.front() {
                Some(Expect::Synthetic(t)) => {
                    messages::empty_message(&mut self.wbuf, *t);
                }
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
    fn extended_error(&mut self, e: ProxyError) -> Result<(), End> {
        if e.fatal {
            return Err(End::Fatal(e));
        }
        if self.held_begin.is_some() {
            self.tx_status = b'E';
        }
        self.push_synthetic(Expect::SyntheticError(e));
        self.skip_until_sync = true;
        Ok(())
    }

    /// An error the proxy raises for a simple Query: the error, then ReadyForQuery.
    fn simple_error(&mut self, e: ProxyError) -> Result<(), End> {
        if e.fatal {
            return Err(End::Fatal(e));
        }
        if self.held_begin.is_some() {
            self.tx_status = b'E';
        }
        self.push_synthetic(Expect::SyntheticError(e));
        self.push_synthetic(Expect::SyntheticReady);
        Ok(())
    }

    /// Attaches a server connection if none is, and brings its settings in line with the
    /// client's when nothing is in flight.
    /// Where a statement must run: `Some(shard)`, or `None` for the session's shard (the
    /// attached server, else the home shard). Only databases with shard maps or reference
    /// tables and more than one shard route; the others send everything home.
    /// `SET shardgate.shard|key = ...` and `RESET shardgate.*`: session hints the proxy keeps
    /// and never sends to PostgreSQL.
    fn proxy_setting(&mut self, cmds: &VecDeque<SessionCommand>) -> Result<(), End> {
        if cmds.len() != 1 {
            return self.simple_error(
                ProxyError::error(
                    "0A000",
                    "SET shardgate.* must be sent as a query of its own",
                )
                .with_hint("Send SET shardgate.shard = '...' without other statements."),
            );
        }
        let (done, result) = match &cmds[0] {
            SessionCommand::Set { name, sql } => (
                "SET",
                self.set_proxy_setting(name, Some(setting_value(sql))),
            ),
            SessionCommand::Reset { name } => ("RESET", self.set_proxy_setting(name, None)),
            _ => ("SET", Ok(())),
        };
        if let Err(e) = result {
            return self.simple_error(e);
        }
        self.push_synthetic(Expect::SyntheticDone(done));
        self.push_synthetic(Expect::SyntheticReady);
        Ok(())
    }

    fn set_proxy_setting(&mut self, name: &str, value: Option<String>) -> Result<(), ProxyError> {
        match name {
            "shardgate.shard" => {
                if let Some(v) = &value {
                    let config = self.proxy.config.load();
                    let known = config
                        .databases
                        .get(&self.client.database)
                        .is_some_and(|d| d.shards.iter().any(|(n, _)| n == v));
                    if !known {
                        return Err(ProxyError::error(
                            "22023",
                            format!("shardgate.shard: shard \"{v}\" does not exist"),
                        ));
                    }
                }
                self.session_hints
                    .get_or_insert_with(Default::default)
                    .shard = value;
            }
            "shardgate.key" => self.session_hints.get_or_insert_with(Default::default).key = value,
            other => {
                return Err(ProxyError::error(
                    "42704",
                    format!("unrecognized configuration parameter \"{other}\""),
                )
                .with_hint("shardgate knows shardgate.shard and shardgate.key."))
            }
        }
        Ok(())
    }

    /// Whether this client's database routes statements at all (several shards and maps or
    /// reference tables); the others send everything home and pay nothing for routing.
    fn routes(&self) -> bool {
        let config = self.proxy.config.load();
        config
            .databases
            .get(&self.client.database)
            .is_some_and(|db| {
                db.shards.len() >= 2 && (!db.maps.is_empty() || !db.reference_tables.is_empty())
            })
    }

    /// Where a statement with no parameters to wait for runs.
    fn route(&self, sql: &[u8]) -> Result<Routing, ProxyError> {
        match self.route_plan(sql, &[])? {
            Routing::AtBind => Err(ProxyError::error(
                "0A000",
                "shardgate cannot route this statement: its shard key is a parameter and no values are bound",
            )
            .with_hint("Give the key as a constant, or name the shard: /* shardgate: shard=NAME */.")),
            r => Ok(r),
        }
    }

    /// Where a statement with its parameters `bound` (empty: not known yet).
    fn route_plan(&self, sql: &[u8], bound: &[Option<String>]) -> Result<Routing, ProxyError> {
        let config = self.proxy.config.load();
        let Some(db) = config.databases.get(&self.client.database) else {
            return Ok(Routing::To(None));
        };
        if db.shards.len() < 2 || (db.maps.is_empty() && db.reference_tables.is_empty()) {
            return Ok(Routing::To(None));
        }
        let text = String::from_utf8_lossy(sql);
        // Only a query with a `;` before its end can hold several statements.
        let several = text.trim_end().trim_end_matches(';').contains(';');
        let statements = if several {
            router::lexer::split_statements(&text)
        } else {
            Vec::new()
        };
        if statements.len() > 1 {
            // Each statement of a multi-statement query routes; they must agree. A query
            // whose statements all run on every shard (a batch of DDL) runs whole on each.
            let mut target: Option<String> = None;
            let (mut everywhere, mut elsewhere) = (0, 0);
            let mut writes = false;
            for st in statements {
                match self.route_plan(st.as_bytes(), bound)? {
                    Routing::AtBind => return Ok(Routing::AtBind),
                    Routing::Fanout(f)
                        if f.parts.is_none() && f.shards.len() == db.shards.len() && f.sum =>
                    {
                        writes |= f.write;
                        everywhere += 1
                    }
                    Routing::Fanout(_) => {
                        return Err(ProxyError::error(
                            "0A000",
                            "shardgate cannot route this query: one of its statements runs on several shards",
                        )
                        .with_hint("Send a statement that runs on several shards as a query of its own."))
                    }
                    Routing::To(next) => {
                        elsewhere += 1;
                        if let Some(t) = next {
                            match &target {
                                Some(prev) if *prev != t => {
                                    return Err(ProxyError::error(
                                        "0A000",
                                        format!("shardgate cannot route this query: its statements need shards `{prev}` and `{t}`"),
                                    )
                                    .with_hint("Send the statements of each shard in a query of their own."))
                                }
                                _ => target = Some(t),
                            }
                        }
                    }
                }
            }
            if everywhere > 0 {
                if elsewhere > 0 {
                    return Err(ProxyError::error(
                        "0A000",
                        "shardgate cannot route this query: some of its statements run on every shard and others on one",
                    )
                    .with_hint("Send the statements that run on every shard (DDL) in a query of their own."));
                }
                return Ok(Routing::Fanout(Box::new(Fanout {
                    shards: db.shards.iter().map(|(n, _)| n.to_owned()).collect(),
                    parts: None,
                    copy_header: copy_header(&text),
                    // A query of writes: all of it commits on every shard, or none of it.
                    write: writes,
                    sum: true,
                })));
            }
            return Ok(Routing::To(target));
        }
        let mut hints = router::hints::parse_hints(&text)
            .map_err(|e| ProxyError::error("42601", format!("shardgate hint: {e}")))?;
        self.merge_session_hints(&mut hints);
        if hints.shard.is_none() && !sql.is_ascii() && !self.client_utf8() {
            return Err(refuse(
                "the client's encoding is not UTF8 and the statement has characters beyond ASCII, which the router would read wrongly".into(),
                "Connect with client_encoding=UTF8, or name the shard: /* shardgate: shard=NAME */.",
            ));
        }
        let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
        let routed = match self
            .proxy
            .route_cache
            .route_in(self.scope(), &text, bound, &keys)
        {
            Ok(r) => r,
            Err(_) if hints.shard.is_some() => {
                return Ok(Routing::To(hints.shard.clone()));
            }
            Err(e) => {
                return Err(refuse(
                    format!("it does not parse ({e})"),
                    "Name the shard in the statement: /* shardgate: shard=NAME */.",
                ))
            }
        };
        self.routing(
            db,
            &text,
            &routed.analysis,
            &routed.params,
            &hints,
            bound.is_empty(),
        )
    }

    /// Whether the client's text is UTF-8, as the router reads it (`client_encoding` UTF8,
    /// or SQL_ASCII, whose bytes reach the server unconverted).
    fn client_utf8(&self) -> bool {
        if self.encoding_doubt {
            return false;
        }
        match self.client.settings.desired().get("client_encoding") {
            None => true,
            Some(sql) => is_utf8_name(sql),
        }
    }

    /// A statement that may change the client's encoding in a way the settings do not track
    /// (`SET LOCAL client_encoding`, `set_config(...)`, `SET NAMES`): from then on the
    /// session's text is not taken for UTF-8.
    fn note_encoding_change(&mut self, sql: &[u8]) {
        if self.encoding_doubt || !may_change_session(sql) {
            return;
        }
        let has = |needle: &[u8]| {
            sql.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        };
        if has(b"names")
            || (has(b"client_encoding")
                && !matches!(
                    tracked(sql),
                    Some(SessionCommand::Set { ref name, .. }) if name == "client_encoding"
                ))
        {
            self.encoding_doubt = true;
        }
    }

    /// The route cache's scope of this client's database.
    fn scope(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.client.database.hash(&mut h);
        h.finish()
    }

    /// A comment hint in the statement wins over `SET shardgate.*`.
    fn merge_session_hints(&self, hints: &mut router::hints::Hints) {
        if let Some(session) = self.session_hints.as_deref() {
            if hints.shard.is_none() && hints.key.is_none() {
                hints.shard = session.shard.clone();
                hints.key = session.key.clone();
            }
        }
    }

    /// Where a prepared statement runs with its parameters `bound` (empty: not known yet).
    /// The statement is analysed on its first use and the analysis kept with it.
    fn route_statement(
        &self,
        stmt: &Statement,
        bound: &[Option<String>],
    ) -> Result<Routing, ProxyError> {
        let config = self.proxy.config.load();
        let Some(db) = config.databases.get(&self.client.database) else {
            return Ok(Routing::To(None));
        };
        if db.shards.len() < 2 || (db.maps.is_empty() && db.reference_tables.is_empty()) {
            return Ok(Routing::To(None));
        }
        if !stmt.query.is_ascii() && !self.client_utf8() {
            // Judged (and refused unless a hint names the shard) as text.
            return self.route_plan(&stmt.query, bound);
        }
        let generation = self.proxy.generation();
        let scope = self.scope();
        let kept = stmt.route.load();
        let route = match kept
            .as_ref()
            .filter(|r| r.generation == generation && r.scope == scope)
        {
            Some(r) => r.clone(),
            None => {
                let text = String::from_utf8_lossy(&stmt.query);
                let Ok(hints) = router::hints::parse_hints(&text) else {
                    return self.route_plan(&stmt.query, bound);
                };
                let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
                if text.trim_end().trim_end_matches(';').contains(';') {
                    return self.route_plan(&stmt.query, bound);
                }
                let Ok(routed) = self
                    .proxy
                    .route_cache
                    .route_in(self.scope(), &text, &[], &keys)
                else {
                    return self.route_plan(&stmt.query, bound);
                };
                let r = Arc::new(crate::statements::StatementRoute {
                    generation,
                    scope,
                    analysis: routed.analysis,
                    constants: routed.params[routed.own.min(routed.params.len())..].to_vec(),
                    own: routed.own,
                    hints,
                });
                stmt.route.store(Some(r.clone()));
                r
            }
        };
        let mut params: Vec<Option<String>> = Vec::with_capacity(route.own + route.constants.len());
        params.extend((0..route.own).map(|i| bound.get(i).cloned().flatten()));
        params.extend(route.constants.iter().cloned());
        let mut hints = route.hints.clone();
        self.merge_session_hints(&mut hints);
        let text = String::from_utf8_lossy(&stmt.query);
        self.routing(
            db,
            &text,
            &route.analysis,
            &params,
            &hints,
            bound.is_empty(),
        )
    }

    /// The routing of an analysed statement.
    fn routing(
        &self,
        db: &sgconfig::DatabaseConfig,
        text: &str,
        analysis: &router::analyze::Analysis,
        params: &[Option<String>],
        hints: &router::hints::Hints,
        unbound: bool,
    ) -> Result<Routing, ProxyError> {
        use router::plan::Plan;
        let plan = router::plan::plan_with_hints(db, analysis, params, hints);
        match plan {
            Plan::Shard(s) => Ok(Routing::To(Some(s))),
            Plan::Session | Plan::AnyShard => Ok(Routing::To(None)),
            Plan::AllShards => Ok(Routing::Fanout(Box::new(Fanout {
                shards: db.shards.iter().map(|(n, _)| n.to_owned()).collect(),
                parts: None,
                copy_header: copy_header(text),
                write: analysis.kind == router::analyze::Kind::Write,
                sum: !(analysis.kind == router::analyze::Kind::Write
                    && !analysis.tables.is_empty()
                    && analysis
                        .tables
                        .iter()
                        .all(|t| db.reference_tables.contains(t))),
            }))),
            Plan::Shards(some) => {
                // In the database's order.
                let shards: Vec<String> = db
                    .shards
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| some.iter().any(|s| s == n))
                    .map(str::to_owned)
                    .collect();
                let parts = match router::plan::row_shards(db, analysis, params) {
                    None => None,
                    Some(rows) => Some(router::rewrite::split_insert(text, &rows, &shards).map_err(|why| {
                        refuse(
                            format!("its rows live on shards {} and {why}", shards.join(", ")),
                            "Send the rows of each shard in an INSERT of their own.",
                        )
                    })?),
                };
                Ok(Routing::Fanout(Box::new(Fanout {
                    shards,
                    parts,
                    copy_header: false,
                    write: analysis.kind == router::analyze::Kind::Write,
                    sum: true,
                })))
            }
            Plan::Pinned if self.server.is_some() && self.tx_status != b'I' => {
                Ok(Routing::To(None))
            }
            Plan::Pinned => Err(refuse(
                "the router cannot see which shards its code touches".into(),
                "Run it inside a transaction already on the shard it needs, or name the shard: /* shardgate: shard=NAME */.",
            )),
            Plan::AtBind if unbound => Ok(Routing::AtBind),
            Plan::AtBind => Err(refuse(
                "its shard key is a parameter the router cannot read (NULL, or binary of a type it does not decode)".into(),
                "Send the key in text format, or name the shard: /* shardgate: shard=NAME */.",
            )),
            Plan::Refuse { reason, hint } => Err(refuse(reason, &hint)),
        }
    }

    /// Attaches the server a statement runs on (by its key, where the database routes); a
    /// key still waiting for its Bind leaves the choice to the session.
    /// A statement for several shards attaches nothing and comes back.
    async fn ensure_server_for(
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
    fn note_reload(&mut self) {
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

    async fn ensure_server_on(&mut self, target: Option<String>) -> Result<(), ProxyError> {
        self.note_reload();
        // Outside a transaction (and between batches) the session's shard is home, even
        // while a server of another shard is still attached (answering, or parked there by
        // session pooling).
        let target = match target {
            None if self.server_shard.is_some()
                && self.tx_status == b'I'
                && self.held_begin.is_none()
                && !self.unsynced =>
            {
                Some(self.home_shard())
            }
            t => t,
        };
        if let Some(t) = &target {
            let quiet = self.client.mode == PoolMode::Transaction
                && self.tx_status == b'I'
                && self.held_begin.is_none()
                && !self.unsynced
                && !self.pending.is_empty();
            if quiet && self.server_shard_name().as_deref() != Some(t.as_str()) {
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
                if attached != t {
                    return Err(ProxyError::error(
                        "0A000",
                        format!("this transaction runs on shard `{attached}` and the statement needs shard `{t}`: transactions across shards are not available yet"),
                    )
                    .with_hint("Run the statements of each shard in transactions of their own."));
                }
                return self.ensure_server().await;
            }
            if *t != self.home_shard() {
                let pool = self.shard_pool(t)?;
                let conn = match pool.try_get() {
                    Some(c) => c,
                    None => Box::pin(pool.get())
                        .await
                        .map_err(|e| pool_error(e, false))?,
                };
                self.attach(conn);
                self.server_shard = Some(t.as_str().into());
            }
        }
        self.ensure_server().await
    }

    /// Sends the held-back BEGIN ahead of the statement that picked the attached server.
    fn begin_if_held(&mut self) {
        if self.server.is_none() {
            return;
        }
        if let Some(begin) = self.held_begin.take() {
            self.swbuf.extend_from_slice(&begin);
            self.pending.push_back(Expect::HeldBegin);
        }
    }

    /// A failed transaction that never reached a server accepts nothing but its end.
    fn held_refusal(&self) -> Option<ProxyError> {
        (self.tx_status == b'E').then(|| {
            ProxyError::error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            )
        })
    }

    /// A query while BEGIN is held: COMMIT or ROLLBACK end the transaction no server saw;
    /// after an error only those are accepted. `None`: go on and run it.
    fn end_held(&mut self, sql: &[u8]) -> Option<Result<(), End>> {
        use router::lexer::Token;
        let text = String::from_utf8_lossy(sql);
        let mut words: Vec<Token<'_>> = router::lexer::Lexer::new(&text).collect();
        while words.last() == Some(&Token::Semicolon) {
            words.pop();
        }
        let kw = |i: usize, k: &str| words.get(i).is_some_and(|t| t.is_keyword(k));
        let rollback = kw(0, "rollback") || kw(0, "abort");
        if !(rollback || kw(0, "commit") || kw(0, "end")) {
            return self.held_refusal().map(|e| self.simple_error(e));
        }
        let mut i = 1;
        if kw(i, "work") || kw(i, "transaction") {
            i += 1;
        }
        if rollback && kw(i, "to") {
            // No savepoint can exist in a transaction no statement has run in.
            let name = words
                .last()
                .map(|t| t.text().to_owned())
                .unwrap_or_default();
            return Some(self.simple_error(ProxyError::error(
                "3B001",
                format!("savepoint \"{name}\" does not exist"),
            )));
        }
        let chain = if kw(i, "and") && kw(i + 1, "chain") {
            i += 2;
            true
        } else if kw(i, "and") && kw(i + 1, "no") && kw(i + 2, "chain") {
            i += 3;
            false
        } else {
            false
        };
        if i != words.len() {
            // Something else (COMMIT PREPARED, ...): the server judges it.
            return self.held_refusal().map(|e| self.simple_error(e));
        }
        let tag = if self.tx_status == b'E' || rollback {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        if chain {
            // A new transaction with the same characteristics: the same BEGIN stays held.
            self.tx_status = b'T';
        } else {
            self.held_begin = None;
            self.tx_status = b'I';
        }
        self.push_synthetic(Expect::SyntheticDone(tag));
        self.push_synthetic(Expect::SyntheticReady);
        Some(Ok(()))
    }

    /// A `COPY ... FROM STDIN` into a sharded or reference table (without a shard hint):
    /// its rows are split by shard.
    fn copy_target(&self, sql: &[u8]) -> Result<Option<crate::copyin::CopyTarget>, ProxyError> {
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
    async fn copy_in(
        &mut self,
        frame: &Frame,
        target: crate::copyin::CopyTarget,
    ) -> Result<(), End> {
        let mut legs = match self.take_legs(&target.shards).await? {
            Ok(l) => l,
            Err(e) => return self.simple_error(e),
        };
        let result = Box::pin(crate::copyin::run(
            &mut legs.conns,
            &target,
            frame.raw(),
            &mut self.client.conn,
            &mut self.wbuf,
        ))
        .await;
        match result {
            Ok(_) => {
                self.put_back(legs);
                self.tx_status = b'I';
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
    async fn simple_fanout(&mut self, frame: &Frame, f: Box<Fanout>) -> Result<(), End> {
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
    async fn fanout_execute(&mut self, frame: Frame) -> Result<(), End> {
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
        if let Some(p) = self.pending_fanout.as_mut() {
            p.messages.extend_from_slice(frame.raw());
            if p.fanout.write {
                // A write commits on every shard at the batch's Sync, so that nothing else of
                // the batch can fail after it has committed.
                p.executed = true;
                return Ok(());
            }
        }
        self.run_pending_fanout().await
    }

    /// Runs the collected statement for several shards: each gets an unnamed Parse of its
    /// text, the client's Bind and what followed, and a Sync of its own.
    async fn run_pending_fanout(&mut self) -> Result<(), End> {
        let Some(p) = self.pending_fanout.take() else {
            return Ok(());
        };
        if let Err(e) = self.settle().await {
            return Err(End::Fatal(e));
        }
        if self.error_since_ready {
            // An earlier statement of this batch failed: PostgreSQL skips the rest of it.
            self.skip_until_sync = true;
            return Ok(());
        }
        if self.unsynced {
            return self.extended_error(
                ProxyError::error(
                    "0A000",
                    "shardgate cannot run a statement on several shards in the same batch as statements already run on one: they would not share the batch's transaction",
                )
                .with_hint("Send a Sync before the statement that runs on several shards."),
            );
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
    async fn fan_out(
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
        let result = if f.write {
            // Each shard's part in a transaction: all commit, or none does.
            let merge = fanout::Merge {
                ready: false,
                ..merge
            };
            let out = &mut self.wbuf;
            let stream = &mut self.client.conn.stream;
            Box::pin(async {
                fanout::begin_all(&mut legs.conns, &f.shards).await?;
                let mut outcome =
                    fanout::run(&mut legs.conns, &f.shards, &requests, stream, out, merge).await?;
                let end = if outcome.error { "ROLLBACK" } else { "COMMIT" };
                if let Some(e) = fanout::end_all(&mut legs.conns, end, &f.shards).await? {
                    if !outcome.error {
                        out.extend_from_slice(e.raw());
                        outcome.error = true;
                    }
                }
                outcome.status = b'I';
                if ready {
                    messages::ready_for_query(out, b'I');
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
            Ok(outcome) if outcome.status == b'I' => {
                self.put_back(legs);
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
    async fn take_legs(&mut self, shards: &[String]) -> Result<Result<Legs, ProxyError>, End> {
        if let Err(e) = self.settle().await {
            return Err(End::Fatal(e));
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
        let own_shard = match (&self.server, &self.server_shard) {
            (None, _) => None,
            (Some(_), Some(s)) => Some(s.to_string()),
            (Some(_), None) => Some(self.home_shard()),
        };
        let mut legs = Legs {
            shards: shards.iter().map(|s| s.as_str().into()).collect(),
            conns: Vec::with_capacity(shards.len()),
            own: None,
            parked: vec![None; shards.len()],
        };
        for shard in shards {
            if legs.own.is_none() && own_shard.as_deref() == Some(shard.as_str()) {
                if let Some(conn) = self.server.take() {
                    legs.own = Some(legs.conns.len());
                    legs.conns.push(conn);
                    continue;
                }
            }
            if let Some(conn) = self.unpark(shard) {
                legs.parked[legs.conns.len()] = Some(shard.as_str().into());
                legs.conns.push(conn);
                continue;
            }
            let conn = match self.shard_pool(shard) {
                Ok(pool) => match pool.try_get() {
                    Some(c) => Ok(c),
                    None => Box::pin(pool.get()).await.map_err(|e| pool_error(e, false)),
                },
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
            if let Err(e) = Box::pin(sync_conn(leg, &self.client, b'I')).await {
                self.lose_legs(legs);
                return Ok(Err(e));
            }
        }
        crate::cancel::point_many(
            &self.client.cancel_slot,
            legs.conns.iter().map(|l| CancelTarget {
                addr: l.addr,
                backend_pid: l.backend_pid,
                secret_key: l.secret_key,
            }),
        );
        Ok(Ok(legs))
    }

    /// Idle fan-out connections go back: the session's own to the session, parked ones to
    /// their place, the rest to their pools.
    fn put_back(&mut self, legs: Legs) {
        crate::cancel::point(&self.client.cancel_slot, None);
        let Legs {
            conns,
            own,
            mut parked,
            shards,
        } = legs;
        for (i, leg) in conns.into_iter().enumerate() {
            if Some(i) == own {
                self.attach(leg);
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
    fn lose_legs(&mut self, legs: Legs) {
        crate::cancel::point(&self.client.cancel_slot, None);
        let own = legs.own;
        drop(legs);
        if own.is_some() {
            self.drop_server();
        }
    }

    /// Waits until everything sent to the attached server is answered (the answers go to
    /// the client as usual), so that the next statement starts from a quiet session; in
    /// transaction pooling an idle server goes back to its pool. Errors are fatal: the
    /// server or the client is gone, or the server is out of step.
    async fn settle(&mut self) -> Result<(), ProxyError> {
        use tokio::io::AsyncWriteExt;
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
                    .write_all(&self.swbuf)
                    .await
                    .map_err(|e| server_gone(e.to_string()))?;
                self.swbuf.clear();
            }
            let frame = server
                .read_frame()
                .await
                .map_err(|e| server_gone(e.to_string()))?;
            if let Err(end) = self.on_server(frame) {
                return Err(match end {
                    End::Fatal(e) => e,
                    End::ServerGone(why) => server_gone(why),
                    End::ClientGone => ProxyError::fatal("08006", "client gone"),
                });
            }
            if self.wbuf.len() >= HIGH_WATER {
                self.client
                    .conn
                    .stream
                    .write_all(&self.wbuf)
                    .await
                    .map_err(|_| ProxyError::fatal("08006", "client gone"))?;
                self.wbuf.clear();
            }
        }
        self.maybe_release();
        Ok(())
    }

    /// Sends the unnamed Parse that waited for its Bind, its answer already given.
    fn send_deferred_parse(&mut self) {
        if let Some(p) = self.unnamed_parse.as_mut().filter(|p| p.1) {
            p.1 = false;
            let raw = p.0.raw().clone();
            self.swbuf.extend_from_slice(&raw);
            self.expect_extended(Expect::Parse {
                visible: false,
                statement: None,
                client_name: None,
            });
        }
    }

    /// The pool of another shard, remembered by the session for its config generation.
    fn shard_pool(&mut self, shard: &str) -> Result<pool::Pool, ProxyError> {
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
    fn unpark(&mut self, shard: &str) -> Option<PooledConn> {
        let parked = &mut self.shard_pools.as_deref_mut()?.parked;
        let i = parked.iter().position(|(n, _)| &**n == shard)?;
        Some(parked.swap_remove(i).1)
    }

    /// The shard of the attached server.
    fn server_shard_name(&self) -> Option<String> {
        self.server.as_ref()?;
        Some(match &self.server_shard {
            Some(s) => s.to_string(),
            None => self.home_shard(),
        })
    }

    fn home_shard(&self) -> String {
        let config = self.proxy.config.load();
        config
            .databases
            .get(&self.client.database)
            .and_then(|d| d.shards.first().map(|(n, _)| n.to_owned()))
            .unwrap_or_default()
    }

    async fn ensure_server(&mut self) -> Result<(), ProxyError> {
        // The common case needs no waiting: an idle connection is free and its settings are
        // already the client's. Only the rest runs as a boxed future, so that its state does
        // not sit in every idle session.
        if self.server.is_none() {
            if self.client.generation != self.proxy.generation() {
                // A reload: this transaction uses the new config's pool.
                self.client.generation = self.proxy.generation();
                self.client.pool = self
                    .proxy
                    .home_pool(&self.client.database, &self.client.user)?;
            }
            if let Some(conn) = self.client.pool.try_get() {
                self.attach(conn);
            }
        }
        if self.server.is_some() && (!self.pending.is_empty() || self.settings_in_line()) {
            return Ok(());
        }
        Box::pin(self.ensure_server_slow()).await
    }

    async fn ensure_server_slow(&mut self) -> Result<(), ProxyError> {
        if self.server.is_none() {
            let conn = self
                .client
                .pool
                .get()
                .await
                .map_err(|e| pool_error(e, false))?;
            self.attach(conn);
        }
        if self.pending.is_empty() {
            self.sync_settings().await?;
        }
        Ok(())
    }

    fn attach(&mut self, conn: PooledConn) {
        // A connection other than the one the client's unnamed statement was parsed on (or
        // one a statement for several shards used since): it is parsed again before use.
        if let Some(p) = self.unnamed_parse.as_mut() {
            p.1 = true;
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
    }

    /// True when the attached server already carries the client's settings; records that
    /// when it finds the two equal.
    fn settings_in_line(&mut self) -> bool {
        let Some(server) = self.server.as_mut() else {
            return false;
        };
        let key = (self.client.id, self.client.settings.generation);
        if server.settings_unknown {
            return false;
        }
        if server.applied_for == Some(key) {
            return true;
        }
        if self
            .client
            .settings
            .sync_sql(&server.applied, false)
            .is_none()
        {
            server.applied_for = Some(key);
            return true;
        }
        false
    }

    async fn sync_settings(&mut self) -> Result<(), ProxyError> {
        // Nothing is in flight: whatever is still buffered for the server is a Flush.
        self.swbuf.clear();
        let server = self.server.as_mut().expect("attached");
        // Boxed: rare, and its state would otherwise sit in every idle session.
        let r = Box::pin(sync_conn(server, &self.client, self.tx_status)).await;
        if r.is_err() {
            self.drop_server();
        }
        r
    }

    fn drop_server(&mut self) {
        self.unsynced = false;
        crate::cancel::point(&self.client.cancel_slot, None);
        self.server = None;
        self.server_shard = None;
        self.pending.clear();
        self.swbuf.clear();
    }

    /// Transaction pooling: hand the server back once it is idle outside a transaction.
    fn maybe_release(&mut self) {
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
        // Only Flush messages can be left unsent with nothing pending.
        self.swbuf.clear();
        // The unnamed statement stays with this connection: the next one gets it anew.
        if let Some(p) = self.unnamed_parse.as_mut() {
            p.1 = true;
        }
        crate::cancel::point(&self.client.cancel_slot, None);
        self.server_shard = None;
        if let Some(conn) = self.server.take() {
            conn.release();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Server → proxy.

    fn desync(what: &str) -> End {
        End::ServerGone(format!("protocol out of step: unexpected {what}"))
    }

    fn on_server(&mut self, frame: Frame) -> Result<(), End> {
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
            tag::ERROR_RESPONSE => {
                self.copy_in_extended = false;
                self.error_since_ready = true;
                self.on_error();
                self.wbuf.extend_from_slice(frame.raw());
            }
            tag::READY_FOR_QUERY => {
                let status =
                    messages::ready_status(&frame).map_err(|e| End::ServerGone(e.to_string()))?;
                match self.pending.pop_front() {
                    Some(Expect::Sync) | Some(Expect::Query { .. }) => {}
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
                    if self.error_since_ready {
                        self.roll_back_settings();
                    } else {
                        self.client.settings.commit();
                    }
                }
                self.error_since_ready = false;
                self.wbuf.extend_from_slice(frame.raw());
            }
            _ => self.wbuf.extend_from_slice(frame.raw()),
        }
        self.emit_synthetic_head();
        Ok(())
    }

    /// COPY FROM STDIN started by an Execute: the server ignores every Sync until the client
    /// ends the copy, so the Syncs already queued before that end get no answer.
    fn on_extended_copy_in(&mut self) {
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
    fn on_error(&mut self) {
        match self.pending.front_mut() {
            Some(Expect::Query { commands }) => *commands = None,
            Some(Expect::Sync) | Some(Expect::HeldBegin) | None => {}
            Some(_) => {
                while let Some(e) = self.pending.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    if let Some(Expect::Parse {
                        statement: Some(stmt),
                        client_name,
                        ..
                    }) = self.pending.pop_front()
                    {
                        if let Some(s) = self.server.as_mut() {
                            s.prepared.remove(&stmt.id);
                        }
                        if let (Some(name), Some(n)) = (client_name, self.names.as_deref_mut()) {
                            n.statements.remove(&name);
                        }
                    }
                }
            }
        }
    }

    fn on_command_complete(&mut self, frame: &Frame) -> Result<(), End> {
        let command_tag = if frame.tag() == tag::COMMAND_COMPLETE {
            messages::command_tag(frame).map_err(|e| End::ServerGone(e.to_string()))?
        } else {
            &b""[..]
        };
        let command = match self.pending.front_mut() {
            Some(Expect::Query { commands }) => commands.as_mut().and_then(|c| c.pop_front()),
            Some(Expect::Execute { .. }) => match self.pending.pop_front() {
                Some(Expect::Execute { command }) => command,
                _ => None,
            },
            _ => None,
        };
        match command_tag {
            b"COMMIT" | b"PREPARE TRANSACTION" => self.client.settings.commit(),
            b"ROLLBACK" => self.roll_back_settings(),
            _ => {}
        }
        if let Some(c) = command {
            self.apply(c, command_tag);
        }
        Ok(())
    }

    /// The transaction that changed settings rolled back: the client's go back to what they
    /// were, and the server connection's are no longer known.
    fn roll_back_settings(&mut self) {
        if self.client.settings.rollback() {
            if let Some(s) = self.server.as_mut() {
                s.settings_unknown = true;
            }
        }
    }

    /// A statement that changes session state succeeded: record it for the client and for
    /// the server connection it ran on.
    fn apply(&mut self, command: SessionCommand, command_tag: &[u8]) {
        let settings = &mut self.client.settings;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let in_step = server.applied_for == Some((self.client.id, settings.generation));
        match (command, command_tag) {
            (SessionCommand::Set { name, sql }, b"SET") => {
                settings.set(&name, &sql);
                std::sync::Arc::make_mut(&mut server.applied).insert(name, sql);
            }
            (SessionCommand::Reset { name }, b"RESET") => {
                settings.reset(&name);
                std::sync::Arc::make_mut(&mut server.applied).remove(&name);
                // The server went to its default; a startup value may need applying again.
                server.applied_for = None;
                return;
            }
            (SessionCommand::ResetAll, b"RESET") => {
                self.session_hints = None;
                settings.reset_all();
                server.applied = Default::default();
                server.applied_for = None;
                return;
            }
            (SessionCommand::DiscardAll, b"DISCARD ALL") => {
                self.session_hints = None;
                settings.reset_all();
                server.applied = Default::default();
                server.applied_for = None;
                server.prepared.clear();
                self.names = None;
                self.unnamed_parse = None;
                return;
            }
            (SessionCommand::DeallocateAll, b"DEALLOCATE ALL") => {
                server.prepared.clear();
                if let Some(n) = self.names.as_deref_mut() {
                    n.statements.clear();
                }
                return;
            }
            _ => return,
        }
        server.applied_for = if in_step {
            Some((self.client.id, settings.generation))
        } else {
            None
        };
    }

    // -----------------------------------------------------------------------------------------
    // The end.

    async fn finish(&mut self, end: End) {
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
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(
                CLEANUP_TIMEOUT,
                self.client.conn.stream.write_all(&self.wbuf),
            )
            .await;
        }
        crate::cancel::point(&self.client.cancel_slot, None);
        let parked = self
            .shard_pools
            .as_deref_mut()
            .map(|p| std::mem::take(&mut p.parked))
            .unwrap_or_default();
        for (_, mut conn) in parked {
            // Idle between transactions when parked: only the session reset is due.
            if matches!(
                tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_simple("DISCARD ALL")).await,
                Ok(Ok(None))
            ) {
                conn.prepared.clear();
                conn.applied = Default::default();
                conn.applied_for = None;
                conn.settings_unknown = false;
                conn.release();
            }
        }
        let Some(mut conn) = self.server.take() else {
            return;
        };
        if self.unsynced {
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
        if clean && self.client.mode == PoolMode::Session {
            clean = matches!(
                tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_simple("DISCARD ALL")).await,
                Ok(Ok(None))
            );
            conn.prepared.clear();
            conn.applied = Default::default();
            conn.applied_for = None;
            conn.settings_unknown = false;
        }
        if clean {
            conn.release();
        }
    }
}

/// A `COPY ... TO STDOUT` whose data starts with a header line.
fn copy_header(text: &str) -> bool {
    if !router::lexer::Lexer::new(text)
        .next()
        .is_some_and(|t| t.is_keyword("copy"))
    {
        return false;
    }
    matches!(router::copy::parse_copy(text), Some(Ok(c)) if c.format.header)
}

/// An encoding name (or the statement that sets it) that means UTF-8 to the router: UTF8,
/// or SQL_ASCII, whose bytes reach the server unconverted.
fn is_utf8_name(text: &str) -> bool {
    ["utf8", "utf-8", "unicode", "sql_ascii"].iter().any(|e| {
        text.as_bytes()
            .windows(e.len())
            .any(|w| w.eq_ignore_ascii_case(e.as_bytes()))
    })
}

/// The router's refusal: 0A000, the reason and what to do.
fn refuse(reason: String, hint: &str) -> ProxyError {
    ProxyError::error(
        "0A000",
        format!("shardgate cannot route this statement: {reason}"),
    )
    .with_hint(hint.to_owned())
}

/// A query that is only `BEGIN` or `START TRANSACTION` with valid transaction modes: the
/// proxy may answer it itself (anything else goes to a server, which judges it).
fn lone_begin(sql: &[u8]) -> bool {
    use router::lexer::Token;
    // A quick look first: this runs for every simple query between transactions.
    let head = sql.trim_ascii_start();
    let starts = |w: &[u8]| {
        head.get(..w.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(w))
    };
    if !(starts(b"begin") || starts(b"start") || starts(b"/*") || starts(b"--")) {
        return false;
    }
    let text = String::from_utf8_lossy(sql);
    let words: Vec<Token<'_>> = router::lexer::Lexer::new(&text).collect();
    let mut words: &[Token<'_>] = &words;
    while let [rest @ .., Token::Semicolon] = words {
        words = rest;
    }
    let kw = |t: &Token<'_>, k: &str| t.is_keyword(k);
    let rest = match words {
        [b, t, rest @ ..] if kw(b, "begin") && (kw(t, "work") || kw(t, "transaction")) => rest,
        [b, rest @ ..] if kw(b, "begin") => rest,
        [s, t, rest @ ..] if kw(s, "start") && kw(t, "transaction") => rest,
        _ => return false,
    };
    // transaction_mode [, ...]: ISOLATION LEVEL ..., READ WRITE | READ ONLY, [NOT] DEFERRABLE
    let mut i = 0;
    let at = |i: usize, k: &str| rest.get(i).is_some_and(|t| t.is_keyword(k));
    while i < rest.len() {
        if i > 0 {
            if rest[i] == Token::Symbol(",") {
                i += 1;
            }
            if i >= rest.len() {
                return false;
            }
        }
        if at(i, "isolation") && at(i + 1, "level") {
            i += 2;
            if at(i, "serializable") {
                i += 1;
            } else if (at(i, "repeatable") && at(i + 1, "read"))
                || (at(i, "read") && (at(i + 1, "committed") || at(i + 1, "uncommitted")))
            {
                i += 2;
            } else {
                return false;
            }
        } else if at(i, "read") && (at(i + 1, "write") || at(i + 1, "only")) {
            i += 2;
        } else if at(i, "deferrable") {
            i += 1;
        } else if at(i, "not") && at(i + 1, "deferrable") {
            i += 2;
        } else {
            return false;
        }
    }
    true
}

/// The first keyword of a query, lower-cased.
fn first_word(sql: &[u8]) -> String {
    let text = String::from_utf8_lossy(sql);
    match router::lexer::Lexer::new(&text).next() {
        Some(router::lexer::Token::Word(w)) => w.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// Brings an idle server connection's settings in line with the client's, in one round trip
/// when they differ. On error the connection must be dropped.
async fn sync_conn(
    server: &mut pool::ServerConn,
    client: &Client,
    tx_status: u8,
) -> Result<(), ProxyError> {
    let key = (client.id, client.settings.generation);
    if server.applied_for == Some(key) && !server.settings_unknown {
        return Ok(());
    }
    let settings = &client.settings;
    let Some(sql) = settings.sync_sql(&server.applied, server.settings_unknown) else {
        // Already in line: only the tag moves.
        server.applied_for = Some(key);
        return Ok(());
    };
    match server.run_simple(&sql).await {
        Ok(None) => {}
        Ok(Some(err)) => {
            return Err(ProxyError {
                fatal: false,
                code: err.code.into(),
                message: format!("could not apply session setting: {}", err.message),
                detail: Some(sql),
                hint: None,
            });
        }
        Err(e) => {
            return Err(ProxyError::error(
                "08006",
                format!("server connection lost while applying session settings: {e}"),
            ));
        }
    }
    server.applied = settings.desired().clone(); // an Arc: shared, not copied
    server.applied_for = Some(key);
    // Inside a transaction block, what was applied lasts only if it commits.
    server.settings_unknown = tx_status != b'I';
    Ok(())
}

async fn cancel_backend((pid, key, addr): (i32, i32, std::net::SocketAddr)) {
    use tokio::io::AsyncWriteExt;
    if let Ok(Ok(mut s)) =
        tokio::time::timeout(CLEANUP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
    {
        let _ = s.write_all(&wire::startup::encode_cancel(pid, key)).await;
    }
}

/// Writes as much as the socket takes without waiting.
fn try_write(stream: &tokio::net::TcpStream, buf: &mut BytesMut) -> std::io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = buf.split_to(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    buf.clear();
    Ok(())
}

/// Reads what is there without waiting; end of stream is an error.
///
/// A read that returns less than the room offered has drained the socket, so readiness is
/// cleared right away (reported to tokio as `WouldBlock`) instead of by a second read that
/// would only say `EAGAIN`: one system call saved per message exchange. Data arriving after
/// the read raises a new readiness event, which tokio does not clear.
fn try_read(
    stream: &tokio::net::TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
) -> std::io::Result<()> {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
    let mut got = 0usize;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        let room = buf.spare_capacity_mut();
        let n = socket2::SockRef::from(stream).recv(room)?;
        got = n;
        if n > 0 && n < room.len() {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match result {
        Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    // SAFETY: `recv` initialised the first `got` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + got) };
    Ok(())
}

#[cfg(test)]
mod tests {
    /// An idle session's memory is mostly this struct: keep it from growing unnoticed.
    #[test]
    fn an_idle_session_stays_small() {
        let size = std::mem::size_of::<super::Session>();
        assert!(size <= 416, "Session is {size} bytes");
    }

    #[test]
    fn only_valid_begins_are_held() {
        for ok in [
            "BEGIN",
            "begin;",
            "BEGIN WORK",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE NOT DEFERRABLE",
        ] {
            assert!(super::lone_begin(ok.as_bytes()), "{ok}");
        }
        for no in [
            "BEGIN ISOLATION LEVEL BOGUS",
            "BEGIN; SELECT 1",
            "BEGIN READ",
            "START",
            "BEGIN ISOLATION LEVEL SERIALIZABLE,",
        ] {
            assert!(!super::lone_begin(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn ordinary_statements_skip_the_splitter() {
        assert!(!super::may_change_session(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"
        ));
        assert!(super::session_commands(b"SELECT 1; SET work_mem = '1MB'").is_some());
        assert!(super::session_commands(b"UPDATE t SET a = 1").is_none());
    }
}
