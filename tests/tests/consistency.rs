//! All-or-nothing writes on several shards (multi-statement queries, extended-protocol
//! batches), a reload that changes the home shard while sessions hold connections, and keys
//! sent in a client encoding other than UTF-8.
//!
//! Setup: two shards, `items.id` (bigint) range-mapped: id < 100 on s0 (home), id >= 100 on
//! s1; `people.country` (text) list-mapped: 'é' on s1, everything else on s0.

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
    let dir = std::env::temp_dir().join(format!("sg-consistency-{name}-{}", std::process::id()));
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

/// A query of two UPDATEs whose IN lists cover both shards runs whole on each shard. A write
/// on several shards is promised all-or-nothing: the second UPDATE fails on s1 only
/// (division by zero for id 150), so s0's part must be rolled back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_writes_on_every_shard_is_all_or_nothing() {
    let s = setup("cs_multiw", "transaction").await;
    let c = e2e::connect(&s.conninfo()).await;
    let r = c
        .batch_execute(
            "UPDATE items SET owner = 'changed' WHERE id IN (5, 150); \
             UPDATE items SET owner = (1 / (id - 150))::text WHERE id IN (5, 150)",
        )
        .await;
    assert!(r.is_err(), "division by zero on s1 must fail the query");
    let s0 = psql_direct(&s.shards[0], "SELECT owner FROM items WHERE id = 5");
    let s1 = psql_direct(&s.shards[1], "SELECT owner FROM items WHERE id = 150");
    assert_eq!(
        (s0.trim(), s1.trim()),
        ("a5", "b150"),
        "a failed write on several shards left part of it committed"
    );
}

/// A transaction runs on s0 (home). The config is reloaded with the shards listed the other
/// way round (s1 first: s1 is home now). The next statement of the transaction needs s1:
/// it must be refused (the transaction is on s0) or run on s1, never run on s0's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_home_does_not_move_a_transaction_to_another_shard() {
    let s = setup("cs_reltx", "transaction").await;
    let c = e2e::connect(&s.conninfo()).await;
    c.batch_execute("BEGIN").await.unwrap();
    let a = c
        .query("SELECT owner FROM items WHERE id = 5", &[])
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    s.reload([1, 0]);
    match c
        .simple_query("INSERT INTO items (id, owner) VALUES (170, 'new')")
        .await
    {
        Err(e) => {
            // Refused: fine.
            eprintln!("refused: {e:?}");
            let _ = c.batch_execute("ROLLBACK").await;
        }
        Ok(_) => {
            c.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert_eq!(
        count(&s.shards[0], "SELECT count(*) FROM items WHERE id = 170"),
        0,
        "row 170 (key of s1) was written to s0"
    );
}

/// Session pooling: the client's connection to s0 (home) stays attached. After a reload that
/// lists s1 first, a statement keyed to s1 must read s1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_after_a_reload_that_changes_home_reads_the_right_shard() {
    let s = setup("cs_relsess", "session").await;
    let c = e2e::connect(&s.conninfo()).await;
    let a = c
        .query("SELECT owner FROM items WHERE id = 5", &[])
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    s.reload([1, 0]);
    let b = c
        .simple_query("SELECT owner FROM items WHERE id = 150")
        .await
        .unwrap();
    let got: Vec<String> = b
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["b150".to_string()], "read s0 for a key of s1");
    let n = c
        .simple_query("SELECT owner FROM items WHERE id = 6")
        .await
        .unwrap();
    let got: Vec<String> = n
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["a6".to_string()], "read s1 for a key of s0");
}

/// A client whose encoding is not UTF-8 (here LATIN1) sends a text key beyond ASCII: the
/// router cannot read it as PostgreSQL will, so the statement is refused, never sent to the
/// shard its misread bytes would pick; ASCII keys from the same client route as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_key_beyond_ascii_from_a_latin1_client_is_refused_not_misrouted() {
    let s = setup("cs_latin1", "transaction").await;
    let mut r = login_with(s.addr, &[("client_encoding", "LATIN1")]).await;
    let ms = r
        .round(&[query_bytes(
            b"INSERT INTO people (country, name) VALUES ('\xe9', 'latin1 client')",
        )])
        .await;
    let errs = errors(&ms);
    assert_eq!(errs.len(), 1, "{ms:?}");
    assert!(errs[0].contains("0A000"), "{errs:?}");
    let ms = r
        .round(&[query_bytes(
            b"INSERT INTO people (country, name) VALUES ('fr', 'latin1 client')",
        )])
        .await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let on = [
        count(&s.shards[0], "SELECT count(*) FROM people"),
        count(&s.shards[1], "SELECT count(*) FROM people"),
    ];
    assert_eq!(on, [1, 0], "only the ASCII key's row, on the default shard");
}

/// One extended-protocol batch (one Sync): an UPDATE on both shards, then a statement that
/// fails. PostgreSQL runs a batch in one implicit transaction, and the proxy promises to keep
/// it on one server or refuse it: either way the UPDATE must not stay committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_write_is_not_committed_when_a_later_statement_of_its_batch_fails() {
    let s = setup("cs_batchw", "transaction").await;
    let mut r = Raw::login(s.addr).await;
    let ms = r
        .round(&[
            parse(
                "",
                "UPDATE items SET owner = 'changed' WHERE id IN (5, 150)",
            ),
            bind("", "", &[]),
            execute(""),
            parse("", "SELECT 1 / 0"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(errors(&ms).len(), 1, "{ms:?}");
    let s0 = psql_direct(&s.shards[0], "SELECT owner FROM items WHERE id = 5");
    let s1 = psql_direct(&s.shards[1], "SELECT owner FROM items WHERE id = 150");
    assert_eq!(
        (s0.trim(), s1.trim()),
        ("a5", "b150"),
        "the UPDATE of a failed batch stayed committed: {ms:?}"
    );
}

/// The same with two statements on both shards in one batch: the second fails on s1 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fan_out_writes_of_one_batch_are_all_or_nothing() {
    let s = setup("cs_batch2", "transaction").await;
    let mut r = Raw::login(s.addr).await;
    let ms = r
        .round(&[
            parse(
                "",
                "UPDATE items SET owner = 'changed' WHERE id IN (5, 150)",
            ),
            bind("", "", &[]),
            execute(""),
            parse(
                "",
                "UPDATE items SET owner = (1 / (id - 150))::text WHERE id IN (5, 150)",
            ),
            bind("", "", &[]),
            execute(""),
            sync(),
        ])
        .await;
    assert_eq!(errors(&ms).len(), 1, "{ms:?}");
    let s0 = psql_direct(&s.shards[0], "SELECT owner FROM items WHERE id = 5");
    let s1 = psql_direct(&s.shards[1], "SELECT owner FROM items WHERE id = 150");
    assert_eq!(
        (s0.trim(), s1.trim()),
        ("a5", "b150"),
        "part of a failed batch stayed committed: {ms:?}"
    );
}
