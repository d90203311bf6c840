//! `shardgate sandbox`: local PostgreSQL shards with streaming replicas, a config for them,
//! a small demo schema, and the proxy in front, all stopped by Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cluster::{AuthMethod, Cluster, ClusterOptions};

#[derive(clap::Args)]
pub struct SandboxArgs {
    /// Number of shards.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Streaming replicas per shard.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Port the proxy listens on (127.0.0.1).
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Synchronous replicas: a commit on a primary returns once one of its replicas has
    /// flushed it (`synchronous_standby_names = 'ANY 1 (*)'`, `synchronous_commit = on`).
    #[arg(long)]
    sync: bool,
    /// Directory for the clusters, the config (DIR/shardgate.yaml, each server with a
    /// `stop_command`) and its shard map (DIR/customers.yaml), all kept after exit (default:
    /// a temporary one, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const PASSWORD: &str = "sandbox";
/// The sandbox's admin user (same password), for the admin console and the failover drill.
const ADMIN: &str = "ops";
/// The names of the config and shard map with `--dir`.
const CONFIG_FILE: &str = "shardgate.yaml";
const MAP_FILE: &str = "customers.yaml";
/// How long a primary made synchronous may take to see a synchronous standby.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The same tables on every shard; customers and their orders are sharded by customer id
/// (so a customer's orders live with the customer), countries is a reference table.
const DEMO_SCHEMA: &str = "
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO countries VALUES ('us', 'United States'), ('de', 'Germany'), ('fr', 'France'), ('jp', 'Japan');
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, country text NOT NULL REFERENCES countries(code));
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                     amount numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
";
const CUSTOMERS: i64 = 100;
const ORDERS: i64 = 1000;

/// The demo's shard map: customers and orders by customer id, 8 hash partitions dealt to
/// the shards in turn.
fn demo_map(shards: u32) -> String {
    let mut assign = Vec::new();
    for s in 0..shards {
        let parts: Vec<String> = (0..8u32)
            .filter(|p| p % shards == s)
            .map(|p| p.to_string())
            .collect();
        if !parts.is_empty() {
            assign.push(format!("s{s}: [{}]", parts.join(", ")));
        }
    }
    format!(
        "name: customers\ntype: hash\nkey_type: bigint\npartitions: 8\nassign: {{ {} }}\ntables:\n  - {{ table: customers, column: id }}\n  - {{ table: orders, column: customer_id }}\n",
        assign.join(", ")
    )
}

/// Each shard's share of the demo data, as SQL.
fn demo_data(map: &sgconfig::ShardMap, shards: u32) -> Vec<String> {
    let owner = |id: i64| -> usize {
        router::sharding::shard_for_key(map, &[sgconfig::KeyValue::Int(id)])
            .and_then(|s| s.trim_start_matches('s').parse().ok())
            .unwrap_or(0)
    };
    let countries = ["us", "de", "fr", "jp"];
    let mut sql = vec![String::new(); shards as usize];
    let mut customers = vec![Vec::new(); shards as usize];
    for id in 1..=CUSTOMERS {
        customers[owner(id)].push(format!(
            "({id}, 'customer {id}', '{}')",
            countries[(id % 4) as usize]
        ));
    }
    let mut orders = vec![Vec::new(); shards as usize];
    for g in 1..=ORDERS {
        let customer = 1 + g % CUSTOMERS;
        orders[owner(customer)].push(format!("({g}, {customer}, {}.99)", g % 50));
    }
    for s in 0..shards as usize {
        if !customers[s].is_empty() {
            sql[s].push_str(&format!(
                "INSERT INTO customers VALUES {};\n",
                customers[s].join(", ")
            ));
        }
        if !orders[s].is_empty() {
            sql[s].push_str(&format!(
                "INSERT INTO orders (id, customer_id, amount) VALUES {};\n",
                orders[s].join(", ")
            ));
        }
    }
    sql
}

/// Why the proxy cannot listen on `addr`, and what to do about it.
fn listen_error(addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{addr} is already in use: stop what listens there or pick another port with --port"
        ),
        _ => format!("cannot listen on {addr}: {e}; pick another port with --port"),
    }
}

pub fn run(args: SandboxArgs) -> ExitCode {
    match start(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardgate sandbox: {e}");
            ExitCode::from(1)
        }
    }
}

