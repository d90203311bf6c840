//! Transactions over several shards through the proxy: shards join as statements need them,
//! COMMIT is all or nothing (two-phase commit when several shards wrote), errors abort the
//! whole transaction, savepoints behave as on one PostgreSQL (compared with one), a client
//! that leaves rolls back everywhere, and a deadlock across shards is broken with 40P01.

use e2e::{create_database, psql_direct, simple_rows, sqlstate, APP_PASSWORD};

/// Three shards by range of `accounts.id`: s0 below 100, s1 from 100 to 200, s2 from 200.
fn proxy(name: &str, extra: &str) -> ([String; 3], String) {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
        create_database(&format!("{name}_s2")),
    ];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL, \
             CONSTRAINT non_negative CHECK (balance >= 0)); \
             CREATE TABLE audit (id bigint REFERENCES accounts DEFERRABLE INITIALLY DEFERRED, note text)",
        );
    }
    let map = format!(
        "name: {name}\ntype: range\nkey_type: bigint\nranges:\n  - {{ from: null, to: 100, shard: s0 }}\n  - {{ from: 100, to: 200, shard: s1 }}\n  - {{ from: 200, to: null, shard: s2 }}\ntables: [{{ table: accounts, column: id }}, {{ table: audit, column: id }}]\n"
    );
    let (addr, _dir) =
        e2e::sharded_proxy(name, &shards, &map, "", &format!("{{ size: 4 }}\n{extra}"));
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    );
    (shards, conninfo)
}

fn count(db: &str, sql: &str) -> i64 {
    psql_direct(db, sql).parse().unwrap()
}

fn prepared(shards: &[String]) -> i64 {
    shards
        .iter()
        .map(|db| {
            count(
                db,
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            )
        })
        .sum()
}

fn rows_everywhere(shards: &[String]) -> Vec<i64> {
    shards
        .iter()
        .map(|db| count(db, "SELECT count(*) FROM accounts"))
        .collect()
}

#[tokio::test]
async fn a_transaction_over_three_shards_commits_all_or_nothing() {
    let (shards, conninfo) = proxy("xtx", "");
    let c = e2e::connect(&conninfo).await;

    // Committed on every shard, by two-phase commit.
    c.batch_execute("BEGIN").await.unwrap();
    for id in [1, 101, 201] {
        c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 10)"))
            .await
            .unwrap();
    }
    // Reads inside the transaction see its own writes on every shard.
    let seen = simple_rows(
        &c.simple_query("SELECT balance FROM accounts WHERE id = 101")
            .await
            .unwrap(),
    );
    assert_eq!(seen, vec![vec![Some("10".to_owned())]]);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
    assert_eq!(prepared(&shards), 0);
    // The decision rows are kept only until their transaction is resolved everywhere;
    // one was written on the coordinator.
    let decisions: i64 = shards
        .iter()
        .filter(|db| {
            psql_direct(db, "SELECT to_regclass('shardgate.decisions') IS NOT NULL") == "t"
        })
        .map(|db| count(db, "SELECT count(*) FROM shardgate.decisions"))
        .sum();
    assert_eq!(decisions, 1);

    // Rolled back on every shard.
    c.batch_execute("BEGIN").await.unwrap();
    for id in [2, 102, 202] {
        c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 10)"))
            .await
            .unwrap();
    }
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);

    // An error anywhere aborts the whole transaction: the next statement, on another
    // shard, gets 25P02, and COMMIT rolls back everywhere.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO accounts VALUES (3, 10)")
        .await
        .unwrap();
    let e = c
        .batch_execute("INSERT INTO accounts VALUES (101, 10)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    let e = c
        .batch_execute("INSERT INTO accounts VALUES (203, 10)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    let done = c.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        done.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);

    // A failure at PREPARE (a deferred foreign key) rolls back every shard, the ones that
    // would have committed too; the client gets the error.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO accounts VALUES (4, 10)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO accounts VALUES (104, 10)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO audit VALUES (299, 'no such account')")
        .await
        .unwrap();
    let e = c.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23503", "{e:?}");
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
    assert_eq!(prepared(&shards), 0);

    // A transfer between shards, read back: one statement per shard, one commit.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    c.batch_execute("UPDATE accounts SET balance = balance - 7 WHERE id = 1")
        .await
        .unwrap();
    c.batch_execute("UPDATE accounts SET balance = balance + 7 WHERE id = 201")
        .await
        .unwrap();
    // The shard that joined began as the client did.
    let iso = simple_rows(&c.simple_query("SHOW transaction_isolation").await.unwrap());
    assert_eq!(iso, vec![vec![Some("repeatable read".to_owned())]]);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(psql_direct(&shards[0], "SELECT balance FROM accounts"), "3");
    assert_eq!(
        psql_direct(&shards[2], "SELECT balance FROM accounts"),
        "17"
    );

    // Read-only participants simply commit; the session is usable after all of this.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    for id in [1, 101, 201] {
        c.simple_query(&format!("SELECT * FROM accounts WHERE id = {id}"))
            .await
            .unwrap();
    }
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(prepared(&shards), 0);
}

