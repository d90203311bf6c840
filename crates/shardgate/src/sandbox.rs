//! `shardgate sandbox`: local PostgreSQL shards with streaming replicas, a config for them,
//! a small demo schema, and the proxy in front, all stopped by Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Directory for the clusters and the config (default: a temporary one, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const PASSWORD: &str = "sandbox";
const DEMO_SCHEMA: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, country text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                     amount numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers SELECT g, 'customer ' || g, (ARRAY['us','de','fr','jp'])[1 + g % 4]
  FROM generate_series(1, 100) g;
INSERT INTO orders (customer_id, amount) SELECT 1 + g % 100, (g % 50) + 0.99 FROM generate_series(1, 1000) g;
";

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
        clusters.push((primary, replicas));
    }
    // Until routing by shard key is in place, every table lives on the home shard s0.
    clusters[0].0.psql("app", DEMO_SCHEMA)?;

    let mut yaml = format!(
        "listen: 127.0.0.1:{}\npool: {{ mode: transaction, size: 10 }}\nusers:\n  - {{ name: app, password: {PASSWORD} }}\ndatabases:\n  app:\n    shards:\n",
        args.port
    );
    for (i, (p, rs)) in clusters.iter().enumerate() {
        let replicas: Vec<String> = rs.iter().map(|r| format!("\"{}\"", r.url("app"))).collect();
        yaml.push_str(&format!(
            "      s{i}: {{ primary: \"{}\", replicas: [{}] }}\n",
            p.url("app"),
            replicas.join(", ")
        ));
    }
    let config_dir = base.clone().unwrap_or_else(std::env::temp_dir);
    let config_path = config_dir.join(format!("shardgate-sandbox-{}.yaml", std::process::id()));
    std::fs::write(&config_path, &yaml)?;
    let config = sgconfig::load_file(&config_path).map_err(|e| e.to_string())?;
    if base.is_none() {
        let _ = std::fs::remove_file(&config_path);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let result = rt.block_on(async move {
        let server = tokio::spawn(crate::serve(
            config,
            base.map(|_| config_path.clone()),
            Some(tx),
        ));
        if let Ok(addr) = rx.await {
            println!();
            println!(
                "shardgate sandbox is ready: {} shard(s), {} replica(s) each.",
                args.shards, args.replicas
            );
            println!("Connect with:");
            println!("  psql postgres://app:{PASSWORD}@{addr}/app");
            println!("Try:");
            println!("  SELECT count(*) FROM customers;                 -- 100");
            println!("  SELECT name FROM customers WHERE id = 42;        -- customer 42");
            println!("  SELECT count(*) FROM orders WHERE customer_id = 7;  -- 10");
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
