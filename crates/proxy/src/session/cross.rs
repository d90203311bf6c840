//! Transactions over several shards. A transaction starts on the shard of its first
//! statement; when a later statement needs another shard, the attached server is parked
//! (still inside the transaction) and the other shard joins: a connection of its pool gets
//! the client's settings, the client's own BEGIN (isolation level, READ ONLY, DEFERRABLE)
//! and the transaction's savepoints, so that a ROLLBACK TO undoes its work too. SAVEPOINT,
//! RELEASE and ROLLBACK TO run on every participant; COMMIT and ROLLBACK end the
//! transaction on all of them, with two-phase commit when several wrote
//! (`crate::twophase`).

use super::*;
use crate::twophase;

/// The participants of a transaction over several shards other than the attached server.
pub(super) struct CrossTx {
    /// Shard and connection, each inside the client's transaction.
    pub(super) parked: Vec<(Box<str>, PooledConn)>,
    /// The transaction's BEGIN, with the characteristics the first shard's transaction
    /// has (isolation level, READ ONLY, DEFERRABLE), for the shards that join.
    begin: String,
    /// A COMMIT or ROLLBACK bound through the extended protocol, run at its Execute: the
    /// portal's name, whether it commits, AND CHAIN.
    portal: Option<(Box<[u8]>, bool, bool)>,
    /// The implicit transaction of an extended-protocol batch (no BEGIN): it ends at the
    /// batch's Sync, committed unless something in the batch failed.
    pub(super) implicit: bool,
}

/// A statement that ends or marks a transaction, as the proxy must treat it when no one
/// server holds the whole transaction (it spans shards, or its BEGIN is still held).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Control {
    Commit {
        chain: bool,
    },
    Rollback {
        chain: bool,
    },
    /// SAVEPOINT, RELEASE: the same statement on every participant.
    Everywhere,
    /// ROLLBACK TO the savepoint named (as written): on every participant too.
    RollbackTo(String),
    /// PREPARE TRANSACTION and the like: not for a transaction the proxy commits.
    Refused,
}

pub(super) fn control(sql: &[u8]) -> Option<Control> {
    use router::lexer::Token;
    let text = String::from_utf8_lossy(sql);
    let mut words: Vec<Token<'_>> = router::lexer::Lexer::new(&text).collect();
    while words.last() == Some(&Token::Semicolon) {
        words.pop();
    }
    let kw = |i: usize, k: &str| words.get(i).is_some_and(|t| t.is_keyword(k));
    let commit = kw(0, "commit") || kw(0, "end");
    let rollback = kw(0, "rollback") || kw(0, "abort");
    if kw(0, "savepoint") || kw(0, "release") {
        return Some(Control::Everywhere);
    }
    if kw(0, "prepare") && kw(1, "transaction") {
        return Some(Control::Refused);
    }
    if !(commit || rollback) {
        return None;
    }
    let mut i = 1;
    if kw(i, "work") || kw(i, "transaction") {
        i += 1;
    }
    if rollback && kw(i, "to") {
        let name = words
            .last()
            .map(|t| t.text().to_owned())
            .unwrap_or_default();
        return Some(Control::RollbackTo(name));
    }
    if commit && kw(i, "prepared") || rollback && kw(i, "prepared") {
        return Some(Control::Refused);
    }
    let chain = if kw(i, "and") && kw(i + 1, "chain") {
        i += 2;
        true
    } else if kw(i, "and") && kw(i + 1, "no") && kw(i + 2, "chain") {
        i += 3;
        false
    } else {
        false
    };
    if i != words.len() {
        return Some(Control::Refused);
    }
    Some(if commit {
        Control::Commit { chain }
    } else {
        Control::Rollback { chain }
    })
}

/// The BEGIN that starts a transaction like the one running: isolation level, READ ONLY,
/// DEFERRABLE.
const TRANSACTION_MODES: &str = "SELECT 'BEGIN ISOLATION LEVEL ' || upper(current_setting('transaction_isolation')) \
     || CASE WHEN current_setting('transaction_read_only')::bool THEN ' READ ONLY' ELSE ' READ WRITE' END \
     || CASE WHEN current_setting('transaction_deferrable')::bool THEN ' DEFERRABLE' ELSE '' END";

