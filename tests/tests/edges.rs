//! Edges of the protocol where sharding meets pooling: held BEGINs and unnamed statements,
//! errors inside extended-protocol batches, statements for several shards bound and flushed,
//! session pooling over several shards, clients that leave mid-batch, and route caching
//! across databases.
//!
//! Setup: two shards, `items.id` (bigint) range-mapped: id < 100 on s0 (home), id >= 100 on
//! s1. A `trustuser` lets tests speak the raw protocol.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{cluster, create_database, psql_direct, sqlstate, APP_PASSWORD, SERVER_PASSWORD};

use e2e::raw::*;

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
    let dir = std::env::temp_dir().join(format!("sg-edges-{name}-{}", std::process::id()));
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

/// BEGIN is held; an unnamed extended statement whose key is a constant waits for its Bind,
/// which sends the BEGIN first, so the statement is not dropped by it.
#[tokio::test]
async fn an_unnamed_statement_after_a_held_begin_runs_in_the_transaction() {
    let st = setup("ed_heldunnamed", "transaction");
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
    assert_eq!(
        rows(&r),
        vec!["b150"],
        "statement in transaction: {r:?}; COMMIT: {r2:?}"
    );
    assert!(errors(&r).is_empty(), "{r:?}");
}

/// In one extended batch (no Sync between), a statement fails on the home shard and a
/// statement for several shards follows: as PostgreSQL does, everything after the error up to
/// Sync is skipped, on every shard.
#[tokio::test]
async fn a_statement_for_several_shards_after_an_error_in_its_batch_is_skipped() {
    let st = setup("ed_errfan", "transaction");
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
/// connection, then bound with a key of s1: it is parsed again on s1's connection, and the
/// client's statement runs, not the one s1's connection had before.
#[tokio::test]
async fn session_pooling_parses_the_unnamed_statement_on_each_shard_it_runs_on() {
    let st = setup("ed_sessunnamed", "session");
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
    let r = c
        .round(&[bind("", "", &["151"]), execute(""), sync()])
        .await;
    assert_eq!(rows(&r), vec!["B:b151"], "{r:?}");
}

/// Session pooling: a named statement for several shards (run with an unnamed Parse on the
/// session's own connection) does not take the place of the client's unnamed statement.
#[tokio::test]
async fn session_pooling_keeps_the_unnamed_statement_across_a_fan_out() {
    let st = setup("ed_sessclobber", "session");
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

/// `BEGIN` with invalid options is not held: it fails at once, as on PostgreSQL, and nothing
/// after it is written outside the client's control.
#[tokio::test]
async fn an_invalid_begin_is_not_held_but_fails_at_once() {
    let st = setup("ed_badbegin", "transaction");
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
/// then its Execute: the Bind is answered at the Flush and the Execute returns every shard's rows.
#[tokio::test]
async fn a_flush_between_bind_and_execute_of_a_fan_out_gets_its_bind_complete() {
    let st = setup("ed_flush", "transaction");
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

/// Parse, Describe, Bind (key on s1), Execute and Sync in one batch: the Describe (answered
/// on any shard) does not pin the batch; the statement runs on s1.
#[tokio::test]
async fn a_describe_does_not_pin_its_batch_to_the_home_shard() {
    let st = setup("ed_describe", "transaction");
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

/// Session pooling: a temporary table created on every shard stays the client's on each of
/// them, and another client never sees it.
#[tokio::test]
async fn session_pooling_keeps_what_a_fan_out_left_in_its_server_sessions() {
    let st = setup("ed_sesstemp", "session");
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

/// Two databases of one proxy map a table of the same name by different key columns: a
/// statement of the same shape routes by each database's own key.
#[tokio::test]
async fn databases_with_different_keys_do_not_share_routes() {
    let info = cluster();
    let name = "ed_twodb";
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
    let dir = std::env::temp_dir().join(format!("sg-edges-{name}-{}", std::process::id()));
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

/// A client runs an INSERT by Parse/Bind/Execute and Flush, and leaves without a Sync: its
/// implicit transaction is rolled back, never committed by the next user of the connection.
#[tokio::test]
async fn a_client_gone_inside_an_unsynced_batch_leaves_nothing_committed() {
    let st = setup("ed_unsyncedquit", "transaction");
    let mut c = Raw::login(st.addr).await;
    c.send(&[
        parse(
            "",
            "INSERT INTO items (id, owner) VALUES (8, 'never committed')",
        ),
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
    assert_eq!(
        left, "0",
        "the departed client's uncommitted INSERT was committed"
    );
}
