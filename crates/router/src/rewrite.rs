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

/// One shard's part of a split INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub text: String,
    /// The statement's parameters this part uses, by their original 1-based number, in
    /// their new order: the part's `$k` is the statement's `$params[k-1]`.
    pub params: Vec<usize>,
}

/// Splits a multi-row INSERT by shard: for each of `shards`, the statement with only the
/// rows `row_shards` gives it (one entry per row, in order). Parameters are renumbered so
/// that each part's are `$1..$k`, in the order of their original numbers; those outside
/// the rows (ON CONFLICT, RETURNING) stay in every part. An error says why it cannot.
pub fn split_insert(
    sql: &str,
    row_shards: &[String],
    shards: &[String],
) -> Result<Vec<Part>, String> {
    let rows = values_rows(sql).ok_or("the VALUES list was not found")?;
    if rows.rows.len() != row_shards.len() {
        return Err(format!(
            "found {} rows in VALUES where the statement has {}",
            rows.rows.len(),
            row_shards.len()
        ));
    }
    // Every parameter: its byte range and number.
    let mut params: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
    for t in Lexer::new(sql) {
        if let Token::Param(p) = t {
            let at = p.as_ptr() as usize - sql.as_ptr() as usize;
            let n = p[1..]
                .parse::<usize>()
                .map_err(|_| format!("bad parameter {p}"))?;
            params.push((at..at + p.len(), n));
        }
    }
    let head = 0..rows.rows[0].start;
    let tail = rows.rows[rows.rows.len() - 1].end..sql.len();
    // ORDER BY, LIMIT, OFFSET or FETCH on the VALUES list pick rows across all of them.
    let mut depth = 0i32;
    for t in Lexer::new(&sql[tail.clone()]) {
        match t {
            Token::Symbol("(") => depth += 1,
            Token::Symbol(")") => depth -= 1,
            t if depth == 0
                && ["order", "limit", "offset", "fetch"]
                    .iter()
                    .any(|k| t.is_keyword(k)) =>
            {
                return Err(format!(
                    "its VALUES list has {} over all the rows",
                    t.text().to_ascii_uppercase()
                ));
            }
            _ => {}
        }
    }
    Ok(shards
        .iter()
        .map(|shard| {
            let mut segments = vec![head.clone()];
            segments.extend(
                rows.rows
                    .iter()
                    .zip(row_shards)
                    .filter(|(_, s)| *s == shard)
                    .map(|(r, _)| r.clone()),
            );
            segments.push(tail.clone());
            // The parameters of each segment, in one pass: both are in text order (a look
            // through every parameter for each row took minutes for a large INSERT).
            let mut in_segment = Vec::with_capacity(segments.len());
            let mut p = 0;
            for seg in &segments {
                while p < params.len() && params[p].0.start < seg.start {
                    p += 1;
                }
                let first = p;
                while p < params.len() && params[p].0.start < seg.end {
                    p += 1;
                }
                in_segment.push(&params[first..p]);
            }
            let used: std::collections::BTreeSet<usize> = in_segment
                .iter()
                .flat_map(|s| s.iter().map(|(_, n)| *n))
                .collect();
            let used: Vec<usize> = used.into_iter().collect();
            let mut text = String::with_capacity(sql.len());
            let last_row = segments.len() - 2;
            for (i, (seg, seg_params)) in segments.iter().zip(&in_segment).enumerate() {
                let mut at = seg.start;
                for (r, n) in seg_params.iter() {
                    text.push_str(&sql[at..r.start]);
                    let k = used.binary_search(n).expect("used") + 1;
                    text.push('$');
                    text.push_str(&k.to_string());
                    at = r.end;
                }
                text.push_str(&sql[at..seg.end]);
                if i >= 1 && i < last_row {
                    text.push_str(", ");
                }
            }
            Part { text, params: used }
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
            parts[0].text,
            "/* c */ INSERT INTO t (a) VALUES (2) RETURNING a;"
        );
        assert_eq!(
            parts[1].text,
            "/* c */ INSERT INTO t (a) VALUES (1), (3) RETURNING a;"
        );
        assert!(parts[0].params.is_empty());
        assert!(split_insert(sql, &rs[..2], &shards).is_err());
        let limited = "INSERT INTO t (a) VALUES (1), (2), (3) LIMIT 2 RETURNING a";
        assert!(split_insert(limited, &rs, &shards)
            .unwrap_err()
            .contains("LIMIT"));
    }

    #[test]
    fn parameters_are_renumbered_per_part() {
        let sql = "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6::int) ON CONFLICT (a) DO UPDATE SET b = $7";
        let rs = ["s0", "s1", "s0"].map(String::from);
        let shards = ["s0", "s1"].map(String::from);
        let parts = split_insert(sql, &rs, &shards).unwrap();
        assert_eq!(
            parts[0].text,
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4::int) ON CONFLICT (a) DO UPDATE SET b = $5"
        );
        assert_eq!(parts[0].params, vec![1, 2, 5, 6, 7]);
        assert_eq!(
            parts[1].text,
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = $3"
        );
        assert_eq!(parts[1].params, vec![3, 4, 7]);
    }

    #[test]
    fn a_large_insert_splits_in_one_pass_over_its_parameters() {
        // 100,000 rows of a parameter each, over three shards: a look through every
        // parameter for each row made this 10^10 steps.
        let rows = 100_000;
        let mut sql = String::from("INSERT INTO t (a, b) VALUES ");
        for r in 1..=rows {
            if r > 1 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("({r}, ${r})"));
        }
        sql.push_str(" RETURNING b, $1");
        let names = ["s0", "s1", "s2"].map(String::from);
        let rs: Vec<String> = (0..rows).map(|r| names[r % 3].clone()).collect();
        let started = std::time::Instant::now();
        let parts = split_insert(&sql, &rs, &names).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(parts[1].params.len(), rows / 3 + 1);
        assert!(parts[1]
            .text
            .starts_with("INSERT INTO t (a, b) VALUES (2, $2), (5, $3)"));
        assert!(parts[0].text.ends_with("(100000, $33334) RETURNING b, $1"));
        assert_eq!(parts[0].params[..3], [1, 4, 7]);
    }
}

