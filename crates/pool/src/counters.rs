//! What a pool counts for the admin console and the metrics: requests and transactions with
//! their times, a latency histogram, checkout waits, and the pool's open connections.
//!
//! A request is counted in a tally of the thread that counts it, written only by that
//! thread: plain loads and stores, no locked instruction (five atomic additions per request
//! were ~100 cycles of full barriers on the message path). Readers sum the tallies. The
//! connection list changes only when a connection opens or closes.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Threads with a tally of their own in every pool's counters; the others share one.
const OWN_TALLIES: usize = 8;

/// Request counts: one thread's, or the shared one's.
#[derive(Default)]
#[repr(align(128))] // apart from other threads' tallies: no cache line written by two
struct Tally {
    queries: AtomicU64,
    query_us: AtomicU64,
    xacts: AtomicU64,
    xact_us: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

/// What a pool has counted of its requests, summed over the threads that counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Requests answered (a simple Query or an extended-protocol batch up to its Sync).
    pub queries: u64,
    /// Microseconds from a request's first message to its ReadyForQuery, summed.
    pub query_us: u64,
    /// Transactions ended (explicit ones and single statements outside a block).
    pub xacts: u64,
    /// Microseconds from a transaction's first request to its end, summed.
    pub xact_us: u64,
    /// Request latency: counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), the
    /// last for slower ones.
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
}

thread_local! {
    /// This thread's tally: its number among the threads that counted, from the first time
    /// it counted (`usize::MAX`: not yet).
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Threads numbered so far.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The tally the current thread writes: its own (`Some`), if among the first
/// [`OWN_TALLIES`] to count.
fn own_tally() -> Option<usize> {
    let n = THREAD.with(|t| {
        if t.get() == usize::MAX {
            t.set(THREADS.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    });
    (n < OWN_TALLIES).then_some(n)
}

#[derive(Default)]
pub struct Counters {
    /// Per thread ([`own_tally`]), then the one the other threads share.
    tallies: [Tally; OWN_TALLIES + 1],
    /// Microseconds clients waited for a connection, summed.
    pub wait_us: AtomicU64,
    servers: Mutex<HashMap<i32, ServerInfo>>,
    waiters: Mutex<Vec<(u64, Instant)>>,
    next_waiter: AtomicU64,
}

impl Counters {
    /// Counts one answered request that took `took_ns` nanoseconds; `xact_ns`: it ended a
    /// transaction that took that long.
    pub fn request(&self, took_ns: u64, xact_ns: Option<u64>) {
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|b| took_ns <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        let own = own_tally();
        let t = &self.tallies[own.unwrap_or(OWN_TALLIES)];
        let add = |c: &AtomicU64, n: u64| {
            if own.is_some() {
                // Only this thread writes this tally: a load and a store are the addition.
                c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
            } else {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&t.queries, 1);
        add(&t.query_us, took_ns / 1000);
        add(&t.latency[bucket], 1);
        if let Some(x) = xact_ns {
            add(&t.xacts, 1);
            add(&t.xact_us, x / 1000);
        }
    }

    /// The requests counted so far, by every thread.
    pub fn totals(&self) -> Totals {
        let mut sum = Totals::default();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for t in &self.tallies {
            sum.queries += get(&t.queries);
            sum.query_us += get(&t.query_us);
            sum.xacts += get(&t.xacts);
            sum.xact_us += get(&t.xact_us);
            for (s, c) in sum.latency.iter_mut().zip(&t.latency) {
                *s += get(c);
            }
        }
        sum
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests counted on more threads than have tallies of their own are all there.
    #[test]
    fn totals_sum_every_thread() {
        let c = std::sync::Arc::new(Counters::default());
        let threads: Vec<_> = (0..OWN_TALLIES + 4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        c.request(2_000_000, (i % 2 == 0).then_some(3_000));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.request(100, None);
        let n = (OWN_TALLIES as u64 + 4) * 1000;
        let t = c.totals();
        assert_eq!(t.queries, n + 1);
        assert_eq!(t.query_us, n * 2000);
        assert_eq!(t.xacts, n / 2);
        assert_eq!(t.xact_us, n / 2 * 3);
        // 2 ms is in the 2.5 ms bucket; 100 ns in the first.
        assert_eq!(t.latency[2], n);
        assert_eq!(t.latency[0], 1);
        assert_eq!(t.latency.iter().sum::<u64>(), n + 1);
    }
}
