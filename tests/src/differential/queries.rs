//! The differential test's queries: a seeded generator of SELECTs over the dataset, each with
//! its category and how its answer is to be compared (in order when the ORDER BY is total,
//! as a multiset otherwise, tie-aware where a LIMIT or ties leave PostgreSQL a choice). This
//! file has the plumbing and the single-table categories; `merges.rs` has aggregates, GROUP
//! BY and DISTINCT, `shapes.rs` the joins, subqueries, window functions, set operations and
//! CTEs.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::data::Dataset;

/// What a query exercises; each has its own list of documented refusals
/// ([`super::compare::allowed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Point,
    InList,
    Range,
    OrderTotal,
    OrderTies,
    Limit,
    Aggregate,
    GroupBy,
    Distinct,
    ColocatedJoin,
    ReferenceJoin,
    Subquery,
    Window,
    UnionAll,
    Cte,
}

impl Category {
    pub const ALL: [Category; 15] = [
        Category::Point,
        Category::InList,
        Category::Range,
        Category::OrderTotal,
        Category::OrderTies,
        Category::Limit,
        Category::Aggregate,
        Category::GroupBy,
        Category::Distinct,
        Category::ColocatedJoin,
        Category::ReferenceJoin,
        Category::Subquery,
        Category::Window,
        Category::UnionAll,
        Category::Cte,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Point => "point",
            Category::InList => "in-list",
            Category::Range => "range",
            Category::OrderTotal => "order-total",
            Category::OrderTies => "order-ties",
            Category::Limit => "limit-offset",
            Category::Aggregate => "aggregate",
            Category::GroupBy => "group-by",
            Category::Distinct => "distinct",
            Category::ColocatedJoin => "colocated-join",
            Category::ReferenceJoin => "reference-join",
            Category::Subquery => "subquery",
            Category::Window => "window",
            Category::UnionAll => "union-all",
            Category::Cte => "cte",
        }
    }
}

/// How the proxy's rows are compared with the single database's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The ORDER BY is total: the same rows in the same order.
    Ordered,
    /// No total order: the same rows in any order.
    Multiset,
    /// Sorted by the columns `keys` only (none: no ORDER BY), rows `offset..offset+limit` of
    /// the answer of `full_sql` (the query without LIMIT/OFFSET; None: the query itself).
    Ties {
        keys: Vec<usize>,
        offset: usize,
        limit: Option<usize>,
        full_sql: Option<String>,
    },
}

/// One generated query.
#[derive(Clone, Debug)]
pub struct Query {
    pub category: Category,
    pub sql: String,
    pub check: Check,
    /// The docs say this query runs (keyed to one shard, or on several with the rows simply
    /// concatenated): no refusal is documented for it, whatever its category.
    pub runs: bool,
}

impl Query {
    /// The query whose answer a tie-aware check needs besides the query's own.
    pub fn full_sql(&self) -> Option<&str> {
        match &self.check {
            Check::Ties {
                full_sql: Some(s), ..
            } => Some(s),
            _ => None,
        }
    }
}

pub(super) const CCOLS: [&str; 9] = [
    "id", "name", "region", "score", "balance", "rating", "joined", "seen", "active",
];
pub(super) const OCOLS: [&str; 6] = ["id", "customer_id", "amount", "qty", "placed", "note"];
/// Customer columns with ties and NULLs, to sort by.
pub(super) const CSORT: [&str; 8] = [
    "score", "region", "balance", "rating", "joined", "seen", "active", "name",
];
pub(super) const OSORT: [&str; 5] = ["amount", "qty", "placed", "note", "customer_id"];

/// The generator: the dataset, where each key lives, and a seeded random source.
pub struct Gen<'d> {
    pub(super) rng: StdRng,
    pub(super) data: &'d Dataset,
    /// The shard (index) of each customer id of the dataset's rows.
    pub(super) shard_of: &'d HashMap<i64, usize>,
    pub(super) out: Vec<Query>,
}

