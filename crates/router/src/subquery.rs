//! Subqueries over sharded tables answered first, their rows fed to the statement as
//! constants: `x IN (SELECT y FROM sharded ...)` becomes `x IN (v1, v2, ...)`, an
//! uncorrelated `EXISTS (SELECT ... FROM sharded ...)` becomes TRUE or FALSE, and an EXISTS
//! correlated by one equality (`EXISTS (SELECT 1 FROM customers c WHERE c.region = r.code
//! AND ...)`, a reference table's rows filtered by a sharded table) becomes
//! `(r.code IN (SELECT c.region FROM customers c WHERE ...)) IS TRUE`, answered the same way.
//! The statement that remains routes as if it had no subquery.
//!
//! Only subqueries whose rows are a plain union of every shard's rows are taken (no
//! aggregates, GROUP BY, HAVING, LIMIT/OFFSET, window functions or set operations inside):
//! for IN and EXISTS only which values exist matters, so their ORDER BY and DISTINCT are
//! dropped. Anything else stays, and the statement is refused as before.
//!
//! [`plan`] lists the subqueries to run (in a fixed walk order) and [`finish`] walks the same
//! statement again, putting each subquery's values in its place.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self, BinaryOperator, Expr, InTarget, Query, SelectItem, SetExpr, Statement, Value, VisitMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// One subquery to answer first: its SQL (one column; for EXISTS, any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    pub sql: String,
}

/// What takes a subquery's place.
enum Shape {
    /// `x [NOT] IN (subquery)`.
    In,
    /// `[NOT] EXISTS (uncorrelated subquery)`.
    Exists,
    /// `[NOT] EXISTS (subquery correlated by outer = inner)`: `(outer IN (inner values)) IS
    /// [NOT] TRUE`.
    Decorrelated(Box<Expr>),
}

/// The subqueries of `sql` that can be answered first (those reading a table for which
/// `sharded` says yes), in walk order; empty when there are none.
pub fn plan(sql: &str, sharded: &dyn Fn(&str) -> bool) -> Vec<Inner> {
    let Some(mut stmt) = parse(sql) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    walk(&mut stmt, sharded, &mut |_, inner, _| {
        found.push(Inner { sql: inner });
        None
    });
    found
}

/// `sql` with each subquery [`plan`] listed replaced by its answer: `values[i]` are the
/// text values (NULL as `None`) the i-th subquery returned (its first column).
pub fn finish(
    sql: &str,
    sharded: &dyn Fn(&str) -> bool,
    values: &[Vec<Option<String>>],
) -> Option<String> {
    let mut stmt = parse(sql)?;
    let mut i = 0;
    let mut ok = true;
    walk(&mut stmt, sharded, &mut |shape, _, negated| {
        let Some(v) = values.get(i) else {
            ok = false;
            return None;
        };
        i += 1;
        Some(replacement(shape, v, negated))
    });
    (ok && i == values.len()).then(|| stmt.to_string())
}

fn parse(sql: &str) -> Option<Statement> {
    let mut v = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    (v.len() == 1).then(|| v.remove(0))
}

fn literal(v: &Option<String>) -> Expr {
    match v {
        None => Expr::Value(Value::Null.into()),
        Some(s) => Expr::Value(Value::SingleQuotedString(s.clone()).into()),
    }
}

fn boolean(b: bool) -> Expr {
    Expr::Value(Value::Boolean(b).into())
}

/// What replaces a subquery of `shape` whose values are `v`.
enum Replacement {
    /// The whole expression (`x IN (subquery)`, `EXISTS (subquery)`).
    Expr(Box<Expr>),
    /// Only the subquery, by a list of values (`x IN (v1, v2)`).
    List(Vec<Expr>),
}

fn replacement(shape: &Shape, v: &[Option<String>], negated: bool) -> Replacement {
    Replacement::Expr(Box::new(match shape {
        Shape::Exists => boolean(v.is_empty() == negated),
        // `x IN (no rows)` is false and `x NOT IN (no rows)` true, NULL x included.
        Shape::In if v.is_empty() => boolean(negated),
        Shape::In => return Replacement::List(v.iter().map(literal).collect()),
        Shape::Decorrelated(outer) => {
            if v.is_empty() {
                return Replacement::Expr(Box::new(boolean(negated)));
            }
            let test = Expr::In {
                expr: outer.clone(),
                target: InTarget::List(v.iter().map(literal).collect()),
                negated: false,
                global: false,
            };
            let nested = Box::new(Expr::Nested(Box::new(test)));
            if negated {
                Expr::IsNotTrue(nested)
            } else {
                Expr::IsTrue(nested)
            }
        }
    }))
}

