//! Which statements are reads a replica may answer: a query that changes nothing
//! ([`Kind::Read`]), takes no row locks (`FOR UPDATE/SHARE`), creates nothing
//! (`SELECT ... INTO`), and calls no function known to write or to act on the server
//! session or the primary (sequences, advisory locks, large objects, `set_config`,
//! `pg_notify`, WAL functions, ...). Anything else goes to the primary. A user function
//! that writes is not seen: on a replica it fails (25006) rather than answer wrongly, and
//! `/* shardgate: role=primary */` sends it to the primary.

use crate::analyze::{Analysis, Kind};
use crate::lexer::{Lexer, Token};

/// Functions that write, lock, or need the primary or the caller's own server session.
const WRITERS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "txid_current",
    "pg_current_xact_id",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
    "set_config",
    "pg_notify",
    "pg_export_snapshot",
    "lowrite",
    "pg_logical_emit_message",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
];

/// Prefixes of such functions' names.
const WRITER_PREFIXES: &[&str] = &[
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "pg_stat_reset",
    "pg_replication_",
    "pg_create_",
    "pg_drop_",
    "pg_copy_",
    "dblink",
];

/// Whether `sql` (one statement, analysed as `analysis`) is a read a replica may answer.
pub fn is_read(sql: &str, analysis: &Analysis) -> bool {
    if analysis.kind != Kind::Read || analysis.cursor || analysis.refuse.is_some() {
        return false;
    }
    let mut lx = Lexer::new(sql);
    let Some(first) = lx.next() else {
        return false;
    };
    let query = ["select", "with", "values", "table"]
        .iter()
        .any(|k| first.is_keyword(k))
        || first == Token::Symbol("(");
    if !query {
        return false; // COPY, EXPLAIN (ANALYZE runs the statement), SHOW, ...
    }
    let mut prev = first;
    for t in lx {
        if t.is_keyword("into") {
            return false;
        }
        if prev.is_keyword("for")
            && ["update", "share", "no", "key"]
                .iter()
                .any(|k| t.is_keyword(k))
        {
            return false;
        }
        if t == Token::Symbol("(") {
            if let Token::Word(w) | Token::QuotedIdent(w) = prev {
                let name = w.trim_matches('"').to_ascii_lowercase();
                if WRITERS.contains(&name.as_str())
                    || WRITER_PREFIXES.iter().any(|p| name.starts_with(p))
                {
                    return false;
                }
            }
        }
        prev = t;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str) -> bool {
        // What does not parse is no read either (the proxy sends it to the primary).
        crate::analyze::analyze(sql, &|_| None).is_ok_and(|a| is_read(sql, &a))
    }

    #[test]
    fn reads_and_the_rest() {
        for r in [
            "SELECT 1",
            "select * from t where id = 3",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1), (2)",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT count(*) FROM t JOIN u USING (id)",
            "SELECT inet_server_port()",
            "SELECT 'nextval(' FROM t",
        ] {
            assert!(read(r), "{r}");
        }
        for w in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * INTO t2 FROM t",
            "SELECT nextval('s')",
            "SELECT pg_catalog.setval('s', 1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_xact_lock(1)",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT lo_create(0)",
            "SELECT pg_notify('c', 'x')",
            "SELECT txid_current()",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "COPY t TO STDOUT",
            "EXPLAIN ANALYZE SELECT 1",
            "SET x = 1",
            "DECLARE c CURSOR FOR SELECT 1",
            "CREATE TABLE t (a int)",
        ] {
            assert!(!read(w), "{w}");
        }
    }
}
