//! Rows go to the shard the map says, and what the proxy cannot yet run on the right shards
//! is refused, never run on the wrong one. Two databases of the test cluster are the shards.

use e2e::{
    cluster, create_database, psql_direct, simple_rows, sqlstate, APP_PASSWORD, SERVER_PASSWORD,
};

/// A proxy over two shard databases with one hash map (4 partitions: s0 owns remainders 0
/// and 2, s1 owns 1 and 3) of `table` by `column` of `key_type`.
fn two_shard_proxy(
    shards: &[String; 2],
    name: &str,
    table: &str,
    column: &str,
    key_type: &str,
    pool_size: u32,
) -> (std::net::SocketAddr, std::path::PathBuf) {
    e2e::sharded_proxy(
        name,
        shards,
        &format!("name: {name}\ntype: hash\nkey_type: {key_type}\npartitions: 4\nassign: {{ s0: [0, 2], s1: [1, 3] }}\ntables: [{{ table: {table}, column: {column} }}]\n"),
        "",
        &format!("{{ size: {pool_size} }}"),
    )
}

#[tokio::test]
async fn keyed_statements_reach_the_shard_of_their_key() {
    let shards = [create_database("route_s0"), create_database("route_s1")];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE accounts (account_id bigint PRIMARY KEY, balance int NOT NULL)",
        );
        psql_direct(
            db,
            "CREATE TABLE accounts_parent (account_id bigint) PARTITION BY HASH (account_id)",
        );
        psql_direct(db, "CREATE TABLE notes (id int)");
    }
    let (addr, dir) = two_shard_proxy(&shards, "route", "accounts", "account_id", "bigint", 5);
    let c = e2e::connect(&format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    ))
    .await;

    for id in 1..=300i64 {
        c.batch_execute(&format!(
            "INSERT INTO accounts (account_id, balance) VALUES ({id}, {})",
            id * 10
        ))
        .await
        .unwrap();
    }
    // Every row is on the shard that owns its remainder, as PostgreSQL computes it.
    let owners = [("0,2", &shards[0]), ("1,3", &shards[1])];
    let mut total = 0;
    for (remainders, db) in owners {
        let n: i64 = psql_direct(db, "SELECT count(*) FROM accounts")
            .parse()
            .unwrap();
        let misplaced = psql_direct(
            db,
            &format!(
                "SELECT count(*) FROM accounts WHERE NOT (SELECT bool_or(satisfies_hash_partition('accounts_parent'::regclass, 4, r, account_id)) FROM unnest(ARRAY[{remainders}]) r)"
            ),
        );
        assert_eq!(misplaced, "0", "{db}");
        assert!(n > 50, "{db} holds {n} rows");
        total += n;
    }
    assert_eq!(total, 300);
    // Reads and writes by key find their row.
    for id in [1i64, 2, 77, 300] {
        let rows = c
            .simple_query(&format!(
                "SELECT balance FROM accounts WHERE account_id = {id}"
            ))
            .await
            .unwrap();
        let v: Vec<String> = rows
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(v, vec![(id * 10).to_string()], "account {id}");
    }
    c.batch_execute("UPDATE accounts SET balance = 0 WHERE account_id = 77")
        .await
        .unwrap();
    // Tables no map names live on the home shard s0.
    c.batch_execute("INSERT INTO notes VALUES (1)")
        .await
        .unwrap();
    assert_eq!(psql_direct(&shards[0], "SELECT count(*) FROM notes"), "1");
    assert_eq!(psql_direct(&shards[1], "SELECT count(*) FROM notes"), "0");

    // Merged across shards (tests/tests/merge.rs has the rest).
    let n = simple_rows(
        &c.simple_query("SELECT count(*) FROM accounts")
            .await
            .unwrap(),
    );
    let total: i64 = shards
        .iter()
        .map(|db| {
            psql_direct(db, "SELECT count(*) FROM accounts")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(n, vec![vec![Some(total.to_string())]]);
    let limited = simple_rows(
        &c.simple_query("SELECT account_id FROM accounts ORDER BY account_id LIMIT 3")
            .await
            .unwrap(),
    );
    assert_eq!(limited.len() as i64, total.min(3));
    // Refused, not run on the wrong shard. (A DELETE without a key runs on every shard:
    // tests/tests/transactions.rs.)
    for sql in [
        "UPDATE accounts SET account_id = account_id + 1000 WHERE account_id = 5",
        "COPY accounts TO '/tmp/accounts.out'",
        "DO $$ BEGIN UPDATE accounts SET balance = 1; END $$",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e:?}");
        assert!(e.as_db_error().unwrap().hint().is_some(), "{sql}");
    }
    // Keys bound as parameters, binary (tokio-postgres) and text, route at Bind.
    for id in [5i64, 6, 250] {
        let row = c
            .query_one("SELECT balance FROM accounts WHERE account_id = $1", &[&id])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), id as i32 * 10);
        let row = c
            .query_one(
                "SELECT balance FROM accounts WHERE account_id = $1::text::int8",
                &[&id.to_string()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), id as i32 * 10);
    }
    let e = c
        .query(
            "SELECT balance FROM accounts WHERE account_id = $1",
            &[&None::<i64>],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    // A transaction stays on one shard.
    let (a, b) = {
        let owner = |id: i64| {
            psql_direct(
                &shards[0],
                &format!("SELECT count(*) FROM accounts WHERE account_id = {id}"),
            ) == "1"
        };
        let a = (1..300).find(|i| owner(*i)).unwrap();
        let b = (1..300).find(|i| !owner(*i)).unwrap();
        (a, b)
    };
    // (Each statement of a multi-statement query routes: the BEGIN goes with the UPDATE.)
    c.batch_execute(&format!(
        "BEGIN; UPDATE accounts SET balance = 5 WHERE account_id = {b}"
    ))
    .await
    .unwrap();
    // The other shard joins the transaction, and the ROLLBACK undoes both.
    c.batch_execute(&format!(
        "UPDATE accounts SET balance = 5 WHERE account_id = {a}"
    ))
    .await
    .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_ne!(
        psql_direct(
            &shards[0],
            &format!("SELECT balance FROM accounts WHERE account_id = {a}")
        ),
        "5"
    );
    // Code the router cannot see into runs on the shard the transaction is pinned to.
    c.batch_execute(&format!(
        "BEGIN; UPDATE accounts SET balance = 8 WHERE account_id = {b}"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "DO $$ BEGIN UPDATE accounts SET balance = balance + 1 WHERE account_id = {b}; END $$"
    ))
    .await
    .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        psql_direct(
            &shards[1],
            &format!("SELECT balance FROM accounts WHERE account_id = {b}")
        ),
        "9"
    );
    c.batch_execute(&format!("UPDATE accounts SET balance = 6 WHERE account_id = {b}; UPDATE accounts SET balance = 6 WHERE account_id = {b}")).await.unwrap();
    assert_eq!(
        psql_direct(
            &shards[1],
            &format!("SELECT balance FROM accounts WHERE account_id = {b}")
        ),
        "6"
    );
    // A query of statements for both shards is one transaction over them.
    c.batch_execute(&format!("UPDATE accounts SET balance = 7 WHERE account_id = {a}; UPDATE accounts SET balance = 7 WHERE account_id = {b}"))
        .await
        .unwrap();
    for (db, id) in [(&shards[0], a), (&shards[1], b)] {
        assert_eq!(
            psql_direct(
                db,
                &format!("SELECT balance FROM accounts WHERE account_id = {id}")
            ),
            "7"
        );
    }
    // A hint names the shard for what the router cannot see.
    let rows = c
        .simple_query("/* shardgate: shard=s1 */ SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let n = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(
        n,
        Some(psql_direct(&shards[1], "SELECT count(*) FROM accounts"))
    );
    // The same as session settings, kept by the proxy and never sent to PostgreSQL.
    let first_value = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
    };
    let on_s1 = Some(Some(psql_direct(
        &shards[1],
        "SELECT count(*) FROM accounts",
    )));
    c.batch_execute("SET shardgate.shard = 's1'").await.unwrap();
    let n = first_value(
        c.simple_query("SELECT count(*) FROM accounts")
            .await
            .unwrap(),
    );
    assert_eq!(n, on_s1);
    let seen = first_value(
        c.simple_query("SELECT current_setting('shardgate.shard', true)")
            .await
            .unwrap(),
    );
    assert_eq!(seen, Some(None), "the setting reached PostgreSQL");
    c.batch_execute("RESET shardgate.shard").await.unwrap();
    // Without the hint the count is every shard's, merged.
    let all = first_value(
        c.simple_query("SELECT count(*) FROM accounts")
            .await
            .unwrap(),
    );
    assert_ne!(all, on_s1);
    let e = c
        .batch_execute("SET shardgate.shard = 's9'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    c.batch_execute(&format!("SET shardgate.key = '{b}'"))
        .await
        .unwrap();
    let n = first_value(
        c.simple_query("SELECT count(*) FROM accounts")
            .await
            .unwrap(),
    );
    assert_eq!(n, on_s1);
    c.batch_execute("RESET shardgate.key").await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// pgbench's select-only script against pgbench_accounts hash-sharded by aid over two
/// shards, each holding only its own rows.
#[test]
fn pgbench_select_only_reaches_only_the_owning_shard() {
    let info = cluster();
    let shards = [create_database("bench_s0"), create_database("bench_s1")];
    let url = |db: &str| {
        format!(
            "postgres://{}:{SERVER_PASSWORD}@127.0.0.1:{}/{db}",
            info.superuser, info.port
        )
    };
    let remainders = ["0, 2", "1, 3"];
    for (db, owned) in shards.iter().zip(remainders) {
        let out = std::process::Command::new("pgbench")
            .args(["-i", "-s", "1", "-q", "-I", "dtg"])
            .arg(url(db))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        psql_direct(
            db,
            &format!(
                "CREATE TABLE accounts_parent (aid int) PARTITION BY HASH (aid);
                 DELETE FROM pgbench_accounts WHERE NOT (SELECT bool_or(satisfies_hash_partition('accounts_parent'::regclass, 4, r, aid)) FROM unnest(ARRAY[{owned}]) r);
                 ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid);"
            ),
        );
        psql_direct(db, "VACUUM ANALYZE pgbench_accounts");
    }
    let (addr, dir) = two_shard_proxy(&shards, "bench", "pgbench_accounts", "aid", "integer", 8);
    let proxy_url = format!(
        "postgres://app:{APP_PASSWORD}@127.0.0.1:{}/app",
        addr.port()
    );
    let stats = |db: &str| -> (i64, i64) {
        let v = psql_direct(
            db,
            "SELECT idx_scan, idx_tup_fetch FROM pg_stat_user_tables WHERE relname = 'pgbench_accounts'",
        );
        let (a, b) = v.split_once('|').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let before: Vec<(i64, i64)> = shards.iter().map(|d| stats(d)).collect();
    for mode in ["simple", "extended", "prepared"] {
        let out = std::process::Command::new("pgbench")
            .args(["-n", "-S", "-c", "16", "-j", "2", "-t", "200", "-M", mode])
            .arg(&proxy_url)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "-M {mode}:\n{text}");
        assert!(
            text.contains("number of failed transactions: 0 (0.000%)"),
            "-M {mode}:\n{text}"
        );
        assert!(
            text.contains("actually processed: 3200/3200"),
            "-M {mode}:\n{text}"
        );
    }
    // Statistics are reported asynchronously; wait for them (bounded).
    let mut served = Vec::new();
    for _ in 0..50 {
        served = shards
            .iter()
            .zip(&before)
            .map(|(d, b)| {
                let (scan, fetch) = stats(d);
                (scan - b.0, fetch - b.1)
            })
            .collect();
        if served.iter().map(|s| s.0).sum::<i64>() >= 9600 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Every lookup found its row: no shard was asked for a key it does not own.
    assert_eq!(served.iter().map(|s| s.0).sum::<i64>(), 9600, "{served:?}");
    for (scans, fetched) in &served {
        assert!(*scans > 1000, "{served:?}");
        assert_eq!(scans, fetched, "index scans that found no row: {served:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
