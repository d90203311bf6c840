//! Fidelity: the proxy behaves as the PostgreSQL behind it for the way drivers begin
//! transactions (a BEGIN in the same extended-protocol pipeline as the first statement, as
//! JDBC, Npgsql and psycopg's pipeline mode send it).
//!
//! Setup: two shards, `items.id` (bigint) range-mapped: id < 100 on s0 (home), id >= 100 on
//! s1.

use std::net::SocketAddr;

use e2e::raw::*;
use e2e::{create_database, psql_direct};

struct Setup {
    shards: [String; 2],
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str, pool: &str) -> Setup {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
    ];
    for db in &shards {
        psql_direct(db, "CREATE TABLE items (id bigint PRIMARY KEY, qty int)");
    }
    psql_direct(&shards[0], "INSERT INTO items VALUES (5, 1), (6, 1)");
    psql_direct(&shards[1], "INSERT INTO items VALUES (150, 1), (151, 1)");
    let (addr, dir) = e2e::sharded_proxy(
        name,
        &shards,
        &format!("name: {name}\ntype: range\nkey_type: bigint\nranges:\n  - {{ from: null, to: 100, shard: s0 }}\n  - {{ from: 100, to: null, shard: s1 }}\ntables: [{{ table: items, column: id }}]\n"),
        "",
        pool,
    );
    Setup { shards, addr, dir }
}

/// Parse/Bind/Execute of the unnamed statement, as drivers send a one-shot statement.
fn one_shot(sql: &str, params: &[&str]) -> Vec<Vec<u8>> {
    vec![
        parse("", sql),
        bind("", "", params),
        describe(b'P', ""),
        execute(""),
    ]
}

/// JDBC with autoCommit off: `BEGIN` goes through the extended protocol in the same
/// pipeline as the first statement. The transaction runs on the shard of that statement,
/// whichever it is, and commits there.
#[tokio::test]
async fn a_begin_in_the_first_statements_pipeline_goes_to_that_statements_shard() {
    let s = setup("fid_jdbc", "{ mode: transaction, size: 2 }");
    for (key, shard) in [("150", 1), ("5", 0)] {
        let mut c = Raw::login(s.addr).await;
        let mut batch = vec![parse("", "BEGIN"), bind("", "", &[]), execute("")];
        batch.extend(one_shot("SELECT qty FROM items WHERE id = $1", &[key]));
        batch.push(sync());
        let ms = c.round(&batch).await;
        assert!(errors(&ms).is_empty(), "{ms:?}");
        assert_eq!(rows(&ms), ["1"], "{ms:?}");
        assert!(
            ms.iter().any(|m| m.0 == 'C' && m.1 == "BEGIN"),
            "BEGIN is answered: {ms:?}"
        );
        assert_eq!(ms.last().unwrap(), &M('Z', "T".into()), "{ms:?}");

        // A named statement, as with prepareThreshold reached.
        let mut batch = vec![
            parse("S_1", "UPDATE items SET qty = qty + 1 WHERE id = $1"),
            bind("", "S_1", &[key]),
            execute(""),
        ];
        batch.push(sync());
        let ms = c.round(&batch).await;
        assert!(errors(&ms).is_empty(), "{ms:?}");
        assert_eq!(ms.last().unwrap(), &M('Z', "T".into()));
        // Not committed yet: the shard still has the old value.
        assert_eq!(
            psql_direct(
                &s.shards[shard],
                &format!("SELECT qty FROM items WHERE id = {key}")
            ),
            "1"
        );
        let mut batch = one_shot("COMMIT", &[]);
        batch.push(sync());
        let ms = c.round(&batch).await;
        assert!(errors(&ms).is_empty(), "{ms:?}");
        assert_eq!(ms.last().unwrap(), &M('Z', "I".into()));
        assert_eq!(
            psql_direct(
                &s.shards[shard],
                &format!("SELECT qty FROM items WHERE id = {key}")
            ),
            "2"
        );
    }
}

