//! Health checks: one task per shard asks each of its servers, every
//! `failover.health_check_interval_ms` (and at once when a pool could not connect), whether
//! it is in recovery and how far its WAL is, and turns the answers into the shard's view:
//! up or down, primary or replica, lag. It adopts a primary promoted outside the proxy,
//! fences a second primary, holds the shard's writes while its primary fails, and in `auto`
//! mode has [`super::failover`] replace a primary that stays down.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pool::{ServerConn, ServerTarget};
use sgconfig::{Config, FailoverMode};

use super::{failover, Role, Shard, State};
use crate::Proxy;

/// What a server says of itself: `p <lsn> <timeline>` or `r <replayed lsn> 0`. A primary's
/// position is where WAL is *inserted*, not where it is written: with `synchronous_commit =
/// off` a commit returns before its record is written, and read-your-writes compares a
/// replica's replay with a position that must lie past every commit the client has seen.
const CHECK_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() \
    THEN 'r ' || COALESCE(pg_last_wal_replay_lsn() - '0/0', 0)::text || ' 0' \
    ELSE 'p ' || (pg_current_wal_insert_lsn() - '0/0')::text || ' ' \
        || ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END";

/// One check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub role: Role,
    pub lsn: u64,
    pub timeline: u32,
}

fn parse_answer(text: &str) -> Option<Answer> {
    let mut it = text.split(' ');
    let role = match it.next()? {
        "p" => Role::Primary,
        "r" => Role::Replica,
        _ => return None,
    };
    let lsn = it.next()?.split('.').next()?.parse().ok()?;
    let timeline = it.next()?.parse().ok()?;
    Some(Answer {
        role,
        lsn,
        timeline,
    })
}

/// Where the proxy's own connections to a server log in: as the URL's user, or as each
/// configured user's server user in turn (the first that works is kept).
pub(crate) fn targets(
    config: &Config,
    shard: &str,
    url: &str,
    tls: &pool::ServerTls,
) -> Vec<ServerTarget> {
    let Ok(addr) = sgconfig::ServerAddress::parse(url) else {
        return Vec::new();
    };
    let mut out: Vec<ServerTarget> = Vec::new();
    for u in &config.users {
        let user = addr
            .user
            .clone()
            .unwrap_or_else(|| u.server_user().to_owned());
        let password = addr
            .password
            .clone()
            .or_else(|| u.server_password().map(str::to_owned));
        if out.iter().any(|t| t.user == user && t.password == password) {
            continue;
        }
        out.push(ServerTarget {
            shard: shard.to_owned(),
            host: addr.host.clone(),
            port: addr.port,
            database: addr.database.clone(),
            user,
            password,
            tls: tls.clone(),
            replica: false,
        });
    }
    out
}

/// A connection for the proxy's own questions to server `i` of `shard`.
pub(crate) async fn connect(
    proxy: &Proxy,
    shard: &Shard,
    i: usize,
    timeout: Duration,
) -> Result<ServerConn, String> {
    let config = proxy.config();
    let tls = proxy.server_tls();
    let startup = pool::Startup {
        params: vec![("application_name".into(), "shardgate health check".into())],
    };
    let mut last = "no configured user to log in as".to_owned();
    for t in targets(&config, &shard.shard, &shard.servers[i].url, &tls) {
        match ServerConn::connect(&t, timeout, &startup).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Asks one server; the connection is kept for the next check when all went well.
async fn check(
    proxy: &Proxy,
    shard: &Shard,
    i: usize,
    conn: Option<ServerConn>,
    timeout: Duration,
) -> (Option<ServerConn>, Result<Answer, String>) {
    let run = async {
        let mut conn = match conn {
            Some(c) => c,
            None => connect(proxy, shard, i, timeout).await?,
        };
        let rows = conn
            .query_column(CHECK_SQL)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {}", e.code, e.message))?;
        let text = rows.into_iter().next().flatten().unwrap_or_default();
        let answer = parse_answer(&text).ok_or_else(|| format!("unexpected answer {text:?}"))?;
        Ok::<_, String>((conn, answer))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok((c, a))) => (Some(c), Ok(a)),
        Ok(Err(e)) => (None, Err(e)),
        Err(_) => (
            None,
            Err(format!("no answer within {} ms", timeout.as_millis())),
        ),
    }
}

/// Checks `shard`'s servers until the proxy goes or a reload replaces the shard.
pub(crate) async fn watch(proxy: Weak<Proxy>, shard: Arc<Shard>) {
    let n = shard.servers.len();
    let mut conns: Vec<Option<ServerConn>> = (0..n).map(|_| None).collect();
    let every = Duration::from_millis(shard.failover.health_check_interval_ms.max(1));
    let timeout = Duration::from_millis(shard.failover.health_check_timeout_ms.max(1));
    loop {
        if shard.replaced.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let Some(p) = proxy.upgrade() else { return };
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in conns.iter_mut().enumerate() {
            let (p, s, c) = (p.clone(), shard.clone(), c.take());
            set.spawn(async move {
                let (c, r) = check(&p, &s, i, c, timeout).await;
                (i, c, r)
            });
        }
        let mut answers: Vec<Option<Result<Answer, String>>> = (0..n).map(|_| None).collect();
        while let Some(done) = set.join_next().await {
            if let Ok((i, c, r)) = done {
                conns[i] = c;
                answers[i] = Some(r);
            }
        }
        let answers: Vec<Result<Answer, String>> = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err("check did not finish".into())))
            .collect();
        let primary_answered = answers[shard.primary()].is_ok();
        judge(&p, &shard, started, &answers).await;
        drop(p);
        let wake = shard.wake.notified();
        let pause = tokio::time::sleep(every.saturating_sub(started.elapsed()));
        if primary_answered {
            // A pool that could not connect has the primary checked at once (its writes
            // are held from the first failed check)...
            tokio::select! {
                _ = pause => {}
                _ = wake => {}
            }
        } else {
            // ...but failed checks count one interval apart, so that a primary is down
            // only after `failures_before_down` intervals, however busy its clients.
            pause.await;
        }
    }
}

