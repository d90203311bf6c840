//! Routing cost per statement: cold (parse and analyse) and cached (fingerprint, cache
//! lookup, plan), for pgbench's statements and typical ORM statements.
//!
//! `cargo bench -p router --bench route`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use router::cache::RouteCache;

const STATEMENTS: &[(&str, &str)] = &[
    ("pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
    ("pgbench update accounts", "UPDATE pgbench_accounts SET abalance = abalance + -3718 WHERE aid = 48213;"),
    ("pgbench insert history", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -3718, CURRENT_TIMESTAMP);"),
    ("orm select by pk", "SELECT \"users\".\"id\", \"users\".\"email\", \"users\".\"created_at\" FROM \"users\" WHERE \"users\".\"id\" = 1234 LIMIT 1"),
    ("orm select in list", "SELECT orders.id, orders.total FROM orders WHERE orders.customer_id IN (1, 2, 3, 4, 5)"),
    ("orm insert returning", "INSERT INTO orders (customer_id, total, status, created_at) VALUES (42, 19.99, 'new', '2026-11-29 10:00:00') RETURNING id"),
    ("orm update", "UPDATE orders SET status = 'paid', updated_at = '2026-11-29 10:00:00' WHERE orders.id = 991 AND orders.customer_id = 42"),
    ("orm delete", "DELETE FROM sessions WHERE sessions.user_id = 42 AND sessions.expires_at < '2026-11-29'"),
    ("orm join", "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = 42 AND c.id = 42"),
    ("orm count", "SELECT count(*) AS count FROM orders WHERE orders.customer_id = 42 AND orders.status = 'new'"),
    ("orm exists", "SELECT 1 AS one FROM users WHERE users.email = 'a@example.com' LIMIT 1"),
    ("orm cte", "WITH recent AS (SELECT * FROM orders WHERE customer_id = 42 AND created_at > '2026-01-01') SELECT count(*) FROM recent"),
    ("orm upsert", "INSERT INTO carts (customer_id, item, qty) VALUES (42, 'sku-1', 2) ON CONFLICT (customer_id, item) DO UPDATE SET qty = carts.qty + 2"),
];

fn keys(t: &str) -> Option<Vec<String>> {
    match t {
        "pgbench_accounts" | "pgbench_history" => Some(vec!["aid".into()]),
        "orders" | "customers" | "carts" => Some(vec!["customer_id".into()]),
        "users" | "sessions" => Some(vec!["user_id".into()]),
        _ => None,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for (name, sql) in STATEMENTS {
        g.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| router::analyze::analyze(black_box(sql), &keys).unwrap())
        });
        let cache = RouteCache::default();
        cache.route(sql, &[], &keys).unwrap();
        g.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| {
                let r = cache.route(black_box(sql), &[], &keys).unwrap();
                assert!(r.cached);
                r
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
