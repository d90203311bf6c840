//! A shard restarted under the proxy: connections that died while idle in the pool are never
//! handed to a client, whether the server stopped cleanly (its backends said FATAL before
//! closing) or was killed (they vanished without a word).
//!
//! This binary runs a cluster of its own, since it stops and starts it.

use cluster::{AuthMethod, Cluster, ClusterOptions};
use e2e::{APP_PASSWORD, SERVER_PASSWORD};

fn own_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        password: Some(SERVER_PASSWORD.into()),
        auth: AuthMethod::ScramSha256,
        ..ClusterOptions::default()
    })
    .expect("start a cluster")
}

fn proxy_for(c: &Cluster, name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sg-restart-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = format!(
        "pool: {{ mode: transaction, size: 4 }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/postgres\" }}
",
        su = c.superuser(),
        port = c.port(),
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
    format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    )
}

/// Opens `n` server connections in the pool (n clients in a transaction at once) and
/// leaves them idle there.
async fn fill_pool(conninfo: &str, n: usize) {
    let mut clients = Vec::new();
    for _ in 0..n {
        let c = e2e::connect(conninfo).await;
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(c);
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
}

async fn every_client_is_served(conninfo: &str) {
    for i in 0..6 {
        let c = e2e::connect(conninfo).await;
        let r = c.simple_query("SELECT 1").await;
        assert!(r.is_ok(), "client {i} after the restart: {r:?}");
    }
}

#[tokio::test]
async fn a_restarted_shard_never_hands_out_a_dead_connection() {
    let mut c = own_cluster();
    let conninfo = proxy_for(&c, "fast");
    fill_pool(&conninfo, 3).await;
    c.stop().unwrap();
    c.start_again().unwrap();
    every_client_is_served(&conninfo).await;
}

#[tokio::test]
async fn a_killed_and_restarted_shard_never_hands_out_a_dead_connection() {
    let mut c = own_cluster();
    let conninfo = proxy_for(&c, "kill");
    fill_pool(&conninfo, 3).await;
    c.kill().unwrap();
    c.start_again().unwrap();
    every_client_is_served(&conninfo).await;
}

/// A shard that is down: its clients get 08006 naming the shard; the other shard's carry on,
/// whichever of the two is down, the home shard (s0) included.
#[tokio::test]
async fn a_shard_that_is_down_is_named_and_the_others_carry_on() {
    shard_down(1).await;
    shard_down(0).await;
}

async fn shard_down(down: usize) {
    let db = e2e::create_database("restart_down");
    e2e::psql_direct(&db, "CREATE TABLE items (id bigint PRIMARY KEY)");
    e2e::psql_direct(&db, "INSERT INTO items VALUES (5)");
    let info = e2e::cluster();
    let dir = std::env::temp_dir().join(format!("sg-restart-down{down}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("map.yaml"),
        "name: items\ntype: range\nkey_type: bigint\nranges:\n  - { from: null, to: 100, shard: s0 }\n  - { from: 100, to: null, shard: s1 }\ntables: [{ table: items, column: id }]\n",
    )
    .unwrap();
    // Nothing listens on port 1.
    let yaml = format!(
        "pool: {{ mode: transaction, size: 2, connect_timeout_ms: 2000 }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shard_maps: [map.yaml]
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{p0}/{db}\" }}
      s1: {{ primary: \"postgres://127.0.0.1:{p1}/{db}\" }}
",
        su = info.superuser,
        p0 = if down == 0 { 1 } else { info.port },
        p1 = if down == 1 { 1 } else { info.port },
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
    let c = e2e::connect(&format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    ))
    .await;
    let (down_key, up_key) = if down == 1 { (150, 5) } else { (5, 150) };
    let e = c
        .simple_query(&format!("SELECT id FROM items WHERE id = {down_key}"))
        .await
        .unwrap_err();
    assert_eq!(e2e::sqlstate(&e), "08006");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains(&format!("shard \"s{down}\"")), "{message}");
    let m = c
        .simple_query(&format!("SELECT count(*) FROM items WHERE id = {up_key}"))
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&m).len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}
