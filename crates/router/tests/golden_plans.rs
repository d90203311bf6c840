//! Golden plans: each statement of `golden_plans.txt` (a line starting with `>`, optionally
//! `> [collation=NAME]`) followed by the merge plan the router prints for it, or its
//! refusal. `UPDATE_GOLDEN=1 cargo test -p router --test golden_plans` rewrites the file.

use router::analyze::analyze;
use router::merge_plan::{plan_merge, Collation};
use router::plan::map_for;
use sgconfig::DatabaseConfig;

fn db() -> DatabaseConfig {
    let dir = std::env::temp_dir().join(format!("sg-golden-{}", std::process::id()));
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

fn render(db: &DatabaseConfig, line: &str) -> String {
    let (collation, sql) = match line.strip_prefix("[collation=") {
        Some(rest) => {
            let (name, sql) = rest.split_once("] ").expect("[collation=NAME] SQL");
            (Collation::Other(name.to_owned()), sql)
        }
        None => (Collation::C, line),
    };
    let keys = |t: &str| map_for(db, t).map(|(_, c)| c.to_vec());
    let a = match analyze(sql, &keys) {
        Ok(a) => a,
        Err(e) => return format!("PARSE ERROR: {e}"),
    };
    match plan_merge(db, &a, sql, &[], &collation) {
        Ok(p) => p.to_string(),
        Err(r) => format!("REFUSED: {}\nHINT: {}", r.reason, r.hint),
    }
}

#[test]
fn golden_plans() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden_plans.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let db = db();
    let mut out = String::new();
    let mut count = 0;
    for line in text.lines() {
        if let Some(sql) = line.strip_prefix("> ") {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
            out.push_str(&render(&db, sql));
            out.push('\n');
            count += 1;
        }
    }
    assert!(count >= 40, "at least 40 statements, found {count}");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, out).unwrap();
        return;
    }
    if out != text {
        let diff: Vec<String> = out
            .lines()
            .zip(text.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  got:      {a}\n  expected: {b}", i + 1))
            .collect();
        panic!(
            "golden plans differ (UPDATE_GOLDEN=1 to accept):\n{}",
            diff.join("\n")
        );
    }
}
