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
use wire::{Frame, FrameDecoder, Msg};

use crate::cancel::CancelTarget;
use crate::fanout;
use crate::startup::{pool_error, Client};
use crate::statements::Statement;
use crate::Proxy;

mod attach;
mod cross;
mod extended;
mod handoff;
mod held;
mod lent;
mod merge;
mod multi;
mod pins;
mod plain;
mod pump;
mod replicas;
mod retry;
mod routing;
mod scatter;
mod server;
mod subqueries;
mod timeouts;
mod words;

use attach::sync_conn;
pub(crate) use held::lone_begin;
use held::{NO_DATA, NO_PARAMETERS};
pub(crate) use routing::database_routes;
use routing::{is_utf8_name, refuse};
use scatter::first_word;
use words::Words;

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
    /// `command`: boxed, as every entry is as large as the largest kind.
    Execute {
        command: Option<Box<SessionCommand>>,
    },
    Close,
    /// A Close of a statement the proxy evicted from the server: its answer is swallowed.
    HiddenClose,
    Sync,
    /// Where the client ended a COPY FROM STDIN (CopyDone or CopyFail); answers nothing.
    CopyEnd,
    /// A held-back BEGIN sent ahead of the statement that picked the shard: its answers
    /// (the client already had them) are swallowed.
    HeldBegin,
    /// A Parse the proxy sent to fail the server's transaction (the proxy refused a
    /// statement in it): its error is swallowed.
    AbortTx,
    /// The Sync after such a Parse outside a batch: its ReadyForQuery is swallowed.
    AbortSync,
    /// A Sync the proxy sent to end a batch that ran nothing (Parse, Describe, Close) before
    /// the connection goes back to the pool: its ReadyForQuery is swallowed.
    OwnSync,
    /// A message the proxy answers itself when its turn comes.
    Synthetic(u8),
    /// A whole message the proxy answers with when its turn comes.
    SyntheticFrame(&'static [u8]),
    /// Boxed: every entry of the queue is as large as its largest kind.
    SyntheticError(Box<ProxyError>),
    SyntheticReady,
    /// A CommandComplete with this tag, for a statement the proxy ran itself.
    SyntheticDone(&'static str),
}

/// The client's last unnamed Parse, kept to be sent again where its Bind runs.
struct KeptParse {
    frame: Frame,
    /// It still waits for its Bind to pick the shard (or the connection).
    waits_for_bind: bool,
    /// Its bytes are a copy of their own, not a slice of the client's read buffer.
    own_bytes: bool,
    /// Its text has none of the words looked for on the way to the server (see `words`):
    /// the same Parse again (a driver running one statement over and over) needs no look.
    plain: bool,
}

/// A client's prepared statements and the portals whose statement changes session state.
#[derive(Default)]
struct Names {
    statements: HashMap<Box<[u8]>, Arc<Statement>>,
    portal_commands: HashMap<Box<[u8]>, SessionCommand>,
    unnamed_command: Option<SessionCommand>,
    /// A BEGIN sent as the unnamed statement of the extended protocol (JDBC, Npgsql and
    /// psycopg's pipeline send it in the same batch as the first statement): answered by
    /// the proxy and held at its Execute like a simple-protocol one.
    ext_begin: Option<ExtBegin>,
    /// SQL-level prepared statements on a database that routes, kept by the proxy (see
    /// `router::sqlprepare`).
    sql_prepared: HashMap<String, router::sqlprepare::SqlPrepare>,
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
    /// The transaction's other shards, once it spans several (kept here, where shards
    /// other than home are, so that an idle session stays small).
    cross: Option<Box<cross::CrossTx>>,
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
    /// A read whose rows are merged (ORDER BY, aggregates, ...), not concatenated.
    merge: Option<Box<merge::MergeInput>>,
}

/// The connections of a statement on several shards, one per shard in order.
struct Legs {
    conns: Vec<PooledConn>,
    shards: Vec<Box<str>>,
    /// Which one is the session's attached connection.
    own: Option<usize>,
    /// Which ones are the session's parked connections, by shard (session pooling).
    parked: Vec<Option<Box<str>>>,
    /// Inside a transaction over several shards: the connections are its participants and
    /// go back to it (`Session::cross`), not to their pools.
    in_tx: bool,
}

impl Legs {
    /// No connections yet, for a statement on `shards`.
    fn new(shards: &[String], in_tx: bool) -> Legs {
        Legs {
            shards: shards.iter().map(|s| s.as_str().into()).collect(),
            conns: Vec::with_capacity(shards.len()),
            own: None,
            parked: vec![None; shards.len()],
            in_tx,
        }
    }
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

/// What became of a simple Query that may be an SQL-level PREPARE, EXECUTE or DEALLOCATE.
enum SqlPrepared {
    /// Not one the proxy keeps: it goes on as any query.
    No,
    /// Answered by the proxy.
    Answered,
    /// An EXECUTE: this query (its statement with the arguments in place) runs instead.
    Run(Frame),
}

/// An unnamed Parse of a lone BEGIN that no server has seen.
struct ExtBegin {
    /// The statement's text.
    text: Bytes,
    /// The portal it was bound to, once bound.
    portal: Option<Box<[u8]>>,
}

impl PendingFanout {
    /// The statement `query` bound by `bind`, waiting for its Execute.
    fn new(
        fanout: Box<Fanout>,
        query: Bytes,
        param_types: Bytes,
        bind: &BindView<'_>,
    ) -> Box<Self> {
        Box::new(PendingFanout {
            fanout,
            query,
            param_types,
            portal: Bytes::copy_from_slice(bind.portal),
            bind_rest: Bytes::copy_from_slice(bind.rest),
            messages: BytesMut::new(),
            bind_answered: false,
            executed: false,
        })
    }
}

/// Why a session ends.
enum End {
    ClientGone,
    /// Boxed: an `End` travels back through every layer of a message's handling as the
    /// error of its `Result`, and a small one keeps those results small.
    Fatal(Box<ProxyError>),
    ServerGone(String),
}

impl End {
    fn fatal(e: ProxyError) -> End {
        End::Fatal(Box::new(e))
    }
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
    /// The last unnamed Parse.
    unnamed_parse: Option<Box<KeptParse>>,
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
    /// Session pooling: the attached server carries the client's settings and is the
    /// client's own from now on; nothing more is applied to it.
    session_settled: bool,
    /// Transaction pooling: a statement may have made (or removed) server-session state that
    /// outlives its transaction; the server is asked when the transaction ends.
    pin_check: bool,
    /// Transaction pooling: the server session holds such state; the connection stays.
    pinned: bool,
    /// Transaction pooling: the client LOADed a library into its server session.
    loaded: bool,
    /// The timeouts' state, when any is configured.
    timeouts: Option<Box<timeouts::Timeouts>>,
    /// This client in the proxy's list (for SHOW CLIENTS and the metrics).
    entry: Arc<crate::stats::ClientEntry>,
    /// The statement about to start a transaction is a read a replica may answer.
    read_intent: bool,
    /// The client ran something on a primary that its later reads must see.
    wrote: bool,
    /// When that last ended, in ms since the proxy's epoch (+1; 0: never).
    last_write: u64,
    /// Extended-protocol messages went to the attached server since the last Sync (any of
    /// them; `unsynced` is for those that run something): the server waits for a Sync.
    needs_sync: bool,
    /// The plain path waited the checkout timeout out: the full handlers report it at once.
    waited_out: bool,
    /// Keeps its buffers between transactions (one of a few sessions at a time).
    linger: lent::Linger,
}

/// The session of a logged-in client, to be spawned. `count` is released when it ends.
pub(crate) fn start(
    proxy: Arc<Proxy>,
    client: Client,
    count: crate::ClientCount,
) -> impl std::future::Future<Output = ()> + Send {
    // Built here, outside any async body, so the task stores the session once.
    let entry = proxy.stats.add_client(
        client.id,
        &client.user,
        &client.database,
        client.conn.stream.tcp().peer_addr().ok(),
        client.conn.stream.is_tls(),
    );
    let session = Session {
        entry,
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
        session_settled: false,
        pin_check: false,
        pinned: false,
        loaded: false,
        timeouts: None,
        read_intent: false,
        wrote: false,
        last_write: 0,
        needs_sync: false,
        waited_out: false,
        linger: lent::Linger::default(),
    };
    drive(session, count)
}

/// The session's task. An `async move` block over the captured session rather than an
/// `async fn`: an `async fn` moves its arguments into locals of its own, and the task would
/// store the session twice (rust-lang/rust#62958), 464 bytes more per client.
#[allow(clippy::manual_async_fn)] // the point: see above
fn drive(
    mut s: Session,
    count: crate::ClientCount,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _count = &count;
        let id = s.client.id;
        let end = s.pump().await;
        Box::pin(s.finish(end)).await;
        s.set_pinned(false);
        if s.names.take().is_some_and(|n| n.statements.len() >= 1024) {
            // Its statements are freed now; their registry entries go too.
            s.proxy.statements.sweep_if_due();
            if let Some(hook) = s.proxy.memory_freed.get() {
                hook();
            }
        }
        s.proxy.cancels.remove(s.client.cancel_key);
        s.proxy.stats.remove_client(id);
        tracing::debug!(id, "client gone");
    }
}

/// The session commands of a query's statements, when some word of `words` (the query's)
/// says one may change session state.
fn session_commands(sql: &[u8], words: Words) -> Option<VecDeque<SessionCommand>> {
    if !words.may_change_session() {
        return None;
    }
    let text = utf8_text(sql);
    // One statement (the commonest, `UPDATE t SET ...`): classified without the splitter.
    let cmds: VecDeque<SessionCommand> = match router::lexer::lone_statement(&text) {
        Some(stmt) => match router::classify(stmt) {
            SessionCommand::Other => return None,
            command => VecDeque::from([command]),
        },
        None => split_statements(&text)
            .into_iter()
            .map(router::classify)
            .collect(),
    };
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
    tracked_with(sql, Words::of(sql))
}

/// [`tracked`], the statement's words found already.
fn tracked_with(sql: &[u8], words: Words) -> Option<SessionCommand> {
    if !words.may_change_session() {
        return None;
    }
    Some(router::classify(&utf8_text(sql))).filter(|c| *c != SessionCommand::Other)
}

/// `sql` as text, lossily where it is not UTF-8 (checked first the fast way: almost all
/// text is).
fn utf8_text(sql: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(sql) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(sql),
    }
}

