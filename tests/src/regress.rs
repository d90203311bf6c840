//! PostgreSQL's own regression suite through the proxy: runs regression files with psql the
//! way pg_regress does, once straight against a server ("direct") and once through a proxy in
//! front of an identical fresh server, and compares the two outputs file by file.
//!
//! The regression files (PostgreSQL 15's `sql/`, `data/`, `parallel_schedule`) are read at run
//! time from `$SHARDGATE_REGRESS_DIR`, else from `shared/regress15` beside the repository.
//! Each side gets a cluster of its own, so that roles and tablespaces one run creates never
//! disturb the other. What is compared is direct against proxy, not the expected files: the
//! C test library (`regress.so`) is not built here, so some files fail, the same way both ways.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{AuthMethod, Cluster, ClusterOptions};

/// The database every run uses, as pg_regress names it (some files name it in their SQL).
pub const DATABASE: &str = "regression";
/// A file whose psql has not finished after this long is killed.
pub const FILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Password of the proxy's user (the servers trust loopback connections).
const PROXY_PASSWORD: &str = "regress-pw";
/// Lines of each diff printed with the summary.
const DIFF_HEAD_LINES: usize = 30;
/// Characters of each printed diff line (result rows can be very wide).
const DIFF_HEAD_WIDTH: usize = 160;
/// Marks the per-side build directory in outputs, so that paths compare equal.
const BUILDDIR_MARK: &str = "@abs_builddir@";

/// Environment variables that could point psql elsewhere or change its output; pg_regress
/// clears them too.
const CLEARED_ENV: &[&str] = &[
    "PGCHANNELBINDING",
    "PGCLIENTENCODING",
    "PGCONNECT_TIMEOUT",
    "PGDATA",
    "PGDATABASE",
    "PGGSSENCMODE",
    "PGGSSLIB",
    "PGHOSTADDR",
    "PGKRBSRVNAME",
    "PGOPTIONS",
    "PGPASSFILE",
    "PGREQUIREPEER",
    "PGREQUIRESSL",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLKEY",
    "PGSSLMAXPROTOCOLVERSION",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLSNI",
    "PGTARGETSESSIONATTRS",
    "PGUSER",
    "LANGUAGE",
    "LC_ALL",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "LANG",
];

/// Where the regression files are: `$SHARDGATE_REGRESS_DIR`, else `shared/regress15` beside
/// the repository.
pub fn regress_dir() -> PathBuf {
    let dir = std::env::var_os("SHARDGATE_REGRESS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/regress15"));
    std::fs::canonicalize(&dir).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL 15 regression files not found at {} ({e}); set SHARDGATE_REGRESS_DIR",
            dir.display()
        )
    })
}

/// The file names of `parallel_schedule`, in order (its parallel groups run one file at a
/// time here).
pub fn schedule(dir: &Path) -> Vec<String> {
    let path = dir.join("parallel_schedule");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("test:"))
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect()
}

/// `wanted` in schedule order, with `test_setup` first (every other file depends on it).
/// Panics on a name the schedule does not have.
pub fn in_schedule_order(dir: &Path, wanted: &[&str]) -> Vec<String> {
    let all = schedule(dir);
    for name in wanted {
        assert!(
            all.iter().any(|n| n == name),
            "{name} is not in parallel_schedule"
        );
    }
    all.into_iter()
        .filter(|n| n == "test_setup" || wanted.contains(&n.as_str()))
        .collect()
}

/// How psql reaches the regression database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// Straight to PostgreSQL.
    Direct,
    /// Through the proxy in session pool mode.
    Session,
    /// Through the proxy in transaction pool mode, moving between server connections.
    Transaction,
    /// Straight to a second fresh PostgreSQL: shows what differs between two direct runs.
    Control,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Session => "session",
            Via::Transaction => "transaction",
            Via::Control => "control",
        }
    }
}

/// A cluster set up as pg_regress sets up its temporary instance and database.
struct Server {
    cluster: Cluster,
}

