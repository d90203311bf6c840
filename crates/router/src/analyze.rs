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
    /// Some use of a sharded table is not a row source of the top-level query itself: it
    /// sits in a subquery, a CTE, a derived table, the select list, on a side of an outer
    /// join, or in a set operation (or the statement is DML). Run on several shards, such a
    /// query would see only each shard's part of that table, and the shards' rows could not
    /// simply be concatenated: it runs on one shard or is refused.
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
    };
    w.statement(&stmt);
    w.hidden_uses(&stmt);
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
        kind: Kind::Read,
        tables: Vec::new(),
        keyed: Vec::new(),
        needs_merge: false,
        insert_rows: false,
        one_shard: true,
        cursor: false,
        nested_sharded: false,
        refuse: None,
        key_joins: Vec::new(),
        insert_without_columns: None,
        functions: Vec::new(),
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
                });
            }
            a.tables.push(table);
            Ok(a)
        }
        _ => Err(ParseError("COPY of what?".into())),
    }
}

impl Walker<'_> {
    fn statement(&mut self, stmt: &Statement) {
        let w = self;
        match stmt {
            Statement::Explain { statement, .. } => w.statement(statement),
            Statement::Query(q) => {
                w.out.needs_merge = needs_merge(q);
                w.out.functions = called_functions(q);
                if !q.locks.is_empty() {
                    w.out.kind = Kind::Write;
                }
                w.query(q);
            }
            Statement::Insert(i) => {
                w.out.kind = Kind::Write;
                w.insert(i);
                w.out.insert_rows = w.out.keyed.len() == 1
                    && w.out.keyed[0].keys.is_some()
                    && matches!(
                        i.source.as_deref().map(|q| q.body.as_ref()),
                        Some(SetExpr::Values(_))
                    );
            }
            Statement::Update(u) => {
                w.out.kind = Kind::Write;
                w.update(u);
            }
            Statement::Delete(d) => {
                w.out.kind = Kind::Write;
                w.delete(d);
            }
            _ => w.out.kind = Kind::Session,
        }
    }
}

fn needs_merge(q: &Query) -> bool {
    if q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return true;
    }
    match q.body.as_ref() {
        SetExpr::Select(s) => {
            s.distinct.is_some()
                || s.having.is_some()
                || !matches!(&s.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
                || s.projection.iter().any(|item| match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        has_aggregate(e)
                    }
                    _ => false,
                })
        }
        SetExpr::SetOperation { .. } => true,
        SetExpr::Query(inner) => needs_merge(inner),
        _ => false,
    }
}

/// PostgreSQL's built-in aggregate functions. A user-defined aggregate is not known to the
/// router (docs/routing.md says so).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_object_agg",
    "jsonb_object_agg",
    "json_objectagg",
    "json_arrayagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "range_agg",
    "range_intersect_agg",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "any_value",
    "xmlagg",
];

/// Whether `e` holds an aggregate or a window function anywhere (its value depends on
/// rows of every shard).
pub fn has_aggregate_or_window(e: &Expr) -> bool {
    has_aggregate(e)
}

/// The functions a query's own SELECT calls in its select list, HAVING and ORDER BY
/// (without OVER, not built-in aggregates), lower-cased unless quoted.
fn called_functions(q: &Query) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    select_functions(q.body.as_ref(), q.order_by.as_ref(), &mut out);
    out
}

