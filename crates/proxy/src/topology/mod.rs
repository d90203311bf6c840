//! The servers of every shard as the proxy sees them now: which one takes writes, which
//! replicas are fit for reads (up, not too far behind, and past a client's own last write),
//! and which are down or fenced.
//!
//! The configured roles are where it starts; [`health`] checks every server and keeps this
//! view current (roles promoted or demoted outside the proxy included), and [`failover`]
//! replaces a lost primary or switches to a replica on request. Sessions ask [`Shard`] for
//! the primary's URL and for a replica to read from.

pub(crate) mod failover;
pub(crate) mod health;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sgconfig::{Config, FailoverConfig, ReadStrategy, ReadWriteSplit, ServerAddress};

/// What a server is, by its last successful check (`Unknown` before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    Unknown,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// Whether the proxy uses a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Answering its checks (or not yet failed enough of them).
    Up,
    /// `failures_before_down` checks in a row failed: no reads; a primary is replaced.
    Down,
    /// Out of use until an administrator re-admits it (`UNBAN db.shard host:port`): a
    /// primary that was replaced, or a second primary. Never gets a query.
    Fenced,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Fenced => "fenced",
        }
    }
}

/// One server's state, as the checks left it.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub role: Role,
    pub state: State,
    /// Failed checks in a row.
    pub failures: u32,
    /// A primary's current WAL position, a replica's replayed one (bytes).
    pub lsn: Option<u64>,
    /// A primary's timeline (the newest wins when two servers say they are primary).
    pub timeline: Option<u32>,
    /// How far a replica is behind the primary, in bytes and in time.
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    pub last_error: Option<String>,
}

pub struct Server {
    pub url: String,
    pub addr: ServerAddress,
    pub weight: u32,
    pub stop_command: Option<String>,
    view: Mutex<ServerView>,
}

impl Server {
    pub fn view(&self) -> ServerView {
        self.view.lock().clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ServerView)) {
        f(&mut self.view.lock());
    }

    /// `host:port`, as the admin console names servers.
    pub fn name(&self) -> String {
        format!("{}:{}", self.addr.host, self.addr.port)
    }
}

/// One shard of one database: its servers and which of them is the primary.
pub struct Shard {
    pub database: String,
    pub shard: String,
    pub servers: Vec<Server>,
    primary: AtomicUsize,
    rr: AtomicUsize,
    /// (when the check started, the primary's WAL position), oldest first: what a
    /// replica's replay position is compared with for its lag and for read-your-writes.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// Pools report connection failures here; the health checker then looks at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// One failover or switchover at a time.
    pub changing: tokio::sync::Mutex<()>,
    /// Write pools of this shard wait until this time (a primary being replaced).
    holding: Mutex<Option<Instant>>,
    /// A newer config replaced this shard's entry: its health checker stops.
    pub replaced: AtomicBool,
    pub split: ReadWriteSplit,
    pub failover: FailoverConfig,
}

/// Primary WAL samples kept: enough for lag in seconds up to a minute at the default
/// check interval.
const SAMPLES: usize = 128;

impl Shard {
    fn new(database: &str, shard: &str, cfg: &Config) -> Option<Shard> {
        let db = cfg.databases.get(database)?;
        let (_, sc) = db.shards.iter().find(|(n, _)| *n == shard)?;
        let servers = sc
            .servers()
            .filter_map(|s| {
                Some(Server {
                    url: s.url.clone(),
                    addr: ServerAddress::parse(&s.url).ok()?,
                    weight: s.weight,
                    stop_command: s.stop_command.clone(),
                    view: Mutex::new(ServerView {
                        role: Role::Unknown,
                        state: State::Up,
                        failures: 0,
                        lsn: None,
                        timeline: None,
                        lag_bytes: None,
                        lag_ms: None,
                        last_error: None,
                    }),
                })
            })
            .collect();
        Some(Shard {
            database: database.to_owned(),
            shard: shard.to_owned(),
            servers,
            primary: AtomicUsize::new(0),
            rr: AtomicUsize::new(0),
            samples: Mutex::new(VecDeque::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            changing: tokio::sync::Mutex::new(()),
            holding: Mutex::new(None),
            replaced: AtomicBool::new(false),
            split: db.read_write_split.clone(),
            failover: db.failover.clone(),
        })
    }

    /// The index of the server that takes writes.
    pub fn primary(&self) -> usize {
        self.primary.load(Ordering::Acquire)
    }

    pub fn primary_server(&self) -> &Server {
        &self.servers[self.primary()]
    }

    pub(crate) fn set_primary(&self, i: usize) {
        self.primary.store(i, Ordering::Release);
        self.samples.lock().clear();
    }

    /// The server named `host:port` (or by its URL).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.name() == name || s.url == name)
    }

    /// Until when new write pools of this shard are held, if they are.
    pub fn holding(&self) -> Option<Instant> {
        self.holding.lock().filter(|t| *t > Instant::now())
    }

    pub(crate) fn set_holding(&self, until: Option<Instant>) {
        *self.holding.lock() = until;
    }

    /// Records the primary's WAL position, checked from `at`.
    pub(crate) fn sample(&self, at: Instant, lsn: u64) {
        let mut s = self.samples.lock();
        if s.back().is_some_and(|(_, l)| *l > lsn) {
            s.clear(); // another primary, or a restart: older samples mean nothing now
        }
        s.push_back((at, lsn));
        while s.len() > SAMPLES {
            s.pop_front();
        }
    }

