//! The merge planner: a SELECT that runs on several shards and needs its rows merged
//! (ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY, HAVING, DISTINCT, DISTINCT ON) becomes
//! the query each shard runs and the tree of merge primitives above it
//! ([`merge::plan::MergePlan`]).
//!
//! Rewrites: ORDER BY stays on the shards (each stream arrives sorted) and becomes the keys
//! of a MergeSort; LIMIT n OFFSET m goes to the shards as LIMIT n+m and is applied at the
//! proxy; aggregates become partial aggregates (avg(x) → sum(x) and a count(x) helper,
//! min/max get a binary twin to compare by), the shards GROUP BY the same keys, and the
//! proxy finishes them (Aggregate), applies HAVING (Filter), ORDER BY (Sort), DISTINCT and
//! LIMIT. Every value the proxy must compare (sort keys, group keys, DISTINCT ON keys) is
//! fetched again as a helper column at the end of the select list, in binary format, so
//! that types whose text depends on the session (dates, timestamps, intervals) compare
//! exactly; helpers are dropped (Project) before rows reach the client.
//!
//! What does not decompose exactly is refused with a reason and a hint: DISTINCT
//! aggregates (but count/sum/avg(DISTINCT shard key)), aggregates other than count, sum,
//! avg, min, max, bool_and, bool_or, every; expressions over aggregates; window functions
//! not partitioned by the shard key; set operations; LIMIT by a parameter; and ordering of
//! text under a collation other than "C" (the executor refuses too, when a key arrives as
//! text, since the planner does not know column types).

use merge::plan::{Agg, AggKind, CmpOp, Col, MergePlan, Node, Predicate, SortKey};
use sgconfig::DatabaseConfig;
use sqlparser::ast::{
    self, BinaryOperator, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, LimitClause, ObjectName, Query, Select, SelectItem, SetExpr, Statement,
    UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::analyze::{Analysis, Kind};
use crate::plan::{map_for, plan, Plan};

mod sql;
use sql::*;

/// The database's collation, which decides how the shards order text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collation {
    /// "C" (or "POSIX"): bytewise, as the proxy compares.
    C,
    /// Any other: text keys are refused unless they say `COLLATE "C"`.
    Other(String),
}

/// Why a statement cannot be merged, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub hint: String,
}

fn refuse<T>(reason: impl Into<String>, hint: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        reason: reason.into(),
        hint: hint.into(),
    })
}

const ONE_SHARD: &str =
    "Give the shard key so that the query runs on one shard, or name the shard: /* shardgate: shard=NAME */.";

/// Plans the merge of a read that runs on several shards. `params` are bound values in
/// text form, as for [`crate::plan::plan`]; `sql` is the statement `a` was made from.
pub fn plan_merge(
    db: &DatabaseConfig,
    a: &Analysis,
    sql: &str,
    params: &[Option<String>],
    collation: &Collation,
) -> Result<MergePlan, Refusal> {
    if a.kind != Kind::Read {
        return refuse("only reads are merged across shards", ONE_SHARD);
    }
    let unmerged = Analysis {
        needs_merge: false,
        ..a.clone()
    };
    let target = plan(db, &unmerged, params);
    if let Plan::Shard(shard) = target {
        return Ok(MergePlan {
            root: Node::Route {
                shard,
                sql: sql.to_owned(),
            },
            helpers: 0,
            visible: None,
        });
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| Refusal {
        reason: e.to_string(),
        hint: "See docs/merge.md for the queries the proxy merges.".into(),
    })?;
    let Some(Statement::Query(query)) = statements.pop().filter(|_| statements.is_empty()) else {
        return refuse("only a single SELECT is merged across shards", ONE_SHARD);
    };
    // Tables of shard maps, with their key columns (for DISTINCT aggregates and windows).
    let keys: Vec<(String, String)> = a
        .keyed
        .iter()
        .filter_map(|u| {
            let (_, cols) = map_for(db, &u.table)?;
            (cols.len() == 1).then(|| (u.table.clone(), cols[0].to_ascii_lowercase()))
        })
        .collect();
    // The statement's shape first (its refusals say more than the routing's).
    let planner = Planner::new(*query, keys, collation.clone())?;
    let shards: Vec<String> = match target {
        Plan::Shards(s) => s,
        Plan::AllShards => db.shards.iter().map(|(n, _)| n.to_string()).collect(),
        Plan::Refuse { reason, hint } => return refuse(reason, hint),
        Plan::AtBind => {
            return refuse(
                "the shards depend on a parameter that is not bound yet",
                "Plan again with the bound parameters (at Bind).",
            )
        }
        other => {
            return refuse(
                format!("the statement does not run on several shards ({other:?})"),
                "Run it as routed.",
            )
        }
    };
    planner.plan(shards)
}

