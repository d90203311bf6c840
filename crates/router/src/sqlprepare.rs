//! SQL-level prepared statements (`PREPARE name [(types)] AS query`, `EXECUTE name(args)`,
//! `DEALLOCATE name`) on a database that routes: the proxy keeps them itself, and each
//! EXECUTE becomes the query with its arguments in place of `$1`, `$2`, ..., routed by
//! them like any statement. The statement then follows the client from one server
//! connection to the next, as protocol-level prepared statements do.

use crate::lexer::{Lexer, Token};

/// `PREPARE name [(types)] AS query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlPrepare {
    /// As PostgreSQL folds it (lower case unless quoted).
    pub name: String,
    /// The declared parameter types, as written.
    pub types: Vec<String>,
    pub query: String,
}

fn ident(t: &Token<'_>) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::QuotedIdent(q) => Some(
            q.strip_prefix('"')?
                .strip_suffix('"')?
                .replace("\"\"", "\""),
        ),
        _ => None,
    }
}

/// The byte offset of `t` in `sql`.
fn at(sql: &str, t: &Token<'_>) -> usize {
    t.text().as_ptr() as usize - sql.as_ptr() as usize
}

/// Splits the text between `open` (just past a `(`) and its matching `)` at top-level
/// commas; returns the parts (trimmed) and the offset past the `)`.
fn parenthesised(sql: &str, lx: &mut Lexer<'_>, open: usize) -> Option<(Vec<String>, usize)> {
    let mut depth = 0usize;
    let mut parts = Vec::new();
    let mut start = open;
    for t in lx.by_ref() {
        match t {
            Token::Symbol("(") | Token::Symbol("[") => depth += 1,
            Token::Symbol(")") if depth == 0 => {
                let end = at(sql, &t);
                parts.push(sql[start..end].trim().to_owned());
                return Some((parts, end + 1));
            }
            Token::Symbol(")") | Token::Symbol("]") => depth = depth.saturating_sub(1),
            Token::Symbol(",") if depth == 0 => {
                let end = at(sql, &t);
                parts.push(sql[start..end].trim().to_owned());
                start = end + 1;
            }
            _ => {}
        }
    }
    None
}

/// Reads `PREPARE name [(types)] AS query` (not PREPARE TRANSACTION).
pub fn parse_prepare(sql: &str) -> Option<SqlPrepare> {
    let mut lx = Lexer::new(sql);
    if !lx.next()?.is_keyword("prepare") {
        return None;
    }
    let name_token = lx.next()?;
    if name_token.is_keyword("transaction") {
        return None;
    }
    let name = ident(&name_token)?;
    let mut types = Vec::new();
    let mut t = lx.next()?;
    if matches!(t, Token::Symbol("(")) {
        let (parts, _) = parenthesised(sql, &mut lx, at(sql, &t) + 1)?;
        types = parts;
        t = lx.next()?;
    }
    if !t.is_keyword("as") {
        return None;
    }
    let query = sql[at(sql, &t) + 2..]
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_owned();
    (!query.is_empty()).then_some(SqlPrepare { name, types, query })
}

/// Reads `EXECUTE name [(args)]`: the name and the arguments' texts.
pub fn parse_execute(sql: &str) -> Option<(String, Vec<String>)> {
    let mut lx = Lexer::new(sql);
    if !lx.next()?.is_keyword("execute") {
        return None;
    }
    let name = ident(&lx.next()?)?;
    let mut args = Vec::new();
    match lx.next() {
        None | Some(Token::Semicolon) => {}
        Some(t @ Token::Symbol("(")) => {
            let (parts, _) = parenthesised(sql, &mut lx, at(sql, &t) + 1)?;
            args = parts.into_iter().filter(|p| !p.is_empty()).collect();
            match lx.next() {
                None | Some(Token::Semicolon) => {}
                _ => return None,
            }
        }
        _ => return None,
    }
    Some((name, args))
}

/// Reads `DEALLOCATE [PREPARE] name | ALL`: `Some(None)` for ALL.
pub fn parse_deallocate(sql: &str) -> Option<Option<String>> {
    let mut lx = Lexer::new(sql);
    if !lx.next()?.is_keyword("deallocate") {
        return None;
    }
    let mut t = lx.next()?;
    if t.is_keyword("prepare") {
        t = lx.next()?;
    }
    let target = if t.is_keyword("all") {
        None
    } else {
        Some(ident(&t)?)
    };
    match lx.next() {
        None | Some(Token::Semicolon) => Some(target),
        _ => None,
    }
}