fn start(args: &SandboxArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    if args.sync && args.replicas == 0 {
        return Err(
            "--sync needs at least one replica per shard (every commit would wait for one)".into(),
        );
    }
    // The proxy's address is taken first and kept until the proxy serves on it: a port in
    // use is reported before any PostgreSQL starts, and nothing can take it in between.
    let listen = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(listen).map_err(|e| listen_error(listen, &e))?;
    let listen = listener.local_addr()?;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Some(d.canonicalize()?)
        }
        None => None,
    };
    let opts = ClusterOptions {
        password: Some(PASSWORD.into()),
        auth: AuthMethod::ScramSha256,
        base_dir: base.clone(),
        keep: base.is_some(),
        ..ClusterOptions::default()
    };
    let mut clusters: Vec<(Cluster, Vec<Cluster>)> = Vec::new();
    for i in 0..args.shards {
        eprintln!("starting shard s{i} primary ...");
        let primary = Cluster::start(opts.clone())?;
        primary.create_database("app")?;
        let mut replicas = Vec::new();
        for r in 0..args.replicas {
            eprintln!("starting shard s{i} replica {r} ...");
            replicas.push(primary.start_replica(ClusterOptions {
                port: None,
                ..opts.clone()
            })?);
        }
        if args.sync {
            eprintln!("making shard s{i}'s replicas synchronous ...");
            make_synchronous(&primary)?;
        }
        clusters.push((primary, replicas));
    }
    let config_dir = base.clone().unwrap_or_else(std::env::temp_dir);
    let (config_path, map_path) = match &base {
        Some(dir) => (dir.join(CONFIG_FILE), dir.join(MAP_FILE)),
        None => {
            let tag = std::process::id();
            (
                config_dir.join(format!("shardgate-sandbox-{tag}.yaml")),
                config_dir.join(format!("shardgate-sandbox-{tag}-customers.yaml")),
            )
        }
    };
    std::fs::write(&map_path, demo_map(args.shards))?;
    std::fs::write(
        &config_path,
        config_yaml(listen, file_name(&map_path), &clusters),
    )?;
    let config = sgconfig::load_file(&config_path).map_err(|e| e.to_string())?;
    if base.is_none() {
        let _ = std::fs::remove_file(&config_path);
        let _ = std::fs::remove_file(&map_path);
    }
    let map = config.databases["app"].maps[0].clone();
    for ((primary, replicas), data) in clusters.iter().zip(demo_data(&map, args.shards)) {
        primary.psql("app", DEMO_SCHEMA)?;
        primary.psql("app", &data)?;
        wait_replayed(primary, replicas)?;
    }
    let last = format!("s{}", args.shards - 1);
    let on_last = clusters[args.shards as usize - 1]
        .0
        .psql("app", "SELECT count(*) FROM customers")?;
    let mut total = 0u64;
    for (primary, _) in &clusters {
        total += primary
            .psql("app", "SELECT count(*) FROM customers")?
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }

    let kept_config = base.as_ref().map(|_| config_path.display().to_string());
    let rt = crate::runtime(config.worker_threads())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let result = rt.block_on(async move {
        let server = tokio::spawn(crate::serve(
            config,
            base.map(|_| config_path.clone()),
            Some(tx),
            Some(listener),
        ));
        if let Ok(addr) = rx.await {
            println!();
            println!(
                "shardgate sandbox is ready: {} shard(s), {} replica(s) each.",
                args.shards, args.replicas
            );
            if args.sync {
                println!("Replicas are synchronous: a commit returns once a replica has flushed it.");
            }
            println!("Connect with:");
            println!("  psql postgres://app:{PASSWORD}@{addr}/app");
            println!("Admin console:");
            println!("  psql postgres://{ADMIN}:{PASSWORD}@{addr}/shardgate   -- SHOW SHARDS; SHOW POOLS; ...");
            if let Some(path) = &kept_config {
                println!("Config: {path}");
                println!("Failover drill (stops a primary; the proxy promotes its replica):");
                println!("  shardgate drill failover --config {path} --shard s0");
            }
            println!("Try (customers and orders are sharded by customer id, countries is on every shard):");
            println!("  SELECT name FROM customers WHERE id = 42;                      -- customer 42");
            println!("  SELECT count(*), sum(amount) FROM orders WHERE customer_id = 7;  -- 10 | 69.90");
            println!("  SELECT name FROM countries WHERE code = 'de';                  -- Germany");
            println!("  SELECT id FROM customers WHERE id IN (1, 2, 3, 4);             -- 4 rows, from every shard that holds one");
            println!("  /* shardgate: shard={last} */ SELECT count(*) FROM customers;   -- {on_last}, the customers on {last}");
            if args.shards > 1 {
                println!("  SELECT count(*) FROM customers;                                -- {total}, merged from every shard");
                println!("  SELECT id, name FROM customers ORDER BY id DESC LIMIT 3;       -- merged: the 3 highest ids of all shards");
            }
            println!("Press Ctrl-C to stop everything.");
        }
        server.await
    });
    drop(clusters);
    match result {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

/// Makes the replicas of `primary` synchronous (any one of them confirms each commit's
/// flush) and waits until one is. Done after `pg_basebackup` copied the primary, so that no
/// replica inherits the setting: promoted with no standby of its own, it would wait forever
/// on every commit. `ALTER SYSTEM` overrides the cluster's own `synchronous_commit = off`.
fn make_synchronous(primary: &Cluster) -> Result<(), Box<dyn std::error::Error>> {
    // One statement per call: ALTER SYSTEM cannot run in a transaction.
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'",
        "ALTER SYSTEM SET synchronous_commit = on",
        "SELECT pg_reload_conf()",
    ] {
        primary.psql("postgres", sql)?;
    }
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let state = primary.psql(
            "postgres",
            "SELECT current_setting('synchronous_commit'), count(*) FROM pg_stat_replication \
             WHERE sync_state IN ('sync', 'quorum')",
        )?;
        if matches!(state.split_once('|'), Some(("on", n)) if n != "0") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the primary on port {} has no synchronous replica after {} s \
                 (synchronous_commit, synchronous replicas: {state})",
                primary.port(),
                SYNC_TIMEOUT.as_secs()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every replica of `primary` has replayed all the primary has written: reads
/// go to replicas, and a synchronous commit waits for a replica's flush, not its replay, so
/// the first demo query could otherwise find a replica without the demo data.
fn wait_replayed(
    primary: &Cluster,
    replicas: &[Cluster],
) -> Result<(), Box<dyn std::error::Error>> {
    let written = primary.psql("postgres", "SELECT pg_current_wal_lsn()")?;
    let written = written.trim();
    let check = format!("SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn");
    for replica in replicas {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while replica.psql("postgres", &check)?.trim() != "t" {
            if Instant::now() > deadline {
                return Err(format!(
                    "the replica on port {} has not replayed the demo data (up to {written}) \
                     after {} s",
                    replica.port(),
                    SYNC_TIMEOUT.as_secs()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The sandbox's config: users `app` and the admin `ops`, database `app` with the demo map
/// and reads on replicas, and each shard's servers with a `stop_command` (an abrupt stop, for the failover drill)
/// and, in a comment, how to start the server again.
fn config_yaml(listen: SocketAddr, map: &str, clusters: &[(Cluster, Vec<Cluster>)]) -> String {
    let mut yaml = format!(
        "listen: {listen}\n\
         pool: {{ mode: transaction, size: 10 }}\n\
         users:\n  - {{ name: app, password: {PASSWORD} }}\n  - {{ name: {ADMIN}, password: {PASSWORD} }}\n\
         admin_users: [{ADMIN}]\n\
         databases:\n  app:\n    shard_maps: [{}]\n    reference_tables: [countries]\n    read_write_split: {{ enabled: true }}\n    shards:\n",
        yaml_string(map)
    );
    for (i, (primary, replicas)) in clusters.iter().enumerate() {
        yaml.push_str(&format!("      s{i}:\n"));
        yaml.push_str(&format!(
            "        # start again: {}\n        primary: {}\n",
            primary.start_command(),
            server_yaml(primary)
        ));
        if replicas.is_empty() {
            yaml.push_str("        replicas: []\n");
            continue;
        }
        yaml.push_str("        replicas:\n");
        for r in replicas {
            yaml.push_str(&format!(
                "          # start again: {}\n          - {}\n",
                r.start_command(),
                server_yaml(r)
            ));
        }
    }
    yaml
}

/// `{ url: "...", stop_command: "..." }` for one server.
fn server_yaml(c: &Cluster) -> String {
    format!(
        "{{ url: {}, stop_command: {} }}",
        yaml_string(&c.url("app")),
        yaml_string(&c.stop_command())
    )
}

/// A double-quoted YAML string.
fn yaml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_strings_are_quoted() {
        assert_eq!(yaml_string("plain"), "\"plain\"");
        assert_eq!(yaml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
