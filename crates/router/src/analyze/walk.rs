//! The walk of a parsed statement: its scopes (SELECTs, subqueries, CTEs, joins), the
//! tables each scope reads, and the keys, bounds and key equalities its predicates give.

use super::*;

pub(super) struct Walker<'k> {
    pub(super) key_columns: &'k dyn Fn(&str) -> Option<Vec<String>>,
    pub(super) out: Analysis,
    /// How deep in queries the walk is (a query statement's own query is 1).
    pub(super) depth: usize,
    /// The depth of the statement's own rows: 1 for a query, 0 for DML (its target table),
    /// none inside a set operation.
    pub(super) top_depth: Option<usize>,
    /// Names of the CTEs in scope: a FROM item of one of these names is the CTE, not a
    /// table of that name.
    pub(super) ctes: Vec<String>,
    /// CTEs in scope that are views of one sharded table (see [`view_of`]): name, the table,
    /// and its use inside the CTE.
    pub(super) cte_views: Vec<(String, String, usize)>,
    /// Uses of sharded tables in the scopes around the one being walked, which a subquery
    /// may correlate with: the name each goes by, its single key column, its `keyed` index.
    pub(super) outer: Vec<(String, String, usize)>,
    /// Set while walking the subquery of `k IN (subquery)`, a conjunct of a WHERE, where `k`
    /// is the key column of the outer use with this `keyed` index: a subquery selecting the
    /// key column of a table of its own scope is joined on the key to that use.
    pub(super) in_anchor: Option<usize>,
    /// Uses that stand for a CTE or derived table which is a view of one sharded table,
    /// with that table's use inside it (see `InScope::linked`).
    pub(super) links: Vec<(usize, usize)>,
    /// FULL JOIN groups handed out (see `InScope::full_group`).
    pub(super) full_groups: usize,
}

/// A table in a scope: its name and the name it goes by (alias or name).
pub(super) struct InScope {
    pub(super) table: String,
    called: String,
    /// A row source whose rows the top-level query returns as they are: in the statement's
    /// own SELECT, not on a side of an outer join.
    top: bool,
    /// On the null-extended side of an outer join of the statement's own SELECT.
    nullable: bool,
    /// A CTE or derived table that is a view of this table: the table's use inside it,
    /// which rows of this use come from (joined on the key).
    linked: Option<usize>,
    /// A side of a FULL JOIN of sharded tables: the uses of one group must all be joined on
    /// their keys (`Analysis::together`).
    full_group: Option<usize>,
}

pub(super) fn base_name(name: &ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .unwrap_or_default()
}

