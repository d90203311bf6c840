//! Cancel keys. Each client gets a key of the proxy's own; while it holds a server connection,
//! its entry points at that server's key, so a CancelRequest reaches the query it is running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncWriteExt;

/// Where a client's query runs right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: SocketAddr,
    pub backend_pid: i32,
    pub secret_key: i32,
}

/// Where a client's query runs: one server, or each shard of a statement run on several
/// (`more` allocates only then).
#[derive(Debug, Default)]
pub struct Targets {
    one: Option<CancelTarget>,
    more: Vec<CancelTarget>,
}

pub type CancelSlot = Arc<Mutex<Targets>>;

/// Points a client's slot at one server, or at none.
pub fn point(slot: &CancelSlot, target: Option<CancelTarget>) {
    let mut s = slot.lock();
    s.one = target;
    if !s.more.is_empty() {
        s.more = Vec::new();
    }
}

/// Points a client's slot at several servers.
pub fn point_many(slot: &CancelSlot, targets: impl Iterator<Item = CancelTarget>) {
    let mut s = slot.lock();
    s.one = None;
    s.more = targets.collect();
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<(i32, i32), CancelSlot>>,
}

impl CancelRegistry {
    /// Makes a fresh key for a client; the key is freed by [`CancelRegistry::remove`].
    pub fn register(&self) -> ((i32, i32), CancelSlot) {
        let slot: CancelSlot = Arc::new(Mutex::new(Targets::default()));
        let mut rng = rand::thread_rng();
        let mut slots = self.slots.lock();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(v) = slots.entry(key) {
                v.insert(slot.clone());
                return (key, slot);
            }
        }
    }

    pub fn remove(&self, key: (i32, i32)) {
        self.slots.lock().remove(&key);
    }

    /// Forwards a cancel to the server(s) running the client's query, if any. Unknown keys
    /// are ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: (i32, i32)) {
        let targets: Vec<CancelTarget> = {
            let slots = self.slots.lock();
            slots
                .get(&key)
                .map(|s| {
                    let t = s.lock();
                    t.one.iter().chain(&t.more).copied().collect()
                })
                .unwrap_or_default()
        };
        for t in targets {
            let packet = wire::startup::encode_cancel(t.backend_pid, t.secret_key);
            match tokio::net::TcpStream::connect(t.addr).await {
                Ok(mut s) => {
                    let _ = s.write_all(&packet).await;
                    let _ = s.shutdown().await;
                }
                Err(e) => {
                    tracing::warn!(addr = %t.addr, error = %e, "could not forward cancel request")
                }
            }
        }
    }
}
