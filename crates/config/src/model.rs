//! The configuration model. Field names are the YAML keys; unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Threads that serve clients; 0 (default): one on machines with up to two cores (the
    /// database and clients need the rest), else one per core.
    #[serde(default)]
    pub workers: u32,
    pub users: Vec<UserConfig>,
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Users (from `users`) allowed into the admin console, database `shardgate`.
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Prometheus metrics over HTTP; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// TLS for clients.
    #[serde(default)]
    pub tls: TlsConfig,
    /// TLS towards the servers.
    #[serde(default)]
    pub server_tls: ServerTls,
    #[serde(default)]
    pub log: LogConfig,
    /// After SIGTERM/SIGINT, running transactions get this long to finish.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_s: u64,
    /// Two-phase commit of transactions over several shards, and its recovery.
    #[serde(default)]
    pub two_phase: TwoPhaseConfig,
    /// The directory of the config file, which relative paths (shard maps, certificates)
    /// are read from.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

fn default_shutdown_grace() -> u64 {
    30
}

/// Two-phase commit: how in-doubt transactions are found and resolved, and how long a
/// transaction over several shards may wait for a lock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwoPhaseConfig {
    /// How often every shard is swept for prepared transactions left by a proxy that died
    /// (also once at start-up).
    pub recovery_interval_s: u64,
    /// A prepared transaction younger than this is left to the proxy running it.
    pub grace_s: u64,
    /// A statement of a transaction over several shards that waits this long for a lock
    /// fails with 40P01: a deadlock across shards, which no one PostgreSQL can see, is
    /// broken after this long. 0: never.
    pub deadlock_timeout_ms: u64,
}

impl Default for TwoPhaseConfig {
    fn default() -> Self {
        TwoPhaseConfig {
            recovery_interval_s: 10,
            grace_s: 30,
            deadlock_timeout_ms: 2_000,
        }
    }
}

/// Whether a transaction may span shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CrossShardTransactions {
    /// Shards join as the transaction needs them; several commit with two-phase commit.
    #[default]
    TwoPhase,
    /// A statement for a second shard in a transaction is refused.
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener that serves `GET /metrics`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// SSLRequest is answered `N`.
    #[default]
    Disable,
    /// TLS when the client asks for it.
    Allow,
    /// Clients without TLS are refused (28000).
    Require,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (relative paths from the config file's directory).
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub mode: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain connections.
    #[default]
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS or no connection, without checking the certificate.
    Require,
    /// TLS, the certificate checked against `ca` and the host name.
    VerifyFull,
}

/// `server_tls: MODE` or `server_tls: { mode: MODE, ca: FILE }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    /// PEM file of the certificate authorities trusted for `verify-full`.
    pub ca: Option<String>,
}

