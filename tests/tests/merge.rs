//! Reads merged across shards, each answer compared with one PostgreSQL database holding
//! all the rows: ORDER BY (every direction and NULLS placement), LIMIT/OFFSET, aggregates,
//! GROUP BY/HAVING, DISTINCT and DISTINCT ON, over the simple protocol (text) and the
//! extended one (tokio-postgres, binary results); and what cannot be merged exactly is
//! refused with 0A000.

use e2e::{create_database, psql_direct, simple_rows, sqlstate, APP_PASSWORD};

const SCHEMA: &str = "CREATE TABLE t (id bigint PRIMARY KEY, g int, name text, amount numeric(10,2), score float8, day date, at timestamptz, ok bool)";

/// Rows with NULLs, ties, negative numbers, NaN and infinities.
fn rows() -> String {
    let mut v = Vec::new();
    for i in 1..=60i64 {
        let g = if i % 7 == 0 {
            "NULL".to_owned()
        } else {
            (i % 5).to_string()
        };
        let name = if i % 11 == 0 {
            "NULL".to_owned()
        } else {
            format!("'n{}'", i % 9)
        };
        let amount = if i % 13 == 0 {
            "NULL".to_owned()
        } else {
            format!("{}.{:02}", (i * 37) % 200 - 50, i % 100)
        };
        let score = match i % 17 {
            0 => "'NaN'".to_owned(),
            1 => "'Infinity'".to_owned(),
            2 => "'-Infinity'".to_owned(),
            3 => "NULL".to_owned(),
            _ => format!("{}.5", (i * 7) % 23 - 11),
        };
        let day = if i % 8 == 0 {
            "NULL".to_owned()
        } else {
            format!("'2026-0{}-{:02}'", 1 + i % 9, 1 + i % 27)
        };
        let at = format!("'2026-03-{:02} {:02}:00:00+02'", 1 + i % 20, i % 24);
        let ok = if i % 6 == 0 {
            "NULL"
        } else if i % 4 == 0 {
            "false"
        } else {
            "true"
        };
        v.push(format!(
            "({i}, {g}, {name}, {amount}, {score}, {day}, {at}, {ok})"
        ));
    }
    format!(
        "INSERT INTO t (id, g, name, amount, score, day, at, ok) VALUES {}",
        v.join(", ")
    )
}

struct Setup {
    single: String,
    conninfo: String,
}

impl Setup {
    /// A client of the single database.
    async fn direct(&self) -> tokio_postgres::Client {
        e2e::connect(&format!(
            "host=127.0.0.1 port={} user={} password={} dbname={}",
            e2e::cluster().port,
            e2e::cluster().superuser,
            e2e::SERVER_PASSWORD,
            self.single
        ))
        .await
    }
}

fn setup(name: &str) -> Setup {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
        create_database(&format!("{name}_s2")),
    ];
    let single = create_database(&format!("{name}_one"));
    psql_direct(&single, SCHEMA);
    psql_direct(&single, &rows());
    let (addr, _dir) = e2e::sharded_proxy(
        name,
        &shards,
        &format!("name: {name}\ntype: hash\nkey_type: bigint\npartitions: 6\nassign: {{ s0: [0, 3], s1: [1, 4], s2: [2, 5] }}\ntables: [{{ table: t, column: id }}]\n"),
        "",
        "{ size: 4 }",
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    );
    Setup { single, conninfo }
}