/// Whether a subquery's rows are the union of every shard's: one SELECT with no
/// aggregation, grouping, window, LIMIT or OFFSET (ORDER BY and DISTINCT do not change
/// which values exist).
fn plain(q: &Query) -> Option<&ast::Select> {
    if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() || !q.locks.is_empty() {
        return None;
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let grouped = !matches!(&s.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || s.having.is_some() || !s.named_window.is_empty() {
        return None;
    }
    let aggregates = s.projection.iter().any(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
            crate::analyze::has_aggregate_or_window(e)
        }
        _ => false,
    });
    (!aggregates).then_some(s)
}

/// Whether the query reads a sharded table (anywhere in it).
fn reads_sharded(q: &Query, sharded: &dyn Fn(&str) -> bool) -> bool {
    let mut any = false;
    let _ = ast::visit_relations(q, |name| {
        if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
            if sharded(&lower(last)) {
                any = true;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    any
}

/// Names the subquery's FROM gives its rows (aliases, else table names).
fn inner_names(s: &ast::Select) -> Vec<String> {
    let mut names = Vec::new();
    let mut add = |f: &ast::TableFactor| match f {
        ast::TableFactor::Table { name, alias, .. } => {
            names.push(match alias {
                Some(a) => lower(&a.name),
                None => name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(lower)
                    .unwrap_or_default(),
            });
        }
        ast::TableFactor::Derived { alias: Some(a), .. } => names.push(lower(&a.name)),
        _ => {}
    };
    for twj in &s.from {
        add(&twj.relation);
        for j in &twj.joins {
            add(&j.relation);
        }
    }
    names
}

/// Whether `e` refers to a column qualified by a name that is not one of `inner`'s.
fn outer_ref(e: &Expr, inner: &[String]) -> bool {
    let mut found = false;
    let _ = ast::visit_expressions(e, |x| {
        if let Expr::CompoundIdentifier(parts) = x {
            if parts.len() >= 2 {
                let q = lower(&parts[parts.len() - 2]);
                if !inner.contains(&q) {
                    found = true;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// A subquery's plain SELECT with its select list set to `item` and its ORDER BY and
/// DISTINCT dropped.
fn values_query(q: &Query, item: Option<Expr>, selection: Option<Option<Expr>>) -> String {
    let mut q = q.clone();
    q.order_by = None;
    if let SetExpr::Select(s) = q.body.as_mut() {
        s.distinct = None;
        if let Some(e) = item {
            s.projection = vec![SelectItem::UnnamedExpr(e)];
        }
        if let Some(w) = selection {
            s.selection = w;
        }
    }
    q.to_string()
}

/// What to run for an EXISTS subquery: uncorrelated as it is, or correlated by one
/// equality `inner = outer` (the outer expression comes back to test against its values).
fn exists_shape(q: &Query) -> Option<(Shape, String)> {
    let s = plain(q)?;
    let inner = inner_names(s);
    let Some(w) = &s.selection else {
        return Some((Shape::Exists, values_query(q, None, None)));
    };
    if !outer_ref(w, &inner) {
        if s.from.iter().any(|twj| {
            twj.joins.iter().any(|j| match &j.join_operator {
                ast::JoinOperator::Join(ast::JoinConstraint::On(e))
                | ast::JoinOperator::Inner(ast::JoinConstraint::On(e)) => outer_ref(e, &inner),
                _ => true,
            })
        }) {
            return None;
        }
        return Some((Shape::Exists, values_query(q, None, None)));
    }
    let mut parts = Vec::new();
    crate::analyze::conjuncts(w, &mut parts);
    let mut correlation = None;
    let mut rest = Vec::new();
    for p in parts {
        if !outer_ref(p, &inner) {
            rest.push(p.clone());
            continue;
        }
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = p
        else {
            return None;
        };
        let (inner_side, outer_side) = match (outer_ref(left, &inner), outer_ref(right, &inner)) {
            (false, true) => (left, right),
            (true, false) => (right, left),
            _ => return None,
        };
        if correlation.is_some() || !matches!(outer_side.as_ref(), Expr::CompoundIdentifier(_)) {
            return None;
        }
        correlation = Some(((**inner_side).clone(), (**outer_side).clone()));
    }
    let (inner_expr, outer_expr) = correlation?;
    if s.projection.iter().any(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
            outer_ref(e, &inner)
        }
        _ => false,
    }) {
        return None;
    }
    let selection = rest.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
    Some((
        Shape::Decorrelated(Box::new(outer_expr)),
        values_query(q, Some(inner_expr), Some(selection)),
    ))
}

/// Walks the statement's expressions in a fixed order; for each subquery that can be
/// answered first, calls `each(shape, inner sql, negated)`: a `Some` answer replaces the
/// subquery's expression (for IN, the list of values replaces the subquery).
type Each<'a> = dyn FnMut(&Shape, String, bool) -> Option<Replacement> + 'a;

fn walk(stmt: &mut Statement, sharded: &dyn Fn(&str) -> bool, each: &mut Each<'_>) {
    struct V<'a, 'b> {
        sharded: &'a dyn Fn(&str) -> bool,
        each: &'a mut Each<'b>,
    }
    impl ast::VisitorMut for V<'_, '_> {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            match e {
                Expr::In {
                    target: InTarget::Subquery(q),
                    negated,
                    ..
                } if reads_sharded(q, self.sharded) => {
                    let Some(s) = plain(q) else {
                        return ControlFlow::Continue(());
                    };
                    if s.projection.len() != 1 || outer_ref_any(q) {
                        return ControlFlow::Continue(());
                    }
                    let sql = values_query(q, None, None);
                    let neg = *negated;
                    match (self.each)(&Shape::In, sql, neg) {
                        Some(Replacement::List(list)) => {
                            if let Expr::In { target, .. } = e {
                                *target = InTarget::List(list);
                            }
                        }
                        Some(Replacement::Expr(r)) => *e = Expr::Nested(r),
                        None => {}
                    }
                }
                Expr::Exists { subquery, negated } if reads_sharded(subquery, self.sharded) => {
                    if let Some((shape, sql)) = exists_shape(subquery) {
                        let neg = *negated;
                        match (self.each)(&shape, sql, neg) {
                            Some(Replacement::Expr(r)) => *e = Expr::Nested(r),
                            Some(Replacement::List(_)) | None => {}
                        }
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V { sharded, each };
    let _ = stmt.visit(&mut v);
}

/// A subquery of IN whose own WHERE names outer columns: correlated, not answered first.
fn outer_ref_any(q: &Query) -> bool {
    let Some(s) = plain(q) else { return true };
    let inner = inner_names(s);
    s.selection.as_ref().is_some_and(|w| outer_ref(w, &inner))
        || s.projection.iter().any(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                outer_ref(e, &inner)
            }
            _ => false,
        })
}

/// An identifier as PostgreSQL folds it.
fn lower(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharded(t: &str) -> bool {
        matches!(t, "customers" | "orders")
    }

    #[test]
    fn a_reference_tables_exists_over_a_sharded_table_is_decorrelated() {
        let sql = "SELECT r.code FROM regions r WHERE EXISTS (SELECT 1 FROM customers c WHERE c.region = r.code AND c.active)";
        let inner = plan(sql, &sharded);
        assert_eq!(
            inner,
            [Inner {
                sql: "SELECT c.region FROM customers c WHERE c.active".into()
            }]
        );
        let values = vec![vec![Some("de".to_owned()), None]];
        assert_eq!(
            finish(sql, &sharded, &values).unwrap(),
            "SELECT r.code FROM regions r WHERE ((r.code IN ('de', NULL)) IS TRUE)"
        );
        let not = sql.replace("WHERE EXISTS", "WHERE NOT EXISTS");
        assert_eq!(
            finish(&not, &sharded, &values).unwrap(),
            "SELECT r.code FROM regions r WHERE ((r.code IN ('de', NULL)) IS NOT TRUE)"
        );
        // No rows: EXISTS is false, NOT EXISTS true.
        assert_eq!(
            finish(&not, &sharded, &[vec![]]).unwrap(),
            "SELECT r.code FROM regions r WHERE (true)"
        );
    }

    #[test]
    fn uncorrelated_in_and_exists_become_constants() {
        let sql = "SELECT id FROM orders WHERE customer_id IN (SELECT DISTINCT id FROM customers WHERE country = 'de' ORDER BY id) AND NOT EXISTS (SELECT 1 FROM orders WHERE amount < 0)";
        let inner = plan(sql, &sharded);
        assert_eq!(inner.len(), 2);
        assert_eq!(
            inner[0].sql,
            "SELECT id FROM customers WHERE country = 'de'"
        );
        let out = finish(
            sql,
            &sharded,
            &[vec![Some("1".into()), Some("7".into())], vec![]],
        )
        .unwrap();
        assert_eq!(
            out,
            "SELECT id FROM orders WHERE customer_id IN ('1', '7') AND (true)"
        );
        // NOT IN over no rows is true; IN over no rows false.
        let sql = "SELECT 1 FROM regions WHERE code NOT IN (SELECT region FROM customers)";
        assert_eq!(
            finish(sql, &sharded, &[vec![]]).unwrap(),
            "SELECT 1 FROM regions WHERE (true)"
        );
    }

    #[test]
    fn what_does_not_decompose_is_left_alone() {
        for sql in [
            "SELECT 1 FROM regions WHERE code IN (SELECT region FROM customers GROUP BY region)",
            "SELECT 1 FROM regions WHERE code IN (SELECT max(region) FROM customers)",
            "SELECT 1 FROM regions WHERE code IN (SELECT region FROM customers LIMIT 3)",
            "SELECT 1 FROM regions r WHERE EXISTS (SELECT 1 FROM customers c WHERE c.region = r.code OR c.id = r.n)",
            "SELECT 1 FROM regions WHERE code IN (SELECT code FROM regions)",
        ] {
            assert!(plan(sql, &sharded).is_empty(), "{sql}");
        }
    }
}
