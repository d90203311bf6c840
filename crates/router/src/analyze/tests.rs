//! Tests of statement analysis: kinds, tables, keys, scopes, merges noticed, DML.

use super::*;

fn keys(t: &str) -> Option<Vec<String>> {
    match t {
        "pgbench_accounts" => Some(vec!["aid".into()]),
        "orders" => Some(vec!["customer_id".into()]),
        "pairs" => Some(vec!["a".into(), "b".into()]),
        _ => None,
    }
}

fn a(sql: &str) -> Analysis {
    analyze(sql, &keys).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn lit(s: &str) -> KeyExpr {
    KeyExpr::Literal(s.into())
}

#[test]
fn keys_in_where() {
    let x = a("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
    assert_eq!(x.kind, Kind::Read);
    assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("42")]]));
    assert!(!x.needs_merge);
    let x = a("SELECT * FROM orders o WHERE o.customer_id IN (1, 2, -3) AND total > 5");
    assert_eq!(
        x.keyed[0].keys,
        Some(vec![vec![lit("1")], vec![lit("2")], vec![lit("-3")]])
    );
    let x = a("SELECT * FROM orders WHERE $1 = customer_id");
    assert_eq!(x.keyed[0].keys, Some(vec![vec![KeyExpr::Param(1)]]));
    let x = a("SELECT * FROM orders WHERE customer_id = ANY($2)");
    assert_eq!(x.keyed[0].keys, Some(vec![vec![KeyExpr::ParamArray(2)]]));
    let x = a("SELECT * FROM pairs WHERE b = 'x' AND a = 7");
    assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("7"), lit("x")]]));
}

#[test]
fn what_does_not_pin_a_key() {
    for sql in [
        "SELECT * FROM orders WHERE customer_id = 1 OR total > 5",
        "SELECT * FROM orders WHERE customer_id > 1",
        "SELECT * FROM orders WHERE customer_id NOT IN (1)",
        "SELECT * FROM orders",
        "SELECT * FROM pairs WHERE a = 1",
    ] {
        assert_eq!(a(sql).keyed[0].keys, None, "{sql}");
    }
}

#[test]
fn merges_are_noticed() {
    for sql in [
        "SELECT * FROM orders ORDER BY total",
        "SELECT * FROM orders LIMIT 5",
        "SELECT count(*) FROM orders",
        "SELECT DISTINCT total FROM orders",
        "SELECT customer_id, sum(total) FROM orders GROUP BY customer_id",
    ] {
        assert!(a(sql).needs_merge, "{sql}");
    }
    // Window functions are computed over all the rows: merged (by the shard key's
    // partitions) or refused, never concatenated; aggregates inside expressions too.
    for sql in [
        "SELECT total, row_number() OVER () FROM orders",
        "SELECT row_number() OVER (ORDER BY id) FROM orders",
        "SELECT count(*) + 1 FROM orders",
        "SELECT CASE WHEN max(total) > 5 THEN 1 END FROM orders",
        "SELECT coalesce(sum(total), 0)::int FROM orders",
        "SELECT \"count\"(*) FROM orders",
        "SELECT count(*) IS NULL FROM orders",
        "SELECT ARRAY[count(*)] FROM orders",
        "SELECT count(*) IN (1, 300) FROM orders",
        "SELECT bit_xor(total) FROM orders",
        "SELECT id, count(*) OVER () FROM orders",
    ] {
        assert!(a(sql).needs_merge, "{sql}");
    }
    assert!(!a("SELECT lower(note), total + 1 FROM orders").needs_merge);
}

#[test]
fn a_cte_named_like_a_table_is_the_cte() {
    // `orders` is the CTE over a reference table, not the sharded table.
    let x = a("WITH orders AS (SELECT code FROM regions) SELECT code FROM orders");
    assert!(
        x.keyed.iter().all(|u| u.table != "orders") || x.nested_sharded,
        "{x:?}"
    );
    // A recursive CTE sees its own name.
    let x = a("WITH RECURSIVE orders(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM orders WHERE n < 3) SELECT n FROM orders");
    assert!(
        x.keyed.iter().all(|u| u.table != "orders") || x.nested_sharded,
        "{x:?}"
    );
}

#[test]
fn subqueries_and_ctes_are_scopes() {
    let x = a("WITH o AS (SELECT * FROM orders WHERE customer_id = 5) SELECT * FROM o");
    assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("5")]]));
    // The CTE is a view of orders: its use outside stands for orders, joined on the key
    // to the use inside (the plan carries the key across).
    assert_eq!(x.keyed.len(), 2);
    assert_eq!(x.keyed[1].table, "orders");
    assert_eq!(x.key_joins, vec![(1, 0)]);
    let x = a("WITH o AS (SELECT id, total FROM orders) SELECT * FROM o WHERE customer_id = 5");
    assert_eq!(
        x.keyed.len(),
        1,
        "a view without the key column is no view: {x:?}"
    );
    let x = a("SELECT * FROM (SELECT * FROM orders) d WHERE d.customer_id = 7");
    assert_eq!(x.keyed[1].keys, Some(vec![vec![lit("7")]]));
    assert_eq!(x.key_joins, vec![(1, 0)]);
    let x = a("SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE customer_id = 9)");
    assert_eq!(x.tables, vec!["customers", "orders"]);
    assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("9")]]));
}

#[test]
fn dml() {
    let x = a("INSERT INTO orders (id, customer_id, total) VALUES (1, 10, 5), (2, $1, 6)");
    assert_eq!(x.kind, Kind::Write);
    assert_eq!(
        x.keyed[0].keys,
        Some(vec![vec![lit("10")], vec![KeyExpr::Param(1)]])
    );
    assert!(a("INSERT INTO orders VALUES (1, 2, 3)").refuse.is_some());
    assert!(a("INSERT INTO orders (id, customer_id) SELECT 1, 2")
        .refuse
        .is_some());
    let x = a("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2");
    assert_eq!(x.keyed[0].keys, Some(vec![vec![KeyExpr::Param(2)]]));
    assert!(a("UPDATE orders SET customer_id = 3 WHERE customer_id = 2")
        .refuse
        .is_some());
    let x = a("DELETE FROM orders WHERE customer_id = 4");
    assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("4")]]));
    assert_eq!(
        a("SELECT * FROM orders WHERE customer_id = 1 FOR UPDATE").kind,
        Kind::Write
    );
    assert_eq!(a("INSERT INTO other VALUES (1)").keyed, vec![]);
}

#[test]
fn keyword_classes() {
    assert_eq!(a("CREATE TABLE t (id int)").kind, Kind::Ddl);
    assert_eq!(a("VACUUM ANALYZE t").kind, Kind::Maintenance);
    assert_eq!(a("PREPARE TRANSACTION 'x'").kind, Kind::Transaction);
    assert_eq!(
        a("begin isolation level serializable").kind,
        Kind::Transaction
    );
    assert_eq!(a("SET search_path TO a").kind, Kind::Session);
    assert_eq!(a("DO $$ BEGIN END $$").kind, Kind::Opaque);
    assert!(analyze("SELECT FROM WHERE", &keys).is_err());
}
