//! Shell commands that stop and start a cluster from outside this process: what the sandbox
//! writes into its config as a server's `stop_command` (for `shardgate drill failover`), and
//! how to start that server again afterwards.

use std::path::Path;

use crate::Cluster;

/// Seconds `pg_ctl` waits in these commands.
const WAIT_SECS: u32 = 60;

impl Cluster {
    /// A `sh -c` command that stops the server abruptly: `pg_ctl stop -m immediate`, so
    /// every server process quits at once, with no checkpoint and no WAL handed to the
    /// standbys; the next start runs crash recovery. Run as the server's OS user (through
    /// `runuser` or `su` when we are root).
    pub fn stop_command(&self) -> String {
        self.pg_ctl_command(&format!(
            "stop -D {} -m immediate -w -t {WAIT_SECS}",
            quote(self.data_dir())
        ))
    }

    /// A `sh -c` command that starts the server again (after [`Cluster::stop_command`] ran)
    /// on its port, logging to its log file, and waits until it accepts connections.
    pub fn start_command(&self) -> String {
        self.pg_ctl_command(&format!(
            "start -D {} -l {} -w -t {WAIT_SECS}",
            quote(self.data_dir()),
            quote(self.log_file())
        ))
    }

    /// `pg_ctl <args>` from the cluster's directory, as its OS user.
    fn pg_ctl_command(&self, args: &str) -> String {
        let pg_ctl = format!("{} {args}", quote(&self.binaries().tool("pg_ctl")));
        let run = match self.os_user() {
            None => pg_ctl,
            Some(user) if has_runuser() => format!("runuser -u {} -- {pg_ctl}", quote_str(user)),
            Some(user) => format!(
                "su -s /bin/sh {} -c {}",
                quote_str(user),
                quote_str(&pg_ctl)
            ),
        };
        // From a directory the server's user may enter: pg_ctl needs its working directory.
        format!("cd {} && {run}", quote(self.dir()))
    }
}

/// Whether `runuser` (util-linux) is installed where root finds it.
fn has_runuser() -> bool {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("runuser").is_file()))
        .unwrap_or(false);
    on_path
        || ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
            .iter()
            .any(|p| Path::new(p).is_file())
}

fn quote(path: &Path) -> String {
    quote_str(&path.to_string_lossy())
}

/// A single-quoted word for `sh`.
fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(quote_str("plain"), "'plain'");
        assert_eq!(quote_str("it's"), r"'it'\''s'");
        assert_eq!(quote(Path::new("/a b/c")), "'/a b/c'");
    }
}