/// The held extended BEGIN answers what PostgreSQL would: a Describe of it, a BEGIN alone in
/// its batch (the transaction then goes where its next statement goes), a rollback of a
/// transaction that never reached a server, and the aborted state after a failed statement.
#[tokio::test]
async fn a_held_extended_begin_answers_as_postgresql() {
    let s = setup("fid_jdbc2", "{ mode: transaction, size: 2 }");
    let mut c = Raw::login(s.addr).await;
    let ms = c
        .round(&[
            parse("", "BEGIN ISOLATION LEVEL REPEATABLE READ"),
            describe(b'S', ""),
            bind("", "", &[]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ])
        .await;
    let tags: Vec<char> = ms.iter().map(|m| m.0).collect();
    assert_eq!(tags, ['1', 't', 'n', '2', 'n', 'C', 'Z'], "{ms:?}");
    assert_eq!(ms.last().unwrap(), &M('Z', "T".into()));
    let mut batch = one_shot("UPDATE items SET qty = 7 WHERE id = $1", &["151"]);
    batch.extend(one_shot(
        "SELECT current_setting('transaction_isolation')",
        &[],
    ));
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    assert_eq!(rows(&ms), ["repeatable read"]);
    // The statement without a key went where the transaction went: shard s1.
    let mut batch = one_shot("ROLLBACK", &[]);
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
    assert_eq!(
        psql_direct(&s.shards[1], "SELECT qty FROM items WHERE id = 151"),
        "1"
    );

    // A failed statement after the held BEGIN aborts the transaction, as on PostgreSQL.
    let mut batch = vec![parse("", "BEGIN"), bind("", "", &[]), execute("")];
    batch.extend(one_shot("SELECT qty FROM nowhere WHERE id = $1", &["150"]));
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert_eq!(errors(&ms).len(), 1, "{ms:?}");
    assert!(errors(&ms)[0].starts_with("42P01"), "{ms:?}");
    assert_eq!(ms.last().unwrap(), &M('Z', "E".into()));
    let ms = c.round(&[query("ROLLBACK")]).await;
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
}

/// Runs each statement as a simple query and describes what came back: the rows, or the
/// SQLSTATE of the error.
async fn script(c: &tokio_postgres::Client, statements: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for st in statements {
        let line = match c.simple_query(st).await {
            Ok(m) => format!("{st} => {:?}", e2e::simple_rows(&m)),
            Err(e) => format!("{st} => ERROR {}", e2e::sqlstate(&e)),
        };
        out.push(line);
    }
    out
}

/// Connects with startup options, as psql does with PGDATESTYLE and PGTZ.
async fn connect_with_options(conninfo: &str) -> tokio_postgres::Client {
    e2e::connect(&format!(
        "{conninfo} options='-c datestyle=Postgres,MDY -c timezone=PST8PDT -c vacuum_cost_delay=3'"
    ))
    .await
}

/// Settings inside transactions with savepoints, RESET to startup values, and the values
/// timestamps print with: the same through the proxy as on PostgreSQL.
const SETTINGS_SCRIPT: &[&str] = &[
    "SHOW datestyle",
    "SHOW vacuum_cost_delay",
    "BEGIN",
    "SET datestyle = 'ISO, YMD'",
    "SAVEPOINT a",
    "SET datestyle = 'German'",
    "SET vacuum_cost_delay = 40",
    "SAVEPOINT b",
    "SET vacuum_cost_delay = 50",
    "ROLLBACK TO b",
    "SHOW vacuum_cost_delay",
    "ROLLBACK TO a",
    "SHOW datestyle",
    "SHOW vacuum_cost_delay",
    "SELECT '2006-08-13 12:34:56'::timestamptz",
    "RELEASE a",
    "SET vacuum_cost_delay = 60",
    "COMMIT",
    "SHOW datestyle",
    "SHOW vacuum_cost_delay",
    "SELECT '2006-08-13 12:34:56'::timestamptz",
    "BEGIN",
    "SET vacuum_cost_delay = 70",
    "SAVEPOINT c",
    "RESET vacuum_cost_delay",
    "RELEASE c",
    "SELECT 1/0",
    "ROLLBACK",
    "SHOW vacuum_cost_delay",
    "RESET datestyle",
    "SHOW datestyle",
    "RESET ALL",
    "SHOW vacuum_cost_delay",
    "SHOW timezone",
    // Half a DateStyle keeps the other half of the server's value.
    "SET datestyle TO dmy",
    "SHOW datestyle",
    "SELECT '2006-08-13 12:34:56'::timestamptz",
    // A custom parameter stays defined after RESET.
    "SET fid.custom = 'a'",
    "RESET fid.custom",
    "SHOW fid.custom",
    // Session characteristics are the defaults of later transactions.
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "CREATE TABLE fid_read_only (x int)",
    "SHOW default_transaction_read_only",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SHOW default_transaction_read_only",
    "RESET ALL",
    "SHOW datestyle",
    // set_config: for the session, or (is_local) for the transaction.
    "SELECT set_config('vacuum_cost_delay', '11', false)",
    "SHOW vacuum_cost_delay",
    "BEGIN",
    "SELECT set_config('vacuum_cost_delay', '12', true)",
    "SHOW vacuum_cost_delay",
    "COMMIT",
    "SHOW vacuum_cost_delay",
    // A function's SET clause lasts for the call.
    "CREATE OR REPLACE FUNCTION fid_mem() RETURNS text LANGUAGE sql SET work_mem = '3MB' AS 'SELECT current_setting(''work_mem'')'",
    "SELECT fid_mem()",
    "SHOW work_mem",
];

async fn settings_match_postgresql(mode: &'static str) {
    let db = e2e::TestDb::new(
        "fid_set",
        e2e::ProxyOptions {
            mode,
            round_robin: true,
            ..Default::default()
        },
    );
    let direct = connect_with_options(&db.direct_conninfo()).await;
    let want = script(&direct, SETTINGS_SCRIPT).await;
    let proxied = connect_with_options(&db.proxy_conninfo("app", e2e::APP_PASSWORD)).await;
    // Another client uses the pool meanwhile, so the first may move between connections.
    let other = db.connect().await;
    other
        .simple_query("SET vacuum_cost_delay = 99")
        .await
        .unwrap();
    // Two connections in the pool: two transactions open at once.
    let third = db.connect().await;
    other.simple_query("BEGIN").await.unwrap();
    third.simple_query("BEGIN; SELECT 1").await.unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    other.simple_query("COMMIT").await.unwrap();
    third.simple_query("COMMIT").await.unwrap();
    let got = script(&proxied, SETTINGS_SCRIPT).await;
    assert_eq!(got, want);
    if mode == "transaction" {
        // The client did move between server connections.
        let mut pids = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let m = proxied
                .simple_query("SELECT pg_backend_pid()")
                .await
                .unwrap();
            pids.insert(e2e::simple_rows(&m)[0][0].clone());
        }
        assert!(pids.len() > 1, "{pids:?}");
    }
}

