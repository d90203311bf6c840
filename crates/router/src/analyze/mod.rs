//! What a statement touches: its kind, the tables it reads or writes, and for each table of
//! a shard map the key values its predicates pin (as literals or parameters).
//!
//! Statements that need no parse are classified by their first keywords (DDL, transaction
//! control, utility); queries and DML are parsed with sqlparser. Keys are read from
//! conjunctions in each SELECT's WHERE (subqueries and CTEs are scopes of their own), from
//! INSERT ... VALUES rows, and from UPDATE and DELETE predicates: `key = v`, `v = key`,
//! `key IN (v, ...)` and `key = ANY($n)`.

use sqlparser::ast::{
    self, BinaryOperator, Expr, FromTable, GroupByExpr, Query, SelectItem, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::lexer::{Lexer, Token};

/// A key value as the statement gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyExpr {
    /// A constant, as text (strings unquoted).
    Literal(String),
    /// `$n` (1-based).
    Param(usize),
    /// `= ANY($n)`: an array parameter whose elements are the keys.
    ParamArray(usize),
}

/// A comparison of a single-column key with a value, from a predicate that does not pin
/// the key (`day >= '2026-01-01'`, `id BETWEEN 1 AND 9`): range maps prune shards by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// `key > v` (false) or `key >= v` (true).
    Above(KeyExpr, bool),
    /// `key < v` (false) or `key <= v` (true).
    Below(KeyExpr, bool),
}

/// One use of a table of a shard map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUse {
    /// Lower-cased, without schema.
    pub table: String,
    /// The keys the statement pins this use to: alternatives (an IN list gives several),
    /// each one value per key column. `None` when nothing pins it.
    pub keys: Option<Vec<Vec<KeyExpr>>>,
    /// Comparisons of a single-column key with values, when nothing pins it.
    pub bounds: Vec<Bound>,
    /// On the null-extended side of an outer join of the statement's own SELECT: its rows
    /// are exact on each shard only when it is joined on its key to a table of the same
    /// map on the preserved side (the plan checks, with `key_joins`).
    pub nullable: bool,
    /// Not a row source of the statement's own SELECT: in a subquery, CTE, derived table or
    /// the select list. On several shards such a use is exact only when it is joined on its
    /// key (`key_joins`, within its map) to a use that is a row source, as a subquery
    /// correlated on the key is; the plan checks.
    pub nested: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SELECT (or VALUES/TABLE) that changes nothing.
    Read,
    /// INSERT, UPDATE, DELETE, SELECT ... FOR UPDATE, or a query with a data-modifying CTE.
    Write,
    /// CREATE, ALTER, DROP, TRUNCATE, COMMENT, GRANT, REVOKE.
    Ddl,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
    Transaction,
    /// VACUUM, ANALYZE, CLUSTER, REINDEX: maintenance that every shard should run.
    Maintenance,
    /// SET, SHOW, RESET, DISCARD, LISTEN, and whatever else acts on the session.
    Session,
    /// Code the router cannot see into (DO blocks, CALL): it runs where the session is
    /// pinned (a transaction's shard, a shard hint), or is refused.
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub kind: Kind,
    /// Every table named, lower-cased, without schema.
    pub tables: Vec<String>,
    /// Uses of tables that have shard keys.
    pub keyed: Vec<TableUse>,
    /// The top-level query has ORDER BY, LIMIT/OFFSET/FETCH, DISTINCT, GROUP BY, HAVING or
    /// an aggregate: its rows cannot simply be concatenated across shards.
    pub needs_merge: bool,
    /// A top-level `INSERT ... VALUES` into a sharded table: `keyed[0].keys` has one
    /// alternative per row, in order, and the rows can be split by shard.
    pub insert_rows: bool,
    /// The statement cannot be merged across shards whatever its shape (COPY): it runs
    /// on one shard or is refused.
    pub one_shard: bool,
    /// `DECLARE ... CURSOR FOR query`, analysed as its query: a cursor lives on one server
    /// session, so it runs on one shard or is refused.
    pub cursor: bool,
    /// Some use of a sharded table sits where no key join can make it exact on several
    /// shards: in a set operation, or out of the walk's reach (function arguments, ...).
    /// Run on several shards, such a query would see only each shard's part of that table,
    /// and the shards' rows could not simply be put together: it runs on one shard or is
    /// refused. (Other nested uses are marked `TableUse::nested`.)
    pub nested_sharded: bool,
    /// Why the statement cannot be routed by its shape, whatever the keys.
    pub refuse: Option<String>,
    /// Pairs of `keyed` uses (indexes) whose single key columns the statement equates
    /// (`o.customer_id = c.id` in a WHERE or an inner join's ON, in the same scope): when
    /// their tables share a shard map, their rows of one key live on one shard, and a key
    /// that pins one pins the other.
    pub key_joins: Vec<(usize, usize)>,
    /// `INSERT INTO t VALUES ...` into a sharded table without a column list: the router
    /// needs the table's column order (from the catalog) to find the keys; see
    /// [`crate::rewrite::with_insert_columns`].
    pub insert_without_columns: Option<String>,
    /// Functions the top-level query calls (outside window clauses) that are not built-in
    /// aggregates: a user-defined aggregate among them would need a merge the router does
    /// not know of, so the proxy asks the catalog before running such a statement on
    /// several shards.
    pub functions: Vec<String>,
    /// Groups of `keyed` uses that are the sides of a FULL JOIN of sharded tables: exact on
    /// several shards only when each group's uses are joined on their keys within one map.
    pub together: Vec<Vec<usize>>,
    /// The statement is an INSERT (its first `keyed` use is the target table).
    pub insert: bool,
}

