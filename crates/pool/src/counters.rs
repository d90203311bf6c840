//! What a pool counts for the admin console and the metrics: requests and transactions with
//! their times, a latency histogram, checkout waits, and the pool's open connections.
//!
//! Counting is a few relaxed atomic additions per request; the connection list changes only
//! when a connection opens or closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds.
const LATENCY_BOUNDS_NS: [u64; LATENCY_BUCKETS.len()] = {
    let mut ns = [0u64; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// One open server connection, as the admin console shows it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub backend_pid: i32,
    pub addr: SocketAddr,
    pub local_addr: Option<SocketAddr>,
    pub connected_at: SystemTime,
    pub tls: bool,
}

#[derive(Default)]
pub struct Counters {
    /// Requests answered (a simple Query or an extended-protocol batch up to its Sync).
    pub queries: AtomicU64,
    /// Microseconds from a request's first message to its ReadyForQuery, summed.
    pub query_us: AtomicU64,
    /// Transactions ended (explicit ones and single statements outside a block).
    pub xacts: AtomicU64,
    /// Microseconds from a transaction's first request to its end, summed.
    pub xact_us: AtomicU64,
    /// Microseconds clients waited for a connection, summed.
    pub wait_us: AtomicU64,
    /// Request latency: counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), the
    /// last for slower ones.
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    servers: Mutex<HashMap<i32, ServerInfo>>,
    waiters: Mutex<Vec<(u64, Instant)>>,
    next_waiter: AtomicU64,
}

impl Counters {
    /// Counts one answered request that took `took_ns` nanoseconds; `xact_ns`: it ended a
    /// transaction that took that long.
    pub fn request(&self, took_ns: u64, xact_ns: Option<u64>) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_us.fetch_add(took_ns / 1000, Ordering::Relaxed);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|b| took_ns <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        if let Some(x) = xact_ns {
            self.xacts.fetch_add(1, Ordering::Relaxed);
            self.xact_us.fetch_add(x / 1000, Ordering::Relaxed);
        }
    }

    pub(crate) fn opened(&self, info: ServerInfo) {
        self.servers.lock().insert(info.backend_pid, info);
    }

    pub(crate) fn closed(&self, backend_pid: i32) {
        self.servers.lock().remove(&backend_pid);
    }

    /// The open connections.
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.servers.lock().values().cloned().collect()
    }

    pub(crate) fn wait_started(&self) -> u64 {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.waiters.lock().push((id, Instant::now()));
        id
    }

    pub(crate) fn wait_ended(&self, id: u64) {
        let mut w = self.waiters.lock();
        if let Some(at) = w.iter().position(|(i, _)| *i == id) {
            let (_, since) = w.swap_remove(at);
            self.wait_us
                .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// How long the longest-waiting client has waited so far.
    pub fn max_wait(&self) -> Duration {
        self.waiters
            .lock()
            .iter()
            .map(|(_, since)| since.elapsed())
            .max()
            .unwrap_or_default()
    }
}