/// Statements whose ORDER BY is total: compared row for row.
const ORDERED: &[&str] = &[
    "SELECT id, name FROM t ORDER BY id LIMIT 5",
    "SELECT id, name FROM t ORDER BY id DESC LIMIT 5 OFFSET 3",
    "SELECT id, g FROM t ORDER BY g NULLS FIRST, id",
    "SELECT id, g FROM t ORDER BY g DESC, id DESC",
    "SELECT id, g FROM t ORDER BY g DESC NULLS LAST, id LIMIT 12",
    "SELECT id, amount FROM t ORDER BY amount, id",
    "SELECT id, score FROM t ORDER BY score DESC, id",
    "SELECT id, day FROM t ORDER BY day NULLS FIRST, id",
    "SELECT id, at FROM t ORDER BY at, id LIMIT 10",
    "SELECT name, id FROM t ORDER BY 1, 2",
    "SELECT id AS k, g AS grp FROM t ORDER BY grp, k OFFSET 50",
    "SELECT id, g * 2 AS dbl FROM t ORDER BY g * 2, id LIMIT 7",
    "SELECT count(*) FROM t",
    "SELECT count(*), count(g), sum(g), min(g), max(g) FROM t",
    "SELECT sum(amount), avg(amount), avg(g), min(amount), max(amount) FROM t",
    "SELECT min(day), max(day), min(at), max(at), min(name), max(name) FROM t",
    "SELECT min(score), max(score) FROM t",
    "SELECT bool_and(ok), bool_or(ok), every(ok) FROM t",
    "SELECT count(*) FILTER (WHERE g > 2), sum(amount) FILTER (WHERE ok) FROM t",
    "SELECT count(*), sum(g) FROM t WHERE id < 0",
    "SELECT g, count(*), sum(amount), avg(amount) FROM t GROUP BY g ORDER BY g",
    "SELECT g, count(*) FROM t GROUP BY g HAVING count(*) >= 10 ORDER BY g NULLS FIRST",
    "SELECT g, max(name) FROM t GROUP BY g ORDER BY count(*) DESC, g",
    "SELECT name, avg(g) FROM t GROUP BY name ORDER BY name",
    "SELECT name, avg(amount) AS a FROM t GROUP BY name ORDER BY 2 DESC NULLS LAST, 1",
    "SELECT name, avg(amount) AS a FROM t GROUP BY name ORDER BY a, name LIMIT 4",
    "SELECT DISTINCT g FROM t ORDER BY g",
    "SELECT DISTINCT ON (g) g, id FROM t ORDER BY g, id",
    "SELECT DISTINCT ON (g) g, id, name FROM t ORDER BY g, id DESC",
];

/// Statements without a total order: compared as multisets.
const UNORDERED: &[&str] = &[
    "SELECT DISTINCT name FROM t",
    "SELECT g, count(*) FROM t GROUP BY g",
    "SELECT DISTINCT g, ok FROM t",
    "SELECT g % 2 AS parity, count(*), min(id) FROM t GROUP BY g % 2",
];

/// Statements refused with 0A000 (and why, in part).
const REFUSED: &[(&str, &str)] = &[
    ("SELECT sum(score) FROM t", "float"),
    ("SELECT count(DISTINCT g) FROM t", "DISTINCT"),
    ("SELECT string_agg(name, ',') FROM t", "string_agg"),
];

#[tokio::test]
async fn merged_reads_equal_one_database() {
    let s = setup("mrg");
    let c = e2e::connect(&s.conninfo).await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute(&rows()).await.unwrap();
    let direct = s.direct().await;
    for tz in ["SET TimeZone = 'UTC'"] {
        c.batch_execute(tz).await.unwrap();
        direct.batch_execute(tz).await.unwrap();
    }
    for sql in ORDERED.iter().chain(UNORDERED) {
        // Simple protocol: every value as text, with the same session settings.
        let want = simple_rows(&direct.simple_query(sql).await.unwrap());
        let got = simple_rows(
            &c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
        );
        let (mut w, mut g) = (want.clone(), got.clone());
        if UNORDERED.contains(sql) {
            w.sort();
            g.sort();
        }
        assert_eq!(g, w, "simple protocol: {sql}");
        // Extended protocol, binary results: the column types, and each value's bytes.
        let want = direct.query(*sql, &[]).await.unwrap();
        let got = c
            .query(*sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} (extended): {e:?}"));
        assert_eq!(got.len(), want.len(), "extended: {sql}");
        assert!(!want.is_empty(), "no rows: {sql}");
        let cols: Vec<_> = want[0]
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect();
        let got_cols: Vec<_> = got[0]
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect();
        assert_eq!(got_cols, cols, "RowDescription: {sql}");
        if !UNORDERED.contains(sql) {
            for (g, w) in got.iter().zip(&want) {
                for i in 0..w.len() {
                    let raw = |r: &tokio_postgres::Row| -> Option<Vec<u8>> {
                        r.try_get::<_, Option<Raw>>(i).unwrap().map(|x| x.0)
                    };
                    assert_eq!(raw(g), raw(w), "extended, column {i}: {sql}");
                }
            }
        }
    }
    for (sql, why) in REFUSED {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}");
        let msg = e.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains(why), "{sql}: {msg}");
        // The session goes on.
        c.simple_query("SELECT 1").await.unwrap();
    }
}