fn malformed(e: wire::frame::Malformed) -> End {
    End::fatal(ProxyError::fatal("08P01", e.to_string()))
}

impl Session {
    async fn on_message(&mut self, frame: Frame) -> Result<(), End> {
        let t = frame.tag();
        if t == tag::TERMINATE {
            self.terminated = true;
            return Ok(());
        }
        // A Parse or Bind is checked whole where it is read (its handler reads all of it),
        // except on its way through unread.
        if !matches!(t, tag::PARSE | tag::BIND) || self.passes_through() {
            if let Err(e) = messages::check_frontend(&frame) {
                return Err(malformed(e));
            }
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
                tag::EXECUTE => return Box::pin(self.fanout_execute(frame)).await,
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
                    Box::pin(self.run_pending_fanout()).await?;
                    if self.skip_until_sync && t != tag::SYNC {
                        return Ok(());
                    }
                }
            }
        }
        self.read_intent = false;
        match t {
            tag::QUERY => self.on_query(frame).await,
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE if self.passes_through() => {
                self.pass_extended(frame).await
            }
            tag::PARSE => self.on_parse(frame).await,
            tag::BIND => self.on_bind(frame).await,
            tag::DESCRIBE => self.on_describe(frame).await,
            tag::EXECUTE => {
                if self.executes_held_begin(&frame)?
                    || (self.cross().is_some()
                        && Box::pin(self.executes_cross_portal(&frame)).await?)
                {
                    return Ok(());
                }
                if !self.ready_as_is() {
                    if let Err(e) = self.ensure_server().await {
                        return self.extended_error(e);
                    }
                }
                let command = match self.names.as_deref() {
                    Some(n) if !n.portal_commands.is_empty() => {
                        let (portal, _) = messages::execute_view(&frame).map_err(malformed)?;
                        n.portal_commands.get(portal).cloned().map(Box::new)
                    }
                    _ => None,
                };
                self.forward(&frame);
                self.expect_extended(Expect::Execute { command });
                Ok(())
            }
            tag::CLOSE => self.on_close(frame),
            tag::SYNC => {
                if self.cross().is_some_and(|c| c.implicit) {
                    Box::pin(self.end_implicit_cross()).await?;
                }
                self.skip_until_sync = false;
                self.unsynced = false;
                self.needs_sync = false;
                let between = self.tx_status == b'I' && self.held_begin.is_none();
                if let Some(server) = self.server.as_mut() {
                    if between {
                        // The batch's portals end with it: its statements may be closed
                        // from the next batch on.
                        server.prepared.batch_done();
                    }
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
                self.note_write();
                if !self.attached_as_is(&None) {
                    if let Err(e) = self.ensure_server_on(None).await {
                        return self.simple_error(e);
                    }
                }
                self.begin_if_held();
                self.forward(&frame);
                self.pending.push_back(Expect::Query { commands: None });
                Ok(())
            }
            _ => Err(End::fatal(ProxyError::fatal(
                "08P01",
                format!("invalid frontend message type {}", t),
            ))),
        }
    }

    #[inline]
    fn forward(&mut self, frame: &Frame) {
        if let Some(server) = self.server.as_deref_mut() {
            if server.note_request() && self.proxy.slow_query_ms() > 0 {
                server.request_text = Some(frame.raw().clone());
            }
        }
        self.swbuf.extend_from_slice(frame.raw());
    }

    /// Nothing in flight, no transaction, no server held: the session may end here.
    fn at_rest(&self) -> bool {
        self.server.is_none()
            && self.tx_status == b'I'
            && self.held_begin.is_none()
            && self.pending.is_empty()
            && self.wbuf.is_empty()
            && self.client.conn.rbuf.is_empty()
    }

    async fn on_query(&mut self, frame: Frame) -> Result<(), End> {
        if self.needs_sync && self.server.is_some() {
            // A Query inside an extended batch: the batch's answers come first; after an
            // error in it the server ignores the Query (it waits for Sync), and so does the
            // session.
            Box::pin(self.settle()).await.map_err(End::fatal)?;
            if self.skip_until_sync {
                return Ok(());
            }
        }
        match self.sql_prepared(&frame)? {
            SqlPrepared::No => {}
            SqlPrepared::Answered => return Ok(()),
            SqlPrepared::Run(query) => return Box::pin(self.on_query(query)).await,
        }
        let sql = messages::query_text(&frame).map_err(malformed)?;
        let words = Words::of(sql);
        self.note_encoding_change(sql, words);
        self.note_pin_words(sql, words);
        if let Err(e) = self.note_statement(sql) {
            return self.simple_error(e);
        }
        let commands = session_commands(sql, words);
        if let Some(cmds) = &commands {
            if cmds.iter().any(is_proxy_setting) {
                return self.proxy_setting(cmds);
            }
        }
        if self.client.mode == PoolMode::Transaction
            && commands
                .as_ref()
                .is_some_and(|c| c.contains(&SessionCommand::Listen))
            && !self.pins()
        {
            return self.simple_error(
                ProxyError::error(
                    "0A000",
                    "LISTEN and UNLISTEN need a server session of their own, which transaction pooling does not give",
                )
                .with_hint("Turn pool.pinning on (a listening client then keeps its connection), or use pool mode \"session\" for this user (users[].pool_mode: session)."),
            );
        }
        if self.held_begin.is_some() {
            if let Some(done) = self.end_held(sql) {
                return done;
            }
        } else if let Some(done) = match self.cross() {
            // Boxed: a rare path, whose state would otherwise sit in every idle session.
            Some(_) => Box::pin(self.cross_control(sql)).await,
            None => None,
        } {
            return done;
        } else if lone_begin(sql) && self.may_hold_begin().await? {
            // Held until a statement picks the shard.
            self.held_begin = Some(Box::new(frame.raw().clone()));
            self.tx_status = b'T';
            self.push_synthetic(Expect::SyntheticDone("BEGIN"));
            self.push_synthetic(Expect::SyntheticReady);
            return Ok(());
        }
        match self.copy_target(sql) {
            Ok(Some(target)) => return Box::pin(self.copy_in(&frame, target)).await,
            Ok(None) => {}
            Err(e) => return self.simple_error(e),
        }
        self.learn_insert_columns(sql).await;
        self.learn_functions(sql).await;
        let target = match self.route(sql) {
            Ok(Routing::To(t)) => t,
            Ok(Routing::Fanout(f)) => return Box::pin(self.simple_fanout(&frame, f)).await,
            Ok(Routing::AtBind) => None,
            Err(e) if e.code == "0A000" => {
                // A query of several statements for different shards: one transaction over
                // them.
                if let Some(done) = Box::pin(self.multi_shard_query(sql)).await {
                    return done;
                }
                // Refused as it stands: its subqueries over sharded tables may be answered
                // first, leaving a statement that routes.
                return match Box::pin(self.answer_subqueries_first(sql)).await? {
                    Ok(Some(rewritten)) => Box::pin(self.on_query(rewritten)).await,
                    Ok(None) => self.simple_error(e),
                    Err(e) => self.simple_error(e),
                };
            }
            Err(e) => return self.simple_error(e),
        };
        if !self.attached_as_is(&target) {
            if let Err(e) = self.ensure_server_on(target).await {
                return self.simple_error(e);
            }
        }
        self.begin_if_held();
        self.forward(&frame);
        self.pending.push_back(Expect::Query { commands });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// An idle session's memory is mostly this struct: keep it from growing unnoticed.
    /// (416 until the savepoint stack, the session-pooling startup, the pinning flags and
    /// the timeouts came, each kept to a pointer or a bool; 448 until TLS and the client's
    /// entry in the admin list, a pointer each; 464 until read-your-writes on replicas
    /// needed the time of the client's last write.)
    #[test]
    fn an_idle_session_stays_small() {
        let size = std::mem::size_of::<super::Session>();
        assert!(size <= 472, "Session is {size} bytes");
    }

    /// An idle session's task is the session and the loop's state while it waits: every
    /// rare or long path of the loop is boxed, so that it does not sit in every idle client
    /// (the task was ~3.5 KB when a message's handling and the cross-shard paths were
    /// inlined into it and the session was stored twice).
    #[test]
    fn an_idle_sessions_task_stays_small() {
        fn task_size<F: std::future::Future>(
            _: fn(super::Session, crate::ClientCount) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let size = task_size(super::drive);
        let session = std::mem::size_of::<super::Session>();
        assert!(size <= session + 336, "the session's task is {size} bytes");
    }

    /// Every message in flight has an entry in the queue of expected answers, and each
    /// entry is as large as the largest kind: the rare large ones are boxed.
    #[test]
    fn an_expected_answer_stays_small() {
        let size = std::mem::size_of::<super::Expect>();
        assert!(size <= 40, "Expect is {size} bytes");
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
        let commands = |sql: &[u8]| super::session_commands(sql, super::Words::of(sql));
        assert!(commands(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1").is_none());
        assert!(commands(b"SELECT 1; SET work_mem = '1MB'").is_some());
        assert!(commands(b"UPDATE t SET a = 1").is_none());
    }
}
