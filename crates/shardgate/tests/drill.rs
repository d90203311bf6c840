//! The failover drill as a user runs it: `shardgate sandbox --sync --dir D` (the real binary,
//! two shards with a synchronous replica each), then `shardgate drill failover --config
//! D/shardgate.yaml --shard s0`. The sandbox's replicas are synchronous (a commit waits while
//! its replica is stopped and completes once it is started again with the command the config
//! notes), the drill stops s0's primary with its `stop_command`, the proxy promotes the
//! replica, writes come back and nothing acknowledged is lost. Ctrl-C then stops everything
//! the sandbox started.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
/// The sandbox's proxy port (below the kernel's ephemeral range).
const PORT: u16 = 24_400;

/// The sandbox binary, interrupted (and waited for) when dropped; its directory is removed
/// then (its log, next to it, is kept).
struct Sandbox {
    child: Child,
    dir: PathBuf,
}

impl Sandbox {
    /// Starts `shardgate sandbox --sync` keeping its files in `dir`; returns once it says it
    /// is ready.
    fn start(dir: &Path) -> Sandbox {
        let mut child = Command::new(BIN)
            .args(["sandbox", "--sync", "--shards", "2", "--replicas", "1"])
            .args(["--port", &PORT.to_string(), "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut sandbox = Sandbox {
            child,
            dir: dir.to_owned(),
        };
        let printed = match common::read_until(stdout, "Press Ctrl-C", Duration::from_secs(240)) {
            Ok(p) => p,
            Err(printed) => {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                sandbox.interrupt();
                panic!("the sandbox did not become ready:\n{printed}\n{log}");
            }
        };
        let config = dir.join("shardgate.yaml");
        assert!(
            printed.contains(&format!("Config: {}", config.display())),
            "{printed}"
        );
        assert!(printed.contains("synchronous"), "{printed}");
        sandbox
    }

    /// SIGINT, then waits for the exit (SIGKILL after a minute).
    fn interrupt(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: signals the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.interrupt().is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// psql with `sql` against `url`: success and its output (stdout, then stderr).
fn psql(url: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", sql, url])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql");
    (out.status.success(), text(&out))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn sh(command: &str) {
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out));
}

fn proxy_url(db: &str) -> String {
    format!("postgres://app:sandbox@127.0.0.1:{PORT}/{db}")
}

/// The server URLs of each shard (primary first) with their stop commands, and, from the
/// comment above each, how to start it again.
struct Servers {
    shards: HashMap<String, Vec<(String, String)>>,
    start: HashMap<String, String>,
}

fn servers(config: &Path) -> Servers {
    let c = sgconfig::load_file(config).unwrap();
    assert_eq!(c.admin_users, ["ops"]);
    let mut shards = HashMap::new();
    for (name, shard) in c.databases["app"].shards.iter() {
        let list: Vec<(String, String)> = shard
            .servers()
            .map(|s| {
                let stop = s
                    .stop_command
                    .clone()
                    .expect("a stop_command for every server");
                assert!(stop.contains("-m immediate"), "{stop}");
                (s.url.clone(), stop)
            })
            .collect();
        assert_eq!(list.len(), 2, "{name}: a primary and a replica");
        shards.insert(name.to_owned(), list);
    }
    let text = std::fs::read_to_string(config).unwrap();
    let mut start = HashMap::new();
    let mut pending = None;
    for line in text.lines() {
        if let Some((_, cmd)) = line.split_once("# start again: ") {
            pending = Some(cmd.to_owned());
        } else if let (Some(cmd), Some((_, rest))) = (pending.take(), line.split_once("url: \"")) {
            start.insert(rest.split('"').next().unwrap().to_owned(), cmd);
        }
    }
    assert_eq!(start.len(), 4, "a start command for every server:\n{text}");
    Servers { shards, start }
}

/// `host:port` of a server URL.
fn addr(url: &str) -> String {
    let a = sgconfig::ServerAddress::parse(url).unwrap();
    format!("{}:{}", a.host, a.port)
}

/// Processes (other than this one) whose command line names `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.chars().all(|c| c.is_ascii_digit()) && n != me
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// A commit on s1 waits while s1's only replica is stopped, and completes once it is
/// started again: the replica is synchronous. The replica never inherited the setting.
fn commits_wait_for_the_replica(servers: &Servers) {
    for shard in ["s0", "s1"] {
        let [(primary, _), (replica, _)] = &servers.shards[shard][..] else {
            unreachable!()
        };
        assert_eq!(
            psql(
                primary,
                "SELECT string_agg(sync_state, ',') FROM pg_stat_replication"
            ),
            (true, "quorum".into()),
            "{shard}'s replica is a synchronous standby"
        );
        assert_eq!(
            psql(replica, "SHOW synchronous_standby_names"),
            (true, String::new()),
            "{shard}'s replica did not inherit synchronous_standby_names"
        );
    }
    let [(primary, _), (replica, stop)] = &servers.shards["s1"][..] else {
        unreachable!()
    };
    let (ok, out) = psql(
        &proxy_url("app"),
        "/* shardgate: shard=s1 */ CREATE TABLE sync_probe (i int)",
    );
    assert!(ok, "{out}");
    sh(stop);
    let mut insert = Command::new("psql")
        .args(["-X", "-A", "-t", "-c"])
        .arg("/* shardgate: shard=s1 */ INSERT INTO sync_probe VALUES (1)")
        .arg(proxy_url("app"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let waiting = insert.try_wait().unwrap().is_none();
    let (_, on_primary) = psql(
        primary,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
    );
    sh(&servers.start[replica]);
    let out = insert.wait_with_output().unwrap();
    assert!(
        waiting,
        "the commit returned with the replica stopped: {}",
        text(&out)
    );
    assert_eq!(
        on_primary, "1",
        "one backend waits for the synchronous replica"
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        psql(replica, "SELECT count(*) FROM sync_probe"),
        (true, "1".into())
    );
}

#[test]
fn the_drill_fails_over_a_synchronous_sandbox_without_losing_writes() {
    let dir: PathBuf = common::temp_dir("drill", "failover");
    let mut sandbox = Sandbox::start(&dir);
    let config = dir.join("shardgate.yaml");
    let servers = servers(&config);
    commits_wait_for_the_replica(&servers);

    let out = Command::new(BIN)
        .args(["drill", "failover", "--config"])
        .arg(&config)
        .args(["--shard", "s0", "--duration", "12", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("drill stderr:\n{stderr}\ndrill stdout:\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{stdout}\n{stderr}"));

    // The drill itself: it wrote, stopped s0's primary for real, read everything back.
    let [(old_primary, _), (replica, _)] = &servers.shards["s0"][..] else {
        unreachable!()
    };
    assert_eq!(report["stopped_server"], addr(old_primary), "{report}");
    assert!(report["stop_command_ms"].is_u64(), "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 0, "{report}");
    assert!(
        !psql(old_primary, "SELECT 1").0,
        "the old primary still answers"
    );
    assert_eq!(report["lost"], 0, "acknowledged writes lost: {report}");

    // The proxy's side: it promoted the replica and writes came back.
    assert_eq!(report["new_primary"], addr(replica), "{report}");
    assert!(report["promote_ms"].is_u64(), "{report}");
    assert!(report["detect_ms"].is_u64(), "{report}");
    assert_eq!(report["writes_came_back"], true, "{report}");
    assert_eq!(report["read_back_from"], "proxy", "{report}");
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(
        psql(replica, "SELECT pg_is_in_recovery()"),
        (true, "f".into())
    );

    // Ctrl-C stops the proxy and every server the sandbox started.
    let status = sandbox.interrupt().expect("the sandbox stops on SIGINT");
    assert!(status.success(), "{status}");
    assert!(
        !psql(&proxy_url("app"), "SELECT 1").0,
        "the proxy still answers"
    );
    for list in servers.shards.values() {
        for (url, _) in list {
            assert!(!psql(url, "SELECT 1").0, "{} still answers", addr(url));
        }
    }
    let left = processes_in(&dir);
    assert!(left.is_empty(), "still running: {left:#?}");
    drop(sandbox);
    let _ = std::fs::remove_file(dir.with_extension("log"));
}
