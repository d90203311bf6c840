//! Range pruning with bound parameters, the client-encoding guard (binary text parameters,
//! COPY ENCODING, SET LOCAL client_encoding), and session shard hints (DISCARD ALL, SET
//! through the extended protocol).
//!
//! Setup (as consistency.rs): two shards, `items.id` (bigint) range-mapped: id < 100 on s0
//! (home), id >= 100 on s1; `people.country` (text) list-mapped: 'é' on s1, everything else
//! on s0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use e2e::{cluster, create_database, psql_direct, APP_PASSWORD, SERVER_PASSWORD};

use e2e::raw::*;

struct Setup {
    shards: [String; 2],
    addr: SocketAddr,
    dir: std::path::PathBuf,
    proxy: Arc<proxy::Proxy>,
    mode: String,
}

impl Setup {
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
            self.addr.port()
        )
    }

    /// The config with the shards listed in `order` (indexes into `shards`).
    fn yaml(&self, order: [usize; 2]) -> String {
        config_yaml(&self.mode, &self.shards, order)
    }

    /// Reloads the proxy (as SIGHUP does) with the shards listed in `order`.
    fn reload(&self, order: [usize; 2]) {
        let file = self.dir.join("config.yaml");
        std::fs::write(&file, self.yaml(order)).unwrap();
        let config = sgconfig::load_file(&file).unwrap_or_else(|e| panic!("config: {e}"));
        self.proxy.reload(config);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MAP: &str = "type: range\nkey_type: bigint\nranges:\n  - { from: null, to: 100, shard: s0 }\n  - { from: 100, to: null, shard: s1 }\n";

fn config_yaml(mode: &str, shards: &[String; 2], order: [usize; 2]) -> String {
    let info = cluster();
    let su = &info.superuser;
    let mut yaml = format!(
        "pool: {{ mode: {mode}, size: 3, checkout_timeout_ms: 3000 }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
  - {{ name: trustuser, auth: trust, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shard_maps: [map.yaml, people.yaml]
    shards:
"
    );
    for i in order {
        yaml.push_str(&format!(
            "      s{i}: {{ primary: \"postgres://127.0.0.1:{}/{}\" }}\n",
            info.port, shards[i]
        ));
    }
    yaml
}

async fn setup(name: &str, mode: &str) -> Setup {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
    ];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE items (id bigint PRIMARY KEY, owner text); CREATE TABLE notes (id int); CREATE TABLE people (country text, name text)",
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
    let dir = std::env::temp_dir().join(format!("sg-hints-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("map.yaml"),
        format!("name: {name}\n{MAP}tables: [{{ table: items, column: id }}]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("people.yaml"),
        "name: people\ntype: list\nkey_type: text\nvalues:\n  s1: [\"é\"]\ndefault: s0\ntables: [{ table: people, column: country }]\n",
    )
    .unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(&file, config_yaml(mode, &shards, [0, 1])).unwrap();
    let config = sgconfig::load_file(&file).unwrap_or_else(|e| panic!("test config: {e}"));
    let proxy = proxy::Proxy::new(config);
    let p = proxy.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { p.serve(listener).await });
    Setup {
        shards,
        addr,
        dir,
        proxy,
        mode: mode.into(),
    }
}

fn count(db: &str, sql: &str) -> i64 {
    psql_direct(db, sql).trim().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------

fn bind_binary(portal: &str, stmt: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes()); // all binary
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p);
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

fn parse_typed(name: &str, sql: &str, oids: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(oids.len() as i16).to_be_bytes());
    for o in oids {
        b.extend_from_slice(&o.to_be_bytes());
    }
    msg(b'P', &b)
}

/// `SELECT count(*) ... WHERE id >= $1` is pruned to one shard once $1 is bound (an aggregate
/// pruned to one shard needs no merge): through a prepared statement the Parse waits for the
/// Bind instead of refusing the statement before any value is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_aggregate_with_a_range_bound_parameter_is_not_refused() {
    let s = setup("he_prepagg", "transaction").await;
    let c = e2e::connect(&s.conninfo()).await;
    // The same statement with a constant works.
    let lit = c
        .simple_query("SELECT count(*) FROM items WHERE id >= 150")
        .await
        .expect("literal bound");
    assert_eq!(e2e::simple_rows(&lit), vec![vec![Some("3".to_string())]]);
    let r = c
        .query("SELECT count(*) FROM items WHERE id >= $1", &[&150i64])
        .await;
    match r {
        Ok(rows) => assert_eq!(rows[0].get::<_, i64>(0), 3),
        Err(e) => panic!("refused: {e:?}"),
    }
}

/// A LATIN1 client binds a text parameter in binary format. PostgreSQL reads binary text in
/// the client's encoding too: bytes C3 A9 are 'Ã©' (default shard s0), not 'é' (s1). The
/// router refuses the key rather than misread it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_client_binary_text_parameter_is_not_misrouted() {
    let s = setup("he_latinbin", "transaction").await;
    let mut r = login_with(s.addr, &[("client_encoding", "LATIN1")]).await;
    let ms = r
        .round(&[
            parse_typed(
                "",
                "INSERT INTO people (country, name) VALUES ($1, 'latin1 binary')",
                &[25],
            ),
            bind_binary("", "", &[b"\xc3\xa9"]),
            execute(""),
            sync(),
        ])
        .await;
    eprintln!("{ms:?}");
    let on_s1 = count(&s.shards[1], "SELECT count(*) FROM people");
    let on_s0 = count(&s.shards[0], "SELECT count(*) FROM people");
    let stored = psql_direct(&s.shards[1], "SELECT country FROM people");
    assert_eq!(
        on_s1, 0,
        "key 'Ã©' (list default s0) was written to s1 (stored there as {stored:?}); s0 has {on_s0}"
    );
}

