//! Statements that run on several shards: DDL and reference-table writes on every shard,
//! keyless reads and IN lists with their rows concatenated, multi-row INSERTs split by
//! shard, counts summed; and what still needs a merge is refused.

use e2e::{create_database, psql_direct, simple_counts, simple_rows, sqlstate, APP_PASSWORD};

/// 4 hash partitions of `items.id` (bigint): s0 owns remainders 0 and 2, s1 owns 1 and 3;
/// `countries` is a reference table.
fn proxy(name: &str, pool: &str) -> ([String; 2], String, std::path::PathBuf) {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
    ];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE items_parent (id bigint) PARTITION BY HASH (id)",
        );
    }
    let (addr, dir) = e2e::sharded_proxy(
        name,
        &shards,
        &format!("name: {name}\ntype: hash\nkey_type: bigint\npartitions: 4\nassign: {{ s0: [0, 2], s1: [1, 3] }}\ntables: [{{ table: items, column: id }}]\n"),
        "reference_tables: [countries]",
        pool,
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    );
    (shards, conninfo, dir)
}

/// Rows of `items` on a shard that the map does not send there.
fn misplaced(db: &str, remainders: &str) -> String {
    psql_direct(
        db,
        &format!("SELECT count(*) FROM items WHERE NOT (SELECT bool_or(satisfies_hash_partition('items_parent'::regclass, 4, r, id)) FROM unnest(ARRAY[{remainders}]) r)"),
    )
}

fn count(db: &str, sql: &str) -> i64 {
    psql_direct(db, sql).parse().unwrap()
}

