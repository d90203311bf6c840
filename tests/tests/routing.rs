//! Rows go to the shard the map says, and what the proxy cannot yet run on the right shards
//! is refused, never run on the wrong one. Two databases of the test cluster are the shards.

use e2e::{cluster, create_database, psql_direct, sqlstate, APP_PASSWORD, SERVER_PASSWORD};

#[tokio::test]
async fn keyed_statements_reach_the_shard_of_their_key() {
    let info = cluster();
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
    let dir = std::env::temp_dir().join(format!("sg-route-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("accounts.yaml"),
        "name: accounts\ntype: hash\nkey_type: bigint\npartitions: 4\nassign: { s0: [0, 2], s1: [1, 3] }\ntables: [{ table: accounts, column: account_id }]\n",
    )
    .unwrap();
    let yaml = format!(
        "users:\n  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}\n\
         databases:\n  app:\n    shard_maps: [accounts.yaml]\n    shards:\n\
         \x20     s0: {{ primary: \"postgres://127.0.0.1:{port}/{d0}\" }}\n\
         \x20     s1: {{ primary: \"postgres://127.0.0.1:{port}/{d1}\" }}\n",
        su = info.superuser,
        port = info.port,
        d0 = shards[0],
        d1 = shards[1],
    );
    let addr = e2e::start_proxy_from(&dir, &yaml);
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

    // Refused, not run on the wrong shard.
    for sql in [
        "SELECT count(*) FROM accounts",
        "SELECT * FROM accounts",
        "DELETE FROM accounts WHERE balance = 0",
        "CREATE TABLE more (id int)",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e:?}");
        assert!(e.as_db_error().unwrap().hint().is_some(), "{sql}");
    }
    let e = c
        .query(
            "SELECT balance FROM accounts WHERE account_id = $1",
            &[&5i64],
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
    let e = c
        .batch_execute(&format!(
            "UPDATE accounts SET balance = 5 WHERE account_id = {a}"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute(&format!("UPDATE accounts SET balance = 6 WHERE account_id = {b}; UPDATE accounts SET balance = 6 WHERE account_id = {b}")).await.unwrap();
    assert_eq!(
        psql_direct(
            &shards[1],
            &format!("SELECT balance FROM accounts WHERE account_id = {b}")
        ),
        "6"
    );
    let e = c
        .batch_execute(&format!("UPDATE accounts SET balance = 7 WHERE account_id = {a}; UPDATE accounts SET balance = 7 WHERE account_id = {b}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
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
    let _ = std::fs::remove_dir_all(dir);
}
