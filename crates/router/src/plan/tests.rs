//! The plan's tests: statements against a two-map test database, planned.
use super::*;
use crate::analyze::analyze;

/// The test database, loaded once (tests run in parallel).
fn db() -> DatabaseConfig {
    static DB: std::sync::OnceLock<DatabaseConfig> = std::sync::OnceLock::new();
    DB.get_or_init(load_db).clone()
}

fn load_db() -> DatabaseConfig {
    let dir = std::env::temp_dir().join(format!("sg-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.yaml"),
        "name: m\ntype: hash\nkey_type: bigint\npartitions: 4\nassign: { s0: [0, 1], s1: [2, 3] }\ntables:\n  - { table: orders, column: customer_id }\n  - { table: payments, column: customer_id }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("r.yaml"),
        "name: r\ntype: range\nkey_type: date\nranges:\n  - { from: null, to: 2026-01-01, shard: s0 }\n  - { from: 2026-01-01, to: null, shard: s1 }\ntables:\n  - { table: events, column: day }\n",
    )
    .unwrap();
    let text = "users: [{ name: u, auth: trust }]\ndatabases:\n  app:\n    shard_maps: [m.yaml, r.yaml]\n    reference_tables: [countries]\n    shards:\n      s0: { primary: \"postgres://h/d\" }\n      s1: { primary: \"postgres://h/e\" }\n";
    let c = sgconfig::load_str(&dir.join("c.yaml"), text).unwrap();
    c.databases["app"].clone()
}

fn p(sql: &str, params: &[Option<String>]) -> Plan {
    let d = db();
    let keys = |t: &str| map_for(&d, t).map(|(_, c)| c.to_vec());
    plan(&d, &analyze(sql, &keys).unwrap(), params)
}

fn shard_of(k: i64) -> String {
    let d = db();
    let (m, _) = map_for(&d, "orders").unwrap();
    shard_for_key(m, &[KeyValue::Int(k)]).unwrap().to_owned()
}

#[test]
fn one_key_one_shard() {
    assert_eq!(
        p("SELECT * FROM orders WHERE customer_id = 7", &[]),
        Plan::Shard(shard_of(7))
    );
    assert_eq!(
        p("SELECT * FROM orders WHERE customer_id = $1", &[]),
        Plan::AtBind
    );
    assert_eq!(
        p(
            "SELECT * FROM orders WHERE customer_id = $1",
            &[Some("7".into())]
        ),
        Plan::Shard(shard_of(7))
    );
    assert_eq!(
        p(
            "SELECT * FROM orders o JOIN countries c ON c.code = o.country WHERE o.customer_id = 7",
            &[]
        ),
        Plan::Shard(shard_of(7))
    );
}

#[test]
fn parameter_zero_is_no_key() {
    // PostgreSQL has no $0 and refuses the statement; the router reads no key from it.
    for sql in [
        "SELECT * FROM orders WHERE customer_id = $0",
        "SELECT * FROM orders WHERE customer_id = ANY($0)",
        "SELECT * FROM events WHERE day >= $0",
    ] {
        assert_eq!(p(sql, &[Some("7".into())]), Plan::AllShards, "{sql}");
    }
}