#[tokio::test]
async fn statements_for_several_shards_run_on_each_and_merge() {
    let (shards, conninfo, dir) = proxy("fan", "{ size: 4 }");
    let c = e2e::connect(&conninfo).await;

    // DDL runs on every shard, by the simple and the extended protocol.
    let m = c
        .simple_query("CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL)")
        .await
        .unwrap();
    assert!(matches!(
        m.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(0))
    ));
    c.execute("CREATE INDEX items_owner ON items (owner)", &[])
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text)")
        .await
        .unwrap();
    // A query of several DDL statements runs whole on every shard; mixed with a statement
    // for one shard, it is refused.
    c.batch_execute("CREATE TABLE notes (id int); CREATE INDEX notes_id ON notes (id);")
        .await
        .unwrap();
    let e = c
        .batch_execute(
            "CREATE TABLE more_notes (id int); INSERT INTO items (id, owner) VALUES (1, 'x')",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    for db in &shards {
        assert_eq!(
            psql_direct(db, "SELECT count(*) FROM pg_class WHERE relname IN ('items', 'items_owner', 'countries', 'notes', 'notes_id')"),
            "5",
            "{db}"
        );
    }

    // A multi-row INSERT is split: each shard gets its own rows; the count is the sum.
    let values: Vec<String> = (1..=40).map(|i| format!("({i}, 'o{}')", i % 3)).collect();
    let m = c
        .simple_query(&format!(
            "INSERT INTO items (id, owner) VALUES {} RETURNING id",
            values.join(", ")
        ))
        .await
        .unwrap();
    assert_eq!(simple_counts(&m), vec![40]);
    let mut returned: Vec<i64> = simple_rows(&m)
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    returned.sort();
    assert_eq!(returned, (1..=40).collect::<Vec<i64>>());
    let on = [
        count(&shards[0], "SELECT count(*) FROM items"),
        count(&shards[1], "SELECT count(*) FROM items"),
    ];
    assert_eq!(on[0] + on[1], 40);
    assert!(on[0] > 5 && on[1] > 5, "{on:?}");
    assert_eq!(misplaced(&shards[0], "0, 2"), "0");
    assert_eq!(misplaced(&shards[1], "1, 3"), "0");

    // With bound parameters: each shard gets its rows' values, renumbered.
    let n = c
        .execute(
            "INSERT INTO items (id, owner) VALUES ($1, $2), ($3, $2), ($4, $5) ON CONFLICT (id) DO UPDATE SET owner = $6",
            &[&101i64, &"p", &102i64, &103i64, &"q", &"r"],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    for db in &shards {
        assert!(
            count(db, "SELECT count(*) FROM items WHERE id > 100") >= 1,
            "{db}"
        );
    }
    assert_eq!(misplaced(&shards[0], "0, 2"), "0");
    assert_eq!(misplaced(&shards[1], "1, 3"), "0");
    let rows = c
        .query(
            "INSERT INTO items (id, owner) VALUES ($1, 'x'), ($2, 'x') ON CONFLICT (id) DO UPDATE SET owner = $3 RETURNING id, owner",
            &[&101i64, &102i64, &"again"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "again"));
    let n = c
        .execute(
            "DELETE FROM items WHERE id IN ($1, $2, $3)",
            &[&101i64, &102i64, &103i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);

    // A keyless read is every shard's rows, concatenated; extended and simple.
    let mut ids: Vec<i64> = c
        .query("SELECT id FROM items WHERE owner <> $1", &[&"none"])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=40).collect::<Vec<i64>>());
    let m = c.simple_query("SELECT id, owner FROM items").await.unwrap();
    assert_eq!(simple_rows(&m).len(), 40);
    assert_eq!(simple_counts(&m), vec![40]);

    // An IN list over both shards reaches both; constants and bound parameters.
    let m = c
        .simple_query("SELECT id FROM items WHERE id IN (1, 2, 3, 4, 5, 6)")
        .await
        .unwrap();
    assert_eq!(simple_counts(&m), vec![6]);
    let rows = c
        .query(
            "SELECT owner FROM items WHERE id IN ($1, $2, $3)",
            &[&7i64, &8i64, &9i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let n = c
        .execute(
            "UPDATE items SET owner = 'z' WHERE id IN ($1, $2, $3, $4)",
            &[&1i64, &2i64, &3i64, &4i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(
        count(&shards[0], "SELECT count(*) FROM items WHERE owner = 'z'")
            + count(&shards[1], "SELECT count(*) FROM items WHERE owner = 'z'"),
        4
    );
    let m = c
        .simple_query("DELETE FROM items WHERE id IN (38, 39, 40)")
        .await
        .unwrap();
    assert_eq!(simple_counts(&m), vec![3]);

    // A prepared statement for several shards, executed again with other keys.
    let st = c
        .prepare("SELECT id FROM items WHERE id IN ($1, $2)")
        .await
        .unwrap();
    for (a, b) in [(10i64, 11i64), (12, 13), (14, 15)] {
        let rows = c.query(&st, &[&a, &b]).await.unwrap();
        let mut got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        got.sort();
        assert_eq!(got, vec![a, b]);
    }

    // Reference tables: writes reach every shard, reads one.
    c.batch_execute("INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France')")
        .await
        .unwrap();
    c.execute("INSERT INTO countries VALUES ($1, $2)", &[&"it", &"Italy"])
        .await
        .unwrap();
    for db in &shards {
        assert_eq!(psql_direct(db, "SELECT count(*) FROM countries"), "3");
    }
    let row = c
        .query_one("SELECT count(*) FROM countries", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);

    // An error on one shard is the client's error; the session goes on.
    let e = c
        .batch_execute("INSERT INTO items (id, owner) VALUES (1, 'dup'), (2, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505", "{e:?}");
    // The shards' parts of a write commit together: a duplicate key on one shard leaves
    // nothing of the statement on the other.
    let on_s0 = |id: i64| {
        psql_direct(
            &shards[0],
            &format!("SELECT satisfies_hash_partition('items_parent'::regclass, 4, 0, {id}::bigint) OR satisfies_hash_partition('items_parent'::regclass, 4, 2, {id}::bigint)"),
        ) == "t"
    };
    let fresh = (500i64..600).find(|i| on_s0(*i) != on_s0(1)).unwrap();
    for sql in [
        format!("INSERT INTO items (id, owner) VALUES ({fresh}, 'new'), (1, 'dup')"),
        format!("INSERT INTO items (id, owner) VALUES (1, 'dup'), ({fresh}, 'new')"),
    ] {
        let e = c.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "23505", "{e:?}");
        for db in &shards {
            assert_eq!(
                count(
                    db,
                    &format!("SELECT count(*) FROM items WHERE id = {fresh}")
                ),
                0,
                "{sql}"
            );
        }
    }
    let e = c.query("SELECT id / 0 FROM items", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012", "{e:?}");
    let row = c
        .query_one("SELECT owner FROM items WHERE id = $1", &[&1i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "z");

    // A result bigger than the proxy's buffers streams through whole.
    let values: Vec<String> = (1000..6000)
        .map(|i| format!("({i}, '{}')", "x".repeat(40)))
        .collect();
    c.batch_execute(&format!(
        "INSERT INTO items (id, owner) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();
    let rows = c.query("SELECT id, owner FROM items", &[]).await.unwrap();
    assert_eq!(rows.len(), 5000 + 37);

    // Pipelined behind a single-shard statement.
    let (a, b) = tokio::join!(
        c.query("SELECT owner FROM items WHERE id = $1", &[&5i64]),
        c.query("SELECT id FROM items WHERE id IN ($1, $2)", &[&5i64, &6i64]),
    );
    assert_eq!(a.unwrap().len(), 1);
    assert_eq!(b.unwrap().len(), 2);

    // A cancel reaches every shard's backend.
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    for db in &shards {
        assert!(count(db, "SELECT count(*) FROM items WHERE id BETWEEN 1 AND 12") > 0);
    }
    let started = std::time::Instant::now();
    let e = c
        .simple_query(
            "SELECT pg_sleep(30) FROM items WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)",
        )
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert!(
        started.elapsed().as_secs() < 25,
        "a shard was not cancelled"
    );

    // What needs a merge is merged (tests/tests/merge.rs has the rest); several shards
    // inside a transaction are refused.
    let total: i64 = shards
        .iter()
        .map(|db| count(db, "SELECT count(*) FROM items"))
        .sum();
    let n = simple_rows(&c.simple_query("SELECT count(*) FROM items").await.unwrap());
    assert_eq!(n, vec![vec![Some(total.to_string())]]);
    let ids: Vec<i64> = simple_rows(
        &c.simple_query("SELECT id FROM items ORDER BY id")
            .await
            .unwrap(),
    )
    .into_iter()
    .map(|r| r[0].as_ref().unwrap().parse().unwrap())
    .collect();
    assert_eq!(ids.len() as i64, total);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut owners = simple_rows(
        &c.simple_query("SELECT DISTINCT owner FROM items")
            .await
            .unwrap(),
    );
    owners.sort();
    let mut want: Vec<Vec<Option<String>>> = shards
        .iter()
        .flat_map(|db| {
            psql_direct(db, "SELECT DISTINCT owner FROM items")
                .lines()
                .map(|l| vec![Some(l.to_owned())])
                .collect::<Vec<_>>()
        })
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(owners, want);
    // Inside a transaction a read of every shard runs on the transaction's shards, and
    // sees its own write.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE items SET owner = 'y' WHERE id = 5")
        .await
        .unwrap();
    let m = c
        .simple_query("SELECT id FROM items WHERE owner = 'y'")
        .await
        .unwrap();
    assert_eq!(simple_rows(&m), vec![vec![Some("5".to_owned())]]);
    c.batch_execute("ROLLBACK").await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn session_pooling_keeps_a_connection_per_shard() {
    let (shards, conninfo, dir) = proxy("fansess", "{ size: 2, mode: session }");
    let c = e2e::connect(&conninfo).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, owner text); CREATE TABLE notes (id int)",
    )
    .await
    .unwrap();
    c.batch_execute("SET application_name = 'fan-session'")
        .await
        .unwrap();
    let values: Vec<String> = (1..=20).map(|i| format!("({i}, 'o')")).collect();
    c.batch_execute(&format!(
        "INSERT INTO items (id, owner) VALUES {}",
        values.join(", ")
    ))
    .await
    .unwrap();
    c.batch_execute("INSERT INTO notes VALUES (1)")
        .await
        .unwrap();
    let on =
        |db: &str, id: i64| count(db, &format!("SELECT count(*) FROM items WHERE id = {id}")) == 1;
    let a: Vec<i64> = (1..=20).filter(|i| on(&shards[0], *i)).collect();
    let b: Vec<i64> = (1..=20).filter(|i| on(&shards[1], *i)).collect();
    assert!(!a.is_empty() && !b.is_empty());

    // Statements for either shard, one after the other and prepared, outside transactions.
    let st = c
        .prepare("SELECT current_setting('application_name') FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in [a[0], b[0], a[1], b[1]] {
        let row = c.query_one(&st, &[&id]).await.unwrap();
        // The session's settings follow it onto each shard's connection.
        assert_eq!(row.get::<_, String>(0), "fan-session");
    }
    // Unsharded tables stay on the home shard even while the session sits on another.
    c.query_one("SELECT id FROM items WHERE id = $1", &[&b[2]])
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // A transaction on the second shard.
    c.batch_execute(&format!(
        "BEGIN; UPDATE items SET owner = 't' WHERE id = {}; COMMIT",
        b[0]
    ))
    .await
    .unwrap();
    assert_eq!(
        psql_direct(
            &shards[1],
            &format!("SELECT owner FROM items WHERE id = {}", b[0])
        ),
        "t"
    );
    // Statements for several shards use the session's connections.
    let rows = c.query("SELECT id FROM items", &[]).await.unwrap();
    assert_eq!(rows.len(), 20);

    // Gone: every connection the session held was reset and handed back.
    drop(c);
    let mut left = String::new();
    for _ in 0..50 {
        left = [&shards[0], &shards[1]]
            .iter()
            .map(|db| {
                psql_direct(
                    db,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fan-session'",
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        if left == "0,0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, "0,0");
    let _ = std::fs::remove_dir_all(dir);
}

/// BEGIN waits for the statement that picks the shard; the transaction then runs there.
#[tokio::test]
async fn begin_waits_for_the_first_statement_that_picks_a_shard() {
    let (shards, conninfo, dir) = proxy("held", "{ size: 4 }");
    let mut c = e2e::connect(&conninfo).await;
    c.batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, owner text)")
        .await
        .unwrap();
    let ids: Vec<String> = (1..=20).map(|i| format!("({i}, 'a')")).collect();
    c.batch_execute(&format!(
        "INSERT INTO items (id, owner) VALUES {}",
        ids.join(", ")
    ))
    .await
    .unwrap();
    let on = |db: &str, id: i64| {
        psql_direct(db, &format!("SELECT count(*) FROM items WHERE id = {id}")) == "1"
    };
    // Keys owned by the second shard (the home shard is the first).
    let b: Vec<i64> = (1..=20).filter(|i| on(&shards[1], *i)).collect();
    let a: Vec<i64> = (1..=20).filter(|i| on(&shards[0], *i)).collect();

    // Simple protocol: the transaction starts on the second shard; the first joins it when
    // a statement needs it (tests/tests/transactions.rs has the rest), and both roll back.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE items SET owner = 'b' WHERE id = {}", b[0]))
        .await
        .unwrap();
    c.batch_execute(&format!("UPDATE items SET owner = 'b' WHERE id = {}", a[0]))
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    for (db, id) in [(&shards[1], b[0]), (&shards[0], a[0])] {
        assert_eq!(
            psql_direct(db, &format!("SELECT owner FROM items WHERE id = {id}")),
            "a"
        );
    }

    // Extended protocol (a driver's transaction object), committed on the second shard.
    let t = c.transaction().await.unwrap();
    let n = t
        .execute("UPDATE items SET owner = $1 WHERE id = $2", &[&"t", &b[1]])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let got: String = t
        .query_one("SELECT owner FROM items WHERE id = $1", &[&b[1]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "t");
    t.commit().await.unwrap();
    assert_eq!(
        psql_direct(
            &shards[1],
            &format!("SELECT owner FROM items WHERE id = {}", b[1])
        ),
        "t"
    );

    // A transaction that never ran a statement, and one the proxy failed.
    c.batch_execute("BEGIN; ").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .simple_query("SELECT rank() OVER (ORDER BY id) FROM items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    let e = c
        .simple_query(&format!("SELECT owner FROM items WHERE id = {}", b[0]))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    let m = c.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        m.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(0))
    ));
    // Pipelined statements for different shards, each in its own implicit transaction.
    let q = |id: i64| {
        let c = &c;
        async move {
            c.query_one("SELECT owner FROM items WHERE id = $1", &[&id])
                .await
                .map(|r| r.get::<_, String>(0))
        }
    };
    let (r1, r2, r3, r4) = tokio::join!(q(a[1]), q(b[2]), q(a[2]), q(b[3]));
    for r in [r1, r2, r3, r4] {
        assert!(r.is_ok(), "{r:?}");
    }
    // Pipelined behind a statement of the second shard, an unsharded table is still read
    // on the home shard.
    c.batch_execute("CREATE TABLE notes (id int)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO notes VALUES (1), (2)")
        .await
        .unwrap();
    let key = b[4];
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
    let (r1, r2) = tokio::join!(
        c.query_one("SELECT owner FROM items WHERE id = $1", &params),
        c.query_one("SELECT count(*) FROM notes", &[]),
    );
    r1.unwrap();
    assert_eq!(r2.unwrap().get::<_, i64>(0), 2);
    // While BEGIN is held: a savepoint cannot exist yet, and COMMIT AND CHAIN starts the next
    // transaction at once.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "3B001");
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("COMMIT AND CHAIN").await.unwrap();
    c.batch_execute(&format!(
        "UPDATE items SET owner = 'chain' WHERE id = {}",
        b[0]
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "UPDATE items SET owner = 'chain' WHERE id = {}",
        a[0]
    ))
    .await
    .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    // Still in the chained transaction: the ROLLBACK undid both.
    for (db, id) in [(&shards[1], b[0]), (&shards[0], a[0])] {
        assert_ne!(
            psql_direct(db, &format!("SELECT owner FROM items WHERE id = {id}")),
            "chain"
        );
    }
    // A BEGIN pipelined behind a statement of the first shard is held all the same.
    let first = format!("UPDATE items SET owner = 'p' WHERE id = {}", a[0]);
    let (r1, r2) = tokio::join!(c.batch_execute(&first), c.batch_execute("BEGIN"));
    r1.unwrap();
    r2.unwrap();
    c.batch_execute(&format!("UPDATE items SET owner = 'p' WHERE id = {}", b[0]))
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    // Back outside any transaction: the first shard's keys work again.
    c.batch_execute(&format!("UPDATE items SET owner = 'c' WHERE id = {}", a[0]))
        .await
        .unwrap();
    assert_eq!(
        psql_direct(
            &shards[0],
            &format!("SELECT owner FROM items WHERE id = {}", a[0])
        ),
        "c"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Rows driven by a reference table and filtered by a sharded one used to be sent to every
/// shard and concatenated: duplicated (EXISTS) or simply wrong (NOT EXISTS). Their
/// subqueries are answered first now; a sharded table hidden in the select list and one on
/// the null-extended side of an outer join are refused; a reference table joined to a
/// sharded table's own rows still concatenates.
#[tokio::test]
async fn rows_driven_by_a_reference_table_are_never_concatenated() {
    let (_shards, conninfo, dir) = proxy("fan_refdrv", "{ size: 4 }");
    let c = e2e::connect(&conninfo).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL); \
         CREATE TABLE countries (code text PRIMARY KEY, name text)",
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France'), ('it', 'Italy')",
    )
    .await
    .unwrap();
    // Owners 'de' on both shards (ids 1 and 2 hash to different shards), 'fr' on one.
    c.batch_execute(
        "INSERT INTO items (id, owner) VALUES (1, 'de'), (2, 'de'), (3, 'fr'), (4, 'fr')",
    )
    .await
    .unwrap();
    // EXISTS correlated by one equality is answered by reading the items' owners first:
    // each country once, as one database answers.
    for (q, want) in [
        (
            "SELECT c.code FROM countries c WHERE EXISTS (SELECT 1 FROM items i WHERE i.owner = c.code) ORDER BY 1",
            vec!["de", "fr"],
        ),
        (
            "SELECT c.code FROM countries c WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.owner = c.code)",
            vec!["it"],
        ),
    ] {
        let got: Vec<String> = simple_rows(&c.simple_query(q).await.unwrap())
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        assert_eq!(got, want, "{q}");
    }
    for q in [
        "SELECT c.code, (SELECT count(*) FROM items) FROM countries c",
        "SELECT c.code, i.id FROM countries c LEFT JOIN items i ON i.owner = c.code",
    ] {
        let e = c.simple_query(q).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{q}");
    }
    let m = c
        .simple_query("SELECT i.id, c.name FROM items i JOIN countries c ON c.code = i.owner")
        .await
        .unwrap();
    let mut rows = simple_rows(&m);
    rows.sort();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Session pooling over shards: a parked connection of a departing client that made a
/// temporary schema is closed, not handed to the next client with the schema still there.
#[tokio::test]
async fn a_parked_connection_with_a_temporary_schema_is_not_reused() {
    let (_shards, conninfo, dir) = proxy("fan_parktemp", "{ mode: session, size: 1 }");
    let c = e2e::connect(&conninfo).await;
    c.batch_execute("/* shardgate: shard=s1 */ CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    // The s1 connection is parked while the client works on s0.
    c.simple_query("/* shardgate: shard=s0 */ SELECT 1")
        .await
        .unwrap();
    drop(c);
    for _ in 0..20 {
        let next = e2e::connect(&conninfo).await;
        let m = next
            .simple_query("/* shardgate: shard=s1 */ SELECT pg_my_temp_schema() = 0")
            .await
            .unwrap();
        assert_eq!(simple_rows(&m), [[Some("t".to_owned())]]);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
