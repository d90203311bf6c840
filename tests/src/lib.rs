//! The harness of the end-to-end tests: one real PostgreSQL cluster per test binary, started
//! on first use and stopped at exit, and proxies started in-process on their own runtime, each
//! in front of a database of its own so that tests do not see each other's tables.

pub mod differential;
pub mod raw;
pub mod regress;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use cluster::{AuthMethod, Cluster, ClusterOptions};
use parking_lot::Mutex;

/// The superuser's password on the test cluster.
pub const SERVER_PASSWORD: &str = "server-pw";
/// Password of the proxy user `app` (SCRAM) and `md5user` (md5).
pub const APP_PASSWORD: &str = "app-secret";

/// What tests need to know of the shared cluster.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    pub port: u16,
    pub superuser: String,
}

static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);
static INFO: OnceLock<ClusterInfo> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

extern "C" fn stop_cluster() {
    // Drop stops the server and removes its directory.
    drop(CLUSTER.lock().take());
}

/// The shared cluster, started on first use.
pub fn cluster() -> &'static ClusterInfo {
    INFO.get_or_init(|| {
        let c = Cluster::start(ClusterOptions {
            password: Some(SERVER_PASSWORD.into()),
            auth: AuthMethod::ScramSha256,
            settings: vec![("max_connections".into(), "300".into())],
            ..ClusterOptions::default()
        })
        .expect("start the test cluster");
        let info = ClusterInfo {
            port: c.port(),
            superuser: c.superuser().to_owned(),
        };
        *CLUSTER.lock() = Some(c);
        // SAFETY: registers a plain function to run at process exit.
        unsafe {
            libc::atexit(stop_cluster);
        }
        info
    })
}

/// Runs SQL on the cluster directly with psql and returns its unaligned output.
pub fn psql_direct(database: &str, sql: &str) -> String {
    cluster();
    CLUSTER
        .lock()
        .as_ref()
        .expect("cluster running")
        .psql(database, sql)
        .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
}

/// The runtime proxies run on; it outlives every test.
fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        if let Ok(filter) = std::env::var("SHARDGATE_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime")
    })
}

/// How a test's proxy is set up.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub mode: &'static str,
    pub pool_size: u32,
    pub checkout_timeout_ms: u64,
    pub max_client_connections: u32,
    pub max_message_size: u32,
    /// Idle server connections are handed out least recently used first, so that a client
    /// moves between them from one transaction to the next.
    pub round_robin: bool,
    /// `pool.pinning`.
    pub pinning: bool,
    /// `pool.max_prepared_statements`.
    pub max_prepared: u32,
    /// `limits.client_idle_timeout_ms`, `limits.idle_transaction_timeout_ms`,
    /// `limits.query_timeout_ms` (0: off).
    pub timeouts_ms: (u64, u64, u64),
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            mode: "transaction",
            pool_size: 5,
            checkout_timeout_ms: 5000,
            max_client_connections: 1000,
            max_message_size: 1 << 20,
            round_robin: false,
            pinning: true,
            max_prepared: 200,
            timeouts_ms: (0, 0, 0),
        }
    }
}

/// A database of the test's own on the shared cluster, with a proxy in front of it.
pub struct TestDb {
    pub name: String,
    pub proxy_addr: SocketAddr,
    pub proxy: std::sync::Arc<proxy::Proxy>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub fn new(prefix: &str, opts: ProxyOptions) -> TestDb {
        let info = cluster();
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        psql_direct("postgres", &format!("CREATE DATABASE \"{name}\""));
        let yaml = format!(
            "listen: 127.0.0.1:0
pool: {{ mode: {mode}, size: {size}, checkout_timeout_ms: {timeout}, server_round_robin: {rr}, pinning: {pin}, max_prepared_statements: {maxp} }}
limits: {{ max_client_connections: {maxc}, max_message_size: {maxm}, client_idle_timeout_ms: {t_idle}, idle_transaction_timeout_ms: {t_tx}, query_timeout_ms: {t_query} }}
users:
  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}
  - {{ name: md5user, password: {APP_PASSWORD}, auth: md5, server_user: {su}, server_password: {SERVER_PASSWORD} }}
  - {{ name: trustuser, auth: trust, server_user: {su}, server_password: {SERVER_PASSWORD} }}
databases:
  app:
    shards:
      s0: {{ primary: \"postgres://127.0.0.1:{port}/{name}\" }}
",
            mode = opts.mode,
            size = opts.pool_size,
            timeout = opts.checkout_timeout_ms,
            maxc = opts.max_client_connections,
            maxm = opts.max_message_size,
            rr = opts.round_robin,
            pin = opts.pinning,
            maxp = opts.max_prepared,
            t_idle = opts.timeouts_ms.0,
            t_tx = opts.timeouts_ms.1,
            t_query = opts.timeouts_ms.2,
            su = info.superuser,
            port = info.port,
        );
        let config = sgconfig::load_str(std::path::Path::new("test.yaml"), &yaml)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let proxy = proxy::Proxy::new(config);
        let p = proxy.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let proxy_addr = listener.local_addr().expect("address");
        runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            p.serve(listener).await
        });
        TestDb {
            name,
            proxy_addr,
            proxy,
        }
    }

    /// libpq-style connection string through the proxy.
    pub fn proxy_conninfo(&self, user: &str, password: &str) -> String {
        let password = if password.is_empty() {
            String::new()
        } else {
            format!(" password={password}")
        };
        format!(
            "host=127.0.0.1 port={} user={user}{password} dbname=app",
            self.proxy_addr.port()
        )
    }

    pub fn direct_conninfo(&self) -> String {
        direct_conninfo(&self.name)
    }

    pub fn proxy_url(&self) -> String {
        format!(
            "postgres://app:{APP_PASSWORD}@127.0.0.1:{}/app",
            self.proxy_addr.port()
        )
    }

    pub fn direct_url(&self) -> String {
        let info = cluster();
        format!(
            "postgres://{}:{SERVER_PASSWORD}@127.0.0.1:{}/{}",
            info.superuser, info.port, self.name
        )
    }

    /// A tokio-postgres client through the proxy as `app`.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.proxy_conninfo("app", APP_PASSWORD)).await
    }

    /// A tokio-postgres client straight to the database.
    pub async fn connect_direct(&self) -> tokio_postgres::Client {
        connect(&self.direct_conninfo()).await
    }
}