/// A UTF-8 client copies with `ENCODING 'LATIN1'`: PostgreSQL reads the COPY data as
/// LATIN1, so the row's key C3 A9 is 'Ã©' (s0), not 'é' (s1); the row is refused rather
/// than misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_an_encoding_option_is_not_misrouted() {
    let s = setup("he_copyenc", "transaction").await;
    let mut r = Raw::login(s.addr).await;
    r.send(&[query(
        "COPY people (country, name) FROM STDIN WITH (ENCODING 'LATIN1')",
    )])
    .await;
    let ms = r.until_tag('G').await;
    eprintln!("{ms:?}");
    let ms = if ms.last().is_some_and(|m| m.0 == 'G') {
        r.round(&[msg(b'd', b"\xc3\xa9\tcopy latin1\n"), msg(b'c', &[])])
            .await
    } else {
        ms
    };
    eprintln!("{ms:?}");
    let on_s1 = count(&s.shards[1], "SELECT count(*) FROM people");
    let stored = psql_direct(&s.shards[1], "SELECT country FROM people");
    assert_eq!(
        on_s1, 0,
        "key 'Ã©' (list default s0) was copied to s1 (stored there as {stored:?})"
    );
}

/// After `SET LOCAL client_encoding`, PostgreSQL reads the rest of the transaction's
/// messages as LATIN1 (the INSERT's key C3 A9 is 'Ã©', for s0): the session's text is no
/// longer taken for UTF-8, and the key is refused rather than misread as 'é' (s1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_client_encoding_does_not_let_a_key_be_misrouted() {
    let s = setup("he_setlocal", "transaction").await;
    let mut r = Raw::login(s.addr).await;
    for q in [
        &b"BEGIN"[..],
        "SELECT name FROM people WHERE country = 'é'".as_bytes(),
        b"SET LOCAL client_encoding = 'LATIN1'",
        b"INSERT INTO people (country, name) VALUES ('\xc3\xa9', 'set local')",
        b"COMMIT",
    ] {
        let ms = r.round(&[query_bytes(q)]).await;
        eprintln!("{} -> {ms:?}", String::from_utf8_lossy(q));
    }
    let on_s1 = count(&s.shards[1], "SELECT count(*) FROM people");
    let stored = psql_direct(&s.shards[1], "SELECT country FROM people");
    assert_eq!(
        on_s1, 0,
        "key 'Ã©' (list default s0) was written to s1 (stored there as {stored:?})"
    );
}

/// `DISCARD ALL` (what connection pools send when a connection is handed back) resets every
/// setting of the session, `RESET ALL` too: `shardgate.shard` with them, so the next user's
/// keyed reads go to their own shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_clears_the_session_shard_hint() {
    let s = setup("he_discard", "session").await;
    let c = e2e::connect(&s.conninfo()).await;
    c.batch_execute("SET shardgate.shard = 's0'").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    let got = e2e::simple_rows(
        &c.simple_query("SELECT owner FROM items WHERE id = 150")
            .await
            .unwrap(),
    );
    assert_eq!(
        got,
        vec![vec![Some("b150".to_string())]],
        "after DISCARD ALL the read of key 150 still went to s0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_clears_the_session_shard_hint() {
    let s = setup("he_resetall", "transaction").await;
    let c = e2e::connect(&s.conninfo()).await;
    c.batch_execute("SET shardgate.shard = 's0'").await.unwrap();
    c.batch_execute("RESET ALL").await.unwrap();
    let got = e2e::simple_rows(
        &c.simple_query("SELECT owner FROM items WHERE id = 150")
            .await
            .unwrap(),
    );
    assert_eq!(
        got,
        vec![vec![Some("b150".to_string())]],
        "after RESET ALL the read of key 150 still went to s0"
    );
}

/// `SET shardgate.shard` through the extended protocol (how JDBC and tokio-postgres'
/// `execute` send it) would reach PostgreSQL, which takes any dotted name as a placeholder,
/// and the hint would be silently ignored: it is refused, and the simple-query form acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_shardgate_shard_through_the_extended_protocol_is_refused() {
    let s = setup("he_extset", "session").await;
    let c = e2e::connect(&s.conninfo()).await;
    let e = c
        .execute("SET shardgate.shard = 's1'", &[])
        .await
        .unwrap_err();
    assert_eq!(e2e::sqlstate(&e), "0A000", "{e:?}");
    c.batch_execute("SET shardgate.shard = 's1'").await.unwrap();
    // With the hint, the aggregate runs on s1 (3 rows there).
    let m = c.simple_query("SELECT count(*) FROM items").await.unwrap();
    assert_eq!(e2e::simple_rows(&m), vec![vec![Some("3".to_string())]]);
}

/// BETWEEN SYMMETRIC is valid PostgreSQL that the statement parser does not take: the read
/// is refused with a hint naming the way round it, never sent to a guessed shard; with the
/// hint it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_symmetric_is_refused_with_a_hint_and_runs_with_one() {
    let s = setup("he_symm", "transaction").await;
    let c = e2e::connect(&s.conninfo()).await;
    let e = c
        .simple_query("SELECT owner FROM items WHERE id BETWEEN SYMMETRIC 152 AND 150")
        .await
        .unwrap_err();
    assert_eq!(e2e::sqlstate(&e), "0A000", "{e:?}");
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_owned();
    assert!(hint.contains("shardgate: shard="), "{hint}");
    let m = c
        .simple_query("/* shardgate: shard=s1 */ SELECT owner FROM items WHERE id BETWEEN SYMMETRIC 152 AND 150")
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&m).len(), 3);
}
