//! Real clients through the proxy: psql scripts give the same output as directly, and
//! pgbench runs its standard workloads without a failed transaction.

use std::path::PathBuf;
use std::process::Command;

use e2e::{ProxyOptions, TestDb};

const SCRIPT: &str = r#"
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(8,2), tags text[]);
INSERT INTO items (name, price, tags) VALUES ('apple', 1.20, '{fruit,red}'), ('bread', 2.50, NULL);
\copy items (name, price) FROM 'DATAFILE' WITH (FORMAT csv)
SELECT * FROM items ORDER BY id;
SELECT count(*), sum(price) FROM items;
SELECT name FROM items WHERE price > (SELECT avg(price) FROM items) ORDER BY name;
INSERT INTO items (id, name) VALUES (1, 'duplicate');
SELECT 1/0;
BEGIN;
UPDATE items SET price = price * 2 WHERE name = 'apple';
SAVEPOINT s1;
DELETE FROM items;
ROLLBACK TO SAVEPOINT s1;
SELECT name, price FROM items WHERE name = 'apple';
COMMIT;
BEGIN;
INSERT INTO items (name) VALUES ('never');
SELECT no_such_column FROM items;
SELECT 'inside an aborted transaction';
ROLLBACK;
SELECT count(*) FROM items WHERE name = 'never';
\copy (SELECT id, name FROM items ORDER BY id LIMIT 3) TO STDOUT
CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT a + b $$;
SELECT add(2, 3);
DO $$ BEGIN RAISE NOTICE 'notice from DO'; END $$;
\echo done
"#;

fn run_psql(url: &str, script: &std::path::Path) -> String {
    let out = Command::new("psql")
        .args(["-X", "-e", "-f"])
        .arg(script)
        .arg(url)
        .env_remove("PGPASSWORD")
        .output()
        .expect("run psql");
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str("\n--- stderr ---\n");
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    all
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardgate-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_psql_script_gives_the_same_output_through_the_proxy() {
    let dir = temp_dir("psql");
    let data = dir.join("items.csv");
    let mut csv = String::new();
    for i in 0..500 {
        csv.push_str(&format!("\"item, {i}\",{}.{:02}\n", i % 17, i % 100));
    }
    std::fs::write(&data, csv).unwrap();
    let script = dir.join("script.sql");
    std::fs::write(&script, SCRIPT.replace("DATAFILE", data.to_str().unwrap())).unwrap();

    let direct_db = TestDb::new("psql_direct", ProxyOptions::default());
    let proxy_db = TestDb::new("psql_proxy", ProxyOptions::default());
    let direct = run_psql(&direct_db.direct_url(), &script);
    let proxied = run_psql(&proxy_db.proxy_url(), &script);
    assert!(direct.contains("division by zero"), "{direct}");
    assert!(direct.contains("notice from DO"), "{direct}");
    assert!(direct.contains("(502 rows)"), "{direct}");
    if proxied != direct {
        std::fs::write(dir.join("direct.out"), &direct).unwrap();
        std::fs::write(dir.join("proxied.out"), &proxied).unwrap();
        let diff = Command::new("diff")
            .arg(dir.join("direct.out"))
            .arg(dir.join("proxied.out"))
            .output();
        let diff = diff.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        panic!("output differs; see {}: {diff:?}", dir.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn pgbench(url: &str, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[test]
fn pgbench_runs_through_transaction_pooling_without_failures() {
    let db = TestDb::new(
        "pgbench",
        ProxyOptions {
            pool_size: 10,
            ..Default::default()
        },
    );
    let url = db.proxy_url();
    pgbench(&url, &["-i", "-s", "10", "-q"]);
    let accounts = e2e::psql_direct(&db.name, "SELECT count(*) FROM pgbench_accounts");
    assert_eq!(accounts, "1000000");
    let runs: [&[&str]; 6] = [
        &["-n", "-c", "32", "-j", "2", "-t", "100", "-M", "simple"],
        &["-n", "-c", "32", "-j", "2", "-t", "100", "-M", "extended"],
        &["-n", "-c", "32", "-j", "2", "-t", "100", "-M", "prepared"],
        &[
            "-n", "-S", "-c", "32", "-j", "2", "-t", "200", "-M", "simple",
        ],
        &[
            "-n", "-S", "-c", "32", "-j", "2", "-t", "200", "-M", "extended",
        ],
        &[
            "-n", "-S", "-c", "32", "-j", "2", "-t", "200", "-M", "prepared",
        ],
    ];
    for args in runs {
        let out = pgbench(&url, args);
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{args:?}:\n{out}"
        );
        let expected = if args.contains(&"-S") {
            32 * 200
        } else {
            32 * 100
        };
        assert!(
            out.contains(&format!(
                "number of transactions actually processed: {expected}/{expected}"
            )),
            "{args:?}:\n{out}"
        );
    }
    // TPC-B ran 3 × 3,200 transactions: each wrote one history row.
    let history = e2e::psql_direct(&db.name, "SELECT count(*) FROM pgbench_history");
    assert_eq!(history, "9600");
}
