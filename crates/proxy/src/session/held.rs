//! A BEGIN held back until a statement picks the shard its transaction runs on, and the
//! statements the proxy answers while it is held (COMMIT or ROLLBACK of a transaction no
//! server saw).

use super::*;

/// ParameterDescription of a statement without parameters.
pub(super) const NO_PARAMETERS: &[u8] = &[tag::PARAMETER_DESCRIPTION, 0, 0, 0, 6, 0, 0];
/// NoData.
pub(super) const NO_DATA: &[u8] = &[tag::NO_DATA, 0, 0, 0, 4];

impl Session {
    /// Whether a BEGIN arriving now may be held: between transactions and batches, in
    /// transaction pooling, on a database that routes. A BEGIN pipelined behind statements
    /// still answering waits for them; once they have, their server goes back.
    pub(super) async fn may_hold_begin(&mut self) -> Result<bool, End> {
        if self.tx_status != b'I'
            || self.held_begin.is_some()
            || self.client.mode != PoolMode::Transaction
            || self.unsynced
            || !self.routes()
        {
            return Ok(false);
        }
        if self.server.is_some() {
            if let Err(e) = self.settle().await {
                return Err(End::fatal(e));
            }
        }
        Ok(self.server.is_none() && self.tx_status == b'I')
    }

    /// A Bind of the held extended-protocol BEGIN: answered here.
    pub(super) fn bind_held_begin(&mut self, b: &BindView<'_>) -> Result<(), End> {
        let count = |at: usize| {
            b.rest
                .get(at..at + 2)
                .map_or(0, |c| i16::from_be_bytes([c[0], c[1]]).max(0) as usize)
        };
        let formats = count(0);
        if count(2 + 2 * formats) != 0 {
            // Parameters for a statement that takes none: as PostgreSQL answers.
            self.names().ext_begin = None;
            return self.extended_error(ProxyError::error(
                "08P01",
                "bind message supplies parameters, but prepared statement \"\" requires 0",
            ));
        }
        if let Some(held) = self.names.as_deref_mut().and_then(|n| n.ext_begin.as_mut()) {
            held.portal = Some(b.portal.into());
        }
        self.push_synthetic(Expect::Synthetic(tag::BIND_COMPLETE));
        Ok(())
    }

    /// A Describe of the held extended-protocol BEGIN (statement or portal): answered here.
    pub(super) fn describes_held_begin(&mut self, d: &TargetView<'_>) -> bool {
        let Some(held) = self.names.as_deref().and_then(|n| n.ext_begin.as_ref()) else {
            return false;
        };
        match d.kind {
            b'S' if d.name.is_empty() => {
                self.push_synthetic(Expect::SyntheticFrame(NO_PARAMETERS));
                self.push_synthetic(Expect::SyntheticFrame(NO_DATA));
                true
            }
            b'P' if held.portal.as_deref() == Some(d.name) => {
                self.push_synthetic(Expect::SyntheticFrame(NO_DATA));
                true
            }
            _ => false,
        }
    }

    /// An Execute of the held extended-protocol BEGIN's portal: the transaction begins for
    /// the client, and the BEGIN is held until a statement picks the shard.
    pub(super) fn executes_held_begin(&mut self, frame: &Frame) -> Result<bool, End> {
        let Some(held) = self.names.as_deref().and_then(|n| n.ext_begin.as_ref()) else {
            return Ok(false);
        };
        let (portal, _) = messages::execute_view(frame).map_err(malformed)?;
        if held.portal.as_deref() != Some(portal) {
            return Ok(false);
        }
        let mut begin = BytesMut::new();
        messages::query(&mut begin, &String::from_utf8_lossy(&held.text));
        // A portal runs once: a second Execute of it returns nothing, as on PostgreSQL.
        if let Some(h) = self.names.as_deref_mut().and_then(|n| n.ext_begin.as_mut()) {
            h.portal = None;
        }
        if self.tx_status != b'I' || self.held_begin.is_some() {
            // Already in a transaction: PostgreSQL warns and goes on.
            self.push_synthetic(Expect::SyntheticDone("BEGIN"));
            return Ok(true);
        }
        self.held_begin = Some(Box::new(begin.freeze()));
        self.tx_status = b'T';
        self.push_synthetic(Expect::SyntheticDone("BEGIN"));
        Ok(true)
    }

