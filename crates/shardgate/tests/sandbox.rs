//! `shardgate sandbox` as a newcomer runs it: shards with streaming replicas come up, psql
//! connects, and the README's demo queries give the documented results. Ctrl-C stops it all.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn psql(port: u16, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", sql])
        .arg(format!("postgres://app:sandbox@127.0.0.1:{port}/app"))
        .output()
        .expect("psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    (out.status.success(), text)
}

#[test]
fn the_sandbox_serves_the_readme_demo() {
    let port = cluster::free_port();
    let mut child = Command::new(BIN)
        .args(["sandbox", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = match common::read_until(stdout, "Press Ctrl-C", Duration::from_secs(180)) {
        Ok(p) => p,
        Err(printed) => {
            let _ = child.kill();
            panic!("the sandbox did not become ready:\n{printed}");
        }
    };
    assert!(
        printed.contains("2 shard(s), 1 replica(s) each"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("psql postgres://app:sandbox@127.0.0.1:{port}/app")),
        "{printed}"
    );

    assert_eq!(
        psql(port, "SELECT name FROM customers WHERE id = 42"),
        (true, "customer 42".into())
    );
    assert_eq!(
        psql(
            port,
            "SELECT count(*), sum(amount) FROM orders WHERE customer_id = 7"
        ),
        (true, "10|69.90".into())
    );
    assert_eq!(
        psql(port, "SELECT name FROM countries WHERE code = 'de'"),
        (true, "Germany".into())
    );
    let (ok, ids) = psql(port, "SELECT id FROM customers WHERE id IN (1, 2, 3, 4)");
    assert!(ok, "{ids}");
    let mut ids: Vec<&str> = ids.lines().collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3", "4"]);
    let (ok, n) = psql(
        port,
        "/* shardgate: shard=s1 */ SELECT count(*) FROM customers",
    );
    assert!(ok, "{n}");
    assert!(
        printed.contains(&format!("-- {n}, the customers on s1")),
        "{printed}"
    );
    let (ok, total) = psql(port, "SELECT count(*) FROM customers");
    assert!(ok, "{total}");
    assert!(
        printed.contains(&format!("-- {total}, merged from every shard")),
        "{printed}"
    );
    let (ok, top) = psql(port, "SELECT id FROM customers ORDER BY id DESC LIMIT 3");
    assert!(ok, "{top}");
    let top: Vec<u64> = top.lines().map(|l| l.parse().unwrap()).collect();
    let n: u64 = total.parse().unwrap();
    assert_eq!(top, [n, n - 1, n - 2], "ids 1..{n}");

    // Ctrl-C stops the proxy and every server it started.
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the sandbox did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!psql(port, "SELECT 1").0, "the proxy still answers");
}

/// A port outside both the ephemeral range (32768 and up) and `free_port`'s range.
const TAKEN_PORT: u16 = 15433;

#[test]
fn a_taken_port_is_refused_before_any_postgresql_starts() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", TAKEN_PORT))
        .unwrap_or_else(|e| panic!("this test needs 127.0.0.1:{TAKEN_PORT} free: {e}"));
    // The sandbox keeps its clusters here; if it started any, the directory would exist.
    let dir = std::env::temp_dir().join(format!("shardgate-sandbox-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(BIN)
        .args(["sandbox", "--port", &TAKEN_PORT.to_string(), "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    drop(holder);
    let started = dir.exists();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{TAKEN_PORT} is already in use")),
        "{err}"
    );
    assert!(err.contains("--port"), "{err}");
    assert!(!err.contains("starting shard"), "{err}");
    assert!(
        !started,
        "the sandbox created {} before checking its port",
        dir.display()
    );
}
