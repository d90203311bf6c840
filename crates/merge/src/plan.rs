//! The plan as a value: a small tree of primitives, each with one job, above the query every
//! shard runs. The router builds it, `shardgate route` prints it, the [`crate::engine`] runs
//! it, golden files pin it.
//!
//! Columns are indexes into the rows the shards return: [`Col::Visible`] counts the
//! statement's own select list (what the client sees), [`Col::Helper`] the helper columns
//! the planner appended after it (sort keys, partial aggregates, binary twins of values the
//! proxy must compare). Helpers are fetched in binary format and dropped by [`Node::Project`]
//! before rows reach the client. Positions stay valid through the tree: an
//! [`Node::Aggregate`] writes its final values into the columns of its partial inputs.

use std::fmt;

/// A column of the shards' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Col {
    /// The n-th column of the select list (0-based; printed 1-based as `#n`).
    Visible(usize),
    /// The n-th helper column appended after the select list (0-based; printed `hn`).
    Helper(usize),
}

impl fmt::Display for Col {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Col::Visible(i) => write!(f, "#{}", i + 1),
            Col::Helper(i) => write!(f, "h{}", i + 1),
        }
    }
}

/// One key of an ORDER BY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub column: Col,
    pub descending: bool,
    pub nulls_first: bool,
    /// Text compared bytewise orders as the query asked: the database's collation is "C"
    /// (or the key says `COLLATE "C"`). When false, a key that arrives as text, varchar or
    /// bpchar is refused by the executor.
    pub bytewise_text: bool,
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} NULLS {}",
            self.column,
            if self.descending { "DESC" } else { "ASC" },
            if self.nulls_first { "FIRST" } else { "LAST" }
        )?;
        if !self.bytewise_text {
            f.write_str(" (text refused)")?;
        }
        Ok(())
    }
}

/// An aggregate the proxy finishes from the shards' partial values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// Partials: bigint counts; result: their sum (0 over no rows).
    Count,
    /// Partials: `sum` per shard (bigint for smallint/integer arguments, numeric for
    /// bigint/numeric); result: their sum, NULL when every partial is NULL.
    Sum,
    /// Partials: a sum (in `column`) and a count (in `count`); result: numeric
    /// `sum / count` with PostgreSQL's scale, NULL over no rows.
    Avg,
    Min,
    Max,
    /// `bool_and` / `every`.
    BoolAnd,
    BoolOr,
}

impl AggKind {
    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::BoolAnd => "bool_and",
            AggKind::BoolOr => "bool_or",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agg {
    pub kind: AggKind,
    /// The partial value, replaced by the final one.
    pub column: Col,
    /// avg: the partial count (replaced by the total count).
    pub count: Option<Col>,
    /// min/max: a binary copy of the value to compare by (the client's column may be text
    /// of a type whose text cannot be ordered); the chosen row's `column` passes unchanged.
    pub compare: Option<Col>,
    /// min/max of text: as for [`SortKey::bytewise_text`].
    pub bytewise_text: bool,
}

impl Agg {
    /// An aggregate of `kind` finishing into `column`, without helpers.
    pub fn new(kind: AggKind, column: Col) -> Agg {
        Agg {
            kind,
            column,
            count: None,
            compare: None,
            bytewise_text: true,
        }
    }
}

impl fmt::Display for Agg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}", self.kind.name(), self.column)?;
        if let Some(c) = self.count {
            write!(f, " / {c}")?;
        }
        if let Some(c) = self.compare {
            write!(f, " by {c}")?;
        }
        f.write_str(")")?;
        if matches!(self.kind, AggKind::Min | AggKind::Max) && !self.bytewise_text {
            f.write_str(" (text refused)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A constant of a HAVING comparison, as the statement wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    Number(String),
    String(String),
    Bool(bool),
    Null,
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Number(n) => f.write_str(n),
            Literal::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Literal::Null => f.write_str("NULL"),
        }
    }
}

/// HAVING over final aggregates and group columns, with SQL's three-valued logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    Cmp {
        column: Col,
        op: CmpOp,
        value: Literal,
        /// As [`SortKey::bytewise_text`], for `<`, `<=`, `>`, `>=` on text.
        bytewise_text: bool,
    },
    IsNull {
        column: Col,
        negated: bool,
    },
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, ps: &[Predicate], op: &str| {
            f.write_str("(")?;
            for (i, p) in ps.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{p}")?;
            }
            f.write_str(")")
        };
        match self {
            Predicate::Cmp {
                column, op, value, ..
            } => write!(f, "{column} {} {value}", op.symbol()),
            Predicate::IsNull { column, negated } => {
                write!(f, "{column} IS {}NULL", if *negated { "NOT " } else { "" })
            }
            Predicate::And(ps) => join(f, ps, "AND"),
            Predicate::Or(ps) => join(f, ps, "OR"),
            Predicate::Not(p) => write!(f, "NOT {p}"),
        }
    }
}

/// A primitive of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// The query on one shard.
    Route { shard: String, sql: String },
    /// The query on every listed shard, their rows concatenated.
    Scatter { shards: Vec<String>, sql: String },
    /// A k-way merge of the shards' streams, each sorted by `keys` (the shard query's ORDER
    /// BY): holds one row per shard.
    MergeSort {
        input: Box<Node>,
        keys: Vec<SortKey>,
    },
    /// Final aggregation of the shards' partial aggregates, groups hashed by `group` (none:
    /// one row, even over no rows). Other columns are taken from the group's first row.
    Aggregate {
        input: Box<Node>,
        group: Vec<Col>,
        aggs: Vec<Agg>,
    },
    /// An in-memory sort (ORDER BY over aggregated rows).
    Sort {
        input: Box<Node>,
        keys: Vec<SortKey>,
    },
    /// HAVING, over final aggregates.
    Filter {
        input: Box<Node>,
        predicate: Predicate,
    },
    /// Rows whose `on` columns (None: every visible column) were not seen before; the
    /// first of each wins, so over sorted input this is DISTINCT ON. `sorted`: equal keys
    /// arrive together, only the previous key is kept.
    Distinct {
        input: Box<Node>,
        on: Option<Vec<Col>>,
        sorted: bool,
    },
    /// OFFSET `offset`, then at most `limit` rows.
    Limit {
        input: Box<Node>,
        limit: Option<u64>,
        offset: u64,
    },
    /// Drops the `helpers` helper columns at the end of each row.
    Project { input: Box<Node>, helpers: usize },
}

