//! The admin console's commands. Where a command means what PgBouncer's means, its columns
//! carry PgBouncer's names, so that existing dashboards and exporters read them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wire::messages::ProxyError;

use super::{Answer, Column};
use crate::Proxy;

/// The words of a command, lower-cased, and the text after the first `n` words.
fn words(sql: &str) -> Vec<String> {
    sql.split_whitespace()
        .map(|w| w.trim_end_matches(';').to_ascii_lowercase())
        .collect()
}

/// The text after the first `n` words of `sql`.
fn after_words(sql: &str, n: usize) -> &str {
    let mut rest = sql.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest.trim_end().trim_end_matches(';')
}

/// `db.shard` (or a shard name only one database has), as written (`raw`: its case).
fn db_shard(proxy: &Proxy, _lower: &str, raw: &str) -> Result<(String, String), ProxyError> {
    let raw = raw.split_whitespace().next().unwrap_or("");
    let config = proxy.config.load();
    if let Some((db, shard)) = raw.split_once('.') {
        return Ok((
            db.trim_matches('"').to_owned(),
            shard.trim_matches('"').to_owned(),
        ));
    }
    let shard = raw.trim_matches('"');
    let dbs: Vec<&String> = config
        .databases
        .iter()
        .filter(|(_, d)| d.shards.iter().any(|(n, _)| n == shard))
        .map(|(n, _)| n)
        .collect();
    match dbs.as_slice() {
        [one] => Ok(((*one).clone(), shard.to_owned())),
        [] => Err(ProxyError::error(
            "42704",
            format!("no database has a shard \"{shard}\""),
        )),
        _ => Err(ProxyError::error(
            "42601",
            format!("several databases have a shard \"{shard}\": name it as database.shard"),
        )),
    }
}

fn unknown(sql: &str) -> ProxyError {
    ProxyError::error(
        "42601",
        format!("unknown admin command: {}", sql.trim()),
    )
    .with_hint("Commands: SHOW SHARDS | POOLS | SERVERS | CLIENTS | STATS | CONFIG | TRANSACTIONS | VERSION | ROUTE [ON db] <sql>; RELOAD; PAUSE [db]; RESUME [db]; BAN db.shard; UNBAN db.shard [host:port]; FAILOVER db.shard [TO host:port]; SWITCHOVER db.shard [TO host:port].")
}

/// The columns a command answers with (empty: none), without running it.
pub fn columns(sql: &str) -> Vec<Column> {
    let w = words(sql);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["show", "shards", ..] => SHARDS.to_vec(),
        ["show", "pools", ..] => POOLS.to_vec(),
        ["show", "servers", ..] => SERVERS.to_vec(),
        ["show", "clients", ..] => CLIENTS.to_vec(),
        ["show", "stats", ..] => STATS.to_vec(),
        ["show", "config", ..] => CONFIG.to_vec(),
        ["show", "transactions", ..] => TRANSACTIONS.to_vec(),
        ["show", "version", ..] => vec![Column::text("version")],
        ["show", "route", ..] => vec![Column::text("route")],
        _ => Vec::new(),
    }
}

const SHARDS: [Column; 13] = [
    Column::text("database"),
    Column::text("shard"),
    Column::text("role"),
    Column::text("host"),
    Column::int("port"),
    Column::text("server_database"),
    Column::text("home"),
    Column::text("tables"),
    Column::text("banned"),
    Column::text("state"),
    Column::int("lag_bytes"),
    Column::int("lag_ms"),
    Column::text("last_error"),
];

const POOLS: [Column; 11] = [
    Column::text("database"),
    Column::text("user"),
    Column::text("shard"),
    Column::int("cl_active"),
    Column::int("cl_waiting"),
    Column::int("sv_active"),
    Column::int("sv_idle"),
    Column::int("sv_total"),
    Column::int("maxwait"),
    Column::int("maxwait_us"),
    Column::text("pool_mode"),
];

