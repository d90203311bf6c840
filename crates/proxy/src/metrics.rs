//! Prometheus metrics: the text exposition of what the pools and the proxy count, encoded
//! at scrape time by the `prometheus-client` crate, and a small HTTP listener that serves it
//! on `GET /metrics`.
//!
//! Names follow Prometheus's conventions: the `shardgate_` prefix, `_total` for counters,
//! seconds for times. Per-pool figures are summed over users, so series are per database,
//! shard and role (primary: the write pools, wherever failover put them; replica: reads).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Proxy;

type Labels = Vec<(&'static str, String)>;

/// Figures of one (database, shard), summed over the users' pools.
#[derive(Default)]
struct Shard {
    queries: u64,
    xacts: u64,
    query_us: u64,
    xact_us: u64,
    wait_us: u64,
    latency: [u64; pool::counters::LATENCY_BUCKETS.len() + 1],
    active: u64,
    idle: u64,
    waiting: u64,
    checkouts: u64,
    connects: u64,
    timeouts: u64,
}

/// Reads the proxy's counters at each scrape.
struct ProxyCollector(std::sync::Weak<Proxy>);

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyCollector")
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter_f(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_f(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ProxyCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(proxy) = self.0.upgrade() else {
            return Ok(());
        };
        let mut shards: BTreeMap<(String, String, &'static str), Shard> = BTreeMap::new();
        for (k, p) in proxy.pools_by_key() {
            let c = p.counters();
            let st = p.stats();
            let role = if k.replica.is_some() {
                "replica"
            } else {
                "primary"
            };
            let s = shards.entry((k.database, k.shard, role)).or_default();
            let t = c.totals();
            s.queries += t.queries;
            s.xacts += t.xacts;
            s.query_us += t.query_us;
            s.xact_us += t.xact_us;
            s.wait_us += c.wait_us.load(Relaxed);
            for (sum, n) in s.latency.iter_mut().zip(t.latency) {
                *sum += n;
            }
            s.active += st.active as u64;
            s.idle += st.idle as u64;
            s.waiting += st.waiting;
            s.checkouts += st.checkouts;
            s.connects += st.connects;
            s.timeouts += st.timeouts;
        }
        let labels = |db: &str, shard: &str, role: &str| -> Labels {
            vec![
                ("database", db.to_owned()),
                ("shard", shard.to_owned()),
                ("role", role.to_owned()),
            ]
        };
        let per_shard = |f: &dyn Fn(&Shard) -> u64| -> Vec<(Labels, u64)> {
            shards
                .iter()
                .map(|((db, sh, role), s)| (labels(db, sh, role), f(s)))
                .collect()
        };
        let secs = |us: u64| us as f64 / 1e6;
        counter(
            &mut e,
            "shardgate_queries",
            "Requests answered by servers (a simple Query, or an extended-protocol batch up to its Sync).",
            &per_shard(&|s| s.queries),
        )?;
        counter(
            &mut e,
            "shardgate_transactions",
            "Transactions ended on servers (explicit ones, and statements outside a transaction block).",
            &per_shard(&|s| s.xacts),
        )?;
        counter_f(
            &mut e,
            "shardgate_transaction_duration_seconds",
            "Time from a transaction's first request to its end, summed.",
            &shards
                .iter()
                .map(|((db, sh, role), s)| (labels(db, sh, role), secs(s.xact_us)))
                .collect::<Vec<_>>(),
        )?;
        {
            let mut m = e.encode_descriptor(
                "shardgate_query_duration_seconds",
                "Time from a request's first message to its ReadyForQuery.",
                None,
                MetricType::Histogram,
            )?;
            for ((db, sh, role), s) in &shards {
                let l = labels(db, sh, role);
                let mut buckets: Vec<(f64, u64)> = pool::counters::LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .zip(s.latency.iter().copied())
                    .collect();
                buckets.push((f64::MAX, s.latency[s.latency.len() - 1]));
                m.encode_family(&l)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        secs(s.query_us),
                        s.queries,
                        &buckets,
                        None,
                    )?;
            }
        }
        gauge(
            &mut e,
            "shardgate_servers",
            "Open server connections by state (active: checked out; idle: in the pool).",
            &shards
                .iter()
                .flat_map(|((db, sh, role), s)| {
                    [("active", s.active), ("idle", s.idle)].map(|(state, v)| {
                        let mut l = labels(db, sh, role);
                        l.push(("state", state.to_owned()));
                        (l, v as i64)
                    })
                })
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut e,
            "shardgate_pool_waiting_clients",
            "Clients waiting for a server connection now.",
            &shards
                .iter()
                .map(|((db, sh, role), s)| (labels(db, sh, role), s.waiting as i64))
                .collect::<Vec<_>>(),
        )?;
        counter_f(
            &mut e,
            "shardgate_pool_wait_seconds",
            "Time clients waited for a server connection, summed.",
            &shards
                .iter()
                .map(|((db, sh, role), s)| (labels(db, sh, role), secs(s.wait_us)))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "shardgate_pool_checkouts",
            "Server connections handed to clients.",
            &per_shard(&|s| s.checkouts),
        )?;
        counter(
            &mut e,
            "shardgate_pool_checkout_timeouts",
            "Clients that gave up waiting for a server connection.",
            &per_shard(&|s| s.timeouts),
        )?;
        counter(
            &mut e,
            "shardgate_server_connects",
            "Server connections opened.",
            &per_shard(&|s| s.connects),
        )?;
        counter(
            &mut e,
            "shardgate_failovers",
            "Shard primaries replaced (failover, switchover, or a promotion made elsewhere and adopted).",
            &[(Vec::new(), proxy.stats.failovers())],
        )?;
        let servers: Vec<(Labels, crate::topology::ServerView)> = proxy
            .topology
            .all()
            .iter()
            .flat_map(|sh| {
                let p = sh.primary();
                sh.servers
                    .iter()
                    .enumerate()
                    .map(|(i, sv)| {
                        let l = vec![
                            ("database", sh.database.clone()),
                            ("shard", sh.shard.clone()),
                            ("server", sv.name()),
                            (
                                "role",
                                if i == p { "primary" } else { "replica" }.to_owned(),
                            ),
                        ];
                        (l, sv.view())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        gauge(
            &mut e,
            "shardgate_server_up",
            "Whether a server answers its health checks and is in use (0: down or fenced).",
            &servers
                .iter()
                .map(|(l, v)| (l.clone(), i64::from(v.state == crate::topology::State::Up)))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut e,
            "shardgate_replica_lag_bytes",
            "How far a replica's replayed WAL is behind the primary's.",
            &servers
                .iter()
                .filter_map(|(l, v)| Some((l.clone(), v.lag_bytes? as i64)))
                .collect::<Vec<_>>(),
        )?;
        gauge_f(
            &mut e,
            "shardgate_replica_lag_seconds",
            "Since when the primary has had WAL a replica has not replayed.",
            &servers
                .iter()
                .filter_map(|(l, v)| Some((l.clone(), v.lag_ms? as f64 / 1000.0)))
                .collect::<Vec<_>>(),
        )?;
        // Clients by state.
        let mut by_state: BTreeMap<&'static str, i64> =
            [("active", 0), ("idle", 0), ("waiting", 0)].into();
        for (_, c) in proxy.stats.clients() {
            *by_state.entry(c.state().name()).or_default() += 1;
        }
        gauge(
            &mut e,
            "shardgate_clients",
            "Connected clients by state (admin console clients included, as idle).",
            &by_state
                .into_iter()
                .map(|(s, v)| (vec![("state", s.to_owned())], v))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut e,
            "shardgate_pinned_clients",
            "Clients that keep their server connection between transactions (session state).",
            &[(Vec::new(), proxy.pinned_count() as i64)],
        )?;
        counter(
            &mut e,
            "shardgate_errors",
            "Errors sent to clients, by SQLSTATE (the servers' and the proxy's own).",
            &proxy
                .stats
                .errors()
                .into_iter()
                .map(|((db, code), v)| (vec![("database", db), ("sqlstate", code)], v))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "shardgate_fanouts",
            "Statements run over several shards.",
            &proxy
                .stats
                .fanouts()
                .into_iter()
                .map(|(db, v)| (vec![("database", db)], v))
                .collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "shardgate_merges",
            "Reads whose rows the merge engine combined (ORDER BY, aggregates, DISTINCT, ...).",
            &proxy
                .stats
                .merges()
                .into_iter()
                .map(|(db, v)| (vec![("database", db)], v))
                .collect::<Vec<_>>(),
        )?;
        let (hits, misses) = proxy.route_cache.hits_and_misses();
        counter(
            &mut e,
            "shardgate_route_cache_hits",
            "Statements whose routing analysis came from the cache.",
            &[(Vec::new(), hits)],
        )?;
        counter(
            &mut e,
            "shardgate_route_cache_misses",
            "Statements analysed for routing.",
            &[(Vec::new(), misses)],
        )?;
        gauge(
            &mut e,
            "shardgate_prepared_statements",
            "Entries of the prepared-statement registry.",
            &[(Vec::new(), proxy.statement_count() as i64)],
        )?;
        Ok(())
    }
}

impl Proxy {
    /// The metrics in Prometheus's text format.
    pub fn metrics_text(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProxyCollector(Arc::downgrade(self))));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Serves `GET /metrics` on `listener` until the task is dropped.
    pub async fn serve_metrics(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                let mut req = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                })
                .await;
                if !matches!(read, Ok(true)) {
                    return;
                }
                let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
                let mut parts = line.split(|&b| b == b' ');
                let (method, path) = (parts.next(), parts.next());
                let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or(p));
                let response = match (method, path) {
                    (Some(b"GET"), Some(b"/metrics")) => {
                        let body = proxy.metrics_text();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    (Some(b"GET"), _) => "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\nmetrics are served on /metrics\r\n".to_owned(),
                    _ => "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }
}
