//! The `shardgate` command: run the proxy, check a config, or start a local sandbox.

mod drill;
mod sandbox;

/// mimalloc: per-thread free lists make the many small, short-lived allocations of message
/// handling cheap, and it returns memory of closed sessions to the system more readily.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the memory mimalloc keeps for reuse back to the system (after a client that held
/// many prepared statements left).
fn collect_freed_memory() {
    // SAFETY: mi_collect only releases memory the allocator no longer hands out.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Transparent huge pages off for this process. mimalloc asks for them on its arenas
/// (`MADV_HUGEPAGE`); a proxy of many small, mostly idle sessions gains nothing from 2 MiB
/// pages, and its resident memory grew in 2 MiB steps with them (1,000 idle clients: 2.3 KB
/// each with them, 1.7 KB without, in the same run).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process's memory map.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Raises the open-files limit to the hard limit (as most servers do; the soft limit is
/// often 1,024): each client and each server connection is a descriptor. The limit in force.
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "A horizontal sharding proxy for PostgreSQL"
)]
struct Cli {
    /// Config file (same as `run --config FILE`).
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config; print a summary or each problem as file:line:col: message.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start local PostgreSQL shards and the proxy in front of them.
    Sandbox(sandbox::SandboxArgs),
    /// Drills against a running proxy and its shards.
    Drill {
        #[command(subcommand)]
        drill: drill::DrillCommand,
    },
    /// Print where a statement would run, without running it.
    Route {
        #[arg(long)]
        config: PathBuf,
        /// Database (default: the only one, or the first).
        #[arg(long)]
        database: Option<String>,
        /// Values of $1, $2, ... in text form.
        #[arg(long = "param")]
        params: Vec<String>,
        /// The statement.
        sql: String,
    },
}