#[tokio::test]
async fn settings_in_session_mode_are_postgresqls() {
    settings_match_postgresql("session").await;
}

#[tokio::test]
async fn settings_in_transaction_mode_are_postgresqls() {
    settings_match_postgresql("transaction").await;
}

fn transaction_db(prefix: &str) -> e2e::TestDb {
    e2e::TestDb::new(
        prefix,
        e2e::ProxyOptions {
            mode: "transaction",
            round_robin: true,
            ..Default::default()
        },
    )
}

/// Opens two server connections in the pool, so that clients move between them.
async fn two_connections(db: &e2e::TestDb) {
    let (a, b) = (db.connect().await, db.connect().await);
    a.simple_query("BEGIN").await.unwrap();
    b.simple_query("BEGIN; SELECT 1").await.unwrap();
    a.simple_query("COMMIT").await.unwrap();
    b.simple_query("COMMIT").await.unwrap();
}

/// SET ROLE and SET SESSION AUTHORIZATION follow the client in PostgreSQL's order: the
/// session authorization resets the role, RESET ALL keeps both, and the client sees the
/// same current_user/session_user as on PostgreSQL from whichever connection it gets.
#[tokio::test]
async fn roles_follow_the_client_in_postgresqls_order() {
    let db = transaction_db("fid_role");
    psql_direct(
        &db.name,
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fid_alice') THEN CREATE ROLE fid_alice; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fid_bob') THEN CREATE ROLE fid_bob; END IF;
         END $$; GRANT fid_bob TO fid_alice",
    );
    two_connections(&db).await;
    let steps: &[&str] = &[
        "SET ROLE fid_bob",
        "SELECT current_user, session_user = current_user",
        "SET SESSION AUTHORIZATION fid_alice",
        "SELECT current_user, session_user",
        "SET ROLE fid_bob",
        "SET work_mem = '2MB'",
        "SELECT current_user, session_user, current_setting('work_mem')",
        "RESET ALL",
        "SELECT current_user, session_user, current_setting('work_mem')",
        "BEGIN",
        "SET ROLE NONE",
        "ROLLBACK",
        "SELECT current_user, session_user",
        "RESET SESSION AUTHORIZATION",
        "SELECT current_user = session_user",
        "SHOW role",
    ];
    let direct = db.connect_direct().await;
    let want = script(&direct, steps).await;
    let proxied = db.connect().await;
    let got = script(&proxied, steps).await;
    assert_eq!(got, want);
}

