//! Statement text for one shard: a multi-row `INSERT ... VALUES` keeps only the rows that
//! shard owns. The text is cut, never regenerated, so everything else in the statement
//! (comments, ON CONFLICT, RETURNING, casts) reaches PostgreSQL exactly as the client wrote it.

use std::ops::Range;

use crate::lexer::{Lexer, Token};

/// The byte ranges of the rows of the first top-level `VALUES` list, each from its `(` to
/// its `)`; `None` when there is none. `params`: a row uses a `$n` parameter.
#[derive(Debug, PartialEq, Eq)]
pub struct ValuesRows {
    pub rows: Vec<Range<usize>>,
    pub params: bool,
}

pub fn values_rows(sql: &str) -> Option<ValuesRows> {
    let offset = |t: &Token| t.text().as_ptr() as usize - sql.as_ptr() as usize;
    let mut lx = Lexer::new(sql);
    let mut depth = 0i32;
    loop {
        match lx.next()? {
            Token::Symbol("(") => depth += 1,
            Token::Symbol(")") => depth -= 1,
            t if depth == 0 && t.is_keyword("values") => break,
            Token::Semicolon => return None,
            _ => {}
        }
    }
    let mut out = ValuesRows {
        rows: Vec::new(),
        params: false,
    };
    loop {
        let open = lx.next()?;
        if open != Token::Symbol("(") {
            return None;
        }
        let start = offset(&open);
        let mut depth = 1;
        let end = loop {
            let t = lx.next()?;
            match t {
                Token::Symbol("(") => depth += 1,
                Token::Symbol(")") => {
                    depth -= 1;
                    if depth == 0 {
                        break offset(&t) + 1;
                    }
                }
                Token::Param(_) => out.params = true,
                Token::Semicolon => return None,
                _ => {}
            }
        };
        out.rows.push(start..end);
        let mut peek = lx.clone();
        match peek.next() {
            Some(Token::Symbol(",")) => lx = peek,
            _ => return Some(out),
        }
    }
}

/// Splits a multi-row INSERT by shard: for each of `shards`, the statement with only the
/// rows `row_shards` gives it (one entry per row, in order). An error says why it cannot.
pub fn split_insert(
    sql: &str,
    row_shards: &[String],
    shards: &[String],
) -> Result<Vec<String>, String> {
    let rows = values_rows(sql).ok_or("the VALUES list was not found")?;
    if rows.rows.len() != row_shards.len() {
        return Err(format!(
            "found {} rows in VALUES where the statement has {}",
            rows.rows.len(),
            row_shards.len()
        ));
    }
    if rows.params {
        return Err("its rows use parameters, which cannot be split between shards".into());
    }
    let head = &sql[..rows.rows[0].start];
    let tail = &sql[rows.rows[rows.rows.len() - 1].end..];
    Ok(shards
        .iter()
        .map(|shard| {
            let mut text = String::with_capacity(sql.len());
            text.push_str(head);
            let mut first = true;
            for (r, s) in rows.rows.iter().zip(row_shards) {
                if s == shard {
                    if !first {
                        text.push_str(", ");
                    }
                    first = false;
                    text.push_str(&sql[r.clone()]);
                }
            }
            text.push_str(tail);
            text
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_past_nested_parentheses_and_quotes() {
        let sql = "INSERT INTO t (a, b) VALUES (1, '(x)'), (2, f(3, 4)) ON CONFLICT (a) DO NOTHING RETURNING a";
        let r = values_rows(sql).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!(&sql[r.rows[0].clone()], "(1, '(x)')");
        assert_eq!(&sql[r.rows[1].clone()], "(2, f(3, 4))");
        assert!(!r.params);
        assert!(
            values_rows("INSERT INTO t (a) VALUES ($1), ($2)")
                .unwrap()
                .params
        );
        assert_eq!(values_rows("INSERT INTO t SELECT 1"), None);
    }

    #[test]
    fn each_shard_gets_its_rows_and_the_rest_of_the_statement() {
        let sql = "/* c */ INSERT INTO t (a) VALUES (1),(2) , (3) RETURNING a;";
        let rs = ["s1", "s0", "s1"].map(String::from);
        let shards = ["s0", "s1"].map(String::from);
        let parts = split_insert(sql, &rs, &shards).unwrap();
        assert_eq!(
            parts[0],
            "/* c */ INSERT INTO t (a) VALUES (2) RETURNING a;"
        );
        assert_eq!(
            parts[1],
            "/* c */ INSERT INTO t (a) VALUES (1), (3) RETURNING a;"
        );
        assert!(split_insert(sql, &rs[..2], &shards).is_err());
    }
}
