//! `shardgate drill failover`: a replica failover drill against a running proxy. Writers and
//! readers run through the proxy, the shard's primary is stopped with its `stop_command`,
//! the admin console's `SHOW SHARDS` is watched, and afterwards every acknowledged write is
//! read back. The report says how long detection, promotion and the return of writes took,
//! which errors clients saw, and how many acknowledged writes were lost.
//!
//! Exit codes: 0 when nothing acknowledged was lost and writes came back; 1 when the drill
//! ran and either is not so (or it had to stop half-way); 2 when it could not start (usage,
//! config, proxy unreachable): then nothing was stopped.

mod report;
mod watch;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use report::Report;
use watch::{ServerView, Watch};
use workload::Workload;

/// The drill's own table, on the drilled shard.
const TABLE: &str = "shardgate_drill";
/// The shortest drill: a warm-up, the stop, and time for the failover.
const MIN_DURATION_S: u64 = 4;
/// The warm-up before the stop: a quarter of the drill, at least this long.
const MIN_WARMUP: Duration = Duration::from_secs(2);
/// How long the stop command may run.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long reading the acknowledged writes back may keep failing before giving up on
/// the proxy.
const READ_BACK_PATIENCE: Duration = Duration::from_secs(10);
/// The stopped server must refuse connections this long after its stop command returned.
const STOPPED_WITHIN: Duration = Duration::from_secs(5);
/// Connecting (to the proxy or a server) takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Subcommand)]
pub enum DrillCommand {
    /// Stop a shard's primary under load and measure the failover: time to detect, to
    /// promote, until writes succeed again, client errors, acknowledged writes lost.
    Failover(FailoverArgs),
}

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// The proxy's config: where it listens, its users, the shard's servers and their
    /// `stop_command`s.
    #[arg(long, default_value = "shardgate.yaml")]
    config: PathBuf,
    /// Shard to drill (default: the database's first).
    #[arg(long)]
    shard: Option<String>,
    /// Database (default: the first that has the shard).
    #[arg(long)]
    database: Option<String>,
    /// Length of the drill in seconds; the primary is stopped after a quarter of it.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Writer connections.
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Reader connections.
    #[arg(long, default_value_t = 2)]
    readers: u32,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: DrillCommand) -> ExitCode {
    let DrillCommand::Failover(args) = cmd;
    let target = match Target::from_args(&args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(failover(&args, target)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => usage(&e),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("shardgate drill failover: {message}");
    ExitCode::from(2)
}

/// Progress, on stderr (the report goes to stdout).
fn say(message: &str) {
    eprintln!("drill: {message}");
}

/// One server of the drilled shard, as the config names it.
#[derive(Clone, Debug)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub url: String,
    pub stop_command: Option<String>,
}

impl Server {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Where the drill connects and what it drills, from the config.
#[derive(Clone)]
pub struct Target {
    pub database: String,
    pub shard: String,
    pub proxy: tokio_postgres::Config,
    /// The proxy's `host:port`.
    pub proxy_addr: String,
    /// The admin console (database `shardgate`), when an admin user has a plain password.
    pub admin: Option<tokio_postgres::Config>,
    /// User and password for servers whose URL names none.
    pub server_user: String,
    pub server_password: Option<String>,
    /// The shard's servers: the configured primary first.
    pub servers: Vec<Server>,
}

impl Target {
    fn from_args(args: &FailoverArgs) -> Result<Target, String> {
        if args.duration < MIN_DURATION_S {
            return Err(format!("--duration must be at least {MIN_DURATION_S} s"));
        }
        if args.writers == 0 {
            return Err("--writers must be at least 1".into());
        }
        let config = sgconfig::load_file(&args.config).map_err(|e| e.to_string())?;
        let file = args.config.display();
        let database = match (&args.database, &args.shard) {
            (Some(d), _) => d.clone(),
            (None, Some(s)) => config
                .databases
                .iter()
                .find(|(_, db)| db.shards.iter().any(|(n, _)| n == s))
                .map(|(n, _)| n.clone())
                .ok_or_else(|| format!("no database in {file} has a shard `{s}`"))?,
            (None, None) => config
                .databases
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| format!("{file} has no database"))?,
        };
        let db = config
            .databases
            .get(&database)
            .ok_or_else(|| format!("database `{database}` is not in {file}"))?;
        let shard = match &args.shard {
            Some(s) => s.clone(),
            None => db
                .shards
                .first()
                .map(|(n, _)| n.to_owned())
                .ok_or_else(|| format!("database `{database}` has no shard"))?,
        };
        let shard_config = db
            .shards
            .iter()
            .find(|(n, _)| *n == shard)
            .map(|(_, c)| c)
            .ok_or_else(|| format!("database `{database}` has no shard `{shard}`"))?;
        let mut servers = Vec::new();
        for spec in shard_config.servers() {
            let a = sgconfig::ServerAddress::parse(&spec.url)
                .map_err(|e| format!("shard `{shard}`: {e}"))?;
            servers.push(Server {
                host: a.host,
                port: a.port,
                url: spec.url.clone(),
                stop_command: spec.stop_command.clone(),
            });
        }
        if servers.len() < 2 {
            return Err(format!(
                "shard `{shard}` has no replica in {file}: there is nothing to fail over to"
            ));
        }
        if servers[0].stop_command.is_none() {
            return Err(format!(
                "the primary of shard `{shard}` ({}) has no `stop_command` in {file}; give it one \
                 that stops it abruptly, e.g. {{ url: \"...\", stop_command: \"pg_ctl stop -m immediate -D DATADIR\" }}",
                servers[0].addr()
            ));
        }
        let user = config
            .users
            .iter()
            .filter(|u| u.plain_password().is_some())
            .min_by_key(|u| config.admin_users.contains(&u.name))
            .ok_or_else(|| {
                format!("no user in {file} has a plain password: the drill logs in with one")
            })?;
        let proxy_host = match config.listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "::1".to_owned(),
            ip => ip.to_string(),
        };
        let login = |name: &str, password: Option<&str>, dbname: &str| {
            let mut c = tokio_postgres::Config::new();
            c.host(&proxy_host)
                .port(config.listen.port())
                .user(name)
                .dbname(dbname)
                .application_name("shardgate drill")
                .connect_timeout(CONNECT_TIMEOUT);
            if let Some(p) = password {
                c.password(p);
            }
            c
        };
        let admin = config.admin_users.iter().find_map(|name| {
            let u = config.users.iter().find(|u| &u.name == name)?;
            Some(login(name, Some(u.plain_password()?), "shardgate"))
        });
        Ok(Target {
            proxy: login(&user.name, user.plain_password(), &database),
            proxy_addr: match config.listen {
                std::net::SocketAddr::V6(a) => format!("[{proxy_host}]:{}", a.port()),
                a => format!("{proxy_host}:{}", a.port()),
            },
            admin,
            server_user: user.server_user().to_owned(),
            server_password: user.server_password().map(str::to_owned),
            database,
            shard,
            servers,
        })
    }

    /// `/* shardgate: shard=NAME */ ` (with `, role=primary` when asked).
    pub fn hint(&self, primary: bool) -> String {
        let role = if primary { ", role=primary" } else { "" };
        format!("/* shardgate: shard={}{role} */ ", self.shard)
    }

    /// A direct connection's config for `server` (its URL, with the drill user's server
    /// credentials where the URL has none).
    fn direct(&self, server: &Server) -> Result<tokio_postgres::Config, String> {
        let mut c: tokio_postgres::Config = server
            .url
            .parse()
            .map_err(|e| format!("{}: {e}", server.addr()))?;
        if c.get_user().is_none() {
            c.user(&self.server_user);
        }
        if c.get_password().is_none() {
            if let Some(p) = &self.server_password {
                c.password(p);
            }
        }
        c.connect_timeout(CONNECT_TIMEOUT);
        Ok(c)
    }
}