/// Whether an argument is a constant (a literal, possibly signed or typed, or NULL): it
/// then stands for itself wherever its parameter appears, as a bound value would.
fn constant(arg: &str) -> bool {
    let tokens: Vec<Token<'_>> = Lexer::new(arg).collect();
    !tokens.is_empty()
        && tokens.iter().all(|t| match t {
            Token::String(_) | Token::Number(_) => true,
            Token::Symbol(s) => matches!(*s, "-" | "+" | "::" | ":" | "[" | "]" | "."),
            Token::Word(_) | Token::QuotedIdent(_) => true,
            _ => false,
        })
        && !tokens
            .iter()
            .any(|t| matches!(t, Token::Symbol("(") | Token::Param(_)))
}

/// The query of a prepared statement with the arguments of an EXECUTE in place of its
/// parameters: `(arg)::type` where PREPARE declared the type, `(arg)` otherwise. Arguments
/// must be constants (a function call such as `now()` would run once per use of its
/// parameter, where PostgreSQL runs it once).
pub fn substitute(p: &SqlPrepare, args: &[String]) -> Result<String, String> {
    if !p.types.is_empty() && args.len() != p.types.len() {
        return Err(format!(
            "wrong number of parameters for prepared statement \"{}\": it has {}, {} given",
            p.name,
            p.types.len(),
            args.len()
        ));
    }
    if let Some(a) = args.iter().find(|a| !constant(a)) {
        return Err(format!("the EXECUTE argument `{a}` is not a constant"));
    }
    let mut out = String::with_capacity(p.query.len() + 16 * args.len());
    let mut last = 0;
    for t in Lexer::new(&p.query) {
        if let Token::Param(text) = t {
            let n: usize = text[1..]
                .parse()
                .map_err(|_| format!("bad parameter {text}"))?;
            let Some(arg) = n.checked_sub(1).and_then(|i| args.get(i)) else {
                return Err(format!(
                    "prepared statement \"{}\" uses ${n} and EXECUTE gives {} argument(s)",
                    p.name,
                    args.len()
                ));
            };
            let start = at(&p.query, &t);
            out.push_str(&p.query[last..start]);
            match p.types.get(n - 1) {
                Some(ty) => out.push_str(&format!("({arg})::{ty}")),
                None => out.push_str(&format!("({arg})")),
            }
            last = start + text.len();
        }
    }
    out.push_str(&p.query[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_execute_and_deallocate_are_read() {
        let p = parse_prepare("PREPARE p1(bigint, text) AS SELECT id FROM orders WHERE customer_id = $1 AND note = $2;").unwrap();
        assert_eq!(p.name, "p1");
        assert_eq!(p.types, ["bigint", "text"]);
        assert_eq!(
            p.query,
            "SELECT id FROM orders WHERE customer_id = $1 AND note = $2"
        );
        let q = parse_prepare("prepare \"Q\" as select $1").unwrap();
        assert_eq!((q.name.as_str(), q.types.len()), ("Q", 0));
        assert_eq!(parse_prepare("PREPARE TRANSACTION 'x'"), None);
        assert_eq!(
            parse_execute("EXECUTE p1(9, 'a,b')"),
            Some(("p1".into(), vec!["9".into(), "'a,b'".into()]))
        );
        assert_eq!(parse_execute("execute P1"), Some(("p1".into(), vec![])));
        assert_eq!(
            parse_deallocate("DEALLOCATE PREPARE p1"),
            Some(Some("p1".into()))
        );
        assert_eq!(parse_deallocate("deallocate all;"), Some(None));
    }

    #[test]
    fn arguments_take_the_parameters_places() {
        let p = parse_prepare(
            "PREPARE p1(bigint) AS SELECT id FROM orders WHERE customer_id = $1 AND '$1' <> note",
        )
        .unwrap();
        assert_eq!(
            substitute(&p, &["9".into()]).unwrap(),
            "SELECT id FROM orders WHERE customer_id = (9)::bigint AND '$1' <> note"
        );
        let q = parse_prepare("PREPARE q AS SELECT $2, $1").unwrap();
        assert_eq!(
            substitute(&q, &["-1".into(), "DATE '2026-01-01'".into()]).unwrap(),
            "SELECT (DATE '2026-01-01'), (-1)"
        );
        assert!(substitute(&q, &["now()".into(), "1".into()]).is_err());
        assert!(substitute(&p, &[]).is_err());
        // Bad input is an error, never a panic.
        let z = parse_prepare("PREPARE z AS SELECT $0").unwrap();
        assert!(substitute(&z, &["1".into()]).is_err());
        assert_eq!(parse_prepare("PREPARE \" AS SELECT 1"), None);
    }
}
