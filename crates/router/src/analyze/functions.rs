//! Which calls in a query are aggregates or window functions: what makes its rows need a
//! merge across shards, and the functions the proxy checks against the catalog.

use super::*;

pub(super) fn needs_merge(q: &Query) -> bool {
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
pub(super) const AGGREGATES: &[&str] = &[
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
pub(super) fn called_functions(q: &Query) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    select_functions(q.body.as_ref(), q.order_by.as_ref(), &mut out);
    out
}

pub(super) fn select_functions(
    body: &SetExpr,
    order_by: Option<&ast::OrderBy>,
    out: &mut Vec<String>,
) {
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
/// A subquery's own aggregates are its own: they do not aggregate the rows of the query
/// around it.
pub(super) fn has_aggregate(e: &Expr) -> bool {
    aggregate_in(&outside_subqueries(e))
}

/// `e` with each subquery in it replaced by NULL (`x IN (subquery)` by `(x)`): what the
/// query around the subqueries computes itself.
pub(crate) fn outside_subqueries(e: &Expr) -> std::borrow::Cow<'_, Expr> {
    use std::ops::ControlFlow;
    let is_subquery = |x: &Expr| {
        matches!(
            x,
            Expr::Subquery(_)
                | Expr::Exists { .. }
                | Expr::In {
                    target: ast::InTarget::Subquery(_),
                    ..
                }
        )
    };
    let has_subquery = sqlparser::ast::visit_expressions(e, |x| {
        if is_subquery(x) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break();
    if !has_subquery {
        return std::borrow::Cow::Borrowed(e);
    }
    let mut outer = e.clone();
    let _ = sqlparser::ast::visit_expressions_mut(&mut outer, |x| {
        if let Expr::In {
            expr,
            target: ast::InTarget::Subquery(_),
            ..
        } = x
        {
            *x = Expr::Nested(Box::new(std::mem::replace(
                expr.as_mut(),
                Expr::Value(ast::Value::Null.into()),
            )));
        } else if is_subquery(x) {
            *x = Expr::Value(ast::Value::Null.into());
        }
        ControlFlow::<()>::Continue(())
    });
    std::borrow::Cow::Owned(outer)
}

/// A window function in `e`, outside its subqueries.
pub(super) fn has_window(e: &Expr) -> bool {
    sqlparser::ast::visit_expressions(outside_subqueries(e).as_ref(), |x| match x {
        Expr::Function(f) if f.over.is_some() => std::ops::ControlFlow::Break(()),
        _ => std::ops::ControlFlow::Continue(()),
    })
    .is_break()
}

fn aggregate_in(e: &Expr) -> bool {
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
