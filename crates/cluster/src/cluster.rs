//! A throwaway PostgreSQL cluster (primary or streaming replica) living in its own directory.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::os::{self, RunAs};
use crate::{free_port, ClusterError, PgBinaries};

/// Address every cluster listens on.
const HOST: &str = "127.0.0.1";
/// How many automatically picked ports to try before giving up.
const PORT_ATTEMPTS: usize = 5;
/// Seconds `pg_ctl` may wait for start, stop and promote.
const PG_CTL_TIMEOUT_SECS: u64 = 60;
/// How long to wait, after `pg_ctl start` returned, for a successful `select 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for killed processes to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(15);
/// File in the data directory holding our settings; `postgresql.conf` includes it.
const SETTINGS_FILE: &str = "shardgate.conf";
/// Lines of server log quoted in start errors.
const LOG_TAIL_LINES: usize = 40;
/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Environment variables that could redirect the PostgreSQL tools elsewhere.
const CLEARED_ENV: [&str; 10] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGOPTIONS",
];

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Authentication method written to `pg_hba.conf` for TCP (and replication) connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    ScramSha256,
    Md5,
}

impl AuthMethod {
    /// The method's name as `pg_hba.conf` and `initdb` spell it.
    pub fn hba_name(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }

    fn needs_password(self) -> bool {
        !matches!(self, AuthMethod::Trust)
    }
}

/// How to create a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Port to listen on; `None` picks a free loopback port (retrying on conflicts).
    pub port: Option<u16>,
    /// Name of the bootstrap superuser. Ignored by [`Cluster::start_replica`], which
    /// inherits the primary's.
    pub superuser: String,
    /// Superuser password; required for `ScramSha256` and `Md5`. Ignored by
    /// [`Cluster::start_replica`], which inherits the primary's.
    pub password: Option<String>,
    /// Method for host and replication connections in `pg_hba.conf`.
    pub auth: AuthMethod,
    /// Extra `postgresql.conf` lines `name = value`; values are written verbatim.
    pub settings: Vec<(String, String)>,
    /// Where to create the cluster directory; `None` uses [`std::env::temp_dir`].
    pub base_dir: Option<PathBuf>,
    /// When true, dropping the cluster stops the server but keeps its directory.
    pub keep: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            port: None,
            superuser: "postgres".to_string(),
            password: None,
            auth: AuthMethod::Trust,
            settings: Vec::new(),
            base_dir: None,
            keep: false,
        }
    }
}

impl ClusterOptions {
    fn validate(&self, is_replica: bool) -> Result<(), ClusterError> {
        if !is_replica {
            if self.superuser.is_empty() {
                return Err(ClusterError::InvalidOptions(
                    "superuser must not be empty".into(),
                ));
            }
            if self.auth.needs_password() && self.password.is_none() {
                return Err(ClusterError::InvalidOptions(format!(
                    "auth {:?} needs a superuser password",
                    self.auth
                )));
            }
        }
        if self.port == Some(0) {
            return Err(ClusterError::InvalidOptions(
                "port 0 is not allowed; use None to pick a free port".into(),
            ));
        }
        for (name, value) in &self.settings {
            let bad_name = name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if bad_name || value.contains(['\n', '\r']) {
                return Err(ClusterError::InvalidOptions(format!(
                    "bad setting {name:?} = {value:?}"
                )));
            }
        }
        Ok(())
    }
}

/// A running (or stopped) local PostgreSQL server owned by this process.
///
/// Dropping it stops the server immediately and removes its directory unless
/// [`ClusterOptions::keep`] was set.
#[derive(Debug)]
pub struct Cluster {
    bins: PgBinaries,
    run_as: Option<RunAs>,
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    socket_dir: PathBuf,
    separate_socket_dir: bool,
    port: u16,
    superuser: String,
    password: Option<String>,
    auth: AuthMethod,
    settings: Vec<(String, String)>,
    keep: bool,
    base_dir: Option<PathBuf>,
}

