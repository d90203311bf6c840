//! What the proxy as a whole counts and lists, beside what each pool counts: the connected
//! clients (for `SHOW CLIENTS` and the metrics), errors by SQLSTATE, and statements run
//! over several shards.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// A client's state, as PgBouncer names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, no server attached.
    Idle = 0,
    /// A server attached (in a transaction, or held by session pooling).
    Active = 1,
    /// Waiting for a server connection.
    Waiting = 2,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }
}

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    pub user: String,
    pub database: String,
    pub addr: Option<SocketAddr>,
    pub connected_at: SystemTime,
    pub tls: bool,
    state: AtomicU8,
}

impl ClientEntry {
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    #[inline]
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Stats {
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    /// (database, SQLSTATE) → errors sent to clients.
    errors: Mutex<HashMap<(String, String), u64>>,
    /// database → statements run over several shards (fan-out and merge).
    fanouts: Mutex<HashMap<String, u64>>,
    /// database → reads whose rows the merge engine combined.
    merges: Mutex<HashMap<String, u64>>,
    /// Primaries replaced (failover, switchover, a promotion adopted).
    failovers: std::sync::atomic::AtomicU64,
}

impl Stats {
    pub fn note_failover(&self) {
        self.failovers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn failovers(&self) -> u64 {
        self.failovers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lists a client until its entry is given back to [`Stats::remove_client`].
    pub fn add_client(
        &self,
        id: u64,
        user: &str,
        database: &str,
        addr: Option<SocketAddr>,
        tls: bool,
    ) -> Arc<ClientEntry> {
        let e = Arc::new(ClientEntry {
            user: user.to_owned(),
            database: database.to_owned(),
            addr,
            connected_at: SystemTime::now(),
            tls,
            state: AtomicU8::new(ClientState::Idle as u8),
        });
        self.clients.lock().insert(id, e.clone());
        e
    }

    pub fn remove_client(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    /// The connected clients, by id.
    pub fn clients(&self) -> Vec<(u64, Arc<ClientEntry>)> {
        let mut v: Vec<_> = self
            .clients
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Counts an error sent to a client of `database`.
    pub fn error(&self, database: &str, sqlstate: &str) {
        *self
            .errors
            .lock()
            .entry((database.to_owned(), sqlstate.to_owned()))
            .or_default() += 1;
    }

    pub fn errors(&self) -> Vec<((String, String), u64)> {
        let mut v: Vec<_> = self
            .errors
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }

    /// Counts a statement run over several shards.
    pub fn fanout(&self, database: &str) {
        *self.fanouts.lock().entry(database.to_owned()).or_default() += 1;
    }

    /// Counts a read merged across shards.
    pub fn merge(&self, database: &str) {
        *self.merges.lock().entry(database.to_owned()).or_default() += 1;
    }

    pub fn merges(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .merges
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }

    pub fn fanouts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .fanouts
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }
}

/// The SQLSTATE of an ErrorResponse body (field `C`).
pub fn error_code(body: &[u8]) -> Option<&str> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return std::str::from_utf8(&tail[..end]).ok();
        }
        rest = &tail[end + 1..];
    }
    None
}
