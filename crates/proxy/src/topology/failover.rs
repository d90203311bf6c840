//! Changing a shard's primary: promoting a replica when the primary is lost (`auto` mode,
//! or `FAILOVER` by an administrator), a planned `SWITCHOVER` that loses nothing, adopting a
//! primary promoted outside the proxy, and fencing the server that was primary so that it
//! never gets a query again until an administrator re-admits it.
//!
//! While a primary is being replaced the shard's write pools are held: new transactions
//! wait (up to `failover.buffer_timeout_ms`) and then run on the new primary, as Vitess
//! buffers them. Transactions that were running on the lost primary fail with its
//! connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::{self, Answer};
use super::{Role, Shard, State};
use crate::Proxy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    PrimaryDown,
    Manual,
}

/// The most advanced replica that answered (highest replayed WAL), not fenced.
pub(crate) fn best_replica(shard: &Shard, answers: &[Result<Answer, String>]) -> Option<usize> {
    let p = shard.primary();
    (0..shard.servers.len())
        .filter(|&i| i != p && shard.servers[i].view().state != State::Fenced)
        .filter_map(|i| match &answers[i] {
            Ok(a) if a.role == Role::Replica => Some((i, a.lsn)),
            _ => None,
        })
        .max_by_key(|&(i, lsn)| (lsn, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
}

/// The same choice from the last checks' view (for commands).
fn best_from_view(shard: &Shard) -> Option<usize> {
    let p = shard.primary();
    (0..shard.servers.len())
        .filter(|&i| i != p)
        .filter_map(|i| {
            let v = shard.servers[i].view();
            (v.state == State::Up && v.failures == 0 && v.role == Role::Replica)
                .then_some((i, v.lsn.unwrap_or(0)))
        })
        .max_by_key(|&(i, lsn)| (lsn, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
}

/// Takes server `i` out of use until an administrator re-admits it.
pub(crate) fn fence(shard: &Shard, i: usize, why: &str) {
    let s = &shard.servers[i];
    let was = s.view().state;
    if was != State::Fenced {
        s.update(|v| v.state = State::Fenced);
        tracing::warn!(database = %shard.database, shard = %shard.shard, server = %s.name(), why, "server fenced: it gets no queries until re-admitted (UNBAN {}.{} {})", shard.database, shard.shard, s.name());
    }
}

/// New transactions of the shard wait for a new primary.
pub(crate) fn hold_writes(proxy: &Proxy, shard: &Shard) {
    hold_writes_for(
        proxy,
        shard,
        Duration::from_millis(shard.failover.buffer_timeout_ms),
    );
}

fn hold_writes_for(proxy: &Proxy, shard: &Shard, d: Duration) {
    if shard.holding().is_some() {
        return;
    }
    shard.set_holding(Some(Instant::now() + d));
    for p in proxy.write_pools_of(&shard.database, &shard.shard) {
        p.hold(d);
    }
    tracing::info!(database = %shard.database, shard = %shard.shard, "holding new transactions of the shard");
}

pub(crate) fn release_writes(proxy: &Proxy, shard: &Shard) {
    shard.set_holding(None);
    for p in proxy.write_pools_of(&shard.database, &shard.shard) {
        p.unhold();
    }
    tracing::info!(database = %shard.database, shard = %shard.shard, "releasing held transactions of the shard");
}

/// Writes go to server `i` from now on: the old write pools are retired with the new
/// server's as their successors, so held and new transactions run there.
pub(crate) fn adopt(proxy: &Proxy, shard: &Arc<Shard>, i: usize) {
    shard.set_primary(i);
    shard.servers[i].update(|v| {
        v.role = Role::Primary;
        v.lag_bytes = None;
        v.lag_ms = None;
    });
    shard.set_holding(None);
    proxy.replace_write_pools(&shard.database, &shard.shard, &shard.servers[i].url);
    proxy.stats.note_failover();
}

/// Promotes replica `to` and makes it the shard's primary; the old primary is fenced.
pub(crate) async fn promote(
    proxy: &Arc<Proxy>,
    shard: &Arc<Shard>,
    to: usize,
    why: Why,
) -> Result<String, String> {
    let _one = shard.changing.lock().await;
    promote_locked(proxy, shard, to, why).await
}

async fn promote_locked(
    proxy: &Arc<Proxy>,
    shard: &Arc<Shard>,
    to: usize,
    why: Why,
) -> Result<String, String> {
    let started = Instant::now();
    let old = shard.primary();
    if to == old {
        return Err(format!(
            "{} is the primary already",
            shard.servers[to].name()
        ));
    }
    let timeout = Duration::from_millis(shard.failover.health_check_timeout_ms.max(1000));
    let mut conn = health::connect(proxy, shard, to, timeout).await?;
    match conn.query_bool("SELECT pg_promote(true, 60)").await {
        Ok(Some(true)) => {}
        Ok(_) => {
            // A replica promoted meanwhile (by whoever) answers with an error: ask.
            let primary = conn.query_bool("SELECT NOT pg_is_in_recovery()").await;
            if !matches!(primary, Ok(Some(true))) {
                return Err(format!(
                    "{} did not promote (pg_promote needs a superuser or EXECUTE on it)",
                    shard.servers[to].name()
                ));
            }
        }
        Err(e) => return Err(format!("{}: {e}", shard.servers[to].name())),
    }
    fence(
        shard,
        old,
        match why {
            Why::PrimaryDown => "the primary was down and a replica was promoted",
            Why::Manual => "an administrator promoted a replica",
        },
    );
    adopt(proxy, shard, to);
    let took = started.elapsed().as_millis();
    tracing::warn!(database = %shard.database, shard = %shard.shard, from = %shard.servers[old].name(), to = %shard.servers[to].name(), ms = took as u64, ?why, "failover: replica promoted, writes go to it");
    let (p, s) = (proxy.clone(), shard.clone());
    tokio::spawn(async move { repoint(&p, &s, to, old).await });
    if why == Why::Manual {
        // The old primary may still run: make it refuse writes from elsewhere too.
        let (p, s) = (proxy.clone(), shard.clone());
        tokio::spawn(async move { read_only(&p, &s, old).await });
    }
    Ok(format!(
        "promoted {} in {took} ms; {} is fenced",
        shard.servers[to].name(),
        shard.servers[old].name()
    ))
}

/// The shard a command names, and the server it promotes: the one named, or the most
/// advanced replica that is up.
fn shard_and_target(
    proxy: &Proxy,
    database: &str,
    shard: &str,
    to: Option<&str>,
) -> Result<(Arc<Shard>, usize), String> {
    let s = proxy
        .topology
        .shard(database, shard)
        .ok_or_else(|| format!("database \"{database}\" has no shard \"{shard}\""))?;
    let to = match to {
        Some(name) => s
            .find(name)
            .ok_or_else(|| format!("shard {shard} has no server {name}"))?,
        None => best_from_view(&s).ok_or("no replica of the shard is up to take over")?,
    };
    Ok((s, to))
}

/// `FAILOVER db.shard [TO host:port]`: promotes a replica now, whatever the primary's state.
pub async fn failover(
    proxy: &Arc<Proxy>,
    database: &str,
    shard: &str,
    to: Option<&str>,
) -> Result<String, String> {
    let (s, to) = shard_and_target(proxy, database, shard, to)?;
    if s.servers[to].view().state == State::Fenced {
        return Err(format!("{} is fenced", s.servers[to].name()));
    }
    // Taken before the hold: the health checker, which releases a hold on a primary
    // that answers, leaves the shard alone meanwhile.
    let _one = s.changing.lock().await;
    hold_writes(proxy, &s);
    let r = promote_locked(proxy, &s, to, Why::Manual).await;
    if r.is_err() {
        release_writes(proxy, &s);
    }
    r
}

/// `SWITCHOVER db.shard [TO host:port]`: holds new transactions, waits for running ones,
/// waits until the replica replayed the primary's last WAL, promotes it, releases.
pub async fn switchover(
    proxy: &Arc<Proxy>,
    database: &str,
    shard: &str,
    to: Option<&str>,
) -> Result<String, String> {
    let (s, to) = shard_and_target(proxy, database, shard, to)?;
    let _one = s.changing.lock().await;
    let started = Instant::now();
    let old = s.primary();
    if to == old {
        return Err(format!("{} is the primary already", s.servers[to].name()));
    }
    let v = s.servers[to].view();
    if v.state != State::Up || v.role != Role::Replica {
        return Err(format!("{} is not an up replica", s.servers[to].name()));
    }
    let limit = Duration::from_millis(s.failover.switchover_timeout_ms);
    let check = Duration::from_millis(s.failover.health_check_timeout_ms.max(1000));
    hold_writes_for(
        proxy,
        &s,
        limit + Duration::from_millis(s.failover.buffer_timeout_ms),
    );
    let r = async {
        // Running transactions end first.
        while proxy
            .write_pools_of(&s.database, &s.shard)
            .iter()
            .any(|p| p.stats().active > 0)
        {
            if started.elapsed() > limit {
                return Err("transactions still running on the primary".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut primary = health::connect(proxy, &s, old, check).await?;
        // Commits made with synchronous_commit off may still sit in WAL buffers, and a
        // synchronous commit was seen not to flush them all (the replica then replayed up
        // to the flushed position without the last commits; found by the switchover test):
        // a WAL segment switch writes and flushes everything, and its end is the target.
        if let Some(e) = primary
            .run_simple("SELECT pg_switch_wal()")
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "the primary could not flush its WAL (pg_switch_wal needs a superuser): {}",
                e.message
            ));
        }
        let last = lsn(&mut primary, "pg_current_wal_flush_lsn()").await?;
        let mut replica = health::connect(proxy, &s, to, check).await?;
        loop {
            if lsn(&mut replica, "pg_last_wal_replay_lsn()").await? >= last {
                break;
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "{} did not replay the primary's WAL within switchover_timeout_ms",
                    s.servers[to].name()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(last)
    }
    .await;
    let last = match r {
        Ok(l) => l,
        Err(e) => {
            release_writes(proxy, &s);
            return Err(format!("switchover abandoned, the primary stays: {e}"));
        }
    };
    match promote_locked(proxy, &s, to, Why::Manual).await {
        Ok(_) => Ok(format!(
            "switched {}.{} over from {} to {} at WAL {last} in {} ms; {} is fenced",
            s.database,
            s.shard,
            s.servers[old].name(),
            s.servers[to].name(),
            started.elapsed().as_millis(),
            s.servers[old].name()
        )),
        Err(e) => {
            release_writes(proxy, &s);
            Err(format!("switchover abandoned, the primary stays: {e}"))
        }
    }
}

async fn lsn(conn: &mut pool::ServerConn, f: &str) -> Result<u64, String> {
    let rows = conn
        .query_column(&format!("SELECT ({f} - '0/0')::text"))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
    rows.into_iter()
        .next()
        .flatten()
        .and_then(|t| t.split('.').next()?.parse().ok())
        .ok_or_else(|| format!("no WAL position from {f}"))
}

/// An old primary that still runs refuses writes by default (`ALTER SYSTEM`, so that it
/// stays so after a restart, until an operator rebuilds it as a replica).
async fn read_only(proxy: &Arc<Proxy>, shard: &Arc<Shard>, i: usize) {
    let Ok(mut c) = health::connect(proxy, shard, i, Duration::from_secs(2)).await else {
        return;
    };
    let _ = c
        .run_simple("ALTER SYSTEM SET default_transaction_read_only = on")
        .await;
    let _ = c.run_simple("SELECT pg_reload_conf()").await;
}

/// Points the shard's other replicas at the new primary (`primary_conninfo` and a reload;
/// PostgreSQL 13 and later take it without a restart).
async fn repoint(proxy: &Arc<Proxy>, shard: &Arc<Shard>, to: usize, old: usize) {
    let new = &shard.servers[to].addr;
    for i in 0..shard.servers.len() {
        if i == to || i == old || shard.servers[i].view().state == State::Fenced {
            continue;
        }
        let name = shard.servers[i].name();
        let r = async {
            let mut c = health::connect(proxy, shard, i, Duration::from_secs(2)).await?;
            let rows = c
                .query_column("SHOW primary_conninfo")
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.message)?;
            let old = rows.into_iter().next().flatten().unwrap_or_default();
            let conninfo = with_host(&old, &new.host, new.port);
            let sql = format!(
                "ALTER SYSTEM SET primary_conninfo = '{}'",
                conninfo.replace('\'', "''")
            );
            if let Some(e) = c.run_simple(&sql).await.map_err(|e| e.to_string())? {
                return Err(e.message);
            }
            c.run_simple("SELECT pg_reload_conf()")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        match r {
            Ok(()) => {
                tracing::info!(database = %shard.database, shard = %shard.shard, replica = %name, primary = %shard.servers[to].name(), "replica now follows the new primary")
            }
            Err(e) => {
                tracing::warn!(database = %shard.database, shard = %shard.shard, replica = %name, error = %e, "could not point the replica at the new primary; do it by hand")
            }
        }
    }
}

/// A libpq conninfo string with its host and port replaced (and any hostaddr dropped).
pub(crate) fn with_host(conninfo: &str, host: &str, port: u16) -> String {
    let mut out: Vec<String> = Vec::new();
    let b = conninfo.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = conninfo[start..i].trim().to_owned();
        while i < b.len() && (b[i] == b'=' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let vstart = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        let value = &conninfo[vstart..i];
        if key.is_empty() || matches!(key.as_str(), "host" | "hostaddr" | "port") {
            continue;
        }
        out.push(format!("{key}={value}"));
    }
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    out.push(format!("host={}", quote(host)));
    out.push(format!("port={port}"));
    out.join(" ")
}

/// `UNBAN db.shard host:port`: a fenced server is checked again; it gets queries once a
/// check finds it fit (a second primary is fenced again).
pub fn readmit(proxy: &Proxy, database: &str, shard: &str, server: &str) -> Result<(), String> {
    let s = proxy
        .topology
        .shard(database, shard)
        .ok_or_else(|| format!("database \"{database}\" has no shard \"{shard}\""))?;
    let i = s
        .find(server)
        .ok_or_else(|| format!("shard {shard} has no server {server}"))?;
    if s.servers[i].view().state != State::Fenced {
        return Err(format!("server {server} is not fenced"));
    }
    s.servers[i].update(|v| {
        v.state = State::Up;
        v.failures = 1;
        v.role = Role::Unknown;
    });
    s.wake.notify_one();
    tracing::warn!(
        database,
        shard,
        server,
        "fenced server re-admitted by an administrator"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn conninfo_gets_the_new_host() {
        let c = "user=postgres passfile='/root/.pgpass' channel_binding=prefer host=127.0.0.1 port=5432 sslmode=prefer application_name='a b'";
        assert_eq!(
            super::with_host(c, "127.0.0.1", 5433),
            "user=postgres passfile='/root/.pgpass' channel_binding=prefer sslmode=prefer application_name='a b' host='127.0.0.1' port=5433"
        );
    }
}
