//! Named prepared statements under transaction pooling.
//!
//! A client's statement name means nothing to the server connection its next transaction
//! gets. So every distinct (query text, parameter types) gets one proxy-wide id, and servers
//! know it as `sg_<id>`: clients that prepare the same statement share it, and a server
//! connection that already has it is not asked to parse it again.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// What a server needs to prepare a statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub query: Bytes,
    pub param_types: Bytes,
    /// Server-side name: `sg_<id>`.
    pub server_name: Box<[u8]>,
    /// Set when the statement changes session state (SET ...), for tracking at Execute.
    pub command: Option<router::SessionCommand>,
    /// Some server has parsed this text without error.
    valid: std::sync::atomic::AtomicBool,
}

impl Statement {
    pub fn is_valid(&self) -> bool {
        self.valid.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn mark_valid(&self) {
        if !self.is_valid() {
            self.valid.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
pub struct StatementRegistry {
    /// By a hash of (query, parameter types); a bucket holds the rare collisions.
    by_hash: Mutex<HashMap<u64, Vec<Arc<Statement>>>>,
    count: std::sync::atomic::AtomicU64,
}

fn text_hash(query: &[u8], param_types: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    query.hash(&mut h);
    param_types.hash(&mut h);
    h.finish()
}

impl StatementRegistry {
    pub fn intern(&self, query: &[u8], param_types: &[u8]) -> Arc<Statement> {
        let hash = text_hash(query, param_types);
        let mut map = self.by_hash.lock();
        let bucket = map.entry(hash).or_default();
        if let Some(s) = bucket
            .iter()
            .find(|s| s.query == query && s.param_types == param_types)
        {
            return s.clone();
        }
        let id = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let command = std::str::from_utf8(query)
            .ok()
            .map(router::classify)
            .filter(|c| *c != router::SessionCommand::Other);
        let s = Arc::new(Statement {
            id,
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            server_name: format!("sg_{id}").into_bytes().into_boxed_slice(),
            command,
            valid: std::sync::atomic::AtomicBool::new(false),
        });
        bucket.push(s.clone());
        s
    }
}