/// Connects and drives the connection in a task of its own.
pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls));
    match attempt.await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(workload::describe(&e)),
        Err(_) => Err(format!(
            "no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The drill: set up, warm up, stop the primary, keep going, read back, report.
async fn failover(args: &FailoverArgs, target: Target) -> Result<Report, String> {
    let target = Arc::new(target);
    let proxy = target.proxy_addr.clone();
    let client = connect(&target.proxy)
        .await
        .map_err(|e| format!("cannot connect to the proxy at {proxy}: {e}"))?;
    let hint = target.hint(false);
    client
        .batch_execute(&format!(
            "{hint}CREATE TABLE IF NOT EXISTS {TABLE} (writer int, seq bigint, \
             at timestamptz default now(), PRIMARY KEY (writer, seq))"
        ))
        .await
        .map_err(|e| {
            format!(
                "creating {TABLE} on shard {}: {}",
                target.shard,
                workload::describe(&e)
            )
        })?;
    client
        .batch_execute(&format!("{hint}TRUNCATE {TABLE}"))
        .await
        .map_err(|e| {
            format!(
                "emptying {TABLE} on shard {}: {}",
                target.shard,
                workload::describe(&e)
            )
        })?;
    drop(client);

    let mut notes = Vec::new();
    let watch = match &target.admin {
        None => {
            notes.push(
                "no admin user with a plain password in the config: detection and promotion \
                 are not measured"
                    .to_owned(),
            );
            None
        }
        Some(admin) => match Watch::start(admin.clone(), &target).await {
            Ok(w) => Some(w),
            Err(e) => {
                notes.push(format!(
                    "the admin console did not answer SHOW SHARDS ({e}): detection and \
                     promotion are not measured"
                ));
                None
            }
        },
    };
    // The server to stop: the proxy's primary of the shard when the console says which
    // (after an earlier failover that is not the configured one), else the configured one.
    let first_view = watch.as_ref().map(|w| w.latest());
    let victim = pick_victim(&target, first_view.as_deref(), &mut notes)?;
    let stop_command = victim.stop_command.clone().ok_or_else(|| {
        format!(
            "the shard's primary {} has no `stop_command`",
            victim.addr()
        )
    })?;

    let origin = Instant::now();
    let workload = Workload::start(Arc::clone(&target), args.writers, args.readers);
    let duration = Duration::from_secs(args.duration);
    let warmup = (duration / 4).max(MIN_WARMUP);
    say(&format!(
        "{} writer(s) and {} reader(s) on shard {} through {proxy}; warming up for {:.1} s",
        args.writers,
        args.readers,
        target.shard,
        warmup.as_secs_f64()
    ));
    tokio::time::sleep(warmup).await;

    let mut report = Report::new(&target, &victim, &stop_command, duration, warmup, notes);
    if workload.acknowledged() == 0 {
        report.abort("no write was acknowledged during the warm-up, so nothing was stopped");
    } else {
        say(&format!(
            "stopping the primary {}: {stop_command}",
            victim.addr()
        ));
        let t0 = Instant::now();
        report.stopped_at(t0);
        match run_stop_command(&stop_command).await {
            Ok(()) => {
                report.stop_took(t0.elapsed());
                if still_answers(&target, &victim).await {
                    report.abort(&format!(
                        "the stop_command returned but {} still answers {} s later: it did not \
                         stop the server",
                        victim.addr(),
                        STOPPED_WITHIN.as_secs()
                    ));
                } else {
                    say("primary stopped; the workload goes on");
                }
            }
            Err(e) => report.abort(&format!("the stop_command failed: {e}")),
        }
        let end = origin + duration;
        tokio::time::sleep_until(end.max(Instant::now()).into()).await;
    }
    say("drill over; reading the acknowledged writes back");
    let results = workload.finish().await;
    let history = match watch {
        Some(w) => Some(w.finish().await),
        None => None,
    };
    report.add_workload(&results, history.as_ref());
    if report.stopped() {
        let back = read_back(&target, &victim, report.new_primary()).await;
        report.add_read_back(&results, back);
    }
    Ok(report)
}

/// The server the drill stops: the live primary per `SHOW SHARDS`, else the configured one.
fn pick_victim(
    target: &Target,
    view: Option<&[ServerView]>,
    notes: &mut Vec<String>,
) -> Result<Server, String> {
    let Some(view) = view else {
        return Ok(target.servers[0].clone());
    };
    let Some(live) = view.iter().find(|s| s.role == "primary") else {
        return Err(format!(
            "SHOW SHARDS names no primary for shard {}: nothing to stop",
            target.shard
        ));
    };
    if live.state.as_deref().is_some_and(|s| s != "up") {
        return Err(format!(
            "the primary of shard {} ({}:{}) is {} before the drill",
            target.shard,
            live.host,
            live.port,
            live.state.as_deref().unwrap_or_default()
        ));
    }
    let others_up = view
        .iter()
        .filter(|s| !(s.host == live.host && s.port == live.port))
        .any(|s| s.state.as_deref().is_none_or(|st| st == "up"));
    if !others_up {
        return Err(format!(
            "no other server of shard {} is up to take over from {}:{}",
            target.shard, live.host, live.port
        ));
    }
    let server = target
        .servers
        .iter()
        .find(|s| s.host == live.host && s.port == live.port)
        .cloned()
        .ok_or_else(|| {
            format!(
                "the proxy's primary of shard {} is {}:{}, which the config does not list",
                target.shard, live.host, live.port
            )
        })?;
    if server.addr() != target.servers[0].addr() {
        notes.push(format!(
            "the proxy's primary is {} (not the configured {}): that one is stopped",
            server.addr(),
            target.servers[0].addr()
        ));
        if server.stop_command.is_none() {
            return Err(format!(
                "the proxy's primary of shard {}, {}, has no `stop_command` in the config",
                target.shard,
                server.addr()
            ));
        }
    }
    Ok(server)
}

/// Runs `command` with `sh -c`; an error says how it failed.
async fn run_stop_command(command: &str) -> Result<(), String> {
    let run = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(STOP_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run sh: {e}")),
        Err(_) => return Err(format!("still running after {} s", STOP_TIMEOUT.as_secs())),
    };
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(if out.stderr.is_empty() {
        &out.stdout
    } else {
        &out.stderr
    })
    .trim()
    .to_owned();
    Err(format!("{}: {text}", out.status))
}

/// Whether `server` still accepts connections (or answers them with an error, as a server
/// that is shutting down does) `STOPPED_WITHIN` after its stop command returned.
async fn still_answers(target: &Target, server: &Server) -> bool {
    let Ok(mut config) = target.direct(server) else {
        return false;
    };
    config.connect_timeout(Duration::from_secs(1));
    let deadline = Instant::now() + STOPPED_WITHIN;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            config.connect(tokio_postgres::NoTls),
        )
        .await;
        let answers = match attempt {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.code().is_some(),
            Err(_) => false,
        };
        if !answers || Instant::now() > deadline {
            return answers;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where the acknowledged writes were read back from, and what was found.
pub struct ReadBack {
    /// `proxy` or `host:port (direct)`.
    pub from: String,
    pub rows: Result<Vec<(i32, i64)>, String>,
}

/// Every row of the drill's table: through the proxy from the shard's primary (retrying
/// for a while: the failover may still be under way), else directly from the promoted
/// server or the other servers of the shard (what a promotion would keep).
async fn read_back(target: &Target, victim: &Server, promoted: Option<&str>) -> ReadBack {
    let sql = format!("{}SELECT writer, seq FROM {TABLE}", target.hint(true));
    let deadline = Instant::now() + READ_BACK_PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match query_pairs(&target.proxy, &sql).await {
            Ok(rows) => {
                return ReadBack {
                    from: "proxy".into(),
                    rows: Ok(rows),
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say(&format!(
        "the proxy did not answer the read-back ({last}); reading the shard's servers directly"
    ));
    let mut others: Vec<&Server> = target
        .servers
        .iter()
        .filter(|s| s.addr() != victim.addr())
        .collect();
    others.sort_by_key(|s| Some(s.addr().as_str()) != promoted);
    let plain = format!("SELECT writer, seq FROM {TABLE}");
    let mut errors = vec![format!("proxy: {last}")];
    for server in others {
        let result = match target.direct(server) {
            Ok(c) => query_pairs(&c, &plain).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(rows) => {
                return ReadBack {
                    from: format!("{} (direct)", server.addr()),
                    rows: Ok(rows),
                }
            }
            Err(e) => errors.push(format!("{}: {e}", server.addr())),
        }
    }
    ReadBack {
        from: "nowhere".into(),
        rows: Err(errors.join("; ")),
    }
}

/// `(writer, seq)` rows of `sql` over a fresh connection.
async fn query_pairs(
    config: &tokio_postgres::Config,
    sql: &str,
) -> Result<Vec<(i32, i64)>, String> {
    let client = connect(config).await?;
    let messages = tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| workload::describe(&e))?;
    let mut rows = Vec::new();
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let writer = r.get(0).and_then(|v| v.parse().ok());
            let seq = r.get(1).and_then(|v| v.parse().ok());
            match (writer, seq) {
                (Some(w), Some(s)) => rows.push((w, s)),
                _ => return Err("a row of the drill's table did not parse".into()),
            }
        }
    }
    Ok(rows)
}