    /// A replica replayed up to `lsn`: how far behind the primary's newest position, in
    /// bytes, and since when the primary has had WAL the replica lacks (0 when caught up).
    pub(crate) fn lag_of(&self, lsn: u64) -> (Option<u64>, Option<u64>) {
        let s = self.samples.lock();
        let Some(&(_, newest)) = s.back() else {
            return (None, None);
        };
        let bytes = newest.saturating_sub(lsn);
        let ms = s
            .iter()
            .find(|(_, l)| *l > lsn)
            .map_or(0, |(at, _)| at.elapsed().as_millis() as u64);
        (Some(bytes), Some(ms))
    }

    /// The primary's WAL position from the first check that started after `t`: every
    /// commit made before `t` lies below it.
    fn position_after(&self, t: Instant) -> Option<u64> {
        self.samples
            .lock()
            .iter()
            .find(|(at, _)| *at > t)
            .map(|(_, l)| *l)
    }

    /// A replica for a read, or `None` (read on the primary): up (fewer than
    /// `failures_before_down` failed checks in a row), a replica by its last successful
    /// check, within the lag bounds, weighted, and (with `after`, the end of the client's
    /// last write) known to have replayed past that write. `active` tells how many
    /// connections of the client's pools are in use on a server (least_connections).
    pub fn pick_replica(
        &self,
        after: Option<Instant>,
        active: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        if !self.split.enabled || self.servers.len() < 2 {
            return None;
        }
        let needed = match after {
            Some(t) => Some(self.position_after(t)?),
            None => None,
        };
        let primary = self.primary();
        let max_ms = (self.split.max_lag_seconds * 1000.0) as u64;
        let fit: Vec<(usize, u32)> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != primary && s.weight > 0)
            .filter_map(|(i, s)| {
                let v = s.view.lock();
                let ok = v.state == State::Up
                    && v.role == Role::Replica
                    && (self.split.max_lag_bytes == 0
                        || v.lag_bytes.is_some_and(|b| b <= self.split.max_lag_bytes))
                    && (max_ms == 0 || v.lag_ms.is_some_and(|m| m <= max_ms))
                    && needed.is_none_or(|n| v.lsn.is_some_and(|l| l >= n));
                ok.then_some((i, s.weight))
            })
            .collect();
        if fit.is_empty() {
            return None;
        }
        let total: u64 = fit.iter().map(|(_, w)| u64::from(*w)).sum();
        let turn = self.rr.fetch_add(1, Ordering::Relaxed) as u64;
        let by_weight = |mut n: u64| {
            for &(i, w) in &fit {
                if n < u64::from(w) {
                    return i;
                }
                n -= u64::from(w);
            }
            fit[0].0
        };
        Some(match self.split.strategy {
            ReadStrategy::RoundRobin => by_weight(turn % total),
            ReadStrategy::Random => by_weight(rand::random::<u64>() % total),
            ReadStrategy::LeastConnections => {
                let least = fit.iter().map(|(i, _)| active(*i)).min().unwrap_or(0);
                let tied: Vec<usize> = fit
                    .iter()
                    .filter(|(i, _)| active(*i) == least)
                    .map(|(i, _)| *i)
                    .collect();
                tied[turn as usize % tied.len()]
            }
        })
    }
}

/// Every shard's servers, made from the config and kept across reloads that leave a
/// shard's servers as they were.
#[derive(Default)]
pub struct Topology {
    shards: Mutex<HashMap<(String, String), Arc<Shard>>>,
}

impl Topology {
    pub fn shard(&self, database: &str, shard: &str) -> Option<Arc<Shard>> {
        self.shards
            .lock()
            .get(&(database.to_owned(), shard.to_owned()))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Shard>> {
        let mut v: Vec<_> = self.shards.lock().values().cloned().collect();
        v.sort_by(|a, b| (&a.database, &a.shard).cmp(&(&b.database, &b.shard)));
        v
    }

    /// Brings the shards in line with `config`: a shard whose servers and settings are
    /// unchanged keeps its state; others start afresh. Returns the new ones, whose health
    /// checks must start.
    pub fn sync(&self, config: &Config) -> Vec<Arc<Shard>> {
        let mut shards = self.shards.lock();
        let mut fresh = Vec::new();
        let mut keep = std::collections::HashSet::new();
        for (db_name, db) in &config.databases {
            for (name, sc) in db.shards.iter() {
                let key = (db_name.clone(), name.to_owned());
                keep.insert(key.clone());
                let same = shards.get(&key).is_some_and(|s| {
                    s.split == db.read_write_split
                        && s.failover == db.failover
                        && s.servers.len() == sc.servers().count()
                        && s.servers.iter().zip(sc.servers()).all(|(a, b)| {
                            a.url == b.url
                                && a.weight == b.weight
                                && a.stop_command == b.stop_command
                        })
                });
                if same {
                    continue;
                }
                let Some(new) = Shard::new(db_name, name, config) else {
                    continue;
                };
                if let Some(old) = shards.get(&key) {
                    // The primary stays where failover put it, if it is still configured.
                    let url = &old.primary_server().url;
                    if let Some(i) = new.servers.iter().position(|s| &s.url == url) {
                        new.primary.store(i, Ordering::Release);
                    }
                    for s in &new.servers {
                        if let Some(o) = old.servers.iter().find(|o| o.url == s.url) {
                            *s.view.lock() = o.view();
                        }
                    }
                    old.replaced.store(true, Ordering::Release);
                }
                let new = Arc::new(new);
                shards.insert(key, new.clone());
                fresh.push(new);
            }
        }
        shards.retain(|k, s| {
            let kept = keep.contains(k);
            if !kept {
                s.replaced.store(true, Ordering::Release);
            }
            kept
        });
        fresh
    }
}

/// How long a checkout whose connection failed waits for the health checker's verdict.
pub fn failure_grace(f: &FailoverConfig) -> Duration {
    Duration::from_millis(f.health_check_timeout_ms + f.health_check_interval_ms)
}