const SERVERS: [Column; 12] = [
    Column::text("type"),
    Column::text("user"),
    Column::text("database"),
    Column::text("shard"),
    Column::text("state"),
    Column::text("addr"),
    Column::int("port"),
    Column::text("local_addr"),
    Column::int("local_port"),
    Column::text("connect_time"),
    Column::int("remote_pid"),
    Column::text("tls"),
];

const CLIENTS: [Column; 9] = [
    Column::text("type"),
    Column::text("user"),
    Column::text("database"),
    Column::text("state"),
    Column::text("addr"),
    Column::int("port"),
    Column::text("connect_time"),
    Column::text("tls"),
    Column::int("id"),
];

const STATS: [Column; 9] = [
    Column::text("database"),
    Column::text("shard"),
    Column::int("total_xact_count"),
    Column::int("total_query_count"),
    Column::int("total_xact_time"),
    Column::int("total_query_time"),
    Column::int("total_wait_time"),
    Column::int("avg_xact_time"),
    Column::int("avg_query_time"),
];

const CONFIG: [Column; 3] = [
    Column::text("key"),
    Column::text("value"),
    Column::text("changeable"),
];

const TRANSACTIONS: [Column; 5] = [
    Column::text("gid"),
    Column::text("database"),
    Column::text("participants"),
    Column::text("state"),
    Column::text("started"),
];

/// Runs one command.
pub async fn run(proxy: &Arc<Proxy>, sql: &str) -> Result<Answer, ProxyError> {
    let w = words(sql);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let answer = |columns: &[Column], rows: Vec<Vec<Option<String>>>, tag: &str| Answer {
        columns: columns.to_vec(),
        rows,
        tag: tag.to_owned(),
    };
    Ok(match w.as_slice() {
        ["show", "shards"] => answer(&SHARDS, shards(proxy), "SHOW"),
        ["show", "pools"] => answer(&POOLS, pools(proxy), "SHOW"),
        ["show", "servers"] => answer(&SERVERS, servers(proxy), "SHOW"),
        ["show", "clients"] => answer(&CLIENTS, clients(proxy), "SHOW"),
        ["show", "stats"] => answer(&STATS, stats(proxy), "SHOW"),
        ["show", "config"] => answer(&CONFIG, config(proxy), "SHOW"),
        // Cross-shard transactions in flight or in doubt come with two-phase commit.
        ["show", "transactions"] => answer(&TRANSACTIONS, Vec::new(), "SHOW"),
        ["show", "version"] => answer(
            &[Column::text("version")],
            vec![vec![Some(format!(
                "shardgate {}",
                env!("CARGO_PKG_VERSION")
            ))]],
            "SHOW",
        ),
        ["show", "route", ..] => answer(&[Column::text("route")], route(proxy, sql)?, "SHOW"),
        ["reload"] => {
            proxy
                .reload_from_file()
                .map_err(|e| ProxyError::error("F0000", e))?;
            answer(&[], Vec::new(), "RELOAD")
        }
        ["pause"] | ["pause", _] => {
            let db = w.get(1).map(|d| d.trim_matches('"').to_owned());
            check_db(proxy, db.as_deref())?;
            proxy.pause(db).await;
            answer(&[], Vec::new(), "PAUSE")
        }
        ["resume"] | ["resume", _] => {
            let db = w.get(1).map(|d| d.trim_matches('"').to_owned());
            proxy
                .resume(db.as_deref())
                .map_err(|e| ProxyError::error("55000", e))?;
            answer(&[], Vec::new(), "RESUME")
        }
        ["unban", _, _] => {
            // A fenced server re-admitted.
            let (db, shard) = db_shard(proxy, &w[1..2].join(""), after_words(sql, 1))?;
            let server = after_words(sql, 2);
            crate::topology::failover::readmit(proxy, &db, &shard, server)
                .map_err(|e| ProxyError::error("55000", e))?;
            answer(&[], Vec::new(), "UNBAN")
        }
        ["failover", _]
        | ["failover", _, "to", _]
        | ["switchover", _]
        | ["switchover", _, "to", _] => {
            let (db, shard) = db_shard(proxy, w[1], after_words(sql, 1))?;
            let to = (w.len() == 4).then(|| after_words(sql, 3));
            let r = if w[0] == "failover" {
                crate::topology::failover::failover(proxy, &db, &shard, to).await
            } else {
                crate::topology::failover::switchover(proxy, &db, &shard, to).await
            };
            let done = r.map_err(|e| ProxyError::error("55000", e))?;
            answer(
                &[Column::text("result")],
                vec![vec![Some(done)]],
                if w[0] == "failover" {
                    "FAILOVER"
                } else {
                    "SWITCHOVER"
                },
            )
        }
        ["ban", _] | ["unban", _] => {
            let target = after_words(sql, 1);
            let Some((db, shard)) = target.split_once('.') else {
                return Err(ProxyError::error(
                    "42601",
                    format!("{} needs database.shard", w[0].to_ascii_uppercase()),
                ));
            };
            let ban = w[0] == "ban";
            proxy
                .set_banned(db.trim_matches('"'), shard.trim_matches('"'), ban)
                .map_err(|e| ProxyError::error("55000", e))?;
            answer(&[], Vec::new(), if ban { "BAN" } else { "UNBAN" })
        }
        _ => return Err(unknown(sql)),
    })
}

