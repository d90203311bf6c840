//! The differential test's multi-table and nested shapes: co-located joins of customers and
//! their orders, joins with the regions reference table from either side, subqueries (IN,
//! EXISTS, NOT EXISTS, scalar) from either side, window functions partitioned by the key and
//! not, UNION ALL of keyed parts, and CTEs with the key inside or outside.

use rand::Rng;

use super::queries::{Category, Check, Gen};

impl Gen<'_> {
    fn and(conds: &[String]) -> String {
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    }

    pub(super) fn colocated_join(&mut self) {
        let cat = Category::ColocatedJoin;
        let mut conds = Vec::new();
        let from = match self.rng.gen_range(0..4) {
            0 => "customers c JOIN orders o ON o.customer_id = c.id",
            1 => "orders o JOIN customers c ON c.id = o.customer_id",
            // Orders without customers and customers without orders, each on its shard.
            2 => "customers c FULL JOIN orders o ON o.customer_id = c.id",
            _ => {
                conds.push("o.customer_id = c.id".to_owned());
                "customers c, orders o"
            }
        };
        let mut pinned = false;
        match self.rng.gen_range(0..20) {
            0..=6 => {
                let k = self.key();
                conds.push(format!("c.id = {k}"));
                conds.push(format!("o.customer_id = {k}"));
                pinned = true;
            }
            7..=9 => {
                let k = self.key();
                conds.push(if self.coin(0.5) {
                    format!("c.id = {k}")
                } else {
                    format!("o.customer_id = {k}")
                });
            }
            10..=13 => {
                let keys = if self.coin(0.5) {
                    self.keys_on_one_shard(3)
                } else {
                    self.keys_spread(3)
                };
                pinned = self.one_shard(&keys);
                let l = Self::list(&keys);
                conds.push(format!("c.id IN ({l})"));
                conds.push(format!("o.customer_id IN ({l})"));
            }
            _ => {}
        }
        if self.coin(0.4) {
            let p = if self.coin(0.5) {
                self.cpred("c.")
            } else {
                self.opred("o.")
            };
            conds.push(format!("({p})"));
        }
        let w = Self::and(&conds);
        let shape = self.rng.gen_range(0..10);
        let (sql, check) = match shape {
            0..=3 => (
                format!("SELECT c.id, c.name, o.id, o.amount FROM {from}{w}"),
                Check::Multiset,
            ),
            4..=5 => (
                format!("SELECT c.id, c.region, o.id, o.qty FROM {from}{w} ORDER BY c.id, o.id"),
                Check::Ordered,
            ),
            6..=7 => (
                format!("SELECT c.region, count(*), sum(o.amount) FROM {from}{w} GROUP BY c.region"),
                Check::Multiset,
            ),
            8 => (
                format!("SELECT count(*), sum(o.amount), max(c.name) FROM {from}{w}"),
                Check::Ordered,
            ),
            _ => (
                format!("SELECT o.id, o.amount, c.name FROM {from}{w} ORDER BY o.amount DESC NULLS LAST, o.id LIMIT 5"),
                Check::Ordered,
            ),
        };
        // Pinned to one shard, or rows that need no merge: SPEC §4 refuses only joins of
        // sharded tables on columns that are not both their shard keys.
        if pinned || shape <= 3 {
            self.push_run(cat, sql, check);
        } else {
            self.push(cat, sql, check);
        }
    }

    pub(super) fn reference_join(&mut self) {
        let cat = Category::ReferenceJoin;
        let mut conds = Vec::new();
        let mode = self.rng.gen_range(0..10);
        match mode {
            0..=3 => {}
            4..=6 => conds.push(self.cpred("c.")),
            7..=8 => conds.push(format!("c.id = {}", self.key())),
            _ => conds.push(format!("c.id IN ({})", Self::list(&self.keys_spread(3)))),
        }
        let w = Self::and(&conds);
        let shape = self.rng.gen_range(0..10);
        let (sql, check) = match shape {
            0..=2 => (
                format!("SELECT c.id, c.name, r.name FROM customers c JOIN regions r ON r.code = c.region{w}"),
                Check::Multiset,
            ),
            3..=4 => (
                format!("SELECT r.code, r.name, c.id, c.score FROM regions r JOIN customers c ON c.region = r.code{w}"),
                Check::Multiset,
            ),
            5 => {
                let k = self.key();
                (
                    format!("SELECT o.id, o.amount, r.name FROM orders o JOIN customers c ON c.id = o.customer_id JOIN regions r ON r.code = c.region WHERE o.customer_id = {k} AND c.id = {k}"),
                    Check::Multiset,
                )
            }
            6 => (
                format!("SELECT c.id, r.name FROM customers c LEFT JOIN regions r ON r.code = c.region{w}"),
                Check::Multiset,
            ),
            7 => (
                format!("SELECT r.code, c.id FROM regions r LEFT JOIN customers c ON c.region = r.code{w}"),
                Check::Multiset,
            ),
            8 => {
                if self.coin(0.5) {
                    (
                        format!("SELECT r.name, count(c.id), avg(c.score) FROM regions r JOIN customers c ON c.region = r.code{w} GROUP BY r.name ORDER BY 1"),
                        Check::Ordered,
                    )
                } else {
                    (
                        format!("SELECT r.name, count(c.id), max(c.balance) FROM regions r JOIN customers c ON c.region = r.code{w} GROUP BY r.name"),
                        Check::Multiset,
                    )
                }
            }
            _ => {
                let extra = if conds.is_empty() {
                    String::new()
                } else {
                    format!(" AND {}", conds.join(" AND "))
                };
                (
                    format!("SELECT c.id, r.code FROM regions r, customers c WHERE r.code = c.region{extra}"),
                    Check::Multiset,
                )
            }
        };
        // Inner joins need no merge; keyed to one shard, anything runs.
        if matches!(shape, 0..=5 | 9) || matches!(mode, 7..=8) {
            self.push_run(cat, sql, check);
        } else {
            self.push(cat, sql, check);
        }
    }

    pub(super) fn subquery(&mut self) {
        let cat = Category::Subquery;
        let cp = |g: &mut Self| {
            if g.coin(0.5) {
                format!(" AND {}", g.cpred("c."))
            } else {
                String::new()
            }
        };
        let mut runs = false;
        let sql = match self.rng.gen_range(0..19) {
            // Correlated on the shard key without a key: each shard answers for its rows.
            14 => {
                runs = true;
                let not = if self.coin(0.5) { "NOT " } else { "" };
                let p = self.opred("o.");
                format!("SELECT c.id, c.name FROM customers c WHERE {not}EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND {p})")
            }
            15 => {
                runs = true;
                let p = self.opred("o.");
                let tail = if self.coin(0.5) { " ORDER BY 2 DESC NULLS LAST, 1 LIMIT 7" } else { "" };
                format!("SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id AND {p}) AS n FROM customers c{tail}")
            }
            16 => {
                runs = true;
                let p = self.opred("o.");
                let agg = if self.coin(0.5) { "count(*)" } else { "c.id, c.region" };
                let tail = if agg == "count(*)" { "" } else { " ORDER BY c.id" };
                format!("SELECT {agg} FROM customers c WHERE c.id IN (SELECT o.customer_id FROM orders o WHERE {p}){tail}")
            }
            17 => {
                runs = true;
                "SELECT c.id, m.top FROM customers c, LATERAL (SELECT max(o.amount) AS top FROM orders o WHERE o.customer_id = c.id) m ORDER BY c.id".to_owned()
            }
            18 => {
                runs = true;
                let p = self.opred("o.");
                format!("SELECT o.id, o.customer_id FROM orders o WHERE o.amount > (SELECT avg(o2.amount) FROM orders o2 WHERE o2.customer_id = o.customer_id) AND {p}")
            }
            0 => {
                runs = true;
                let p = cp(self);
                format!("SELECT c.id, c.region FROM customers c WHERE c.region IN (SELECT code FROM regions WHERE name < 'M'){p}")
            }
            1 => {
                runs = true;
                let p = cp(self);
                format!("SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM regions r WHERE r.code = c.region AND r.name IS NOT NULL){p}")
            }
            2 => {
                runs = true;
                let p = cp(self);
                format!("SELECT c.id, c.region FROM customers c WHERE NOT EXISTS (SELECT 1 FROM regions r WHERE r.code = c.region){p}")
            }
            3 => {
                runs = true;
                let p = cp(self);
                format!("SELECT c.id, (SELECT r.name FROM regions r WHERE r.code = c.region) FROM customers c WHERE true{p}")
            }
            4 => {
                let not = if self.coin(0.5) { "NOT " } else { "" };
                let p = cp(self);
                format!("SELECT r.code FROM regions r WHERE {not}EXISTS (SELECT 1 FROM customers c WHERE c.region = r.code{p})")
            }
            5 => "SELECT r.code, (SELECT count(*) FROM customers c WHERE c.region = r.code) FROM regions r".to_owned(),
            6 => {
                let not = if self.coin(0.5) { "NOT " } else { "" };
                let p = cp(self);
                format!("SELECT r.code FROM regions r WHERE r.code {not}IN (SELECT c.region FROM customers c WHERE c.region IS NOT NULL{p})")
            }
            7 => {
                let not = if self.coin(0.5) { "NOT " } else { "" };
                let p = self.opred("o.");
                format!("SELECT c.id, c.name FROM customers c WHERE {not}EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND {p})")
            }
            8 => {
                let k = self.key();
                let p = self.opred("o.");
                if self.coin(0.6) {
                    runs = true;
                    format!("SELECT c.id, c.name FROM customers c WHERE c.id = {k} AND EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = {k} AND {p})")
                } else {
                    format!("SELECT c.id, c.name FROM customers c WHERE c.id = {k} AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND {p})")
                }
            }
            9 => {
                if self.coin(0.5) {
                    runs = true;
                    let k = self.key();
                    format!("SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = {k}) FROM customers c WHERE c.id = {k}")
                } else {
                    let l = Self::list(&self.keys_on_one_shard(3));
                    format!("SELECT c.id, (SELECT sum(o.amount) FROM orders o WHERE o.customer_id = c.id) FROM customers c WHERE c.id IN ({l})")
                }
            }
            10 => {
                let p = self.cpred("");
                format!("SELECT id, amount FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE {p})")
            }
            11 => "SELECT id FROM customers WHERE score > (SELECT avg(score) FROM customers)".to_owned(),
            12 => {
                runs = true;
                let k = self.key();
                format!("SELECT id, amount FROM orders WHERE customer_id = {k} AND amount >= (SELECT avg(amount) FROM orders WHERE customer_id = {k})")
            }
            _ => "SELECT x.region, x.n FROM (SELECT region, count(*) AS n FROM customers GROUP BY region) x".to_owned(),
        };
        if runs {
            self.push_run(cat, sql, Check::Multiset);
        } else {
            self.push(cat, sql, Check::Multiset);
        }
    }

    pub(super) fn window(&mut self) {
        let cat = Category::Window;
        let shape = self.rng.gen_range(0..12);
        let (sql, check) = match shape {
            // A view of a sharded table without a key: each shard's rows of it.
            10 => (
                "WITH x AS (SELECT id, customer_id, amount FROM orders) SELECT id, customer_id, amount FROM x ORDER BY amount DESC NULLS LAST, customer_id, id LIMIT 9".to_owned(),
                Check::Ordered,
            ),
            11 => (
                "SELECT d.region, count(*) FROM (SELECT * FROM customers) d GROUP BY d.region".to_owned(),
                Check::Multiset,
            ),
            0..=2 => {
                let w = self
                    .where_of("", false, true)
                    .map_or(String::new(), |w| format!(" WHERE {w}"));
                (
                    format!("SELECT id, score, row_number() OVER (PARTITION BY id ORDER BY score), sum(score) OVER (PARTITION BY id), max(rating) OVER (PARTITION BY id) FROM customers{w}"),
                    Check::Multiset,
                )
            }
            3..=5 => {
                let f = self.pick(&[
                    "row_number() OVER (PARTITION BY customer_id ORDER BY id)",
                    "rank() OVER (PARTITION BY customer_id ORDER BY amount NULLS FIRST)",
                    "sum(amount) OVER (PARTITION BY customer_id ORDER BY id)",
                    "lag(amount) OVER (PARTITION BY customer_id ORDER BY id)",
                    "count(*) OVER (PARTITION BY customer_id)",
                    "avg(qty) OVER (PARTITION BY customer_id)",
                    "first_value(note) OVER (PARTITION BY customer_id ORDER BY placed NULLS LAST, id)",
                ]);
                let w = self
                    .where_of("", true, true)
                    .map_or(String::new(), |w| format!(" WHERE {w}"));
                (
                    format!("SELECT id, customer_id, amount, {f} FROM orders{w}"),
                    Check::Multiset,
                )
            }
            6 => (
                "SELECT id, customer_id, sum(amount) OVER (PARTITION BY customer_id) FROM orders ORDER BY customer_id, id".to_owned(),
                Check::Ordered,
            ),
            7..=8 => {
                let f = self.pick(&[
                    "row_number() OVER (ORDER BY id)",
                    "count(*) OVER ()",
                    "rank() OVER (ORDER BY score)",
                    "avg(score) OVER (PARTITION BY region)",
                    "row_number() OVER (PARTITION BY region ORDER BY score, id)",
                    "dense_rank() OVER (ORDER BY region)",
                ]);
                let w = if self.coin(0.3) {
                    format!(" WHERE id IN ({})", Self::list(&self.keys_spread(5)))
                } else {
                    String::new()
                };
                (
                    format!("SELECT id, region, score, {f} FROM customers{w}"),
                    Check::Multiset,
                )
            }
            _ => {
                let k = self.key();
                (
                    format!("SELECT id, amount, rank() OVER (ORDER BY amount), count(*) OVER () FROM orders WHERE customer_id = {k}"),
                    Check::Multiset,
                )
            }
        };
        // Windows partitioned by the key need no merge; keyed to one shard, any window runs.
        if matches!(shape, 0..=5 | 9) {
            self.push_run(cat, sql, check);
        } else {
            self.push(cat, sql, check);
        }
    }

    pub(super) fn union_all(&mut self) {
        let cat = Category::UnionAll;
        let keys = if self.coin(0.5) {
            self.keys_on_one_shard(3)
        } else {
            self.keys_spread(3)
        };
        let (a, b, c) = (keys[0], keys[1], keys[2]);
        let shape = self.rng.gen_range(0..10);
        let (sql, check) = match shape {
            0..=2 => (
                format!("SELECT id, name FROM customers WHERE id = {a} UNION ALL SELECT id, name FROM customers WHERE id = {b}"),
                Check::Multiset,
            ),
            3 => (
                format!("SELECT id, score FROM customers WHERE id = {a} UNION ALL SELECT id, score FROM customers WHERE id = {b} UNION ALL SELECT id, score FROM customers WHERE id = {c}"),
                Check::Multiset,
            ),
            4 => (
                format!("SELECT id, amount FROM orders WHERE customer_id = {a} UNION ALL SELECT id, amount FROM orders WHERE customer_id = {b}"),
                Check::Multiset,
            ),
            5 => (
                format!("SELECT id::text, name FROM customers WHERE id = {a} UNION ALL SELECT code, name FROM regions"),
                Check::Multiset,
            ),
            6 => {
                let (p, q) = (self.cpred(""), self.opred(""));
                (
                    format!("SELECT id FROM customers WHERE {p} UNION ALL SELECT customer_id FROM orders WHERE {q}"),
                    Check::Multiset,
                )
            }
            7 => (
                format!("SELECT region FROM customers WHERE id = {a} UNION SELECT region FROM customers WHERE id = {b}"),
                Check::Multiset,
            ),
            8 => (
                format!("SELECT id, name FROM customers WHERE id = {a} UNION ALL SELECT id, name FROM customers WHERE id = {b} ORDER BY 1, 2"),
                Check::Ordered,
            ),
            _ => (
                format!("SELECT id, 'customer' FROM customers WHERE id = {a} UNION ALL SELECT id, 'order' FROM orders WHERE customer_id = {a}"),
                Check::Multiset,
            ),
        };
        // Every part keyed to one shard: the whole runs there.
        let runs = match shape {
            3 => self.one_shard(&[a, b, c]),
            5 | 9 => true,
            6 => false,
            _ => self.one_shard(&[a, b]),
        };
        if runs {
            self.push_run(cat, sql, check);
        } else {
            self.push(cat, sql, check);
        }
    }

    pub(super) fn cte(&mut self) {
        let cat = Category::Cte;
        let k = self.key();
        let shape = self.rng.gen_range(0..10);
        let (sql, check) = match shape {
            0..=2 => {
                let w = self
                    .where_of("", false, true)
                    .map_or(String::new(), |w| format!(" WHERE {w}"));
                (
                    format!("WITH x AS (SELECT id, name, score FROM customers{w}) SELECT * FROM x WHERE id = {k}"),
                    Check::Multiset,
                )
            }
            3..=4 => {
                let m = if self.coin(0.3) { "MATERIALIZED " } else { "" };
                (
                    format!("WITH x AS {m}(SELECT id, name, score FROM customers WHERE id = {k}) SELECT * FROM x WHERE score IS NOT NULL OR name IS NULL"),
                    Check::Multiset,
                )
            }
            5 => (
                format!("WITH o AS (SELECT * FROM orders WHERE customer_id = {k}) SELECT count(*), sum(amount), min(placed) FROM o"),
                Check::Ordered,
            ),
            6 => {
                let w = if self.coin(0.5) {
                    format!(" WHERE {}", self.cpred("c."))
                } else {
                    String::new()
                };
                (
                    format!("WITH r AS (SELECT code, name FROM regions) SELECT c.id, r.name FROM customers c JOIN r ON r.code = c.region{w}"),
                    Check::Multiset,
                )
            }
            7 => (
                format!("WITH t AS (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id) SELECT * FROM t WHERE customer_id = {k}"),
                Check::Multiset,
            ),
            8 => (
                format!("WITH x AS (SELECT * FROM orders WHERE customer_id = {k}) SELECT c.name, x.id FROM customers c JOIN x ON x.customer_id = c.id WHERE c.id = {k}"),
                Check::Multiset,
            ),
            _ => (
                "WITH big AS (SELECT id FROM customers WHERE score > 100) SELECT o.id FROM orders o WHERE o.customer_id IN (SELECT id FROM big)".to_owned(),
                Check::Multiset,
            ),
        };
        // The key inside the CTE (one shard), or a CTE of the reference table only.
        if matches!(shape, 3..=8 | 10 | 11) {
            self.push_run(cat, sql, check);
        } else {
            self.push(cat, sql, check);
        }
    }
}