    /// Sends the held-back BEGIN ahead of the statement that picked the attached server.
    pub(super) fn begin_if_held(&mut self) {
        if self.server.is_none() {
            return;
        }
        if let Some(begin) = self.held_begin.take() {
            self.swbuf.extend_from_slice(&begin);
            self.pending.push_back(Expect::HeldBegin);
        }
    }

    /// A failed transaction that never reached a server accepts nothing but its end.
    pub(super) fn held_refusal(&self) -> Option<ProxyError> {
        (self.tx_status == b'E').then(|| {
            ProxyError::error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            )
        })
    }

    /// A query while BEGIN is held: COMMIT or ROLLBACK end the transaction no server saw;
    /// after an error only those are accepted. `None`: go on and run it.
    pub(super) fn end_held(&mut self, sql: &[u8]) -> Option<Result<(), End>> {
        use super::cross::{control, Control};
        let (rollback, chain) = match control(sql) {
            Some(Control::Commit { chain }) => (false, chain),
            Some(Control::Rollback { chain }) => (true, chain),
            Some(Control::RollbackTo(name)) => {
                // No savepoint can exist in a transaction no statement has run in.
                return Some(self.simple_error(ProxyError::error(
                    "3B001",
                    format!("savepoint \"{name}\" does not exist"),
                )));
            }
            // Anything else (SAVEPOINT, COMMIT PREPARED, ...): the server judges it.
            _ => return self.held_refusal().map(|e| self.simple_error(e)),
        };
        let tag = if self.tx_status == b'E' || rollback {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        if chain {
            // A new transaction with the same characteristics: the same BEGIN stays held.
            self.tx_status = b'T';
        } else {
            self.held_begin = None;
            self.tx_status = b'I';
        }
        self.push_synthetic(Expect::SyntheticDone(tag));
        self.push_synthetic(Expect::SyntheticReady);
        Some(Ok(()))
    }
}

/// A query that is only `BEGIN` or `START TRANSACTION` with valid transaction modes: the
/// proxy may answer it itself (anything else goes to a server, which judges it).
pub(crate) fn lone_begin(sql: &[u8]) -> bool {
    use router::lexer::Token;
    // A quick look first: this runs for every simple query between transactions.
    let head = sql.trim_ascii_start();
    let starts = |w: &[u8]| {
        head.get(..w.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(w))
    };
    if !(starts(b"begin") || starts(b"start") || starts(b"/*") || starts(b"--")) {
        return false;
    }
    let text = String::from_utf8_lossy(sql);
    let words: Vec<Token<'_>> = router::lexer::Lexer::new(&text).collect();
    let mut words: &[Token<'_>] = &words;
    while let [rest @ .., Token::Semicolon] = words {
        words = rest;
    }
    let kw = |t: &Token<'_>, k: &str| t.is_keyword(k);
    let rest = match words {
        [b, t, rest @ ..] if kw(b, "begin") && (kw(t, "work") || kw(t, "transaction")) => rest,
        [b, rest @ ..] if kw(b, "begin") => rest,
        [s, t, rest @ ..] if kw(s, "start") && kw(t, "transaction") => rest,
        _ => return false,
    };
    // transaction_mode [, ...]: ISOLATION LEVEL ..., READ WRITE | READ ONLY, [NOT] DEFERRABLE
    let mut i = 0;
    let at = |i: usize, k: &str| rest.get(i).is_some_and(|t| t.is_keyword(k));
    while i < rest.len() {
        if i > 0 {
            if rest[i] == Token::Symbol(",") {
                i += 1;
            }
            if i >= rest.len() {
                return false;
            }
        }
        if at(i, "isolation") && at(i + 1, "level") {
            i += 2;
            if at(i, "serializable") {
                i += 1;
            } else if (at(i, "repeatable") && at(i + 1, "read"))
                || (at(i, "read") && (at(i + 1, "committed") || at(i + 1, "uncommitted")))
            {
                i += 2;
            } else {
                return false;
            }
        } else if at(i, "read") && (at(i + 1, "write") || at(i + 1, "only")) {
            i += 2;
        } else if at(i, "deferrable") {
            i += 1;
        } else if at(i, "not") && at(i + 1, "deferrable") {
            i += 2;
        } else {
            return false;
        }
    }
    true
}