fn check_db(proxy: &Proxy, db: Option<&str>) -> Result<(), ProxyError> {
    match db {
        Some(d) if !proxy.config.load().databases.contains_key(d) => Err(ProxyError::error(
            "3D000",
            format!("database \"{d}\" does not exist"),
        )),
        _ => Ok(()),
    }
}

fn n(v: impl Into<u64>) -> Option<String> {
    Some(v.into().to_string())
}

fn s(v: impl Into<String>) -> Option<String> {
    Some(v.into())
}

/// A wall-clock time as PostgreSQL prints a timestamp (UTC).
fn time(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn shards(proxy: &Proxy) -> Vec<Vec<Option<String>>> {
    let config = proxy.config.load();
    let mut rows = Vec::new();
    for (db, d) in &config.databases {
        for (i, (shard, sc)) in d.shards.iter().enumerate() {
            let tables: Vec<String> = d
                .maps
                .iter()
                .filter(|m| m.shards().contains(&shard))
                .flat_map(|m| m.tables.iter().map(|t| t.table.clone()))
                .collect();
            // Roles and states as the proxy sees them now (failover may have moved the
            // primary); before the first check, as configured.
            let live = proxy.topology.shard(db, shard);
            for (j, server) in sc.servers().enumerate() {
                let a = sgconfig::ServerAddress::parse(&server.url).ok();
                let found = live.as_ref().and_then(|l| {
                    l.servers
                        .iter()
                        .position(|x| x.url == server.url)
                        .map(|k| (l, k))
                });
                let view = found.map(|(l, k)| l.servers[k].view());
                let primary = match found {
                    Some((l, k)) => l.primary() == k,
                    None => j == 0,
                };
                rows.push(vec![
                    s(db.as_str()),
                    s(shard),
                    s(if primary { "primary" } else { "replica" }),
                    a.as_ref().map(|a| a.host.clone()),
                    a.as_ref().and_then(|a| n(a.port)),
                    a.as_ref().map(|a| a.database.clone()),
                    s(if i == 0 { "yes" } else { "no" }),
                    s(tables.join(", ")),
                    s(if primary && proxy.is_banned(db, shard) {
                        "yes"
                    } else {
                        "no"
                    }),
                    s(view.as_ref().map_or("up", |v| v.state.name())),
                    view.as_ref()
                        .and_then(|v| v.lag_bytes)
                        .map(|b| b.to_string()),
                    view.as_ref().and_then(|v| v.lag_ms).map(|b| b.to_string()),
                    view.as_ref().and_then(|v| v.last_error.clone()),
                ]);
            }
        }
    }
    rows
}

fn pools(proxy: &Proxy) -> Vec<Vec<Option<String>>> {
    let mut rows: Vec<_> = proxy
        .pools_by_key()
        .into_iter()
        .map(|(k, p)| {
            let st = p.stats();
            let wait = p.counters().max_wait();
            vec![
                s(k.database.as_str()),
                s(k.user.as_str()),
                s(k.shard.as_str()),
                n(st.active as u64),
                n(st.waiting),
                n(st.active as u64),
                n(st.idle as u64),
                n(p.counters().servers().len() as u64),
                n(wait.as_secs()),
                n(wait.subsec_micros()),
                s(match proxy.pool_mode(&k.user) {
                    sgconfig::PoolMode::Transaction => "transaction",
                    sgconfig::PoolMode::Session => "session",
                }),
            ]
        })
        .collect();
    rows.sort();
    rows
}

fn servers(proxy: &Proxy) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for (k, p) in proxy.pools_by_key() {
        let idle = p.idle_pids();
        let mut list = p.counters().servers();
        list.sort_by_key(|s| s.backend_pid);
        for sv in list {
            rows.push(vec![
                s("S"),
                s(k.user.as_str()),
                s(k.database.as_str()),
                s(k.shard.as_str()),
                s(if idle.contains(&sv.backend_pid) {
                    "idle"
                } else {
                    "active"
                }),
                s(sv.addr.ip().to_string()),
                n(sv.addr.port()),
                sv.local_addr.map(|a| a.ip().to_string()),
                sv.local_addr.and_then(|a| n(a.port())),
                time(sv.connected_at),
                Some(sv.backend_pid.to_string()),
                s(if sv.tls { "yes" } else { "no" }),
            ]);
        }
    }
    rows.sort();
    rows
}