#[test]
fn co_located_joins_and_outer_joins() {
    // Joined on their keys: a key on either side pins both; without one, each shard
    // joins its own rows.
    assert_eq!(
        p("SELECT * FROM orders o JOIN payments y ON y.customer_id = o.customer_id WHERE y.customer_id = 7", &[]),
        Plan::Shard(shard_of(7))
    );
    assert_eq!(
        p(
            "SELECT * FROM orders o, payments y WHERE y.customer_id = o.customer_id",
            &[]
        ),
        Plan::AllShards
    );
    assert!(matches!(
        p(
            "SELECT * FROM orders o JOIN payments y ON y.amount = o.total",
            &[]
        ),
        Plan::Refuse { .. }
    ));
    // Outer joins: exact when the null-extended side is joined on its key to the
    // preserved side's, or is a reference table.
    assert_eq!(
        p(
            "SELECT * FROM orders o LEFT JOIN payments y ON y.customer_id = o.customer_id",
            &[]
        ),
        Plan::AllShards
    );
    assert_eq!(
        p(
            "SELECT * FROM orders o LEFT JOIN countries c ON c.code = o.country",
            &[]
        ),
        Plan::AllShards
    );
    // FULL JOIN of co-located tables on their keys: each row of either side, matched
    // or not, is on one shard.
    for sql in [
        "SELECT * FROM orders o FULL JOIN payments y ON y.customer_id = o.customer_id",
        "SELECT * FROM orders o FULL JOIN payments y ON y.customer_id = o.customer_id AND y.amount > o.total",
        "SELECT * FROM orders o FULL JOIN payments y ON y.customer_id = o.customer_id LEFT JOIN countries c ON c.code = o.country",
    ] {
        assert_eq!(p(sql, &[]), Plan::AllShards, "{sql}");
    }
    for sql in [
        "SELECT * FROM countries c LEFT JOIN orders o ON o.country = c.code",
        "SELECT * FROM orders o RIGHT JOIN countries c ON o.country = c.code",
        "SELECT * FROM countries c LEFT JOIN orders o ON o.country = c.code LEFT JOIN payments y ON y.customer_id = o.customer_id",
        "SELECT * FROM orders o LEFT JOIN payments y ON y.amount = o.total",
        "SELECT * FROM orders o FULL JOIN payments y ON y.amount = o.total",
        "SELECT * FROM orders o FULL JOIN countries c ON c.code = o.country",
        "SELECT * FROM orders o FULL JOIN payments y ON y.customer_id = o.customer_id FULL JOIN countries c ON c.code = o.country",
        "SELECT * FROM countries c LEFT JOIN (orders o FULL JOIN payments y ON y.customer_id = o.customer_id) ON o.country = c.code",
    ] {
        assert!(matches!(p(sql, &[]), Plan::Refuse { .. }), "{sql}");
    }
}

#[test]
fn views_in_ctes_and_derived_tables_route_by_the_key_outside() {
    for sql in [
        "WITH x AS (SELECT * FROM orders) SELECT * FROM x WHERE customer_id = 7",
        "WITH x AS MATERIALIZED (SELECT customer_id, total FROM orders WHERE total > 1) SELECT count(*) FROM x WHERE customer_id = 7",
        "SELECT * FROM (SELECT o.customer_id, o.total FROM orders o) d WHERE d.customer_id = 7",
        // Grouped by the key: each group lives on its key's shard.
        "WITH x AS (SELECT customer_id, sum(total) FROM orders GROUP BY customer_id) SELECT * FROM x WHERE customer_id = 7",
        "SELECT * FROM (SELECT DISTINCT customer_id, total FROM orders) d WHERE d.customer_id = 7",
    ] {
        assert_eq!(p(sql, &[]), Plan::Shard(shard_of(7)), "{sql}");
    }
    // Without a key, each shard's rows of the view are its rows of the table.
    assert_eq!(
        p("WITH x AS (SELECT * FROM orders) SELECT * FROM x", &[]),
        Plan::AllShards
    );
    for sql in [
        // Two uses of one view are not joined on the key to each other: a key on one
        // says nothing of the other's rows.
        "WITH x AS (SELECT * FROM orders) SELECT * FROM x x1 JOIN x x2 ON x1.total = x2.total WHERE x1.customer_id = 7",
        "WITH x AS (SELECT total, sum(total) FROM orders GROUP BY total) SELECT * FROM x WHERE total = 7",
        "WITH x AS (SELECT customer_id, rank() OVER (ORDER BY total) FROM orders) SELECT * FROM x WHERE customer_id = 7",
        "WITH x AS (SELECT customer_id, sum(total) AS s FROM orders GROUP BY customer_id) SELECT s, count(*) FROM x GROUP BY s",
        "WITH x AS (SELECT total AS customer_id FROM orders) SELECT * FROM x WHERE customer_id = 7",
    ] {
        assert!(matches!(p(sql, &[]), Plan::Refuse { .. }), "{sql}");
    }
}