/// How many queries each category gets.
const PER_CATEGORY: [(Category, usize); 15] = [
    (Category::Point, 50),
    (Category::InList, 45),
    (Category::Range, 40),
    (Category::OrderTotal, 50),
    (Category::OrderTies, 40),
    (Category::Limit, 55),
    (Category::Aggregate, 55),
    (Category::GroupBy, 55),
    (Category::Distinct, 40),
    (Category::ColocatedJoin, 50),
    (Category::ReferenceJoin, 40),
    (Category::Subquery, 50),
    (Category::Window, 40),
    (Category::UnionAll, 40),
    (Category::Cte, 40),
];

/// The corpus of `seed`.
pub fn generate(seed: u64, data: &Dataset, shard_of: &HashMap<i64, usize>) -> Vec<Query> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        data,
        shard_of,
        out: Vec::new(),
    };
    for (category, n) in PER_CATEGORY {
        let start = g.out.len();
        g.fixed(category);
        while g.out.len() - start < n {
            g.one(category);
        }
    }
    g.out
}

impl Gen<'_> {
    /// A query the docs allow to be refused (for its category's reasons).
    pub(super) fn push(&mut self, category: Category, sql: String, check: Check) {
        self.out.push(Query {
            category,
            sql,
            check,
            runs: false,
        });
    }

    /// A query the docs say runs: keyed to one shard, or concatenated from several.
    pub(super) fn push_run(&mut self, category: Category, sql: String, check: Check) {
        self.push(category, sql, check);
        self.out.last_mut().expect("pushed").runs = true;
    }

    /// Whether all `keys` live on one shard (keys no row has count as elsewhere).
    pub(super) fn one_shard(&self, keys: &[i64]) -> bool {
        let shards: std::collections::BTreeSet<Option<&usize>> =
            keys.iter().map(|k| self.shard_of.get(k)).collect();
        shards.len() == 1 && !shards.contains(&None)
    }

    pub(super) fn coin(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    pub(super) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        *from.choose(&mut self.rng).expect("a choice")
    }

    /// A customer key: mostly one with orders, sometimes one without, absent, or an
    /// orphan order's.
    pub(super) fn key(&mut self) -> i64 {
        match self.rng.gen_range(0..100) {
            0..=69 => self.pick(&self.data.with_orders),
            70..=84 => self.data.customers.choose(&mut self.rng).expect("c").id,
            85..=94 => self.rng.gen_range(3001..4000),
            _ => self.pick(&self.data.orphans),
        }
    }

    /// Keys known to the shards (customers and orphans), all on one shard.
    pub(super) fn keys_on_one_shard(&mut self, n: usize) -> Vec<i64> {
        let shard = self.rng.gen_range(0..3);
        let mut on: Vec<i64> = self
            .shard_of
            .iter()
            .filter(|(_, s)| **s == shard)
            .map(|(k, _)| *k)
            .collect();
        on.sort();
        (0..n).map(|_| self.pick(&on)).collect()
    }

    /// Keys that span at least two shards (when n > 1).
    pub(super) fn keys_spread(&mut self, n: usize) -> Vec<i64> {
        loop {
            let keys: Vec<i64> = (0..n).map(|_| self.key()).collect();
            let shards: std::collections::BTreeSet<Option<&usize>> =
                keys.iter().map(|k| self.shard_of.get(k)).collect();
            if n < 2 || shards.len() > 1 {
                return keys;
            }
        }
    }

    pub(super) fn list(keys: &[i64]) -> String {
        keys.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A random non-empty subset of `cols`, in order, prefixed with `alias`.
    pub(super) fn cols(&mut self, cols: &[&str], alias: &str) -> Vec<String> {
        loop {
            let v: Vec<String> = cols
                .iter()
                .filter(|_| self.rng.gen_bool(0.4))
                .map(|c| format!("{alias}{c}"))
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
    }

    /// A predicate on customers' non-key columns (`p`: "" or "c.").
    pub(super) fn cpred(&mut self, p: &str) -> String {
        let r = &mut self.rng;
        match r.gen_range(0..17) {
            0 => format!("{p}score > {}", r.gen_range(-60..160)),
            1 => {
                let a = r.gen_range(-60..100);
                format!("{p}score BETWEEN {a} AND {}", a + r.gen_range(0..80))
            }
            2 => format!("{p}score IS NULL"),
            3 => format!(
                "{p}region = '{}'",
                ["EU", "NA", "AS", "SA", "XX"].choose(r).expect("r")
            ),
            4 => format!("{p}region IN ('EU', 'AS')"),
            5 => format!("{p}region IS NULL"),
            6 => format!("{p}balance < {}", r.gen_range(-1000..10000)),
            7 => format!("{p}rating > {}", r.gen_range(-600..600)),
            8 => format!(
                "{p}rating = '{}'",
                ["NaN", "Infinity", "-Infinity", "2.5"]
                    .choose(r)
                    .expect("r")
            ),
            9 => format!("{p}joined >= DATE '20{}-06-01'", r.gen_range(15..25)),
            10 => format!(
                "{p}seen < TIMESTAMPTZ '202{}-03-01 12:00:00+00'",
                r.gen_range(0..4)
            ),
            11 => format!("{p}active"),
            12 => format!("NOT {p}active"),
            13 => format!("{p}active IS NULL"),
            14 => format!(
                "{p}name LIKE '{}%'",
                ["A", "a", "B", "Z", "É"].choose(r).expect("r")
            ),
            15 => format!("({p}name IS NULL OR {p}name >= 'D')"),
            _ => format!("coalesce({p}score, 0) % 3 = 0"),
        }
    }

    /// A predicate on orders' non-key columns (`p`: "" or "o.").
    pub(super) fn opred(&mut self, p: &str) -> String {
        let r = &mut self.rng;
        match r.gen_range(0..10) {
            0 => format!("{p}amount > {}", r.gen_range(-100..40000)),
            1 => format!("{p}amount < 0"),
            2 => format!("{p}amount IS NULL"),
            3 => format!(
                "{p}qty BETWEEN {} AND {}",
                r.gen_range(-3..5),
                r.gen_range(5..20)
            ),
            4 => format!("{p}qty IS NULL"),
            5 => format!(
                "{p}placed >= TIMESTAMP '202{}-0{}-01'",
                r.gen_range(2..4),
                r.gen_range(1..10)
            ),
            6 => format!("{p}note IS NOT NULL"),
            7 => format!(
                "{p}note = '{}'",
                ["gift", "Gift", "rush", ""].choose(r).expect("r")
            ),
            8 => format!("{p}amount IN (9.99, 10.00, 0.00)"),
            _ => format!("{p}id % 7 = {}", r.gen_range(0..7)),
        }
    }

    /// One or two predicates (AND / OR), or none.
    pub(super) fn where_of(&mut self, p: &str, orders: bool, none_ok: bool) -> Option<String> {
        if none_ok && self.coin(0.3) {
            return None;
        }
        let one = |g: &mut Self| if orders { g.opred(p) } else { g.cpred(p) };
        let a = one(self);
        Some(match self.rng.gen_range(0..10) {
            0..=5 => a,
            6..=7 => format!("{a} AND {}", one(self)),
            _ => format!("({a} OR {})", one(self)),
        })
    }

    /// A sort key on a column: the column, and its direction and NULLS placement.
    pub(super) fn direction(&mut self) -> &'static str {
        self.pick(&[
            "",
            " ASC",
            " DESC",
            " NULLS FIRST",
            " DESC NULLS LAST",
            " ASC NULLS LAST",
        ])
    }

    /// Queries every seed has, before the random ones.
    fn fixed(&mut self, category: Category) {
        use Category::*;
        let fixed: &[(&str, Check)] = match category {
            Aggregate => &[
                ("SELECT count(*) FROM customers", Check::Ordered),
                ("SELECT count(*), count(score), sum(score), min(rating), max(rating), avg(balance) FROM customers", Check::Ordered),
                ("SELECT sum(amount), avg(amount), count(*) FILTER (WHERE amount < 0) FROM orders", Check::Ordered),
                ("SELECT count(*) FROM customers WHERE score > 1000", Check::Ordered),
                ("SELECT sum(score), avg(score), min(name), bool_and(active) FROM customers WHERE score > 1000", Check::Ordered),
            ],
            Limit => &[
                ("SELECT id FROM customers ORDER BY id LIMIT 2", Check::Ordered),
                ("SELECT id, customer_id FROM orders ORDER BY id DESC LIMIT 5 OFFSET 3", Check::Ordered),
                ("SELECT id FROM customers ORDER BY id LIMIT 0", Check::Ordered),
                ("SELECT id FROM customers ORDER BY id OFFSET 295", Check::Ordered),
            ],
            // The two shapes that were answered wrongly by concatenation (docs/routing.md).
            Subquery => &[
                ("SELECT r.code FROM regions r WHERE EXISTS (SELECT 1 FROM customers c WHERE c.region = r.code)", Check::Multiset),
                ("SELECT r.code FROM regions r WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.region = r.code)", Check::Multiset),
            ],
            // A CTE named like a sharded table, over the reference table.
            Cte => &[(
                "WITH orders AS (SELECT code, name FROM regions WHERE name IS NOT NULL) SELECT code FROM orders",
                Check::Multiset,
            )],
            _ => &[],
        };
        for (sql, check) in fixed {
            self.push(category, (*sql).to_owned(), check.clone());
        }
    }

    fn one(&mut self, category: Category) {
        use Category::*;
        match category {
            Point => self.point(),
            InList => self.in_list(),
            Range => self.range(),
            OrderTotal => self.order_total(),
            OrderTies => self.order_ties(),
            Limit => self.limit(),
            Aggregate => self.aggregate(),
            GroupBy => self.group_by(),
            Distinct => self.distinct(),
            ColocatedJoin => self.colocated_join(),
            ReferenceJoin => self.reference_join(),
            Subquery => self.subquery(),
            Window => self.window(),
            UnionAll => self.union_all(),
            Cte => self.cte(),
        }
    }

    fn point(&mut self) {
        let k = self.key();
        let cat = Category::Point;
        let and = |g: &mut Self, orders: bool| {
            g.where_of("", orders, true)
                .map_or(String::new(), |w| format!(" AND {w}"))
        };
        match self.rng.gen_range(0..10) {
            0..=3 => {
                let spelling = match self.rng.gen_range(0..8) {
                    0 => format!("{k} = id"),
                    1 => format!("id = '{k}'"),
                    2 => format!("id = {k}::bigint"),
                    3 => format!("id = CAST({k} AS bigint)"),
                    4 => format!("id = ({k})"),
                    _ => format!("id = {k}"),
                };
                let cols = self.cols(&CCOLS, "").join(", ");
                let w = and(self, false);
                self.push_run(
                    cat,
                    format!("SELECT {cols} FROM customers WHERE {spelling}{w}"),
                    Check::Multiset,
                );
            }
            4..=6 => {
                let cols = self.cols(&OCOLS, "").join(", ");
                let w = and(self, true);
                self.push_run(
                    cat,
                    format!("SELECT {cols} FROM orders WHERE customer_id = {k}{w}"),
                    Check::Multiset,
                );
            }
            7 => {
                let d = self.direction();
                self.push_run(
                    cat,
                    format!("SELECT id, amount, qty FROM orders WHERE customer_id = {k} ORDER BY amount{d}, id LIMIT 3"),
                    Check::Ordered,
                );
            }
            8 => self.push_run(
                cat,
                format!("SELECT count(*), sum(amount), avg(qty), max(placed), min(note) FROM orders WHERE customer_id = {k}"),
                Check::Ordered,
            ),
            _ => self.push_run(
                cat,
                format!("SELECT * FROM customers WHERE id = {k}"),
                Check::Multiset,
            ),
        }
    }

    fn in_list(&mut self) {
        let cat = Category::InList;
        let n = self.rng.gen_range(1..7);
        let (table, key, cols, orders) = if self.coin(0.5) {
            ("customers", "id", self.cols(&CCOLS, ""), false)
        } else {
            ("orders", "customer_id", self.cols(&OCOLS, ""), true)
        };
        let cols = cols.join(", ");
        let w = self
            .where_of("", orders, true)
            .map_or(String::new(), |w| format!(" AND {w}"));
        match self.rng.gen_range(0..10) {
            0..=4 => {
                let keys = Self::list(&self.keys_spread(n));
                self.push_run(
                    cat,
                    format!("SELECT {cols} FROM {table} WHERE {key} IN ({keys}){w}"),
                    Check::Multiset,
                );
            }
            5..=6 => {
                // On one shard, so a merge is not needed: ORDER BY and aggregates run there.
                let keys = Self::list(&self.keys_on_one_shard(n));
                let sql = if self.coin(0.5) {
                    format!(
                        "SELECT {cols} FROM {table} WHERE {key} IN ({keys}){w} ORDER BY {key}, id"
                    )
                } else {
                    format!("SELECT count(*), max(id) FROM {table} WHERE {key} IN ({keys}){w}")
                };
                self.push_run(cat, sql, Check::Ordered);
            }
            7 => {
                let keys = Self::list(&self.keys_spread(n.max(2)));
                self.push(
                    cat,
                    format!(
                        "SELECT {cols} FROM {table} WHERE {key} IN ({keys}){w} ORDER BY {key}, id"
                    ),
                    Check::Ordered,
                );
            }
            8 => {
                let keys = Self::list(&self.keys_spread(n));
                self.push_run(
                    cat,
                    format!(
                        "SELECT {cols} FROM {table} WHERE {key} = ANY (ARRAY[{keys}]::bigint[]){w}"
                    ),
                    Check::Multiset,
                );
            }
            _ => {
                let keys = Self::list(&self.keys_spread(n));
                self.push_run(
                    cat,
                    format!("SELECT {cols} FROM {table} WHERE {key} NOT IN ({keys}){w}"),
                    Check::Multiset,
                );
            }
        }
    }

    fn range(&mut self) {
        let cat = Category::Range;
        let sql = match self.rng.gen_range(0..6) {
            0..=1 => {
                let cols = self.cols(&CCOLS, "").join(", ");
                let w = self.where_of("", false, false).expect("a predicate");
                format!("SELECT {cols} FROM customers WHERE {w}")
            }
            2..=3 => {
                let cols = self.cols(&OCOLS, "").join(", ");
                let w = self.where_of("", true, false).expect("a predicate");
                format!("SELECT {cols} FROM orders WHERE {w}")
            }
            4 => {
                let a = self.rng.gen_range(-300..2500);
                format!(
                    "SELECT id, name, score FROM customers WHERE id BETWEEN {a} AND {}",
                    a + self.rng.gen_range(1..400)
                )
            }
            _ => {
                let a = self.rng.gen_range(-300..2500);
                let w = self.opred("");
                format!("SELECT * FROM orders WHERE customer_id > {a} AND {w}")
            }
        };
        self.push_run(cat, sql, Check::Multiset);
    }

    /// `ORDER BY` keys over `sortable` ending with a unique `id`: (select list, order by).
    fn total_order(&mut self, cols: &[&str], sortable: &[&str]) -> (String, String) {
        let mut select = self.cols(cols, "");
        let mut keys = Vec::new();
        for _ in 0..self.rng.gen_range(0..3) {
            let c = self.pick(sortable);
            let d = self.direction();
            keys.push(match self.rng.gen_range(0..6) {
                // By position or output name when the column is selected.
                0 if select.iter().any(|s| s == c) => {
                    format!("{}{d}", select.iter().position(|s| s == c).expect("in") + 1)
                }
                1 if c == "name" => format!("name COLLATE \"C\"{d}"),
                2 if c == "score" || c == "qty" => format!("coalesce({c}, 0) * -1{d}"),
                3 => {
                    select.push(format!("{c} AS k{}", keys.len()));
                    format!("k{}{d}", keys.len())
                }
                _ => format!("{c}{d}"),
            });
        }
        keys.push(self.pick(&["id", "id DESC", "id ASC"]).to_owned());
        (select.join(", "), keys.join(", "))
    }

    fn order_total(&mut self) {
        let sql = if self.coin(0.5) {
            let (s, o) = self.total_order(&CCOLS, &CSORT);
            let w = self
                .where_of("", false, true)
                .map_or(String::new(), |w| format!(" WHERE {w}"));
            format!("SELECT {s} FROM customers{w} ORDER BY {o}")
        } else {
            let (s, o) = self.total_order(&OCOLS, &OSORT);
            let w = self
                .where_of("", true, true)
                .map_or(String::new(), |w| format!(" WHERE {w}"));
            format!("SELECT {s} FROM orders{w} ORDER BY {o}")
        };
        self.push(Category::OrderTotal, sql, Check::Ordered);
    }

    /// Sort keys with ties (1 or 2 columns of `sortable`), selected first, then other
    /// columns: (select list, order by, key positions).
    fn tied_order(&mut self, cols: &[&str], sortable: &[&str]) -> (String, String, Vec<usize>) {
        let mut keys: Vec<&str> = Vec::new();
        for _ in 0..self.rng.gen_range(1..3) {
            let c = self.pick(sortable);
            if !keys.contains(&c) {
                keys.push(c);
            }
        }
        let mut select: Vec<String> = keys.iter().map(|c| c.to_string()).collect();
        select.extend(
            self.cols(cols, "")
                .into_iter()
                .filter(|c| c != "id" && !keys.contains(&c.as_str())),
        );
        let order: Vec<String> = keys
            .iter()
            .map(|c| format!("{c}{}", self.direction()))
            .collect();
        (
            select.join(", "),
            order.join(", "),
            (0..keys.len()).collect(),
        )
    }

    fn order_ties(&mut self) {
        let (sql, keys) = if self.coin(0.5) {
            let (s, o, k) = self.tied_order(&CCOLS, &CSORT);
            let w = self
                .where_of("", false, true)
                .map_or(String::new(), |w| format!(" WHERE {w}"));
            (format!("SELECT {s} FROM customers{w} ORDER BY {o}"), k)
        } else {
            let (s, o, k) = self.tied_order(&OCOLS, &OSORT);
            let w = self
                .where_of("", true, true)
                .map_or(String::new(), |w| format!(" WHERE {w}"));
            (format!("SELECT {s} FROM orders{w} ORDER BY {o}"), k)
        };
        self.push(
            Category::OrderTies,
            sql,
            Check::Ties {
                keys,
                offset: 0,
                limit: None,
                full_sql: None,
            },
        );
    }

    fn limit(&mut self) {
        let cat = Category::Limit;
        let orders = self.coin(0.5);
        let (table, cols, sortable): (&str, &[&str], &[&str]) = if orders {
            ("orders", &OCOLS, &OSORT)
        } else {
            ("customers", &CCOLS, &CSORT)
        };
        let w = self
            .where_of("", orders, true)
            .map_or(String::new(), |w| format!(" WHERE {w}"));
        let n = self.pick(&[1usize, 2, 3, 5, 10, 25, 100]);
        let m = self.pick(&[0usize, 0, 1, 4, 20, 150]);
        let tail = if m > 0 {
            format!(" LIMIT {n} OFFSET {m}")
        } else {
            format!(" LIMIT {n}")
        };
        match self.rng.gen_range(0..10) {
            0..=3 => {
                let (s, o) = self.total_order(cols, sortable);
                let tail = if self.coin(0.2) {
                    format!(" OFFSET {m} ROWS FETCH FIRST {n} ROWS ONLY")
                } else {
                    tail
                };
                self.push(
                    cat,
                    format!("SELECT {s} FROM {table}{w} ORDER BY {o}{tail}"),
                    Check::Ordered,
                );
            }
            4..=7 => {
                let (s, o, keys) = self.tied_order(cols, sortable);
                let base = format!("SELECT {s} FROM {table}{w} ORDER BY {o}");
                self.push(
                    cat,
                    format!("{base}{tail}"),
                    Check::Ties {
                        keys,
                        offset: m,
                        limit: Some(n),
                        full_sql: Some(base),
                    },
                );
            }
            _ => {
                let s = self.cols(cols, "").join(", ");
                let base = format!("SELECT {s} FROM {table}{w}");
                self.push(
                    cat,
                    format!("{base} LIMIT {n}"),
                    Check::Ties {
                        keys: Vec::new(),
                        offset: 0,
                        limit: Some(n),
                        full_sql: Some(base),
                    },
                );
            }
        }
    }
}