impl Analysis {
    /// A statement of `kind` that touches no table.
    pub fn of_kind(kind: Kind) -> Analysis {
        Analysis {
            kind,
            tables: Vec::new(),
            keyed: Vec::new(),
            needs_merge: false,
            insert_rows: false,
            one_shard: false,
            cursor: false,
            nested_sharded: false,
            refuse: None,
            key_joins: Vec::new(),
            insert_without_columns: None,
            functions: Vec::new(),
            together: Vec::new(),
            insert: false,
        }
    }
}

/// SQL the parser does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::error::Error for ParseError {}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// First keyword classes that need no parse.
fn classify_by_keyword(sql: &str) -> Option<Kind> {
    let mut lx = Lexer::new(sql);
    let first = match lx.next()? {
        Token::Word(w) => w.to_ascii_lowercase(),
        Token::Symbol("(") => return None, // (SELECT ...)
        _ => return Some(Kind::Session),
    };
    Some(match first.as_str() {
        "select" | "with" | "values" | "table" | "insert" | "update" | "delete" | "explain" => {
            return None
        }
        "create" | "alter" | "drop" | "truncate" | "comment" | "grant" | "revoke" | "security" => {
            Kind::Ddl
        }
        "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release" => {
            Kind::Transaction
        }
        "prepare" => match lx.next() {
            Some(t) if t.is_keyword("transaction") => Kind::Transaction,
            _ => Kind::Session,
        },
        "vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint" => {
            Kind::Maintenance
        }
        "do" | "call" => Kind::Opaque,
        _ => Kind::Session,
    })
}

/// The query of `DECLARE name [options] CURSOR [{WITH | WITHOUT} HOLD] FOR query`.
fn cursor_query(sql: &str) -> Option<&str> {
    let mut lx = Lexer::new(sql);
    if !lx.next()?.is_keyword("declare") {
        return None;
    }
    let mut cursor = false;
    for t in lx.by_ref() {
        if t.is_keyword("cursor") {
            cursor = true;
        } else if cursor && t.is_keyword("for") {
            let at = t.text().as_ptr() as usize - sql.as_ptr() as usize + t.text().len();
            return Some(&sql[at..]);
        }
    }
    None
}

/// The query of `PREPARE name [(types)] AS query` (not PREPARE TRANSACTION).
fn prepared_query(sql: &str) -> Option<&str> {
    let mut lx = Lexer::new(sql);
    if !lx.next()?.is_keyword("prepare") {
        return None;
    }
    let name = lx.next()?;
    if name.is_keyword("transaction") {
        return None;
    }
    let mut depth = 0usize;
    for t in lx.by_ref() {
        match t {
            Token::Symbol("(") => depth += 1,
            Token::Symbol(")") => depth = depth.saturating_sub(1),
            t if depth == 0 && t.is_keyword("as") => {
                let at = t.text().as_ptr() as usize - sql.as_ptr() as usize + t.text().len();
                return Some(&sql[at..]);
            }
            _ => {}
        }
    }
    None
}

/// Analyses one statement. `key_columns(table)` gives a mapped table's key columns.
pub fn analyze(
    sql: &str,
    key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Analysis, ParseError> {
    if Lexer::new(sql).next().is_some_and(|t| t.is_keyword("copy")) {
        return analyze_copy(sql, key_columns);
    }
    if let Some(query) = cursor_query(sql) {
        let mut a = analyze(query, key_columns)?;
        a.cursor = true;
        return Ok(a);
    }
    if let Some(query) = prepared_query(sql) {
        // SQL-level PREPARE: where its EXECUTEs must run depends on their arguments, which
        // the proxy does not follow yet; on sharded tables it is refused.
        let inner = analyze(query, key_columns)?;
        let mut a = Analysis {
            kind: Kind::Session,
            ..inner
        };
        if !a.keyed.is_empty() {
            a.refuse = Some(
                "SQL-level PREPARE of a statement on sharded tables: its EXECUTEs would all run where the PREPARE ran, whatever their keys"
                    .into(),
            );
        }
        a.keyed.clear();
        return Ok(a);
    }
    if let Some(kind) = classify_by_keyword(sql) {
        return Ok(Analysis::of_kind(kind));
    }
    let mut statements =
        Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| ParseError(e.to_string()))?;
    if statements.len() != 1 {
        return Err(ParseError(format!(
            "expected one statement, found {}",
            statements.len()
        )));
    }
    let stmt = statements.remove(0);
    let mut w = Walker {
        key_columns,
        ctes: Vec::new(),
        cte_views: Vec::new(),
        depth: 0,
        top_depth: Some(
            if matches!(stmt, Statement::Query(_))
                || matches!(&stmt, Statement::Explain { statement, .. } if matches!(statement.as_ref(), Statement::Query(_)))
            {
                1
            } else {
                0
            },
        ),
        out: Analysis::of_kind(Kind::Read),
        outer: Vec::new(),
        in_anchor: None,
        links: Vec::new(),
        full_groups: 0,
    };
    w.statement(&stmt);
    w.hidden_uses(&stmt);
    // A CTE or derived table used once stands for its table; used twice, its two uses are
    // not joined on the key to each other, so neither is linked.
    let links = std::mem::take(&mut w.links);
    for &(view, inner) in &links {
        if links.iter().filter(|(_, i)| *i == inner).count() == 1 {
            w.out.key_joins.push((view, inner));
        }
    }
    Ok(w.out)
}