pub(super) fn ident_name(i: &ast::Ident) -> String {
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
pub(super) fn key_value(e: &Expr) -> Option<KeyExpr> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(KeyExpr::Literal(n.to_string())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(KeyExpr::Literal(s.clone()))
            }
            // Parameters count from $1: `$0` names none (PostgreSQL refuses it).
            Value::Placeholder(p) => p
                .strip_prefix('$')?
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(KeyExpr::Param),
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
    pub(super) fn note_table(&mut self, t: &str) {
        if !self.out.tables.iter().any(|x| x == t) {
            self.out.tables.push(t.to_owned());
        }
    }

    pub(super) fn query(&mut self, q: &Query) {
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
    /// name (`SELECT *` or a select list naming it; one table, WHERE allowed; grouping and
    /// aggregates only when grouped by the key; no windows, DISTINCT ON or LIMIT): every row it gives is a row of that table on
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
        if sel.from.len() != 1 || matches!(sel.distinct, Some(ast::Distinct::On(_))) {
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
        let is_key = |e: &Expr| match e {
            Expr::Identifier(i) => ident_name(i) == *key,
            Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                ident_name(&p[p.len() - 1]) == *key && ident_name(&p[p.len() - 2]) == called
            }
            _ => false,
        };
        // Grouped by the key (among other things): each group's rows share one key, so
        // they live on one shard, and so do its aggregates. Otherwise no grouping at all.
        let by_key = match &sel.group_by {
            GroupByExpr::Expressions(e, _) => e.iter().any(is_key),
            GroupByExpr::All(_) => false,
        };
        if (grouped || sel.having.is_some()) && !by_key {
            return None;
        }
        let mut keeps_key = false;
        for item in &sel.projection {
            match item {
                SelectItem::Wildcard(_) => keeps_key = true,
                SelectItem::QualifiedWildcard(..) => keeps_key = true,
                SelectItem::UnnamedExpr(e) => {
                    if has_window(e) || (has_aggregate(e) && !by_key) {
                        return None;
                    }
                    keeps_key |= is_key(e);
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    if has_window(expr) || (has_aggregate(expr) && !by_key) {
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
    pub(super) fn hidden_uses(&mut self, stmt: &Statement) {
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
                    nested: true,
                });
            }
        }
    }

    fn set_expr(&mut self, s: &SetExpr) {
        match s {
            SetExpr::Select(sel) => {
                // `k IN (SELECT t.k ...)`: this SELECT is that subquery.
                let in_anchor = self.in_anchor.take();
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
                // The scope's own uses first, so that its subqueries can correlate with them.
                let first = self.out.keyed.len();
                self.keyed_uses_on(&scope, sel.selection.as_ref(), &on, &outer_on);
                if let Some(outer) = in_anchor {
                    if let Some(inner) = self.selected_key(sel, &scope, first) {
                        self.out.key_joins.push((inner, outer));
                    }
                }
                let visible = self.outer.len();
                self.outer.extend(self.scope_keys(&scope, first));
                for twj in &sel.from {
                    for f in
                        std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation))
                    {
                        if let TableFactor::Derived {
                            lateral: true,
                            subquery,
                            ..
                        } = f
                        {
                            self.query(subquery);
                        }
                    }
                }
                for e in on.iter().chain(outer_on.iter()) {
                    self.subqueries(e);
                }
                if let Some(w) = &sel.selection {
                    self.where_subqueries(w, &scope, first);
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
                self.outer.truncate(visible);
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
                            nested: !self.at_top(),
                        });
                    }
                }
            }
            SetExpr::Values(_) => {}
            _ => self.out.refuse = Some("this kind of query is not supported by the router".into()),
        }
    }

    pub(super) fn table_with_joins(&mut self, twj: &TableWithJoins, scope: &mut Vec<InScope>) {
        use ast::JoinOperator as J;
        let from = scope.len();
        self.factor(&twj.relation, scope);
        let mut other = false;
        for (n, j) in twj.joins.iter().enumerate() {
            let before = scope.len();
            self.factor(&j.relation, scope);
            // FULL JOIN of sides made only of sharded tables (one scope entry per FROM item,
            // each with a key): every row of either side lives on one shard, and when the
            // ON joins the sides on their keys (the plan checks the group), each shard's
            // FULL JOIN of its own rows is exact. Otherwise both sides are null-extended.
            if matches!(j.join_operator, J::FullOuter(_))
                && before - from == n + 1
                && scope.len() == before + 1
                && scope[from..]
                    .iter()
                    .all(|t| (self.key_columns)(&t.table).is_some())
            {
                let group = self.full_groups;
                self.full_groups += 1;
                // An earlier FULL JOIN of this FROM item covered a part of these: the
                // new group takes them all.
                for t in &mut scope[from..] {
                    t.full_group = Some(group);
                }
                continue;
            }
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
                        full_group: None,
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
                    full_group: None,
                });
            }
            // A LATERAL subquery may correlate with the FROM items before it: the SELECT
            // walks it once its own uses are known.
            TableFactor::Derived { lateral: true, .. } => {}
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
                            full_group: None,
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

    /// The scope's uses of sharded tables with a single key column, as subqueries see them
    /// (`first`: the `keyed` index of the scope's first use).
    fn scope_keys(&self, scope: &[InScope], first: usize) -> Vec<(String, String, usize)> {
        let mut out = Vec::new();
        let mut next = first;
        for t in scope {
            if let Some(cols) = (self.key_columns)(&t.table) {
                if let [col] = cols.as_slice() {
                    out.push((t.called.clone(), col.clone(), next));
                }
                next += 1;
            }
        }
        out
    }

    /// The `keyed` index of the scope's use whose key column `e` names, if any.
    fn key_column_in(&self, e: &Expr, scope: &[InScope], first: usize) -> Option<usize> {
        let e = match e {
            Expr::Nested(inner) => inner.as_ref(),
            x => x,
        };
        let (qualifier, column) = match e {
            Expr::Identifier(c) => (None, ident_name(c)),
            Expr::CompoundIdentifier(p) if p.len() >= 2 => (
                Some(ident_name(&p[p.len() - 2])),
                ident_name(&p[p.len() - 1]),
            ),
            _ => return None,
        };
        let keys = self.scope_keys(scope, first);
        match qualifier {
            Some(q) => keys.iter().find(|(c, k, _)| *c == q && *k == column),
            None if scope.len() == 1 => keys.iter().find(|(_, k, _)| *k == column),
            None => None,
        }
        .map(|(_, _, i)| *i)
    }

    /// For a SELECT that is the subquery of `k IN (...)`: the `keyed` index of the use whose
    /// key column is its one selected item.
    fn selected_key(&self, sel: &ast::Select, scope: &[InScope], first: usize) -> Option<usize> {
        let [item] = sel.projection.as_slice() else {
            return None;
        };
        let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item else {
            return None;
        };
        self.key_column_in(e, scope, first)
    }

    /// The subqueries of a WHERE. A conjunct `k IN (SELECT t.k FROM t ...)` whose `k` is the
    /// key column of a use of the scope, and whose subquery keeps every row of `t` it
    /// selects (no LIMIT/OFFSET, no set operation), is a join on the key: only `t`'s rows
    /// of that key decide it, and they live on `k`'s shard. (Only as a conjunct of a WHERE:
    /// there, a NULL from a NULL key elsewhere and FALSE both drop the row.)
    fn where_subqueries(&mut self, w: &Expr, scope: &[InScope], first: usize) {
        let mut parts = Vec::new();
        conjuncts(w, &mut parts);
        for p in parts {
            match p {
                Expr::In {
                    expr,
                    target: ast::InTarget::Subquery(q),
                    negated: false,
                    ..
                } if q.with.is_none()
                    && q.limit_clause.is_none()
                    && q.fetch.is_none()
                    && matches!(q.body.as_ref(), SetExpr::Select(_)) =>
                {
                    self.subqueries(expr);
                    self.in_anchor = self.key_column_in(expr, scope, first);
                    self.query(q);
                    self.in_anchor = None;
                }
                other => self.subqueries(other),
            }
        }
    }

    /// Subqueries inside a predicate are scopes of their own.
    pub(super) fn subqueries(&mut self, e: &Expr) {
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
    pub(super) fn keyed_uses(&mut self, scope: &[InScope], selection: Option<&Expr>) {
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
        // A subquery's table equated on its key with a table of an enclosing scope
        // (`t.k = a.k`, correlated): for each outer row only the rows of that key count, and
        // they live on the outer row's shard.
        for p in &parts {
            let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = p
            else {
                continue;
            };
            for (inner, outer) in [(left, right), (right, left)] {
                if let (Some(a), Some(b)) = (column_of(inner), self.outer_key(outer, scope)) {
                    joins.push((used[a].0, b));
                }
            }
        }
        self.out.key_joins.extend(joins);
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
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
            if let Some(inner) = t.linked {
                self.links.push((self.out.keyed.len(), inner));
            }
            if let Some(g) = t.full_group {
                groups.entry(g).or_default().push(self.out.keyed.len());
            }
            self.out.keyed.push(TableUse {
                table: t.table.clone(),
                keys,
                bounds,
                nullable: t.nullable,
                nested: !t.top,
            });
        }
        self.out.together.extend(groups.into_values());
    }

    /// The `keyed` index of the use of an enclosing scope whose key column `e` names
    /// (qualified, and not shadowed by a table of `scope` going by the same name).
    fn outer_key(&self, e: &Expr, scope: &[InScope]) -> Option<usize> {
        let e = match e {
            Expr::Nested(inner) => inner.as_ref(),
            x => x,
        };
        let Expr::CompoundIdentifier(p) = e else {
            return None;
        };
        if p.len() < 2 {
            return None;
        }
        let (q, col) = (ident_name(&p[p.len() - 2]), ident_name(&p[p.len() - 1]));
        if scope.iter().any(|t| t.called == q) {
            return None;
        }
        self.outer
            .iter()
            .rev()
            .find(|(c, _, _)| *c == q)
            .filter(|(_, k, _)| *k == col)
            .map(|(_, _, i)| *i)
    }
}

impl Walker<'_> {
    pub(super) fn statement(&mut self, stmt: &Statement) {
        let w = self;
        match stmt {
            Statement::Explain { statement, .. } => {
                w.statement(statement);
                if w.out.kind == Kind::Write {
                    // Its plans (and, with ANALYZE, its run) would come from every shard a
                    // write without a key runs on.
                    w.out.one_shard = true;
                }
            }
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
                w.out.insert = true;
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
