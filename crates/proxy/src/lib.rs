//! The proxy: accepts clients, authenticates them, and runs each client's session.
//!
//! [`Proxy`] is the shared state of one running proxy: the live config, the pools, the cancel
//! registry and the statement registry. [`Proxy::serve`] accepts connections; each becomes a
//! task that runs [`startup`] (TLS refusal, cancel requests, authentication) and then the
//! [`session`] message loop.

mod admin;
mod auth;
mod cancel;
mod copyin;
mod fanout;
mod metrics;
mod session;
mod settings;
mod startup;
mod statements;
pub mod stats;
pub mod topology;
pub mod twophase;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pool::{Pool, PoolSettings, ServerTarget};
use sgconfig::{Config, ConfigHandle, PoolMode, ServerAddress};
use tokio::net::{TcpListener, TcpStream};
use wire::messages::ProxyError;

pub use cancel::CancelRegistry;

/// Identifies a pool: database, user, shard, and for reads on a replica its URL (`None`:
/// the shard's write pool, to whichever server is its primary).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    database: String,
    user: String,
    shard: String,
    replica: Option<String>,
}

pub struct Proxy {
    config: ConfigHandle,
    users: arc_swap::ArcSwap<auth::UserTable>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
    cancels: CancelRegistry,
    statements: statements::StatementRegistry,
    /// Statement analyses by shape, for routing.
    route_cache: router::cache::RouteCache,
    clients: AtomicUsize,
    /// Clients whose server connection is pinned (transaction pooling), for the admin view
    /// and metrics.
    pinned: AtomicUsize,
    /// Bumped by every reload.
    generation: AtomicU64,
    /// Distinct startup settings of clients, shared between them (see `Settings::intern`).
    startup_settings: Mutex<Vec<pool::SettingsMap>>,
    next_client_id: AtomicU64,
    /// Called after much memory was freed at once (a client with many prepared statements
    /// left), so that the allocator can hand it back to the system.
    memory_freed: std::sync::OnceLock<fn()>,
    /// TLS towards clients and towards servers, built from the config's files.
    tls: arc_swap::ArcSwap<Tls>,
    /// Clients, errors and fan-outs, for the admin console and the metrics.
    pub stats: stats::Stats,
    /// The config file, for `RELOAD`.
    config_path: Mutex<Option<std::path::PathBuf>>,
    /// Databases whose new transactions wait (`PAUSE`); `*` stands for all.
    paused: Mutex<std::collections::HashSet<String>>,
    any_paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// SIGTERM/SIGINT came: sessions close once their transaction is over.
    shutting_down: std::sync::atomic::AtomicBool,
    /// `log.slow_query_ms` of the live config (0: off).
    slow_query: AtomicU64,
    /// Some database of the live config reads on replicas (most do not: the per-statement
    /// check then costs one load).
    replica_reads: std::sync::atomic::AtomicBool,
    /// Some database of the live config routes over shards (with none, the per-statement
    /// check costs one load).
    any_routes: std::sync::atomic::AtomicBool,
    /// Some session timeout is configured (with none, a session's wait arms no timer and
    /// costs one load).
    any_timeouts: std::sync::atomic::AtomicBool,
    /// Servers an administrator took out of use: (database, shard).
    banned: Mutex<std::collections::HashSet<(String, String)>>,
    /// Each database's text order, as merges must reproduce it (asked of a shard once).
    collations: Mutex<HashMap<String, router::merge_plan::Collation>>,
    /// Column order of sharded tables that INSERTs without a column list name, by
    /// (database, table), from the home shard's catalog; forgotten on reload.
    table_columns: Mutex<HashMap<(String, String), TableColumns>>,
    /// Functions called by reads over several shards, by (database, name): whether the
    /// catalog has an aggregate of that name (a user-defined aggregate would need a merge
    /// the router does not know of). Forgotten on reload and on DDL.
    functions: Mutex<HashMap<(String, String), bool>>,
    /// Every shard's servers: which is primary, which replicas are fit for reads.
    topology: topology::Topology,
    /// This proxy, for the tasks it starts (health checks).
    me: std::sync::Weak<Proxy>,
    /// What sessions measure times from (their last write, compactly).
    epoch: std::time::Instant,
}