impl Server {
    fn start() -> Server {
        let cluster = Cluster::start(ClusterOptions {
            auth: AuthMethod::Trust,
            settings: vec![
                ("max_prepared_transactions".into(), "10".into()),
                ("max_connections".into(), "50".into()),
            ],
            ..ClusterOptions::default()
        })
        .expect("start a regression cluster");
        // As pg_regress: from template0, then the settings its expected outputs assume.
        cluster
            .psql(
                "postgres",
                &format!("CREATE DATABASE \"{DATABASE}\" TEMPLATE=template0"),
            )
            .expect("create the regression database");
        let settings = [
            ("lc_messages", "C"),
            ("lc_monetary", "C"),
            ("lc_numeric", "C"),
            ("lc_time", "C"),
            ("bytea_output", "hex"),
            ("timezone_abbreviations", "Default"),
        ]
        .iter()
        .map(|(name, value)| format!("ALTER DATABASE \"{DATABASE}\" SET {name} TO '{value}';"))
        .collect::<String>();
        cluster
            .psql(DATABASE, &settings)
            .expect("set the regression database's settings");
        Server { cluster }
    }
}

/// Where psql connects.
#[derive(Clone, Debug)]
struct Endpoint {
    port: u16,
    user: String,
    password: Option<String>,
}

/// Starts a proxy in `mode` in front of `server`'s regression database. The proxy's database
/// and user have the server's names, so that psql's `\connect -` and anything that prints
/// them see the same as direct.
fn start_proxy(server: &Server, mode: &str, dir: &Path) -> Endpoint {
    let su = server.cluster.superuser();
    // Transaction mode: a server connection lives for one transaction (server_lifetime_s 0
    // closes it when it comes back), so each transaction runs on a new one. The pool hands
    // out the most recently returned idle connection, so with one client and long-lived
    // connections the client would never move.
    let pool = match mode {
        "transaction" => "{ mode: transaction, size: 4, server_lifetime_s: 0 }",
        _ => "{ mode: session, size: 4 }",
    };
    let yaml = format!(
        "pool: {pool}
users:
  - {{ name: {su}, password: {PROXY_PASSWORD}, server_user: {su} }}
databases:
  {DATABASE}:
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/{DATABASE}\" }}
",
        port = server.cluster.port(),
    );
    let addr = crate::start_proxy_from(dir, &yaml);
    Endpoint {
        port: addr.port(),
        user: su.to_owned(),
        password: Some(PROXY_PASSWORD.into()),
    }
}

/// The directories and paths of one side's run.
struct RunEnv {
    psql: PathBuf,
    srcdir: PathBuf,
    /// `PG_ABS_BUILDDIR`: `results/` in it is where files write (server-side COPY TO too).
    builddir: PathBuf,
    /// `PG_LIBDIR`: the server's library directory, which has the `autoinc` and `refint`
    /// modules the trigger tests load (`regress.so` itself is not there).
    libdir: PathBuf,
    /// Where each file's output goes.
    outdir: PathBuf,
}

/// The server's package library directory: `pg_config --pkglibdir`, else `bindir/../lib`.
fn pkglibdir(cluster: &Cluster) -> PathBuf {
    let bindir = &cluster.binaries().bindir;
    let from_pg_config = Command::new(bindir.join("pg_config"))
        .arg("--pkglibdir")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    from_pg_config.unwrap_or_else(|| bindir.join("../lib"))
}

/// Makes `dir` afresh (empty).
fn fresh_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
}

/// One file's run: its output file, and whether psql had to be killed.
#[derive(Clone, Debug)]
pub struct FileRun {
    pub name: String,
    pub output: PathBuf,
    pub timed_out: bool,
}