#[test]
fn subqueries_correlated_on_the_key_run_where_their_outer_row_is() {
    // With a key: one shard, the key travels into the subquery.
    for sql in [
        "SELECT * FROM orders o WHERE o.customer_id = 7 AND EXISTS (SELECT 1 FROM payments y WHERE y.customer_id = o.customer_id)",
        "SELECT o.total, (SELECT sum(amount) FROM payments y WHERE y.customer_id = o.customer_id) FROM orders o WHERE o.customer_id = 7",
        "SELECT * FROM orders o, LATERAL (SELECT max(amount) FROM payments y WHERE y.customer_id = o.customer_id) m WHERE o.customer_id = 7",
    ] {
        assert_eq!(p(sql, &[]), Plan::Shard(shard_of(7)), "{sql}");
    }
    // Without one: every shard answers for its own rows.
    for sql in [
        "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM payments y WHERE y.customer_id = o.customer_id)",
        "SELECT * FROM orders o WHERE NOT EXISTS (SELECT 1 FROM payments y WHERE y.customer_id = o.customer_id AND y.amount > 5)",
        "SELECT o.total, (SELECT count(*) FROM payments y WHERE y.customer_id = o.customer_id) AS n FROM orders o",
        "SELECT * FROM orders o WHERE o.customer_id IN (SELECT y.customer_id FROM payments y WHERE y.amount > 5)",
        "SELECT * FROM orders o WHERE o.total > (SELECT avg(y.amount) FROM payments y WHERE y.customer_id = o.customer_id)",
    ] {
        assert_eq!(p(sql, &[]), Plan::AllShards, "{sql}");
    }
    for sql in [
        // Not correlated on the key, or not only by the key.
        "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM payments y WHERE y.amount = o.total)",
        "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM payments y WHERE y.customer_id = o.customer_id OR y.amount > 1)",
        // NOT IN sees a NULL key on any shard; LIMIT picks among every shard's rows.
        "SELECT * FROM orders o WHERE o.customer_id NOT IN (SELECT y.customer_id FROM payments y)",
        "SELECT * FROM orders o WHERE o.customer_id IN (SELECT y.customer_id FROM payments y ORDER BY y.amount LIMIT 3)",
        // IN outside a WHERE conjunct: NULL and false differ.
        "SELECT o.customer_id IN (SELECT y.customer_id FROM payments y) FROM orders o",
        // A table of another map.
        "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM events e WHERE e.day = o.customer_id)",
        // An inner name shadows the outer one.
        "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM payments o WHERE o.customer_id = o.customer_id)",
    ] {
        assert!(matches!(p(sql, &[]), Plan::Refuse { .. }), "{sql}");
    }
}

#[test]
fn insert_select_goes_where_its_source_rows_are() {
    assert_eq!(
        p("INSERT INTO payments (customer_id, amount) SELECT customer_id, total FROM orders WHERE customer_id = 7", &[]),
        Plan::Shard(shard_of(7))
    );
    assert_eq!(
        p("INSERT INTO payments (amount, customer_id) SELECT o.total, o.customer_id FROM orders o WHERE o.customer_id = 7", &[]),
        Plan::Shard(shard_of(7))
    );
    // Without a key: every shard inserts its own source rows (atomically, by two-phase
    // commit).
    assert_eq!(
        p(
            "INSERT INTO payments (customer_id, amount) SELECT customer_id, total FROM orders",
            &[]
        ),
        Plan::AllShards
    );
    for sql in [
        // VALUES without a constant key would go to every shard.
        "INSERT INTO payments (customer_id, amount) VALUES (now()::int, 1)",
        // The key is not the source's key column.
        "INSERT INTO payments (customer_id, amount) SELECT total, customer_id FROM orders WHERE customer_id = 7",
        // A source of another map.
        "INSERT INTO payments (customer_id, amount) SELECT 7, 1 FROM events WHERE day = '2026-01-02'",
    ] {
        assert!(matches!(p(sql, &[]), Plan::Refuse { .. }), "{sql}");
    }
}

