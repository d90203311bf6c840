//! Two-phase commit survives the proxy's death at its worst moments: the real binary,
//! with a test-only fault point (`SHARDGATE_TEST_FAULT`), dies by SIGKILL (a) after the
//! first PREPARE of several, (b) after every PREPARE before the decision, (c) after the
//! decision before any COMMIT PREPARED, (d) between two COMMIT PREPAREDs. Restarted without
//! the fault, its recovery leaves no prepared transaction on any shard, and each
//! transaction is all or nothing: rolled back before the decision, committed after it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::Cluster;

mod common;
use common::{pg, write};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

/// A fixed port for this file's proxy (below the kernel's ephemeral range).
const PORT: u16 = 24_300;

const SHARDS: [&str; 3] = ["tp_s0", "tp_s1", "tp_s2"];

/// Three shards by range of `accounts.id`: below 100, 100 to 200, from 200.
fn config(pg: &Cluster) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:{PORT}
two_phase: {{ grace_s: 1, recovery_interval_s: 1 }}
users:
  - {{ name: app, password: app-pw, server_user: postgres, server_password: pw }}
databases:
  app:
    shard_maps: [map.yaml]
    shards:
"
    );
    for (i, db) in SHARDS.iter().enumerate() {
        yaml.push_str(&format!(
            "      s{i}: {{ primary: \"postgres://127.0.0.1:{}/{db}\" }}\n",
            pg.port()
        ));
    }
    yaml
}

const MAP: &str = "name: accounts\ntype: range\nkey_type: bigint\nranges:\n  - { from: null, to: 100, shard: s0 }\n  - { from: 100, to: 200, shard: s1 }\n  - { from: 200, to: null, shard: s2 }\ntables: [{ table: accounts, column: id }]\n";

struct Proc {
    child: Child,
}

impl Proc {
    fn start(dir: &Path, fault: Option<&str>, log: &str) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(dir.join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap());
        match fault {
            Some(f) => cmd.env("SHARDGATE_TEST_FAULT", f),
            None => cmd.env_remove("SHARDGATE_TEST_FAULT"),
        };
        Proc {
            child: cmd.spawn().unwrap(),
        }
    }

    /// Waits for the process to end; its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the proxy did not stop at its fault point");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect() -> tokio_postgres::Client {
    let conninfo = format!("host=127.0.0.1 port={PORT} user=app password=app-pw dbname=app");
    let mut last = String::new();
    for _ in 0..200 {
        match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                return c;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy did not come up: {last}");
}

fn count(pg: &Cluster, db: &str, sql: &str) -> i64 {
    pg.psql(db, sql).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn the_proxy_killed_at_each_step_of_two_phase_commit_leaves_all_or_nothing() {
    let pg = pg();
    for db in SHARDS {
        pg.create_database(db).unwrap();
        pg.psql(db, "CREATE TABLE accounts (id bigint PRIMARY KEY, v int)")
            .unwrap();
    }
    let dir = common::temp_dir("2pc", "faults");
    write(&dir.join("config.yaml"), &config(&pg));
    write(&dir.join("map.yaml"), MAP);

    // (fault, whether the transaction is committed after recovery)
    let cases = [
        ("after_first_prepare", false),
        ("after_prepares", false),
        ("after_decision", true),
        ("between_commits", true),
    ];
    let mut running = None;
    for (n, (fault, committed)) in cases.into_iter().enumerate() {
        let ids = [n as i64 + 1, 101 + n as i64, 201 + n as i64];
        drop(running.take());
        let mut p = Proc::start(&dir, Some(fault), &format!("{fault}.log"));
        let c = connect().await;
        c.batch_execute("BEGIN").await.unwrap();
        for id in ids {
            c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 1)"))
                .await
                .unwrap();
        }
        // The proxy dies in the middle of the commit: the client loses its connection.
        let r = c.batch_execute("COMMIT").await;
        assert!(r.is_err(), "{fault}: the commit cannot have been answered");
        let status = p.wait();
        assert!(!status.success(), "{fault}: {status:?}");
        drop(p);
        // In doubt now: something is prepared on some shard (after the last COMMIT PREPARED
        // of `between_commits` one is left).
        let in_doubt: i64 = SHARDS
            .iter()
            .map(|db| {
                count(
                    &pg,
                    db,
                    "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
                )
            })
            .sum();
        assert!(in_doubt > 0, "{fault}: nothing was left in doubt");

        // Restarted without the fault: recovery resolves it.
        running = Some(Proc::start(&dir, None, &format!("{fault}-recovery.log")));
        let mut left = in_doubt;
        for _ in 0..200 {
            left = SHARDS
                .iter()
                .map(|db| count(&pg, db, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"))
                .sum();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(dir.join(format!("{fault}-recovery.log"))).unwrap();
        assert_eq!(left, 0, "{fault}: prepared transactions left\n{log}");
        let rows: Vec<i64> = SHARDS
            .iter()
            .zip(ids)
            .map(|(db, id)| {
                count(
                    &pg,
                    db,
                    &format!("SELECT count(*) FROM accounts WHERE id = {id}"),
                )
            })
            .collect();
        let want = if committed {
            vec![1, 1, 1]
        } else {
            vec![0, 0, 0]
        };
        assert_eq!(rows, want, "{fault}: all or nothing\n{log}");
        assert!(
            log.contains("two-phase recovery resolved a prepared transaction"),
            "{fault}: each recovery decision is logged\n{log}"
        );
        // The proxy serves a new transaction over every shard.
        let c = connect().await;
        c.batch_execute("BEGIN").await.unwrap();
        for id in [50 + n as i64, 150 + n as i64, 250 + n as i64] {
            c.batch_execute(&format!("INSERT INTO accounts VALUES ({id}, 1)"))
                .await
                .unwrap();
        }
        c.batch_execute("COMMIT").await.unwrap();
    }
    // Decision rows go once nothing refers to them (older than the grace period), swept by
    // the proxy still running.
    assert!(running.is_some());
    let mut decisions = -1;
    for _ in 0..100 {
        decisions = SHARDS
            .iter()
            .map(|db| count(&pg, db, "SELECT count(*) FROM shardgate.decisions"))
            .sum();
        if decisions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(decisions, 0);
}