/// Runs one regression file as pg_regress does:
/// `psql -X -a -q -d DB -v HIDE_TABLEAM=on -v HIDE_TOAST_COMPRESSION=on < file`, stdout and
/// stderr into one file, with pg_regress's environment. Kills psql after [`FILE_TIMEOUT`].
fn run_file(env: &RunEnv, ep: &Endpoint, name: &str) -> FileRun {
    let input = env.srcdir.join("sql").join(format!("{name}.sql"));
    let output = env.outdir.join(format!("{name}.out"));
    let stdin =
        std::fs::File::open(&input).unwrap_or_else(|e| panic!("opening {}: {e}", input.display()));
    let out = std::fs::File::create(&output)
        .unwrap_or_else(|e| panic!("creating {}: {e}", output.display()));
    let err = out.try_clone().expect("duplicate the output file");
    let mut cmd = Command::new(&env.psql);
    cmd.args(["-X", "-a", "-q", "-d", DATABASE])
        .args(["-v", "HIDE_TABLEAM=on", "-v", "HIDE_TOAST_COMPRESSION=on"])
        .current_dir(&env.builddir)
        .stdin(stdin)
        .stdout(out)
        .stderr(err);
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", ep.port.to_string())
        .env("PGUSER", &ep.user)
        .env("PGAPPNAME", format!("pg_regress/{name}"))
        .env("PG_ABS_SRCDIR", &env.srcdir)
        .env("PG_ABS_BUILDDIR", &env.builddir)
        .env("PG_LIBDIR", &env.libdir)
        .env("PG_DLSUFFIX", ".so")
        .env("LC_MESSAGES", "C")
        .env("PGTZ", "PST8PDT")
        .env("PGDATESTYLE", "Postgres, MDY")
        .env("PGOPTIONS", " -c intervalstyle=postgres_verbose");
    match &ep.password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", env.psql.display()));
    let deadline = Instant::now() + FILE_TIMEOUT;
    let mut timed_out = false;
    loop {
        match child.try_wait().expect("wait for psql") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                // Kills this psql by its own pid.
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // Paths under the side's own build directory compare equal between sides.
    let text = std::fs::read(&output).unwrap_or_else(|e| panic!("{}: {e}", output.display()));
    let mut text = String::from_utf8_lossy(&text).into_owned();
    text = text.replace(&*env.builddir.to_string_lossy(), BUILDDIR_MARK);
    if timed_out {
        let _ = writeln!(
            text,
            "\n*** psql killed after {} s ***",
            FILE_TIMEOUT.as_secs()
        );
    }
    std::fs::write(&output, text).unwrap_or_else(|e| panic!("{}: {e}", output.display()));
    FileRun {
        name: name.to_owned(),
        output,
        timed_out,
    }
}

/// The backend pids of two consecutive statements of one psql session at `ep`.
fn two_backend_pids(psql: &Path, ep: &Endpoint) -> (String, String) {
    let mut cmd = Command::new(psql);
    cmd.args(["-X", "-A", "-t", "-d", DATABASE])
        .args([
            "-c",
            "SELECT pg_backend_pid()",
            "-c",
            "SELECT pg_backend_pid()",
        ])
        .stdin(Stdio::null());
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", ep.port.to_string())
        .env("PGUSER", &ep.user)
        .env("PGPASSWORD", ep.password.as_deref().unwrap_or_default());
    let out = cmd.output().expect("run psql");
    assert!(
        out.status.success(),
        "psql through the proxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = text.lines().collect();
    assert_eq!(pids.len(), 2, "two pids expected: {text}");
    (pids[0].to_owned(), pids[1].to_owned())
}

/// All files of one side, run in order on a fresh cluster (behind a fresh proxy for the proxy
/// sides). Outputs go to `root/<side>/out`.
fn run_side(files: &[String], via: Via, root: &Path) -> Vec<FileRun> {
    let started = Instant::now();
    let side_dir = root.join(via.label());
    fresh_dir(&side_dir);
    let server = Server::start();
    let psql = server.cluster.binaries().psql();
    let ep = match via {
        Via::Direct | Via::Control => Endpoint {
            port: server.cluster.port(),
            user: server.cluster.superuser().to_owned(),
            password: None,
        },
        Via::Session | Via::Transaction => {
            let ep = start_proxy(&server, via.label(), &side_dir);
            // The transaction-mode client must really move between server connections, and
            // the session-mode one must stay on its own.
            let (a, b) = two_backend_pids(&psql, &ep);
            if via == Via::Transaction {
                assert_ne!(a, b, "transaction mode: the client did not move");
            } else {
                assert_eq!(a, b, "session mode: the client moved");
            }
            ep
        }
    };
    let builddir = side_dir.join("build");
    let results = builddir.join("results");
    std::fs::create_dir_all(&results).expect("create results/");
    // The server (its own OS user when we are root) writes files there with COPY TO.
    std::fs::set_permissions(
        &results,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod results/");
    let outdir = side_dir.join("out");
    std::fs::create_dir_all(&outdir).expect("create the output directory");
    let env = RunEnv {
        psql,
        srcdir: regress_dir(),
        builddir,
        libdir: pkglibdir(&server.cluster),
        outdir,
    };
    let runs: Vec<FileRun> = files
        .iter()
        .map(|name| {
            let t = Instant::now();
            let run = run_file(&env, &ep, name);
            eprintln!(
                "regress {}: {name} ({:.1} s){}",
                via.label(),
                t.elapsed().as_secs_f64(),
                if run.timed_out { ", killed" } else { "" }
            );
            run
        })
        .collect();
    eprintln!(
        "regress {}: {} files in {:.0} s",
        via.label(),
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    drop(server);
    runs
}

/// Direct runs already made, by (run name, files): the sides of one run share one.
type DirectRuns = HashMap<(String, Vec<String>), Arc<Vec<FileRun>>>;
static DIRECT_RUNS: Mutex<Option<DirectRuns>> = Mutex::new(None);

/// The direct run of `files` for the run `name`, made once and shared by its sides.
fn direct_run(name: &str, files: &[String], root: &Path) -> Arc<Vec<FileRun>> {
    // Held while running, so a second side waits for the first side's direct run.
    let mut runs = DIRECT_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let runs = runs.get_or_insert_with(HashMap::new);
    runs.entry((name.to_owned(), files.to_vec()))
        .or_insert_with(|| Arc::new(run_side(files, Via::Direct, root)))
        .clone()
}

/// One file compared: identical, or the diff (written to `diff` too).
#[derive(Clone, Debug)]
pub struct FileComparison {
    pub name: String,
    pub identical: bool,
    /// Where the unified diff was written, when the outputs differ.
    pub diff: Option<PathBuf>,
    /// The first lines of the diff.
    pub diff_head: String,
    /// psql had to be killed on one side or the other.
    pub timed_out: bool,
}

/// A side's outputs compared with the direct ones.
#[derive(Clone, Debug)]
pub struct Report {
    pub via: Via,
    pub files: Vec<FileComparison>,
    pub dir: PathBuf,
}

impl Report {
    pub fn identical(&self) -> usize {
        self.files.iter().filter(|f| f.identical).count()
    }

    pub fn differing(&self) -> Vec<&FileComparison> {
        self.files.iter().filter(|f| !f.identical).collect()
    }

    /// "N of M files identical", the differing files, and the start of each diff.
    pub fn summary(&self, with_diffs: bool) -> String {
        let mut s = String::new();
        let differing = self.differing();
        let _ = writeln!(
            s,
            "regress {}: {} of {} files identical direct vs {}",
            self.via.label(),
            self.identical(),
            self.files.len(),
            self.via.label()
        );
        if !differing.is_empty() {
            let names: Vec<&str> = differing.iter().map(|f| f.name.as_str()).collect();
            let _ = writeln!(s, "differing ({}): {}", names.len(), names.join(" "));
            let _ = writeln!(s, "diffs in {}", self.dir.display());
        }
        for f in self.files.iter().filter(|f| f.timed_out) {
            let _ = writeln!(
                s,
                "{}: psql killed after {} s",
                f.name,
                FILE_TIMEOUT.as_secs()
            );
        }
        if with_diffs {
            for f in differing {
                let _ = writeln!(s, "---- {} ----\n{}", f.name, f.diff_head);
            }
        }
        s
    }
}

/// What in regression file `name` lives in one server session and so, by design, does not
/// follow a client from connection to connection in transaction pooling (docs/pooling.md):
/// a rough textual scan, to help read a transaction-mode summary.
pub fn session_state_uses(name: &str) -> Vec<&'static str> {
    let path = regress_dir().join("sql").join(format!("{name}.sql"));
    let sql = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let statements: Vec<&str> = sql.lines().map(str::trim_start).collect();
    let starts = |prefix: &str| statements.iter().any(|l| l.starts_with(prefix));
    let mut uses = Vec::new();
    if sql.contains("create temp ")
        || sql.contains("create temporary ")
        || sql.contains("create local temp")
        || sql.contains("pg_temp.")
        || sql.contains("into temp ")
    {
        uses.push("temporary objects");
    }
    if statements
        .iter()
        .any(|l| l.starts_with("prepare ") && !l.starts_with("prepare transaction"))
    {
        uses.push("SQL PREPARE");
    }
    if sql.contains("with hold") {
        uses.push("WITH HOLD cursors");
    }
    if sql.contains("pg_advisory_lock") || sql.contains("pg_advisory_unlock") {
        uses.push("session advisory locks");
    }
    if starts("listen ") || starts("notify ") {
        uses.push("LISTEN/NOTIFY");
    }
    if sql.contains("currval(") || sql.contains("lastval(") {
        uses.push("currval/lastval");
    }
    if starts("load ") {
        uses.push("LOAD");
    }
    uses
}

/// The first [`DIFF_HEAD_LINES`] lines of a diff, each cut at [`DIFF_HEAD_WIDTH`] characters.
fn head(diff: &str) -> String {
    diff.lines()
        .take(DIFF_HEAD_LINES)
        .map(|line| match line.char_indices().nth(DIFF_HEAD_WIDTH) {
            Some((cut, _)) => format!("{}...", &line[..cut]),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unified diff of two files (`diff -u`), `None` when they are equal.
fn unified_diff(a: &Path, b: &Path, label_a: &str, label_b: &str) -> Option<String> {
    let out = Command::new("diff")
        .arg("-u")
        .args(["--label", label_a, "--label", label_b])
        .arg(a)
        .arg(b)
        .stdin(Stdio::null())
        .output()
        .expect("run diff");
    match out.status.code() {
        Some(0) => None,
        Some(1) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => panic!("diff failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Runs `files` (in the given order) directly and via `via`, each on a fresh cluster, and
/// compares each file's outputs. `name` names the run; everything goes under `root/name`.
pub fn compare(name: &str, files: &[String], via: Via, root: &Path) -> Report {
    assert_ne!(
        via,
        Via::Direct,
        "direct is what the others are compared with"
    );
    let root = root.join(name);
    let direct = direct_run(name, files, &root);
    let other = run_side(files, via, &root);
    let dir = root.join(format!("diff-{}", via.label()));
    fresh_dir(&dir);
    let files = direct
        .iter()
        .zip(&other)
        .map(|(d, o)| {
            let diff = unified_diff(
                &d.output,
                &o.output,
                &format!("direct/{}.out", d.name),
                &format!("{}/{}.out", via.label(), o.name),
            );
            match diff {
                None => FileComparison {
                    name: d.name.clone(),
                    identical: true,
                    diff: None,
                    diff_head: String::new(),
                    timed_out: d.timed_out || o.timed_out,
                },
                Some(text) => {
                    let path = dir.join(format!("{}.diff", d.name));
                    std::fs::write(&path, &text).expect("write the diff");
                    FileComparison {
                        name: d.name.clone(),
                        identical: false,
                        diff: Some(path),
                        diff_head: head(&text),
                        timed_out: d.timed_out || o.timed_out,
                    }
                }
            }
        })
        .collect();
    let report = Report { via, files, dir };
    let summary = root.join(format!("summary-{}.txt", via.label()));
    std::fs::write(&summary, report.summary(true)).expect("write the summary");
    report
}
