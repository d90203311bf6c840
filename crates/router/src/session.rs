//! Statements that change session state, which transaction pooling must track: a client's
//! `SET` must follow it to whichever server connection its next transaction gets.

use crate::lexer::{Lexer, Token};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION] name {TO|=} ...`, `SET TIME ZONE ...`, `SET ROLE ...`: `name` is the
    /// lower-cased parameter, `sql` the statement that re-applies it.
    Set { name: String, sql: String },
    /// `RESET name`
    Reset { name: String },
    /// `RESET ALL`
    ResetAll,
    /// `DISCARD ALL`
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`
    DeallocateAll,
    /// `LISTEN`/`UNLISTEN`: needs a session of its own.
    Listen,
    /// `SAVEPOINT name`: settings made after it are undone by a rollback to it.
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`
    Release(String),
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`
    RollbackTo(String),
    /// Anything else.
    Other,
}

fn ident(t: &Token<'_>) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::QuotedIdent(q) => Some(q[1..q.len() - 1].replace("\"\"", "\"")),
        _ => None,
    }
}

/// Classifies one statement (as split by [`crate::lexer::split_statements`]).
pub fn classify(stmt: &str) -> SessionCommand {
    let mut lx = Lexer::new(stmt);
    let Some(first) = lx.next() else {
        return SessionCommand::Other;
    };
    if first.is_keyword("listen") || first.is_keyword("unlisten") {
        return SessionCommand::Listen;
    }
    if first.is_keyword("savepoint") {
        return match lx.next().as_ref().and_then(ident) {
            Some(name) => SessionCommand::Savepoint(name),
            None => SessionCommand::Other,
        };
    }
    if first.is_keyword("release") {
        let mut t = lx.next();
        if t.as_ref().is_some_and(|t| t.is_keyword("savepoint")) {
            t = lx.next();
        }
        return match t.as_ref().and_then(ident) {
            Some(name) => SessionCommand::Release(name),
            None => SessionCommand::Other,
        };
    }
    if first.is_keyword("rollback") || first.is_keyword("abort") {
        let mut t = lx.next();
        if t.as_ref()
            .is_some_and(|t| t.is_keyword("work") || t.is_keyword("transaction"))
        {
            t = lx.next();
        }
        if !t.as_ref().is_some_and(|t| t.is_keyword("to")) {
            return SessionCommand::Other;
        }
        let mut t = lx.next();
        if t.as_ref().is_some_and(|t| t.is_keyword("savepoint")) {
            t = lx.next();
        }
        return match t.as_ref().and_then(ident) {
            Some(name) => SessionCommand::RollbackTo(name),
            None => SessionCommand::Other,
        };
    }
    if first.is_keyword("select") {
        return set_config(lx);
    }
    if first.is_keyword("discard") {
        return match lx.next() {
            Some(t) if t.is_keyword("all") => SessionCommand::DiscardAll,
            _ => SessionCommand::Other,
        };
    }
    if first.is_keyword("deallocate") {
        let mut t = lx.next();
        if t.is_some_and(|t| t.is_keyword("prepare")) {
            t = lx.next();
        }
        return match t {
            Some(t) if t.is_keyword("all") => SessionCommand::DeallocateAll,
            _ => SessionCommand::Other,
        };
    }
    if first.is_keyword("reset") {
        let Some(t) = lx.next() else {
            return SessionCommand::Other;
        };
        if t.is_keyword("all") {
            return SessionCommand::ResetAll;
        }
        let Some(mut name) = ident(&t) else {
            return SessionCommand::Other;
        };
        if name == "time" {
            name = "timezone".into();
        } else if name == "session" {
            // RESET SESSION AUTHORIZATION
            name = "session_authorization".into();
        }
        return SessionCommand::Reset {
            name: full_name(name, &mut lx),
        };
    }
    if !first.is_keyword("set") {
        return SessionCommand::Other;
    }
    let Some(mut t) = lx.next() else {
        return SessionCommand::Other;
    };
    if t.is_keyword("local") || t.is_keyword("transaction") || t.is_keyword("constraints") {
        return SessionCommand::Other;
    }
    if t.is_keyword("session") {
        match lx.next() {
            Some(n) if n.is_keyword("characteristics") => {
                // SET SESSION CHARACTERISTICS AS TRANSACTION <modes>: the defaults of later
                // transactions (default_transaction_isolation, _read_only, _deferrable).
                let mut names = Vec::new();
                for t in lx {
                    if t.is_keyword("isolation") {
                        names.push("default_transaction_isolation");
                    } else if t.is_keyword("only") || t.is_keyword("write") {
                        names.push("default_transaction_read_only");
                    } else if t.is_keyword("deferrable") {
                        names.push("default_transaction_deferrable");
                    }
                }
                if names.is_empty() {
                    return SessionCommand::Other;
                }
                return SessionCommand::Set {
                    name: names.join("+"),
                    sql: stmt.to_owned(),
                };
            }
            Some(n) if n.is_keyword("authorization") => {
                return SessionCommand::Set {
                    name: "session_authorization".into(),
                    sql: stmt.to_owned(),
                }
            }
            Some(n) => t = n,
            None => return SessionCommand::Other,
        }
    }
    let Some(name) = ident(&t) else {
        return SessionCommand::Other;
    };
    let name = match name.as_str() {
        "time" => "timezone".to_owned(),
        "names" => "client_encoding".to_owned(),
        "xml" => "xmloption".to_owned(),
        _ => full_name(name, &mut lx),
    };
    SessionCommand::Set {
        name,
        sql: stmt.to_owned(),
    }
}

