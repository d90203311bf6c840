//! What the binary's tests share: a PostgreSQL cluster of their own (SCRAM, superuser
//! password `pw`), a fresh directory per test, and writing a file whole.

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