/// The same savepoint script through the proxy (three shards) and on one database.
#[tokio::test]
async fn savepoints_span_shards_as_on_one_postgresql() {
    let (shards, conninfo) = proxy("xsp", "");
    let single = create_database("xsp_single");
    psql_direct(
        &single,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance int NOT NULL)",
    );
    let script = [
        "BEGIN",
        "INSERT INTO accounts VALUES (1, 1)",
        "SAVEPOINT a",
        // s1 joins after the savepoint: ROLLBACK TO must undo its work too.
        "INSERT INTO accounts VALUES (101, 1)",
        "SAVEPOINT b",
        "INSERT INTO accounts VALUES (201, 1)",
        "ROLLBACK TO SAVEPOINT b",
        "UPDATE accounts SET balance = 2 WHERE id = 101",
        "ROLLBACK TO a",
        "INSERT INTO accounts VALUES (202, 5)",
        "SAVEPOINT c",
        "INSERT INTO accounts VALUES (102, 5)",
        "RELEASE SAVEPOINT c",
        "INSERT INTO accounts VALUES (103, 5)",
        // An error, then ROLLBACK TO recovers the transaction on every shard.
        "SAVEPOINT d",
        "INSERT INTO accounts VALUES (1, 1)",
        "ROLLBACK TO d",
        "INSERT INTO accounts VALUES (203, 6)",
        "COMMIT",
    ];
    let via = e2e::connect(&conninfo).await;
    let direct = e2e::connect(&e2e::direct_conninfo(&single)).await;
    for sql in script {
        let a = via
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| sqlstate(&e));
        let b = direct
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| sqlstate(&e));
        assert_eq!(a, b, "{sql}");
    }
    let q = "SELECT id, balance FROM accounts ORDER BY id";
    let mut through: Vec<String> = Vec::new();
    for db in &shards {
        let rows = psql_direct(
            db,
            "SELECT string_agg(id || ':' || balance, ',' ORDER BY id) FROM accounts",
        );
        if !rows.is_empty() {
            through.extend(rows.split(',').map(str::to_owned));
        }
    }
    through.sort_by_key(|r| r.split(':').next().unwrap().parse::<i64>().unwrap());
    let one: Vec<String> = simple_rows(&direct.simple_query(q).await.unwrap())
        .into_iter()
        .map(|r| format!("{}:{}", r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(through, one);
    assert_eq!(prepared(&shards), 0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_transaction_rolls_back_everywhere() {
    let (shards, conninfo) = proxy("xleave", "");
    {
        let c = e2e::connect(&conninfo).await;
        c.batch_execute("BEGIN").await.unwrap();
        for id in [5, 105, 205] {
            c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 1)"))
                .await
                .unwrap();
        }
        // Dropped without COMMIT.
    }
    let mut left = Vec::new();
    for _ in 0..100 {
        left = shards
            .iter()
            .map(|db| {
                count(
                    db,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                )
            })
            .collect();
        if left.iter().all(|n| *n == 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, vec![0, 0, 0]);
    assert_eq!(rows_everywhere(&shards), vec![0, 0, 0]);
    // The connections went back to the pool: a new client's transaction over every shard
    // runs.
    let c = e2e::connect(&conninfo).await;
    c.batch_execute("BEGIN").await.unwrap();
    for id in [6, 106, 206] {
        c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 1)"))
            .await
            .unwrap();
    }
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
}

#[tokio::test]
async fn a_deadlock_across_shards_is_broken_with_40p01() {
    let (shards, conninfo) = proxy("xdead", "two_phase: { deadlock_timeout_ms: 300 }");
    let setup = e2e::connect(&conninfo).await;
    setup
        .batch_execute("INSERT INTO accounts VALUES (7, 100)")
        .await
        .unwrap();
    setup
        .batch_execute("INSERT INTO accounts VALUES (107, 100)")
        .await
        .unwrap();
    let a = e2e::connect(&conninfo).await;
    let b = e2e::connect(&conninfo).await;
    a.batch_execute("BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 7")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 107")
        .await
        .unwrap();
    // Each now waits for the other's lock, on the other shard: no one PostgreSQL sees it.
    let (ra, rb) = tokio::join!(
        a.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 107"),
        b.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 7"),
    );
    let codes: Vec<String> = [&ra, &rb]
        .iter()
        .filter_map(|r| r.as_ref().err().map(sqlstate))
        .collect();
    assert!(
        codes.iter().any(|c| c == "40P01"),
        "one of them is broken as a deadlock: {ra:?} {rb:?}"
    );
    assert!(codes.iter().all(|c| c == "40P01"), "{codes:?}");
    let _ = a.batch_execute("ROLLBACK").await;
    let _ = b.batch_execute("ROLLBACK").await;
    assert_eq!(
        psql_direct(&shards[0], "SELECT balance FROM accounts"),
        "100"
    );
    assert_eq!(prepared(&shards), 0);
}

/// Drivers send BEGIN, COMMIT, SAVEPOINT and the statements through the extended protocol
/// (tokio-postgres's `execute`, JDBC): the same transaction over several shards.
#[tokio::test]
async fn the_extended_protocol_ends_transactions_over_several_shards_too() {
    let (shards, conninfo) = proxy("xext", "");
    let c = e2e::connect(&conninfo).await;
    c.execute("BEGIN", &[]).await.unwrap();
    for id in [1i64, 101, 201] {
        c.execute("INSERT INTO accounts (id, balance) VALUES ($1, 5)", &[&id])
            .await
            .unwrap();
    }
    c.execute("SAVEPOINT s", &[]).await.unwrap();
    for id in [2i64, 102] {
        c.execute("INSERT INTO accounts (id, balance) VALUES ($1, 5)", &[&id])
            .await
            .unwrap();
    }
    c.execute("ROLLBACK TO SAVEPOINT s", &[]).await.unwrap();
    c.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
    assert_eq!(prepared(&shards), 0);

    c.execute("BEGIN", &[]).await.unwrap();
    for id in [3i64, 103, 203] {
        c.execute("INSERT INTO accounts (id, balance) VALUES ($1, 5)", &[&id])
            .await
            .unwrap();
    }
    c.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);

    // A prepared COMMIT (as JDBC keeps it) used across transactions.
    let commit = c.prepare("COMMIT").await.unwrap();
    for round in 0..3i64 {
        c.execute("BEGIN", &[]).await.unwrap();
        for base in [10i64, 110, 210] {
            c.execute(
                "INSERT INTO accounts (id, balance) VALUES ($1, 5)",
                &[&(base + round)],
            )
            .await
            .unwrap();
        }
        c.execute(&commit, &[]).await.unwrap();
    }
    assert_eq!(rows_everywhere(&shards), vec![4, 4, 4]);
    assert_eq!(prepared(&shards), 0);
    // The session goes on outside a transaction.
    let n: i64 = c
        .query_one("SELECT count(*) FROM accounts WHERE id = $1", &[&101i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// An INSERT without a column list through the extended protocol learns its table's columns
/// at Parse, as through the simple protocol.
#[tokio::test]
async fn an_extended_insert_without_columns_routes_by_the_catalog() {
    let (shards, conninfo) = proxy("xcols", "");
    let c = e2e::connect(&conninfo).await;
    for id in [1i64, 101, 201] {
        c.execute("INSERT INTO accounts VALUES ($1, 5)", &[&id])
            .await
            .unwrap();
    }
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
}

/// UPDATE and DELETE without a key run on every shard, all or nothing, with the summed row
/// count; inside a transaction, DDL, TRUNCATE, keyless writes and a COPY split by key join
/// the transaction on every shard and commit together.
#[tokio::test]
async fn statements_for_every_shard_are_atomic_in_and_out_of_transactions() {
    let (shards, conninfo) = proxy("xall", "");
    let c = e2e::connect(&conninfo).await;
    for id in [1, 2, 101, 102, 201] {
        c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 10)"))
            .await
            .unwrap();
    }
    // Outside a transaction: summed counts.
    let n = c
        .execute(
            "UPDATE accounts SET balance = balance + 1 WHERE balance >= 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 5);
    // (A subquery that selects the key is joined on it: each shard deletes its own.)
    let m = c
        .simple_query(
            "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE id % 100 = 2)",
        )
        .await
        .unwrap();
    assert_eq!(e2e::simple_counts(&m), vec![2]);
    // One that does not is refused.
    let e = c
        .simple_query("DELETE FROM accounts WHERE balance IN (SELECT max(balance) FROM accounts)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
    // A failure on one shard (the CHECK on s1's row) leaves every shard as it was.
    psql_direct(&shards[1], "UPDATE accounts SET balance = 0");
    let e = c
        .batch_execute("UPDATE accounts SET balance = balance - 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    assert_eq!(
        psql_direct(&shards[0], "SELECT balance FROM accounts"),
        "11"
    );
    assert_eq!(
        psql_direct(&shards[2], "SELECT balance FROM accounts"),
        "11"
    );
    assert_eq!(prepared(&shards), 0);

    // Inside a transaction: everything joins it and commits together.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("CREATE TABLE notes (id bigint, body text)")
        .await
        .unwrap();
    c.batch_execute("TRUNCATE accounts CASCADE").await.unwrap();
    c.batch_execute("INSERT INTO accounts VALUES (1, 5); INSERT INTO accounts VALUES (2, 5)")
        .await
        .unwrap();
    for id in [150, 250, 251] {
        c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 5)"))
            .await
            .unwrap();
    }
    let n = c
        .execute("UPDATE accounts SET balance = balance * 2", &[])
        .await
        .unwrap();
    assert_eq!(n, 5);
    // (TRUNCATE holds its table locked until COMMIT: nothing is read beside it here.)
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![2, 1, 2]);
    for db in &shards {
        assert_eq!(
            count(db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'"),
            1
        );
        assert_eq!(
            count(db, "SELECT count(*) FROM accounts WHERE balance <> 10"),
            0
        );
    }
    assert_eq!(prepared(&shards), 0);

    // Rolled back, the same statements leave nothing.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("DROP TABLE notes").await.unwrap();
    c.batch_execute("DELETE FROM accounts").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![2, 1, 2]);
    for db in &shards {
        assert_eq!(
            count(db, "SELECT count(*) FROM pg_class WHERE relname = 'notes'"),
            1
        );
    }

    // A failure of a statement on several shards aborts the transaction.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO accounts VALUES (3, 1)")
        .await
        .unwrap();
    let e = c
        .batch_execute("UPDATE accounts SET balance = balance - 10")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    let e = c
        .batch_execute("INSERT INTO accounts VALUES (4, 1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows_everywhere(&shards), vec![2, 1, 2]);
}

/// psql's COPY FROM STDIN inside a transaction, after a TRUNCATE in it: the rows split by
/// key, every shard in the transaction (COPY FREEZE needs the TRUNCATE in the same one, as
/// pgbench -i does), one commit.
#[tokio::test]
async fn a_copy_in_a_transaction_is_split_and_committed_with_it() {
    let (shards, conninfo) = proxy("xcopy", "");
    let script = "BEGIN;\n\
        TRUNCATE accounts CASCADE;\n\
        COPY accounts (id, balance) FROM STDIN WITH (FREEZE ON);\n\
        1\t5\n2\t5\n150\t5\n250\t5\n251\t5\n\\.\n\
        UPDATE accounts SET balance = balance * 2;\n\
        COMMIT;\n";
    let out = std::process::Command::new("psql")
        .arg(&conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rows_everywhere(&shards), vec![2, 1, 2]);
    for db in &shards {
        assert_eq!(
            count(db, "SELECT count(*) FROM accounts WHERE balance <> 10"),
            0
        );
    }
    assert_eq!(prepared(&shards), 0);
}

/// An extended-protocol batch without BEGIN (JDBC's executeBatch in autocommit, psycopg's
/// executemany) is one implicit transaction: over several shards it commits at its Sync on
/// all of them, or on none when something in it failed.
#[tokio::test]
async fn a_batch_without_begin_over_several_shards_is_all_or_nothing() {
    use e2e::raw::*;
    let (shards, conninfo) = proxy("ximpl", "");
    let port: u16 = conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .parse()
        .unwrap();
    let mut r = Raw::login(([127, 0, 0, 1], port).into()).await;
    let insert = |id: &str| {
        vec![
            parse("", "INSERT INTO accounts (id, balance) VALUES ($1, 1)"),
            bind("", "", &[id]),
            execute(""),
        ]
    };
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for id in ["1", "101", "201"] {
        batch.extend(insert(id));
    }
    batch.push(sync());
    let got = r.round(&batch).await;
    assert!(errors(&got).is_empty(), "{got:?}");
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);

    // The third statement fails on s0: the two before it (s0 and s1) are not committed.
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for id in ["2", "102", "1"] {
        batch.extend(insert(id));
    }
    batch.push(sync());
    let got = r.round(&batch).await;
    assert_eq!(errors(&got).len(), 1, "{got:?}");
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
    assert_eq!(prepared(&shards), 0);

    // The session goes on: a batch on one shard, then one over two.
    let mut batch = insert("3");
    batch.push(sync());
    assert!(errors(&r.round(&batch).await).is_empty());
    let mut batch = insert("4");
    batch.extend(insert("204"));
    batch.push(sync());
    assert!(errors(&r.round(&batch).await).is_empty());
    assert_eq!(rows_everywhere(&shards), vec![3, 1, 2]);
}

/// A simple query of several statements for different shards is one implicit transaction,
/// as on PostgreSQL: all commit, or (an error in any) none, and the statements after the
/// error do not run.
#[tokio::test]
async fn a_query_of_statements_for_several_shards_is_one_transaction() {
    let (shards, conninfo) = proxy("xmulti", "");
    let c = e2e::connect(&conninfo).await;
    let m = c
        .simple_query(
            "INSERT INTO accounts VALUES (1, 1); INSERT INTO accounts VALUES (101, 1); \
             UPDATE accounts SET balance = 2 WHERE id = 1; SELECT balance FROM accounts WHERE id = 1",
        )
        .await
        .unwrap();
    assert_eq!(e2e::simple_counts(&m), vec![1, 1, 1, 1]);
    assert_eq!(simple_rows(&m), vec![vec![Some("2".to_owned())]]);
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 0]);
    // The third statement fails: the first two are rolled back, the fourth never runs.
    let e = c
        .simple_query(
            "INSERT INTO accounts VALUES (2, 1); INSERT INTO accounts VALUES (202, 1); \
             INSERT INTO accounts VALUES (101, 1); INSERT INTO accounts VALUES (203, 1)",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 0]);
    assert_eq!(prepared(&shards), 0);
    // The session goes on.
    c.batch_execute("INSERT INTO accounts VALUES (204, 1)")
        .await
        .unwrap();
    assert_eq!(rows_everywhere(&shards), vec![1, 1, 1]);
}
