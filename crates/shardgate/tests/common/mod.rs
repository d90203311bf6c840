//! What the binary's tests share: a PostgreSQL cluster of their own (SCRAM, superuser
//! password `pw`), a fresh directory per test, writing a file whole, and reading a child's
//! output until it says it is ready.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use cluster::{AuthMethod, Cluster, ClusterOptions};

/// A cluster of the test's own, stopped and removed when dropped.
pub fn pg() -> Cluster {
    Cluster::start(ClusterOptions {
        password: Some("pw".into()),
        auth: AuthMethod::ScramSha256,
        ..ClusterOptions::default()
    })
    .unwrap()
}

/// An empty directory `shardgate-<prefix>-<name>-<pid>` under the system's temporary one.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardgate-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn write(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Reads `out` line by line until a line contains `marker` (within `within`): everything
/// printed by then, or, on time out or end of output, what was printed.
pub fn read_until(
    out: std::process::ChildStdout,
    marker: &str,
    within: std::time::Duration,
) -> Result<String, String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + within;
    let mut printed = String::new();
    while !printed.contains(marker) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
            }
            Err(_) => return Err(printed),
        }
    }
    Ok(printed)
}
