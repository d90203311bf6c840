//! A sequence of frontend messages after login, as a session reads them: built with the
//! wire crate's builders (or given raw, well-framed or not), cut out of one byte stream by
//! `FrameDecoder` in chunks, checked by `check_frontend` (a malformed message ends the
//! session) and read by its view. Parse statements and Bind portals are kept by name as a
//! session keeps them; each statement is routed when parsed (parameters unbound) and again
//! at Bind with the bound values in text form, through the route cache, the plan with the
//! statement's hints, the split of a multi-row INSERT and the merge planner, as the proxy
//! does. A simple Query is split into its statements and each is routed the same way.

#![no_main]

use std::collections::HashMap;

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use router::cache::RouteCache;
use router::merge_plan::{plan_merge, Collation};
use router::plan::{mergeable, plan_with_hints, row_shards, Plan};
use shardgate_fuzz::{database, key_columns};
use wire::frame::{Frame, FrameDecoder};
use wire::messages::{self, tag, BindView, ParseView, TargetView};

/// Statements a client of the fixed database might send, so that most messages route.
const KNOWN: [&str; 16] = [
    "SELECT * FROM orders WHERE customer_id = $1",
    "SELECT * FROM orders WHERE customer_id = ANY($1)",
    "SELECT count(*) FROM orders WHERE customer_id IN ($1, $2)",
    "INSERT INTO orders (customer_id, total) VALUES ($1, $2), ($3, $4)",
    "UPDATE orders SET total = $2 WHERE customer_id = $1",
    "DELETE FROM payments WHERE customer_id = $1 RETURNING *",
    "SELECT * FROM events WHERE day >= $1 AND day < $2 ORDER BY day LIMIT $3",
    "SELECT * FROM events WHERE day = $1",
    "SELECT country, count(*) FROM customers WHERE country = $1 GROUP BY country",
    "SELECT * FROM pairs WHERE a = $1 AND b = $2",
    "SELECT * FROM countries WHERE code = $1",
    "/* shardgate: shard=s1 */ SELECT * FROM orders",
    "/* shardgate: key=$1 */ SELECT 1",
    "BEGIN",
    "SET search_path TO public",
    "SELECT o.*, p.* FROM orders o JOIN payments p ON p.customer_id = o.customer_id WHERE o.customer_id = $1",
];

/// A name from a small set, so that messages refer to each other.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    Unnamed,
    Named(u8),
}