impl Cluster {
    /// Creates and starts a new primary with binaries from [`PgBinaries::find`].
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        Self::start_with(PgBinaries::find()?, opts)
    }

    /// Creates and starts a new primary with the given binaries.
    pub fn start_with(bins: PgBinaries, opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        opts.validate(false)?;
        let mut cluster =
            Cluster::prepare(bins, &opts, opts.superuser.clone(), opts.password.clone())?;
        cluster.initdb()?;
        cluster.write_hba()?;
        cluster.include_settings_file()?;
        cluster.boot(opts.port)?;
        if cluster.auth == AuthMethod::Md5 {
            // initdb may have stored a SCRAM verifier; re-set it under password_encryption = md5
            // so clients really go through the MD5 exchange.
            if let Some(password) = cluster.password.clone() {
                let sql = format!(
                    "ALTER ROLE {} PASSWORD {}",
                    quote_ident(&cluster.superuser),
                    quote_literal(&password)
                );
                cluster.psql("postgres", &sql)?;
            }
        }
        tracing::info!(
            port = cluster.port,
            data_dir = %cluster.data_dir.display(),
            "started PostgreSQL cluster"
        );
        Ok(cluster)
    }

    /// Clones this primary with `pg_basebackup -R -X stream` into a new directory and
    /// starts it as a hot standby on its own port.
    ///
    /// The replica inherits the primary's superuser and password (its catalog is a copy);
    /// `opts.auth`, `port`, `settings`, `base_dir` and `keep` apply to the replica.
    pub fn start_replica(&self, opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        opts.validate(true)?;
        if opts.auth.needs_password() && self.password.is_none() {
            return Err(ClusterError::InvalidOptions(format!(
                "replica auth {:?} needs a password, but the primary's superuser has none",
                opts.auth
            )));
        }
        let mut replica = Cluster::prepare(
            self.bins.clone(),
            &opts,
            self.superuser.clone(),
            self.password.clone(),
        )?;
        let mut cmd = replica.server_command("pg_basebackup");
        cmd.arg("-D")
            .arg(&replica.data_dir)
            .args(["-h", HOST, "-p", &self.port.to_string()])
            .args(["-U", &self.superuser])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w"]);
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        run_checked(cmd)?;
        replica.write_hba()?;
        replica.boot(opts.port)?;
        tracing::info!(
            port = replica.port,
            primary_port = self.port,
            data_dir = %replica.data_dir.display(),
            "started PostgreSQL replica"
        );
        Ok(replica)
    }

    /// Options that would create a cluster like this one (on a new port), handy for
    /// [`Cluster::start_replica`].
    pub fn replica_options(&self) -> ClusterOptions {
        ClusterOptions {
            port: None,
            superuser: self.superuser.clone(),
            password: self.password.clone(),
            auth: self.auth,
            settings: self.settings.clone(),
            base_dir: self.base_dir.clone(),
            keep: self.keep,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// The PostgreSQL data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The cluster's own directory: holds the data directory and the server log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server log written by `pg_ctl -l`.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Directory of the server's Unix-domain socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn auth(&self) -> AuthMethod {
        self.auth
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The OS user the server runs as when it is not the current one (we are root).
    pub fn os_user(&self) -> Option<&str> {
        self.run_as.as_ref().map(|u| u.name.as_str())
    }

    /// `postgres://user[:password]@127.0.0.1:port/database`, percent-encoded.
    pub fn url(&self, database: &str) -> String {
        let password = self
            .password
            .as_deref()
            .map(|p| format!(":{}", percent_encode(p)))
            .unwrap_or_default();
        format!(
            "postgres://{}{}@{}:{}/{}",
            percent_encode(&self.superuser),
            password,
            HOST,
            self.port,
            percent_encode(database)
        )
    }

    /// A `psql` command connected as the superuser over TCP to `database`
    /// (`-X -A -t -v ON_ERROR_STOP=1`, `PGPASSWORD` set); add `-c`/`-f` and run it.
    pub fn psql_command(&self, database: &str) -> Command {
        let mut cmd = Command::new(self.bins.psql());
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", HOST, "-p", &self.port.to_string()])
            .args(["-U", &self.superuser, "-d", database])
            .stdin(Stdio::null());
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10");
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        cmd
    }

    /// Runs `sql` with `psql -c` and returns its stdout without the final newline.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(database);
        cmd.args(["-c", sql]);
        let out = run_checked(cmd)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(drop)
    }

    /// Stops the server with `pg_ctl stop -m fast -w`; does nothing if it is not running.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again (after [`Cluster::stop`] or [`Cluster::kill`]) on the same
    /// port and waits until it accepts connections; does nothing if it is running.
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    /// Crashes the server: SIGKILLs the postmaster and its children and waits until
    /// they are gone. Does nothing if it is not running.
    pub fn kill(&mut self) -> Result<(), ClusterError> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        let children = os::children_of(pid);
        os::sigkill(pid)?;
        // Backends would notice the postmaster's death on their own, but only eventually;
        // a restart fails while any of them still holds the shared memory.
        for &child in &children {
            os::sigkill(child)?;
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        while std::iter::once(pid)
            .chain(children.iter().copied())
            .any(os::process_alive)
        {
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout {
                    what: format!("postmaster {pid} and its children to exit after SIGKILL"),
                    seconds: KILL_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // If nothing reaps the dead postmaster it stays a zombie, and a restart would take
        // the stale lock files for a live server; remove them.
        let lock_files = [
            self.data_dir.join("postmaster.pid"),
            self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)),
            self.socket_dir.join(format!(".s.PGSQL.{}", self.port)),
        ];
        for file in lock_files {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ClusterError::io(format!("removing {}", file.display()), e)),
            }
        }
        tracing::info!(pid, port = self.port, "killed PostgreSQL cluster");
        Ok(())
    }

    /// Promotes a standby with `pg_ctl promote -w`.
    pub fn promote(&self) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args([
            "promote",
            "-w",
            "-t",
            &PG_CTL_TIMEOUT_SECS.to_string(),
            "-D",
        ])
        .arg(&self.data_dir);
        run_checked(cmd).map(drop)
    }

    /// Whether the postmaster is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// PID of the live postmaster (first line of `postmaster.pid`), `None` if not running.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        os::process_alive(pid).then_some(pid)
    }

    /// The last `lines` lines of the server log.
    pub fn server_log_tail(&self, lines: usize) -> String {
        read_log_tail(&self.log_file, 0, lines)
    }

    /// Creates the directories and the (not yet initialised) `Cluster`, so that a failure
    /// in any later step cleans up through `Drop`.
    fn prepare(
        bins: PgBinaries,
        opts: &ClusterOptions,
        superuser: String,
        password: Option<String>,
    ) -> Result<Cluster, ClusterError> {
        let run_as = os::server_identity()?;
        let base = match &opts.base_dir {
            Some(base) => std::path::absolute(base)
                .map_err(|e| ClusterError::io(format!("resolving {}", base.display()), e))?,
            None => std::env::temp_dir(),
        };
        let dir = create_unique_dir(&base, "shardgate-cluster")?;
        let data_dir = dir.join("data");
        let mut cluster = Cluster {
            bins,
            run_as,
            log_file: dir.join("server.log"),
            socket_dir: data_dir.clone(),
            separate_socket_dir: false,
            data_dir,
            dir,
            port: 0,
            superuser,
            password,
            auth: opts.auth,
            settings: opts.settings.clone(),
            keep: opts.keep,
            base_dir: opts.base_dir.clone(),
        };
        cluster.make_private(&cluster.dir.clone())?;
        std::fs::create_dir(&cluster.data_dir)
            .map_err(|e| ClusterError::io(format!("creating {}", cluster.data_dir.display()), e))?;
        cluster.make_private(&cluster.data_dir.clone())?;
        let socket_len = cluster.data_dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len();
        if socket_len > MAX_SOCKET_PATH {
            // The data directory's path is too long for a Unix socket; use a short one.
            cluster.socket_dir = create_unique_dir(Path::new("/tmp"), "shardgate-sock")?;
            cluster.separate_socket_dir = true;
            cluster.make_private(&cluster.socket_dir.clone())?;
        }
        Ok(cluster)
    }

    /// Gives `path` to the server's OS user (when root) with mode 0700.
    fn make_private(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some(user) = &self.run_as {
            user.chown(path)?;
        }
        os::set_mode(path, 0o700)
    }

    /// Writes `contents` to `path`, owned by the server's OS user, mode 0600.
    fn write_private(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        std::fs::write(path, contents)
            .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))?;
        if let Some(user) = &self.run_as {
            user.chown(path)?;
        }
        os::set_mode(path, 0o600)
    }

    /// A command for a server-side program, run as the server's OS user from the cluster dir.
    fn server_command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bins.tool(tool));
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env("LANG", "C");
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        if let Some(user) = &self.run_as {
            user.apply(&mut cmd);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                &self.superuser,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg("--auth-local=trust")
            .arg(format!("--auth-host={}", self.auth.hba_name()));
        let pwfile = self.dir.join("pwfile");
        if let Some(password) = &self.password {
            self.write_private(&pwfile, &format!("{password}\n"))?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let result = run_checked(cmd);
        if self.password.is_some() {
            let _ = std::fs::remove_file(&pwfile);
        }
        result.map(drop)
    }

    fn write_hba(&self) -> Result<(), ClusterError> {
        let method = self.auth.hba_name();
        let hba = format!(
            "# TYPE  DATABASE     USER  ADDRESS       METHOD\n\
             local   all          all                 trust\n\
             local   replication  all                 trust\n\
             host    all          all   127.0.0.1/32  {method}\n\
             host    all          all   ::1/128       {method}\n\
             host    replication  all   127.0.0.1/32  {method}\n"
        );
        self.write_private(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    /// Makes `postgresql.conf` include our settings file (copied along by `pg_basebackup`).
    fn include_settings_file(&self) -> Result<(), ClusterError> {
        let path = self.data_dir.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&path)
            .map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?;
        conf.push_str(&format!(
            "\n# shardgate test cluster\ninclude '{SETTINGS_FILE}'\n"
        ));
        self.write_private(&path, &conf)
    }

    fn write_settings(&self) -> Result<(), ClusterError> {
        let mut lines: Vec<(String, String)> = vec![
            ("listen_addresses".into(), quote_conf(HOST)),
            ("port".into(), self.port.to_string()),
            (
                "unix_socket_directories".into(),
                quote_conf(&self.socket_dir.to_string_lossy()),
            ),
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("max_connections".into(), "200".into()),
            ("wal_level".into(), "replica".into()),
            ("max_wal_senders".into(), "10".into()),
            ("max_replication_slots".into(), "10".into()),
            ("hot_standby".into(), "on".into()),
            ("max_prepared_transactions".into(), "50".into()),
            ("shared_buffers".into(), "64MB".into()),
            ("logging_collector".into(), "off".into()),
        ];
        if self.auth == AuthMethod::Md5 {
            lines.push(("password_encryption".into(), "md5".into()));
        }
        lines.extend(self.settings.iter().cloned());
        let mut text =
            String::from("# Generated for a shardgate test cluster; rewritten on start.\n");
        for (name, value) in lines {
            text.push_str(&format!("{name} = {value}\n"));
        }
        self.write_private(&self.data_dir.join(SETTINGS_FILE), &text)
    }

    /// Starts the server for the first time, retrying other ports on conflicts when the
    /// port was picked automatically.
    fn boot(&mut self, fixed_port: Option<u16>) -> Result<(), ClusterError> {
        let attempts = if fixed_port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            self.port = fixed_port.unwrap_or_else(free_port);
            self.write_settings()?;
            match self.pg_ctl_start() {
                Ok(()) => return self.wait_ready(),
                Err(err) if attempt < attempts && is_port_conflict(&err) => {
                    tracing::warn!(port = self.port, attempt, "port taken, retrying: {err}");
                    if self.is_running() {
                        let _ = self.pg_ctl_stop("immediate");
                    }
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log_offset = std::fs::metadata(&self.log_file)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["start", "-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string(), "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file);
        let command = describe(&cmd);
        tracing::debug!(%command, "starting PostgreSQL");
        let out = cmd
            .output()
            .map_err(|e| ClusterError::io(format!("running {command}"), e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::StartFailed {
            data_dir: self.data_dir.clone(),
            command,
            stderr: output_text(&out),
            log_tail: read_log_tail(&self.log_file, log_offset, LOG_TAIL_LINES),
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args([
            "stop",
            "-m",
            mode,
            "-w",
            "-t",
            &PG_CTL_TIMEOUT_SECS.to_string(),
            "-D",
        ])
        .arg(&self.data_dir);
        run_checked(cmd).map(drop)
    }

    /// Polls `select 1` over TCP until it succeeds.
    fn wait_ready(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let err = match self.psql("postgres", "select 1") {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout {
                    what: format!(
                        "PostgreSQL on port {} to accept connections (last error: {err})",
                        self.port
                    ),
                    seconds: READY_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.is_running() {
            if let Err(err) = self.pg_ctl_stop("immediate") {
                tracing::warn!("pg_ctl stop failed, killing the server: {err}");
                if let Err(err) = self.kill() {
                    tracing::warn!("could not kill PostgreSQL: {err}");
                }
            }
        }
        if self.keep {
            tracing::info!(dir = %self.dir.display(), "keeping cluster directory");
            return;
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "could not remove cluster directory: {err}");
        }
        if self.separate_socket_dir {
            let _ = std::fs::remove_dir_all(&self.socket_dir);
        }
    }
}

/// Creates `<base>/<prefix>-<pid>-<counter>-<nanos>`, a name no other cluster uses.
fn create_unique_dir(base: &Path, prefix: &str) -> Result<PathBuf, ClusterError> {
    std::fs::create_dir_all(base)
        .map_err(|e| ClusterError::io(format!("creating {}", base.display()), e))?;
    loop {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClusterError::io(format!("creating {}", path.display()), e)),
        }
    }
}

fn is_port_conflict(err: &ClusterError) -> bool {
    let ClusterError::StartFailed { log_tail, .. } = err else {
        return false;
    };
    [
        "could not bind",
        "Address already in use",
        "could not create any TCP/IP sockets",
    ]
    .iter()
    .any(|needle| log_tail.contains(needle))
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// stderr, or stdout when stderr is empty, trimmed.
fn output_text(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        stderr.trim().to_string()
    }
}

/// Runs `cmd`, turning a non-zero exit into [`ClusterError::Command`].
fn run_checked(mut cmd: Command) -> Result<Output, ClusterError> {
    let command = describe(&cmd);
    tracing::debug!(%command, "running");
    let out = cmd
        .output()
        .map_err(|e| ClusterError::io(format!("running {command}"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            command,
            status: out.status,
            stderr: output_text(&out),
        })
    }
}

/// The last `lines` lines of `path` from byte `offset` on (the whole file if it shrank).
fn read_log_tail(path: &Path, offset: u64, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no server log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if offset <= len { offset } else { 0 };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(could not read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A single-quoted `postgresql.conf` string.
fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A double-quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted SQL string literal (standard_conforming_strings = on).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_conf(r"/a'b\c"), r"'/a''b\\c'");
        assert_eq!(percent_encode("p@ss:w/rd é"), "p%40ss%3Aw%2Frd%20%C3%A9");
    }

    #[test]
    fn options_validation() {
        let scram = ClusterOptions {
            auth: AuthMethod::ScramSha256,
            ..Default::default()
        };
        assert!(matches!(
            scram.validate(false),
            Err(ClusterError::InvalidOptions(_))
        ));
        assert!(scram.validate(true).is_ok());
        let bad_setting = ClusterOptions {
            settings: vec![("work_mem".into(), "1MB\nfsync = on".into())],
            ..Default::default()
        };
        assert!(bad_setting.validate(false).is_err());
        assert!(ClusterOptions::default().validate(false).is_ok());
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let err = ClusterError::StartFailed {
            data_dir: PathBuf::from("/x"),
            command: "pg_ctl start".into(),
            stderr: String::new(),
            log_tail: "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
                .into(),
        };
        assert!(is_port_conflict(&err));
        let other = ClusterError::StartFailed {
            data_dir: PathBuf::from("/x"),
            command: "pg_ctl start".into(),
            stderr: String::new(),
            log_tail: "FATAL:  invalid value for parameter".into(),
        };
        assert!(!is_port_conflict(&other));
    }
}
