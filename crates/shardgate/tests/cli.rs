//! The command line as an operator uses it: `check` and `run` with SIGHUP reload, against a
//! real PostgreSQL cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster::{AuthMethod, Cluster, ClusterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardgate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(port: u16, pg: &Cluster, users: &[(&str, &str)]) -> String {
    let mut y = format!("listen: 127.0.0.1:{port}\nusers:\n");
    for (u, p) in users {
        y.push_str(&format!(
            "  - {{ name: {u}, password: {p}, server_user: postgres, server_password: pw }}\n"
        ));
    }
    y.push_str(&format!(
        "databases:\n  app:\n    shards:\n      s0: {{ primary: \"postgres://127.0.0.1:{}/postgres\" }}\n",
        pg.port()
    ));
    y
}

fn write(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

async fn can_log_in(port: u16, user: &str, password: &str) -> bool {
    let conninfo = format!("host=127.0.0.1 port={port} user={user} password={password} dbname=app");
    match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            c.simple_query("SELECT 1").await.is_ok()
        }
        Err(_) => false,
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_reports_problems_with_their_place_and_exits_1() {
    let dir = temp_dir("check");
    let file = dir.join("bad.yaml");
    write(
        &file,
        "listen: 127.0.0.1:1\nusers: []\npoool: {}\ndatabases: {}\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", file.display())), "{err}");
    assert!(err.contains("poool"), "{err}");

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sharded.yaml");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&examples)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("map accounts: hash, 8 partitions on bigint over s0, s1"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_shows_range_bounds_as_written() {
    let dir = temp_dir("check-ranges");
    write(
        &dir.join("days.yaml"),
        "name: days\ntype: range\nkey_type: date\nranges:\n  - { from: null, to: 2024-01-01, shard: s0 }\n  - { from: 2024-01-01, to: 2024-06-01, shard: s1 }\n  - { from: 2024-06-01, to: null, shard: s0 }\ntables: [{ table: events, column: day }]\n",
    );
    write(
        &dir.join("ids.yaml"),
        "name: ids\ntype: range\nkey_type: bigint\nranges:\n  - { from: -100, to: 0, shard: s0 }\n  - { from: 0, to: 1000000, shard: s1 }\ndefault: s1\ntables: [{ table: orders, column: id }]\n",
    );
    let file = dir.join("c.yaml");
    write(
        &file,
        "users: [{ name: app, password: x }]\ndatabases:\n  app:\n    shard_maps: [days.yaml, ids.yaml]\n    shards:\n      s0: { primary: \"postgres://127.0.0.1:5432/app\" }\n      s1: { primary: \"postgres://127.0.0.1:5433/app\" }\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "  map days: range, 3 ranges on date over s0, s1; tables: events(day)\n    from unbounded to 2024-01-01: s0\n    from 2024-01-01 to 2024-06-01: s1\n    from 2024-06-01 to unbounded: s0\n",
        "  map ids: range, 2 ranges on bigint over s0, s1; tables: orders(id)\n    from -100 to 0: s0\n    from 0 to 1000000: s1\n    other keys: s1\n",
    ] {
        assert!(text.contains(line), "{text}");
    }

    // A gap names its bounds as the map gives them.
    write(
        &dir.join("days.yaml"),
        "name: days\ntype: range\nkey_type: date\nranges:\n  - { from: null, to: 2024-01-01, shard: s0 }\n  - { from: 2024-06-01, to: null, shard: s1 }\ntables: [{ table: events, column: day }]\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6:13: map `days`: gap between ranges (keys from 2024-01-01 up to 2024-06-01 have no shard)", dir.join("days.yaml").display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_gives_each_error_location_once() {
    let dir = temp_dir("check-once");
    let file = dir.join("c.yaml");
    let map = dir.join("m.yaml");
    write(
        &map,
        "name: h\ntype: hash\nkey_type: bigint\npartitions: many\n",
    );
    for (text, file, place) in [
        // A wrong type in the config.
        ("listen: 127.0.0.1:6432\npool: { size: many }\n", &file, "2:15"),
        // A YAML syntax error in the config.
        ("listen: 127.0.0.1:6432\nusers: [ { name: app }\n", &file, "2:8"),
        // A wrong type in a shard map the config names.
        (
            "users: [{ name: app, password: x }]\ndatabases:\n  app:\n    shard_maps: [m.yaml]\n    shards:\n      s0: { primary: \"postgres://127.0.0.1:5432/app\" }\n",
            &map,
            "4:13",
        ),
    ] {
        write(&dir.join("c.yaml"), text);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(dir.join("c.yaml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        let prefix = format!("{}:{place}: ", file.display());
        assert!(err.starts_with(&prefix), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let (line, column) = place.split_once(':').unwrap();
        assert!(
            !err.contains(&format!("line {line}")) && !err.contains(&format!("column {column}")),
            "the place is given twice: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sighup_reloads_a_valid_config_and_keeps_the_old_one_otherwise() {
    let pg = Cluster::start(ClusterOptions {
        password: Some("pw".into()),
        auth: AuthMethod::ScramSha256,
        ..ClusterOptions::default()
    })
    .unwrap();
    let dir = temp_dir("reload");
    let file = dir.join("config.yaml");
    let port = cluster::free_port();
    write(&file, &config(port, &pg, &[("alice", "a-pw")]));
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let pid = proc.0.id() as i32;
    let mut up = false;
    for _ in 0..100 {
        if can_log_in(port, "alice", "a-pw").await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the proxy did not come up");
    // A client that stays connected across reloads.
    let (stayer, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=alice password=a-pw dbname=app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    stayer.simple_query("SELECT 1").await.unwrap();
    assert!(!can_log_in(port, "bob", "b-pw").await);

    // A valid new config: bob is added.
    write(
        &file,
        &config(port, &pg, &[("alice", "a-pw"), ("bob", "b-pw")]),
    );
    // SAFETY: sends a signal to the child process this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let mut reloaded = false;
    for _ in 0..100 {
        if can_log_in(port, "bob", "b-pw").await {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "bob cannot log in after SIGHUP");
    stayer
        .simple_query("SELECT 1")
        .await
        .expect("the connected client was kept");

    // An invalid config is refused and logged; the running one stays.
    write(
        &file,
        "listen: 127.0.0.1:1\nusers: [{ name: carol }]\ndatabases: {}\n",
    );
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let mut logged = false;
    for _ in 0..100 {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        if log.contains("configuration not reloaded") {
            assert!(log.contains("needs a password"), "{log}");
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "the refusal was not logged");
    assert!(can_log_in(port, "bob", "b-pw").await);
    stayer.simple_query("SELECT 1").await.unwrap();
    drop(proc);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn route_prints_the_plan_or_the_refusal() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sharded.yaml");
    let run = |sql: &str, params: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["route", "--config"]).arg(&examples);
        for p in params {
            cmd.args(["--param", p]);
        }
        let out = cmd.arg(sql).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // 42 hashes to remainder 2 of 8 (PostgreSQL's satisfies_hash_partition agrees), and the
    // example map gives remainders 0-3 to s0.
    let (code, out) = run("SELECT * FROM accounts WHERE account_id = 42", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("route: shard s0"), "{out}");
    let (_, out) = run("SELECT * FROM accounts WHERE account_id = $1", &["42"]);
    assert!(out.contains("route: shard s0"), "{out}");
    let (code, out) = run("SELECT count(*) FROM transfers", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rows merged by the proxy"), "{out}");
    assert!(out.contains("Aggregate aggs count(#1)"), "{out}");
    assert!(
        out.contains("Scatter [s0, s1]: SELECT count(*) FROM transfers"),
        "{out}"
    );
    let (code, out) = run("SELECT string_agg(note, ',') FROM transfers", &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("refused (0A000)"), "{out}");
    let (_, out) = run("SELECT * FROM events WHERE day = '2026-03-01'", &[]);
    assert!(out.contains("route: shard s1"), "{out}");
    let (code, out) = run("COPY accounts (account_id, balance) FROM STDIN", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("each row to the shard of its key"), "{out}");
    let (_, out) = run(
        "INSERT INTO accounts (account_id, balance) VALUES (42, 1), (7, 2), (9, 3)",
        &[],
    );
    assert!(out.contains("of the INSERT's 3 rows"), "{out}");
}

/// `run` on a listen address that is taken says which, and what to do.
#[test]
fn run_on_a_taken_address_says_which() {
    const TAKEN_PORT: u16 = 15434;
    let _held = std::net::TcpListener::bind(("127.0.0.1", TAKEN_PORT)).expect("hold the port");
    let dir = temp_dir("taken");
    let file = dir.join("c.yaml");
    write(
        &file,
        &format!(
            "listen: 127.0.0.1:{TAKEN_PORT}\nusers:\n  - {{ name: app, password: pw }}\n\
             databases:\n  app:\n    shards:\n      s0: {{ primary: \"postgres://127.0.0.1:1/postgres\" }}\n"
        ),
    );
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{TAKEN_PORT} is already in use"))
            && err.contains("listen:"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
