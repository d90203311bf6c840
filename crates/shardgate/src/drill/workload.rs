//! The drill's workload: writer tasks inserting `(writer, seq)` rows (in autocommit and in
//! explicit transactions) and reader tasks, all through the proxy with a shard hint, each
//! reconnecting after errors. Every acknowledged write, every transaction and every error
//! is recorded with its time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{connect, Target, TABLE};

/// One statement (or a whole transaction) that takes longer counts as failed (`timeout`)
/// and its connection is dropped. Longer than the proxy's default buffering (10 s).
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between a task's operations, so the workload leaves the machine room to fail over.
const PACE: Duration = Duration::from_millis(5);
/// Pause after an error before the next try.
const BACKOFF: Duration = Duration::from_millis(50);
/// Every this many writes of a writer is an explicit transaction of two rows.
const TX_EVERY: u64 = 3;

/// A write transaction: an autocommit INSERT or BEGIN, two INSERTs, COMMIT.
#[derive(Clone, Debug)]
pub struct Tx {
    /// When it was sent (the INSERT, or the BEGIN).
    pub begun: Instant,
    /// When it was acknowledged, if it was.
    pub committed: Option<Instant>,
    pub explicit: bool,
    /// Which server process committed it: its `pg_postmaster_start_time()`, told by the
    /// INSERT (distinct for every server, and again after a restart).
    pub server: Option<Arc<str>>,
}

/// An error a client saw.
#[derive(Clone, Debug)]
pub struct ClientError {
    pub at: Instant,
    /// SQLSTATE, `connection` (I/O, closed) or `timeout`.
    pub kind: String,
    pub message: String,
    pub write: bool,
}

/// What the workload recorded.
#[derive(Default)]
pub struct Results {
    /// Acknowledged `(writer, seq)`s.
    pub acked: Vec<(i32, i64)>,
    pub txs: Vec<Tx>,
    pub reads_ok: u64,
    pub errors: Vec<ClientError>,
}

struct Shared {
    target: Arc<Target>,
    stop: AtomicBool,
    acknowledged: AtomicU64,
    results: Mutex<Results>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, kind: String, message: String, write: bool) {
        self.results.lock().unwrap().errors.push(ClientError {
            at: Instant::now(),
            kind,
            message,
            write,
        });
    }

    fn tx(&self, begun: Instant, acked: &[(i32, i64)], explicit: bool, server: Option<Arc<str>>) {
        let mut r = self.results.lock().unwrap();
        let committed = (!acked.is_empty()).then(Instant::now);
        r.acked.extend_from_slice(acked);
        r.txs.push(Tx {
            begun,
            committed,
            explicit,
            server,
        });
        self.acknowledged
            .fetch_add(acked.len() as u64, Ordering::Relaxed);
    }
}

/// The running workload.
pub struct Workload {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Workload {
    pub fn start(target: Arc<Target>, writers: u32, readers: u32) -> Workload {
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            acknowledged: AtomicU64::new(0),
            results: Mutex::new(Results::default()),
        });
        let mut tasks = JoinSet::new();
        for w in 0..writers {
            tasks.spawn(writer(w as i32, Arc::clone(&shared)));
        }
        for r in 0..readers {
            tasks.spawn(reader(r as i32, Arc::clone(&shared)));
        }
        Workload { shared, tasks }
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.shared.acknowledged.load(Ordering::Relaxed)
    }

    /// Stops the tasks (an operation under way may finish, up to its timeout) and hands
    /// over what they recorded.
    pub async fn finish(mut self) -> Results {
        self.shared.stop.store(true, Ordering::Relaxed);
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(5), all_done)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        std::mem::take(&mut *self.shared.results.lock().unwrap())
    }
}

/// A connection of a task: made when missing, dropped when it broke.
struct Conn {
    client: Option<Client>,
}

impl Conn {
    /// The connection, after (re)connecting if needed; `None` after a failed attempt
    /// (recorded).
    async fn get(&mut self, shared: &Shared, write: bool) -> Option<&Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            match connect(&shared.target.proxy).await {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    shared.error("connection".into(), e, write);
                    tokio::time::sleep(BACKOFF).await;
                    return None;
                }
            }
        }
        self.client.as_ref()
    }
}

