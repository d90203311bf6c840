//! Locating the PostgreSQL server programs (`initdb`, `pg_ctl`, `pg_basebackup`, ...).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ClusterError;

/// Programs that must all live in the chosen directory.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "pg_basebackup"];

/// Environment variable that, when set, names the directory to use before any search.
pub const BINDIR_ENV: &str = "SHARDGATE_PG_BINDIR";

/// Directory holding the PostgreSQL server programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds a directory holding `initdb`, `pg_ctl` and `pg_basebackup`.
    ///
    /// Order: `$SHARDGATE_PG_BINDIR` (if set), then `PATH` (following a symlinked
    /// `initdb` to its real directory when needed), then `pg_config --bindir`, then
    /// the highest version in `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<Self, ClusterError> {
        let found = std::env::var_os(BINDIR_ENV)
            .map(PathBuf::from)
            .filter(|dir| has_all(dir))
            .or_else(search_path)
            .or_else(from_pg_config)
            .or_else(|| highest_versioned(Path::new("/usr/lib/postgresql")));
        match found {
            Some(bindir) => {
                tracing::debug!(bindir = %bindir.display(), "found PostgreSQL binaries");
                Ok(PgBinaries { bindir })
            }
            None => Err(ClusterError::BinariesNotFound),
        }
    }

    /// Uses `bindir` as is, after checking it holds the required programs.
    pub fn from_dir(bindir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let bindir = bindir.into();
        if has_all(&bindir) {
            Ok(PgBinaries { bindir })
        } else {
            Err(ClusterError::BinariesNotFound)
        }
    }

    /// Path of the program `name` in [`Self::bindir`] (whether or not it exists).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The `psql` client: the one in `bindir` if present, else the first on `PATH`,
    /// else `/usr/bin/psql`.
    pub fn psql(&self) -> PathBuf {
        let own = self.tool("psql");
        if is_executable(&own) {
            return own;
        }
        path_dirs()
            .map(|dir| dir.join("psql"))
            .find(|p| is_executable(p))
            .unwrap_or_else(|| PathBuf::from("/usr/bin/psql"))
    }

    /// Major version reported by `pg_ctl --version` (e.g. 15), if it can be read.
    pub fn major_version(&self) -> Option<u32> {
        let out = Command::new(self.tool("pg_ctl"))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().last()?;
        version
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_all(dir: &Path) -> bool {
    REQUIRED.iter().all(|tool| is_executable(&dir.join(tool)))
}

fn path_dirs() -> impl Iterator<Item = PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

/// First `PATH` entry with an `initdb`; prefers the directory the program really
/// lives in, since `PATH` may only hold symlinks to some of the tools.
fn search_path() -> Option<PathBuf> {
    for dir in path_dirs() {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            continue;
        }
        if let Some(real_dir) = std::fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if has_all(&real_dir) {
                return Some(real_dir);
            }
        }
        if has_all(&dir) {
            return Some(dir);
        }
    }
    None
}

fn from_pg_config() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    has_all(&dir).then_some(dir)
}

/// Parses a directory name such as `15` or `9.6` into comparable components.
fn version_key(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

fn highest_versioned(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let key = version_key(&entry.file_name())?;
            Some((key, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_order_numerically() {
        let mut keys: Vec<Vec<u32>> = ["9.6", "15", "10", "16"]
            .iter()
            .filter_map(|v| version_key(OsStr::new(v)))
            .collect();
        keys.sort();
        assert_eq!(keys, vec![vec![9, 6], vec![10], vec![15], vec![16]]);
        assert!(version_key(OsStr::new("common")).is_none());
    }

    #[test]
    fn missing_dir_is_rejected() {
        let err = PgBinaries::from_dir("/nonexistent/shardgate/bin").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("apt-get install postgresql"), "{text}");
    }
}
