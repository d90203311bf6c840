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

/// A loopback port that was free a moment ago: binds `127.0.0.1:0`, reads the port, and
/// releases it. Another process may grab it before it is used; callers retry.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}
