//! Reading the parts of a SELECT the merge planner needs: which calls are aggregates (and
//! which of those decompose), window functions, output column names as PostgreSQL derives
//! them, integer constants, HAVING literals and comparison operators.

use merge::plan::{CmpOp, Literal};
use sqlparser::ast::{self, BinaryOperator, Expr, Ident, SelectItem, UnaryOperator, Value};

/// The aggregates whose per-shard results combine exactly; every other aggregate the router
/// knows (`crate::analyze::is_aggregate_name`) is refused across shards.
pub(super) const DECOMPOSABLE: &[&str] = &[
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every",
];

pub(super) fn func_name(f: &ast::Function) -> String {
    f.name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .unwrap_or_default()
}

pub(super) fn is_aggregate_call(e: &Expr) -> Option<&ast::Function> {
    match e {
        Expr::Function(f) if f.over.is_none() => {
            let n = func_name(f);
            crate::analyze::is_aggregate_name(&n).then_some(f)
        }
        _ => None,
    }
}

/// Whether `e` holds what `what` looks for outside its subqueries (a subquery's
/// aggregates and windows are its own).
pub(super) fn contains(e: &Expr, what: &dyn Fn(&Expr) -> bool) -> bool {
    let mut found = false;
    let e = crate::analyze::outside_subqueries(e);
    let _ = ast::visit_expressions(e.as_ref(), |x| {
        if what(x) {
            found = true;
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    found
}

pub(super) fn has_aggregate(e: &Expr) -> bool {
    contains(e, &|x| is_aggregate_call(x).is_some())
}

pub(super) fn has_window(e: &Expr) -> bool {
    contains(e, &|x| matches!(x, Expr::Function(f) if f.over.is_some()))
}

pub(super) fn ident_name(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// The name PostgreSQL gives a select-list column (FigureColname, simplified).
pub(super) fn output_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::ExprWithAlias { alias, .. } => Some(ident_name(alias)),
        SelectItem::UnnamedExpr(e) => expr_name(e),
        _ => None,
    }
}

pub(super) fn expr_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(ident_name(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        Expr::Function(f) => Some(func_name(f)),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_name(expr),
        _ => None,
    }
}

/// An integer constant (LIMIT, OFFSET, ORDER BY position).
pub(super) fn const_u64(e: &Expr) -> Option<u64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Expr::Nested(e) => const_u64(e),
        _ => None,
    }
}

pub(super) fn literal(e: &Expr) -> Option<Literal> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(Literal::Number(n.clone())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(Literal::String(s.clone()))
            }
            Value::Boolean(b) => Some(Literal::Bool(*b)),
            Value::Null => Some(Literal::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Literal::Number(n) if !n.starts_with('-') => Some(Literal::Number(format!("-{n}"))),
            _ => None,
        },
        Expr::Nested(e) => literal(e),
        _ => None,
    }
}

pub(super) fn cmp_op(op: &BinaryOperator) -> Option<CmpOp> {
    Some(match op {
        BinaryOperator::Eq => CmpOp::Eq,
        BinaryOperator::NotEq => CmpOp::Ne,
        BinaryOperator::Lt => CmpOp::Lt,
        BinaryOperator::LtEq => CmpOp::Le,
        BinaryOperator::Gt => CmpOp::Gt,
        BinaryOperator::GtEq => CmpOp::Ge,
        _ => return None,
    })
}

pub(super) fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::Le => CmpOp::Ge,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::Ge => CmpOp::Le,
        o => o,
    }
}

pub(super) fn is_float_cast(e: &Expr) -> bool {
    match e {
        Expr::Cast { data_type, .. } => {
            let t = data_type.to_string().to_ascii_lowercase();
            matches!(
                t.as_str(),
                "real" | "float4" | "float8" | "double precision" | "float"
            )
        }
        Expr::Nested(e) => is_float_cast(e),
        _ => false,
    }
}
