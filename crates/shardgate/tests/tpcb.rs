//! pgbench, unchanged, through the proxy on a sharded pgbench schema: `pgbench -i` (drop,
//! create, TRUNCATE + COPY ... FREEZE in one transaction over every shard, VACUUM, primary
//! keys) and the built-in TPC-B script over three shards, accounts and history by aid,
//! tellers by tid, branches by bid, so most transactions span shards and commit by
//! two-phase commit. Read straight from the shards afterwards, the money adds up: every
//! balance sum equals the sum of the history's deltas, and every account's balance equals
//! its own deltas. The same after the proxy is SIGKILLed mid-run and restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::Cluster;

mod common;
use common::{pg, write};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
/// A fixed port for this file's proxy (below the kernel's ephemeral range).
const PORT: u16 = 24_320;
const SHARDS: [&str; 3] = ["tpcb_s0", "tpcb_s1", "tpcb_s2"];
const SCALE: u32 = 5;
const SECONDS: u32 = 30;

fn map(name: &str, tables: &[(&str, &str)]) -> String {
    let list: Vec<String> = tables
        .iter()
        .map(|(t, c)| format!("{{ table: {t}, column: {c} }}"))
        .collect();
    format!(
        "name: {name}\ntype: hash\nkey_type: integer\npartitions: 6\nassign: {{ s0: [0, 3], s1: [1, 4], s2: [2, 5] }}\ntables: [{}]\n",
        list.join(", ")
    )
}

fn setup(pg: &Cluster) -> PathBuf {
    let dir = common::temp_dir("tpcb", "run");
    write(
        &dir.join("aid.yaml"),
        &map(
            "aid",
            &[("pgbench_accounts", "aid"), ("pgbench_history", "aid")],
        ),
    );
    write(
        &dir.join("tid.yaml"),
        &map("tid", &[("pgbench_tellers", "tid")]),
    );
    write(
        &dir.join("bid.yaml"),
        &map("bid", &[("pgbench_branches", "bid")]),
    );
    let mut yaml = format!(
        "listen: 127.0.0.1:{PORT}
pool: {{ size: 24 }}
two_phase: {{ grace_s: 1, recovery_interval_s: 1 }}
users:
  - {{ name: app, password: app-pw, server_user: postgres, server_password: pw }}
databases:
  app:
    shard_maps: [aid.yaml, tid.yaml, bid.yaml]
    shards:
"
    );
    for (i, db) in SHARDS.iter().enumerate() {
        pg.create_database(db).unwrap();
        yaml.push_str(&format!(
            "      s{i}: {{ primary: \"postgres://127.0.0.1:{}/{db}\" }}\n",
            pg.port()
        ));
    }
    write(&dir.join("config.yaml"), &yaml);
    dir
}

struct Proc(Child);

