//! Review of the fan-out / held-BEGIN / session-parking work: each test shows one suspected
//! bug against real PostgreSQL. They are expected to FAIL on the code under review.
//!
//! Setup: two shards, `items.id` (bigint) range-mapped: id < 100 on s0 (home), id >= 100 on
//! s1. A `trustuser` lets tests speak the raw protocol.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{cluster, create_database, psql_direct, sqlstate, APP_PASSWORD, SERVER_PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    shards: [String; 2],
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Setup {
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
            self.addr.port()
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MAP: &str = "type: range\nkey_type: bigint\nranges:\n  - { from: null, to: 100, shard: s0 }\n  - { from: 100, to: null, shard: s1 }\n";

fn setup(name: &str, mode: &str) -> Setup {
    let info = cluster();
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
    ];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE items (id bigint PRIMARY KEY, owner text); CREATE TABLE notes (id int)",
        );
    }
    psql_direct(
        &shards[0],
        "INSERT INTO items VALUES (5, 'a5'), (6, 'a6'), (7, 'a7')",
    );
    psql_direct(
        &shards[1],
        "INSERT INTO items VALUES (150, 'b150'), (151, 'b151'), (152, 'b152')",
    );
    let dir = std::env::temp_dir().join(format!("sg-review-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("map.yaml"),
        format!("name: {name}\n{MAP}tables: [{{ table: items, column: id }}]\n"),
    )
    .unwrap();
    let su = &info.superuser;
    let yaml = format!(
        "pool: {{ mode: {mode}, size: 3, checkout_timeout_ms: 3000 }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
  - {{ name: trustuser, auth: trust, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shard_maps: [map.yaml]
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/{s0}\" }}
      s1: {{ primary: \"postgres://127.0.0.1:{port}/{s1}\" }}
",
        port = info.port,
        s0 = shards[0],
        s1 = shards[1],
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
    Setup { shards, addr, dir }
}

// ---------------------------------------------------------------------------------------------
// A tiny raw protocol client.

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}
fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}
fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes()); // all text
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}
fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}
fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}
fn sync() -> Vec<u8> {
    msg(b'S', &[])
}
fn flush() -> Vec<u8> {
    msg(b'H', &[])
}
fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

/// A backend message, summarised: its tag and a readable detail (error code+message, row
/// values, command tag, ready status).
#[derive(Debug, Clone, PartialEq)]
struct M(char, String);

fn summarise(tag: u8, body: &[u8]) -> M {
    let detail = match tag {
        b'E' | b'N' => {
            let mut code = String::new();
            let mut text = String::new();
            for f in body.split(|b| *b == 0) {
                if let Some((&k, v)) = f.split_first() {
                    match k {
                        b'C' => code = String::from_utf8_lossy(v).into(),
                        b'M' => text = String::from_utf8_lossy(v).into(),
                        _ => {}
                    }
                }
            }
            format!("{code} {text}")
        }
        b'D' => {
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    vals.push("NULL".to_string());
                } else {
                    vals.push(String::from_utf8_lossy(&body[at..at + len as usize]).into());
                    at += len as usize;
                }
            }
            vals.join("|")
        }
        b'C' => String::from_utf8_lossy(&body[..body.len() - 1]).into(),
        b'Z' => (body[0] as char).to_string(),
        _ => String::new(),
    };
    M(tag as char, detail)
}

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn login(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&wire::startup::encode_startup(&[
            ("user", "trustuser"),
            ("database", "app"),
        ]))
        .await
        .unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        r.until_ready(1).await;
        r
    }

    async fn send(&mut self, parts: &[Vec<u8>]) {
        let all: Vec<u8> = parts.concat();
        self.s.write_all(&all).await.unwrap();
    }

    /// Reads messages until `n` ReadyForQuery have come (10 s at most).
    async fn until_ready(&mut self, n: usize) -> Vec<M> {
        let mut out = Vec::new();
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen < n {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let frame: Vec<u8> = self.buf.drain(..1 + len).collect();
                let m = summarise(frame[0], &frame[5..]);
                if m.0 == 'Z' {
                    seen += 1;
                }
                out.push(m);
                if seen == n {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            let got = tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await;
            match got {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    out.push(M('!', "connection closed".into()));
                    return out;
                }
                Ok(Ok(k)) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => {
                    out.push(M('!', "timed out".into()));
                    return out;
                }
            }
        }
        out
    }

    /// Reads messages until one with tag `t` (10 s at most).
    async fn until_tag(&mut self, t: char) -> Vec<M> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let frame: Vec<u8> = self.buf.drain(..1 + len).collect();
                let m = summarise(frame[0], &frame[5..]);
                let done = m.0 == t;
                out.push(m);
                if done {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(k)) if k > 0 => self.buf.extend_from_slice(&chunk[..k]),
                _ => {
                    out.push(M('!', "closed or timed out".into()));
                    return out;
                }
            }
        }
    }

    async fn round(&mut self, parts: &[Vec<u8>]) -> Vec<M> {
        self.send(parts).await;
        self.until_ready(1).await
    }
}

