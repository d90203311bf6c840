//! Transaction pooling: many clients share few server connections, and each still sees its
//! own session: its prepared statements and its settings. Connections come back clean.

use std::time::Duration;

use e2e::{psql_direct, sqlstate, ProxyOptions, TestDb};

/// The first value of the first row of a simple query.
fn show(rows: Vec<tokio_postgres::SimpleQueryMessage>) -> String {
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn fifty_clients_over_five_connections_keep_their_own_session() {
    let db = TestDb::new(
        "fifty",
        ProxyOptions {
            pool_size: 5,
            ..Default::default()
        },
    );
    let setup = db.connect().await;
    let mut ddl = String::new();
    for i in 0..50 {
        ddl.push_str(&format!(
            "CREATE SCHEMA s{i}; CREATE TABLE s{i}.t (v int); INSERT INTO s{i}.t VALUES ({i});"
        ));
    }
    setup.batch_execute(&ddl).await.unwrap();
    let tasks = (0..50).map(|i| {
        let conninfo = db.proxy_conninfo("app", e2e::APP_PASSWORD);
        tokio::spawn(async move {
            let c = e2e::connect(&conninfo).await;
            c.batch_execute(&format!("SET search_path TO s{i}, public; SET application_name = 'client{i}'"))
                .await
                .unwrap();
            // The same statement text for every client: shared on the servers, resolved in
            // each client's own search_path.
            let by_path = c.prepare("SELECT v FROM t").await.unwrap();
            let settings = c
                .prepare("SELECT current_setting('search_path'), current_setting('application_name'), $1::int")
                .await
                .unwrap();
            for round in 0..20 {
                let v: i32 = c.query_one(&by_path, &[]).await.unwrap().get(0);
                assert_eq!(v, i, "client {i} round {round}");
                let row = c.query_one(&settings, &[&round]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("s{i}, public"));
                assert_eq!(row.get::<_, String>(1), format!("client{i}"));
                assert_eq!(row.get::<_, i32>(2), round);
                // And through the simple protocol.
                let rows = c.simple_query("SHOW application_name").await.unwrap();
                assert_eq!(show(rows), format!("client{i}"));
                if round % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.unwrap();
    }
    let stats = db.proxy.pool_stats();
    assert!(stats.iter().all(|s| s.connects <= 5), "{stats:?}");
    let backends: i64 = psql_direct(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
            db.name
        ),
    )
    .parse()
    .unwrap();
    assert!(
        backends <= 6,
        "{backends} server connections for a pool of 5"
    );
}

#[tokio::test]
async fn a_killed_client_leaves_no_lock_and_its_connection_is_reused() {
    let db = TestDb::new(
        "killed",
        ProxyOptions {
            pool_size: 1,
            ..Default::default()
        },
    );
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE acct (id int PRIMARY KEY, n int); INSERT INTO acct VALUES (1, 0)",
    )
    .await
    .unwrap();
    let pid_before: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(c);

    // A client takes a row lock and vanishes without a word.
    let (victim, conn) = tokio_postgres::connect(
        &db.proxy_conninfo("app", e2e::APP_PASSWORD),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn_task = tokio::spawn(conn);
    victim
        .batch_execute("BEGIN; SELECT * FROM acct WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    conn_task.abort(); // drops the socket: no Terminate, no ROLLBACK from the client
    drop(victim);

    // The pool has one connection: the next client gets it only once it is clean.
    let c = db.connect().await;
    let row = tokio::time::timeout(
        Duration::from_secs(20),
        c.query_one(
            "SELECT pg_backend_pid(), (SELECT n FROM acct WHERE id = 1 FOR UPDATE NOWAIT)",
            &[],
        ),
    )
    .await
    .expect("the lock was released")
    .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        pid_before,
        "the server connection was reused"
    );
    let held: i64 = psql_direct(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE a.datname = '{}' AND l.mode = 'RowShareLock' AND a.state = 'idle in transaction'",
            db.name
        ),
    )
    .parse()
    .unwrap();
    assert_eq!(held, 0);
    // A direct session can lock the row at once.
    let direct = psql_direct(
        &db.name,
        "SET lock_timeout = '1s'; SELECT n FROM acct WHERE id = 1 FOR UPDATE NOWAIT",
    );
    assert!(direct.ends_with('0'), "{direct}");
}

#[tokio::test]
async fn checkout_timeout_gives_a_clear_error() {
    let db = TestDb::new(
        "timeout",
        ProxyOptions {
            pool_size: 1,
            checkout_timeout_ms: 300,
            ..Default::default()
        },
    );
    let holder = db.connect().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = db.connect().await;
    let e = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    let message = e.as_db_error().unwrap().message();
    assert!(
        message.contains("waiting for a server connection"),
        "{message}"
    );
    // It waited out the timeout once (a statement the plain path takes waits in the pool's
    // line; its handlers then report the timeout without waiting again).
    let timeouts = || {
        db.proxy
            .pool_stats()
            .iter()
            .map(|s| s.timeouts)
            .sum::<u64>()
    };
    assert_eq!(timeouts(), 1);
    // Extended protocol too; the session stays usable.
    let e = waiter.query("SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert_eq!(timeouts(), 2);
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        waiter
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test]
async fn discard_all_and_reset_all_behave_as_on_postgresql() {
    let db = TestDb::new(
        "discard",
        ProxyOptions {
            pool_size: 2,
            ..Default::default()
        },
    );
    let c = db.connect().await;
    let default_path = show(c.simple_query("SHOW search_path").await.unwrap());
    c.batch_execute("SET search_path TO pg_catalog; SET work_mem = '7MB'")
        .await
        .unwrap();
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "7MB");
    c.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(
        show(c.simple_query("SHOW search_path").await.unwrap()),
        default_path
    );
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "4MB");

    c.batch_execute("SET work_mem = '9MB'").await.unwrap();
    let stmt = c.prepare("SELECT 42").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "4MB");
    // Its prepared statements are gone, as PostgreSQL would have it.
    let e = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "26000", "{e}");
    // RESET of one setting.
    c.batch_execute("SET work_mem = '5MB'; RESET work_mem")
        .await
        .unwrap();
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "4MB");
}

