//! Two-phase commit of a transaction over several shards, and the recovery of transactions a
//! proxy left in doubt.
//!
//! **Commit.** Participants that wrote nothing (no transaction id assigned) simply commit.
//! With one writer, it commits alone. With several, one writer is the coordinator `C`; every
//! other writer `P` runs `PREPARE TRANSACTION 'sg:<db>:<C>:<xid>:<P>'` (`xid`: C's
//! transaction id); then C inserts the decision row `sg:<db>:<C>:<xid>` into
//! `shardgate.decisions` inside its own transaction and commits: that commit *is* the
//! decision, as durable as C's data. Then `COMMIT PREPARED` on each P. A failed PREPARE rolls
//! everything back; a failed C commit rolls the prepared ones back.
//!
//! **Recovery.** Every prepared transaction whose gid starts with `sg:` and that is older
//! than `two_phase.grace_s` is resolved by C's outcome: `txid_status(xid)` on C says
//! committed (COMMIT PREPARED), aborted (ROLLBACK PREPARED) or in progress (left alone: a
//! proxy is still at it); when the status is gone (xid too old) the decision row decides.
//! Resolutions only follow C's commit, which is final, so any number of proxies may sweep
//! the same shards: a second resolution of one transaction finds it gone (42704). Decision
//! rows are deleted once no prepared transaction refers to them.

use std::sync::OnceLock;
use std::time::Duration;

use pool::ServerConn;
use sgconfig::{Config, DatabaseConfig};
use wire::messages::{ErrorFields, ProxyError};

/// The schema and table of commit decisions, created on every shard of a routing database.
pub const DECISIONS: &str = "shardgate.decisions";
/// Creates the decision table where it is missing. Creators take a transaction-scoped
/// advisory lock first, so that two transactions creating it at once do not collide in the
/// catalog (`CREATE ... IF NOT EXISTS` alone races: 23505).
pub const ENSURE_DECISIONS: &str = "SELECT pg_advisory_xact_lock(7305, 2); \
     CREATE SCHEMA IF NOT EXISTS shardgate; \
     CREATE TABLE IF NOT EXISTS shardgate.decisions \
     (gid text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT clock_timestamp())";

/// A participant of a transaction that is ending: its shard and its connection, inside the
/// client's transaction.
pub struct Participant<'c> {
    pub shard: &'c str,
    pub conn: &'c mut ServerConn,
}

/// Where a test asks the proxy to die (`SHARDGATE_TEST_FAULT`): the commit protocol's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// After the first PREPARE of several.
    AfterFirstPrepare,
    /// After every PREPARE, before the decision.
    AfterPrepares,
    /// After the decision, before any COMMIT PREPARED.
    AfterDecision,
    /// After the first COMMIT PREPARED of several.
    BetweenCommits,
}

/// The fault point a test set through the environment, read once. Never set in production:
/// the variable's name says what it is for.
fn fault() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        Some(match std::env::var("SHARDGATE_TEST_FAULT").ok()?.as_str() {
            "after_first_prepare" => Fault::AfterFirstPrepare,
            "after_prepares" => Fault::AfterPrepares,
            "after_decision" => Fault::AfterDecision,
            "between_commits" => Fault::BetweenCommits,
            _ => return None,
        })
    })
}