impl Proc {
    fn start(dir: &Path, log: &str) -> Proc {
        Proc(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(dir.join("config.yaml"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_up() {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the proxy did not come up");
}

fn pgbench(args: &[&str]) -> Command {
    let mut c = Command::new("pgbench");
    c.args(["-h", "127.0.0.1", "-p", &PORT.to_string(), "-U", "app"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", "app-pw")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn sum(pg: &Cluster, sql: &str) -> i64 {
    SHARDS
        .iter()
        .map(|db| pg.psql(db, sql).unwrap().trim().parse::<i64>().unwrap())
        .sum()
}

/// The TPC-B invariants, read straight from the shards; the number of history rows.
fn check_invariants(pg: &Cluster, when: &str) -> i64 {
    let a = sum(
        pg,
        "SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts",
    );
    let t = sum(pg, "SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers");
    let b = sum(
        pg,
        "SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches",
    );
    let d = sum(pg, "SELECT coalesce(sum(delta), 0) FROM pgbench_history");
    let per_shard: Vec<String> = SHARDS
        .iter()
        .map(|db| {
            pg.psql(
                db,
                "SELECT (SELECT coalesce(sum(abalance),0) FROM pgbench_accounts) || ' ' || \
                 (SELECT coalesce(sum(delta),0) FROM pgbench_history) || ' ' || \
                 (SELECT count(*) FROM pgbench_history) || ' ' || \
                 (SELECT count(*) FROM pgbench_accounts a LEFT JOIN (SELECT aid, sum(delta) AS s FROM pgbench_history GROUP BY aid) h USING (aid) WHERE a.abalance <> coalesce(h.s, 0))",
            )
            .unwrap()
            .trim()
            .to_owned()
        })
        .collect();
    assert_eq!(
        (a, t, b),
        (d, d, d),
        "{when}: balances against history (per shard: abalance, delta, history rows, accounts off: {per_shard:?})"
    );
    // Accounts and their history live together (both by aid): each shard checks its own.
    let off = sum(
        pg,
        "SELECT count(*) FROM pgbench_accounts a LEFT JOIN \
         (SELECT aid, sum(delta) AS s FROM pgbench_history GROUP BY aid) h USING (aid) \
         WHERE a.abalance <> coalesce(h.s, 0)",
    );
    assert_eq!(
        off, 0,
        "{when}: accounts whose balance is not their history"
    );
    assert_eq!(
        sum(
            pg,
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        ),
        0,
        "{when}: prepared transactions left"
    );
    sum(pg, "SELECT count(*) FROM pgbench_history")
}

fn run(mode: &str) -> String {
    let clients = std::env::var("TPCB_CLIENTS").unwrap_or_else(|_| "16".into());
    let secs = std::env::var("TPCB_SECONDS").unwrap_or_else(|_| SECONDS.to_string());
    // -n: no VACUUM and no TRUNCATE of pgbench_history before the run (pgbench's default),
    // so that the history keeps every delta since -i.
    let out = pgbench(&["-n", "-c", &clients, "-j", "2", "-T", &secs, "-M", mode])
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench -M {mode}:\n{text}");
    text
}

fn processed(text: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn failed(text: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn pgbench_runs_unchanged_over_three_shards_and_the_money_adds_up() {
    let pg = pg();
    let dir = setup(&pg);
    let proxy = Proc::start(&dir, "proxy.log");
    wait_up();

    let init = pgbench(&["-i", "-s", &SCALE.to_string()]).output().unwrap();
    let log = std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
    assert!(
        init.status.success(),
        "pgbench -i:\n{}\n{}\n{log}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );
    assert_eq!(
        sum(&pg, "SELECT count(*) FROM pgbench_accounts"),
        100_000 * SCALE as i64
    );
    // Every shard holds some of each table, and the primary keys were added everywhere.
    for db in SHARDS {
        for t in ["pgbench_accounts", "pgbench_tellers", "pgbench_branches"] {
            let n: i64 = pg
                .psql(db, &format!("SELECT count(*) FROM {t}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(n > 0, "{db}.{t} is empty");
        }
        let keys: i64 = pg
            .psql(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conname LIKE 'pgbench_%'")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(keys, 3, "{db}: primary keys");
    }
    check_invariants(&pg, "after -i");

    let modes = std::env::var("TPCB_MODES").unwrap_or_else(|_| "simple,prepared".into());
    for mode in modes.split(',') {
        let text = run(mode);
        assert!(processed(&text) > 0, "{text}");
        assert_eq!(failed(&text), 0, "-M {mode}: failed transactions\n{text}");
        let history = check_invariants(&pg, mode);
        assert!(history > 0);
    }

    // The proxy SIGKILLed mid-run, then restarted: recovery leaves all or nothing.
    let mut bench = pgbench(&["-n", "-c", "16", "-j", "2", "-T", "12", "-M", "prepared"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    drop(proxy); // SIGKILL
    let _ = bench.wait();
    let _proxy = Proc::start(&dir, "proxy-restarted.log");
    wait_up();
    let mut left = -1;
    for _ in 0..100 {
        left = sum(
            &pg,
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
        );
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(left, 0, "prepared transactions left after recovery");
    check_invariants(&pg, "after the proxy was killed mid-run");
}