/// A setting that can no longer be applied (its role was dropped while the client was
/// between transactions) is reported once and dropped; the session goes on.
#[tokio::test]
async fn a_failed_replay_leaves_the_session_usable() {
    let db = transaction_db("fid_replay");
    psql_direct(
        &db.name,
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fid_gone') THEN CREATE ROLE fid_gone; END IF;
         END $$",
    );
    two_connections(&db).await;
    let c = db.connect().await;
    c.simple_query("SET application_name = 'kept'")
        .await
        .unwrap();
    c.simple_query("SET ROLE fid_gone").await.unwrap();
    // Another client takes the connection the role was set on and drops the role there.
    let other = db.connect().await;
    other.simple_query("SELECT 1; SELECT 1").await.unwrap();
    psql_direct(&db.name, "DROP ROLE fid_gone");
    // On the connection its role was set on, the client sees what PostgreSQL says of a
    // dropped current role; on any other, the replay fails, once.
    let mut replay_errors = 0;
    for _ in 0..6 {
        match c
            .simple_query("SELECT current_setting('application_name')")
            .await
        {
            Ok(m) => assert_eq!(e2e::simple_rows(&m), [[Some("kept".to_owned())]]),
            Err(e) if e2e::sqlstate(&e) == "42704" => {}
            Err(e) => {
                assert_eq!(e2e::sqlstate(&e), "22023", "{e:?}");
                assert!(
                    format!("{e:?}").contains("could not apply session setting \\\"role\\\""),
                    "{e:?}"
                );
                replay_errors += 1;
            }
        }
    }
    assert_eq!(replay_errors, 1);
    // The role is gone from the client's settings: RESET ROLE brings every connection back.
    c.simple_query("RESET ROLE").await.unwrap();
    let m = c
        .simple_query("SELECT current_user = session_user")
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&m), [[Some("t".to_owned())]]);
}

/// The backend pids a client's next `n` statements run on.
async fn pids(c: &tokio_postgres::Client, n: usize) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for _ in 0..n {
        let m = c.simple_query("SELECT pg_backend_pid()").await.unwrap();
        out.insert(e2e::simple_rows(&m)[0][0].clone().unwrap());
    }
    out
}

fn one(m: &[tokio_postgres::SimpleQueryMessage]) -> String {
    e2e::simple_rows(m)[0][0].clone().unwrap_or_default()
}