/// A value's bytes as the server sent them (binary format).
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

#[tokio::test]
async fn insert_without_a_column_list_finds_the_keys_in_the_catalog() {
    let s = setup("mrgins");
    let c = e2e::connect(&s.conninfo).await;
    c.batch_execute(SCHEMA).await.unwrap();
    // One row, several rows over the shards, fewer values than columns, and binary
    // parameters through the extended protocol.
    c.batch_execute("INSERT INTO t VALUES (100000, 1, 'z')")
        .await
        .unwrap();
    let m = c
        .simple_query(
            "INSERT INTO t VALUES (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6) RETURNING id",
        )
        .await
        .unwrap();
    let mut returned: Vec<String> = simple_rows(&m)
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    returned.sort();
    assert_eq!(returned, ["1", "2", "3", "4", "5", "6"]);
    c.execute("INSERT INTO t VALUES ($1, $2)", &[&7i64, &7i32])
        .await
        .unwrap();
    let n = simple_rows(
        &c.simple_query("SELECT count(*), sum(g) FROM t")
            .await
            .unwrap(),
    );
    assert_eq!(n, vec![vec![Some("8".to_owned()), Some("29".to_owned())]]);
    // Each row on the shard of its key: reading by key finds it.
    for id in [1i64, 2, 3, 4, 5, 6, 7, 100000] {
        let rows = c
            .query("SELECT id FROM t WHERE id = $1", &[&id])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "row {id}");
    }
    // INSERT ... SELECT from the same map, by key, with ON CONFLICT: on the key's shard.
    c.batch_execute(
        "INSERT INTO t (id, g) SELECT id, g + 100 FROM t WHERE id = 5 ON CONFLICT (id) DO UPDATE SET g = EXCLUDED.g",
    )
    .await
    .unwrap();
    let g = simple_rows(
        &c.simple_query("SELECT g FROM t WHERE id = 5")
            .await
            .unwrap(),
    );
    assert_eq!(g, vec![vec![Some("105".to_owned())]]);
    // More values than the table has columns: refused (the router cannot place them).
    let e = c
        .simple_query("INSERT INTO t VALUES (9, 1, 'a', 1, 1, '2026-01-01', now(), true, 'extra')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
}