/// A table's columns in order.
type TableColumns = Arc<Vec<String>>;

/// The rustls configurations of one config.
#[derive(Default)]
struct Tls {
    /// For clients' SSLRequest; `None`: answered `N`.
    acceptor: Option<Arc<transport::rustls::ServerConfig>>,
    /// For servers, as `server_tls` says.
    servers: pool::ServerTls,
}

impl Tls {
    fn build(config: &Config) -> Result<Tls, String> {
        let path = |p: &str| config.base_dir.join(p);
        let acceptor = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) if config.tls.mode != sgconfig::TlsMode::Disable => {
                Some(transport::config::server_config(&path(cert), &path(key))?)
            }
            _ => None,
        };
        let st = &config.server_tls;
        let servers = pool::ServerTls {
            mode: st.mode,
            ca: st.ca.clone(),
            config: match st.mode {
                sgconfig::ServerTlsMode::Disable => None,
                sgconfig::ServerTlsMode::VerifyFull => Some(transport::config::client_config(
                    st.ca.as_deref().map(path).as_deref(),
                )?),
                _ => Some(transport::config::client_config(None)?),
            },
        };
        Ok(Tls { acceptor, servers })
    }
}

/// Checks that the config's TLS files can be read and fit together.
pub fn check_tls(config: &Config) -> Result<(), String> {
    Tls::build(config).map(|_| ())
}

