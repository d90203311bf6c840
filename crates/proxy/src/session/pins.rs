//! Pinning under transaction pooling: a client that made server-session state which
//! outlives its transaction (temporary tables, WITH HOLD cursors, SQL-level PREPARE, LISTEN,
//! session advisory locks) keeps its server connection until that state is gone or it
//! leaves, so that the state works exactly as on PostgreSQL instead of leaking to whichever
//! client gets the connection next.
//!
//! The proxy does not parse such statements: a statement whose text may create or remove
//! such state (a cheap word check) marks the session, and when its transaction ends the
//! server itself is asked, in one query over its catalogs, whether any such state is left.

use super::*;

/// True when the server session holds state that outlives a transaction: any object in its
/// temporary schema, a holdable cursor, an SQL-level prepared statement, a LISTEN, a session
/// advisory lock.
const PROBE: &str = "SELECT (pg_catalog.pg_my_temp_schema() <> 0 AND ( \
    EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT FROM pg_catalog.pg_statistic_ext WHERE stxnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT FROM pg_catalog.pg_collation WHERE collnamespace = pg_catalog.pg_my_temp_schema()))) \
    OR EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) \
    OR EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) \
    OR EXISTS (SELECT FROM pg_catalog.pg_listening_channels()) \
    OR EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())";

impl Session {
    /// Whether pinning is on for this client (transaction pooling, `pool.pinning`).
    pub(super) fn pins(&self) -> bool {
        self.client.mode == PoolMode::Transaction && self.proxy.config.load().pool.pinning
    }

    /// A statement's text on its way to the server: whether the server must be asked at the
    /// end of its transaction.
    pub(super) fn note_pin_words(&mut self, sql: &[u8], words: Words) {
        if self.pin_check || self.client.mode != PoolMode::Transaction {
            return;
        }
        if words.may_pin() || (self.pinned && words.may_unpin()) {
            self.pin_check = self.pins();
        }
        if !self.loaded && words.load() && first_word(sql) == "load" && self.pins() {
            // A library LOADed into the server session cannot be unloaded: the client keeps
            // its connection for good.
            self.loaded = true;
            self.pin_check = true;
        }
    }

    /// Between transactions, with nothing in flight: asks the server whether its session
    /// holds state that outlives transactions, and pins or unpins the connection.
    pub(super) async fn check_pins(&mut self) -> Result<(), End> {
        self.pin_check = false;
        let Some(server) = self.server.as_mut() else {
            self.set_pinned(false);
            return Ok(());
        };
        match server.query_bool(PROBE).await {
            Ok(Some(held)) => {
                if held != self.pinned {
                    tracing::debug!(
                        client = self.client.id,
                        pinned = held,
                        "server session state"
                    );
                }
                self.set_pinned(held || self.loaded);
                Ok(())
            }
            // The probe failed (a role without access, an aborted state): keep the connection.
            Ok(None) => {
                self.set_pinned(true);
                Ok(())
            }
            Err(e) => Err(End::ServerGone(e.to_string())),
        }
    }

    /// Pins or unpins, keeping the proxy's count of pinned clients.
    pub(super) fn set_pinned(&mut self, pinned: bool) {
        use std::sync::atomic::Ordering;
        if pinned != self.pinned {
            if pinned {
                self.proxy.pinned.fetch_add(1, Ordering::Relaxed);
            } else {
                self.proxy.pinned.fetch_sub(1, Ordering::Relaxed);
            }
            self.pinned = pinned;
        }
    }

    /// The connection may go back to the pool now, if nothing keeps it.
    pub(super) fn releasable(&self) -> bool {
        self.client.mode == PoolMode::Transaction
            && (self.tx_status == b'I' || self.held_begin.is_some())
            && !self.unsynced
            && !self.needs_sync
            && self.pending.is_empty()
            && self.server.as_ref().is_some_and(|s| s.read_buf.is_empty())
    }
}
