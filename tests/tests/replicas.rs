//! Replicas and failover against real streaming replicas: reads spread over replicas,
//! lagging replicas left out and re-admitted, read-your-writes, a promotion made outside
//! the proxy followed, automatic failover with the old primary fenced until re-admitted,
//! and a switchover under pgbench load that loses nothing.
//!
//! Each test runs its own primary and replicas (it stops and promotes them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster::{AuthMethod, Cluster, ClusterOptions};
use e2e::{APP_PASSWORD, SERVER_PASSWORD};

struct Shard {
    primary: Cluster,
    replicas: Vec<Cluster>,
}

fn shard_with(replicas: usize) -> Shard {
    let primary = Cluster::start(ClusterOptions {
        password: Some(SERVER_PASSWORD.into()),
        auth: AuthMethod::ScramSha256,
        ..ClusterOptions::default()
    })
    .expect("start a primary");
    primary.create_database("app").unwrap();
    let replicas = (0..replicas)
        .map(|_| {
            primary
                .start_replica(primary.replica_options())
                .expect("start a replica")
        })
        .collect();
    Shard { primary, replicas }
}

/// A proxy for database `app` on one shard (`s0`) of `shard`'s servers, with `extra`
/// (more keys of the database). Returns (client conninfo, admin conninfo).
fn proxy_for(shard: &Shard, name: &str, extra: &str) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("sg-replicas-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let replicas: Vec<String> = shard
        .replicas
        .iter()
        .map(|r| format!("\"postgres://127.0.0.1:{}/app\"", r.port()))
        .collect();
    let yaml = format!(
        "pool: {{ mode: transaction, size: 8 }}
admin_users: [ops]
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
  - {{ name: ops, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/app\", replicas: [{replicas}] }}
{split}{extra}",
        split = if extra.contains("read_write_split") {
            ""
        } else {
            "    read_write_split: { enabled: true }\n"
        },
        su = shard.primary.superuser(),
        port = shard.primary.port(),
        replicas = replicas.join(", "),
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
    let info = |db: &str, user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={APP_PASSWORD} dbname={db}",
            addr.port()
        )
    };
    (info("app", "app"), info("shardgate", "ops"))
}

async fn port_of_answer(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let m = c.simple_query(sql).await.unwrap();
    e2e::simple_rows(&m)[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads until every port in `want` has answered one (the proxy's checks have seen them).
async fn until_answered_by(c: &tokio_postgres::Client, want: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = std::collections::HashSet::new();
    while !want.iter().all(|p| seen.contains(p)) {
        assert!(
            Instant::now() < deadline,
            "reads never reached {want:?}; saw {seen:?}"
        );
        seen.insert(port_of_answer(c, "SELECT inet_server_port()").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn direct(c: &Cluster) -> String {
    format!(
        "host=127.0.0.1 port={} user={} password={SERVER_PASSWORD} dbname=app",
        c.port(),
        c.superuser()
    )
}

/// The admin console's SHOW SHARDS, as (host:port → (role, state)).
async fn shards_view(admin: &str) -> HashMap<String, (String, String)> {
    let c = e2e::connect(admin).await;
    let m = c.simple_query("SHOW SHARDS").await.unwrap();
    let mut out = HashMap::new();
    for msg in &m {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
            out.insert(
                format!("{}:{}", r.get("host").unwrap(), r.get("port").unwrap()),
                (
                    r.get("role").unwrap().to_owned(),
                    r.get("state").unwrap().to_owned(),
                ),
            );
        }
    }
    out
}

#[tokio::test]
async fn round_robin_spreads_reads_evenly_over_two_replicas() {
    let s = shard_with(2);
    let (conninfo, _) = proxy_for(
        &s,
        "rr",
        "    read_write_split: { enabled: true, strategy: round_robin }\n",
    );
    let ports: Vec<u16> = s.replicas.iter().map(Cluster::port).collect();
    let c = e2e::connect(&conninfo).await;
    until_answered_by(&c, &ports).await;
    // Counted on the replicas: each answer says which server gave it.
    let before: Vec<i64> = futures_count(&s).await;
    let mut by_port: HashMap<u16, u32> = HashMap::new();
    for _ in 0..10_000 {
        *by_port
            .entry(port_of_answer(&c, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    for p in &ports {
        let n = by_port.get(p).copied().unwrap_or(0);
        assert!(
            (4_000..=6_000).contains(&n),
            "replica {p} served {n} of 10,000 reads: {by_port:?}"
        );
    }
    // The replicas' own statistics agree: each committed thousands of transactions more.
    let after = futures_count(&s).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(a - b >= 4_000, "replica {i}: {b} -> {a} transactions");
    }
}

/// Transactions committed on each replica, by its own statistics.
async fn futures_count(s: &Shard) -> Vec<i64> {
    let mut out = Vec::new();
    for r in &s.replicas {
        let c = e2e::connect(&direct(r)).await;
        // Backends flush their statistics when they end: end the proxy's.
        c.simple_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = c
            .simple_query("SELECT pg_stat_force_next_flush(); SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'")
            .await
            .unwrap();
        out.push(
            e2e::simple_rows(&m).last().unwrap()[0]
                .as_deref()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn a_lagging_replica_gets_no_reads_until_it_catches_up() {
    let s = shard_with(2);
    let (conninfo, _) = proxy_for(&s, "lag", "");
    let (a, b) = (s.replicas[0].port(), s.replicas[1].port());
    let c = e2e::connect(&conninfo).await;
    until_answered_by(&c, &[a, b]).await;
    let ra = e2e::connect(&direct(&s.replicas[0])).await;
    ra.simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let p = e2e::connect(&direct(&s.primary)).await;
    p.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 33000) g",
    )
    .await
    .unwrap();
    // Two rounds of checks see the lag.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..300 {
        let port = port_of_answer(&c, "SELECT inet_server_port()").await;
        assert_ne!(port, a, "the paused replica, 32 MB behind, served a read");
    }
    ra.simple_query("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    until_answered_by(&c, &[a]).await;
}

#[tokio::test]
async fn reads_see_the_clients_own_writes() {
    let s = shard_with(2);
    let (conninfo, _) = proxy_for(&s, "ryw", "");
    let (a, b) = (s.replicas[0].port(), s.replicas[1].port());
    let c = e2e::connect(&conninfo).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    until_answered_by(&c, &[a, b]).await;
    let ra = e2e::connect(&direct(&s.replicas[0])).await;
    ra.simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    for i in 0..1000 {
        c.simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
        let m = c
            .simple_query(&format!("SELECT count(*) FROM t WHERE id = {i}"))
            .await
            .unwrap();
        assert_eq!(
            e2e::simple_rows(&m)[0][0].as_deref(),
            Some("1"),
            "round {i}: the read did not see the row just written"
        );
    }
    // Once the other replica has replayed a write, reads may go there again (never to
    // the paused one, which has not).
    c.simple_query("INSERT INTO t VALUES (5000)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut on_b = 0;
    for _ in 0..20 {
        let m = c
            .simple_query("SELECT inet_server_port(), count(*) FROM t WHERE id = 5000")
            .await
            .unwrap();
        let row = &e2e::simple_rows(&m)[0];
        assert_eq!(row[1].as_deref(), Some("1"));
        let port: u16 = row[0].as_deref().unwrap().parse().unwrap();
        assert_ne!(port, a, "the paused replica has not replayed the write");
        on_b += u32::from(port == b);
    }
    assert!(on_b > 0, "reads after the replica caught up went to it");
    ra.simple_query("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_promotion_outside_the_proxy_is_followed() {
    let mut s = shard_with(1);
    let (conninfo, admin) = proxy_for(&s, "external", "    failover: { mode: manual }\n");
    let c = e2e::connect(&conninfo).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    until_answered_by(&c, &[s.replicas[0].port()]).await;
    s.replicas[0].promote().unwrap();
    s.primary.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        i += 1;
        match e2e::connect(&conninfo)
            .await
            .simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "writes never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = e2e::connect(&direct(&s.replicas[0]))
        .await
        .simple_query(&format!("SELECT count(*) FROM t WHERE id = {i}"))
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&n)[0][0].as_deref(), Some("1"));
    let view = shards_view(&admin).await;
    let new = format!("127.0.0.1:{}", s.replicas[0].port());
    assert_eq!(view[&new].0, "primary", "{view:?}");
}

#[tokio::test]
async fn a_dead_primary_is_replaced_and_stays_fenced_until_readmitted() {
    let mut s = shard_with(2);
    let (conninfo, admin) = proxy_for(&s, "auto", "");
    let c = e2e::connect(&conninfo).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let ports: Vec<u16> = s.replicas.iter().map(Cluster::port).collect();
    until_answered_by(&c, &ports).await;
    for i in 0..100 {
        c.simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
    }
    s.primary.kill().unwrap();
    // A write started while the primary is being replaced waits and then succeeds.
    let started = Instant::now();
    let w = e2e::connect(&conninfo).await;
    w.simple_query("INSERT INTO t VALUES (1000)")
        .await
        .expect("a write during the failover is buffered, then runs on the new primary");
    assert!(started.elapsed() < Duration::from_secs(10));
    let view = shards_view(&admin).await;
    let old = format!("127.0.0.1:{}", s.primary.port());
    assert_eq!(view[&old].1, "fenced", "{view:?}");
    let new = view
        .iter()
        .find(|(_, (role, _))| role == "primary")
        .map(|(k, _)| k.clone())
        .unwrap();
    let new_port: u16 = new.rsplit(':').next().unwrap().parse().unwrap();
    // Nothing acknowledged was lost... (asynchronous replicas may lose the last commits
    // before the kill; the ones made after it are all there).
    let direct_new = s
        .replicas
        .iter()
        .find(|r| r.port() == new_port)
        .map(direct)
        .unwrap();
    let m = e2e::connect(&direct_new)
        .await
        .simple_query("SELECT count(*) FROM t WHERE id = 1000")
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&m)[0][0].as_deref(), Some("1"));
    // The old primary comes back as a primary of its own: it gets nothing.
    s.primary.start_again().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 2000..2100 {
        c.simple_query(&format!("INSERT INTO t VALUES ({i})"))
            .await
            .unwrap();
        c.simple_query("SELECT count(*) FROM t").await.unwrap();
    }
    let old_conn = e2e::connect(&direct(&s.primary)).await;
    let m = old_conn
        .simple_query("SELECT count(*) FROM t WHERE id >= 1000")
        .await
        .unwrap();
    assert_eq!(
        e2e::simple_rows(&m)[0][0].as_deref(),
        Some("0"),
        "the fenced old primary got writes"
    );
    let m = old_conn
        .simple_query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND application_name <> 'shardgate health check' AND pid <> pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&m)[0][0].as_deref(), Some("0"));
    assert_eq!(shards_view(&admin).await[&old].1, "fenced");
    // A proxy started afresh from the same config, which still names the old primary
    // first, writes nothing there either: writes wait for its first checks, which find the
    // newer timeline.
    let (fresh, _) = proxy_for(&s, "auto-restarted", "");
    e2e::connect(&fresh)
        .await
        .simple_query("INSERT INTO t VALUES (2500)")
        .await
        .expect("a write through a fresh proxy");
    let m = old_conn
        .simple_query("SELECT count(*) FROM t WHERE id = 2500")
        .await
        .unwrap();
    assert_eq!(
        e2e::simple_rows(&m)[0][0].as_deref(),
        Some("0"),
        "a fresh proxy wrote to the stale old primary"
    );
    // Re-admitted as it is (still a primary of an older timeline), it is fenced again:
    // never two primaries.
    e2e::connect(&admin)
        .await
        .simple_query(&format!("UNBAN app.s0 {old}"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(shards_view(&admin).await[&old].1, "fenced");
    assert_eq!(shards_view(&admin).await[&new].0, "primary");
    // The other replica was pointed at the new primary: it replays what is written now.
    let other = s.replicas.iter().find(|r| r.port() != new_port).unwrap();
    c.simple_query("INSERT INTO t VALUES (3000)").await.unwrap();
    let o = e2e::connect(&direct(other)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = o
            .simple_query("SELECT count(*) FROM t WHERE id = 3000")
            .await
            .unwrap();
        if e2e::simple_rows(&m)[0][0].as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica does not follow the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rebuilt as a replica of the new primary (same address) and re-admitted, it serves
    // reads again.
    let old_port = s.primary.port();
    s.primary.stop().unwrap();
    let new_primary = s.replicas.iter().find(|r| r.port() == new_port).unwrap();
    let _rebuilt = new_primary
        .start_replica(ClusterOptions {
            port: Some(old_port),
            ..new_primary.replica_options()
        })
        .expect("rebuild the old primary as a replica");
    e2e::connect(&admin)
        .await
        .simple_query(&format!("UNBAN app.s0 {old}"))
        .await
        .unwrap();
    until_answered_by(&e2e::connect(&conninfo).await, &[old_port]).await;
    assert_eq!(
        shards_view(&admin).await[&old],
        ("replica".to_owned(), "up".to_owned())
    );
}

/// Found the commits a primary with `synchronous_commit = off` had not flushed yet
/// (`SWITCHOVER` now switches WAL segments before it reads its target position).
#[tokio::test]
async fn switchover_under_pgbench_loses_nothing() {
    let s = shard_with(1);
    let (conninfo, admin) = proxy_for(&s, "switchover", "");
    let url = format!("{conninfo} sslmode=disable");
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &url])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // Let the replica replay the load, so that it is fit to take over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let run = std::process::Command::new("pgbench")
        .args([
            "-n", "-c", "8", "-j", "2", "-T", "8", "-M", "prepared", &url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = e2e::connect(&admin)
        .await
        .simple_query("SWITCHOVER app.s0")
        .await
        .expect("switchover");
    let done = e2e::simple_rows(&m)[0][0].clone().unwrap();
    let out = run.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench failed ({done}):\n{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    let processed: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("pgbench's count");
    let new = e2e::connect(&direct(&s.replicas[0])).await;
    let m = new
        .simple_query("SELECT count(*) FROM pgbench_history")
        .await
        .unwrap();
    let history: i64 = e2e::simple_rows(&m)[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let on_old = e2e::simple_rows(
        &e2e::connect(&direct(&s.primary))
            .await
            .simple_query("SELECT count(*) || ' rows, last ' || max(mtime) FROM pgbench_history")
            .await
            .unwrap(),
    )[0][0]
        .clone()
        .unwrap();
    let cut = on_old.split("last ").nth(1).unwrap_or("").to_owned();
    let on_new_before = e2e::simple_rows(
        &new.simple_query(&format!("SELECT count(*) || ' rows up to it, ' || (SELECT count(*) FROM pgbench_history WHERE mtime > '{cut}') || ' after' FROM pgbench_history WHERE mtime <= '{cut}'"))
            .await
            .unwrap(),
    )[0][0]
        .clone()
        .unwrap();
    let on_old = format!("{on_old}; the new one {on_new_before}");
    assert_eq!(
        history, processed,
        "every committed transaction is on the new primary ({done}; the old one has {on_old})"
    );
    let view = shards_view(&admin).await;
    assert_eq!(
        view[&format!("127.0.0.1:{}", s.replicas[0].port())].0,
        "primary"
    );
    assert_eq!(view[&format!("127.0.0.1:{}", s.primary.port())].1, "fenced");
}

#[tokio::test]
async fn reads_over_several_shards_read_their_replicas() {
    let (s0, s1) = (shard_with(1), shard_with(1));
    let dir = std::env::temp_dir().join(format!("sg-replicas-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("map.yaml"),
        "name: t\ntype: hash\nkey_type: bigint\npartitions: 2\nassign: { s0: [0], s1: [1] }\ntables: [{ table: t, column: id }]\n",
    )
    .unwrap();
    let server = |c: &Cluster| format!("\"postgres://127.0.0.1:{}/app\"", c.port());
    let yaml = format!(
        "pool: {{ mode: transaction, size: 4 }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shard_maps: [map.yaml]
    read_write_split: {{ enabled: true }}
    shards:
      s0: {{ primary: {p0}, replicas: [{r0}] }}
      s1: {{ primary: {p1}, replicas: [{r1}] }}
",
        su = s0.primary.superuser(),
        p0 = server(&s0.primary),
        r0 = server(&s0.replicas[0]),
        p1 = server(&s1.primary),
        r1 = server(&s1.replicas[0]),
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
    let c = e2e::connect(&format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    ))
    .await;
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    for i in 1..=100 {
        c.simple_query(&format!(
            "INSERT INTO t VALUES ({i}) ON CONFLICT DO NOTHING"
        ))
        .await
        .unwrap();
    }
    let replicas = [s0.replicas[0].port(), s1.replicas[0].port()];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = c
            .simple_query(
                "SELECT inet_server_port() AS port, count(*) FROM t GROUP BY 1 ORDER BY 1",
            )
            .await
            .unwrap();
        let rows = e2e::simple_rows(&m);
        let total: i64 = rows
            .iter()
            .map(|r| r[1].as_deref().unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(total, 100, "{rows:?}");
        let ports: Vec<u16> = rows
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        if ports.iter().all(|p| replicas.contains(p)) && ports.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "merged reads never reached both replicas: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A write pipelined right behind a read on a replica runs on the primary.
    let (r, w) = tokio::join!(
        c.simple_query("SELECT count(*) FROM t WHERE id = 1"),
        c.simple_query("INSERT INTO t VALUES (1000)")
    );
    r.unwrap();
    w.expect("a write pipelined after a replica read");
}