impl Proxy {
    pub fn new(config: Config) -> Arc<Proxy> {
        let users = auth::UserTable::from_config(&config);
        let slow_query = config.log.slow_query_ms;
        let replica_reads = any_replica_reads(&config);
        let routes = any_routes(&config);
        let timeouts = any_timeouts(&config);
        let tls = Tls::build(&config).unwrap_or_else(|e| {
            tracing::error!("TLS is off: {e}");
            Tls::default()
        });
        Arc::new_cyclic(|me| Proxy {
            me: me.clone(),
            epoch: std::time::Instant::now(),
            topology: Default::default(),
            config: sgconfig::handle(config),
            users: arc_swap::ArcSwap::from_pointee(users),
            pools: Mutex::new(HashMap::new()),
            cancels: CancelRegistry::default(),
            statements: statements::StatementRegistry::default(),
            route_cache: router::cache::RouteCache::default(),
            clients: AtomicUsize::new(0),
            pinned: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            startup_settings: Mutex::new(Vec::new()),
            next_client_id: AtomicU64::new(1),
            memory_freed: std::sync::OnceLock::new(),
            tls: arc_swap::ArcSwap::from_pointee(tls),
            stats: stats::Stats::default(),
            config_path: Mutex::new(None),
            paused: Mutex::new(Default::default()),
            any_paused: Default::default(),
            resumed: tokio::sync::Notify::new(),
            shutting_down: Default::default(),
            slow_query: AtomicU64::new(slow_query),
            replica_reads: std::sync::atomic::AtomicBool::new(replica_reads),
            any_routes: std::sync::atomic::AtomicBool::new(routes),
            any_timeouts: std::sync::atomic::AtomicBool::new(timeouts),
            banned: Mutex::new(Default::default()),
            collations: Mutex::new(HashMap::new()),
            table_columns: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The config file `RELOAD` re-reads.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *self.config_path.lock() = Some(path);
    }

    /// Re-reads the config file and its shard maps: a valid one takes effect for new logins
    /// and new transactions; an invalid one is refused with its problems, the running one
    /// kept.
    pub fn reload_from_file(&self) -> Result<(), String> {
        let Some(path) = self.config_path.lock().clone() else {
            return Err("the proxy was not started from a config file".into());
        };
        match sgconfig::load_file(&path) {
            Ok(config) => {
                if config.listen != self.config().listen {
                    tracing::warn!("listen cannot change on reload; restart to move it");
                }
                self.reload(config);
                Ok(())
            }
            Err(e) => {
                for p in &e.problems {
                    tracing::error!("{p}");
                }
                tracing::error!("configuration not reloaded: the running one stays");
                Err(format!(
                    "configuration not reloaded, the running one stays:\n{e}"
                ))
            }
        }
    }

    /// `BAN` / `UNBAN`: takes a shard's server of a database out of use (checkouts fail
    /// with 08006 naming it; idle connections close) or back.
    pub fn set_banned(&self, database: &str, shard: &str, banned: bool) -> Result<(), String> {
        let known = self
            .config
            .load()
            .databases
            .get(database)
            .is_some_and(|d| d.shards.iter().any(|(n, _)| n == shard));
        if !known {
            return Err(format!("database \"{database}\" has no shard \"{shard}\""));
        }
        let key = (database.to_owned(), shard.to_owned());
        let changed = if banned {
            self.banned.lock().insert(key)
        } else {
            self.banned.lock().remove(&key)
        };
        if !changed {
            return Err(format!(
                "shard \"{shard}\" of database \"{database}\" is {} banned",
                if banned { "already" } else { "not" }
            ));
        }
        for (k, p) in self.pools_by_key() {
            if k.database == database && k.shard == shard {
                p.set_banned(banned);
            }
        }
        tracing::warn!(
            database,
            shard,
            banned,
            "server ban changed by an administrator"
        );
        Ok(())
    }

    /// Whether a shard's server of a database is banned.
    pub fn is_banned(&self, database: &str, shard: &str) -> bool {
        self.banned
            .lock()
            .contains(&(database.to_owned(), shard.to_owned()))
    }

    /// Whether any of `names` is an aggregate in `database`'s catalog, or not known yet.
    fn aggregate_among(&self, database: &str, names: &[String]) -> bool {
        let known = self.functions.lock();
        names.iter().any(|n| {
            known
                .get(&(database.to_owned(), n.clone()))
                .copied()
                .unwrap_or(true)
        })
    }

    /// The names of `names` not looked up yet in `database`'s catalog.
    fn unknown_functions(&self, database: &str, names: &[String]) -> Vec<String> {
        let known = self.functions.lock();
        names
            .iter()
            .filter(|n| !known.contains_key(&(database.to_owned(), (*n).clone())))
            .cloned()
            .collect()
    }

    /// Forgets what the catalog said of `database`'s functions (after DDL).
    fn forget_functions(&self, database: &str) {
        self.functions.lock().retain(|(d, _), _| d != database);
    }

    /// A table's column order, once known.
    fn table_columns_of(&self, database: &str, table: &str) -> Option<TableColumns> {
        self.table_columns
            .lock()
            .get(&(database.to_owned(), table.to_owned()))
            .cloned()
    }

    /// A database's collation, once known.
    fn collation_of(&self, database: &str) -> Option<router::merge_plan::Collation> {
        self.collations.lock().get(database).cloned()
    }

    fn set_collation(&self, database: &str, c: router::merge_plan::Collation) {
        self.collations.lock().insert(database.to_owned(), c);
    }

    /// Every pool with its key.
    fn pools_by_key(&self) -> Vec<(PoolKey, Pool)> {
        self.pools
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }

    /// Server connections checked out (transactions running, sessions holding one), of
    /// `database` or of all.
    pub fn busy_servers(&self, database: Option<&str>) -> usize {
        self.pools
            .lock()
            .iter()
            .filter(|(k, _)| database.is_none_or(|d| k.database == d))
            .map(|(_, p)| p.stats().active)
            .sum()
    }

    /// `PAUSE [db]`: new transactions of the database (or of all) wait; returns once the
    /// running ones have ended.
    pub async fn pause(&self, database: Option<String>) {
        let key = database.clone().unwrap_or_else(|| "*".into());
        self.paused.lock().insert(key);
        self.any_paused.store(true, Ordering::Release);
        tracing::info!(database = database.as_deref().unwrap_or("*"), "paused");
        while self.busy_servers(database.as_deref()) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `RESUME [db]`: releases what `PAUSE` holds.
    pub fn resume(&self, database: Option<&str>) -> Result<(), String> {
        let key = database.unwrap_or("*");
        let mut paused = self.paused.lock();
        if !paused.remove(key) {
            return Err(format!(
                "{} is not paused",
                database.map_or("the proxy".to_owned(), |d| format!("database \"{d}\""))
            ));
        }
        self.any_paused.store(!paused.is_empty(), Ordering::Release);
        drop(paused);
        tracing::info!(database = key, "resumed");
        self.resumed.notify_waiters();
        Ok(())
    }

    /// Waits while new transactions of `database` are paused.
    async fn wait_unpaused(&self, database: &str) {
        loop {
            let resumed = self.resumed.notified();
            {
                let p = self.paused.lock();
                if !p.contains(database) && !p.contains("*") {
                    return;
                }
            }
            resumed.await;
        }
    }

    /// Whether new transactions may have to wait (one atomic load).
    #[inline]
    fn maybe_paused(&self) -> bool {
        self.any_paused.load(Ordering::Acquire)
    }

    /// Clients with a server attached or an answer not yet sent: what a shutdown waits for.
    pub fn active_clients(&self) -> usize {
        self.stats
            .clients()
            .iter()
            .filter(|(_, c)| c.state() == stats::ClientState::Active)
            .count()
    }

    /// Stops taking new transactions' sessions: from now on a session ends once its
    /// transaction is over.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Statements slower than this many milliseconds are logged (0: off).
    #[inline]
    fn slow_query_ms(&self) -> u64 {
        self.slow_query.load(Ordering::Relaxed)
    }

    #[inline]
    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The TLS configuration for clients, when TLS is on.
    fn tls_acceptor(&self) -> Option<Arc<transport::rustls::ServerConfig>> {
        self.tls.load().acceptor.clone()
    }

    /// Resolves the prepared transactions that proxies left in doubt on every shard of every
    /// routing database: once now, then every `two_phase.recovery_interval_s` (see
    /// [`twophase`]). Runs until the process ends.
    pub async fn recover_in_doubt(self: Arc<Self>) {
        loop {
            let config = self.live_config();
            let tls = self.tls.load().servers.clone();
            let grace = std::time::Duration::from_secs(config.two_phase.grace_s);
            let done = twophase::sweep(&config, &tls, grace).await;
            if done.committed + done.rolled_back > 0 {
                tracing::info!(
                    committed = done.committed,
                    rolled_back = done.rolled_back,
                    waiting = done.waiting,
                    "two-phase recovery sweep"
                );
            }
            let every = config.two_phase.recovery_interval_s.max(1);
            drop(config);
            tokio::time::sleep(std::time::Duration::from_secs(every)).await;
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Counters of every pool.
    pub fn pool_stats(&self) -> Vec<pool::PoolStats> {
        self.pools.lock().values().map(Pool::stats).collect()
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Sets what runs after much memory was freed at once (the binary's allocator hook).
    pub fn on_memory_freed(&self, hook: fn()) {
        let _ = self.memory_freed.set(hook);
    }

    /// Entries of the prepared-statement registry (statements some client holds, and freed
    /// ones not yet swept).
    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// Number of clients that keep their server connection between transactions because
    /// their server session holds state that outlives a transaction (see docs/pooling.md).
    pub fn pinned_count(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Accepts clients until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.start_health_checks();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                proxy.handle_client(stream, peer).await;
            });
        }
    }

    async fn handle_client(self: Arc<Self>, stream: TcpStream, peer: std::net::SocketAddr) {
        let _ = stream.set_nodelay(true);
        let n = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = ClientCount(self.clone());
        let max = self.config.load().limits.max_client_connections as usize;
        if n > max {
            startup::refuse_boxed(
                stream,
                ProxyError::fatal("53300", "sorry, too many clients already"),
            )
            .await;
            return;
        }
        // The session runs as a task of its own, so that an idle session's memory is the
        // session's state alone, without room for login's larger state.
        match startup::run_boxed(&self, stream).await {
            Ok(Some(startup::Started::Session(client))) => {
                tracing::debug!(%peer, id = client.id, user = %client.user, database = %client.database, "client ready");
                tokio::spawn(session::start(self.clone(), client, guard));
            }
            Ok(Some(startup::Started::Admin { id, user, conn })) => {
                tracing::info!(%peer, id, %user, "admin console client");
                tokio::spawn(admin::serve(self.clone(), id, user, conn, guard));
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "client startup failed"),
        }
    }

    /// The write pool for a user on a database's shard (to its primary, wherever failover
    /// put it), made on first use.
    fn pool_for(&self, database: &str, user: &str, shard: &str) -> Result<Pool, ProxyError> {
        let key = PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
            shard: shard.to_owned(),
            replica: None,
        };
        if let Some(p) = self.pools.lock().get(&key) {
            return Ok(p.clone());
        }
        let tls = self.tls.load().servers.clone();
        let config = self.config.load();
        let url = self.primary_url(&config, database, shard);
        let (target, settings) = pool_spec(&config, &key, url.as_deref(), &tls)?;
        let pool = Pool::new(target, settings);
        if self
            .banned
            .lock()
            .contains(&(key.database.clone(), key.shard.clone()))
        {
            pool.set_banned(true);
        }
        if let Some(s) = self
            .topology
            .shard(database, shard)
            .filter(|s| s.servers.len() > 1)
        {
            pool.set_watch(s.wake.clone(), topology::failure_grace(&s.failover));
            if let Some(until) = s.holding() {
                pool.hold(until.saturating_duration_since(std::time::Instant::now()));
            }
        }
        Ok(self.pools.lock().entry(key).or_insert(pool).clone())
    }

    /// The URL of a shard's primary as the proxy sees it now (`None`: as configured).
    fn primary_url(&self, config: &Config, database: &str, shard: &str) -> Option<String> {
        let s = self.topology.shard(database, shard)?;
        let url = s.primary_server().url.clone();
        // A shard entry from before a reload may name a server the new config dropped.
        let db = config.databases.get(database)?;
        let (_, sc) = db.shards.iter().find(|(n, _)| *n == shard)?;
        sc.servers().any(|x| x.url == url).then_some(url)
    }

    /// A replica's pool for a read of `shard` by this user, when one is fit (see
    /// [`topology::Shard::pick_replica`]); `after`: the end of the client's last write.
    fn read_pool(
        &self,
        database: &str,
        user: &str,
        shard: &str,
        after: Option<std::time::Instant>,
    ) -> Option<Pool> {
        let s = self.topology.shard(database, shard)?;
        let key = |url: &str| PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
            shard: shard.to_owned(),
            replica: Some(url.to_owned()),
        };
        let active = |i: usize| {
            self.pools
                .lock()
                .get(&key(&s.servers[i].url))
                .map_or(0, |p| p.stats().active)
        };
        let i = s.pick_replica(after, &active)?;
        let k = key(&s.servers[i].url);
        if let Some(p) = self.pools.lock().get(&k) {
            return Some(p.clone());
        }
        let tls = self.tls.load().servers.clone();
        let (target, settings) =
            pool_spec(&self.config.load(), &k, Some(&s.servers[i].url), &tls).ok()?;
        let pool = Pool::new(target, settings);
        Some(self.pools.lock().entry(k).or_insert(pool).clone())
    }

    /// The write pools of a shard (one per user).
    fn write_pools_of(&self, database: &str, shard: &str) -> Vec<Pool> {
        self.pools
            .lock()
            .iter()
            .filter(|(k, _)| k.database == database && k.shard == shard && k.replica.is_none())
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The shard's primary is now `url`: every write pool of the shard is replaced by one
    /// to it (the old ones hand their checkouts over), replica pools to it go, and
    /// sessions pick the new pools up at their next transaction.
    fn replace_write_pools(&self, database: &str, shard: &str, url: &str) {
        let tls = self.tls.load().servers.clone();
        let config = self.config.load();
        let watch = self.topology.shard(database, shard);
        let mut pools = self.pools.lock();
        let keys: Vec<PoolKey> = pools
            .keys()
            .filter(|k| k.database == database && k.shard == shard)
            .cloned()
            .collect();
        for k in keys {
            let old = pools.get(&k).cloned().expect("listed");
            if k.replica.is_some() {
                if k.replica.as_deref() == Some(url) {
                    old.retire(None);
                    pools.remove(&k);
                }
                continue;
            }
            match pool_spec(&config, &k, Some(url), &tls) {
                Ok((target, settings)) => {
                    let new = Pool::new(target, settings);
                    if let Some(s) = watch.as_ref().filter(|s| s.servers.len() > 1) {
                        new.set_watch(s.wake.clone(), topology::failure_grace(&s.failover));
                    }
                    old.retire(Some(new.clone()));
                    pools.insert(k, new);
                }
                Err(_) => {
                    old.retire(None);
                    pools.remove(&k);
                }
            }
        }
        drop(pools);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts health checks for shards that have none (at start-up and after a reload).
    fn start_health_checks(&self) {
        for shard in self.topology.sync(&self.config.load()) {
            // A shard without replicas has nothing to fail over to or read from.
            if shard.servers.len() > 1 {
                // Writes wait for the first round of checks: after a failover the config
                // may still name the old primary, which must not take a write before the
                // checks have found the real one.
                let grace = topology::failure_grace(&shard.failover);
                shard.set_holding(Some(std::time::Instant::now() + grace));
                // Pools a reload kept report to this shard's checker now, and wait too.
                for p in self.write_pools_of(&shard.database, &shard.shard) {
                    p.set_watch(shard.wake.clone(), grace);
                    p.hold(grace);
                }
                tokio::spawn(topology::health::watch(self.me.clone(), shard));
            }
        }
    }

    /// The config with each shard's primary where failover put it (what the proxy's own
    /// work on primaries, such as two-phase recovery, connects to).
    fn live_config(&self) -> Arc<Config> {
        let config = self.config();
        let moved: Vec<_> = self
            .topology
            .all()
            .into_iter()
            .filter(|s| s.primary() != 0)
            .collect();
        if moved.is_empty() {
            return config;
        }
        let mut c = (*config).clone();
        for s in moved {
            let url = s.primary_server().url.clone();
            if let Some(db) = c.databases.get_mut(&s.database) {
                if let Some((_, sc)) = db.shards.0.iter_mut().find(|(n, _)| *n == s.shard) {
                    if let Some(i) = sc.replicas.iter().position(|r| r.url == url) {
                        std::mem::swap(&mut sc.primary, &mut sc.replicas[i]);
                    }
                }
            }
        }
        Arc::new(c)
    }

    /// Whether reads of `database` may go to replicas (it has some, and the split is on).
    fn reads_on_replicas(&self, database: &str) -> bool {
        self.replica_reads.load(Ordering::Relaxed)
            && self
                .config
                .load()
                .databases
                .get(database)
                .is_some_and(reads_on_replicas)
    }

    /// TLS settings towards servers.
    fn server_tls(&self) -> pool::ServerTls {
        self.tls.load().servers.clone()
    }

    /// The pool of a database's home shard (its first) for a user, under the live config.
    /// The shard whose pool for (database, user) `pool` is, if it is still one.
    fn shard_of_pool(&self, database: &str, user: &str, pool: &Pool) -> Option<String> {
        self.pools
            .lock()
            .iter()
            .find(|(k, p)| k.database == database && k.user == user && p.same(pool))
            .map(|(k, _)| k.shard.clone())
    }

    fn home_pool(&self, database: &str, user: &str) -> Result<Pool, ProxyError> {
        let home = {
            let config = self.config.load();
            let db = config.databases.get(database).ok_or_else(|| {
                ProxyError::error("3D000", format!("database \"{database}\" does not exist"))
            })?;
            db.shards
                .first()
                .map(|(n, _)| n.to_owned())
                .ok_or_else(|| ProxyError::error("3D000", "database has no shards"))?
        };
        self.pool_for(database, user, &home)
    }

    /// Counts config reloads; sessions compare it to notice a new config.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts a new, already validated config in force for new logins and new transactions.
    /// No client is dropped. Pools whose server and settings are unchanged are kept, with
    /// their connections; the others are let go (their connections close as they come back).
    pub fn reload(&self, config: Config) {
        let users = auth::UserTable::from_config(&config);
        match Tls::build(&config) {
            Ok(tls) => self.tls.store(Arc::new(tls)),
            Err(e) => tracing::error!("TLS settings not reloaded, the running ones stay: {e}"),
        }
        let tls = self.tls.load().servers.clone();
        {
            let mut pools = self.pools.lock();
            pools.retain(|key, pool| {
                let url = match &key.replica {
                    Some(u) => Some(u.clone()),
                    None => self.primary_url(&config, &key.database, &key.shard),
                };
                matches!(pool_spec(&config, key, url.as_deref(), &tls), Ok((t, s)) if t == *pool.target() && s == *pool.settings())
            });
        }
        self.users.store(Arc::new(users));
        self.slow_query
            .store(config.log.slow_query_ms, Ordering::Relaxed);
        self.replica_reads
            .store(any_replica_reads(&config), Ordering::Relaxed);
        self.any_routes
            .store(any_routes(&config), Ordering::Relaxed);
        self.any_timeouts
            .store(any_timeouts(&config), Ordering::Relaxed);
        self.config.store(Arc::new(config));
        // Analyses depend on the maps' key columns.
        self.route_cache.clear();
        self.table_columns.lock().clear();
        self.functions.lock().clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.start_health_checks();
        tracing::info!(generation = self.generation(), "configuration reloaded");
    }

    pub(crate) fn pool_mode(&self, user: &str) -> PoolMode {
        let config = self.config.load();
        config
            .users
            .iter()
            .find(|u| u.name == user)
            .and_then(|u| u.pool_mode)
            .unwrap_or(config.pool.mode)
    }
}

/// Where a pool connects and how it behaves, under `config`: to `url` (default: the
/// shard's configured primary).
fn pool_spec(
    config: &Config,
    key: &PoolKey,
    url: Option<&str>,
    tls: &pool::ServerTls,
) -> Result<(ServerTarget, PoolSettings), ProxyError> {
    let PoolKey {
        database,
        user,
        shard,
        replica,
    } = key;
    let db = config.databases.get(database).ok_or_else(|| {
        ProxyError::fatal("3D000", format!("database \"{database}\" does not exist"))
    })?;
    let shard_cfg = db
        .shards
        .iter()
        .find(|(n, _)| n == shard)
        .map(|(_, s)| s)
        .ok_or_else(|| ProxyError::fatal("3D000", format!("shard \"{shard}\" does not exist")))?;
    let user_cfg = config
        .users
        .iter()
        .find(|u| &u.name == user)
        .ok_or_else(|| ProxyError::fatal("28000", format!("role \"{user}\" does not exist")))?;
    let addr = ServerAddress::parse(url.unwrap_or(&shard_cfg.primary.url))
        .map_err(|e| ProxyError::fatal("08006", e))?;
    let target = ServerTarget {
        shard: shard.clone(),
        host: addr.host,
        port: addr.port,
        database: addr.database,
        user: addr
            .user
            .unwrap_or_else(|| user_cfg.server_user().to_owned()),
        password: addr
            .password
            .or_else(|| user_cfg.server_password().map(str::to_owned)),
        tls: tls.clone(),
        replica: replica.is_some(),
    };
    let p = &config.pool;
    let settings = PoolSettings {
        size: user_cfg.pool_size.unwrap_or(p.size),
        min_idle: p.min_idle,
        checkout_timeout: Duration::from_millis(p.checkout_timeout_ms),
        idle_timeout: Duration::from_secs(p.idle_timeout_s),
        server_lifetime: Duration::from_secs(p.server_lifetime_s),
        connect_timeout: Duration::from_millis(p.connect_timeout_ms),
        round_robin: p.server_round_robin,
        max_prepared: p.max_prepared_statements as usize,
    };
    Ok((target, settings))
}

/// Counts a connected client for `max_client_connections` while it lives.
pub(crate) struct ClientCount(Arc<Proxy>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a database sends reads to replicas: the split is on and some shard has one.
fn reads_on_replicas(d: &sgconfig::DatabaseConfig) -> bool {
    d.read_write_split.enabled && d.shards.iter().any(|(_, s)| !s.replicas.is_empty())
}

fn any_routes(config: &Config) -> bool {
    config.databases.values().any(session::database_routes)
}

fn any_timeouts(config: &Config) -> bool {
    let l = &config.limits;
    l.client_idle_timeout_ms > 0 || l.idle_transaction_timeout_ms > 0 || l.query_timeout_ms > 0
}

fn any_replica_reads(config: &Config) -> bool {
    config.databases.values().any(reads_on_replicas)
}