#[tokio::test]
async fn sql_prepare_and_execute_route_by_their_arguments() {
    let s = setup("mrgprep");
    let c = e2e::connect(&s.conninfo).await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute(&rows()).await.unwrap();
    let direct = s.direct().await;
    for sql in [
        "PREPARE p1(bigint) AS SELECT id, name FROM t WHERE id = $1",
        "PREPARE p2 AS SELECT count(*), sum(amount) FROM t WHERE g = $1",
    ] {
        c.batch_execute(sql).await.unwrap();
        direct.batch_execute(sql).await.unwrap();
    }
    // Every key, wherever it lives, through one prepared statement; and a merge.
    for sql in (1..=60)
        .map(|k| format!("EXECUTE p1({k})"))
        .chain((0..5).map(|g| format!("EXECUTE p2({g})")))
    {
        let want = simple_rows(&direct.simple_query(&sql).await.unwrap());
        let got = simple_rows(&c.simple_query(&sql).await.unwrap());
        assert_eq!(got, want, "{sql}");
    }
    // Inside a transaction, on the shard of the key.
    c.batch_execute("BEGIN").await.unwrap();
    let got = simple_rows(&c.simple_query("EXECUTE p1(17)").await.unwrap());
    assert_eq!(got.len(), 1);
    c.batch_execute("COMMIT").await.unwrap();
    // The statement is the proxy's: it outlives server connections and is gone after
    // DEALLOCATE.
    let e = c.batch_execute("PREPARE p1 AS SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P05");
    let e = c.simple_query("EXECUTE p1(now())").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    c.batch_execute("DEALLOCATE p1").await.unwrap();
    let e = c.simple_query("EXECUTE p1(1)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "26000");
    c.batch_execute("DISCARD ALL").await.unwrap();
    let e = c.simple_query("EXECUTE p2(1)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "26000");
}

/// Past `limits.merge_memory`, a merge that must hold its groups fails with 54000 (the
/// session goes on), while an ORDER BY merge, which holds one row per shard, still answers.
#[tokio::test]
async fn a_merge_past_its_memory_limit_fails_with_54000() {
    let shards = [
        create_database("mrgmem_s0"),
        create_database("mrgmem_s1"),
        create_database("mrgmem_s2"),
    ];
    let (addr, _dir) = e2e::sharded_proxy(
        "mrgmem",
        &shards,
        "name: mrgmem\ntype: hash\nkey_type: bigint\npartitions: 3\nassign: { s0: [0], s1: [1], s2: [2] }\ntables: [{ table: t, column: id }]\n",
        "",
        "{ size: 4 }\nlimits: { merge_memory: 4096 }",
    );
    let c = e2e::connect(&format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    ))
    .await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute(&rows()).await.unwrap();
    let values: Vec<String> = (1000..2000)
        .map(|i| format!("({i}, {i}, 'x{i}')"))
        .collect();
    c.batch_execute(&format!(
        "INSERT INTO t (id, g, name) VALUES {}",
        values.join(", ")
    ))
    .await
    .unwrap();
    let e = c
        .simple_query("SELECT g, count(*) FROM t GROUP BY g")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e:?}");
    let e = c
        .simple_query("SELECT DISTINCT name FROM t")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e:?}");
    // One row per shard at a time: any size.
    let rows = simple_rows(
        &c.simple_query("SELECT id, name FROM t ORDER BY id")
            .await
            .unwrap(),
    );
    assert_eq!(rows.len(), 1060);
    assert!(rows
        .windows(2)
        .all(|w| w[0][0].as_ref().unwrap().parse::<i64>().unwrap()
            < w[1][0].as_ref().unwrap().parse::<i64>().unwrap()));
}

/// A user-defined aggregate over several shards is found in the catalog and refused; plain
/// functions run as before, and on one shard the aggregate runs.
#[tokio::test]
async fn user_defined_aggregates_are_never_concatenated() {
    let s = setup("mrguda");
    let c = e2e::connect(&s.conninfo).await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute(&rows()).await.unwrap();
    let count = |m: &[tokio_postgres::SimpleQueryMessage]| simple_rows(m).len();
    // Learned (not an aggregate) before the aggregate exists.
    assert_eq!(
        count(
            &c.simple_query("SELECT my_total(g) IS NULL FROM t")
                .await
                .unwrap_or_default()
        ),
        0
    );
    c.batch_execute("CREATE AGGREGATE my_total(int) (sfunc = int4pl, stype = int)")
        .await
        .unwrap();
    for sql in [
        "SELECT my_total(g) FROM t",
        "SELECT my_total(g) + 1 FROM t",
        "SELECT id FROM t WHERE id = 1 UNION ALL SELECT my_total(g) FROM t",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}");
        let msg = e.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains("my_total"), "{sql}: {msg}");
    }
    let one = simple_rows(
        &c.simple_query("SELECT my_total(g) FROM t WHERE id = 5")
            .await
            .unwrap(),
    );
    assert_eq!(one, vec![vec![Some("0".to_owned())]]);
    assert_eq!(
        count(&c.simple_query("SELECT lower(name) FROM t").await.unwrap()),
        60
    );
    let n = c
        .query("SELECT upper(name) FROM t WHERE g > $1", &[&0i32])
        .await
        .unwrap()
        .len();
    assert!(n > 0);
    let e = c
        .query("SELECT my_total(g) FROM t WHERE g > $1", &[&0i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
}
