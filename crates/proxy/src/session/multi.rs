//! A simple query of several statements whose statements need different shards, outside a
//! transaction: PostgreSQL runs such a query as one implicit transaction, and so does the
//! proxy, over those shards. Each statement runs in turn on its shard (in a transaction
//! block there), its answers go to the client as they come, the first error stops the
//! rest; then every shard commits (two-phase commit when several wrote) or, after an error,
//! rolls back, and the client gets one ReadyForQuery.

use super::*;
use crate::twophase;

impl Session {
    /// `sql` (refused as one statement for one shard) run that way, when every statement in
    /// it routes to one shard and none is transaction control, a session command or a COPY.
    /// `None`: not such a query; its refusal stands.
    pub(super) async fn multi_shard_query(&mut self, sql: &[u8]) -> Option<Result<(), End>> {
        if self.tx_status != b'I'
            || self.held_begin.is_some()
            || self.client.mode != PoolMode::Transaction
            || self.pinned
            || !self.routes()
        {
            return None;
        }
        if !self.may_span_shards() {
            return None;
        }
        let text = String::from_utf8_lossy(sql).into_owned();
        let parts = split_statements(&text);
        if parts.len() < 2 {
            return None;
        }
        let home = self.home_shard();
        let mut plan: Vec<(String, String)> = Vec::with_capacity(parts.len());
        for part in &parts {
            let p = part.as_bytes();
            if lone_begin(p)
                || tracked(p).is_some()
                || first_word(p) == "copy"
                || matches!(
                    first_word(p).as_str(),
                    "begin"
                        | "start"
                        | "commit"
                        | "end"
                        | "rollback"
                        | "abort"
                        | "savepoint"
                        | "release"
                        | "prepare"
                )
            {
                return None;
            }
            self.learn_insert_columns(p).await;
            match self.route(p) {
                Ok(Routing::To(t)) => {
                    plan.push((t.unwrap_or_else(|| home.clone()), part.to_string()))
                }
                _ => return None,
            }
        }
        if plan.iter().all(|(s, _)| *s == plan[0].0) {
            return None;
        }
        if let Err(e) = self.settle().await {
            return Some(Err(End::fatal(e)));
        }
        Some(Box::pin(self.run_multi(plan)).await)
    }

    async fn run_multi(&mut self, plan: Vec<(String, String)>) -> Result<(), End> {
        self.entry.set_state(crate::stats::ClientState::Active);
        let deadlock = self.proxy.config.load().two_phase.deadlock_timeout_ms;
        let mut conns: Vec<(String, PooledConn, bool)> = Vec::new();
        let mut error: Option<ProxyError> = None;
        let mut failed = false;
        for (shard, stmt) in &plan {
            let i = match conns.iter().position(|(s, _, _)| s == shard) {
                Some(i) => i,
                None => {
                    let conn = match self.begin_on(shard, deadlock).await {
                        Ok(c) => c,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    };
                    conns.push((shard.clone(), conn, true));
                    conns.len() - 1
                }
            };
            let mut q = BytesMut::with_capacity(stmt.len() + 6);
            messages::query(&mut q, stmt);
            let conn = &mut conns[i].1;
            if let Err(e) = conn.send(&q).await {
                conns[i].2 = false;
                error = Some(ProxyError::error(
                    "08006",
                    format!("shard \"{shard}\": {e}"),
                ));
                break;
            }
            loop {
                let f = match conns[i].1.read_frame().await {
                    Ok(f) => f,
                    Err(e) => {
                        conns[i].2 = false;
                        error = Some(ProxyError::error(
                            "08006",
                            format!("shard \"{shard}\": {e}"),
                        ));
                        break;
                    }
                };
                match f.tag() {
                    tag::READY_FOR_QUERY => break,
                    tag::ERROR_RESPONSE => {
                        failed = true;
                        self.wbuf.extend_from_slice(f.raw());
                    }
                    _ => self.wbuf.extend_from_slice(f.raw()),
                }
                if self.wbuf.len() >= HIGH_WATER {
                    if self.client.conn.stream.send_all(&self.wbuf).await.is_err() {
                        return Err(End::ClientGone);
                    }
                    self.wbuf.clear();
                }
            }
            if failed || error.is_some() {
                break;
            }
        }
        let db = self.client.database.clone();
        let mut names: Vec<String> = conns.iter().map(|(s, _, _)| s.clone()).collect();
        let clean: Vec<bool> = {
            let mut parts: Vec<twophase::Participant<'_>> = conns
                .iter_mut()
                .zip(names.iter())
                .filter(|((_, _, ok), _)| *ok)
                .map(|((_, c, _), n)| twophase::Participant {
                    shard: n.as_str(),
                    conn: c,
                })
                .collect();
            if failed || error.is_some() {
                twophase::rollback_all(&mut parts).await
            } else {
                let last = parts.len().saturating_sub(1);
                let out = twophase::commit(&db, &mut parts, last).await;
                if let Err(e) = out.result {
                    error = Some(e);
                }
                out.clean
            }
        };
        names.clear();
        let mut k = 0;
        for (_, conn, ok) in conns {
            let released = ok && clean.get(k).copied().unwrap_or(false);
            if ok {
                k += 1;
            }
            if released {
                conn.release();
            }
        }
        if let Some(e) = error {
            self.proxy.stats.error(&self.client.database, &e.code);
            e.encode(&mut self.wbuf);
        }
        messages::ready_for_query(&mut self.wbuf, b'I');
        self.tx_status = b'I';
        self.error_since_ready = false;
        Ok(())
    }

    /// A connection of `shard` with the client's settings, in a transaction block.
    async fn begin_on(&mut self, shard: &str, deadlock: u64) -> Result<PooledConn, ProxyError> {
        let pool = self.shard_pool(shard)?;
        let mut conn = attach::checkout(&pool, &self.client).await?;
        sync_conn(&mut conn, &mut self.client, b'I').await?;
        let begin = if deadlock > 0 {
            format!("BEGIN; SET LOCAL lock_timeout = {deadlock}")
        } else {
            "BEGIN".to_owned()
        };
        match conn.run_simple(&begin).await {
            Ok(None) => Ok(conn),
            Ok(Some(e)) => Err(ProxyError::error(
                "08006",
                format!("shard \"{shard}\" could not begin: {}", e.message),
            )),
            Err(e) => Err(ProxyError::error(
                "08006",
                format!("shard \"{shard}\" could not begin: {e}"),
            )),
        }
    }
}
