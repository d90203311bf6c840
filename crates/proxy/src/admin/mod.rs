//! The admin console: database `shardgate` on the proxy's own port, for the users listed in
//! `admin_users`. It speaks the simple and the extended protocol well enough for psql and
//! drivers, and answers each command with an ordinary result set (see [`commands`]).

mod commands;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use wire::messages::{self, tag, ProxyError};
use wire::Frame;

use crate::startup::ClientConn;
use crate::Proxy;

/// The admin console's database name.
pub const DATABASE: &str = "shardgate";

/// What a command answers: a result set (possibly of no columns) and its command tag.
pub struct Answer {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

/// A result column: its name and type.
#[derive(Clone)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int8,
}

impl Column {
    pub const fn text(name: &'static str) -> Column {
        Column {
            name,
            kind: Kind::Text,
        }
    }
    pub const fn int(name: &'static str) -> Column {
        Column {
            name,
            kind: Kind::Int8,
        }
    }
}

/// The greeting after a successful admin login.
pub async fn greet(conn: &mut ClientConn) -> Result<(), ProxyError> {
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (shardgate admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("is_superuser", "off"),
        ("application_name", ""),
    ] {
        messages::parameter_status_msg(&mut out, k, v);
    }
    messages::backend_key_data_msg(&mut out, 0, 0);
    messages::ready_for_query(&mut out, b'I');
    conn.write_all(&out).await
}

/// A statement or portal of the extended protocol: the command text, and for a portal the
/// result formats the client asked for.
#[derive(Clone, Default)]
struct Prepared {
    sql: String,
    formats: Vec<i16>,
}

/// Serves an admin client until it leaves.
pub async fn serve(
    proxy: Arc<Proxy>,
    id: u64,
    user: String,
    mut conn: ClientConn,
    _count: crate::ClientCount,
) {
    let addr = conn.stream.tcp().peer_addr().ok();
    let entry = proxy
        .stats
        .add_client(id, &user, DATABASE, addr, conn.stream.is_tls());
    let _ = entry;
    let r = run(&proxy, &mut conn).await;
    proxy.stats.remove_client(id);
    if let Err(e) = r {
        tracing::debug!(id, error = %e.message, "admin client ended");
    }
}

async fn run(proxy: &Arc<Proxy>, conn: &mut ClientConn) -> Result<(), ProxyError> {
    let mut statements: std::collections::HashMap<String, Prepared> = Default::default();
    let mut portals: std::collections::HashMap<String, Prepared> = Default::default();
    let mut out = BytesMut::new();
    let mut skip_until_sync = false;
    loop {
        let frame = conn.read_frame().await?;
        let t = frame.tag();
        if skip_until_sync && t != tag::SYNC {
            continue;
        }
        match t {
            tag::TERMINATE => return Ok(()),
            tag::QUERY => {
                let sql = messages::query_text(&frame)
                    .map_err(|e| ProxyError::fatal("08P01", e.to_string()))?;
                let sql = String::from_utf8_lossy(sql).into_owned();
                let parts = split(&sql);
                if parts.is_empty() {
                    out.put_u8(b'I');
                    out.put_i32(4);
                }
                for part in parts {
                    match commands::run(proxy, &part).await {
                        Ok(a) => {
                            if !a.columns.is_empty() {
                                row_description(&mut out, &a.columns, &[]);
                            }
                            data_rows(&mut out, &a, &[]);
                        }
                        Err(e) => {
                            e.encode(&mut out);
                            break;
                        }
                    }
                }
                messages::ready_for_query(&mut out, b'I');
            }
            tag::PARSE => {
                let (name, sql) = parse_message(&frame)?;
                statements.insert(
                    name,
                    Prepared {
                        sql,
                        formats: Vec::new(),
                    },
                );
                out.put_u8(b'1');
                out.put_i32(4);
            }
            tag::BIND => {
                let (portal, statement, formats) = bind_message(&frame)?;
                match statements.get(&statement) {
                    Some(p) => {
                        portals.insert(
                            portal,
                            Prepared {
                                sql: p.sql.clone(),
                                formats,
                            },
                        );
                        out.put_u8(b'2');
                        out.put_i32(4);
                    }
                    None => {
                        ProxyError::error(
                            "26000",
                            format!("prepared statement \"{statement}\" does not exist"),
                        )
                        .encode(&mut out);
                        skip_until_sync = true;
                    }
                }
            }
            tag::DESCRIBE => {
                let body = frame.body();
                let kind = body.first().copied().unwrap_or(b'S');
                let name = cstr(&body[1.min(body.len())..]).0;
                let found = if kind == b'S' {
                    statements.get(&name)
                } else {
                    portals.get(&name)
                };
                match found {
                    Some(p) => {
                        if kind == b'S' {
                            // No parameters.
                            out.put_u8(b't');
                            out.put_i32(6);
                            out.put_i16(0);
                        }
                        let columns = commands::columns(&p.sql);
                        if columns.is_empty() {
                            out.put_u8(b'n');
                            out.put_i32(4);
                        } else {
                            row_description(&mut out, &columns, &p.formats);
                        }
                    }
                    None => {
                        ProxyError::error("26000", format!("\"{name}\" does not exist"))
                            .encode(&mut out);
                        skip_until_sync = true;
                    }
                }
            }
            tag::EXECUTE => {
                let body = frame.body();
                let name = cstr(body).0;
                let Some(p) = portals.get(&name).cloned() else {
                    ProxyError::error("34000", format!("portal \"{name}\" does not exist"))
                        .encode(&mut out);
                    skip_until_sync = true;
                    continue;
                };
                if p.sql.trim().is_empty() {
                    out.put_u8(b'I');
                    out.put_i32(4);
                    continue;
                }
                match commands::run(proxy, &p.sql).await {
                    Ok(a) => data_rows(&mut out, &a, &p.formats),
                    Err(e) => {
                        e.encode(&mut out);
                        skip_until_sync = true;
                    }
                }
            }
            tag::CLOSE => {
                let body = frame.body();
                let name = cstr(&body[1.min(body.len())..]).0;
                if body.first() == Some(&b'S') {
                    statements.remove(&name);
                } else {
                    portals.remove(&name);
                }
                out.put_u8(b'3');
                out.put_i32(4);
            }
            tag::SYNC => {
                skip_until_sync = false;
                portals.remove("");
                messages::ready_for_query(&mut out, b'I');
            }
            tag::FLUSH => {}
            other => {
                return Err(ProxyError::fatal(
                    "08P01",
                    format!(
                        "the admin console does not take message type {}",
                        char::from(other)
                    ),
                ))
            }
        }
        if matches!(t, tag::QUERY | tag::SYNC | tag::FLUSH) || out.len() > 64 * 1024 {
            conn.write_all(&out).await?;
            out.clear();
        }
    }
}