fn clients(proxy: &Proxy) -> Vec<Vec<Option<String>>> {
    proxy
        .stats
        .clients()
        .into_iter()
        .map(|(id, c)| {
            vec![
                s("C"),
                s(c.user.as_str()),
                s(c.database.as_str()),
                s(c.state().name()),
                c.addr.map(|a| a.ip().to_string()),
                c.addr.and_then(|a| n(a.port())),
                time(c.connected_at),
                s(if c.tls { "yes" } else { "no" }),
                n(id),
            ]
        })
        .collect()
}

fn stats(proxy: &Proxy) -> Vec<Vec<Option<String>>> {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering::Relaxed;
    // (database, shard) → xacts, queries, xact µs, query µs, wait µs; users summed.
    let mut sums: BTreeMap<(String, String), [u64; 5]> = BTreeMap::new();
    for (k, p) in proxy.pools_by_key() {
        let c = p.counters();
        let t = c.totals();
        let e = sums
            .entry((k.database.clone(), k.shard.clone()))
            .or_default();
        e[0] += t.xacts;
        e[1] += t.queries;
        e[2] += t.xact_us;
        e[3] += t.query_us;
        e[4] += c.wait_us.load(Relaxed);
    }
    sums.into_iter()
        .map(|((db, shard), v)| {
            vec![
                s(db),
                s(shard),
                n(v[0]),
                n(v[1]),
                n(v[2]),
                n(v[3]),
                n(v[4]),
                n(v[2].checked_div(v[0]).unwrap_or(0)),
                n(v[3].checked_div(v[1]).unwrap_or(0)),
            ]
        })
        .collect()
}

