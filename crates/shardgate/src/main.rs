//! The `shardgate` command: run the proxy, check a config, or start a local sandbox.

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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::Check { config }), _) => check(config),
        (Some(Command::Sandbox(args)), _) => sandbox::run(args),
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
                "shardgate: give a command (run, check, sandbox) or --config FILE; see --help"
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
    let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
    let hints = match router::hints::parse_hints(&sql) {
        Ok(h) => h,
        Err(e) => {
            println!("refused (42601): {e}");
            return ExitCode::from(1);
        }
    };
    if hints.shard.is_none() && hints.key.is_none() {
        if let Some(Ok(c)) = router::copy::parse_copy(&sql) {
            let sharded = router::plan::map_for(db, &c.table).is_some();
            if c.from
                && c.client_side
                && !c.query
                && !c.format.binary
                && (sharded || db.reference_tables.contains(&c.table))
            {
                println!("database: {name}");
                println!("statement: COPY FROM STDIN into {}", c.table);
                if sharded {
                    println!("route: every shard, each row to the shard of its key (a simple query; each shard in a transaction, all or nothing)");
                } else {
                    println!("route: every shard, every row (reference table)");
                }
                return ExitCode::SUCCESS;
            }
        }
    }
    let analysis = match router::analyze::analyze(&sql, &keys) {
        Ok(a) => a,
        Err(e) if hints.shard.is_some() => {
            println!("cannot parse ({e}); the hint decides");
            router::analyze::Analysis {
                kind: router::analyze::Kind::Session,
                tables: Vec::new(),
                keyed: Vec::new(),
                needs_merge: false,
                insert_rows: false,
                one_shard: false,
                cursor: false,
                nested_sharded: false,
                refuse: None,
            }
        }
        Err(e) => {
            println!("cannot parse: {e}");
            println!("hint: name the shard with /* shardgate: shard=NAME */");
            return ExitCode::from(1);
        }
    };
    let params: Vec<Option<String>> = params.into_iter().map(Some).collect();
    println!("database: {name}");
    println!("statement: {:?}", analysis.kind);
    if !analysis.tables.is_empty() {
        println!("tables: {}", analysis.tables.join(", "));
    }
    for u in &analysis.keyed {
        println!("keys of {}: {:?}", u.table, u.keys);
    }
    let plan = router::plan::plan_with_hints(db, &analysis, &params, &hints);
    let home = db.shards.first().map(|(n, _)| n).unwrap_or("");
    match plan {
        router::plan::Plan::Shard(s) => println!("route: shard {s} (primary)"),
        router::plan::Plan::Shards(s) => {
            println!(
                "route: shards {} (rows concatenated, counts summed)",
                s.join(", ")
            );
            if let Some(rows) = router::plan::row_shards(db, &analysis, &params) {
                for shard in &s {
                    let n = rows.iter().filter(|r| *r == shard).count();
                    println!("  {shard}: {n} of the INSERT's {} rows", rows.len());
                }
            }
        }
        router::plan::Plan::AllShards => println!("route: every shard"),
        router::plan::Plan::AnyShard => println!("route: any one shard (reference tables)"),
        router::plan::Plan::Session => println!("route: the session's shard (home: {home})"),
        router::plan::Plan::Pinned => println!(
            "route: the shard the session's transaction is pinned to; refused outside one (name the shard with /* shardgate: shard=NAME */)"
        ),
        router::plan::Plan::AtBind => {
            println!("route: decided at Bind (a key comes from a parameter; give it with --param)")
        }
        router::plan::Plan::Refuse { reason, hint } => {
            println!("refused (0A000): {reason}");
            println!("hint: {hint}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
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

/// How long running transactions get to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves until SIGINT/SIGTERM, then lets clients finish. Listens on `listener` when given
/// (already bound to the config's address), else binds `config.listen`.
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
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "shardgate listening");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let proxy = proxy::Proxy::new(config);
    proxy.on_memory_freed(collect_freed_memory);
    let accept = tokio::spawn(Arc::clone(&proxy).serve(listener));
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(Arc::clone(&proxy), path));
    }
    shutdown_signal().await;
    tracing::info!("shutting down: no new clients; waiting for clients to finish");
    accept.abort();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while proxy.client_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(remaining = proxy.client_count(), "stopped");
    Ok(())
}

/// SIGHUP re-reads the config and its shard maps: a valid one takes effect for new logins
/// and new transactions; an invalid one is logged, problem by problem, and the old one kept.
async fn reload_on_sighup(proxy: Arc<proxy::Proxy>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler: reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        match sgconfig::load_file(&path) {
            Ok(config) => {
                if config.listen != proxy.config().listen {
                    tracing::warn!("listen cannot change on reload; restart to move it");
                }
                proxy.reload(config);
            }
            Err(e) => {
                for p in &e.problems {
                    tracing::error!("{p}");
                }
                tracing::error!("configuration not reloaded: the running one stays");
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
