//! Reads on replicas, for a session: each statement is noted as a read a replica may
//! answer, a write (the primary's, and the client's later reads must see it), or neither
//! (transaction control, SET). A read that starts a transaction outside any other (or a
//! `BEGIN READ ONLY` transaction) takes a replica's connection when the shard has a fit one;
//! after the client's write, only a replica known to have replayed past it (read-your-
//! writes by WAL position), or the primary.

use super::*;

/// How a statement counts for the read/write split.
pub(super) const NEUTRAL: u8 = 0;
pub(super) const READ: u8 = 1;
pub(super) const WRITE: u8 = 2;

impl Session {
    /// Notes the statement about to run (its text). Refused: a write in an extended batch
    /// that began with a read on a replica (nothing of the batch is committed anywhere;
    /// PostgreSQL would answer 25006 from the replica).
    pub(super) fn note_statement(&mut self, sql: &[u8]) -> Result<(), ProxyError> {
        self.read_intent = false;
        if !self.proxy.reads_on_replicas(&self.client.database) {
            return Ok(());
        }
        let class = self.classify(sql);
        self.note_class(class)
    }

    /// [`Self::note_statement`] for a prepared statement (classified once).
    pub(super) fn note_prepared(&mut self, stmt: &Statement) -> Result<(), ProxyError> {
        self.read_intent = false;
        if !self.proxy.reads_on_replicas(&self.client.database) {
            return Ok(());
        }
        let class = *stmt.read_class.get_or_init(|| self.classify(&stmt.query));
        self.note_class(class)
    }

    /// Something that needs the primary and may write (a function call message).
    pub(super) fn note_write(&mut self) {
        self.read_intent = false;
        self.wrote = true;
    }

    fn note_class(&mut self, class: u8) -> Result<(), ProxyError> {
        match class {
            READ => self.read_intent = true,
            WRITE => {
                self.wrote = true;
                if self.tx_status == b'I'
                    && self.held_begin.is_none()
                    && self.unsynced
                    && self.server.as_ref().is_some_and(|s| s.is_replica())
                {
                    return Err(ProxyError::error(
                        "0A000",
                        "this batch began with a read that runs on a replica, and this statement needs the primary",
                    )
                    .with_hint("Send a Sync after the read, or send the read to the primary: /* shardgate: role=primary */."));
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn classify(&self, sql: &[u8]) -> u8 {
        let text = String::from_utf8_lossy(sql);
        let config = self.proxy.config.load();
        let Some(db) = config.databases.get(&self.client.database) else {
            return WRITE;
        };
        let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
        let one = |st: &str| -> u8 {
            let Ok(hints) = router::hints::parse_hints(st) else {
                return WRITE;
            };
            match self
                .proxy
                .route_cache
                .route_in(self.scope(), st, &[], &keys)
            {
                Ok(r) => {
                    use router::analyze::Kind;
                    match r.analysis.kind {
                        Kind::Transaction | Kind::Session => NEUTRAL,
                        _ if !hints.primary && router::readonly::is_read(st, &r.analysis) => READ,
                        _ => WRITE,
                    }
                }
                Err(_) => WRITE,
            }
        };
        if !text.trim_end().trim_end_matches(';').contains(';') {
            return one(&text);
        }
        let classes: Vec<u8> = router::lexer::split_statements(&text)
            .into_iter()
            .map(one)
            .collect();
        if classes.contains(&WRITE) {
            WRITE
        } else if classes.contains(&READ) {
            READ
        } else {
            NEUTRAL
        }
    }

    /// A replica's pool for the read about to start a transaction on `shard`, when the
    /// read may go to one and one is fit.
    pub(super) fn replica_for(&mut self, shard: &str) -> Option<pool::Pool> {
        if !self.read_intent
            || self.server.is_some()
            || self.client.mode != PoolMode::Transaction
            || self.pinned
            || self.unsynced
            || self.cross().is_some()
        {
            return None;
        }
        match self.held_begin.as_deref() {
            None if self.tx_status == b'I' => {}
            Some(begin) if read_only_begin(begin) => {}
            _ => return None,
        }
        let now = self.proxy.epoch.elapsed().as_millis() as u64 + 1;
        if self.wrote {
            // The write has ended: the client was answered before it sent this read.
            self.wrote = false;
            self.last_write = now;
        }
        let config = self.proxy.config.load();
        let split = &config
            .databases
            .get(&self.client.database)?
            .read_write_split;
        let after = match split.read_your_writes {
            sgconfig::ReadYourWrites::Off => None,
            _ if self.last_write == 0 => None,
            sgconfig::ReadYourWrites::PrimaryAfterWrite => return None,
            sgconfig::ReadYourWrites::Lsn => {
                Some(self.proxy.epoch + std::time::Duration::from_millis(self.last_write))
            }
        };
        drop(config);
        self.proxy
            .read_pool(&self.client.database, &self.client.user, shard, after)
    }
}

/// Whether a held BEGIN opens a READ ONLY transaction a replica can run (not SERIALIZABLE,
/// which a standby refuses).
fn read_only_begin(begin: &[u8]) -> bool {
    let text = String::from_utf8_lossy(begin);
    let mut read_only = false;
    let mut prev = None;
    for t in router::lexer::Lexer::new(&text) {
        if t.is_keyword("serializable") {
            return false;
        }
        if t.is_keyword("only") && prev.is_some_and(|p: router::lexer::Token| p.is_keyword("read"))
        {
            read_only = true;
        }
        prev = Some(t);
    }
    read_only
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_only_begins() {
        assert!(super::read_only_begin(b"BEGIN READ ONLY"));
        assert!(super::read_only_begin(
            b"START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        ));
        assert!(!super::read_only_begin(b"BEGIN"));
        assert!(!super::read_only_begin(b"BEGIN READ WRITE"));
        assert!(!super::read_only_begin(
            b"BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"
        ));
    }
}
