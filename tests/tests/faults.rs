//! Faults: clients that vanish at each phase of the protocol (mid-startup, mid-SCRAM,
//! mid-COPY, mid-fan-out, mid-pipeline, mid-transaction), a server backend killed in the
//! middle of a query, and a pool exhausted. Each time a second, unrelated client carries on
//! untouched, nothing half-done is committed, and the server connections go back: none is
//! left busy on the shards and the whole pool can be taken again.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Keys below 100 live on s0, the others on s1.
const MAP: &str = "name: t\ntype: range\nkey_type: bigint\nranges:\n  - { from: null, to: 100, shard: s0 }\n  - { from: 100, to: null, shard: s1 }\ntables: [{ table: t, column: id }]\n";

struct Setup {
    shards: [String; 2],
    port: u16,
}

impl Setup {
    fn new(name: &str, pool: &str) -> Setup {
        let shards = [
            e2e::create_database(&format!("{name}_s0")),
            e2e::create_database(&format!("{name}_s1")),
        ];
        for db in &shards {
            e2e::psql_direct(db, "CREATE TABLE t (id bigint PRIMARY KEY, v text)");
        }
        let (addr, _) = e2e::sharded_proxy(name, &shards, MAP, "", pool);
        // One row on each shard.
        e2e::psql_direct(&shards[0], "INSERT INTO t VALUES (2, 'x')");
        e2e::psql_direct(&shards[1], "INSERT INTO t VALUES (150, 'y')");
        Setup {
            shards,
            port: addr.port(),
        }
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={} dbname=app",
            self.port,
            e2e::APP_PASSWORD
        )
    }

    async fn client(&self) -> tokio_postgres::Client {
        e2e::connect(&self.conninfo()).await
    }

    /// Rows of t on all shards, read directly.
    fn rows(&self) -> u64 {
        self.shards
            .iter()
            .map(|d| {
                e2e::psql_direct(d, "SELECT count(*) FROM t")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    }

    /// Waits until no server backend is busy on a shard, then takes the whole pool (`size`
    /// connections per shard) at once.
    async fn nothing_leaked(&self, size: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let busy: Vec<String> = self
                .shards
                .iter()
                .map(|d| {
                    e2e::psql_direct(
                        d,
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()",
                    )
                    .trim()
                    .to_owned()
                })
                .collect();
            if busy.iter().all(|b| b == "0") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server connections still busy: {busy:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut holders = Vec::new();
        for i in 0..size {
            let c = self.client().await;
            c.batch_execute(&format!(
                "BEGIN; SELECT count(*) FROM t WHERE id = {}",
                [2, 150][i % 2]
            ))
            .await
            .unwrap_or_else(|e| panic!("pool connection {i}: {e}"));
            let c2 = self.client().await;
            c2.batch_execute(&format!(
                "BEGIN; SELECT count(*) FROM t WHERE id = {}",
                [150, 2][i % 2]
            ))
            .await
            .unwrap_or_else(|e| panic!("pool connection {i} (other shard): {e}"));
            holders.push(c);
            holders.push(c2);
        }
        for c in &holders {
            c.batch_execute("COMMIT").await.unwrap();
        }
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    frame(b'Q', &b)
}

/// Logs in as the trust user; the socket after ReadyForQuery.
async fn login(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&wire::startup::encode_startup(&[
        ("user", "trustuser"),
        ("database", "app"),
    ]))
    .await
    .unwrap();
    read_until(&mut s, &[b'Z', 0, 0, 0, 5, b'I']).await;
    s
}

/// Reads until the bytes read so far end with `end` (or contain it, for a message head).
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.windows(end.len()).any(|w| w == end) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

#[tokio::test]
async fn clients_vanishing_at_every_phase_leave_nothing_behind() {
    let s = Setup::new(
        "fault_vanish",
        "{ mode: transaction, size: 3, checkout_timeout_ms: 5000 }",
    );
    let other = s.client().await;
    let other_ok = |what: &'static str| {
        let other = &other;
        async move {
            other
                .simple_query("SELECT count(*) FROM t")
                .await
                .unwrap_or_else(|e| panic!("the other client, after {what}: {e}"));
            other
                .query("SELECT count(*) FROM t WHERE id = $1", &[&3i64])
                .await
                .unwrap_or_else(|e| panic!("the other client, after {what}: {e}"));
        }
    };
    // Mid-startup: half a startup packet.
    {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        let startup = wire::startup::encode_startup(&[("user", "app"), ("database", "app")]);
        c.write_all(&startup[..startup.len() / 2]).await.unwrap();
    }
    other_ok("a half startup packet").await;
    // Mid-SCRAM: the server's first challenge read, then gone.
    {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        c.write_all(&wire::startup::encode_startup(&[
            ("user", "app"),
            ("database", "app"),
        ]))
        .await
        .unwrap();
        let got = read_until(&mut c, b"SCRAM-SHA-256").await;
        assert_eq!(got[0], b'R');
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        let first = b"n,,n=,r=abcdefghijklmnop";
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first);
        c.write_all(&frame(b'p', &body)).await.unwrap();
        read_until(&mut c, b"r=abcdefghijklmnop").await;
    }
    other_ok("a client gone mid-SCRAM").await;
    // Mid-COPY over both shards: some rows sent, then gone.
    {
        let mut c = login(s.port).await;
        c.write_all(&query("COPY t FROM STDIN")).await.unwrap();
        read_until(&mut c, b"G").await;
        for i in 1..=20 {
            c.write_all(&frame(b'd', format!("{i}\tx\n").as_bytes()))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other_ok("a client gone mid-COPY").await;
    // Mid-fan-out: a slow read over both shards, then gone at once.
    {
        let mut c = login(s.port).await;
        c.write_all(&query("SELECT pg_sleep(2), id FROM t"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    other_ok("a client gone mid-fan-out").await;
    // Mid-pipeline: an INSERT bound and executed, no Sync, then gone.
    {
        let mut c = login(s.port).await;
        let mut parse = b"\0INSERT INTO t VALUES (100, 'p')\0".to_vec();
        parse.extend_from_slice(&0u16.to_be_bytes());
        let mut bind = b"\0\0".to_vec();
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut exec = b"\0".to_vec();
        exec.extend_from_slice(&0i32.to_be_bytes());
        let mut out = frame(b'P', &parse);
        out.extend(frame(b'B', &bind));
        out.extend(frame(b'E', &exec));
        out.extend(frame(b'H', &[]));
        c.write_all(&out).await.unwrap();
        read_until(&mut c, b"INSERT 0 1").await;
    }
    other_ok("a client gone mid-pipeline").await;
    // Mid-transaction over both shards.
    {
        let mut c = login(s.port).await;
        for sql in [
            "BEGIN",
            "INSERT INTO t VALUES (20, 'a')",
            "INSERT INTO t VALUES (201, 'b')",
        ] {
            c.write_all(&query(sql)).await.unwrap();
            read_until(&mut c, &[b'Z', 0, 0, 0, 5, b'T']).await;
        }
    }
    other_ok("a client gone mid-transaction").await;
    s.nothing_leaked(3).await;
    assert_eq!(s.rows(), 2, "nothing half-done was committed");
}

impl Setup {
    /// Terminates a backend (other than `except`) running a statement that contains
    /// `marker`, waiting until one runs; its pid.
    async fn terminate_running(&self, marker: &str, except: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for d in &self.shards {
                let pid = e2e::psql_direct(
                    d,
                    &format!(
                        "SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%{marker}%' AND state = 'active' AND pid <> pg_backend_pid() AND pid <> {except} OFFSET 0) running WHERE pg_terminate_backend(pid)"
                    ),
                )
                .trim()
                .to_owned();
                if !pid.is_empty() {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no statement with {marker} started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Setup {
    /// A client's statement failed because its backend was terminated: with the server's
    /// word or the proxy's, the other client carries on, and nothing leaked.
    async fn failed_alone(&self, e: tokio_postgres::Error, other: &tokio_postgres::Client) {
        assert!(
            ["57P01", "08006"].contains(&e2e::sqlstate(&e).as_str()),
            "{e:?}"
        );
        other
            .simple_query("SELECT count(*) FROM t")
            .await
            .expect("the other client is untouched");
        self.nothing_leaked(3).await;
    }
}

/// Inside a transaction a killed backend is the client's error: its transaction is gone.
#[tokio::test]
async fn a_backend_killed_mid_query_fails_only_its_client() {
    let s = Setup::new(
        "fault_kill",
        "{ mode: transaction, size: 3, checkout_timeout_ms: 5000 }",
    );
    let victim = s.client().await;
    let other = s.client().await;
    let slow = tokio::spawn(async move {
        victim
            .simple_query("BEGIN; SELECT pg_sleep(10), id FROM t WHERE id = 2")
            .await
    });
    s.terminate_running("pg_sleep(10)", "0").await;
    let e = slow
        .await
        .unwrap()
        .expect_err("the killed backend's query fails");
    s.failed_alone(e, &other).await;
}

/// Outside a transaction, a statement whose backend ended before answering (FATAL 57P01,
/// the server's own word that it stopped before the statement completed) runs again on a
/// fresh connection: the client gets its answer. Once: the retry's own termination reaches
/// the client. A write retried so is committed exactly once.
#[tokio::test]
async fn a_statement_whose_connection_died_before_answering_is_retried_once() {
    let s = Setup::new(
        "fault_retry",
        "{ mode: transaction, size: 3, checkout_timeout_ms: 5000 }",
    );
    let client = std::sync::Arc::new(s.client().await);
    let other = s.client().await;

    // A read, its backend terminated once: answered from another backend.
    let c = client.clone();
    let read = tokio::spawn(async move {
        c.simple_query("SELECT pg_sleep(0.5), pg_backend_pid()::text, v FROM t WHERE id = 2")
            .await
    });
    let killed = s.terminate_running("pg_sleep(0.5)", "0").await;
    let rows = e2e::simple_rows(&read.await.unwrap().expect("retried on a fresh connection"));
    assert_eq!(rows.len(), 1);
    assert_ne!(
        rows[0][1].as_deref(),
        Some(killed.as_str()),
        "ran on another backend"
    );
    assert_eq!(rows[0][2].as_deref(), Some("x"));

    // Extended protocol, the same.
    let c = client.clone();
    let read = tokio::spawn(async move {
        c.query_one(
            "SELECT pg_sleep(0.6)::text, v FROM t WHERE id = $1",
            &[&2i64],
        )
        .await
    });
    s.terminate_running("pg_sleep(0.6)", "0").await;
    let row = read.await.unwrap().expect("retried on a fresh connection");
    assert_eq!(row.get::<_, String>(1), "x");

    // A write, terminated once: committed once.
    let c = client.clone();
    let write = tokio::spawn(async move {
        c.simple_query("UPDATE t SET v = v || pg_sleep(0.7)::text || 'w' WHERE id = 2")
            .await
    });
    s.terminate_running("pg_sleep(0.7)", "0").await;
    write.await.unwrap().expect("the update was retried");
    assert_eq!(
        e2e::psql_direct(&s.shards[0], "SELECT v FROM t WHERE id = 2").trim(),
        "xw"
    );

    // Terminated twice: the second reaches the client.
    let c = client.clone();
    let twice = tokio::spawn(async move {
        c.simple_query("SELECT pg_sleep(0.8), id FROM t WHERE id = 2")
            .await
    });
    let first = s.terminate_running("pg_sleep(0.8)", "0").await;
    let second = s.terminate_running("pg_sleep(0.8)", &first).await;
    assert_ne!(first, second);
    let e = twice.await.unwrap().expect_err("retried once only");
    s.failed_alone(e, &other).await;
}

#[tokio::test]
async fn an_exhausted_pool_makes_clients_wait_then_fail_clearly_and_recovers() {
    let s = Setup::new(
        "fault_pool",
        "{ mode: transaction, size: 2, checkout_timeout_ms: 800 }",
    );
    // Two transactions hold both connections of shard s0 (key 2 lives there).
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = s.client().await;
        c.batch_execute("BEGIN; SELECT count(*) FROM t WHERE id = 2")
            .await
            .unwrap();
        holders.push(c);
    }
    let third = s.client().await;
    let started = Instant::now();
    let e = third
        .simple_query("SELECT count(*) FROM t WHERE id = 2")
        .await
        .expect_err("no connection of s0 is free");
    assert_eq!(e2e::sqlstate(&e), "53300", "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("pool size 2"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(700));
    // The other shard is not held up, and the client can go on once a connection is back.
    third
        .simple_query("SELECT count(*) FROM t WHERE id = 150")
        .await
        .expect("the other shard's pool is free");
    let waiting = tokio::spawn({
        let info = s.conninfo();
        async move {
            e2e::connect(&info)
                .await
                .simple_query("SELECT count(*) FROM t WHERE id = 2")
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holders[0].batch_execute("COMMIT").await.unwrap();
    waiting
        .await
        .unwrap()
        .expect("a waiting client gets the connection given back");
    holders[1].batch_execute("COMMIT").await.unwrap();
    s.nothing_leaked(2).await;
}