/// Inserts `(id, 1)`, `(id, 2)`, ...: mostly one row in autocommit, every third time two
/// rows in BEGIN ... COMMIT. A sequence number is never reused, whatever became of it.
async fn writer(id: i32, shared: Arc<Shared>) {
    let hint = shared.target.hint(false);
    let insert = |seq: i64| {
        format!(
            "{hint}INSERT INTO {TABLE} (writer, seq) VALUES ({id}, {seq}) \
             RETURNING pg_postmaster_start_time()::text"
        )
    };
    let mut conn = Conn { client: None };
    let mut seq = 0i64;
    let mut n = 0u64;
    while !shared.stopping() {
        let Some(client) = conn.get(&shared, true).await else {
            continue;
        };
        n += 1;
        let explicit = n.is_multiple_of(TX_EVERY);
        let rows: Vec<i64> = if explicit {
            vec![seq + 1, seq + 2]
        } else {
            vec![seq + 1]
        };
        seq += rows.len() as i64;
        let begun = Instant::now();
        let work = async {
            if !explicit {
                return server_of(client.simple_query(&insert(rows[0])).await?);
            }
            client.batch_execute("BEGIN").await?;
            let mut server = None;
            for &s in &rows {
                server = server_of(client.simple_query(&insert(s)).await?)?;
            }
            client.batch_execute("COMMIT").await?;
            Ok(server)
        };
        match tokio::time::timeout(OP_TIMEOUT, work).await {
            Ok(Ok(server)) => {
                let acked: Vec<(i32, i64)> = rows.iter().map(|&s| (id, s)).collect();
                shared.tx(begun, &acked, explicit, server);
            }
            Ok(Err(e)) => {
                shared.tx(begun, &[], explicit, None);
                shared.error(kind(&e), describe(&e), true);
                if explicit && !client.is_closed() {
                    // Leave the failed transaction (harmless when none is open).
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        conn.client = None;
                    }
                }
                tokio::time::sleep(BACKOFF).await;
            }
            Err(_) => {
                shared.tx(begun, &[], explicit, None);
                shared.error("timeout".into(), timeout_message(), true);
                conn.client = None;
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// The first column of the first row: the server's start time the INSERT returned.
fn server_of(messages: Vec<SimpleQueryMessage>) -> Result<Option<Arc<str>>, tokio_postgres::Error> {
    Ok(messages.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(Arc::<str>::from),
        _ => None,
    }))
}

/// Counts one writer's rows, over and over (a read: it may go to a replica).
async fn reader(id: i32, shared: Arc<Shared>) {
    let sql = format!(
        "{}SELECT count(*) FROM {TABLE} WHERE writer = {id}",
        shared.target.hint(false)
    );
    let mut conn = Conn { client: None };
    while !shared.stopping() {
        let Some(client) = conn.get(&shared, false).await else {
            continue;
        };
        match tokio::time::timeout(OP_TIMEOUT, client.simple_query(&sql)).await {
            Ok(Ok(_)) => shared.results.lock().unwrap().reads_ok += 1,
            Ok(Err(e)) => {
                shared.error(kind(&e), describe(&e), false);
                tokio::time::sleep(BACKOFF).await;
            }
            Err(_) => {
                shared.error("timeout".into(), timeout_message(), false);
                conn.client = None;
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

fn timeout_message() -> String {
    format!("no answer within {} s", OP_TIMEOUT.as_secs())
}

/// The error's SQLSTATE, or `connection` for one without (I/O, closed connection).
pub fn kind(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => code.code().to_owned(),
        None => "connection".to_owned(),
    }
}

/// The server's message (with its SQLSTATE) or the client library's with its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Errors by kind, and one message of each kind (the first seen).
pub fn by_kind(errors: &[ClientError]) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    let mut counts = BTreeMap::new();
    let mut examples = BTreeMap::new();
    for e in errors {
        *counts.entry(e.kind.clone()).or_insert(0) += 1;
        examples
            .entry(e.kind.clone())
            .or_insert_with(|| e.message.clone());
    }
    (counts, examples)
}
