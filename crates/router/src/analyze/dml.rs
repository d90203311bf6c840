//! The walk of INSERT, UPDATE and DELETE: the target table's keys (each row's, for INSERT
//! ... VALUES), the source of INSERT ... SELECT, and the predicates of UPDATE and DELETE.

use super::*;

impl Walker<'_> {
    pub(super) fn insert(&mut self, i: &ast::Insert) {
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
                        nested: false,
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
            nested: false,
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

    pub(super) fn update(&mut self, u: &ast::Update) {
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

    pub(super) fn delete(&mut self, d: &ast::Delete) {
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