/// `SELECT [pg_catalog.]set_config('name', 'value', false)` with constant arguments: the
/// session setting it makes, as a SET would (`is_local` true lasts only to the end of the
/// transaction, as SET LOCAL, and needs no tracking). Anything else is not tracked.
fn set_config(lx: Lexer<'_>) -> SessionCommand {
    let tokens: Vec<Token<'_>> = lx.filter(|t| *t != Token::Semicolon).collect();
    let rest: &[Token<'_>] = match tokens.as_slice() {
        [s, Token::Symbol("."), rest @ ..] if s.is_keyword("pg_catalog") => rest,
        all => all,
    };
    let [f, Token::Symbol("("), Token::String(name), Token::Symbol(","), Token::String(value), Token::Symbol(","), local, Token::Symbol(")")] =
        rest
    else {
        return SessionCommand::Other;
    };
    let plain = |s: &str| s.starts_with('\'') && s.ends_with('\'') && s.len() >= 2;
    if !f.is_keyword("set_config") || !plain(name) || !plain(value) || !local.is_keyword("false") {
        return SessionCommand::Other;
    }
    let unquoted = name[1..name.len() - 1]
        .replace("''", "'")
        .to_ascii_lowercase();
    SessionCommand::Set {
        name: unquoted,
        sql: format!("SELECT pg_catalog.set_config({name}, {value}, false)"),
    }
}

/// Appends `.part` for dotted custom parameters (`SET myapp.user = ...`).
fn full_name(mut name: String, lx: &mut Lexer<'_>) -> String {
    loop {
        let mut probe = lx.clone();
        if probe.next() != Some(Token::Symbol(".")) {
            return name;
        }
        match probe.next().as_ref().and_then(ident) {
            Some(part) => {
                name.push('.');
                name.push_str(&part);
                *lx = probe;
            }
            None => return name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_name(s: &str) -> String {
        match classify(s) {
            SessionCommand::Set { name, sql } => {
                assert_eq!(sql, s);
                name
            }
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn sets_are_recognised() {
        assert_eq!(set_name("SET search_path TO a, b"), "search_path");
        assert_eq!(
            set_name("set SESSION application_name = 'x'"),
            "application_name"
        );
        assert_eq!(set_name("SET TIME ZONE 'UTC'"), "timezone");
        assert_eq!(set_name("/* c */ SET \"DateStyle\" = ISO"), "DateStyle");
        assert_eq!(set_name("SET NAMES 'UTF8'"), "client_encoding");
        assert_eq!(set_name("set myapp.tenant = 7"), "myapp.tenant");
        assert_eq!(
            set_name("SET SESSION AUTHORIZATION bob"),
            "session_authorization"
        );
        assert_eq!(set_name("SET ROLE bob"), "role");
    }

    #[test]
    fn transaction_scoped_sets_are_not_tracked() {
        assert_eq!(
            set_name("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            "default_transaction_read_only"
        );
        assert_eq!(
            set_name(
                "set session characteristics as transaction isolation level serializable, not deferrable"
            ),
            "default_transaction_isolation+default_transaction_deferrable"
        );
        for s in [
            "SET LOCAL search_path TO a",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "select 'SET a = 1'",
        ] {
            assert_eq!(classify(s), SessionCommand::Other, "{s}");
        }
    }

    #[test]
    fn resets_discards_and_listen() {
        assert_eq!(classify("RESET ALL"), SessionCommand::ResetAll);
        assert_eq!(
            classify("reset search_path"),
            SessionCommand::Reset {
                name: "search_path".into()
            }
        );
        assert_eq!(
            classify("reset myapp.tenant"),
            SessionCommand::Reset {
                name: "myapp.tenant".into()
            }
        );
        assert_eq!(classify("DISCARD ALL"), SessionCommand::DiscardAll);
        assert_eq!(classify("DISCARD PLANS"), SessionCommand::Other);
        assert_eq!(classify("DEALLOCATE ALL"), SessionCommand::DeallocateAll);
        assert_eq!(classify("LISTEN chan"), SessionCommand::Listen);
        assert_eq!(classify("unlisten *"), SessionCommand::Listen);
    }

    #[test]
    fn set_config_with_constants_is_a_set() {
        assert_eq!(
            classify("SELECT set_config('search_path', 'a, b', false)"),
            SessionCommand::Set {
                name: "search_path".into(),
                sql: "SELECT pg_catalog.set_config('search_path', 'a, b', false)".into()
            }
        );
        assert!(matches!(
            classify("select pg_catalog.set_config('My.Guc', 'x', false);"),
            SessionCommand::Set { ref name, .. } if name == "my.guc"
        ));
        for other in [
            "SELECT set_config('search_path', 'a', true)",
            "SELECT set_config('search_path', $1, false)",
            "SELECT set_config('a', 'b', false), 1",
            "SELECT 1",
        ] {
            assert_eq!(classify(other), SessionCommand::Other, "{other}");
        }
    }

    #[test]
    fn savepoints() {
        assert_eq!(
            classify("SAVEPOINT a"),
            SessionCommand::Savepoint("a".into())
        );
        assert_eq!(
            classify("release savepoint \"B\""),
            SessionCommand::Release("B".into())
        );
        assert_eq!(classify("RELEASE a"), SessionCommand::Release("a".into()));
        assert_eq!(
            classify("ROLLBACK TO SAVEPOINT a"),
            SessionCommand::RollbackTo("a".into())
        );
        assert_eq!(
            classify("rollback work to A"),
            SessionCommand::RollbackTo("a".into())
        );
        assert_eq!(classify("ROLLBACK"), SessionCommand::Other);
        assert_eq!(classify("ROLLBACK PREPARED 'x'"), SessionCommand::Other);
    }
}