fn errors(ms: &[M]) -> Vec<String> {
    ms.iter().filter(|m| m.0 == 'E').map(|m| m.1.clone()).collect()
}
fn rows(ms: &[M]) -> Vec<String> {
    ms.iter().filter(|m| m.0 == 'D').map(|m| m.1.clone()).collect()
}

// ---------------------------------------------------------------------------------------------

/// BEGIN is held; an unnamed extended statement whose key is a constant is parsed on its shard
/// at once, and the held BEGIN (a simple Query) is slipped in between that Parse and its Bind.
/// A simple Query destroys the unnamed statement, so the Bind fails.
#[tokio::test]
async fn held_begin_then_unnamed_statement_with_constant_key() {
    let st = setup("rv_heldunnamed", "transaction");
    let mut c = Raw::login(st.addr).await;
    let r = c.round(&[query("BEGIN")]).await;
    assert!(errors(&r).is_empty(), "{r:?}");
    let r = c
        .round(&[
            parse("", "SELECT owner FROM items WHERE id = 150"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ])
        .await;
    let r2 = c.round(&[query("COMMIT")]).await;
    assert_eq!(rows(&r), vec!["b150"], "statement in transaction: {r:?}; COMMIT: {r2:?}");
    assert!(errors(&r).is_empty(), "{r:?}");
}

/// In one extended batch (no Sync between), a statement fails on the home shard and a
/// statement for several shards follows. PostgreSQL skips everything after an error up to
/// Sync; the proxy runs the fan-out anyway, on the shard that did not see the error.
#[tokio::test]
async fn fanout_after_an_error_in_the_same_batch_still_runs() {
    let st = setup("rv_errfan", "transaction");
    let mut c = Raw::login(st.addr).await;
    let r = c
        .round(&[
            // Fails: id 5 exists on s0.
            parse("", "INSERT INTO items (id, owner) VALUES (5, 'dup')"),
            bind("", "", &[]),
            execute(""),
            // Must be skipped by the error above.
            parse("", "DELETE FROM items WHERE id IN ($1, $2)"),
            bind("", "", &["6", "151"]),
            execute(""),
            sync(),
        ])
        .await;
    let left0 = psql_direct(&st.shards[0], "SELECT count(*) FROM items WHERE id = 6");
    let left1 = psql_direct(&st.shards[1], "SELECT count(*) FROM items WHERE id = 151");
    assert_eq!(
        (left0.as_str(), left1.as_str()),
        ("1", "1"),
        "a statement after the batch's error ran; client saw {r:?}"
    );
    assert_eq!(errors(&r).len(), 1, "{r:?}");
}

/// Session pooling: the unnamed statement is parsed (for a Describe) on the home shard's
/// connection, then bound with a key of s1. The proxy thinks it was already sent and binds the
/// *s1 connection's* old unnamed statement: another query runs.
#[tokio::test]
async fn session_mode_unnamed_statement_follows_to_the_shard() {
    let st = setup("rv_sessunnamed", "session");
    let mut c = Raw::login(st.addr).await;
    // The unnamed statement A runs on s1.
    let r = c
        .round(&[
            parse("", "SELECT 'A:' || owner FROM items WHERE id = $1"),
            bind("", "", &["150"]),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(rows(&r), vec!["A:b150"], "{r:?}");
    // The unnamed statement B is parsed and described (a driver's describe-then-execute).
    let r = c
        .round(&[
            parse("", "SELECT 'B:' || owner FROM items WHERE id = $1"),
            describe(b'S', ""),
            sync(),
        ])
        .await;
    assert!(errors(&r).is_empty(), "{r:?}");
    // ... and executed with a key of s1.
    let r = c.round(&[bind("", "", &["151"]), execute(""), sync()]).await;
    assert_eq!(rows(&r), vec!["B:b151"], "{r:?}");
}

/// Session pooling: a named statement for several shards is run with an unnamed Parse on
/// the session's own connection, replacing the client's unnamed statement there.
#[tokio::test]
async fn session_mode_fanout_clobbers_the_unnamed_statement() {
    let st = setup("rv_sessclobber", "session");
    let mut c = Raw::login(st.addr).await;
    let r = c
        .round(&[
            parse("", "SELECT 'A:' || owner FROM items WHERE id = 5"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(rows(&r), vec!["A:a5"], "{r:?}");
    let r = c
        .round(&[
            parse("fan", "SELECT owner FROM items WHERE id IN ($1, $2)"),
            bind("", "fan", &["6", "151"]),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(rows(&r).len(), 2, "{r:?}");
    // The unnamed statement is still A (PostgreSQL keeps it until the next unnamed Parse).
    let r = c.round(&[bind("", "", &[]), execute(""), sync()]).await;
    assert_eq!(rows(&r), vec!["A:a5"], "{r:?}");
}

/// `BEGIN` with invalid options is held and acknowledged; when it reaches the shard it fails,
/// and the following statement runs in autocommit: ROLLBACK does not undo it.
#[tokio::test]
async fn invalid_held_begin_is_acknowledged_and_the_write_autocommits() {
    let st = setup("rv_badbegin", "transaction");
    let c = e2e::connect(&st.conninfo()).await;
    let begin = c.batch_execute("BEGIN ISOLATION LEVEL BOGUS").await;
    let insert = c
        .batch_execute("INSERT INTO items (id, owner) VALUES (160, 'new')")
        .await;
    let rollback = c.batch_execute("ROLLBACK").await;
    let n = psql_direct(&st.shards[1], "SELECT count(*) FROM items WHERE id = 160");
    assert!(
        begin.is_err(),
        "BEGIN ISOLATION LEVEL BOGUS succeeded through the proxy; then INSERT: {insert:?}, ROLLBACK: {rollback:?}, rows with id 160 after ROLLBACK: {n}"
    );
}

/// A statement for several shards bound, then a Flush (the client waits for BindComplete),
/// then its Execute: the fan-out runs at the Flush without the Execute and the Execute finds
/// no portal.
#[tokio::test]
async fn fanout_bind_flush_execute() {
    let st = setup("rv_flush", "transaction");
    let mut c = Raw::login(st.addr).await;
    c.send(&[
        parse("", "SELECT owner FROM items WHERE id IN ($1, $2)"),
        bind("", "", &["5", "150"]),
        flush(),
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.round(&[execute(""), sync()]).await;
    assert!(errors(&r).is_empty(), "{r:?}");
    assert_eq!(rows(&r).len(), 2, "{r:?}");
}

/// Parse, Describe (statement), Bind, Execute, Sync in one batch for a key of s1: the
/// Describe attaches the home shard, which then pins the batch, and the Bind is refused.
#[tokio::test]
async fn describe_in_the_same_batch_pins_the_home_shard() {
    let st = setup("rv_describe", "transaction");
    let mut c = Raw::login(st.addr).await;
    let r = c
        .round(&[
            parse("s1", "SELECT owner FROM items WHERE id = $1"),
            describe(b'S', "s1"),
            bind("", "s1", &["150"]),
            execute(""),
            sync(),
        ])
        .await;
    assert!(errors(&r).is_empty(), "{r:?}");
    assert_eq!(rows(&r), vec!["b150"], "{r:?}");
}

/// Session pooling: a temporary table is DDL and runs on every shard; the connection taken
/// for s1 is handed back to the pool right away, temporary table and all, and the next
/// client gets it.
#[tokio::test]
async fn session_mode_fanout_leg_goes_back_to_the_pool_dirty() {
    let st = setup("rv_sesstemp", "session");
    let a = e2e::connect(&st.conninfo()).await;
    a.batch_execute("CREATE TEMP TABLE scratch (id int)")
        .await
        .unwrap();
    // Another session, on shard s1.
    let b = e2e::connect(&st.conninfo()).await;
    let r = b
        .simple_query("/* shardgate: shard=s1 */ SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relnamespace = pg_my_temp_schema()")
        .await
        .unwrap();
    let seen = e2e::simple_rows(&r);
    // And the first session, on s1, no longer sees its own temporary table.
    let mine = a
        .simple_query("/* shardgate: shard=s1 */ SELECT count(*) FROM scratch")
        .await;
    assert_eq!(
        seen,
        vec![vec![Some("0".to_string())]],
        "another client's session sees the temporary table; the owner's own query on s1: {:?}",
        mine.map(|m| e2e::simple_rows(&m)).map_err(|e| sqlstate(&e))
    );
}

// ---------------------------------------------------------------------------------------------

/// The route cache (and prepared statements' kept analyses) are proxy-wide and keyed by the
/// statement's shape only, but the analysis depends on the database's key columns: the same
/// shape in two databases whose `items` are keyed by different columns is routed by the
/// first database's key column.
#[tokio::test]
async fn route_cache_is_shared_between_databases() {
    let info = cluster();
    let name = "rv_twodb";
    let a = [
        create_database(&format!("{name}_a0")),
        create_database(&format!("{name}_a1")),
    ];
    let b = [
        create_database(&format!("{name}_b0")),
        create_database(&format!("{name}_b1")),
    ];
    for db in a.iter().chain(b.iter()) {
        psql_direct(db, "CREATE TABLE items (id bigint, k bigint, owner text)");
    }
    // Database `beta` shards items by `k`: k = 500 lives on its second shard.
    psql_direct(&b[1], "INSERT INTO items VALUES (5, 500, 'right')");
    let dir = std::env::temp_dir().join(format!("sg-review-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        format!("name: amap\n{MAP}tables: [{{ table: items, column: id }}]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        format!("name: bmap\n{MAP}tables: [{{ table: items, column: k }}]\n"),
    )
    .unwrap();
    let su = &info.superuser;
    let port = info.port;
    let yaml = format!(
        "pool: {{ size: 3 }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  alpha:
    shard_maps: [a.yaml]
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/{a0}\" }}
      s1: {{ primary: \"postgres://127.0.0.1:{port}/{a1}\" }}
  beta:
    shard_maps: [b.yaml]
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/{b0}\" }}
      s1: {{ primary: \"postgres://127.0.0.1:{port}/{b1}\" }}
",
        a0 = a[0],
        a1 = a[1],
        b0 = b[0],
        b1 = b[1],
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
    let conn = |db: &str| {
        format!(
            "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname={db}",
            addr.port()
        )
    };
    let ca = e2e::connect(&conn("alpha")).await;
    let cb = e2e::connect(&conn("beta")).await;
    // Control: a shape only beta has used routes by `k`.
    let r = cb
        .simple_query("SELECT owner FROM items WHERE k = 500 AND id = 5")
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&r), vec![vec![Some("right".to_string())]]);
    // Alpha analyses the shape first (its key column is `id`).
    ca.simple_query("SELECT owner FROM items WHERE id = 1 AND k = 1")
        .await
        .unwrap();
    // Beta: key k = 500 is on s1; id = 5 would say s0.
    let r = cb
        .simple_query("SELECT owner FROM items WHERE id = 5 AND k = 500")
        .await
        .unwrap();
    let got = e2e::simple_rows(&r);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, vec![vec![Some("right".to_string())]]);
}

/// Transaction pooling: a client runs an INSERT by the extended protocol, waits for its
/// answer with Flush, and disconnects before its Sync. PostgreSQL would roll the implicit
/// transaction back; the proxy hands the connection back to the pool still inside it, and
/// the next client's statement commits the departed client's INSERT.
#[tokio::test]
async fn disconnect_inside_an_unsynced_batch_returns_a_dirty_connection() {
    let st = setup("rv_unsyncedquit", "transaction");
    let mut c = Raw::login(st.addr).await;
    c.send(&[
        parse("", "INSERT INTO items (id, owner) VALUES (8, 'never committed')"),
        bind("", "", &[]),
        execute(""),
        flush(),
    ])
    .await;
    let r = c.until_tag('C').await;
    assert_eq!(r.last(), Some(&M('C', "INSERT 0 1".into())), "{r:?}");
    c.send(&[msg(b'X', &[])]).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another client of the same user (same pool), on the home shard.
    let mut other = Raw::login(st.addr).await;
    let r = other.round(&[query("SELECT count(*) FROM notes")]).await;
    assert_eq!(rows(&r), vec!["0"], "{r:?}");
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = psql_direct(&st.shards[0], "SELECT count(*) FROM items WHERE id = 8");
    assert_eq!(left, "0", "the departed client's uncommitted INSERT was committed");
}
