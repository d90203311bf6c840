//! Any SQL text through the router, against the fixed database of `shardgate_fuzz`: the
//! lexer's statement split, session-command classification and fingerprint; for each
//! statement the analysis (directly and through the route cache, whose normalised text
//! turns constants into parameters), the plan with and without hints, the per-row shards and
//! split of a multi-row INSERT, the column list written into an INSERT, UNION ALL routing,
//! the merge planner under both collations, the subquery pre-pass (plan, then finish with
//! made-up answers), SQL-level PREPARE/EXECUTE/DEALLOCATE and their substitution, COPY
//! parsing and `explain` (the admin console's SHOW ROUTE).
//!
//! Input: the SQL text, then up to four NUL-separated parameter values (an empty one is
//! NULL).

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::analyze::analyze;
use router::cache::RouteCache;
use router::hints::{parse_hints, Hints};
use router::merge_plan::{plan_merge, Collation};
use router::plan::{mergeable, plan, plan_with_hints, row_shards, Plan};
use sgconfig::DatabaseConfig;
use shardgate_fuzz::{database, key_columns, parts};

/// A table's columns, for an INSERT without a column list.
const COLUMNS: [&str; 3] = ["customer_id", "total", "note"];

/// Plans an analysed statement every way the proxy may.
fn plans(
    db: &DatabaseConfig,
    sql: &str,
    a: &router::analyze::Analysis,
    params: &[Option<String>],
    hints: &Hints,
) {
    let keys = |t: &str| key_columns(db, t);
    let _ = plan(db, a, params);
    let p = plan_with_hints(db, a, params, hints);
    if let Plan::Shards(shards) = &p {
        if let Some(rows) = row_shards(db, a, params) {
            let _ = router::rewrite::split_insert(sql, &rows, shards);
        }
    }
    if mergeable(a, hints) {
        let _ = router::union::route_union_all(db, sql, params, &keys);
        let _ = plan_merge(db, a, sql, params, &Collation::C);
        let _ = plan_merge(db, a, sql, params, &Collation::Other("en_US.UTF-8".into()));
    }
}

fn statement(db: &DatabaseConfig, sql: &str, params: &[Option<String>]) {
    let keys = |t: &str| key_columns(db, t);
    let sharded = |t: &str| router::plan::map_for(db, t).is_some();
    let hints = parse_hints(sql).unwrap_or_default();
    let _ = router::classify(sql);
    let _ = router::copy::parse_copy(sql);
    let _ = router::rewrite::values_rows(sql);
    let _ = router::explain::explain("app", db, sql, params);

    if let Ok(a) = analyze(sql, &keys) {
        plans(db, sql, &a, params, &hints);
        if a.insert_without_columns.is_some() {
            let columns: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
            if let Some(full) = router::rewrite::with_insert_columns(sql, &columns) {
                if let Ok(a) = analyze(&full, &keys) {
                    plans(db, &full, &a, params, &hints);
                }
            }
        }
    }

    let cache = RouteCache::default();
    if let Ok(routed) = cache.route_in(0, sql, params, &keys) {
        plans(db, sql, &routed.analysis, &routed.params, &hints);
        // The second time comes from the cache.
        let _ = cache.route_in(0, sql, params, &keys);
    }

    let inner = router::subquery::plan(sql, &sharded);
    if !inner.is_empty() {
        let answers: Vec<Vec<Option<String>>> = (0..inner.len())
            .map(|i| match i % 3 {
                0 => vec![Some("1".into()), None, Some("it's".into())],
                1 => Vec::new(),
                _ => vec![Some("2026-01-01".into())],
            })
            .collect();
        if let Some(done) = router::subquery::finish(sql, &sharded, &answers) {
            if let Ok(a) = analyze(&done, &keys) {
                plans(db, &done, &a, params, &hints);
            }
        }
    }

    if let Some(p) = router::sqlprepare::parse_prepare(sql) {
        let args: Vec<String> = params.iter().flatten().cloned().collect();
        if let Ok(query) = router::sqlprepare::substitute(&p, &args) {
            if let Ok(a) = analyze(&query, &keys) {
                plans(db, &query, &a, &[], &hints);
            }
        }
    }
    let _ = router::sqlprepare::parse_execute(sql);
    let _ = router::sqlprepare::parse_deallocate(sql);
}

fuzz_target!(|data: &[u8]| {
    let db = database();
    let p = parts(data, 5);
    let text = String::from_utf8_lossy(p[0]);
    let params: Vec<Option<String>> = p[1..]
        .iter()
        .map(|v| (!v.is_empty()).then(|| String::from_utf8_lossy(v).into_owned()))
        .collect();
    let _ = router::cache::fingerprint(&text, true);
    let _ = router::lexer::insert_names_columns(text.as_bytes());
    let _ = router::lexer::contains_any_word(text.as_bytes(), &[b"set", b"listen", b"load"]);
    let statements = router::lexer::split_statements(&text);
    for st in statements.into_iter().take(4) {
        statement(db, st, &params);
    }
});