impl<'de> Deserialize<'de> for ServerTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            mode: ServerTlsMode,
            #[serde(default)]
            ca: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Mode(ServerTlsMode),
            Full(Full),
        }
        Ok(match Either::deserialize(d)? {
            Either::Mode(mode) => ServerTls { mode, ca: None },
            Either::Full(f) => ServerTls {
                mode: f.mode,
                ca: f.ca,
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `shardgate=debug,info`, ... (SHARDGATE_LOG, when
    /// set, wins).
    pub level: String,
    /// Statements that take longer than this are logged at WARN with their text. 0: off.
    pub slow_query_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            slow_query_ms: 0,
        }
    }
}

impl Config {
    /// The number of worker threads `workers` stands for on this machine.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if cores <= 2 {
                    1
                } else {
                    cores
                }
            }
            n => n as usize,
        }
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:6432".parse().expect("valid default")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection is held for one transaction.
    #[default]
    Transaction,
    /// A server connection is held for the whole client session.
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Most server connections per (database, user, shard).
    pub size: u32,
    /// Connections kept open while idle.
    pub min_idle: u32,
    /// How long a client waits for a server connection before an error.
    pub checkout_timeout_ms: u64,
    /// Idle server connections above `min_idle` are closed after this long.
    pub idle_timeout_s: u64,
    /// Server connections are closed (when idle) after this long.
    pub server_lifetime_s: u64,
    /// Connecting and authenticating to a server may take this long.
    pub connect_timeout_ms: u64,
    /// Hand out the idle connection used least recently instead of most recently (as
    /// PgBouncer's `server_round_robin`): spreads load, and makes clients move between
    /// server connections, which tests of session state rely on.
    pub server_round_robin: bool,
    /// Transaction pooling: a client whose server session holds state that outlives its
    /// transaction (temporary tables, WITH HOLD cursors, SQL PREPARE, LISTEN, session
    /// advisory locks) keeps its connection until that state is gone.
    pub pinning: bool,
    /// Statements prepared on one server connection at most; past it the least recently
    /// used is closed on the server and prepared again when needed. 0: no limit.
    pub max_prepared_statements: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            checkout_timeout_ms: 5000,
            idle_timeout_s: 600,
            server_lifetime_s: 3600,
            connect_timeout_ms: 5000,
            server_round_robin: false,
            pinning: true,
            max_prepared_statements: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Clients beyond this many are refused with 53300.
    pub max_client_connections: u32,
    /// A client message announcing more bytes than this is refused before it is read.
    pub max_message_size: u32,
    /// A client idle (no transaction open, nothing running) this long is disconnected with
    /// FATAL 57P05, as by PostgreSQL's idle_session_timeout. 0: never.
    pub client_idle_timeout_ms: u64,
    /// A client idle inside a transaction this long is disconnected with FATAL 25P03 (its
    /// transaction rolled back), as by PostgreSQL's idle_in_transaction_session_timeout.
    /// 0: never.
    pub idle_transaction_timeout_ms: u64,
    /// A statement running this long is cancelled and fails with 57014, as by PostgreSQL's
    /// statement_timeout. 0: never.
    pub query_timeout_ms: u64,
    /// Bytes one merge across shards may hold (GROUP BY groups, DISTINCT keys, rows to
    /// sort after aggregation); past it the statement fails with 54000. An ORDER BY merge
    /// holds one row per shard whatever the result's size.
    pub merge_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: 10_000,
            max_message_size: 64 * 1024 * 1024,
            client_idle_timeout_ms: 0,
            idle_transaction_timeout_ms: 0,
            query_timeout_ms: 0,
            merge_memory: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, a SCRAM verifier (`SCRAM-SHA-256$...`) or an MD5 hash (`md5...`).
    #[serde(default)]
    pub password: Option<String>,
    /// How clients of this user authenticate.
    #[serde(default)]
    pub auth: AuthMethod,
    /// Role used on the servers (default: `name`).
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password used on the servers (default: `password` when it is plain text).
    #[serde(default)]
    pub server_password: Option<String>,
    /// Overrides `pool.size` for this user.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// Overrides `pool.mode` for this user.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl UserConfig {
    /// The password as plain text, when the config holds it so.
    pub fn plain_password(&self) -> Option<&str> {
        self.password
            .as_deref()
            .filter(|p| !is_scram_verifier(p) && !is_md5_hash(p))
    }

    /// What the proxy sends to servers as this user's password.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.plain_password())
    }

    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }
}

pub fn is_scram_verifier(p: &str) -> bool {
    p.starts_with("SCRAM-SHA-256$")
}

pub fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Shards by name, in order; the first is the home of tables no map names.
    pub shards: indexmap_lite::OrderedShards,
    /// Shard map files, relative to the config file.
    #[serde(default)]
    pub shard_maps: Vec<String>,
    /// Tables copied whole on every shard: reads go to one shard, writes to all.
    #[serde(default)]
    pub reference_tables: Vec<String>,
    /// Transactions over several shards: `two_phase` (default) or `deny`.
    #[serde(default)]
    pub cross_shard_transactions: CrossShardTransactions,
    /// Reads on replicas.
    #[serde(default)]
    pub read_write_split: ReadWriteSplit,
    /// Health checks and failover.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// The loaded maps, in the order of `shard_maps`.
    #[serde(skip)]
    pub maps: Vec<crate::shardmap::ShardMap>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// The server that takes writes when the proxy starts (failover may promote another).
    pub primary: ServerSpec,
    /// Streaming replicas of the primary: reads go to them (see `read_write_split`), and
    /// failover promotes one of them.
    #[serde(default)]
    pub replicas: Vec<ServerSpec>,
}

impl ShardConfig {
    /// The shard's servers as configured: the primary first, then the replicas.
    pub fn servers(&self) -> impl Iterator<Item = &ServerSpec> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

/// One server of a shard: its URL alone, or `{ url, stop_command, weight }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// `postgres://[user[:password]@]host[:port]/database`
    pub url: String,
    /// A shell command that stops the server abruptly (`shardgate drill failover` runs it).
    pub stop_command: Option<String>,
    /// Share of the shard's reads relative to the other replicas (default 1; 0: no reads).
    pub weight: u32,
}

impl ServerSpec {
    pub fn new(url: impl Into<String>) -> ServerSpec {
        ServerSpec {
            url: url.into(),
            stop_command: None,
            weight: 1,
        }
    }
}