impl Node {
    /// The node below this one (None for Route and Scatter).
    pub fn input(&self) -> Option<&Node> {
        match self {
            Node::Route { .. } | Node::Scatter { .. } => None,
            Node::MergeSort { input, .. }
            | Node::Aggregate { input, .. }
            | Node::Sort { input, .. }
            | Node::Filter { input, .. }
            | Node::Distinct { input, .. }
            | Node::Limit { input, .. }
            | Node::Project { input, .. } => Some(input),
        }
    }

    /// The shards and their SQL.
    pub fn source(&self) -> (&[String], &str) {
        match self {
            Node::Route { shard, sql } => (std::slice::from_ref(shard), sql),
            Node::Scatter { shards, sql } => (shards, sql),
            n => n.input().expect("a plan ends in Route or Scatter").source(),
        }
    }

    fn line(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[String]| f.write_str(&items.join(", "));
        match self {
            Node::Route { shard, sql } => write!(f, "Route {shard}: {sql}"),
            Node::Scatter { shards, sql } => write!(f, "Scatter [{}]: {sql}", shards.join(", ")),
            Node::MergeSort { keys, .. } => {
                f.write_str("MergeSort ")?;
                list(f, &keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
            }
            Node::Aggregate { group, aggs, .. } => {
                f.write_str("Aggregate")?;
                if !group.is_empty() {
                    f.write_str(" group ")?;
                    list(f, &group.iter().map(|c| c.to_string()).collect::<Vec<_>>())?;
                }
                if !aggs.is_empty() {
                    f.write_str(" aggs ")?;
                    list(f, &aggs.iter().map(|a| a.to_string()).collect::<Vec<_>>())?;
                }
                Ok(())
            }
            Node::Sort { keys, .. } => {
                f.write_str("Sort ")?;
                list(f, &keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
            }
            Node::Filter { predicate, .. } => write!(f, "Filter {predicate}"),
            Node::Distinct { on, sorted, .. } => {
                f.write_str("Distinct")?;
                match on {
                    None => f.write_str(" all visible")?,
                    Some(cols) => {
                        f.write_str(" on ")?;
                        list(f, &cols.iter().map(|c| c.to_string()).collect::<Vec<_>>())?;
                    }
                }
                if *sorted {
                    f.write_str(" (sorted)")?;
                }
                Ok(())
            }
            Node::Limit { limit, offset, .. } => {
                match limit {
                    Some(l) => write!(f, "Limit {l}")?,
                    None => f.write_str("Limit ALL")?,
                }
                if *offset > 0 {
                    write!(f, " offset {offset}")?;
                }
                Ok(())
            }
            Node::Project { helpers, .. } => write!(f, "Project drop {helpers} helper(s)"),
        }
    }
}

impl fmt::Display for Node {
    /// One primitive per line, inputs indented below.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut node = Some(self);
        let mut depth = 0;
        while let Some(n) = node {
            if depth > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{:width$}", "", width = depth * 2)?;
            n.line(f)?;
            node = n.input();
            depth += 1;
        }
        Ok(())
    }
}

/// A plan for a statement over several shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    pub root: Node,
    /// Helper columns appended to the select list (fetched in binary format).
    pub helpers: usize,
    /// Columns of the statement's own select list, when known at plan time (not with `*`).
    pub visible: Option<usize>,
}

impl MergePlan {
    /// The shards the query runs on.
    pub fn shards(&self) -> &[String] {
        self.root.source().0
    }

    /// The SQL each shard runs.
    pub fn shard_sql(&self) -> &str {
        self.root.source().1
    }

    /// The formats to ask each shard for in Bind, given the client's formats for its
    /// columns: the client's for the visible columns, binary for the helpers.
    pub fn shard_formats(&self, client: &[crate::Format]) -> Vec<crate::Format> {
        let mut v = client.to_vec();
        v.extend(std::iter::repeat_n(crate::Format::Binary, self.helpers));
        v
    }
}

impl fmt::Display for MergePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_prints_as_a_tree() {
        let plan = Node::Limit {
            input: Box::new(Node::Project {
                input: Box::new(Node::MergeSort {
                    input: Box::new(Node::Scatter {
                        shards: vec!["s0".into(), "s1".into()],
                        sql: "SELECT id, id FROM t ORDER BY id LIMIT 2".into(),
                    }),
                    keys: vec![SortKey {
                        column: Col::Helper(0),
                        descending: false,
                        nulls_first: false,
                        bytewise_text: true,
                    }],
                }),
                helpers: 1,
            }),
            limit: Some(2),
            offset: 0,
        };
        assert_eq!(
            plan.to_string(),
            "Limit 2\n  Project drop 1 helper(s)\n    MergeSort h1 ASC NULLS LAST\n      Scatter [s0, s1]: SELECT id, id FROM t ORDER BY id LIMIT 2"
        );
        assert_eq!(plan.source().0, ["s0", "s1"]);
    }
}