impl Name {
    fn bytes(self) -> Vec<u8> {
        match self {
            Name::Unnamed => Vec::new(),
            Name::Named(n) => format!("s{}", n % 4).into_bytes(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Sql {
    Known(u8),
    Text(String),
}

impl Sql {
    fn text(&self) -> &str {
        match self {
            Sql::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()],
            Sql::Text(t) => t,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Msg {
    Parse {
        name: Name,
        sql: Sql,
        types: Vec<u32>,
    },
    Bind {
        portal: Name,
        statement: Name,
        formats: Vec<i16>,
        values: Vec<Value>,
        results: Vec<i16>,
    },
    Describe {
        portal: bool,
        name: Name,
    },
    Close {
        portal: bool,
        name: Name,
    },
    Execute {
        portal: Name,
        max_rows: i32,
    },
    Sync,
    Flush,
    Query(Sql),
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(Vec<u8>),
    /// A message of any tag and body, its length right.
    Framed {
        tag: u8,
        body: Vec<u8>,
    },
    /// Bytes as they come, length fields included.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    chunk: u8,
    messages: Vec<Msg>,
}

fn encode(m: &Msg, out: &mut BytesMut) {
    match m {
        Msg::Parse { name, sql, types } => {
            let mut t = Vec::new();
            t.extend_from_slice(&(types.len().min(i16::MAX as usize) as i16).to_be_bytes());
            for oid in types.iter().take(i16::MAX as usize) {
                t.extend_from_slice(&oid.to_be_bytes());
            }
            messages::parse(out, &name.bytes(), sql.text().as_bytes(), &t);
        }
        Msg::Bind {
            portal,
            statement,
            formats,
            values,
            results,
        } => {
            let mut rest = Vec::new();
            rest.extend_from_slice(&(formats.len() as i16).to_be_bytes());
            for f in formats {
                rest.extend_from_slice(&f.to_be_bytes());
            }
            rest.extend_from_slice(&(values.len() as i16).to_be_bytes());
            for v in values {
                let bytes = match v {
                    Value::Null => {
                        rest.extend_from_slice(&(-1i32).to_be_bytes());
                        continue;
                    }
                    Value::Int(i) => i.to_string().into_bytes(),
                    Value::Text(s) => s.clone().into_bytes(),
                    Value::Bytes(b) => b.clone(),
                };
                rest.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                rest.extend_from_slice(&bytes);
            }
            rest.extend_from_slice(&(results.len() as i16).to_be_bytes());
            for f in results {
                rest.extend_from_slice(&f.to_be_bytes());
            }
            messages::bind(out, &portal.bytes(), &statement.bytes(), &rest);
        }
        Msg::Describe { portal, name } => {
            let kind = if *portal { b'P' } else { b'S' };
            messages::target(out, tag::DESCRIBE, kind, &name.bytes());
        }
        Msg::Close { portal, name } => {
            let kind = if *portal { b'P' } else { b'S' };
            messages::target(out, tag::CLOSE, kind, &name.bytes());
        }
        Msg::Execute { portal, max_rows } => messages::execute(out, &portal.bytes(), *max_rows),
        Msg::Sync => messages::empty_message(out, tag::SYNC),
        Msg::Flush => messages::empty_message(out, tag::FLUSH),
        Msg::Query(sql) => messages::query(out, sql.text()),
        Msg::CopyData(d) => framed(out, tag::COPY_DATA, d),
        Msg::CopyDone => messages::empty_message(out, tag::COPY_DONE),
        Msg::CopyFail(d) => framed(out, tag::COPY_FAIL, d),
        Msg::Framed { tag, body } => framed(out, *tag, body),
        Msg::Raw(b) => out.extend_from_slice(b),
    }
}

fn framed(out: &mut BytesMut, t: u8, body: &[u8]) {
    out.extend_from_slice(&[t]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// The values of a Bind in text form, as the router reads them: text-format values as
/// they are, NULL and binary values as unknown.
fn bound_values(rest: &[u8]) -> Vec<Option<String>> {
    let rd16 = |at: usize| {
        rest.get(at..at + 2)
            .map(|x| i16::from_be_bytes([x[0], x[1]]))
    };
    let rd32 = |at: usize| {
        rest.get(at..at + 4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    let mut out = Vec::new();
    let Some(nfmt) = rd16(0) else { return out };
    let nfmt = nfmt.max(0) as usize;
    let format = |i: usize| match nfmt {
        0 => 0,
        1 => rd16(2).unwrap_or(0),
        _ => rd16(2 + 2 * i).unwrap_or(0),
    };
    let mut at = 2 + 2 * nfmt;
    let Some(nval) = rd16(at) else { return out };
    at += 2;
    for i in 0..nval.max(0) as usize {
        let Some(len) = rd32(at) else { break };
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let Some(v) = rest.get(at..at + len as usize) else {
            break;
        };
        at += len as usize;
        out.push((format(i) == 0).then(|| String::from_utf8_lossy(v).into_owned()));
    }
    out
}

/// Routes one statement with its bound values as the session does.
fn route(cache: &RouteCache, sql: &str, bound: &[Option<String>]) {
    let db = database();
    let Ok(hints) = router::hints::parse_hints(sql) else {
        return;
    };
    let keys = |t: &str| key_columns(db, t);
    let Ok(routed) = cache.route_in(1, sql, bound, &keys) else {
        return;
    };
    let a = &routed.analysis;
    let plan = plan_with_hints(db, a, &routed.params, &hints);
    if let Plan::Shards(shards) = &plan {
        if let Some(rows) = row_shards(db, a, &routed.params) {
            let _ = router::rewrite::split_insert(sql, &rows, shards);
        }
    }
    if matches!(plan, Plan::Refuse { .. }) && mergeable(a, &hints) {
        let _ = router::union::route_union_all(db, sql, &routed.params, &keys);
        let _ = plan_merge(db, a, sql, &routed.params, &Collation::C);
    }
}

#[derive(Default)]
struct Session {
    cache: RouteCache,
    statements: HashMap<Vec<u8>, String>,
    portals: HashMap<Vec<u8>, (String, Vec<Option<String>>)>,
    skip_until_sync: bool,
}

impl Session {
    /// One message; `false` ends the session.
    fn on_frame(&mut self, f: &Frame) -> bool {
        if f.tag() == tag::TERMINATE {
            return false;
        }
        if messages::check_frontend(f).is_err() {
            return false;
        }
        if self.skip_until_sync && f.tag() != tag::SYNC {
            return true;
        }
        match f.tag() {
            tag::QUERY => {
                let Ok(q) = messages::query_text(f) else {
                    return false;
                };
                let text = String::from_utf8_lossy(q);
                let _ = router::lexer::contains_any_word(q, &[b"set", b"listen", b"prepare"]);
                for st in router::lexer::split_statements(&text).into_iter().take(8) {
                    let _ = router::classify(st);
                    route(&self.cache, st, &[]);
                }
            }
            tag::PARSE => {
                let Ok(p) = ParseView::new(f) else {
                    return false;
                };
                if !p.name.is_empty() && self.statements.contains_key(p.name) {
                    self.skip_until_sync = true;
                    return true;
                }
                let _ = router::lexer::insert_names_columns(p.query);
                let text = String::from_utf8_lossy(p.query).into_owned();
                let _ = router::classify(&text);
                route(&self.cache, &text, &[]);
                self.statements.insert(p.name.to_vec(), text);
            }
            tag::BIND => {
                let Ok(b) = BindView::new(f) else {
                    return false;
                };
                let Some(text) = self.statements.get(b.statement).cloned() else {
                    self.skip_until_sync = true;
                    return true;
                };
                let values = bound_values(b.rest);
                route(&self.cache, &text, &values);
                self.portals.insert(b.portal.to_vec(), (text, values));
            }
            tag::DESCRIBE | tag::CLOSE => {
                let Ok(t) = TargetView::new(f) else {
                    return false;
                };
                if f.tag() == tag::CLOSE {
                    if t.kind == b'S' {
                        self.statements.remove(t.name);
                    } else {
                        self.portals.remove(t.name);
                    }
                }
            }
            tag::EXECUTE => {
                let Ok((portal, _)) = messages::execute_view(f) else {
                    return false;
                };
                if !self.portals.contains_key(portal) {
                    self.skip_until_sync = true;
                }
            }
            tag::SYNC => {
                self.skip_until_sync = false;
                self.portals.remove(&b""[..]);
            }
            _ => {}
        }
        true
    }
}

fuzz_target!(|input: Input| {
    let mut stream = BytesMut::new();
    for m in input.messages.iter().take(64) {
        encode(m, &mut stream);
    }
    let chunk = usize::from(input.chunk) + 1;
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut rest = &stream[..];
    let mut session = Session::default();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(f)) => {
                if !session.on_frame(&f) {
                    return;
                }
            }
            Ok(None) if rest.is_empty() => return,
            Ok(None) => {
                let n = chunk.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Err(_) => return,
        }
    }
});