/// A conninfo straight to `database` on the shared cluster, as its superuser.
pub fn direct_conninfo(database: &str) -> String {
    let info = cluster();
    format!(
        "host=127.0.0.1 port={} user={} password={SERVER_PASSWORD} dbname={database}",
        info.port, info.superuser
    )
}

/// Connects and drives the connection on a task; panics on failure.
pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Logs in as the trust user over a raw socket and reads up to ReadyForQuery.
pub async fn raw_login(db: &TestDb) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(db.proxy_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        &wire::startup::encode_startup(&[("user", "trustuser"), ("database", "app")]),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut chunk)
            .await
            .unwrap();
        assert!(n > 0, "closed during login");
        buf.extend_from_slice(&chunk[..n]);
        // ReadyForQuery 'Z' 0 0 0 5 'I' ends the login.
        if buf.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            return s;
        }
    }
}

/// Sends raw protocol bytes and reads until ReadyForQuery; returns all that came back.
pub async fn raw_round_trip(s: &mut tokio::net::TcpStream, out: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(out).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 6 && buf[buf.len() - 6] == b'Z' {
            return buf;
        }
    }
}

/// Starts a proxy from config text written to `dir/config.yaml` (shard maps may sit beside
/// it). Returns its address.
pub fn start_proxy_from(dir: &std::path::Path, yaml: &str) -> SocketAddr {
    let file = dir.join("config.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let config = sgconfig::load_file(&file).unwrap_or_else(|e| panic!("test config: {e}"));
    let proxy = proxy::Proxy::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("address");
    runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        proxy.serve(listener).await
    });
    addr
}

/// A fresh database on the shared cluster; returns its name.
pub fn create_database(prefix: &str) -> String {
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    psql_direct("postgres", &format!("CREATE DATABASE \"{name}\""));
    name
}

/// A proxy whose database `app` has the given shard databases as `s0`, `s1`, ..., one shard
/// map (`map_yaml`, written to `map.yaml`) and `db_extra` (more keys of the database, e.g.
/// `reference_tables: [t]`). `pool` is the proxy's `pool:` section, e.g. `{ size: 5 }`.
/// Returns the proxy's address and its config directory.
pub fn sharded_proxy(
    name: &str,
    shards: &[String],
    map_yaml: &str,
    db_extra: &str,
    pool: &str,
) -> (SocketAddr, std::path::PathBuf) {
    let info = cluster();
    let dir = std::env::temp_dir().join(format!("sg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("map.yaml"), map_yaml).expect("write map");
    let mut yaml = format!(
        "pool: {pool}\nusers:\n  - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}\n\
         \x20 - {{ name: trustuser, auth: trust, server_user: {su}, server_password: {SERVER_PASSWORD} }}\n\
         databases:\n  app:\n    shard_maps: [map.yaml]\n",
        su = info.superuser,
    );
    if !db_extra.is_empty() {
        yaml.push_str(&format!("    {db_extra}\n"));
    }
    yaml.push_str("    shards:\n");
    for (i, db) in shards.iter().enumerate() {
        yaml.push_str(&format!(
            "      s{i}: {{ primary: \"postgres://127.0.0.1:{}/{db}\" }}\n",
            info.port
        ));
    }
    (start_proxy_from(&dir, &yaml), dir)
}

/// The rows of a simple query's results, as text (`None`: NULL).
pub fn simple_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The row counts of a simple query's CommandCompletes.
pub fn simple_counts(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}