/// A client's own PREPARE TRANSACTION (or COMMIT/ROLLBACK PREPARED) while its transaction
/// spans shards.
fn prepare_refused() -> ProxyError {
    ProxyError::error(
        "0A000",
        "PREPARE TRANSACTION of a transaction over several shards: shardgate commits it with two-phase commit itself",
    )
    .with_hint("Use COMMIT.")
}

/// `name` as a quoted identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Session {
    /// The transaction's other shards, when it spans several.
    pub(super) fn cross(&self) -> Option<&CrossTx> {
        self.shard_pools.as_deref()?.cross.as_deref()
    }

    pub(super) fn cross_mut(&mut self) -> Option<&mut CrossTx> {
        self.shard_pools.as_deref_mut()?.cross.as_deref_mut()
    }

    pub(super) fn take_cross(&mut self) -> Option<Box<CrossTx>> {
        self.shard_pools.as_deref_mut()?.cross.take()
    }

    /// Whether the client's transaction may take in shard `t` now: an explicit transaction
    /// (its BEGIN sent) or an extended-protocol batch's implicit one, in transaction pooling,
    /// on a database that allows it.
    pub(super) fn may_join(&self) -> bool {
        let implicit = self.tx_status == b'I' && self.unsynced;
        if self.client.mode != PoolMode::Transaction
            || !(matches!(self.tx_status, b'T' | b'E') || implicit)
            || self.held_begin.is_some()
            || self.pinned
        {
            return false;
        }
        self.may_span_shards()
    }

    /// Whether the client's database lets transactions span shards
    /// (`cross_shard_transactions: two_phase`).
    pub(super) fn may_span_shards(&self) -> bool {
        self.proxy
            .config
            .load()
            .databases
            .get(&self.client.database)
            .is_some_and(|d| {
                d.cross_shard_transactions == sgconfig::CrossShardTransactions::TwoPhase
            })
    }

    /// The transaction starts to span shards: the attached server's transaction as it runs
    /// (BEGIN's options, or a SET TRANSACTION since) is how the others begin, and its lock
    /// waits are bounded from now on.
    async fn start_cross(&mut self) -> Result<(), ProxyError> {
        if self.cross().is_some() {
            return Ok(());
        }
        let implicit = self.tx_status == b'I' && self.unsynced;
        let Some(conn) = self.server.as_mut() else {
            return Err(ProxyError::error("08006", "no shard holds the transaction"));
        };
        if implicit {
            // The batch's implicit transaction becomes a transaction block on its shard (a
            // BEGIN inside one does that), so that it can be prepared and committed with the
            // others at the Sync. The simple query drops the server's unnamed statement:
            // the session parses it again before it is used there.
            match conn.run_simple("BEGIN").await {
                Ok(None) => {}
                Ok(Some(e)) => {
                    return Err(ProxyError::error(
                        "08006",
                        format!(
                            "the batch's transaction could not span shards: {}",
                            e.message
                        ),
                    ))
                }
                Err(e) => return Err(ProxyError::error("08006", e.to_string())),
            }
            if let Some(p) = self.unnamed_parse.as_mut() {
                p.waits_for_bind = true;
            }
        }
        let conn = self.server.as_mut().expect("attached");
        let begin = match conn.query_column(TRANSACTION_MODES).await {
            Ok(Ok(rows)) => rows.into_iter().next().flatten(),
            _ => None,
        };
        let deadlock = self.proxy.config.load().two_phase.deadlock_timeout_ms;
        if deadlock > 0 {
            let _ = conn
                .run_simple(&format!("SET LOCAL lock_timeout = {deadlock}"))
                .await;
        }
        // Unreadable (it cannot be, short of a lost connection, which the next step finds):
        // the default characteristics.
        let begin = begin.unwrap_or_else(|| "BEGIN".to_owned());
        self.shard_pools.get_or_insert_with(Default::default).cross = Some(Box::new(CrossTx {
            parked: Vec::with_capacity(2),
            begin,
            portal: None,
            implicit,
        }));
        Ok(())
    }

    fn aborted() -> ProxyError {
        ProxyError::error(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    }

    /// Shard `t` joins the client's transaction and becomes the attached server; the one
    /// attached so far is parked in the transaction.
    pub(super) async fn join_shard(&mut self, t: &str) -> Result<(), ProxyError> {
        if self.tx_status == b'E' || self.error_since_ready {
            return Err(Self::aborted());
        }
        Box::pin(self.settle()).await?;
        let Some(from) = self.server_shard_name() else {
            return Ok(());
        };
        Box::pin(self.start_cross()).await?;
        let conn = self.server.take().expect("attached");
        crate::cancel::point(&self.client.cancel_slot, None);
        self.server_shard = None;
        self.swbuf.clear(); // nothing pending: a Flush at most
        let home = self.home_shard();
        let cross = self.cross_mut().expect("made above");
        cross.parked.push((from.as_str().into(), conn));
        if let Some(i) = cross.parked.iter().position(|(s, _)| &**s == t) {
            let (_, conn) = cross.parked.swap_remove(i);
            self.attach(conn);
            self.server_shard = (t != home).then(|| t.into());
            return Ok(());
        }
        match Box::pin(self.open_participant(t)).await {
            Ok(conn) => {
                self.attach(conn);
                self.server_shard = (t != home).then(|| t.into());
                Ok(())
            }
            Err(e) => {
                // The transaction stays where it was.
                let cross = self.cross_mut().expect("made above");
                let (s, conn) = cross.parked.pop().expect("parked above");
                // An implicit one stays, so that the batch's Sync rolls back the block the
                // first shard's implicit transaction became.
                if cross.parked.is_empty() && !cross.implicit {
                    self.take_cross();
                }
                self.attach(conn);
                self.server_shard = (*s != *home).then_some(s);
                Err(e)
            }
        }
    }

    /// Whether a statement for several shards may run inside the client's transaction, on
    /// its participants.
    pub(super) fn may_fan_out_in_tx(&self) -> bool {
        let held = self.held_begin.is_some()
            && self.tx_status == b'T'
            && self.client.mode == PoolMode::Transaction
            && !self.pinned;
        (held && self.may_span_shards()) || self.may_join()
    }

    /// The connections of a statement for several shards inside the client's transaction:
    /// the attached server for its shard, the participants for theirs, and shards that join
    /// now. A BEGIN still held begins on the home shard first.
    pub(super) async fn take_tx_legs(
        &mut self,
        shards: &[String],
    ) -> Result<Result<Legs, ProxyError>, End> {
        if self.tx_status == b'E' || self.error_since_ready {
            return Ok(Err(Self::aborted()));
        }
        if self.held_begin.is_some() {
            let home = self.home_shard();
            if let Err(e) = self.ensure_server_on(Some(home)).await {
                return Ok(Err(e));
            }
            self.begin_if_held();
            if let Err(e) = self.settle().await {
                return Err(End::fatal(e));
            }
            if self.tx_status != b'T' {
                return Ok(Err(Self::aborted()));
            }
        }
        if let Err(e) = Box::pin(self.start_cross()).await {
            return Ok(Err(e));
        }
        self.proxy.stats.fanout(&self.client.database);
        let own_shard = self.server_shard_name();
        let mut legs = Legs::new(shards, true);
        for shard in shards {
            if self.take_own_leg(&mut legs, own_shard.as_deref(), shard) {
                continue;
            }
            let cross = self.cross_mut().expect("started above");
            if let Some(i) = cross.parked.iter().position(|(s, _)| **s == **shard) {
                let (_, conn) = cross.parked.swap_remove(i);
                legs.conns.push(conn);
                continue;
            }
            match Box::pin(self.open_participant(shard)).await {
                Ok(conn) => legs.conns.push(conn),
                Err(e) => {
                    self.put_back(legs);
                    return Ok(Err(e));
                }
            }
        }
        self.cancels_reach(&legs);
        Ok(Ok(legs))
    }

    /// A connection of shard `t` inside a transaction begun as the client's was, with its
    /// savepoints.
    async fn open_participant(&mut self, t: &str) -> Result<PooledConn, ProxyError> {
        // By name, also for home: after a reload the client's own pool may be the old
        // home's.
        let pool = self.shard_pool(t)?;
        let mut conn = attach::checkout(&pool, &self.client).await?;
        // The client's settings, outside the transaction (as between transactions).
        sync_conn(&mut conn, &mut self.client, b'I').await?;
        let mut sql = self.cross().expect("joining").begin.clone();
        // The bound first, so that no ROLLBACK TO a savepoint undoes it.
        let deadlock = self.proxy.config.load().two_phase.deadlock_timeout_ms;
        if deadlock > 0 {
            sql.push_str(&format!("; SET LOCAL lock_timeout = {deadlock}"));
        }
        for name in self.client.settings.savepoint_names() {
            sql.push_str("; SAVEPOINT ");
            sql.push_str(&quote_ident(name));
        }
        match conn.run_simple(&sql).await {
            Ok(None) => Ok(conn),
            Ok(Some(e)) => Err(ProxyError {
                fatal: false,
                code: e.code.into(),
                message: format!(
                    "shard \"{t}\" could not join the transaction: {}",
                    e.message
                ),
                detail: e.detail,
                hint: e.hint,
            }),
            Err(e) => Err(ProxyError::error(
                "08006",
                format!("shard \"{t}\" could not join the transaction: {e}"),
            )),
        }
    }

    /// A simple query while the transaction spans shards: transaction control is done on
    /// every participant. `None`: not such a statement, route it as usual.
    pub(super) async fn cross_control(&mut self, sql: &[u8]) -> Option<Result<(), End>> {
        self.cross()?;
        if split_statements(&String::from_utf8_lossy(sql)).len() > 1 {
            let any_control = split_statements(&String::from_utf8_lossy(sql))
                .iter()
                .any(|s| control(s.as_bytes()).is_some());
            if any_control {
                return Some(self.simple_error(ProxyError::error(
                    "0A000",
                    "shardgate cannot end or mark a transaction over several shards inside a query of several statements",
                ).with_hint("Send COMMIT, ROLLBACK, SAVEPOINT, RELEASE and ROLLBACK TO as queries of their own.")));
            }
            return None;
        }
        match control(sql)? {
            Control::Refused => Some(self.simple_error(prepare_refused())),
            Control::Everywhere | Control::RollbackTo(_) => match self.on_parked(sql).await {
                // The attached server runs it as usual (and the session's savepoint stack
                // follows its answer).
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(self.simple_error(e)),
                Err(end) => Some(Err(end)),
            },
            Control::Commit { chain } => Some(self.end_cross(true, chain, false).await),
            Control::Rollback { chain } => Some(self.end_cross(false, chain, false).await),
        }
    }

    /// Runs a SAVEPOINT, RELEASE or ROLLBACK TO on every parked participant.
    async fn on_parked(&mut self, sql: &[u8]) -> Result<Result<(), ProxyError>, End> {
        if let Err(e) = self.settle().await {
            return Err(End::fatal(e));
        }
        let text = String::from_utf8_lossy(sql).into_owned();
        let parked = &mut self.cross_mut().expect("checked").parked;
        for (shard, conn) in parked.iter_mut() {
            match conn.run_simple(&text).await {
                Ok(None) => {}
                Ok(Some(e)) => {
                    return Ok(Err(ProxyError {
                        fatal: false,
                        code: e.code.into(),
                        message: format!("on shard \"{shard}\": {}", e.message),
                        detail: e.detail,
                        hint: e.hint,
                    }))
                }
                Err(e) => {
                    return Err(End::ServerGone(format!(
                        "shard \"{shard}\" of the transaction: {e}"
                    )))
                }
            }
        }
        Ok(Ok(()))
    }

    /// A Bind while the transaction spans shards, of statement text `sql`: transaction
    /// control is done on every participant (COMMIT and ROLLBACK at their Execute).
    /// `None`: not such a statement, bind it as usual.
    pub(super) async fn cross_bind(
        &mut self,
        sql: &[u8],
        portal: &[u8],
    ) -> Option<Result<(), End>> {
        let Some(kind) = control(sql) else {
            // A Bind of another statement to the portal of an earlier COMMIT replaces it.
            if let Some(c) = self.cross_mut() {
                if c.portal.as_ref().is_some_and(|(p, _, _)| **p == *portal) {
                    c.portal = None;
                }
            }
            return None;
        };
        match kind {
            Control::Refused => Some(self.extended_error(prepare_refused())),
            Control::Everywhere | Control::RollbackTo(_) => match self.on_parked(sql).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(self.extended_error(e)),
                Err(end) => Some(Err(end)),
            },
            Control::Commit { chain } | Control::Rollback { chain } => {
                let commit = matches!(control(sql), Some(Control::Commit { .. }));
                self.cross_mut().expect("checked").portal = Some((portal.into(), commit, chain));
                self.push_synthetic(Expect::Synthetic(tag::BIND_COMPLETE));
                Some(Ok(()))
            }
        }
    }

    /// A Describe of the portal of a COMMIT or ROLLBACK bound while the transaction spans
    /// shards: answered here.
    pub(super) fn describes_cross_portal(&mut self, kind: u8, name: &[u8]) -> bool {
        let ours = kind == b'P'
            && self
                .cross()
                .and_then(|c| c.portal.as_ref())
                .is_some_and(|(p, _, _)| &**p == name);
        if ours {
            self.push_synthetic(Expect::SyntheticFrame(NO_DATA));
        }
        ours
    }

    /// An Execute of that portal: the transaction ends on every shard; the client's Sync
    /// brings the ReadyForQuery.
    pub(super) async fn executes_cross_portal(&mut self, frame: &Frame) -> Result<bool, End> {
        let Some((p, commit, chain)) = self.cross().and_then(|c| c.portal.clone()) else {
            return Ok(false);
        };
        let (portal, _) = messages::execute_view(frame).map_err(malformed)?;
        if *p != *portal {
            return Ok(false);
        }
        self.end_cross(commit, chain, true).await?;
        Ok(true)
    }

    /// COMMIT or ROLLBACK of a transaction over several shards, answered to the client as
    /// PostgreSQL answers it.
    /// `extended`: run by an Execute, whose Sync brings the ReadyForQuery.
    pub(super) async fn end_cross(
        &mut self,
        commit: bool,
        chain: bool,
        extended: bool,
    ) -> Result<(), End> {
        self.end_cross_as(commit, chain, extended, false).await
    }

    /// [`Self::end_cross`]; `implicit`: the end of a batch's implicit transaction, which no
    /// statement of the client's answers.
    async fn end_cross_as(
        &mut self,
        commit: bool,
        chain: bool,
        extended: bool,
        implicit: bool,
    ) -> Result<(), End> {
        if let Err(e) = self.settle().await {
            return Err(End::fatal(e));
        }
        let cross = self
            .take_cross()
            .expect("a transaction over several shards");
        let cross_begin = cross.begin;
        let mut parked = cross.parked;
        let failed = self.tx_status == b'E' || self.error_since_ready;
        let db = self.client.database.clone();
        let attached = self.server_shard_name();
        let attached_field = self.server_shard.take();
        let mut server = self.server.take();
        let mut names: Vec<String> = parked.iter().map(|(s, _)| s.to_string()).collect();
        let mut parts: Vec<twophase::Participant<'_>> = parked
            .iter_mut()
            .zip(names.iter())
            .map(|((_, c), n)| twophase::Participant {
                shard: n.as_str(),
                conn: c,
            })
            .collect();
        let attached_name = attached.unwrap_or_default();
        if let Some(s) = server.as_mut() {
            parts.push(twophase::Participant {
                shard: attached_name.as_str(),
                conn: s,
            });
        }
        let coordinator = parts.len().saturating_sub(1);
        let (result, clean) = if commit && !failed {
            let out = twophase::commit(&db, &mut parts, coordinator).await;
            (out.result, out.clean)
        } else {
            let ok = twophase::rollback_all(&mut parts).await;
            (Ok("ROLLBACK"), ok)
        };
        drop(parts);
        names.clear();
        // The attached connection (last) stays attached and goes back as usual; the others
        // go back now when clean.
        let attached_clean = server.is_some() && clean.last().copied().unwrap_or(false);
        for ((_, conn), ok) in parked.into_iter().zip(clean) {
            if ok {
                conn.release();
            }
        }
        if let Some(s) = server {
            if attached_clean {
                self.server = Some(s);
                self.server_shard = attached_field;
            } else {
                drop(s);
            }
        }
        if self.server.is_none() {
            crate::cancel::point(&self.client.cancel_slot, None);
        }
        self.tx_status = b'I';
        let committed = matches!(result, Ok("COMMIT"));
        if committed {
            self.client.settings.commit();
        } else {
            self.roll_back_settings();
        }
        self.mirror_settings();
        if let Some(server) = self.server.as_mut() {
            server.prepared.batch_done();
        }
        let ended_ok = result.is_ok();
        match result {
            // An implicit transaction ends without a statement of the client's to answer.
            Ok(_) if implicit => {}
            Ok(tag) => self.push_synthetic(Expect::SyntheticDone(tag)),
            Err(e) => {
                self.proxy.stats.error(&self.client.database, &e.code);
                self.push_synthetic(Expect::SyntheticError(Box::new(e)));
            }
        }
        if chain && ended_ok {
            // A new transaction with the same characteristics, held like a BEGIN (not after
            // a commit that failed: PostgreSQL ends idle then).
            let mut b = BytesMut::new();
            messages::query(&mut b, &cross_begin);
            self.held_begin = Some(Box::new(b.freeze()));
            self.tx_status = b'T';
        }
        if !extended {
            self.push_synthetic(Expect::SyntheticReady);
        }
        Ok(())
    }

    /// The Sync of a batch whose implicit transaction spans shards: it commits on every
    /// shard, unless something in the batch failed; an error of the commit is the batch's.
    pub(super) async fn end_implicit_cross(&mut self) -> Result<(), End> {
        if !self.cross().is_some_and(|c| c.implicit) {
            return Ok(());
        }
        // Every answer of the batch first: an error in it means no commit.
        if let Err(e) = self.settle().await {
            return Err(End::fatal(e));
        }
        let commit = !self.error_since_ready;
        if !commit {
            // After an error the attached server skips everything up to a Sync: it gets one
            // of its own before the ROLLBACK.
            if let Some(server) = self.server.as_mut() {
                let mut sync = BytesMut::new();
                messages::empty_message(&mut sync, tag::SYNC);
                let lost = |e: std::io::Error| End::ServerGone(e.to_string());
                server.send(&sync).await.map_err(lost)?;
                loop {
                    let f = server.read_frame().await.map_err(lost)?;
                    if f.tag() == tag::READY_FOR_QUERY {
                        break;
                    }
                }
            }
        }
        self.end_cross_as(commit, false, true, true).await
    }

    /// The session ends inside a transaction over several shards: every parked participant
    /// rolls back (one that cannot is closed, which rolls it back too).
    pub(super) async fn abandon_cross(&mut self) {
        let Some(cross) = self.take_cross() else {
            return;
        };
        for (_, mut conn) in cross.parked {
            let ok = tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_simple("ROLLBACK"))
                .await
                .is_ok_and(|r| matches!(r, Ok(None)));
            if ok {
                conn.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised() {
        assert_eq!(control(b"COMMIT"), Some(Control::Commit { chain: false }));
        assert_eq!(
            control(b"end work;"),
            Some(Control::Commit { chain: false })
        );
        assert_eq!(
            control(b"COMMIT AND CHAIN"),
            Some(Control::Commit { chain: true })
        );
        assert_eq!(
            control(b"rollback transaction and no chain"),
            Some(Control::Rollback { chain: false })
        );
        assert_eq!(
            control(b"ROLLBACK TO SAVEPOINT a"),
            Some(Control::RollbackTo("a".into()))
        );
        assert_eq!(
            control(b"rollback to a"),
            Some(Control::RollbackTo("a".into()))
        );
        assert_eq!(control(b"SAVEPOINT a"), Some(Control::Everywhere));
        assert_eq!(control(b"RELEASE a"), Some(Control::Everywhere));
        assert_eq!(control(b"PREPARE TRANSACTION 'x'"), Some(Control::Refused));
        assert_eq!(control(b"COMMIT PREPARED 'x'"), Some(Control::Refused));
        assert_eq!(control(b"SELECT 1"), None);
        assert_eq!(control(b"UPDATE t SET a = 1"), None);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
