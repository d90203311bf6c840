//! Server connections and the pools that hold them.
//!
//! [`server::ServerConn`] is one raw protocol connection to PostgreSQL, authenticated and ready,
//! with what the proxy must know about it: its cancel key, the prepared statements and session
//! settings it carries. [`Pool`] holds the connections of one (database, user, shard) with a
//! fixed ceiling, a fair wait queue with a timeout, idle and lifetime limits, and the rule
//! that only a clean connection comes back: [`PooledConn`] closes the connection when it is
//! dropped instead of returned with [`PooledConn::release`].

pub mod prepared;
pub mod server;

mod gate;
mod pool;

pub mod clock;
pub mod counters;
pub use counters::{Counters, ServerInfo};
pub use gate::Handoff;
pub use pool::{Pool, PoolError, PoolSettings, PoolStats, PooledConn};
pub use prepared::PreparedSet;
pub use server::{ConnectError, ServerConn, ServerTarget, ServerTls, SettingsMap, Startup};