/// Transaction pooling with pinning: a temporary table, a WITH HOLD cursor and a session
/// advisory lock keep working across transactions, and the connection goes back to the pool
/// once they are gone.
#[tokio::test]
async fn state_that_outlives_a_transaction_pins_the_connection() {
    let db = transaction_db("fid_pin");
    two_connections(&db).await;
    let c = db.connect().await;
    assert!(
        pids(&c, 4).await.len() > 1,
        "clients move between connections"
    );

    c.simple_query("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    for i in 1..=4 {
        c.simple_query(&format!("INSERT INTO scratch VALUES ({i})"))
            .await
            .unwrap();
    }
    let m = c.simple_query("SELECT sum(x) FROM scratch").await.unwrap();
    assert_eq!(one(&m), "10");
    assert_eq!(pids(&c, 4).await.len(), 1, "pinned while the table exists");
    assert_eq!(db.proxy.pinned_count(), 1);
    c.simple_query("DROP TABLE scratch").await.unwrap();
    assert!(pids(&c, 4).await.len() > 1, "back to the pool");
    assert_eq!(db.proxy.pinned_count(), 0);

    c.batch_execute(
        "BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g; COMMIT",
    )
    .await
    .unwrap();
    for want in ["1", "2", "3"] {
        let m = c.simple_query("FETCH 1 FROM held").await.unwrap();
        assert_eq!(one(&m), want);
    }
    c.simple_query("CLOSE held").await.unwrap();
    assert!(pids(&c, 4).await.len() > 1, "back to the pool");

    // SQL-level PREPARE.
    c.simple_query("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    for _ in 0..3 {
        let m = c.simple_query("EXECUTE twice(21)").await.unwrap();
        assert_eq!(one(&m), "42");
    }
    c.simple_query("DEALLOCATE twice").await.unwrap();
    assert!(pids(&c, 4).await.len() > 1, "back to the pool");

    let other = db.connect().await;
    let m = c
        .simple_query("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    assert_eq!(e2e::simple_rows(&m).len(), 1);
    let m = other
        .simple_query("SELECT pg_try_advisory_lock(4242)")
        .await
        .unwrap();
    assert_eq!(one(&m), "f", "the lock is held by the pinned session");
    let m = c
        .simple_query("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    assert_eq!(one(&m), "t");
    assert!(pids(&c, 4).await.len() > 1, "back to the pool");
}

/// LISTEN in transaction pooling: the listening client keeps its connection and gets the
/// notifications; UNLISTEN gives it back.
#[tokio::test]
async fn listen_pins_the_connection_and_notifications_arrive() {
    let db = transaction_db("fid_listen");
    two_connections(&db).await;
    let mut listener = Raw::login(db.proxy_addr).await;
    let ms = listener.round(&[query("LISTEN fid_channel")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let other = db.connect().await;
    other
        .simple_query("NOTIFY fid_channel, 'hello'")
        .await
        .unwrap();
    let ms = listener.until_tag('A').await;
    assert_eq!(ms.last().map(|m| m.0), Some('A'), "{ms:?}");
    let ms = listener.round(&[query("UNLISTEN *")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let ms = listener.round(&[query("SELECT 1")]).await;
    assert_eq!(rows(&ms), ["1"]);
}

/// JDBC's named BEGIN: with prepareThreshold 1 (and after five uses with the default) the
/// BEGIN is a named statement, parsed once and later only bound. Either way the transaction
/// goes to the shard of its first statement.
#[tokio::test]
async fn a_named_begin_is_held_too() {
    let s = setup("fid_jdbc3", "{ mode: transaction, size: 2 }");
    let mut c = Raw::login(s.addr).await;
    let mut first = true;
    for (round, key) in ["150", "151", "5", "150"].into_iter().enumerate() {
        let mut batch = Vec::new();
        if first {
            batch.push(parse("S_1", "BEGIN"));
            batch.push(parse("S_2", "UPDATE items SET qty = qty + 1 WHERE id = $1"));
            first = false;
        }
        batch.extend([
            bind("", "S_1", &[]),
            execute(""),
            bind("", "S_2", &[key]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ]);
        let ms = c.round(&batch).await;
        assert!(errors(&ms).is_empty(), "round {round}: {ms:?}");
        assert_eq!(ms.last().unwrap(), &M('Z', "T".into()), "{ms:?}");
        let ms = c
            .round(
                &one_shot("COMMIT", &[])
                    .into_iter()
                    .chain([sync()])
                    .collect::<Vec<_>>(),
            )
            .await;
        assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
    }
    assert_eq!(
        psql_direct(
            &s.shards[1],
            "SELECT string_agg(qty::text, ',' ORDER BY id) FROM items"
        ),
        "3,2"
    );
    assert_eq!(
        psql_direct(
            &s.shards[0],
            "SELECT string_agg(qty::text, ',' ORDER BY id) FROM items"
        ),
        "2,1"
    );
}

/// JDBC's executeBatch with autoCommit off: the BEGIN in a batch of its own with the
/// statement's Parse and Describe, then the rows' Binds in the next batch, on shard s1.
#[tokio::test]
async fn a_batch_after_a_held_begin_and_a_describe_goes_to_its_shard() {
    let s = setup("fid_jdbc4", "{ mode: transaction, size: 2 }");
    let mut c = Raw::login(s.addr).await;
    let ms = c
        .round(&[
            parse("S_1", "BEGIN"),
            bind("", "S_1", &[]),
            execute(""),
            parse("S_2", "INSERT INTO items (id, qty) VALUES ($1, 0)"),
            describe(b'S', "S_2"),
            sync(),
        ])
        .await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    assert_eq!(ms.last().unwrap(), &M('Z', "T".into()), "{ms:?}");
    let mut batch = Vec::new();
    for k in 200..220 {
        let k = k.to_string();
        batch.extend([bind("", "S_2", &[&k]), describe(b'P', ""), execute("")]);
    }
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let ms = c.round(&[query("COMMIT")]).await;
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
    assert_eq!(
        psql_direct(&s.shards[1], "SELECT count(*) FROM items WHERE id >= 200"),
        "20"
    );
}

/// Statements prepared on a server connection stay within `pool.max_prepared_statements`:
/// past it the least recently used is closed on the server, and prepared again when a
/// client needs it. Every statement still answers correctly after its eviction.
#[tokio::test]
async fn prepared_statements_per_server_connection_are_bounded() {
    const LIMIT: usize = 20;
    const N: usize = 100_000;
    let db = e2e::TestDb::new(
        "fid_prep",
        e2e::ProxyOptions {
            mode: "transaction",
            pool_size: 2,
            max_prepared: LIMIT as u32,
            ..Default::default()
        },
    );
    let mut c = Raw::login(db.proxy_addr).await;
    // Distinct statements, pipelined in batches.
    for round in 0..2 {
        for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
            let mut batch = Vec::new();
            for &i in chunk {
                let name = format!("p{i}");
                if round == 0 {
                    batch.push(parse(&name, &format!("SELECT {i} + $1::int")));
                }
                batch.push(bind("", &name, &["1"]));
                batch.push(execute(""));
                batch.push(sync());
            }
            c.send(&batch).await;
            let ms = c.until_ready(chunk.len()).await;
            assert!(errors(&ms).is_empty(), "{:?}", &ms[..ms.len().min(10)]);
            let want: Vec<String> = chunk.iter().map(|i| (i + 1).to_string()).collect();
            assert_eq!(rows(&ms), want);
        }
    }
    // Counted on the servers themselves.
    let counts = psql_direct(
        "postgres",
        &format!(
            "SELECT string_agg(n::text, ',') FROM (SELECT count(*) n FROM pg_stat_activity WHERE datname = '{}' AND backend_type = 'client backend') s",
            db.name
        ),
    );
    assert!(!counts.is_empty());
    let mut held = Vec::new();
    for _ in 0..4 {
        let ms = c
            .round(&[query(
                "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql",
            )])
            .await;
        held.push(rows(&ms)[0].parse::<usize>().unwrap());
    }
    assert!(held.iter().all(|&n| n <= LIMIT), "{held:?}");
    assert!(held.iter().any(|&n| n > 0), "{held:?}");
    // Once the client leaves, the proxy forgets its statements.
    assert!(db.proxy.statement_count() >= N);
    drop(c);
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = db.proxy.statement_count();
        if left < 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(left < 100, "{left} statements still registered");
}

/// A statement the proxy refuses inside a transaction fails that transaction, as any error
/// does on PostgreSQL: later statements get 25P02, COMMIT rolls back, and nothing of it
/// reaches the shard. The same for the implicit transaction of an extended batch.
#[tokio::test]
async fn a_refused_statement_fails_its_transaction() {
    let s = setup("fid_abort", "{ mode: transaction, size: 2 }");
    let mut c = Raw::login(s.addr).await;
    for q in ["BEGIN", "UPDATE items SET qty = 50 WHERE id = 5"] {
        let ms = c.round(&[query(q)]).await;
        assert!(errors(&ms).is_empty(), "{ms:?}");
    }
    // (Refused whatever the transaction: a window over every shard's rows.)
    let ms = c
        .round(&[query("SELECT rank() OVER (ORDER BY qty) FROM items")])
        .await;
    assert!(errors(&ms)[0].starts_with("0A000"), "{ms:?}");
    assert_eq!(ms.last().unwrap(), &M('Z', "E".into()), "{ms:?}");
    let ms = c.round(&[query("SELECT 1")]).await;
    assert!(errors(&ms)[0].starts_with("25P02"), "{ms:?}");
    let ms = c.round(&[query("COMMIT")]).await;
    assert!(ms.iter().any(|m| m.0 == 'C' && m.1 == "ROLLBACK"), "{ms:?}");
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
    assert_eq!(
        psql_direct(&s.shards[0], "SELECT qty FROM items WHERE id = 5"),
        "1"
    );

    // Extended protocol, explicit transaction: the refusal's Sync reports E.
    let ms = c.round(&[query("BEGIN")]).await;
    assert!(errors(&ms).is_empty());
    let mut batch = one_shot("UPDATE items SET qty = 60 WHERE id = $1", &["6"]);
    batch.extend(one_shot(
        "SELECT rank() OVER (ORDER BY qty) FROM items WHERE qty > $1",
        &["0"],
    ));
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert_eq!(errors(&ms).len(), 1, "{ms:?}");
    assert_eq!(ms.last().unwrap(), &M('Z', "E".into()), "{ms:?}");
    let mut batch = one_shot("COMMIT", &[]);
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
    assert_eq!(
        psql_direct(&s.shards[0], "SELECT qty FROM items WHERE id = 6"),
        "1"
    );

    // The implicit transaction of a batch: nothing of it commits.
    let mut batch = one_shot("UPDATE items SET qty = 70 WHERE id = $1", &["5"]);
    batch.extend(one_shot(
        "SELECT rank() OVER (ORDER BY qty) FROM items WHERE qty > $1",
        &["0"],
    ));
    batch.push(sync());
    let ms = c.round(&batch).await;
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");
    assert_eq!(
        psql_direct(&s.shards[0], "SELECT qty FROM items WHERE id = 5"),
        "1"
    );
    let ms = c
        .round(&[query("SELECT qty FROM items WHERE id = 5")])
        .await;
    assert_eq!(rows(&ms), ["1"]);
}

/// `DECLARE ... CURSOR FOR q` routes as q (it used to run on the home shard and find
/// nothing); FETCH and CLOSE follow it, a WITH HOLD cursor after its transaction too. A
/// cursor over several shards and an SQL-level PREPARE on sharded tables are refused.
#[tokio::test]
async fn cursors_route_as_their_query() {
    let s = setup("fid_cursor", "{ mode: transaction, size: 2 }");
    let mut c = Raw::login(s.addr).await;
    let ms = c
        .round(&[query(
            "BEGIN; DECLARE c1 CURSOR FOR SELECT id FROM items WHERE id = 150",
        )])
        .await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let ms = c.round(&[query("FETCH ALL FROM c1")]).await;
    assert_eq!(rows(&ms), ["150"], "{ms:?}");
    let ms = c.round(&[query("CLOSE c1; COMMIT")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");

    let ms = c
        .round(&[query(
            "DECLARE held CURSOR WITH HOLD FOR SELECT id FROM items WHERE id = 151",
        )])
        .await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let ms = c.round(&[query("FETCH 1 FROM held")]).await;
    assert_eq!(rows(&ms), ["151"], "{ms:?}");
    let ms = c.round(&[query("CLOSE held")]).await;
    assert!(errors(&ms).is_empty(), "{ms:?}");

    let ms = c
        .round(&[query("BEGIN; DECLARE c2 CURSOR FOR SELECT id FROM items")])
        .await;
    assert!(errors(&ms)[0].starts_with("0A000"), "{ms:?}");
    let ms = c.round(&[query("ROLLBACK")]).await;
    assert_eq!(ms.last().unwrap(), &M('Z', "I".into()), "{ms:?}");

    // SQL-level PREPARE is kept by the proxy; each EXECUTE routes by its arguments.
    let ms = c
        .round(&[query(
            "PREPARE p1(bigint) AS SELECT id FROM items WHERE id = $1",
        )])
        .await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    for id in ["150", "151"] {
        let ms = c.round(&[query(&format!("EXECUTE p1({id})"))]).await;
        assert_eq!(rows(&ms), [id], "{ms:?}");
    }
    let ms = c
        .round(&[query(
            "/* shardgate: shard=s1 */ PREPARE p2(bigint) AS SELECT id FROM items WHERE id = $1",
        )])
        .await;
    assert!(errors(&ms).is_empty(), "{ms:?}");
    let ms = c.round(&[query("EXECUTE p2(150)")]).await;
    assert_eq!(rows(&ms), ["150"], "{ms:?}");
}

/// Session pooling passes the extended protocol through: the server knows the client's
/// statements by the names the client gave them, as it would without the proxy.
#[tokio::test]
async fn session_mode_keeps_the_clients_statement_names() {
    let db = e2e::TestDb::new(
        "fid_sessnames",
        e2e::ProxyOptions {
            mode: "session",
            ..Default::default()
        },
    );
    let c = db.connect().await;
    let st = c.prepare("SELECT $1::int + 1").await.unwrap();
    let row = c.query_one(&st, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let got: Vec<String> = c
        .query("SELECT name FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    // tokio-postgres names its statements s<n>; the proxy's own names are sg_<n>.
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|n| n.starts_with('s') && n[1..].parse::<u64>().is_ok()),
        "{got:?}"
    );
    assert!(got.iter().all(|n| !n.starts_with("sg_")), "{got:?}");
}
