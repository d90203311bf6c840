//! Temporary local PostgreSQL clusters — primaries and streaming replicas — for tests,
//! the `sandbox` command and failover drills.
//!
//! Everything is synchronous and drives the stock PostgreSQL programs (`initdb`,
//! `pg_ctl`, `pg_basebackup`, `psql`). When running as root, server-side programs run
//! as the unprivileged `postgres` OS user, since PostgreSQL refuses to run as root.

mod binaries;
mod cluster;
mod error;
mod os;
mod shell;

pub use binaries::{PgBinaries, BINDIR_ENV};
pub use cluster::{AuthMethod, Cluster, ClusterOptions};
pub use error::ClusterError;
pub use os::SERVER_OS_USER;

/// Where [`free_port`] looks: below Linux's ephemeral range (32768 and up), so that no
/// outgoing connection is given the port as its source between the moment it is picked and
/// the moment a server binds it, and no client connecting to it before then can end up
/// connected to itself. It also stays clear of the fixed ports tests and benchmarks use
/// (15433, 15434, 25460 and up).
const PORT_RANGE: std::ops::Range<u16> = 16000..25000;

/// A loopback port that was free a moment ago: probes `127.0.0.1` ports in [`PORT_RANGE`],
/// each process from its own starting point and never the same port twice, and returns the
/// first it could bind (then releases it). Another process may grab it before it is used;
/// callers retry. Falls back to an ephemeral port only if the whole range is taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    // Test binaries and benchmarks running side by side start far apart.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_RANGE.start + ((start + step) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_bindable_and_not_repeated() {
        let a = free_port();
        let b = free_port();
        assert!(
            PORT_RANGE.contains(&a) && PORT_RANGE.contains(&b),
            "{a}, {b}"
        );
        assert_ne!(a, b);
        std::net::TcpListener::bind(("127.0.0.1", a)).expect("the port is free");
    }
}
