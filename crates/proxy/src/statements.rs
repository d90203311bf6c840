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
    /// Parameter types a server described (for reading binary parameters at Bind).
    described: std::sync::OnceLock<Vec<u32>>,
    /// How the router sees the statement, kept so that a Bind does not analyse it again.
    pub route: arc_swap::ArcSwapOption<StatementRoute>,
}

/// A prepared statement's analysis for one config generation.
#[derive(Debug)]
pub struct StatementRoute {
    pub generation: u64,
    pub analysis: Arc<router::analyze::Analysis>,
    /// Parameters of the analysis that are the statement's own (bound at Bind); its
    /// constants follow them.
    pub own: usize,
    pub constants: Vec<Option<String>>,
    pub hints: router::hints::Hints,
}

impl Statement {
    pub fn is_valid(&self) -> bool {
        self.valid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The type OID of each parameter: as the Parse gave it, else as a server described it.
    pub fn param_oids(&self) -> Vec<u32> {
        let given = parse_oids(&self.param_types);
        let described = self.described.get();
        (0..given.len().max(described.map_or(0, Vec::len)))
            .map(|i| match given.get(i) {
                Some(&oid) if oid != 0 => oid,
                _ => described.and_then(|d| d.get(i).copied()).unwrap_or(0),
            })
            .collect()
    }

    pub fn set_described(&self, oids: Vec<u32>) {
        let _ = self.described.set(oids);
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
            described: std::sync::OnceLock::new(),
            route: arc_swap::ArcSwapOption::empty(),
        });
        bucket.push(s.clone());
        s
    }
}

/// The OIDs of a Parse's `int16 count | int32 oid * count`.
pub fn parse_oids(raw: &[u8]) -> Vec<u32> {
    if raw.len() < 2 {
        return Vec::new();
    }
    let n = i16::from_be_bytes([raw[0], raw[1]]).max(0) as usize;
    raw[2..]
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The values of a Bind (`rest` as held by a `BindView`) in text form, as far as the router
/// can read them: text-format values, and binary values of integer, text and uuid types.
/// `None` for NULL and for what cannot be read.
pub fn bind_params_as_text(rest: &[u8], oids: &[u32]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let rd16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| i16::from_be_bytes([x[0], x[1]]));
    let rd32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    let Some(nfmt) = rd16(rest, 0) else {
        return out;
    };
    let nfmt = nfmt.max(0) as usize;
    let formats: Vec<i16> = (0..nfmt).filter_map(|i| rd16(rest, 2 + 2 * i)).collect();
    let mut at = 2 + 2 * nfmt;
    let Some(nval) = rd16(rest, at) else {
        return out;
    };
    at += 2;
    for i in 0..nval.max(0) as usize {
        let Some(len) = rd32(rest, at) else { break };
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let Some(v) = rest.get(at..at + len as usize) else {
            break;
        };
        at += len as usize;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        out.push(if format == 0 {
            Some(String::from_utf8_lossy(v).into_owned())
        } else {
            binary_as_text(oids.get(i).copied().unwrap_or(0), v)
        });
    }
    out
}

fn binary_as_text(oid: u32, v: &[u8]) -> Option<String> {
    match (oid, v.len()) {
        (21, 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (23, 4) => Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (20, 8) => Some(i64::from_be_bytes(v.try_into().ok()?).to_string()),
        (25 | 1043, _) => std::str::from_utf8(v).ok().map(str::to_owned),
        (2950, 16) => {
            let h: String = v.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        // INT8 arrays for `= ANY($n)` and other types: not read here.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_values_in_text_and_binary() {
        // formats: 2 (text, binary); values: '42', int8 7, NULL
        let mut rest = vec![0, 2, 0, 0, 0, 1, 0, 3];
        rest.extend_from_slice(&2i32.to_be_bytes());
        rest.extend_from_slice(b"42");
        rest.extend_from_slice(&8i32.to_be_bytes());
        rest.extend_from_slice(&7i64.to_be_bytes());
        rest.extend_from_slice(&(-1i32).to_be_bytes());
        rest.extend_from_slice(&[0, 0]);
        let v = bind_params_as_text(&rest, &[25, 20, 23]);
        assert_eq!(v, vec![Some("42".into()), Some("7".into()), None]);
        assert_eq!(binary_as_text(2950, &[0xa0; 16]).unwrap().len(), 36);
        assert_eq!(parse_oids(&[0, 2, 0, 0, 0, 20, 0, 0, 0, 25]), vec![20, 25]);
    }
}