/// `INSERT INTO t VALUES ...` with its column list written out: the first of `columns` (the
/// table's, in order), as many as its longest row has values, as PostgreSQL assigns them.
/// `None` when the statement is not such an INSERT or has more values than columns.
pub fn with_insert_columns(sql: &str, columns: &[String]) -> Option<String> {
    use sqlparser::ast::{Ident, ObjectName, SetExpr, Statement};
    let mut statements =
        sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, sql)
            .ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Insert(insert) = &mut statements[0] else {
        return None;
    };
    if !insert.columns.is_empty() {
        return None;
    }
    let SetExpr::Values(values) = insert.source.as_deref()?.body.as_ref() else {
        return None;
    };
    let width = values.rows.iter().map(|r| r.content.len()).max()?;
    if width > columns.len() {
        return None;
    }
    insert.columns = columns[..width]
        .iter()
        .map(|c| ObjectName::from(vec![Ident::with_quote('"', c.as_str())]))
        .collect();
    Some(statements[0].to_string())
}

#[cfg(test)]
mod insert_columns_tests {
    #[test]
    fn an_insert_gets_the_tables_columns_as_far_as_its_rows_go() {
        let cols = ["id".to_owned(), "name".to_owned(), "region".to_owned()];
        assert_eq!(
            super::with_insert_columns("INSERT INTO customers VALUES (1, 'a'), (2, 'b')", &cols)
                .as_deref(),
            Some("INSERT INTO customers (\"id\", \"name\") VALUES (1, 'a'), (2, 'b')")
        );
        assert_eq!(
            super::with_insert_columns("INSERT INTO customers VALUES (1, 2, 3, 4)", &cols),
            None
        );
        assert_eq!(
            super::with_insert_columns("INSERT INTO customers (id) VALUES (1)", &cols),
            None
        );
    }
}