#[test]
fn in_lists_go_to_every_shard_they_touch() {
    let keys: Vec<i64> = (1..40).collect();
    let shards: BTreeSet<String> = keys.iter().map(|k| shard_of(*k)).collect();
    assert_eq!(shards.len(), 2, "the keys cover both shards");
    let sql = format!(
        "SELECT * FROM orders WHERE customer_id IN ({})",
        keys.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(p(&sql, &[]), Plan::Shards(shards.into_iter().collect()));
    let arr = format!(
        "{{{}}}",
        keys.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(
        matches!(p("SELECT * FROM orders WHERE customer_id = ANY($1)", &[Some(arr)]), Plan::Shards(s) if s.len() == 2)
    );
}

#[test]
fn arrays_in_text_form() {
    let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(parse_array("{1,2, 3 }"), some(&["1", "2", "3"]));
    assert_eq!(parse_array("{}"), Vec::<Option<String>>::new());
    assert_eq!(parse_array(" { } "), Vec::<Option<String>>::new());
    assert_eq!(
        parse_array(r#"{"a b"," x ","","{,}","q\"\\",a b}"#),
        some(&["a b", " x ", "", "{,}", "q\"\\", "a b"])
    );
    assert_eq!(
        parse_array(r#"{NULL,"NULL",null,\NULL}"#),
        vec![None, Some("NULL".into()), None, Some("NULL".into())]
    );
    assert_eq!(
        parse_array(r#"{"2000-01-01 00:00:00+00"}"#),
        some(&["2000-01-01 00:00:00+00"])
    );
    // A NULL in a key array names no shard: refused, not routed.
    assert!(matches!(
        p("SELECT * FROM orders WHERE customer_id = ANY($1)", &[Some("{1,NULL}".into())]),
        Plan::Refuse { reason, .. } if reason.contains("NULL")
    ));
}

#[test]
fn keyless_reads_concatenate_or_are_refused() {
    assert_eq!(
        p("SELECT * FROM orders WHERE total > 3", &[]),
        Plan::AllShards
    );
    assert!(matches!(
        p("SELECT * FROM orders ORDER BY total", &[]),
        Plan::Refuse { .. }
    ));
    assert!(matches!(
        p("SELECT count(*) FROM orders", &[]),
        Plan::Refuse { .. }
    ));
    // Writes without a key run on every shard, each on its own rows.
    assert_eq!(
        p("DELETE FROM orders WHERE total = 0", &[]),
        Plan::AllShards
    );
    assert_eq!(
        p("UPDATE orders SET total = 0 WHERE total < 0", &[]),
        Plan::AllShards
    );
}

#[test]
fn tables_by_kind() {
    assert_eq!(p("SELECT * FROM countries", &[]), Plan::AnyShard);
    assert_eq!(
        p("INSERT INTO countries VALUES ('x')", &[]),
        Plan::AllShards
    );
    assert_eq!(p("SELECT * FROM unmapped", &[]), Plan::Session);
    assert_eq!(p("CREATE TABLE x (id int)", &[]), Plan::AllShards);
    assert_eq!(p("BEGIN", &[]), Plan::Session);
}

#[test]
fn hints_override_the_statement() {
    use crate::hints::parse_hints;
    let d = db();
    let keys = |t: &str| map_for(&d, t).map(|(_, c)| c.to_vec());
    let sql = "/* shardgate: shard=s1 */ SELECT count(*) FROM orders";
    let a = analyze(sql, &keys).unwrap();
    assert_eq!(
        plan_with_hints(&d, &a, &[], &parse_hints(sql).unwrap()),
        Plan::Shard("s1".into())
    );
    let sql = "/* shardgate: key=7 */ SELECT count(*) FROM orders";
    let a = analyze(sql, &keys).unwrap();
    assert_eq!(
        plan_with_hints(&d, &a, &[], &parse_hints(sql).unwrap()),
        Plan::Shard(shard_of(7))
    );
    let sql = "/* shardgate: shard=s7 */ SELECT 1";
    let a = analyze(sql, &keys).unwrap();
    assert!(matches!(
        plan_with_hints(&d, &a, &[], &parse_hints(sql).unwrap()),
        Plan::Refuse { .. }
    ));
}

#[test]
fn disagreeing_or_bad_keys_are_refused() {
    let (a, b) = (1..100)
        .find_map(|a| {
            (1..100)
                .find(|b| shard_of(a) != shard_of(*b))
                .map(|b| (a, b))
        })
        .unwrap();
    let sql = format!(
        "SELECT * FROM orders o, payments p WHERE o.customer_id = {a} AND p.customer_id = {b}"
    );
    assert!(matches!(p(&sql, &[]), Plan::Refuse { .. }));
    assert!(
        matches!(p("SELECT * FROM orders WHERE customer_id = 'abc'", &[]), Plan::Refuse { reason, .. } if reason.contains("invalid input syntax for type bigint"))
    );
}

#[test]
fn a_cursor_routes_as_its_query() {
    assert_eq!(
        p(
            "DECLARE c1 CURSOR FOR SELECT id FROM orders WHERE customer_id = 9",
            &[]
        ),
        Plan::Shard(shard_of(9))
    );
    assert_eq!(
        p(
            "DECLARE \"c\" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM orders WHERE customer_id = $1",
            &[Some("9".into())]
        ),
        Plan::Shard(shard_of(9))
    );
    assert!(matches!(
        p("DECLARE c CURSOR FOR SELECT id FROM orders", &[]),
        Plan::Refuse { .. }
    ));
    assert_eq!(p("DECLARE c CURSOR FOR SELECT 1", &[]), Plan::Session);
}

#[test]
fn rows_driven_by_other_tables_are_never_concatenated() {
    for q in [
        // A reference table's rows, filtered by a sharded table: every shard would
        // return them (duplicates), or wrongly (NOT EXISTS).
        "SELECT c.code FROM countries c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.country = c.code)",
        "SELECT c.code FROM countries c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.country = c.code)",
        "SELECT c.code FROM countries c WHERE c.code IN (SELECT country FROM orders)",
        // A sharded table only in the select list: it was not seen at all.
        "SELECT (SELECT count(*) FROM orders) FROM countries",
        "SELECT (SELECT count(*) FROM orders) AS n FROM orders WHERE customer_id = 7",
        // A reference table on the preserved side of an outer join.
        "SELECT * FROM countries c LEFT JOIN orders o ON o.country = c.code",
        // Each shard's own part of a CTE or derived table.
        "WITH o AS (SELECT * FROM orders) SELECT * FROM countries WHERE code IN (SELECT country FROM o)",
        "SELECT * FROM (SELECT country, count(*) AS n FROM orders GROUP BY country) s",
        "SELECT id FROM orders WHERE customer_id IN (7, 8) AND amount > (SELECT avg(amount) FROM orders)",
        // Set operations deduplicate across shards.
        "SELECT id FROM orders UNION SELECT id FROM orders",
        // A reference-table write computed from a sharded table.
        "UPDATE countries SET name = (SELECT max(note) FROM orders)",
    ] {
        assert!(matches!(p(q, &[]), Plan::Refuse { .. }), "{q}: {:?}", p(q, &[]));
    }
    // On one shard, nested uses are fine.
    assert_eq!(
        p(
            "SELECT (SELECT count(*) FROM orders o WHERE o.customer_id = 7) FROM orders WHERE customer_id = 7",
            &[]
        ),
        Plan::Shard(shard_of(7))
    );
    // Concatenation of a sharded table's own rows, joined to a reference table.
    assert_eq!(
        p(
            "SELECT o.id, c.name FROM orders o JOIN countries c ON c.code = o.country",
            &[]
        ),
        Plan::AllShards
    );
}

#[test]
fn sql_prepare_of_sharded_tables_is_refused() {
    assert!(matches!(
        p(
            "PREPARE p1(bigint) AS SELECT id FROM orders WHERE customer_id = $1",
            &[]
        ),
        Plan::Refuse { .. }
    ));
    assert_eq!(p("PREPARE p2 AS SELECT 1", &[]), Plan::Session);
    assert_eq!(p("PREPARE TRANSACTION 'x'", &[]), Plan::Session);
}

#[test]
fn copy_runs_on_one_shard_or_is_refused() {
    assert_eq!(p("COPY unmapped FROM STDIN", &[]), Plan::Session);
    assert_eq!(
        p(
            "COPY public.unmapped (a, b) TO STDOUT WITH (FORMAT csv)",
            &[]
        ),
        Plan::Session
    );
    assert!(
        matches!(p("COPY orders FROM STDIN WITH (FREEZE ON)", &[]), Plan::Refuse { reason, .. } if reason.contains("COPY"))
    );
    // Rows out to the client concatenate; a server-side file does not.
    assert_eq!(p("COPY \"orders\" TO STDOUT", &[]), Plan::AllShards);
    assert!(matches!(
        p("COPY orders TO STDOUT WITH (FORMAT binary)", &[]),
        Plan::Refuse { .. }
    ));
    assert!(matches!(
        p("COPY orders TO '/tmp/o.csv'", &[]),
        Plan::Refuse { .. }
    ));
    // A reference table is written on every shard: not with one COPY.
    assert!(matches!(
        p("COPY countries FROM STDIN", &[]),
        Plan::Refuse { .. }
    ));
    assert_eq!(p("COPY countries TO STDOUT", &[]), Plan::AnyShard);
    assert_eq!(
        p(
            "COPY (SELECT * FROM orders WHERE customer_id = 7) TO STDOUT",
            &[]
        ),
        Plan::Shard(shard_of(7))
    );
    assert_eq!(
        p("COPY (SELECT * FROM orders) TO STDOUT", &[]),
        Plan::AllShards
    );
    assert!(matches!(
        p("COPY (SELECT * FROM orders ORDER BY 1) TO STDOUT", &[]),
        Plan::Refuse { .. }
    ));
    assert!(matches!(
        p("COPY (SELECT * FROM orders) TO '/tmp/o'", &[]),
        Plan::Refuse { .. }
    ));
}

#[test]
fn opaque_code_and_explain() {
    assert_eq!(p("DO $$ BEGIN PERFORM 1; END $$", &[]), Plan::Pinned);
    assert_eq!(p("CALL transfer(1, 2)", &[]), Plan::Pinned);
    assert_eq!(
        p("EXPLAIN SELECT * FROM orders WHERE customer_id = 7", &[]),
        Plan::Shard(shard_of(7))
    );
    assert!(matches!(
        p("EXPLAIN ANALYZE DELETE FROM orders", &[]),
        Plan::Refuse { .. }
    ));
}

#[test]
fn multi_row_inserts_give_each_row_its_shard() {
    let d = db();
    let keys = |t: &str| map_for(&d, t).map(|(_, c)| c.to_vec());
    let a = analyze(
        "INSERT INTO orders (customer_id, total) VALUES (1, 2), (2, 3), (3, 4)",
        &keys,
    )
    .unwrap();
    assert_eq!(
        row_shards(&d, &a, &[]),
        Some(vec![shard_of(1), shard_of(2), shard_of(3)])
    );
    let a = analyze(
        "UPDATE orders SET total = 1 WHERE customer_id IN (1, 2)",
        &keys,
    )
    .unwrap();
    assert_eq!(row_shards(&d, &a, &[]), None);
}

#[test]
fn range_predicates_prune_the_shards_of_a_range_map() {
    let one = |sql: &str| p(sql, &[]);
    assert_eq!(
        one("SELECT * FROM events WHERE day >= '2026-03-01'"),
        Plan::Shard("s1".into())
    );
    assert_eq!(
        one("SELECT * FROM events WHERE day < '2026-01-01'"),
        Plan::Shard("s0".into())
    );
    // `to` is exclusive: up to and including the bound needs both shards.
    assert_eq!(
        one("SELECT * FROM events WHERE day <= '2026-01-01'"),
        Plan::Shards(vec!["s0".into(), "s1".into()])
    );
    assert_eq!(
        one("SELECT * FROM events WHERE '2026-02-01' > day AND day > '2026-01-05'"),
        Plan::Shard("s1".into())
    );
    assert_eq!(
        one("SELECT * FROM events WHERE day BETWEEN '2025-12-01' AND '2025-12-31'"),
        Plan::Shard("s0".into())
    );
    // Pruned to one shard, a merge is no longer needed.
    assert_eq!(
        one("SELECT count(*) FROM events WHERE day >= '2026-06-01'"),
        Plan::Shard("s1".into())
    );
    assert!(matches!(
        one("SELECT count(*) FROM events WHERE day >= '2025-06-01'"),
        Plan::Refuse { .. }
    ));
    // Parameters resolve when bound; writes are not pruned (a write needs its key).
    assert_eq!(
        p(
            "SELECT * FROM events WHERE day > $1",
            &[Some("2026-02-01".into())]
        ),
        Plan::Shard("s1".into())
    );
    // Writes are not pruned: every shard deletes its own rows.
    assert_eq!(
        one("DELETE FROM events WHERE day >= '2026-03-01'"),
        Plan::AllShards
    );
    // A hash map is not pruned by comparisons.
    assert_eq!(
        one("SELECT * FROM orders WHERE customer_id > 5"),
        Plan::AllShards
    );
}
