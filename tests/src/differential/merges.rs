//! The differential test's queries that need a merge across shards when they have no key:
//! aggregates (with FILTER, DISTINCT on the key, and a few that do not decompose or hide
//! under an expression), GROUP BY with HAVING and ORDER BY, DISTINCT and DISTINCT ON.

use rand::Rng;

use super::queries::{Category, Check, Gen, CSORT, OSORT};

impl Gen<'_> {
    /// Aggregates of customers (`orders` false) or orders, with the FILTERs they may carry.
    pub(super) fn aggs(&mut self, orders: bool, p: &str) -> Vec<String> {
        let pool: &[&str] = if orders {
            &[
                "count(*)",
                "count({p}note)",
                "sum({p}amount)",
                "sum({p}qty)",
                "avg({p}amount)",
                "avg({p}qty)",
                "min({p}placed)",
                "max({p}placed)",
                "min({p}amount)",
                "max({p}amount)",
                "count(DISTINCT {p}customer_id)",
                "max({p}note)",
                "bool_or({p}qty > 10)",
                "count(*) FILTER (WHERE {p}amount < 0)",
                "sum({p}amount) FILTER (WHERE {p}qty > 5)",
            ]
        } else {
            &[
                "count(*)",
                "count({p}score)",
                "count({p}name)",
                "sum({p}score)",
                "sum({p}balance)",
                "min({p}score)",
                "max({p}score)",
                "min({p}name)",
                "max({p}name)",
                "min({p}joined)",
                "max({p}joined)",
                "min({p}seen)",
                "max({p}seen)",
                "min({p}rating)",
                "max({p}rating)",
                "avg({p}score)",
                "avg({p}balance)",
                "bool_and({p}active)",
                "bool_or({p}active)",
                "every({p}active)",
                "count(*) FILTER (WHERE {p}active)",
                "sum({p}score) FILTER (WHERE {p}region = 'EU')",
                "avg({p}balance) FILTER (WHERE {p}score > 0)",
                "min({p}balance)",
                "max({p}balance)",
                "count(DISTINCT {p}id)",
                "avg(DISTINCT {p}id)",
            ]
        };
        let n = self.rng.gen_range(1..5);
        (0..n).map(|_| self.pick(pool).replace("{p}", p)).collect()
    }

    /// An aggregate the docs say is refused across shards, or one whose shape is easy to
    /// miss (an aggregate under CASE or IS NULL, an aggregate the router does not know).
    fn awkward_agg(&mut self, orders: bool) -> String {
        if orders {
            self.pick(&[
                "count(DISTINCT note)",
                "string_agg(note, ',' ORDER BY id)",
                "sum(amount) / count(*)",
                "CASE WHEN count(*) > 1000 THEN 'many' ELSE 'few' END",
                "bit_xor(qty)",
                "stddev(qty)",
                "count(*) IN (1, 2000)",
                "regr_count(qty, amount)",
            ])
            .to_owned()
        } else {
            self.pick(&[
                "count(DISTINCT region)",
                "sum(rating)",
                "avg(rating)",
                "sum(score) + 1",
                "count(*) IS NULL",
                "bit_xor(score)",
                "array_agg(id ORDER BY id)",
                "ARRAY[count(*)]",
                "bool_and(active) IS NOT TRUE",
            ])
            .to_owned()
        }
    }

    pub(super) fn aggregate(&mut self) {
        let orders = self.coin(0.45);
        let mut aggs = self.aggs(orders, "");
        if self.coin(0.12) {
            aggs = vec![self.awkward_agg(orders)];
        }
        let table = if orders { "orders" } else { "customers" };
        let key = if orders { "customer_id" } else { "id" };
        let choice = self.rng.gen_range(0..10);
        let w = match choice {
            0..=5 => self.where_of("", orders, true),
            6..=7 => Some(format!("{key} IN ({})", Self::list(&self.keys_spread(4)))),
            _ => Some(format!("{key} = {}", self.key())),
        }
        .map_or(String::new(), |w| format!(" WHERE {w}"));
        let sql = format!("SELECT {} FROM {table}{w}", aggs.join(", "));
        if choice >= 8 {
            self.push_run(Category::Aggregate, sql, Check::Ordered);
        } else {
            self.push(Category::Aggregate, sql, Check::Ordered);
        }
    }

    pub(super) fn group_by(&mut self) {
        let cat = Category::GroupBy;
        let orders = self.coin(0.4);
        let table = if orders { "orders" } else { "customers" };
        let groups: &[&[&str]] = if orders {
            &[
                &["customer_id"],
                &["qty"],
                &["note"],
                &["date_trunc('month', placed)"],
                &["qty % 4"],
            ]
        } else {
            &[
                &["region"],
                &["active"],
                &["score % 5"],
                &["date_part('year', joined)"],
                &["name"],
                &["region", "active"],
            ]
        };
        let group = self.pick(groups);
        let g = group.join(", ");
        let mut aggs = self.aggs(orders, "");
        if self.coin(0.08) {
            aggs = vec![self.awkward_agg(orders)];
        }
        if !aggs.iter().any(|a| a == "count(*)") {
            aggs.insert(0, "count(*)".into());
        }
        let shown = self.coin(0.85);
        let ngroup = group.len();
        let mut select: Vec<String> = Vec::new();
        if shown {
            select.extend(group.iter().map(|c| c.to_string()));
        }
        let count_at = select.len() + aggs.iter().position(|a| a == "count(*)").expect("count");
        select.extend(aggs);
        let w = self
            .where_of("", orders, true)
            .map_or(String::new(), |w| format!(" WHERE {w}"));
        let by = if shown && self.coin(0.3) {
            (1..=ngroup)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            g.clone()
        };
        let having = match self.rng.gen_range(0..10) {
            0..=5 => String::new(),
            6 => format!(" HAVING count(*) > {}", self.rng.gen_range(1..6)),
            7 => format!(
                " HAVING {} IS NOT NULL",
                if orders {
                    "sum(amount)"
                } else {
                    "sum(balance)"
                }
            ),
            8 => format!(
                " HAVING min({c}) < 0 OR max({c}) > {}",
                self.rng.gen_range(10..100),
                c = if orders { "qty" } else { "score" }
            ),
            _ => " HAVING NOT (count(*) BETWEEN 2 AND 5)".to_owned(),
        };
        let base = format!(
            "SELECT {} FROM {table}{w} GROUP BY {by}{having}",
            select.join(", ")
        );
        let order_by_groups = (1..=ngroup)
            .map(|i| format!("{i}{}", self.direction()))
            .collect::<Vec<_>>()
            .join(", ");
        match self.rng.gen_range(0..10) {
            0..=4 => self.push(cat, base, Check::Multiset),
            5..=6 if shown => self.push(
                cat,
                format!("{base} ORDER BY {order_by_groups}"),
                Check::Ordered,
            ),
            7 if shown => {
                let n = self.rng.gen_range(1..4);
                self.push(
                    cat,
                    format!("{base} ORDER BY {order_by_groups} LIMIT {n}"),
                    Check::Ordered,
                )
            }
            8 => {
                let d = self.direction();
                self.push(
                    cat,
                    format!("{base} ORDER BY count(*){d}"),
                    Check::Ties {
                        keys: vec![count_at],
                        offset: 0,
                        limit: None,
                        full_sql: None,
                    },
                )
            }
            _ => self.push(
                cat,
                format!("SELECT DISTINCT count(*) FROM {table}{w} GROUP BY {g}"),
                Check::Multiset,
            ),
        }
    }

    pub(super) fn distinct(&mut self) {
        let cat = Category::Distinct;
        let orders = self.coin(0.4);
        let w = self
            .where_of("", orders, true)
            .map_or(String::new(), |w| format!(" WHERE {w}"));
        let (table, sortable): (&str, &[&str]) = if orders {
            ("orders", &OSORT)
        } else {
            ("customers", &CSORT)
        };
        let mut cols = vec![self.pick(sortable)];
        if self.coin(0.4) {
            let c = self.pick(sortable);
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        let list = cols.join(", ");
        match self.rng.gen_range(0..10) {
            0..=3 => self.push(
                cat,
                format!("SELECT DISTINCT {list} FROM {table}{w}"),
                Check::Multiset,
            ),
            4..=5 => {
                let o = cols
                    .iter()
                    .map(|c| format!("{c}{}", self.direction()))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.push(
                    cat,
                    format!("SELECT DISTINCT {list} FROM {table}{w} ORDER BY {o}"),
                    Check::Ordered,
                )
            }
            6..=8 => {
                let on = cols[0];
                let (then, d) = (self.pick(sortable), self.direction());
                let d0 = self.direction();
                self.push(
                    cat,
                    format!("SELECT DISTINCT ON ({on}) {on}, id, {then} FROM {table}{w} ORDER BY {on}{d0}, {then}{d}, id"),
                    Check::Ordered,
                )
            }
            _ => self.push(
                cat,
                format!("SELECT DISTINCT ON ({list}) {list} FROM {table}{w}"),
                Check::Multiset,
            ),
        }
    }
}