impl<'de> Deserialize<'de> for ServerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            url: String,
            #[serde(default)]
            stop_command: Option<String>,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ServerSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a server URL or { url, stop_command, weight }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServerSpec, E> {
                Ok(ServerSpec::new(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ServerSpec, E> {
                Ok(ServerSpec::new(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<ServerSpec, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(ServerSpec {
                    url: f.url,
                    stop_command: f.stop_command,
                    weight: f.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads on replicas: which statements are reads is the proxy's (docs/failover.md); this
/// says whether they go to replicas, how one is chosen, and which are fit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadWriteSplit {
    /// Reads go to replicas (when the shard has fit ones). Off by default: a replica may
    /// not have replayed what another connection just committed, which one PostgreSQL
    /// would show; turning it on accepts that (docs/failover.md).
    pub enabled: bool,
    pub strategy: ReadStrategy,
    /// A replica whose replay position is further than this behind the primary's WAL
    /// gets no reads until it catches up (0: no bound).
    pub max_lag_bytes: u64,
    /// A replica that has not replayed what the primary wrote this long ago gets no reads
    /// (0: no bound).
    pub max_lag_seconds: f64,
    /// What a client's reads see after its own writes.
    pub read_your_writes: ReadYourWrites,
}

impl Default for ReadWriteSplit {
    fn default() -> Self {
        ReadWriteSplit {
            enabled: false,
            strategy: ReadStrategy::RoundRobin,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_seconds: 10.0,
            read_your_writes: ReadYourWrites::Lsn,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadStrategy {
    /// Each fit replica in turn, as often as its weight says.
    #[default]
    RoundRobin,
    /// A fit replica at random, by weight.
    Random,
    /// The fit replica with the fewest connections in use (ties: by weight, then in turn).
    LeastConnections,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// After a client's write commits, its reads of that shard go to replicas known to
    /// have replayed the primary's WAL past that commit, else to the primary.
    #[default]
    Lsn,
    /// After a client's first write on a shard, all its reads of that shard go to the
    /// primary.
    PrimaryAfterWrite,
    /// Reads may see a replica from before the client's own writes.
    Off,
}

/// Health checks of every server and what happens when a shard's primary is lost.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub mode: FailoverMode,
    /// How often each server is checked.
    pub health_check_interval_ms: u64,
    /// A check that takes longer fails.
    pub health_check_timeout_ms: u64,
    /// Consecutive failed checks before a server is down (a replica gets no reads; a
    /// primary is replaced in `auto` mode).
    pub failures_before_down: u32,
    /// New transactions for a shard whose primary is being replaced wait this long for the
    /// new one before they fail.
    pub buffer_timeout_ms: u64,
    /// `SWITCHOVER` waits this long for the replica to replay the primary's last WAL.
    pub switchover_timeout_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Auto,
            health_check_interval_ms: 500,
            health_check_timeout_ms: 1000,
            failures_before_down: 3,
            buffer_timeout_ms: 10_000,
            switchover_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// A primary down past the threshold is replaced by its most advanced replica.
    #[default]
    Auto,
    /// Only the admin commands `FAILOVER` and `SWITCHOVER` promote.
    Manual,
}

/// Where and how to reach one server, parsed from a shard URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl ServerAddress {
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = url::Url::parse(s).map_err(|e| format!("invalid server URL: {e}"))?;
        if u.scheme() != "postgres" && u.scheme() != "postgresql" {
            return Err("server URL must start with postgres://".into());
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("server URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let database = u.path().trim_start_matches('/');
        if database.is_empty() {
            return Err("server URL has no database name".into());
        }
        let decode = |v: &str| {
            url::form_urlencoded::parse(format!("x={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Ok(ServerAddress {
            host,
            port: u.port().unwrap_or(5432),
            database: decode(database),
            user: Some(u.username()).filter(|s| !s.is_empty()).map(decode),
            password: u.password().map(decode),
        })
    }
}

/// A small ordered map of shards, so that "first shard" means the first one written.
pub mod indexmap_lite {
    use super::ShardConfig;
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    #[derive(Debug, Clone, Default)]
    pub struct OrderedShards(pub Vec<(String, ShardConfig)>);

    impl OrderedShards {
        pub fn iter(&self) -> impl Iterator<Item = (&str, &ShardConfig)> {
            self.0.iter().map(|(k, v)| (k.as_str(), v))
        }
        pub fn first(&self) -> Option<(&str, &ShardConfig)> {
            self.iter().next()
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    impl<'de> Deserialize<'de> for OrderedShards {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OrderedShards;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map of shard name to shard")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<String, ShardConfig>()? {
                        if out.iter().any(|(n, _): &(String, ShardConfig)| *n == k) {
                            return Err(serde::de::Error::custom(format!(
                                "shard `{k}` is defined twice"
                            )));
                        }
                        out.push((k, v));
                    }
                    Ok(OrderedShards(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}
