//! Routing cost per statement: cold (parse and analyse), cached (fingerprint and cache
//! lookup) and routed (cached, then the plan: key parsed, hashed, shard found), for
//! pgbench's statements and typical ORM statements.
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

/// A database with two shards and hash maps for the tables the statements use.
fn database() -> sgconfig::DatabaseConfig {
    let dir = std::env::temp_dir().join(format!("sg-route-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let maps = [
        ("accounts", "integer", "[{ table: pgbench_accounts, column: aid }, { table: pgbench_history, column: aid }]"),
        ("customers", "bigint", "[{ table: orders, column: customer_id }, { table: customers, column: customer_id }, { table: carts, column: customer_id }]"),
        ("users", "bigint", "[{ table: users, column: user_id }, { table: sessions, column: user_id }]"),
    ];
    for (name, ty, tables) in maps {
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            format!("name: {name}\ntype: hash\nkey_type: {ty}\npartitions: 8\nassign: {{ s0: [0, 1, 2, 3], s1: [4, 5, 6, 7] }}\ntables: {tables}\n"),
        )
        .unwrap();
    }
    let config = "users: [{ name: u, auth: trust }]\ndatabases:\n  app:\n    shard_maps: [accounts.yaml, customers.yaml, users.yaml]\n    shards:\n      s0: { primary: \"postgres://h/a\" }\n      s1: { primary: \"postgres://h/b\" }\n";
    let file = dir.join("config.yaml");
    std::fs::write(&file, config).unwrap();
    let mut c = sgconfig::load_file(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    c.databases.remove("app").unwrap()
}

fn bench(c: &mut Criterion) {
    let db = database();
    let hints = router::hints::Hints::default();
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
        g.bench_function(format!("routed/{name}"), |b| {
            b.iter(|| {
                let r = cache.route(black_box(sql), &[], &keys).unwrap();
                router::plan::plan_with_hints(&db, &r.analysis, &r.params, &hints)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