fn select_functions(body: &SetExpr, order_by: Option<&ast::OrderBy>, out: &mut Vec<String>) {
    let s = match body {
        SetExpr::Select(s) => s,
        SetExpr::SetOperation { left, right, .. } => {
            select_functions(left, None, out);
            select_functions(right, None, out);
            return;
        }
        SetExpr::Query(q) => {
            select_functions(q.body.as_ref(), q.order_by.as_ref(), out);
            return;
        }
        _ => return,
    };
    let mut add = |e: &Expr| {
        let _ = ast::visit_expressions(e, |x| {
            if let Expr::Function(f) = x {
                if f.over.is_none() {
                    if let Some(i) = f.name.0.last().and_then(|p| p.as_ident()) {
                        let n = ident_name(i);
                        if !AGGREGATES.contains(&n.as_str()) && !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    };
    for item in &s.projection {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            add(e);
        }
    }
    if let Some(h) = &s.having {
        add(h);
    }
    if let Some(ob) = order_by {
        if let ast::OrderByKind::Expressions(items) = &ob.kind {
            for it in items {
                add(&it.expr);
            }
        }
    }
}

/// Whether `name` (lower-cased unless quoted) is one of PostgreSQL's built-in aggregates.
pub fn is_aggregate_name(name: &str) -> bool {
    AGGREGATES.contains(&name)
}

/// An aggregate over the rows (not a window function), or a window function, anywhere in
/// `e` (inside any expression: `count(*) + 1`, `CASE WHEN max(x) ...`): the rows of several
/// shards cannot simply be concatenated.
fn has_aggregate(e: &Expr) -> bool {
    use std::ops::ControlFlow;
    sqlparser::ast::visit_expressions(e, |x| match x {
        Expr::Function(f) => {
            // `"count"(*)` is count too; a quoted name keeps its case.
            let base = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| {
                    if i.quote_style.is_some() {
                        i.value.clone()
                    } else {
                        i.value.to_ascii_lowercase()
                    }
                })
                .unwrap_or_default();
            if f.over.is_some() || AGGREGATES.contains(&base.as_str()) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

struct Walker<'k> {
    key_columns: &'k dyn Fn(&str) -> Option<Vec<String>>,
    out: Analysis,
    /// How deep in queries the walk is (a query statement's own query is 1).
    depth: usize,
    /// The depth of the statement's own rows: 1 for a query, 0 for DML (its target table),
    /// none inside a set operation.
    top_depth: Option<usize>,
    /// Names of the CTEs in scope: a FROM item of one of these names is the CTE, not a
    /// table of that name.
    ctes: Vec<String>,
    /// CTEs in scope that are views of one sharded table (see [`view_of`]): name, the table,
    /// and its use inside the CTE.
    cte_views: Vec<(String, String, usize)>,
}

/// A table in a scope: its name and the name it goes by (alias or name).
struct InScope {
    table: String,
    called: String,
    /// A row source whose rows the top-level query returns as they are: in the statement's
    /// own SELECT, not on a side of an outer join.
    top: bool,
    /// On the null-extended side of an outer join of the statement's own SELECT.
    nullable: bool,
    /// A CTE or derived table that is a view of this table: the table's use inside it,
    /// which rows of this use come from (joined on the key).
    linked: Option<usize>,
}

fn base_name(name: &ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .unwrap_or_default()
}

fn ident_name(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// The conjuncts of a predicate (through parentheses).
pub(crate) fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        _ => out.push(e),
    }
}

/// A constant or parameter usable as a key.
fn key_value(e: &Expr) -> Option<KeyExpr> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(KeyExpr::Literal(n.to_string())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(KeyExpr::Literal(s.clone()))
            }
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok().map(KeyExpr::Param),
            _ => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => key_value(expr),
        Expr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) => Some(KeyExpr::Literal(s.clone())),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match key_value(expr)? {
            KeyExpr::Literal(n) if !n.starts_with('-') => Some(KeyExpr::Literal(format!("-{n}"))),
            _ => None,
        },
        _ => None,
    }
}

impl Walker<'_> {
    fn note_table(&mut self, t: &str) {
        if !self.out.tables.iter().any(|x| x == t) {
            self.out.tables.push(t.to_owned());
        }
    }

    fn query(&mut self, q: &Query) {
        self.depth += 1;
        let in_scope = self.ctes.len();
        let views_in_scope = self.cte_views.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = ident_name(&cte.alias.name);
                if with.recursive {
                    self.ctes.push(name.clone());
                }
                let before = self.out.keyed.len();
                self.query(&cte.query);
                if !with.recursive && cte.alias.columns.is_empty() {
                    if let Some(table) = self.view_of(&cte.query) {
                        if let Some(inner) = (before..self.out.keyed.len())
                            .find(|&i| self.out.keyed[i].table == table)
                        {
                            self.cte_views.push((name.clone(), table, inner));
                        }
                    }
                }
                if !with.recursive {
                    self.ctes.push(name);
                }
            }
        }
        self.set_expr(&q.body);
        self.ctes.truncate(in_scope);
        self.cte_views.truncate(views_in_scope);
        self.depth -= 1;
    }

    /// A query that is a view of one sharded table keeping its key column under its own
    /// name (`SELECT *` or a select list naming it; one table, WHERE allowed; no grouping,
    /// aggregates, windows, DISTINCT or LIMIT): every row it gives is a row of that table on
    /// the shard of its key, so a key on the view's key column pins the table. Returns the
    /// table.
    fn view_of(&self, q: &Query) -> Option<String> {
        if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
            return None;
        }
        let SetExpr::Select(sel) = q.body.as_ref() else {
            return None;
        };
        let grouped = !matches!(&sel.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
        if grouped || sel.having.is_some() || sel.distinct.is_some() || sel.from.len() != 1 {
            return None;
        }
        let twj = &sel.from[0];
        if !twj.joins.is_empty() {
            return None;
        }
        let TableFactor::Table { name, alias, .. } = &twj.relation else {
            return None;
        };
        let table = base_name(name);
        let cols = (self.key_columns)(&table)?;
        let [key] = cols.as_slice() else {
            return None;
        };
        let called = alias
            .as_ref()
            .map(|a| ident_name(&a.name))
            .unwrap_or_else(|| table.clone());
        let mut keeps_key = false;
        for item in &sel.projection {
            match item {
                SelectItem::Wildcard(_) => keeps_key = true,
                SelectItem::QualifiedWildcard(..) => keeps_key = true,
                SelectItem::UnnamedExpr(e) => {
                    if has_aggregate(e) {
                        return None;
                    }
                    let named = match e {
                        Expr::Identifier(i) => ident_name(i) == *key,
                        Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                            ident_name(&p[p.len() - 1]) == *key
                                && ident_name(&p[p.len() - 2]) == called
                        }
                        _ => false,
                    };
                    keeps_key |= named;
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    if has_aggregate(expr) {
                        return None;
                    }
                    // Another column named like the key would shadow it.
                    if ident_name(alias) == *key {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        keeps_key.then_some(table)
    }

    /// Whether a scope being walked is the statement's own SELECT.
    fn at_top(&self) -> bool {
        self.top_depth == Some(self.depth)
    }

    /// Uses of sharded tables the walk did not reach (in the select list, JOIN ... ON,
    /// HAVING, function arguments, ...): each counts as a use without a key, nested.
    fn hidden_uses(&mut self, stmt: &Statement) {
        // CTE names: a relation of that name is (as far as the router can tell) the CTE,
        // unless a shard map names a table so (then it counts, and the statement runs on
        // one shard or is refused).
        struct Ctes(Vec<String>);
        impl ast::Visitor for Ctes {
            type Break = ();
            fn pre_visit_query(&mut self, q: &Query) -> std::ops::ControlFlow<()> {
                if let Some(w) = &q.with {
                    self.0
                        .extend(w.cte_tables.iter().map(|c| ident_name(&c.alias.name)));
                }
                std::ops::ControlFlow::Continue(())
            }
        }
        let mut ctes = Ctes(Vec::new());
        let _ = ast::Visit::visit(stmt, &mut ctes);
        let mut seen: Vec<String> = Vec::new();
        let _ = ast::visit_relations(stmt, |name| {
            let n = base_name(name);
            let cte = name.0.len() == 1 && ctes.0.contains(&n) && (self.key_columns)(&n).is_none();
            if !cte {
                seen.push(n);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        for t in seen.iter() {
            if !self.out.tables.iter().any(|x| x == t) {
                self.out.tables.push(t.clone());
            }
        }
        let mut counted: Vec<&String> = Vec::new();
        for t in seen.iter() {
            if counted.contains(&t) || (self.key_columns)(t).is_none() {
                continue;
            }
            counted.push(t);
            let uses = seen.iter().filter(|x| *x == t).count();
            let walked = self.out.keyed.iter().filter(|u| u.table == *t).count();
            for _ in walked..uses {
                self.out.nested_sharded = true;
                self.out.keyed.push(TableUse {
                    table: t.clone(),
                    keys: None,
                    bounds: Vec::new(),
                    nullable: false,
                });
            }
        }
    }

    fn set_expr(&mut self, s: &SetExpr) {
        match s {
            SetExpr::Select(sel) => {
                let mut scope = Vec::new();
                for twj in &sel.from {
                    self.table_with_joins(twj, &mut scope);
                }
                // An inner join's ON is a condition on the joined rows, as WHERE is.
                let on: Vec<&Expr> = sel
                    .from
                    .iter()
                    .flat_map(|twj| twj.joins.iter())
                    .filter_map(|j| match &j.join_operator {
                        ast::JoinOperator::Join(ast::JoinConstraint::On(e))
                        | ast::JoinOperator::Inner(ast::JoinConstraint::On(e)) => Some(e),
                        _ => None,
                    })
                    .collect();
                for e in &on {
                    self.subqueries(e);
                }
                // An outer join's ON relates the two sides' keys too (but pins no key).
                let outer_on: Vec<&Expr> = sel
                    .from
                    .iter()
                    .flat_map(|twj| twj.joins.iter())
                    .filter_map(|j| match &j.join_operator {
                        ast::JoinOperator::Left(ast::JoinConstraint::On(e))
                        | ast::JoinOperator::LeftOuter(ast::JoinConstraint::On(e))
                        | ast::JoinOperator::Right(ast::JoinConstraint::On(e))
                        | ast::JoinOperator::RightOuter(ast::JoinConstraint::On(e))
                        | ast::JoinOperator::FullOuter(ast::JoinConstraint::On(e)) => Some(e),
                        _ => None,
                    })
                    .collect();
                for e in &outer_on {
                    self.subqueries(e);
                }
                if let Some(w) = &sel.selection {
                    self.subqueries(w);
                }
                for item in &sel.projection {
                    if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } =
                        item
                    {
                        self.subqueries(e);
                    }
                }
                if let Some(h) = &sel.having {
                    self.subqueries(h);
                }
                self.keyed_uses_on(&scope, sel.selection.as_ref(), &on, &outer_on);
            }
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                let top = self.top_depth.take();
                self.set_expr(left);
                self.set_expr(right);
                self.top_depth = top;
            }
            SetExpr::Insert(Statement::Insert(i)) => {
                self.out.kind = Kind::Write;
                self.insert(i);
            }
            SetExpr::Update(Statement::Update(u)) => {
                self.out.kind = Kind::Write;
                self.update(u);
            }
            SetExpr::Delete(Statement::Delete(d)) => {
                self.out.kind = Kind::Write;
                self.delete(d);
            }
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    let name = ident_name(name);
                    self.note_table(&name);
                    if (self.key_columns)(&name).is_some() {
                        if !self.at_top() {
                            self.out.nested_sharded = true;
                        }
                        self.out.keyed.push(TableUse {
                            table: name,
                            keys: None,
                            bounds: Vec::new(),
                            nullable: false,
                        });
                    }
                }
            }
            SetExpr::Values(_) => {}
            _ => self.out.refuse = Some("this kind of query is not supported by the router".into()),
        }
    }

    fn table_with_joins(&mut self, twj: &TableWithJoins, scope: &mut Vec<InScope>) {
        use ast::JoinOperator as J;
        let from = scope.len();
        self.factor(&twj.relation, scope);
        let mut other = false;
        for j in &twj.joins {
            let before = scope.len();
            self.factor(&j.relation, scope);
            // The null-extended side of an outer join: its rows may come null-extended from
            // every shard, unless it is co-located with the preserved side (the plan judges).
            let (left, right) = match j.join_operator {
                J::Join(_) | J::Inner(_) | J::CrossJoin(_) => (false, false),
                J::Left(_) | J::LeftOuter(_) => (false, true),
                J::Right(_) | J::RightOuter(_) => (true, false),
                J::FullOuter(_) => (true, true),
                _ => {
                    other = true;
                    (false, false)
                }
            };
            if left {
                for t in &mut scope[from..before] {
                    t.nullable = true;
                }
            }
            if right {
                for t in &mut scope[before..] {
                    t.nullable = true;
                }
            }
        }
        if other {
            for t in &mut scope[from..] {
                t.top = false;
            }
        }
    }

    fn factor(&mut self, f: &TableFactor, scope: &mut Vec<InScope>) {
        match f {
            TableFactor::Table { name, alias, .. }
                if name.0.len() == 1 && self.ctes.contains(&base_name(name)) =>
            {
                // A CTE: its own query was walked as a scope of its own. A view of one
                // sharded table stands for that table here, joined on its key to its use
                // inside the CTE.
                let cte = base_name(name);
                if let Some((_, table, inner)) = self
                    .cte_views
                    .iter()
                    .rev()
                    .find(|(n, _, _)| *n == cte)
                    .cloned()
                {
                    let called = alias.as_ref().map(|a| ident_name(&a.name)).unwrap_or(cte);
                    scope.push(InScope {
                        table,
                        called,
                        top: self.at_top(),
                        nullable: false,
                        linked: Some(inner),
                    });
                }
            }
            TableFactor::Table { name, alias, .. } => {
                let table = base_name(name);
                self.note_table(&table);
                let called = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .unwrap_or_else(|| table.clone());
                scope.push(InScope {
                    table,
                    called,
                    top: self.at_top(),
                    nullable: false,
                    linked: None,
                });
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let before = self.out.keyed.len();
                self.query(subquery);
                // A derived table that is a view of one sharded table stands for it, as a
                // CTE does.
                let view = alias
                    .as_ref()
                    .filter(|a| a.columns.is_empty())
                    .and_then(|a| Some((a, self.view_of(subquery)?)));
                if let Some((a, table)) = view {
                    if let Some(inner) =
                        (before..self.out.keyed.len()).find(|&i| self.out.keyed[i].table == table)
                    {
                        scope.push(InScope {
                            table,
                            called: ident_name(&a.name),
                            top: self.at_top(),
                            nullable: false,
                            linked: Some(inner),
                        });
                    }
                }
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins, scope),
            _ => {}
        }
    }

    /// Subqueries inside a predicate are scopes of their own.
    fn subqueries(&mut self, e: &Expr) {
        match e {
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => self.query(q),
            Expr::In {
                expr,
                target: ast::InTarget::Subquery(subquery),
                ..
            } => {
                self.subqueries(expr);
                self.query(subquery);
            }
            Expr::BinaryOp { left, right, .. } => {
                self.subqueries(left);
                self.subqueries(right);
            }
            Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => self.subqueries(expr),
            _ => {}
        }
    }

    /// For each table of the scope with shard keys, the keys `selection` pins it to.
    fn keyed_uses(&mut self, scope: &[InScope], selection: Option<&Expr>) {
        self.keyed_uses_on(scope, selection, &[], &[]);
    }

    /// [`Self::keyed_uses`] with the ON conditions of the scope's inner joins; also notes
    /// the equalities between the key columns of two sharded tables of the scope.
    fn keyed_uses_on(
        &mut self,
        scope: &[InScope],
        selection: Option<&Expr>,
        on: &[&Expr],
        outer_on: &[&Expr],
    ) {
        let mut parts = Vec::new();
        if let Some(s) = selection {
            conjuncts(s, &mut parts);
        }
        for e in on {
            conjuncts(e, &mut parts);
        }
        // Which `keyed` use each table of the scope became, and its single key column.
        let mut used: Vec<(usize, &InScope, String)> = Vec::new();
        let mut next = self.out.keyed.len();
        for t in scope {
            if let Some(cols) = (self.key_columns)(&t.table) {
                if cols.len() == 1 {
                    used.push((next, t, cols[0].clone()));
                }
                next += 1;
            }
        }
        let column_of = |e: &Expr| -> Option<usize> {
            let e = match e {
                Expr::Nested(inner) => inner.as_ref(),
                x => x,
            };
            used.iter().position(|(_, t, col)| match e {
                Expr::Identifier(i) => scope.len() == 1 && ident_name(i) == *col,
                Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                    ident_name(&p[p.len() - 1]) == *col && ident_name(&p[p.len() - 2]) == t.called
                }
                _ => false,
            })
        };
        let mut joins = Vec::new();
        let mut related: Vec<&Expr> = parts.clone();
        for e in outer_on {
            conjuncts(e, &mut related);
        }
        for p in &related {
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = p
            {
                if let (Some(a), Some(b)) = (column_of(left), column_of(right)) {
                    if a != b {
                        joins.push((used[a].0, used[b].0));
                    }
                }
            }
        }
        self.out.key_joins.extend(joins);
        for t in scope {
            let Some(cols) = (self.key_columns)(&t.table) else {
                continue;
            };
            let unqualified_ok = scope.len() == 1;
            let is_col = |e: &Expr, col: &str| match e {
                Expr::Identifier(i) => unqualified_ok && ident_name(i) == col,
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    ident_name(&parts[parts.len() - 1]) == col
                        && ident_name(&parts[parts.len() - 2]) == t.called
                }
                Expr::Nested(inner) => {
                    matches!(inner.as_ref(), Expr::Identifier(i) if unqualified_ok && ident_name(i) == col)
                }
                _ => false,
            };
            let mut per_column: Vec<Vec<KeyExpr>> = Vec::new();
            for col in &cols {
                let found = parts.iter().find_map(|p| match p {
                    Expr::BinaryOp {
                        left,
                        op: BinaryOperator::Eq,
                        right,
                    } => {
                        if is_col(left, col) {
                            key_value(right).map(|v| vec![v])
                        } else if is_col(right, col) {
                            key_value(left).map(|v| vec![v])
                        } else {
                            None
                        }
                    }
                    Expr::In {
                        expr,
                        target: ast::InTarget::List(list),
                        negated: false,
                        ..
                    } if is_col(expr, col) => list.iter().map(key_value).collect(),
                    Expr::AnyOp {
                        left,
                        compare_op: BinaryOperator::Eq,
                        right,
                        ..
                    } if is_col(left, col) => match key_value(right) {
                        Some(KeyExpr::Param(n)) => Some(vec![KeyExpr::ParamArray(n)]),
                        _ => None,
                    },
                    _ => None,
                });
                match found {
                    Some(vals) => per_column.push(vals),
                    None => {
                        per_column.clear();
                        break;
                    }
                }
            }
            let keys = if per_column.is_empty() {
                None
            } else if per_column.len() == 1 {
                Some(per_column.remove(0).into_iter().map(|v| vec![v]).collect())
            } else if per_column.iter().all(|c| c.len() == 1) {
                Some(vec![per_column
                    .into_iter()
                    .map(|mut c| c.remove(0))
                    .collect()])
            } else {
                None // IN lists over a multi-column key: not pinned
            };
            let mut bounds = Vec::new();
            if keys.is_none() && cols.len() == 1 {
                let col = &cols[0];
                for p in &parts {
                    match p {
                        Expr::BinaryOp { left, op, right } => {
                            let (v, op) = if is_col(left, col) {
                                (key_value(right), op.clone())
                            } else if is_col(right, col) {
                                // `v < key` is `key > v`.
                                let flipped = match op {
                                    BinaryOperator::Lt => BinaryOperator::Gt,
                                    BinaryOperator::LtEq => BinaryOperator::GtEq,
                                    BinaryOperator::Gt => BinaryOperator::Lt,
                                    BinaryOperator::GtEq => BinaryOperator::LtEq,
                                    other => other.clone(),
                                };
                                (key_value(left), flipped)
                            } else {
                                continue;
                            };
                            let Some(v) = v else { continue };
                            match op {
                                BinaryOperator::Gt => bounds.push(Bound::Above(v, false)),
                                BinaryOperator::GtEq => bounds.push(Bound::Above(v, true)),
                                BinaryOperator::Lt => bounds.push(Bound::Below(v, false)),
                                BinaryOperator::LtEq => bounds.push(Bound::Below(v, true)),
                                _ => {}
                            }
                        }
                        Expr::Between {
                            expr,
                            negated: false,
                            low,
                            high,
                        } if is_col(expr, col) => {
                            if let (Some(l), Some(h)) = (key_value(low), key_value(high)) {
                                bounds.push(Bound::Above(l, true));
                                bounds.push(Bound::Below(h, true));
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !t.top {
                self.out.nested_sharded = true;
            }
            if let Some(inner) = t.linked {
                self.out.key_joins.push((self.out.keyed.len(), inner));
            }
            self.out.keyed.push(TableUse {
                table: t.table.clone(),
                keys,
                bounds,
                nullable: t.nullable,
            });
        }
    }

    fn insert(&mut self, i: &ast::Insert) {
        let TableObject::TableName(name) = &i.table else {
            self.out.refuse = Some("INSERT into a table function is not supported".into());
            return;
        };
        let table = base_name(name);
        self.note_table(&table);
        let Some(cols) = (self.key_columns)(&table) else {
            if let Some(src) = &i.source {
                self.query(src);
            }
            return;
        };
        let names: Vec<String> = i
            .columns
            .iter()
            .map(|c| {
                c.0.last()
                    .and_then(|p| p.as_ident())
                    .map(ident_name)
                    .unwrap_or_default()
            })
            .collect();
        let positions: Option<Vec<usize>> = cols
            .iter()
            .map(|c| names.iter().position(|n| n == c))
            .collect();
        let rows = match (
            i.source.as_deref().map(|q| q.body.as_ref()),
            positions.clone(),
        ) {
            (Some(SetExpr::Values(v)), Some(pos)) => v
                .rows
                .iter()
                .map(|row| {
                    pos.iter()
                        .map(|&p| row.content.get(p).and_then(key_value))
                        .collect()
                })
                .collect::<Option<Vec<Vec<KeyExpr>>>>(),
            _ => None,
        };
        if rows.is_none() {
            if let (Some(src), Some(pos)) = (
                i.source
                    .as_deref()
                    .filter(|q| matches!(q.body.as_ref(), SetExpr::Select(_))),
                positions.as_ref().filter(|p| p.len() == 1),
            ) {
                // INSERT ... SELECT: when the target's key is a sharded source table's key
                // column, every row goes to the shard the source row is on (the plan joins
                // the two uses: same map, a pinned source pins the target).
                let before = self.out.keyed.len();
                self.query(src);
                if let Some(source) = self.key_source(src, pos[0], before) {
                    let target = self.out.keyed.len();
                    self.out.keyed.push(TableUse {
                        table,
                        keys: None,
                        bounds: Vec::new(),
                        nullable: false,
                    });
                    self.out.key_joins.push((target, source));
                    return;
                }
                self.out.refuse = Some(format!(
                    "INSERT ... SELECT into `{table}` whose key column ({}) is not the shard key of a sharded table it selects from",
                    cols.join(", ")
                ));
                return;
            }
            if i.columns.is_empty()
                && matches!(
                    i.source.as_deref().map(|q| q.body.as_ref()),
                    Some(SetExpr::Values(_))
                )
            {
                self.out.insert_without_columns = Some(table.clone());
            }
            self.out.refuse = Some(format!(
                "INSERT into `{table}` must name its shard key column(s) ({}) and give each row's key as a constant or parameter in VALUES",
                cols.join(", ")
            ));
        }
        self.out.keyed.push(TableUse {
            table,
            keys: rows,
            bounds: Vec::new(),
            nullable: false,
        });
    }

    /// The `keyed` use (from index `from` on) whose table's single key column is the
    /// `position`-th item of the source query's select list, if any.
    fn key_source(&self, src: &Query, position: usize, from: usize) -> Option<usize> {
        let SetExpr::Select(sel) = src.body.as_ref() else {
            return None;
        };
        let item = match sel.projection.get(position)? {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return None,
        };
        let (qualifier, column) = match item {
            Expr::Identifier(c) => (None, ident_name(c)),
            Expr::CompoundIdentifier(p) if p.len() >= 2 => (
                Some(ident_name(&p[p.len() - 2])),
                ident_name(&p[p.len() - 1]),
            ),
            _ => return None,
        };
        // The source's FROM items: (table, the name it goes by).
        let mut tables: Vec<(String, String)> = Vec::new();
        for twj in &sel.from {
            for f in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
                if let TableFactor::Table { name, alias, .. } = f {
                    let t = base_name(name);
                    let called = alias
                        .as_ref()
                        .map(|a| ident_name(&a.name))
                        .unwrap_or_else(|| t.clone());
                    tables.push((t, called));
                }
            }
        }
        let table = match qualifier {
            Some(q) => tables.iter().find(|(_, c)| *c == q)?.0.clone(),
            None if tables.len() == 1 => tables[0].0.clone(),
            None => return None,
        };
        if (self.key_columns)(&table)? != [column] {
            return None;
        }
        (from..self.out.keyed.len()).find(|&i| self.out.keyed[i].table == table)
    }

    fn update(&mut self, u: &ast::Update) {
        let mut scope = Vec::new();
        self.table_with_joins(&u.table, &mut scope);
        if let Some(from) = &u.from {
            let (ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) =
                from;
            for twj in f {
                self.table_with_joins(twj, &mut scope);
            }
        }
        if let Some(first) = scope.first() {
            if let Some(cols) = (self.key_columns)(&first.table) {
                let changes_key = u.assignments.iter().any(|a| match &a.target {
                    ast::AssignmentTarget::ColumnName(n) => cols.contains(&base_name(n)),
                    ast::AssignmentTarget::Tuple(ns) => {
                        ns.iter().any(|n| cols.contains(&base_name(n)))
                    }
                });
                if changes_key {
                    self.out.refuse = Some(format!(
                        "UPDATE of `{}` changes its shard key; delete the row and insert it anew instead",
                        first.table
                    ));
                }
            }
        }
        if let Some(w) = &u.selection {
            self.subqueries(w);
        }
        self.keyed_uses(&scope, u.selection.as_ref());
    }

    fn delete(&mut self, d: &ast::Delete) {
        let mut scope = Vec::new();
        let (FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f)) = &d.from;
        for twj in f {
            self.table_with_joins(twj, &mut scope);
        }
        if let Some(using) = &d.using {
            for twj in using {
                self.table_with_joins(twj, &mut scope);
            }
        }
        if let Some(w) = &d.selection {
            self.subqueries(w);
        }
        self.keyed_uses(&scope, d.selection.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &str) -> Option<Vec<String>> {
        match t {
            "pgbench_accounts" => Some(vec!["aid".into()]),
            "orders" => Some(vec!["customer_id".into()]),
            "pairs" => Some(vec!["a".into(), "b".into()]),
            _ => None,
        }
    }

    fn a(sql: &str) -> Analysis {
        analyze(sql, &keys).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn lit(s: &str) -> KeyExpr {
        KeyExpr::Literal(s.into())
    }

    #[test]
    fn keys_in_where() {
        let x = a("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
        assert_eq!(x.kind, Kind::Read);
        assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("42")]]));
        assert!(!x.needs_merge);
        let x = a("SELECT * FROM orders o WHERE o.customer_id IN (1, 2, -3) AND total > 5");
        assert_eq!(
            x.keyed[0].keys,
            Some(vec![vec![lit("1")], vec![lit("2")], vec![lit("-3")]])
        );
        let x = a("SELECT * FROM orders WHERE $1 = customer_id");
        assert_eq!(x.keyed[0].keys, Some(vec![vec![KeyExpr::Param(1)]]));
        let x = a("SELECT * FROM orders WHERE customer_id = ANY($2)");
        assert_eq!(x.keyed[0].keys, Some(vec![vec![KeyExpr::ParamArray(2)]]));
        let x = a("SELECT * FROM pairs WHERE b = 'x' AND a = 7");
        assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("7"), lit("x")]]));
    }

    #[test]
    fn what_does_not_pin_a_key() {
        for sql in [
            "SELECT * FROM orders WHERE customer_id = 1 OR total > 5",
            "SELECT * FROM orders WHERE customer_id > 1",
            "SELECT * FROM orders WHERE customer_id NOT IN (1)",
            "SELECT * FROM orders",
            "SELECT * FROM pairs WHERE a = 1",
        ] {
            assert_eq!(a(sql).keyed[0].keys, None, "{sql}");
        }
    }

    #[test]
    fn merges_are_noticed() {
        for sql in [
            "SELECT * FROM orders ORDER BY total",
            "SELECT * FROM orders LIMIT 5",
            "SELECT count(*) FROM orders",
            "SELECT DISTINCT total FROM orders",
            "SELECT customer_id, sum(total) FROM orders GROUP BY customer_id",
        ] {
            assert!(a(sql).needs_merge, "{sql}");
        }
        // Window functions are computed over all the rows: merged (by the shard key's
        // partitions) or refused, never concatenated; aggregates inside expressions too.
        for sql in [
            "SELECT total, row_number() OVER () FROM orders",
            "SELECT row_number() OVER (ORDER BY id) FROM orders",
            "SELECT count(*) + 1 FROM orders",
            "SELECT CASE WHEN max(total) > 5 THEN 1 END FROM orders",
            "SELECT coalesce(sum(total), 0)::int FROM orders",
            "SELECT \"count\"(*) FROM orders",
            "SELECT count(*) IS NULL FROM orders",
            "SELECT ARRAY[count(*)] FROM orders",
            "SELECT count(*) IN (1, 300) FROM orders",
            "SELECT bit_xor(total) FROM orders",
            "SELECT id, count(*) OVER () FROM orders",
        ] {
            assert!(a(sql).needs_merge, "{sql}");
        }
        assert!(!a("SELECT lower(note), total + 1 FROM orders").needs_merge);
    }

    #[test]
    fn a_cte_named_like_a_table_is_the_cte() {
        // `orders` is the CTE over a reference table, not the sharded table.
        let x = a("WITH orders AS (SELECT code FROM regions) SELECT code FROM orders");
        assert!(
            x.keyed.iter().all(|u| u.table != "orders") || x.nested_sharded,
            "{x:?}"
        );
        // A recursive CTE sees its own name.
        let x = a("WITH RECURSIVE orders(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM orders WHERE n < 3) SELECT n FROM orders");
        assert!(
            x.keyed.iter().all(|u| u.table != "orders") || x.nested_sharded,
            "{x:?}"
        );
    }

    #[test]
    fn subqueries_and_ctes_are_scopes() {
        let x = a("WITH o AS (SELECT * FROM orders WHERE customer_id = 5) SELECT * FROM o");
        assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("5")]]));
        // The CTE is a view of orders: its use outside stands for orders, joined on the key
        // to the use inside (the plan carries the key across).
        assert_eq!(x.keyed.len(), 2);
        assert_eq!(x.keyed[1].table, "orders");
        assert_eq!(x.key_joins, vec![(1, 0)]);
        let x = a("WITH o AS (SELECT id, total FROM orders) SELECT * FROM o WHERE customer_id = 5");
        assert_eq!(
            x.keyed.len(),
            1,
            "a view without the key column is no view: {x:?}"
        );
        let x = a("SELECT * FROM (SELECT * FROM orders) d WHERE d.customer_id = 7");
        assert_eq!(x.keyed[1].keys, Some(vec![vec![lit("7")]]));
        assert_eq!(x.key_joins, vec![(1, 0)]);
        let x = a("SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE customer_id = 9)");
        assert_eq!(x.tables, vec!["customers", "orders"]);
        assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("9")]]));
    }

    #[test]
    fn dml() {
        let x = a("INSERT INTO orders (id, customer_id, total) VALUES (1, 10, 5), (2, $1, 6)");
        assert_eq!(x.kind, Kind::Write);
        assert_eq!(
            x.keyed[0].keys,
            Some(vec![vec![lit("10")], vec![KeyExpr::Param(1)]])
        );
        assert!(a("INSERT INTO orders VALUES (1, 2, 3)").refuse.is_some());
        assert!(a("INSERT INTO orders (id, customer_id) SELECT 1, 2")
            .refuse
            .is_some());
        let x = a("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2");
        assert_eq!(x.keyed[0].keys, Some(vec![vec![KeyExpr::Param(2)]]));
        assert!(a("UPDATE orders SET customer_id = 3 WHERE customer_id = 2")
            .refuse
            .is_some());
        let x = a("DELETE FROM orders WHERE customer_id = 4");
        assert_eq!(x.keyed[0].keys, Some(vec![vec![lit("4")]]));
        assert_eq!(
            a("SELECT * FROM orders WHERE customer_id = 1 FOR UPDATE").kind,
            Kind::Write
        );
        assert_eq!(a("INSERT INTO other VALUES (1)").keyed, vec![]);
    }

    #[test]
    fn keyword_classes() {
        assert_eq!(a("CREATE TABLE t (id int)").kind, Kind::Ddl);
        assert_eq!(a("VACUUM ANALYZE t").kind, Kind::Maintenance);
        assert_eq!(a("PREPARE TRANSACTION 'x'").kind, Kind::Transaction);
        assert_eq!(
            a("begin isolation level serializable").kind,
            Kind::Transaction
        );
        assert_eq!(a("SET search_path TO a").kind, Kind::Session);
        assert_eq!(a("DO $$ BEGIN END $$").kind, Kind::Opaque);
        assert!(analyze("SELECT FROM WHERE", &keys).is_err());
    }
}