/// Logs to stderr as `log` says: text (coloured only on a terminal) or one JSON object per
/// line; `SHARDGATE_LOG`, when set, overrides the level.
fn init_logging(log: &sgconfig::LogConfig) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match log.format {
        sgconfig::LogFormat::Json => builder.json().init(),
        sgconfig::LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    // `run` logs as its config says; the drill prints only its progress and report.
    if !matches!(
        (&cli.command, &cli.config),
        (Some(Command::Run { .. } | Command::Drill { .. }), _) | (None, Some(_))
    ) {
        init_logging(&sgconfig::LogConfig::default());
    }
    match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::Check { config }), _) => check(config),
        (Some(Command::Sandbox(args)), _) => sandbox::run(args),
        (Some(Command::Drill { drill }), _) => drill::run(drill),
        (
            Some(Command::Route {
                config,
                database,
                params,
                sql,
            }),
            _,
        ) => route(config, database, params, sql),
        (None, None) => {
            eprintln!(
                "shardgate: give a command (run, check, sandbox, drill, route) or --config FILE; see --help"
            );
            ExitCode::from(2)
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    match sgconfig::load_file(&path) {
        Ok(c) => {
            println!("{}: OK", path.display());
            println!("listen: {}", c.listen);
            println!("pool: mode {:?}, size {}", c.pool.mode, c.pool.size);
            println!(
                "users: {}",
                c.users
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (name, db) in &c.databases {
                let shards: Vec<_> = db.shards.iter().map(|(n, _)| n).collect();
                println!(
                    "database {name}: {} shard(s): {}",
                    shards.len(),
                    shards.join(", ")
                );
                for m in &db.maps {
                    println!("  {}", describe_map(m));
                    for line in describe_ranges(m) {
                        println!("    {line}");
                    }
                }
                if !db.reference_tables.is_empty() {
                    println!("  reference tables: {}", db.reference_tables.join(", "));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn route(path: PathBuf, database: Option<String>, params: Vec<String>, sql: String) -> ExitCode {
    let config = match sgconfig::load_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let name =
        database.unwrap_or_else(|| config.databases.keys().next().cloned().unwrap_or_default());
    let Some(db) = config.databases.get(&name) else {
        eprintln!("shardgate route: database `{name}` is not in the config");
        return ExitCode::from(1);
    };
    let params: Vec<Option<String>> = params.into_iter().map(Some).collect();
    let (lines, routed) = router::explain::explain(&name, db, &sql, &params);
    for l in lines {
        println!("{l}");
    }
    if routed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One line about a shard map for `check`.
fn describe_map(m: &sgconfig::ShardMap) -> String {
    use sgconfig::shardmap::Rule;
    let kind = match &m.rule {
        Rule::Hash { shards } => format!("hash, {} partitions", shards.len()),
        Rule::Range { ranges, .. } => format!("range, {} ranges", ranges.len()),
        Rule::List { values, .. } => format!("list, {} values", values.len()),
    };
    let keys: Vec<_> = m.key_types.iter().map(|k| k.name()).collect();
    let tables: Vec<_> = m
        .tables
        .iter()
        .map(|t| format!("{}({})", t.table, t.columns.join(", ")))
        .collect();
    format!(
        "map {}: {kind} on {} over {}; tables: {}",
        m.name,
        keys.join(", "),
        m.shards().join(", "),
        tables.join(", ")
    )
}

/// A range map's ranges, one line each with its bounds as the map gives them (`unbounded`
/// for null), then its default; nothing for other maps.
fn describe_ranges(m: &sgconfig::ShardMap) -> Vec<String> {
    let sgconfig::shardmap::Rule::Range { ranges, default } = &m.rule else {
        return Vec::new();
    };
    let bound = |b: &Option<sgconfig::KeyValue>| {
        b.as_ref()
            .map_or_else(|| "unbounded".to_owned(), ToString::to_string)
    };
    ranges
        .iter()
        .map(|r| format!("from {} to {}: {}", bound(&r.from), bound(&r.to), r.shard))
        .chain(default.iter().map(|d| format!("other keys: {d}")))
        .collect()
}

fn run(path: PathBuf) -> ExitCode {
    let config = match sgconfig::load_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    init_logging(&config.log);
    if let Err(e) = proxy::check_tls(&config) {
        eprintln!("shardgate: {}: TLS: {e}", path.display());
        return ExitCode::from(1);
    }
    let rt = match runtime(config.worker_threads()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(config, Some(path), None, None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::from(1)
        }
    }
}

/// The proxy's runtime: one thread (no cross-thread wake-ups) or a work-stealing pool.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// A listen address that cannot be bound, said so that the user knows which and what to do.
fn listen_error(addr: std::net::SocketAddr, e: std::io::Error) -> std::io::Error {
    let what = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{addr} is already in use: stop what listens there or set another `listen:` in the config"
        ),
        _ => format!("cannot listen on {addr}: {e}; set another `listen:` in the config"),
    };
    std::io::Error::new(e.kind(), what)
}

/// Serves until SIGINT/SIGTERM, then shuts down gracefully: no new clients, running
/// transactions get `shutdown_grace_s` to finish (a second signal cuts that short), each
/// session closes once its transaction is over. Listens on `listener` when given (already
/// bound to the config's address), else binds `config.listen`.
pub async fn serve(
    config: sgconfig::Config,
    config_path: Option<PathBuf>,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    listener: Option<std::net::TcpListener>,
) -> std::io::Result<()> {
    let listener = match listener {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| listen_error(config.listen, e))?,
    };
    let metrics = match &config.metrics {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(|e| listen_error(m.listen, e))?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "shardgate listening");
    let files = raise_open_files_limit();
    let wanted = u64::from(config.limits.max_client_connections) + 256;
    if files < wanted {
        tracing::warn!(
            limit = files,
            max_client_connections = config.limits.max_client_connections,
            "the open-files limit is below limits.max_client_connections plus room for server connections: new clients wait unanswered in the listen queue while it is reached; raise it (ulimit -n, LimitNOFILE=) or lower max_client_connections"
        );
    }
    let grace = Duration::from_secs(config.shutdown_grace_s);
    let proxy = proxy::Proxy::new(config);
    proxy.on_memory_freed(collect_freed_memory);
    if let Some(m) = metrics {
        tracing::info!(addr = %m.local_addr()?, "metrics on /metrics");
        tokio::spawn(Arc::clone(&proxy).serve_metrics(m));
    }
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let accept = tokio::spawn(Arc::clone(&proxy).serve(listener));
    let recovery = tokio::spawn(Arc::clone(&proxy).recover_in_doubt());
    if let Some(path) = config_path {
        proxy.set_config_path(path);
        tokio::spawn(reload_on_sighup(Arc::clone(&proxy)));
    }
    let mut signals = Signals::new();
    signals.next().await;
    // The listener closes with the accept task: new clients are refused from here on.
    accept.abort();
    recovery.abort();
    proxy.begin_shutdown();
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: no new clients; running transactions may finish"
    );
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let busy = proxy.busy_servers(None).max(proxy.active_clients());
        if busy == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(transactions = busy, "grace period over: closing the rest");
                break;
            }
            _ = signals.next() => {
                tracing::warn!(transactions = busy, "second signal: stopping now");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    tracing::info!(clients = proxy.client_count(), "stopped");
    Ok(())
}

/// SIGHUP re-reads the config and its shard maps: a valid one takes effect for new logins
/// and new transactions; an invalid one is logged, problem by problem, and the old one kept.
async fn reload_on_sighup(proxy: Arc<proxy::Proxy>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler: reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        // Problems are logged by the reload itself.
        let _ = proxy.reload_from_file();
    }
}

/// SIGINT and SIGTERM, each time one comes.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("install SIGINT handler"),
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