#[tokio::test]
async fn settings_made_in_a_rolled_back_transaction_are_undone() {
    let db = TestDb::new(
        "rollback",
        ProxyOptions {
            pool_size: 1,
            ..Default::default()
        },
    );
    let c = db.connect().await;
    let other = db.connect().await;
    c.batch_execute("SET work_mem = '6MB'").await.unwrap();
    c.batch_execute("BEGIN; SET work_mem = '8MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "6MB");
    // Another client on the same (only) server connection sees the default.
    assert_eq!(
        show(other.simple_query("SHOW work_mem").await.unwrap()),
        "4MB"
    );
    // An implicit transaction that fails undoes its SET too.
    let _ = c
        .batch_execute("SET work_mem = '3MB'; SELECT 1/0")
        .await
        .unwrap_err();
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "6MB");
    c.batch_execute("BEGIN; SET work_mem = '2MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        show(other.simple_query("SHOW work_mem").await.unwrap()),
        "4MB"
    );
    assert_eq!(show(c.simple_query("SHOW work_mem").await.unwrap()), "2MB");
}

#[tokio::test]
async fn session_mode_keeps_one_server_and_cleans_it_after() {
    let db = TestDb::new(
        "session",
        ProxyOptions {
            mode: "session",
            pool_size: 1,
            ..Default::default()
        },
    );
    let c = db.connect().await;
    c.batch_execute("SET work_mem = '11MB'; PREPARE q AS SELECT 1")
        .await
        .unwrap();
    let pid1 = backend_pid(&c).await;
    assert_eq!(pid1, backend_pid(&c).await);
    drop(c);
    // The next client gets the same server connection, reset.
    let mut reused = None;
    for _ in 0..100 {
        let c = db.connect().await;
        let row = c
            .query_one(
                "SELECT pg_backend_pid(), current_setting('work_mem'),
                        (SELECT count(*) FROM pg_prepared_statements WHERE name = 'q')",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i32>(0) == pid1 {
            reused = Some((row.get::<_, String>(1), row.get::<_, i64>(2)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reused, Some(("4MB".to_string(), 0)));

    // A server session that made a temporary schema keeps it after DISCARD ALL: it is
    // closed when its client leaves, and the next client gets a new one.
    let c = db.connect().await;
    c.batch_execute("CREATE TEMP TABLE tmp (x int)")
        .await
        .unwrap();
    let with_temp = backend_pid(&c).await;
    drop(c);
    for _ in 0..20 {
        let c = db.connect().await;
        let pid = backend_pid(&c).await;
        assert_ne!(pid, with_temp);
        let row = c
            .query_one("SELECT pg_my_temp_schema() = 0", &[])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_known_statement_is_prepared_without_waiting_for_a_connection() {
    let db = TestDb::new(
        "prepwait",
        ProxyOptions {
            pool_size: 1,
            checkout_timeout_ms: 3000,
            ..Default::default()
        },
    );
    let parse_sync = |name: &[u8]| {
        let mut out = bytes::BytesMut::new();
        wire::messages::parse(&mut out, name, b"SELECT 1", &[0, 0]);
        out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        out
    };
    let mut b = e2e::raw_login(&db).await;
    // The first Parse of the text goes to a server, which checks it.
    let first = e2e::raw_round_trip(&mut b, &parse_sync(b"s1")).await;
    assert_eq!(first[0], b'1', "{first:?}");
    // Another client holds the only connection in an open transaction.
    let a = db.connect().await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Preparing the same text again (as libpq's PQprepare does: Parse, Sync) needs no
    // connection: ParseComplete and ReadyForQuery, not a checkout timeout.
    let again = e2e::raw_round_trip(&mut b, &parse_sync(b"s2")).await;
    assert_eq!(&again[..5], &[b'1', 0, 0, 0, 4], "{again:?}");
    assert_eq!(&again[5..], &[b'Z', 0, 0, 0, 5, b'I']);
    a.batch_execute("COMMIT").await.unwrap();
}

/// The unnamed statement a client parsed stays its own: another client's Bind of the
/// unnamed statement on the same server connection is refused as PostgreSQL would, and the
/// first client, back on a connection after a Sync, still binds its own statement.
#[tokio::test]
async fn the_unnamed_statement_does_not_leak_between_clients() {
    use bytes::BytesMut;
    use wire::messages;
    let db = TestDb::new(
        "unnamed",
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let mut a = e2e::raw_login(&db).await;
    let mut b = e2e::raw_login(&db).await;
    let mut out = BytesMut::new();
    messages::parse(&mut out, b"", b"SELECT 'mine'", &[0, 0]);
    messages::empty_message(&mut out, wire::messages::tag::SYNC);
    let reply = e2e::raw_round_trip(&mut a, &out).await;
    assert_eq!(reply[0], b'1', "ParseComplete");
    // b binds the unnamed statement without parsing one.
    let mut out = BytesMut::new();
    messages::bind(&mut out, b"", b"", &[0, 0, 0, 0, 0, 0]);
    messages::execute(&mut out, b"", 0);
    messages::empty_message(&mut out, wire::messages::tag::SYNC);
    let reply = e2e::raw_round_trip(&mut b, &out).await;
    assert_eq!(reply[0], b'E', "{:?}", String::from_utf8_lossy(&reply));
    assert!(String::from_utf8_lossy(&reply).contains("26000"));
    // a's Bind, after its Sync let the connection go, still runs a's statement.
    let reply = e2e::raw_round_trip(&mut a, &out).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("mine"), "{text:?}");
}

/// One write mixing what the session's plain path takes (statements without session words,
/// unnamed Parse, Bind, Execute, Sync) with what only its full handlers do (a SET, a named
/// statement, a Flush) and two transactions back to back: every answer in its place, and
/// the session's settings as PostgreSQL's afterwards, on whichever pooled connection.
#[tokio::test]
async fn a_batch_mixing_plain_and_full_handling_answers_in_order() {
    use e2e::raw::*;
    let db = TestDb::new(
        "plainmix",
        ProxyOptions {
            pool_size: 2,
            ..ProxyOptions::default()
        },
    );
    let mut r = Raw::login(db.proxy_addr).await;
    r.send(&[
        parse("", "SELECT 1 AS a"),
        bind("", "", &[]),
        execute(""),
        parse("", "SET application_name = 'mixed'"),
        bind("", "", &[]),
        execute(""),
        parse("", "SELECT current_setting('application_name')"),
        bind("", "", &[]),
        describe(b'P', ""),
        execute(""),
        parse("named", "SELECT $1::int + 1"),
        bind("", "named", &["41"]),
        execute(""),
        flush(),
        parse("", "SELECT 'second ' || $1"),
        bind("", "", &["batch"]),
        execute(""),
        sync(),
        query("SELECT 'simple'"),
        parse("", "SELECT 'second ' || $1"),
        bind("", "", &["again"]),
        execute(""),
        sync(),
    ])
    .await;
    let ms = r.until_ready(3).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    assert_eq!(
        rows(&ms),
        ["1", "mixed", "42", "second batch", "simple", "second again"],
        "{ms:?}"
    );
    let tags: String = ms.iter().map(|m| m.0).collect();
    // S: the ParameterStatus PostgreSQL reports for the SET, before its ReadyForQuery.
    assert_eq!(tags, "12DC12C12TDC12DC12DCSZTDCZ12DCZ", "{ms:?}");
    // The SET of the batch stays with the client, not with a pooled connection.
    let mut other = Raw::login(db.proxy_addr).await;
    let busy = other.round(&[query("BEGIN"), query("SELECT 1")]).await;
    assert!(errors(&busy).is_empty(), "{busy:?}");
    for _ in 0..3 {
        let ms = r
            .round(&[query("SELECT current_setting('application_name')")])
            .await;
        assert_eq!(rows(&ms), ["mixed"], "{ms:?}");
    }
}

/// Clients whose requests wait for the only connection (sent by the session that gives it
/// back, when the connection carries the waiter's settings): each request runs exactly once
/// and answers its own client, one with settings of its own sees them, one that leaves while
/// it waits harms no other, and the connection comes back.
#[tokio::test]
async fn requests_waiting_for_the_connection_each_run_once_in_their_own_session() {
    use e2e::raw::*;
    let db = TestDb::new(
        "handoff",
        ProxyOptions {
            pool_size: 1,
            ..ProxyOptions::default()
        },
    );
    let setup = db.connect().await;
    setup
        .batch_execute(
            "CREATE TABLE handoff_log (client int, via text); GRANT ALL ON handoff_log TO PUBLIC",
        )
        .await
        .unwrap();
    let mut own = Raw::login(db.proxy_addr).await;
    let ms = own.round(&[query("SET application_name = 'own'")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let mut holder = Raw::login(db.proxy_addr).await;
    let ms = holder.round(&[query("BEGIN"), query("SELECT 1")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let mut waiters = Vec::new();
    for i in 0..3 {
        let mut r = Raw::login(db.proxy_addr).await;
        r.send(&[query(&format!(
            "INSERT INTO handoff_log VALUES ({i}, 'simple') RETURNING client"
        ))])
        .await;
        waiters.push((i, r));
    }
    for i in 3..6 {
        let mut r = Raw::login(db.proxy_addr).await;
        r.send(&[
            parse(
                "",
                "INSERT INTO handoff_log VALUES ($1::int, 'extended') RETURNING client",
            ),
            bind("", "", &[&i.to_string()]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ])
        .await;
        waiters.push((i, r));
    }
    let mut leaver = Raw::login(db.proxy_addr).await;
    leaver
        .send(&[query("INSERT INTO handoff_log VALUES (99, 'gone')")])
        .await;
    own.send(&[query("SELECT current_setting('application_name')")])
        .await;
    // Every one of them waits in the pool's line before the connection comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db.proxy.pool_stats().iter().map(|s| s.waiting).sum::<u64>() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            db.proxy.pool_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(leaver);
    let ms = holder.round(&[query("COMMIT")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    for (i, w) in &mut waiters {
        let ms = w.until_ready(1).await;
        assert!(errors(&ms).is_empty(), "client {i}: {ms:?}");
        assert_eq!(rows(&ms), [i.to_string()], "client {i}: {ms:?}");
    }
    let ms = own.until_ready(1).await;
    assert_eq!(rows(&ms), ["own"], "{ms:?}");
    let once: Vec<(i32, i64)> = setup
        .query(
            "SELECT client, count(*) FROM handoff_log WHERE via <> 'gone' GROUP BY client ORDER BY client",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(once, (0..6).map(|i| (i, 1)).collect::<Vec<_>>());
    // The connection is back: nothing checked out, and the next client is served at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db
        .proxy
        .pool_stats()
        .iter()
        .any(|s| s.active > 0 || s.waiting > 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            db.proxy.pool_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut next = Raw::login(db.proxy_addr).await;
    let ms = next
        .round(&[query(
            "SELECT count(*) FROM handoff_log WHERE via = 'simple'",
        )])
        .await;
    assert_eq!(rows(&ms), ["3"], "{ms:?}");
}