/// `COPY table ...` and `COPY (query) TO ...`, read with the lexer (sqlparser does not take
/// every COPY option). COPY data is not split or merged by shard: a COPY runs on one shard.
fn analyze_copy(
    sql: &str,
    key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Analysis, ParseError> {
    // Binary COPY streams have a header and a trailer each: they cannot be concatenated.
    let binary = matches!(crate::copy::parse_copy(sql), Some(Ok(c)) if c.format.binary);
    let mut lx = Lexer::new(sql);
    lx.next(); // COPY
    let offset = |t: &Token| t.text().as_ptr() as usize - sql.as_ptr() as usize;
    let mut a = Analysis {
        one_shard: true,
        ..Analysis::of_kind(Kind::Read)
    };
    match lx.next() {
        Some(open @ Token::Symbol("(")) => {
            let start = offset(&open) + 1;
            let mut depth = 1;
            let end = loop {
                match lx.next() {
                    Some(Token::Symbol("(")) => depth += 1,
                    Some(t @ Token::Symbol(")")) => {
                        depth -= 1;
                        if depth == 0 {
                            break offset(&t);
                        }
                    }
                    Some(_) => {}
                    None => return Err(ParseError("unterminated COPY query".into())),
                }
            };
            let mut inner = analyze(&sql[start..end], key_columns)?;
            // Rows to the client can be concatenated across shards; a file on the server
            // cannot.
            inner.one_shard = binary
                || !matches!(lx.next(), Some(t) if t.is_keyword("to"))
                || !matches!(lx.next(), Some(t) if t.is_keyword("stdout"));
            Ok(inner)
        }
        Some(first @ (Token::Word(_) | Token::QuotedIdent(_))) => {
            // schema.table: the last part names the table.
            let mut name = first;
            let mut peek = lx.clone();
            while peek.next() == Some(Token::Symbol(".")) {
                match peek.next() {
                    Some(t @ (Token::Word(_) | Token::QuotedIdent(_))) => {
                        name = t;
                        lx = peek.clone();
                    }
                    _ => break,
                }
            }
            let table = match name {
                Token::QuotedIdent(q) => q[1..q.len() - 1].replace("\"\"", "\""),
                t => t.text().to_ascii_lowercase(),
            };
            let mut depth = 0;
            let mut client_side = false;
            while let Some(t) = lx.next() {
                match t {
                    Token::Symbol("(") => depth += 1,
                    Token::Symbol(")") => depth -= 1,
                    t if depth == 0 && (t.is_keyword("from") || t.is_keyword("to")) => {
                        if t.is_keyword("from") {
                            a.kind = Kind::Write;
                        }
                        client_side = matches!(lx.next(), Some(t) if t.is_keyword("stdin") || t.is_keyword("stdout"));
                        break;
                    }
                    _ => {}
                }
            }
            // Rows to the client can be concatenated across shards; a file on the server
            // cannot, and data into a sharded table is split by the session, never here.
            a.one_shard = a.kind == Kind::Write || !client_side || binary;
            if key_columns(&table).is_some() {
                if a.kind == Kind::Write {
                    a.refuse = Some(format!(
                        "COPY into sharded table `{table}` {}",
                        if client_side {
                            "is split by shard only when it comes as a simple query (not through Parse/Bind)"
                        } else {
                            "from a file on the server: each shard would read its own file"
                        }
                    ));
                }
                a.keyed.push(TableUse {
                    table: table.clone(),
                    keys: None,
                    bounds: Vec::new(),
                    nullable: false,
                    nested: false,
                });
            }
            a.tables.push(table);
            Ok(a)
        }
        _ => Err(ParseError("COPY of what?".into())),
    }
}

mod dml;
mod functions;
#[cfg(test)]
mod tests;
mod walk;

pub(crate) use functions::outside_subqueries;
use functions::*;
pub use functions::{has_aggregate_or_window, is_aggregate_name};
pub(crate) use walk::conjuncts;
use walk::*;