/// The commands of a simple Query, split at semicolons outside quotes.
fn split(sql: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, ';') => {
                if !cur.trim().is_empty() {
                    parts.push(std::mem::take(&mut cur));
                }
                cur.clear();
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts
}

fn cstr(b: &[u8]) -> (String, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        String::from_utf8_lossy(&b[..end]).into_owned(),
        b.get(end + 1..).unwrap_or(&[]),
    )
}

fn bad(what: &str) -> ProxyError {
    ProxyError::fatal("08P01", format!("malformed {what} message"))
}

fn parse_message(f: &Frame) -> Result<(String, String), ProxyError> {
    let (name, rest) = cstr(f.body());
    let (sql, _) = cstr(rest);
    if f.body().is_empty() {
        return Err(bad("Parse"));
    }
    Ok((name, sql))
}

fn bind_message(f: &Frame) -> Result<(String, String, Vec<i16>), ProxyError> {
    let (portal, rest) = cstr(f.body());
    let (statement, mut rest) = cstr(rest);
    let i16_at = |r: &mut &[u8]| -> Result<i16, ProxyError> {
        let v = r.get(..2).ok_or_else(|| bad("Bind"))?;
        let v = i16::from_be_bytes([v[0], v[1]]);
        *r = &r[2..];
        Ok(v)
    };
    let nformats = i16_at(&mut rest)?;
    for _ in 0..nformats {
        i16_at(&mut rest)?;
    }
    let nparams = i16_at(&mut rest)?;
    for _ in 0..nparams {
        let len = rest.get(..4).ok_or_else(|| bad("Bind"))?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        rest = &rest[4..];
        if len > 0 {
            rest = rest.get(len as usize..).ok_or_else(|| bad("Bind"))?;
        }
    }
    let nresults = i16_at(&mut rest)?;
    let mut formats = Vec::with_capacity(nresults.max(0) as usize);
    for _ in 0..nresults {
        formats.push(i16_at(&mut rest)?);
    }
    Ok((portal, statement, formats))
}

/// The format of result column `i` under the client's format codes.
fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

fn row_description(out: &mut BytesMut, columns: &[Column], formats: &[i16]) {
    let at = out.len();
    out.put_u8(b'T');
    out.put_i32(0);
    out.put_i16(columns.len() as i16);
    for (i, c) in columns.iter().enumerate() {
        out.extend_from_slice(c.name.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table oid
        out.put_i16(0); // column number
        let (oid, len) = match c.kind {
            Kind::Text => (25, -1),
            Kind::Int8 => (20, 8),
        };
        out.put_i32(oid);
        out.put_i16(len);
        out.put_i32(-1); // typmod
        out.put_i16(format_of(formats, i));
    }
    let len = (out.len() - at - 1) as i32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

fn data_rows(out: &mut BytesMut, a: &Answer, formats: &[i16]) {
    for row in &a.rows {
        let at = out.len();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(row.len() as i16);
        for (i, v) in row.iter().enumerate() {
            match v {
                None => out.put_i32(-1),
                Some(v) => {
                    let binary_int = format_of(formats, i) == 1
                        && a.columns.get(i).is_some_and(|c| c.kind == Kind::Int8);
                    if binary_int {
                        out.put_i32(8);
                        out.put_i64(v.parse().unwrap_or(0));
                    } else {
                        out.put_i32(v.len() as i32);
                        out.extend_from_slice(v.as_bytes());
                    }
                }
            }
        }
        let len = (out.len() - at - 1) as i32;
        out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
    }
    messages::command_complete(out, &a.tag);
}

#[cfg(test)]
mod tests {
    #[test]
    fn commands_split_at_semicolons_outside_quotes() {
        assert_eq!(
            super::split("SHOW POOLS; SHOW ROUTE 'a;b';"),
            vec!["SHOW POOLS".to_owned(), " SHOW ROUTE 'a;b'".to_owned()]
        );
        assert!(super::split(" ; ").is_empty());
    }
}