fn config(proxy: &Proxy) -> Vec<Vec<Option<String>>> {
    let c = proxy.config.load();
    let p = &c.pool;
    let l = &c.limits;
    let mut rows: Vec<(String, String, bool)> = vec![
        ("listen".into(), c.listen.to_string(), false),
        ("workers".into(), c.worker_threads().to_string(), false),
        (
            "pool.mode".into(),
            format!("{:?}", p.mode).to_lowercase(),
            true,
        ),
        ("pool.size".into(), p.size.to_string(), true),
        ("pool.min_idle".into(), p.min_idle.to_string(), true),
        (
            "pool.checkout_timeout_ms".into(),
            p.checkout_timeout_ms.to_string(),
            true,
        ),
        (
            "pool.idle_timeout_s".into(),
            p.idle_timeout_s.to_string(),
            true,
        ),
        (
            "pool.server_lifetime_s".into(),
            p.server_lifetime_s.to_string(),
            true,
        ),
        (
            "pool.connect_timeout_ms".into(),
            p.connect_timeout_ms.to_string(),
            true,
        ),
        (
            "pool.server_round_robin".into(),
            p.server_round_robin.to_string(),
            true,
        ),
        ("pool.pinning".into(), p.pinning.to_string(), true),
        (
            "pool.max_prepared_statements".into(),
            p.max_prepared_statements.to_string(),
            true,
        ),
        (
            "limits.max_client_connections".into(),
            l.max_client_connections.to_string(),
            true,
        ),
        (
            "limits.max_message_size".into(),
            l.max_message_size.to_string(),
            true,
        ),
        (
            "limits.client_idle_timeout_ms".into(),
            l.client_idle_timeout_ms.to_string(),
            true,
        ),
        (
            "limits.idle_transaction_timeout_ms".into(),
            l.idle_transaction_timeout_ms.to_string(),
            true,
        ),
        (
            "limits.query_timeout_ms".into(),
            l.query_timeout_ms.to_string(),
            true,
        ),
        ("admin_users".into(), c.admin_users.join(", "), true),
        (
            "metrics.listen".into(),
            c.metrics
                .as_ref()
                .map(|m| m.listen.to_string())
                .unwrap_or_default(),
            false,
        ),
        (
            "tls.mode".into(),
            format!("{:?}", c.tls.mode).to_lowercase(),
            true,
        ),
        (
            "server_tls".into(),
            format!("{:?}", c.server_tls.mode).to_lowercase(),
            true,
        ),
        (
            "log.format".into(),
            format!("{:?}", c.log.format).to_lowercase(),
            false,
        ),
        ("log.level".into(), c.log.level.clone(), false),
        (
            "log.slow_query_ms".into(),
            c.log.slow_query_ms.to_string(),
            true,
        ),
        (
            "shutdown_grace_s".into(),
            c.shutdown_grace_s.to_string(),
            true,
        ),
    ];
    for (name, d) in &c.databases {
        rows.push((
            format!("databases.{name}.shards"),
            d.shards
                .iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
                .join(", "),
            true,
        ));
        rows.push((
            format!("databases.{name}.shard_maps"),
            d.shard_maps.join(", "),
            true,
        ));
        rows.push((
            format!("databases.{name}.reference_tables"),
            d.reference_tables.join(", "),
            true,
        ));
    }
    rows.into_iter()
        .map(|(k, v, ch)| vec![s(k), s(v), s(if ch { "yes" } else { "no" })])
        .collect()
}

/// `SHOW ROUTE [ON db] <sql>`: the route, line by line.
fn route(proxy: &Proxy, sql: &str) -> Result<Vec<Vec<Option<String>>>, ProxyError> {
    let config = proxy.config.load();
    let w = words(sql);
    let (name, statement) = if w.get(2).map(String::as_str) == Some("on") && w.len() > 4 {
        (w[3].trim_matches('"').to_owned(), after_words(sql, 4))
    } else {
        (
            config.databases.keys().next().cloned().unwrap_or_default(),
            after_words(sql, 2),
        )
    };
    let Some(db) = config.databases.get(&name) else {
        return Err(ProxyError::error(
            "3D000",
            format!("database \"{name}\" does not exist"),
        ));
    };
    if statement.is_empty() {
        return Err(ProxyError::error("42601", "SHOW ROUTE needs a statement")
            .with_hint("SHOW ROUTE [ON db] SELECT ..."));
    }
    let (lines, _) = router::explain::explain(&name, db, statement, &[]);
    Ok(lines.into_iter().map(|l| vec![Some(l)]).collect())
}