/// Turns one round of answers into the shard's view, and acts on it.
async fn judge(
    proxy: &Arc<Proxy>,
    shard: &Arc<Shard>,
    started: Instant,
    answers: &[Result<Answer, String>],
) {
    let down_after = shard.failover.failures_before_down.max(1);
    for (s, a) in shard.servers.iter().zip(answers) {
        s.update(|v| match a {
            Ok(a) => {
                if v.state == State::Down {
                    tracing::info!(database = %shard.database, shard = %shard.shard, server = %s.name(), role = a.role.name(), "server is up again");
                    v.state = State::Up;
                }
                v.failures = 0;
                v.role = a.role;
                v.lsn = Some(a.lsn);
                v.timeline = (a.role == Role::Primary).then_some(a.timeline);
                v.last_error = None;
            }
            Err(e) => {
                v.failures = v.failures.saturating_add(1);
                if v.failures >= down_after && v.state == State::Up {
                    tracing::warn!(database = %shard.database, shard = %shard.shard, server = %s.name(), error = %e, "server is down");
                    v.state = State::Down;
                }
                v.last_error = Some(e.clone());
            }
        });
    }
    // Changing the primary is for one task at a time; a failover or switchover in flight
    // judges for itself.
    let Ok(guard) = shard.changing.try_lock() else {
        return;
    };
    let p = shard.primary();
    if let Ok(a) = &answers[p] {
        if a.role == Role::Primary {
            shard.sample(started, a.lsn);
        }
    }
    for (s, a) in shard.servers.iter().zip(answers) {
        if let Ok(a) = a {
            if a.role == Role::Replica {
                let (bytes, ms) = shard.lag_of(a.lsn);
                s.update(|v| {
                    v.lag_bytes = bytes;
                    v.lag_ms = ms;
                });
            }
        }
    }
    // Servers that say they are primary, besides the one the proxy writes to.
    let others: Vec<usize> = (0..shard.servers.len())
        .filter(|&i| i != p)
        .filter(|&i| matches!(&answers[i], Ok(a) if a.role == Role::Primary))
        .filter(|&i| shard.servers[i].view().state != State::Fenced)
        .collect();
    let current_says_primary = matches!(&answers[p], Ok(a) if a.role == Role::Primary);
    if !others.is_empty() {
        // Never two primaries: the newest timeline wins (a promotion starts a new one);
        // on a tie the current primary stays. The others are fenced.
        let tl = |i: usize| match &answers[i] {
            Ok(a) => a.timeline,
            Err(_) => 0,
        };
        let best = *others
            .iter()
            .max_by_key(|&&i| (tl(i), answers[i].as_ref().map_or(0, |a| a.lsn)))
            .expect("not empty");
        let winner = if current_says_primary && tl(p) >= tl(best) {
            p
        } else {
            best
        };
        for &i in others.iter().chain(std::iter::once(&p)) {
            if i == winner {
                continue;
            }
            if i == p && !current_says_primary {
                // The old primary is down or now a replica: a replica may serve reads;
                // one that is down is fenced, for it would come back as a primary.
                if shard.servers[p].view().role == Role::Replica && answers[p].is_ok() {
                    continue;
                }
            }
            failover::fence(shard, i, "another server of the shard was promoted");
        }
        if winner != p {
            tracing::warn!(database = %shard.database, shard = %shard.shard, from = %shard.servers[p].name(), to = %shard.servers[winner].name(), "a replica was promoted outside the proxy: writes go to it");
            failover::adopt(proxy, shard, winner);
        } else if shard.holding().is_some() {
            failover::release_writes(proxy, shard);
        }
        drop(guard);
        return;
    }
    let primary_failing = answers[p].is_err();
    let auto = shard.failover.mode == FailoverMode::Auto;
    let candidate = failover::best_replica(shard, answers);
    if let Some(to) = candidate.filter(|_| primary_failing && auto) {
        // Writes wait rather than fail while it is decided whether the primary is gone.
        failover::hold_writes(proxy, shard);
        if shard.servers[p].view().state == State::Down {
            drop(guard);
            if let Err(e) = failover::promote(proxy, shard, to, failover::Why::PrimaryDown).await {
                tracing::error!(database = %shard.database, shard = %shard.shard, error = %e, "failover failed; trying again at the next check");
            }
            return;
        }
    } else if !primary_failing && shard.holding().is_some() {
        failover::release_writes(proxy, shard);
    } else if primary_failing && shard.servers[p].view().failures == down_after && auto {
        tracing::warn!(database = %shard.database, shard = %shard.shard, "the primary does not answer and no replica is fit to replace it");
    }
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse_answer("p 123456 2"),
            Some(Answer {
                role: Role::Primary,
                lsn: 123456,
                timeline: 2
            })
        );
        assert_eq!(
            parse_answer("r 99 0"),
            Some(Answer {
                role: Role::Replica,
                lsn: 99,
                timeline: 0
            })
        );
        assert_eq!(parse_answer("x 1 1"), None);
        assert_eq!(parse_answer("p"), None);
    }
}