/// Dies at `at` if a test asked for it, as abruptly as a SIGKILL.
fn fault_point(at: Fault) {
    if fault() == Some(at) {
        tracing::error!(?at, "test fault point reached: the proxy stops here");
        // SAFETY: raising a signal on our own process.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// The gid of participant `p` of the transaction decided by `coordinator`'s `xid`.
pub fn gid(db: &str, coordinator: &str, xid: &str, p: &str) -> String {
    format!("sg:{db}:{coordinator}:{xid}:{p}")
}

/// The decision row's key: the gid without its participant.
pub fn decision_key(db: &str, coordinator: &str, xid: &str) -> String {
    format!("sg:{db}:{coordinator}:{xid}")
}

/// A gid of ours: (database, coordinator shard, coordinator's xid, participant shard).
pub fn parse_gid(gid: &str) -> Option<(&str, &str, &str, &str)> {
    let rest = gid.strip_prefix("sg:")?;
    let mut it = rest.split(':');
    let (db, c, xid, p) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || xid.is_empty() || !xid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((db, c, xid, p))
}

/// `s` as an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn lost(shard: &str, e: std::io::Error) -> ProxyError {
    ProxyError::error(
        "08006",
        format!("the connection to shard \"{shard}\" was lost while the transaction ended: {e}"),
    )
}

fn server_error(shard: &str, what: &str, e: ErrorFields) -> ProxyError {
    ProxyError {
        fatal: false,
        code: e.code.into(),
        message: format!("{what} on shard \"{shard}\": {}", e.message),
        detail: e.detail,
        hint: e.hint,
    }
}

/// Rolls every participant back; connections that fail are marked broken (the caller drops
/// them, which rolls their transaction back too).
pub async fn rollback_all(parts: &mut [Participant<'_>]) -> Vec<bool> {
    let mut ok = Vec::with_capacity(parts.len());
    for p in parts.iter_mut() {
        ok.push(matches!(p.conn.run_simple("ROLLBACK").await, Ok(None)));
    }
    ok
}

/// What became of a commit.
pub struct Outcome {
    /// The client's answer: `Ok("COMMIT")`, or the error that rolled it back (or, 08006,
    /// left it to recovery).
    pub result: Result<&'static str, ProxyError>,
    /// Per participant, whether its connection is idle and clean again (else: drop it).
    pub clean: Vec<bool>,
}

/// Commits the transaction of `parts` (the client's transaction, open on each) all or
/// nothing. `coordinator_hint`: the participant preferred as coordinator.
pub async fn commit(db: &str, parts: &mut [Participant<'_>], coordinator_hint: usize) -> Outcome {
    let n = parts.len();
    let mut clean = vec![true; n];
    // Which participants wrote: those with a transaction id.
    let mut xids: Vec<Option<String>> = Vec::with_capacity(n);
    for (i, p) in parts.iter_mut().enumerate() {
        match p
            .conn
            .query_column("SELECT txid_current_if_assigned()")
            .await
        {
            Ok(Ok(rows)) => xids.push(rows.into_iter().next().flatten()),
            Ok(Err(e)) => {
                // The transaction is aborted there (a statement failed): it rolls back.
                let err = server_error(p.shard, "the transaction could not commit", e);
                let ok = rollback_all(parts).await;
                return Outcome {
                    result: Err(err),
                    clean: ok,
                };
            }
            Err(e) => {
                clean[i] = false;
                let err = lost(p.shard, e);
                let ok = rollback_all(parts).await;
                return Outcome {
                    result: Err(err),
                    clean: ok.iter().zip(&clean).map(|(a, b)| *a && *b).collect(),
                };
            }
        }
    }
    let writers: Vec<usize> = (0..n).filter(|&i| xids[i].is_some()).collect();
    let readers: Vec<usize> = (0..n).filter(|&i| xids[i].is_none()).collect();
    let mut result = Ok("COMMIT");
    // Readers commit first: one that cannot (a serialization failure on what it read) fails
    // the whole transaction before anything is decided.
    for &i in &readers {
        let p = &mut parts[i];
        let failed = match p.conn.run_simple("COMMIT").await {
            Ok(None) => None,
            Ok(Some(e)) => Some(server_error(p.shard, "the commit failed", e)),
            Err(e) => {
                clean[i] = false;
                Some(lost(p.shard, e))
            }
        };
        if let Some(err) = failed {
            for &w in &writers {
                clean[w] = matches!(parts[w].conn.run_simple("ROLLBACK").await, Ok(None));
            }
            return Outcome {
                result: Err(err),
                clean,
            };
        }
    }
    if writers.len() <= 1 {
        // Nothing to make atomic: the writer (if any) decides.
        for &i in &writers {
            let p = &mut parts[i];
            match p.conn.run_simple("COMMIT").await {
                Ok(None) => {}
                Ok(Some(e)) => result = Err(server_error(p.shard, "the commit failed", e)),
                Err(e) => {
                    clean[i] = false;
                    result = Err(lost(p.shard, e));
                }
            }
        }
        return Outcome { result, clean };
    }
    let c = if writers.contains(&coordinator_hint) {
        coordinator_hint
    } else {
        writers[0]
    };
    let xid = xids[c].clone().expect("a writer");
    let cname = parts[c].shard.to_owned();
    // Phase one: every other writer prepares.
    let others: Vec<usize> = writers.iter().copied().filter(|&i| i != c).collect();
    let mut prepared: Vec<usize> = Vec::new();
    let mut failure: Option<ProxyError> = None;
    for (k, &i) in others.iter().enumerate() {
        let p = &mut parts[i];
        let g = gid(db, &cname, &xid, p.shard);
        match p
            .conn
            .run_simple(&format!("PREPARE TRANSACTION {}", literal(&g)))
            .await
        {
            Ok(None) => prepared.push(i),
            Ok(Some(e)) => {
                failure = Some(server_error(
                    p.shard,
                    "the transaction could not prepare",
                    e,
                ));
                break;
            }
            Err(e) => {
                // Whether it prepared is unknown: recovery rolls it back (C never decides).
                clean[i] = false;
                failure = Some(lost(p.shard, e));
                break;
            }
        }
        if k == 0 && others.len() > 1 {
            fault_point(Fault::AfterFirstPrepare);
        }
    }
    if failure.is_none() {
        fault_point(Fault::AfterPrepares);
    }
    // The decision: C's own commit, with the decision row in it.
    if failure.is_none() {
        let row = format!(
            "INSERT INTO {DECISIONS} (gid) VALUES ({})",
            literal(&decision_key(db, &cname, &xid))
        );
        // Behind a savepoint: where the table is missing, it is made in the same
        // transaction and the row written again.
        let mut written = parts[c]
            .conn
            .run_simple(&format!("SAVEPOINT sg_decision; {row}"))
            .await;
        if let Ok(Some(e)) = &written {
            if e.code == "42P01" || e.code == "3F000" {
                written = parts[c]
                    .conn
                    .run_simple(&format!(
                        "ROLLBACK TO SAVEPOINT sg_decision; {ENSURE_DECISIONS}; {row}"
                    ))
                    .await;
            }
        }
        match written {
            Ok(None) => {}
            Ok(Some(e)) => {
                failure = Some(server_error(
                    &cname,
                    "the commit decision could not be written",
                    e,
                ))
            }
            Err(e) => {
                clean[c] = false;
                failure = Some(lost(&cname, e));
            }
        }
    }
    if failure.is_none() {
        match parts[c].conn.run_simple("COMMIT").await {
            Ok(None) => {}
            Ok(Some(e)) => failure = Some(server_error(&cname, "the commit failed", e)),
            Err(e) => {
                // C's outcome is unknown to us; recovery reads it and finishes the rest.
                clean[c] = false;
                tracing::error!(database = db, coordinator = %cname, xid = %xid, error = %e, "the coordinator was lost during its commit: recovery will finish the transaction");
                return Outcome {
                    result: Err(ProxyError::error(
                        "08006",
                        format!("the connection to shard \"{cname}\" was lost during the commit: whether the transaction committed is decided by that shard, and the other shards follow it within two_phase.recovery_interval_s"),
                    )),
                    clean,
                };
            }
        }
    }
    if let Some(err) = failure {
        for &i in &prepared {
            let p = &mut parts[i];
            let g = gid(db, &cname, &xid, p.shard);
            if !matches!(
                p.conn
                    .run_simple(&format!("ROLLBACK PREPARED {}", literal(&g)))
                    .await,
                Ok(None)
            ) {
                // Left to recovery: C never committed, so it rolls back.
                clean[i] = false;
            }
        }
        for &i in &writers {
            if !prepared.contains(&i) && clean[i] {
                clean[i] = matches!(parts[i].conn.run_simple("ROLLBACK").await, Ok(None));
            }
        }
        return Outcome {
            result: Err(err),
            clean,
        };
    }
    fault_point(Fault::AfterDecision);
    // Phase two: decided; the prepared ones commit (or recovery commits them).
    for (k, &i) in prepared.iter().enumerate() {
        let p = &mut parts[i];
        let g = gid(db, &cname, &xid, p.shard);
        match p
            .conn
            .run_simple(&format!("COMMIT PREPARED {}", literal(&g)))
            .await
        {
            Ok(None) => {}
            Ok(Some(e)) => {
                tracing::warn!(gid = %g, error = %e.message, "COMMIT PREPARED failed: recovery will retry it");
            }
            Err(e) => {
                clean[i] = false;
                tracing::warn!(gid = %g, error = %e, "COMMIT PREPARED lost its connection: recovery will retry it");
            }
        }
        if k == 0 && prepared.len() > 1 {
            fault_point(Fault::BetweenCommits);
        }
    }
    Outcome { result, clean }
}

/// [`commit`] over connections and their shards side by side (`conns[i]` is of
/// `shards[i]`), the first the preferred coordinator: a statement's own transaction on
/// several shards.
pub async fn commit_all(db: &str, conns: &mut [pool::PooledConn], shards: &[String]) -> Outcome {
    let mut parts: Vec<Participant<'_>> = conns
        .iter_mut()
        .zip(shards.iter())
        .map(|(c, s)| Participant {
            shard: s.as_str(),
            conn: c,
        })
        .collect();
    commit(db, &mut parts, 0).await
}

/// What one recovery sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub committed: usize,
    pub rolled_back: usize,
    /// Prepared transactions of ours still in doubt (young, or their coordinator busy).
    pub waiting: usize,
    /// Shards that could not be reached.
    pub unreachable: usize,
}

/// A connection for recovery work on `shard` of `db` as the server user `owner` (any
/// configured user when `None`).
async fn connect(
    config: &Config,
    db: &DatabaseConfig,
    shard: &str,
    owner: Option<&str>,
    tls: &pool::ServerTls,
) -> Option<ServerConn> {
    let (_, shard_cfg) = db.shards.iter().find(|(n, _)| *n == shard)?;
    let addr = sgconfig::ServerAddress::parse(&shard_cfg.primary.url).ok()?;
    for u in &config.users {
        let user = addr
            .user
            .clone()
            .unwrap_or_else(|| u.server_user().to_owned());
        if owner.is_some_and(|o| o != user) {
            continue;
        }
        let target = pool::ServerTarget {
            shard: shard.to_owned(),
            host: addr.host.clone(),
            port: addr.port,
            database: addr.database.clone(),
            user,
            password: addr
                .password
                .clone()
                .or_else(|| u.server_password().map(str::to_owned)),
            tls: tls.clone(),
            replica: false,
        };
        let opened = pool::Startup::default();
        if let Ok(c) = ServerConn::connect(&target, Duration::from_secs(5), &opened).await {
            return Some(c);
        }
    }
    None
}

/// One sweep over every shard of every database that routes: creates the decision table
/// where it is missing, resolves our prepared transactions older than `grace`, and deletes
/// decision rows no prepared transaction needs any more.
pub async fn sweep(config: &Config, tls: &pool::ServerTls, grace: Duration) -> Sweep {
    let mut out = Sweep::default();
    for (name, db) in &config.databases {
        if db.maps.is_empty() {
            continue;
        }
        sweep_database(config, name, db, tls, grace, &mut out).await;
    }
    out
}

async fn sweep_database(
    config: &Config,
    name: &str,
    db: &DatabaseConfig,
    tls: &pool::ServerTls,
    grace: Duration,
    out: &mut Sweep,
) {
    // Every prepared transaction of ours on every shard: (shard, gid, owner, old enough).
    // Decision rows older than the grace period are read first: any prepared transaction
    // one of them needs was prepared before the row was written, so the listing after
    // sees it.
    let mut found: Vec<(String, String, String, bool)> = Vec::new();
    let mut conns: Vec<(String, ServerConn)> = Vec::new();
    let mut candidates: Vec<(String, Vec<String>)> = Vec::new();
    let mut complete = true;
    // owner's length, '.', owner, 't'/'f' (old enough), gid: no separator can collide.
    let list = format!(
        "SELECT length(owner)::text || '.' || owner || \
         CASE WHEN prepared < now() - interval '{} milliseconds' THEN 't' ELSE 'f' END || gid \
         FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'sg:%'",
        grace.as_millis()
    );
    let old_rows = format!(
        "SELECT gid FROM {DECISIONS} WHERE decided_at < now() - interval '{} milliseconds'",
        grace.as_millis()
    );
    for (shard, _) in db.shards.iter() {
        let Some(mut conn) = connect(config, db, shard, None, tls).await else {
            tracing::warn!(database = name, shard = %shard, "two-phase recovery could not reach the shard");
            out.unreachable += 1;
            complete = false;
            continue;
        };
        if let Ok(Some(e)) = conn.run_simple(ENSURE_DECISIONS).await {
            tracing::warn!(database = name, shard = %shard, error = %e.message, "could not create {DECISIONS}: transactions over several shards that write on this shard cannot commit");
        }
        match conn.query_column(&old_rows).await {
            Ok(Ok(rows)) => {
                candidates.push((shard.to_owned(), rows.into_iter().flatten().collect()))
            }
            _ => complete = false,
        }
        conns.push((shard.to_owned(), conn));
    }
    for (shard, conn) in conns.iter_mut() {
        match conn.query_column(&list).await {
            Ok(Ok(rows)) => {
                for r in rows.into_iter().flatten() {
                    match parse_listing(&r) {
                        Some((owner, old, gid)) => {
                            found.push((shard.clone(), gid.to_owned(), owner.to_owned(), old))
                        }
                        None => complete = false,
                    }
                }
            }
            _ => complete = false,
        }
    }
    for (shard, gid, owner, old) in &found {
        let Some((gdb, c, xid, _)) = parse_gid(gid) else {
            continue;
        };
        if gdb != name {
            continue;
        }
        if !old {
            out.waiting += 1;
            continue;
        }
        let Some(coord) = conns.iter_mut().find(|(s, _)| s == c).map(|(_, c)| c) else {
            out.waiting += 1;
            continue;
        };
        let status = match coord
            .query_column(&format!("SELECT txid_status({xid})"))
            .await
        {
            Ok(Ok(rows)) => rows.into_iter().next().flatten(),
            _ => {
                out.waiting += 1;
                continue;
            }
        };
        let commit = match status.as_deref() {
            Some("committed") => true,
            Some("aborted") => false,
            Some(_) => {
                // In progress: a proxy is still committing it.
                out.waiting += 1;
                continue;
            }
            None => {
                let q = format!(
                    "SELECT count(*) FROM {DECISIONS} WHERE gid = {}",
                    literal(&decision_key(gdb, c, xid))
                );
                match coord.query_column(&q).await {
                    Ok(Ok(rows)) => rows.first().cloned().flatten().as_deref() == Some("1"),
                    _ => {
                        out.waiting += 1;
                        continue;
                    }
                }
            }
        };
        let Some(mut as_owner) = connect(config, db, shard, Some(owner), tls).await else {
            tracing::warn!(database = name, shard = %shard, gid = %gid, owner = %owner, "no configured user can resolve this prepared transaction (it must be its owner)");
            out.waiting += 1;
            continue;
        };
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        match as_owner
            .run_simple(&format!("{verb} PREPARED {}", literal(gid)))
            .await
        {
            Ok(None) => {
                tracing::info!(database = name, shard = %shard, gid = %gid, decision = verb, "two-phase recovery resolved a prepared transaction");
                if commit {
                    out.committed += 1;
                } else {
                    out.rolled_back += 1;
                }
            }
            // Resolved meanwhile by its proxy or another one.
            Ok(Some(e)) if e.code == "42704" => {}
            Ok(Some(e)) => {
                tracing::warn!(database = name, shard = %shard, gid = %gid, error = %e.message, "two-phase recovery could not resolve a prepared transaction");
                out.waiting += 1;
            }
            Err(_) => out.waiting += 1,
        }
    }
    // Decision rows of transactions with nothing left prepared anywhere go; only when every
    // shard was listed (a shard not seen may still hold one of their transactions).
    if !complete {
        return;
    }
    let keep: Vec<String> = found
        .iter()
        .filter_map(|(_, g, _, _)| parse_gid(g).map(|(d, c, x, _)| decision_key(d, c, x)))
        .collect();
    for (shard, conn) in conns.iter_mut() {
        let Some((_, rows)) = candidates.iter().find(|(s, _)| s == shard) else {
            continue;
        };
        let gone: Vec<String> = rows
            .iter()
            .filter(|g| !keep.contains(g))
            .map(|g| literal(g))
            .collect();
        if gone.is_empty() {
            continue;
        }
        let _ = conn
            .run_simple(&format!(
                "DELETE FROM {DECISIONS} WHERE gid IN ({})",
                gone.join(", ")
            ))
            .await;
    }
}

/// A row of the sweep's listing: (owner, old enough, gid).
fn parse_listing(row: &str) -> Option<(&str, bool, &str)> {
    let (len, rest) = row.split_once('.')?;
    let len: usize = len.parse().ok()?;
    let end = rest.char_indices().nth(len).map_or(rest.len(), |(i, _)| i);
    let (owner, rest) = rest.split_at(end);
    let old = match rest.chars().next()? {
        't' => true,
        'f' => false,
        _ => return None,
    };
    Some((owner, old, &rest[1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_transaction() {
        let g = gid("app", "s0", "1234", "s2");
        assert_eq!(g, "sg:app:s0:1234:s2");
        assert_eq!(parse_gid(&g), Some(("app", "s0", "1234", "s2")));
        assert_eq!(decision_key("app", "s0", "1234"), "sg:app:s0:1234");
        for bad in [
            "x:app:s0:1:s1",
            "sg:app:s0:x1:s1",
            "sg:app:s0:1",
            "sg:a:b:1:c:d",
        ] {
            assert_eq!(parse_gid(bad), None, "{bad}");
        }
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(
            parse_listing("4.a|b.tsg:app:s0:1:s1"),
            Some(("a|b.", true, "sg:app:s0:1:s1"))
        );
        assert_eq!(parse_listing("2.ébfsg:x"), Some(("éb", false, "sg:x")));
        assert_eq!(parse_listing("x.y"), None);
    }
}
