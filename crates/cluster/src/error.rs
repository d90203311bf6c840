//! Errors raised while creating, driving and tearing down local PostgreSQL clusters.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong with a [`crate::Cluster`] or [`crate::PgBinaries`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory holding `initdb`, `pg_ctl` and `pg_basebackup` was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not found on PATH, \
         via pg_config --bindir, or in /usr/lib/postgresql/*/bin; install them, e.g. \
         `apt-get install postgresql` (Debian/Ubuntu), or point SHARDGATE_PG_BINDIR at \
         the directory holding them"
    )]
    BinariesNotFound,

    /// Running as root, but the unprivileged OS user PostgreSQL must run as is missing.
    #[error(
        "running as root, but the OS user `{0}` that PostgreSQL must run as does not exist; \
         create it (e.g. `useradd --system --create-home {0}`) or run as an unprivileged user"
    )]
    UserNotFound(String),

    /// A filesystem or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// An external command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    /// `pg_ctl start` failed; `log_tail` holds the end of the server log of that attempt.
    #[error(
        "could not start PostgreSQL in {data_dir}: `{command}` failed: {stderr}\n\
         --- server log (tail) ---\n{log_tail}"
    )]
    StartFailed {
        data_dir: PathBuf,
        command: String,
        stderr: String,
        log_tail: String,
    },

    /// Waiting for some condition took longer than allowed.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout { what: String, seconds: u64 },

    /// The [`crate::ClusterOptions`] cannot work as given.
    #[error("invalid cluster options: {0}")]
    InvalidOptions(String),
}

impl ClusterError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}