struct Planner {
    query: Query,
    select: Select,
    /// Sharded tables (name) and their single key column; aliases of those tables.
    keys: Vec<(String, String)>,
    aliases: Vec<(String, String)>,
    collation: Collation,
    visible: Option<usize>,
    helpers: Vec<Expr>,
    aggs: Vec<Agg>,
    /// Aggregate expressions already decomposed (text), with the Agg's index.
    agg_exprs: Vec<(String, usize)>,
    /// The select list as the statement wrote it: positions and output names refer to
    /// these, not to the partial aggregates the shards' select list gets in their place.
    written: Vec<SelectItem>,
}

impl Planner {
    fn new(
        query: Query,
        keys: Vec<(String, String)>,
        collation: Collation,
    ) -> Result<Planner, Refusal> {
        if !query.locks.is_empty() {
            return refuse("a locking read (FOR UPDATE/SHARE) across shards", ONE_SHARD);
        }
        let select = match query.body.as_ref() {
            SetExpr::Select(s) => (**s).clone(),
            SetExpr::SetOperation { .. } => {
                return refuse(
                    "a set operation (UNION, INTERSECT, EXCEPT) across shards",
                    "Run each part as its own query, or give the shard key.",
                )
            }
            _ => return refuse("this query form is not merged across shards", ONE_SHARD),
        };
        if select.into.is_some() {
            return refuse("SELECT INTO across shards", ONE_SHARD);
        }
        if !select.named_window.is_empty() || select.qualify.is_some() {
            return refuse("named windows across shards", ONE_SHARD);
        }
        let mut aliases = Vec::new();
        for twj in &select.from {
            for f in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
                if let ast::TableFactor::Table { name, alias, .. } = f {
                    let t = name
                        .0
                        .last()
                        .and_then(|p| p.as_ident())
                        .map(ident_name)
                        .unwrap_or_default();
                    if let Some(al) = alias {
                        aliases.push((ident_name(&al.name), t));
                    }
                }
            }
        }
        let visible = (!select.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        }))
        .then_some(select.projection.len());
        Ok(Planner {
            written: select.projection.clone(),
            query,
            select,
            keys,
            aliases,
            collation,
            visible,
            helpers: Vec::new(),
            aggs: Vec::new(),
            agg_exprs: Vec::new(),
        })
    }

    /// Whether `e` names the key column of a sharded table of the statement.
    fn is_shard_key(&self, e: &Expr) -> bool {
        let (table, col) = match e {
            Expr::Identifier(i) => (None, ident_name(i)),
            Expr::CompoundIdentifier(p) if p.len() >= 2 => (
                Some(ident_name(&p[p.len() - 2])),
                ident_name(&p[p.len() - 1]),
            ),
            Expr::Nested(e) => return self.is_shard_key(e),
            _ => return false,
        };
        self.keys.iter().any(|(t, k)| {
            *k == col
                && table.as_ref().is_none_or(|q| {
                    q == t || self.aliases.iter().any(|(al, tt)| al == q && tt == t)
                })
        })
    }

    fn bytewise(&self, e: &Expr) -> Result<bool, Refusal> {
        if let Expr::Collate { collation, .. } = e {
            let name = collation.to_string().trim_matches('"').to_ascii_lowercase();
            return if name == "c" || name == "posix" {
                Ok(true)
            } else {
                refuse(
                    format!("ORDER BY with COLLATE {collation} across shards: the proxy merges text in bytewise (\"C\") order"),
                    "Use COLLATE \"C\", or give the shard key so that the query runs on one shard.",
                )
            };
        }
        Ok(self.collation == Collation::C)
    }

    /// A helper column holding `e` (reused when the same expression is already one).
    fn helper(&mut self, e: &Expr) -> Col {
        let text = e.to_string();
        if let Some(i) = self.helpers.iter().position(|h| h.to_string() == text) {
            return Col::Helper(i);
        }
        self.helpers.push(e.clone());
        Col::Helper(self.helpers.len() - 1)
    }

    /// The select-list item a key names: a position, or an output column's name.
    fn item_for(&self, e: &Expr) -> Result<Option<usize>, Refusal> {
        if let Some(n) = const_u64(e) {
            if self.visible.is_none() {
                return refuse(
                    "ORDER BY a position with * in the select list (the proxy cannot tell which column it is)",
                    "Name the column instead of its position.",
                );
            }
            if n == 0 || n as usize > self.select.projection.len() {
                return refuse(
                    format!("ORDER BY position {n} is not in the select list"),
                    "Fix the position.",
                );
            }
            return Ok(Some(n as usize - 1));
        }
        if let Expr::Identifier(i) = e {
            let name = ident_name(i);
            if let Some(p) = self
                .select
                .projection
                .iter()
                .position(|it| output_name(it).as_deref() == Some(name.as_str()))
            {
                // With * before it, the item's position among the shards' columns is unknown,
                // but its expression is all a helper needs.
                return Ok(Some(p));
            }
        }
        let text = e.to_string();
        Ok(self.select.projection.iter().position(|it| match it {
            SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => {
                x.to_string() == text
            }
            _ => false,
        }))
    }

    fn item_expr(&self, i: usize) -> Expr {
        match &self.written[i] {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
            _ => unreachable!("positions of * are refused"),
        }
    }

    /// Decomposes an aggregate call whose final value goes to `target` (a visible column,
    /// or a new helper when None); returns the Agg's index and the shard's partial
    /// expression for `target`.
    fn aggregate(&mut self, e: &Expr, target: Option<Col>) -> Result<(usize, Expr), Refusal> {
        let text = e.to_string();
        if target.is_none() {
            if let Some((_, i)) = self.agg_exprs.iter().find(|(t, _)| *t == text) {
                return Ok((*i, e.clone()));
            }
        }
        let f = is_aggregate_call(e).expect("an aggregate call");
        let name = func_name(f);
        if !DECOMPOSABLE.contains(&name.as_str()) {
            return refuse(
                format!("{name}() across shards: its per-shard results cannot be combined into the exact result"),
                ONE_SHARD,
            );
        }
        if !f.within_group.is_empty() || f.null_treatment.is_some() {
            return refuse(
                format!("{name}() with WITHIN GROUP across shards"),
                ONE_SHARD,
            );
        }
        let FunctionArguments::List(list) = &f.args else {
            return refuse(format!("{name} without an argument list"), ONE_SHARD);
        };
        if !list.clauses.is_empty() {
            return refuse(
                format!("{name}() with ORDER BY or other clauses across shards"),
                ONE_SHARD,
            );
        }
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(x))] => Some(x),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if name == "count" => None,
            _ => {
                return refuse(
                    format!("{name}() with these arguments across shards"),
                    ONE_SHARD,
                )
            }
        };
        let distinct = matches!(
            list.duplicate_treatment,
            Some(ast::DuplicateTreatment::Distinct)
        );
        if distinct
            && matches!(name.as_str(), "count" | "sum" | "avg")
            && !arg.is_some_and(|x| self.is_shard_key(x))
        {
            return refuse(
                format!("{name}(DISTINCT ...) across shards: the same value may be counted on several shards"),
                "Use DISTINCT on the shard key (each key lives on one shard), or give the shard key so that the query runs on one shard.",
            );
        }
        if matches!(name.as_str(), "sum" | "avg") && arg.is_some_and(is_float_cast) {
            return refuse(
                format!("{name}() of real or double precision values across shards (floating-point addition depends on the order of the rows)"),
                "Cast the argument to numeric (e.g. sum(x::numeric)), or give the shard key so that the query runs on one shard.",
            );
        }
        let target = match target {
            Some(t) => t,
            None => {
                self.helpers.push(e.clone());
                Col::Helper(self.helpers.len() - 1)
            }
        };
        let with_name = |n: &str| {
            let mut g = f.clone();
            g.name = ObjectName::from(vec![Ident::new(n)]);
            Expr::Function(g)
        };
        let (agg, partial) = match name.as_str() {
            "count" => (Agg::new(AggKind::Count, target), e.clone()),
            "sum" => (Agg::new(AggKind::Sum, target), e.clone()),
            "avg" => {
                // count(x::numeric) is count(x) (a cast keeps NULLs NULL), without casting
                // every row a second time.
                let mut count = with_name("count");
                if let Expr::Function(c) = &mut count {
                    if let FunctionArguments::List(l) = &mut c.args {
                        if let [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Cast {
                            expr,
                            ..
                        }))] = l.args.as_slice()
                        {
                            let inner = (**expr).clone();
                            l.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))];
                        }
                    }
                }
                self.helpers.push(count);
                let count = Some(Col::Helper(self.helpers.len() - 1));
                let agg = Agg {
                    count,
                    ..Agg::new(AggKind::Avg, target)
                };
                (agg, with_name("sum"))
            }
            "min" | "max" => {
                let kind = if name == "min" {
                    AggKind::Min
                } else {
                    AggKind::Max
                };
                let bytewise_text = self.bytewise(arg.expect("min/max have an argument"))?;
                // A helper is fetched in binary already; a visible column gets a binary twin.
                let compare = match target {
                    Col::Helper(_) => None,
                    Col::Visible(_) => {
                        self.helpers.push(e.clone());
                        Some(Col::Helper(self.helpers.len() - 1))
                    }
                };
                let agg = Agg {
                    compare,
                    bytewise_text,
                    ..Agg::new(kind, target)
                };
                (agg, e.clone())
            }
            "bool_and" | "every" => (Agg::new(AggKind::BoolAnd, target), e.clone()),
            _ => (Agg::new(AggKind::BoolOr, target), e.clone()),
        };
        if let Col::Helper(h) = target {
            self.helpers[h] = partial.clone();
        }
        self.aggs.push(agg);
        self.agg_exprs.push((text, self.aggs.len() - 1));
        Ok((self.aggs.len() - 1, partial))
    }

    /// The column a comparison of aggregate `i` reads (a min/max's binary twin).
    fn agg_key(&self, i: usize) -> Col {
        let a = &self.aggs[i];
        a.compare.unwrap_or(a.column)
    }

    /// A sort or DISTINCT ON key over aggregated rows: an aggregate's final value, or a
    /// binary twin of a grouped expression.
    fn key_after_aggregation(&mut self, e: &Expr) -> Result<Col, Refusal> {
        let e = match self.item_for(e)? {
            Some(i) => self.item_expr(i),
            None => e.clone(),
        };
        let bare = match &e {
            Expr::Collate { expr, .. } => expr.as_ref(),
            x => x,
        };
        if is_aggregate_call(bare).is_some() {
            let (i, _) = self.aggregate(bare, None)?;
            return Ok(self.agg_key(i));
        }
        if has_aggregate(&e) {
            return refuse(
                format!(
                    "ORDER BY or DISTINCT ON an expression over aggregates (`{e}`) across shards"
                ),
                "Order by the aggregates themselves, or give the shard key.",
            );
        }
        Ok(self.helper(&e))
    }

    /// The columns a plain DISTINCT compares rows by: a binary twin of each item of the
    /// select list (over aggregated rows: an aggregate's final value, or a min/max's binary
    /// twin), not the client's columns. In text a float prints rounded under
    /// `extra_float_digits` < 1 (distinct values print alike) and an interval's text cannot
    /// be compared (`1 mon` = `30 days`). None with `*` (the items are not known): the
    /// client's columns are compared.
    fn distinct_twins(&mut self, aggregated: bool) -> Result<Option<Vec<Col>>, Refusal> {
        if self.visible.is_none() {
            return Ok(None);
        }
        let mut cols = Vec::new();
        for i in 0..self.written.len() {
            let e = self.item_expr(i);
            let bare = match &e {
                Expr::Collate { expr, .. } => expr.as_ref(),
                x => x,
            };
            let c = if aggregated && is_aggregate_call(bare).is_some() {
                let (a, _) = self.aggregate(bare, None)?;
                self.agg_key(a)
            } else {
                self.helper(&e)
            };
            cols.push(c);
        }
        Ok(Some(cols))
    }

    /// PostgreSQL's rule for SELECT DISTINCT: every ORDER BY expression is in the select
    /// list (42P10 otherwise). The shards' query would carry it as a helper column and
    /// answer; refused instead, so that no answer comes where PostgreSQL gives an error.
    fn order_by_in_select_list(&self) -> Result<(), Refusal> {
        let Some(ob) = &self.query.order_by else {
            return Ok(());
        };
        let ast::OrderByKind::Expressions(items) = &ob.kind else {
            return Ok(());
        };
        for it in items {
            if self.item_for(&it.expr)?.is_some() {
                continue;
            }
            let text = it.expr.to_string();
            let listed = self.written.iter().any(|item| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    e.to_string() == text
                }
                _ => true,
            });
            if !listed {
                return refuse(
                    format!("for SELECT DISTINCT, ORDER BY expressions must appear in select list (`{text}` does not; PostgreSQL refuses it with 42P10)"),
                    "Add the expression to the select list, or drop it from ORDER BY.",
                );
            }
        }
        Ok(())
    }

    fn sort_keys(&mut self, aggregated: bool) -> Result<Vec<SortKey>, Refusal> {
        let Some(ob) = self.query.order_by.clone() else {
            return Ok(Vec::new());
        };
        let ast::OrderByKind::Expressions(items) = &ob.kind else {
            return refuse("ORDER BY ALL across shards", "Name the sort keys.");
        };
        let mut keys = Vec::new();
        for it in items {
            let descending = match &it.options.sort {
                None | Some(ast::OrderBySort::Asc) => false,
                Some(ast::OrderBySort::Desc) => true,
                Some(ast::OrderBySort::Using(_)) => {
                    return refuse("ORDER BY ... USING across shards", "Use ASC or DESC.")
                }
            };
            let nulls_first = it.options.nulls_first.unwrap_or(descending);
            let expr = match self.item_for(&it.expr)? {
                Some(i) => self.item_expr(i),
                None => it.expr.clone(),
            };
            if has_window(&expr) {
                return refuse("ORDER BY a window function across shards", ONE_SHARD);
            }
            let bytewise_text = self.bytewise(&expr)?;
            let column = if aggregated {
                self.key_after_aggregation(&it.expr)?
            } else {
                self.helper(&expr)
            };
            keys.push(SortKey {
                column,
                descending,
                nulls_first,
                bytewise_text,
            });
        }
        Ok(keys)
    }

    fn having(&mut self, e: &Expr) -> Result<Predicate, Refusal> {
        let unsupported = |e: &Expr| {
            refuse(
                format!("HAVING `{e}` across shards: the proxy evaluates comparisons of aggregates or grouped expressions with constants, under AND, OR and NOT"),
                "Simplify the HAVING clause, filter in the application, or give the shard key.",
            )
        };
        Ok(match e {
            Expr::Nested(x) => self.having(x)?,
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => Predicate::And(vec![self.having(left)?, self.having(right)?]),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Or,
                right,
            } => Predicate::Or(vec![self.having(left)?, self.having(right)?]),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Predicate::Not(Box::new(self.having(expr)?)),
            Expr::IsNull(x) | Expr::IsNotNull(x) => Predicate::IsNull {
                column: self.operand(x)?,
                negated: matches!(e, Expr::IsNotNull(_)),
            },
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let (Some(lo), Some(hi)) = (literal(low), literal(high)) else {
                    return unsupported(e);
                };
                let column = self.operand(expr)?;
                let bytewise_text = self.collation == Collation::C;
                let p = Predicate::And(vec![
                    Predicate::Cmp {
                        column,
                        op: CmpOp::Ge,
                        value: lo,
                        bytewise_text,
                    },
                    Predicate::Cmp {
                        column,
                        op: CmpOp::Le,
                        value: hi,
                        bytewise_text,
                    },
                ]);
                if *negated {
                    Predicate::Not(Box::new(p))
                } else {
                    p
                }
            }
            Expr::BinaryOp { left, op, right } => {
                let Some(op) = cmp_op(op) else {
                    return unsupported(e);
                };
                let (x, op, value) = match (literal(left), literal(right)) {
                    (None, Some(v)) => (left, op, v),
                    (Some(v), None) => (right, flip(op), v),
                    _ => return unsupported(e),
                };
                let bytewise_text = self.bytewise(x)?;
                Predicate::Cmp {
                    column: self.operand(x)?,
                    op,
                    value,
                    bytewise_text,
                }
            }
            _ => return unsupported(e),
        })
    }

    /// A HAVING operand: an aggregate's final value, or a twin of a grouped expression.
    fn operand(&mut self, e: &Expr) -> Result<Col, Refusal> {
        let bare = match e {
            Expr::Nested(x) => x.as_ref(),
            x => x,
        };
        if is_aggregate_call(bare).is_some() {
            let (i, _) = self.aggregate(bare, None)?;
            return Ok(self.agg_key(i));
        }
        if has_aggregate(bare) {
            return refuse(
                format!("HAVING over an expression of aggregates (`{e}`) across shards"),
                "Compare the aggregates themselves with constants, or give the shard key.",
            );
        }
        Ok(self.helper(bare))
    }

    fn limits(&self) -> Result<(Option<u64>, u64), Refusal> {
        let bad = |what: &str| -> Result<u64, Refusal> {
            refuse(
                format!("{what} that is not an integer constant across shards (the proxy must know it to push LIMIT limit+offset down)"),
                "Write the LIMIT and OFFSET as numbers, or give the shard key.",
            )
        };
        let (mut limit, mut offset) = (None, 0);
        match &self.query.limit_clause {
            None => {}
            Some(LimitClause::LimitOffset {
                limit: l,
                offset: o,
                limit_by,
            }) => {
                if !limit_by.is_empty() {
                    bad("LIMIT BY")?;
                }
                if let Some(l) = l {
                    match l {
                        Expr::Value(v) if v.value == Value::Null => {}
                        l => limit = Some(const_u64(l).map_or_else(|| bad("a LIMIT"), Ok)?),
                    }
                }
                if let Some(o) = o {
                    offset = const_u64(&o.value).map_or_else(|| bad("an OFFSET"), Ok)?;
                }
            }
            Some(LimitClause::OffsetCommaLimit { .. }) => {
                bad("LIMIT offset, count")?;
            }
        }
        if let Some(f) = &self.query.fetch {
            if f.with_ties || f.percent {
                return refuse("FETCH ... WITH TIES or PERCENT across shards", ONE_SHARD);
            }
            limit = Some(match &f.quantity {
                None => 1,
                Some(q) => const_u64(q).map_or_else(|| bad("a FETCH FIRST count"), Ok)?,
            });
        }
        Ok((limit, offset))
    }

    fn check_windows(&self) -> Result<(), Refusal> {
        let mut bad = None;
        for item in &self.select.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                let _ = ast::visit_expressions(e, |x| {
                    if let Expr::Function(f) = x {
                        if let Some(w) = &f.over {
                            let ok = match w {
                                ast::WindowType::WindowSpec(s) => {
                                    s.partition_by.iter().any(|p| self.is_shard_key(p))
                                }
                                ast::WindowType::NamedWindow(_) => false,
                            };
                            if !ok {
                                bad = Some(func_name(f));
                                return std::ops::ControlFlow::Break(());
                            }
                        }
                    }
                    std::ops::ControlFlow::Continue(())
                });
            }
        }
        match bad {
            Some(f) => refuse(
                format!("window function {f}() across shards: each shard would see only its own rows of the window"),
                "Partition the window by the shard key (PARTITION BY key), or give the shard key so that the query runs on one shard.",
            ),
            None => Ok(()),
        }
    }

    fn plan(mut self, shards: Vec<String>) -> Result<MergePlan, Refusal> {
        let (limit, offset) = self.limits()?;
        let grouped = match &self.select.group_by {
            GroupByExpr::All(_) => {
                return refuse("GROUP BY ALL across shards", "Name the grouping keys.")
            }
            GroupByExpr::Expressions(e, m) => {
                if !m.is_empty() {
                    return refuse(
                        "GROUP BY with ROLLUP, CUBE or TOTALS across shards",
                        ONE_SHARD,
                    );
                }
                if e.iter()
                    .any(|x| matches!(x, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)))
                {
                    return refuse(
                        "GROUP BY ROLLUP, CUBE or GROUPING SETS across shards",
                        ONE_SHARD,
                    );
                }
                e.clone()
            }
        };
        let items: Vec<Option<Expr>> = self
            .select
            .projection
            .iter()
            .map(|i| match i {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    Some(e.clone())
                }
                _ => None,
            })
            .collect();
        let aggregated = !grouped.is_empty()
            || self.select.having.is_some()
            || items.iter().flatten().any(has_aggregate);
        self.check_windows()?;
        if !aggregated {
            return self.plan_rows(shards, limit, offset);
        }
        if self.visible.is_none() {
            return refuse(
                "SELECT * with GROUP BY or aggregates across shards",
                "Name the columns in the select list.",
            );
        }
        if items.iter().flatten().any(has_window) {
            return refuse(
                "window functions over aggregated rows across shards",
                ONE_SHARD,
            );
        }
        // The select list: aggregates become partials in place.
        for (i, e) in items.iter().enumerate() {
            let e = e.as_ref().expect("no wildcard here");
            if is_aggregate_call(e).is_some() {
                let (_, partial) = self.aggregate(e, Some(Col::Visible(i)))?;
                if partial.to_string() != e.to_string() {
                    let alias = match &self.select.projection[i] {
                        SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                        _ => Ident::new(func_name(is_aggregate_call(e).expect("checked"))),
                    };
                    self.select.projection[i] = SelectItem::ExprWithAlias {
                        expr: partial,
                        alias,
                    };
                }
            } else if has_aggregate(e) {
                return refuse(
                    format!("an expression over aggregates (`{e}`) across shards"),
                    "Select the aggregates themselves and compute the expression in the application, or give the shard key.",
                );
            }
        }
        // Group keys: twins of the grouped expressions.
        let mut group = Vec::new();
        for g in &grouped {
            let e = match self.group_item(g)? {
                Some(i) => self.item_expr(i),
                None => g.clone(),
            };
            if has_aggregate(&e) {
                return refuse("GROUP BY an aggregate", "Fix the GROUP BY.");
            }
            let c = self.helper(&e);
            if !group.contains(&c) {
                group.push(c);
            }
        }
        let predicate = match self.select.having.clone() {
            Some(h) => Some(self.having(&h)?),
            None => None,
        };
        let keys = self.sort_keys(true)?;
        let distinct = self.select.distinct.clone();
        let on = match &distinct {
            Some(Distinct::On(exprs)) => {
                let mut cols = Vec::new();
                for e in exprs {
                    cols.push(self.key_after_aggregation(e)?);
                }
                Some(cols)
            }
            _ => None,
        };
        let twins = match &distinct {
            Some(Distinct::Distinct) => self.distinct_twins(true)?,
            _ => None,
        };
        // The shards' query: partial aggregates, grouped the same way; no HAVING, ORDER BY,
        // DISTINCT or LIMIT (the proxy applies them over the final rows).
        self.select.having = None;
        self.select.distinct = None;
        self.query.order_by = None;
        self.query.limit_clause = None;
        self.query.fetch = None;
        let helpers = self.helpers.len();
        let sql = self.shard_sql();
        let mut node = Node::Scatter { shards, sql };
        node = Node::Aggregate {
            input: Box::new(node),
            group,
            aggs: self.aggs.clone(),
        };
        if let Some(predicate) = predicate {
            node = Node::Filter {
                input: Box::new(node),
                predicate,
            };
        }
        if matches!(distinct, Some(Distinct::Distinct)) {
            node = Node::Distinct {
                input: Box::new(node),
                on: twins,
                sorted: false,
            };
        }
        if !keys.is_empty() {
            node = Node::Sort {
                input: Box::new(node),
                keys: keys.clone(),
            };
        }
        if let Some(on) = on {
            let sorted = !keys.is_empty();
            node = Node::Distinct {
                input: Box::new(node),
                on: Some(on),
                sorted,
            };
        }
        Ok(self.finish(node, limit, offset, helpers))
    }

    /// GROUP BY's reading of a name or position: a position is a select-list item; a bare
    /// name that is an output column's alias (and not a plain column) is that item.
    fn group_item(&self, g: &Expr) -> Result<Option<usize>, Refusal> {
        if let Some(n) = const_u64(g) {
            if n == 0 || n as usize > self.select.projection.len() {
                return refuse(
                    format!("GROUP BY position {n} is not in the select list"),
                    "Fix the position.",
                );
            }
            return Ok(Some(n as usize - 1));
        }
        if let Expr::Identifier(i) = g {
            let name = ident_name(i);
            return Ok(self.select.projection.iter().position(|it| {
                matches!(it, SelectItem::ExprWithAlias { alias, expr } if ident_name(alias) == name && !matches!(expr, Expr::Identifier(x) if ident_name(x) == name))
            }));
        }
        Ok(None)
    }

    /// A query without aggregation: each shard's rows, sorted by the shards, merged.
    fn plan_rows(
        mut self,
        shards: Vec<String>,
        limit: Option<u64>,
        offset: u64,
    ) -> Result<MergePlan, Refusal> {
        if matches!(self.select.distinct, Some(Distinct::Distinct)) {
            self.order_by_in_select_list()?;
        }
        let keys = self.sort_keys(false)?;
        let distinct = self.select.distinct.clone();
        let on = match &distinct {
            Some(Distinct::On(exprs)) => {
                let mut cols = Vec::new();
                for e in exprs {
                    let e = match self.item_for(e)? {
                        Some(i) => self.item_expr(i),
                        None => e.clone(),
                    };
                    cols.push(self.helper(&e));
                }
                Some(cols)
            }
            Some(Distinct::Distinct) => self.distinct_twins(false)?,
            _ => None,
        };
        // LIMIT n OFFSET m: each shard's first n+m rows hold the answer.
        self.query.fetch = None;
        self.query.limit_clause = limit.map(|l| LimitClause::LimitOffset {
            limit: Some(Expr::value(Value::Number(
                l.saturating_add(offset).to_string(),
                false,
            ))),
            offset: None,
            limit_by: Vec::new(),
        });
        let helpers = self.helpers.len();
        let sql = self.shard_sql();
        let mut node = Node::Scatter { shards, sql };
        if !keys.is_empty() {
            node = Node::MergeSort {
                input: Box::new(node),
                keys: keys.clone(),
            };
        }
        match (distinct, on) {
            (Some(Distinct::Distinct), on) => {
                node = Node::Distinct {
                    input: Box::new(node),
                    on,
                    sorted: false,
                };
            }
            (_, Some(on)) => {
                let sorted = !keys.is_empty();
                node = Node::Distinct {
                    input: Box::new(node),
                    on: Some(on),
                    sorted,
                };
            }
            _ => {}
        }
        Ok(self.finish(node, limit, offset, helpers))
    }

    fn finish(&self, mut node: Node, limit: Option<u64>, offset: u64, helpers: usize) -> MergePlan {
        if limit.is_some() || offset > 0 {
            node = Node::Limit {
                input: Box::new(node),
                limit,
                offset,
            };
        }
        if helpers > 0 {
            node = Node::Project {
                input: Box::new(node),
                helpers,
            };
        }
        MergePlan {
            root: node,
            helpers,
            visible: self.visible,
        }
    }

    /// The shards' SQL: the rewritten query with the helpers appended to its select list.
    fn shard_sql(&mut self) -> String {
        let mut select = self.select.clone();
        select.projection.extend(
            self.helpers
                .iter()
                .map(|h| SelectItem::UnnamedExpr(h.clone())),
        );
        let mut q = self.query.clone();
        *q.body = SetExpr::Select(Box::new(select));
        q.to_string()
    }
}
