//! Judging one answer of the proxy against the single database's: the same rows in the same
//! order (total ORDER BY), the same multiset (no total order), or, where ties or a LIMIT
//! without a total order leave PostgreSQL a choice, a valid choice; or a refusal (`0A000`)
//! that the docs describe for the query's category.

use std::collections::HashMap;

use super::queries::{Category, Check, Query};

/// A row as text (`None`: NULL).
pub type Row = Vec<Option<String>>;

/// What one side answered: rows, or an error's SQLSTATE and message.
pub type Answer = Result<Vec<Row>, (String, String)>;

/// The refusals the docs describe, each with a distinctive part of its message and where it is
/// documented. The categories name which of them their queries may meet
/// ([`allowed`]); any other refusal fails the test.
pub const REFUSALS: &[(&str, &str, &str)] = &[
    // docs/routing.md, the table's "reads without a key that need a merge ... refused until
    // merges exist" (a keyless read, or an IN list over several shards).
    (
        "merge needed",
        "would have to be merged across shards",
        "routing.md",
    ),
    ("merge needed", "aggregate to merge", "routing.md"),
    // docs/routing.md "Refused": a sharded table read in a subquery, CTE, derived table,
    // the select list, an outer join or a set operation of a statement for several shards.
    (
        "sharded table nested",
        "is read in a subquery, CTE, derived table",
        "routing.md",
    ),
    // docs/routing.md "Refused": keys of different shards for different tables.
    (
        "keys on different shards",
        "for one table and",
        "routing.md",
    ),
    // docs/merge.md "What is refused": everything router::plan refuses, e.g. joins of sharded
    // tables on other columns and sharded tables in subqueries. The router says this when a
    // statement has a keyless use of a sharded table besides another use.
    (
        "join without a key",
        "joins a sharded table with other tables",
        "merge.md",
    ),
    // docs/routing.md "Refused": keys of the wrong type.
    (
        "key not of the key type",
        "invalid input syntax for type",
        "routing.md",
    ),
    // docs/routing.md: a cursor over several shards; SQL-level PREPARE on sharded tables; a
    // statement for several shards inside a transaction block.
    (
        "cursor over several shards",
        "a cursor over several shards",
        "routing.md",
    ),
    ("SQL-level PREPARE", "SQL-level PREPARE", "routing.md"),
    (
        "several shards in a transaction",
        "in a transaction block",
        "routing.md",
    ),
    // docs/merge.md "What is refused, and why".
    (
        "DISTINCT aggregate",
        "(DISTINCT ...) across shards",
        "merge.md",
    ),
    (
        "float sum/avg",
        "real or double precision values",
        "merge.md",
    ),
    (
        "aggregate does not decompose",
        "cannot be combined into the exact result",
        "merge.md",
    ),
    ("expression over aggregates", "over aggregates", "merge.md"),
    (
        "expression over aggregates",
        "expression of aggregates",
        "merge.md",
    ),
    ("window not by the key", "window function", "merge.md"),
    (
        "SELECT * with aggregates",
        "SELECT * with GROUP BY",
        "merge.md",
    ),
    (
        "ORDER BY position with *",
        "ORDER BY a position with *",
        "merge.md",
    ),
    ("set operation", "a set operation (UNION", "merge.md"),
    // docs/routing.md "Refused": a sharded table on the null-extended side of an outer join
    // that is not joined on its key to a table of its map on the preserved side.
    (
        "outer join without the key",
        "null-extended side of an outer join",
        "routing.md",
    ),
    ("HAVING beyond comparisons", "HAVING `", "merge.md"),
];

/// The refusals each category's queries may meet (names from [`REFUSALS`]); a query the
/// docs say runs ([`Query::runs`]) may meet none.
pub fn allowed(category: Category) -> &'static [&'static str] {
    use Category::*;
    const MERGE: &str = "merge needed";
    const NESTED: &str = "sharded table nested";
    const SPLIT: &str = "keys on different shards";
    const JOIN: &str = "join without a key";
    match category {
        Point => &["key not of the key type"],
        InList => &["key not of the key type", MERGE],
        Range => &[],
        OrderTotal | OrderTies | Limit | Distinct => &[MERGE, "ORDER BY position with *"],
        Aggregate => &[
            MERGE,
            "DISTINCT aggregate",
            "float sum/avg",
            "aggregate does not decompose",
            "expression over aggregates",
        ],
        GroupBy => &[
            MERGE,
            "DISTINCT aggregate",
            "float sum/avg",
            "aggregate does not decompose",
            "expression over aggregates",
            "SELECT * with aggregates",
            "HAVING beyond comparisons",
        ],
        // A co-located join is on both tables' shard keys: SPEC §4 refuses only joins on
        // other columns, so "join without a key" is not expected here.
        ColocatedJoin => &[MERGE, SPLIT],
        ReferenceJoin => &[MERGE, NESTED, "outer join without the key"],
        Subquery | Cte => &[MERGE, NESTED, SPLIT, JOIN, "outer join without the key"],
        Window => &[MERGE, NESTED, "window not by the key"],
        UnionAll => &[MERGE, NESTED, SPLIT, JOIN, "set operation"],
    }
}

/// The verdict on one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Matched,
    /// A documented refusal of the category (its name in [`REFUSALS`]).
    Refused(&'static str),
    /// 0A000 with a message not documented for the category.
    UndocumentedRefusal(String),
    /// The proxy answered differently than the single database.
    Wrong(String),
    /// Any other error from the proxy.
    Error(String),
}

/// The documented refusal a message is, if any.
pub fn refusal_name(message: &str) -> Option<&'static str> {
    REFUSALS
        .iter()
        .find(|(_, needle, _)| message.contains(needle))
        .map(|(name, _, _)| *name)
}

/// Judges the proxy's answer to `q` against the single database's (`single`) and, for a
/// tie-aware check, the single database's answer to the query without its LIMIT (`full`).
pub fn judge(q: &Query, proxy: &Answer, single: &[Row], full: Option<&[Row]>) -> Verdict {
    let rows = match proxy {
        Ok(rows) => rows,
        Err((code, message)) if code == "0A000" => {
            return match refusal_name(message) {
                _ if q.runs => Verdict::UndocumentedRefusal(format!(
                    "{message} (the docs say this query runs)"
                )),
                Some(name) if allowed(q.category).contains(&name) => Verdict::Refused(name),
                _ => Verdict::UndocumentedRefusal(message.clone()),
            }
        }
        Err((code, message)) => return Verdict::Error(format!("{code}: {message}")),
    };
    let problem = match &q.check {
        Check::Ordered => (rows.as_slice() != single).then(|| differs(rows, single, true)),
        Check::Multiset => (sorted(rows) != sorted(single)).then(|| differs(rows, single, false)),
        Check::Ties {
            keys,
            offset,
            limit,
            ..
        } => tie_problem(rows, full.unwrap_or(single), keys, *offset, *limit),
    };
    match problem {
        None => Verdict::Matched,
        Some(p) => Verdict::Wrong(p),
    }
}

fn sorted(rows: &[Row]) -> Vec<Row> {
    let mut v = rows.to_vec();
    v.sort();
    v
}

fn show(r: &Row) -> String {
    let cells: Vec<String> = r
        .iter()
        .map(|c| c.as_deref().map_or("NULL".to_owned(), |s| format!("{s:?}")))
        .collect();
    format!("({})", cells.join(", "))
}

/// A short account of how two answers differ.
fn differs(got: &[Row], want: &[Row], ordered: bool) -> String {
    let mut out = format!("proxy {} row(s), single database {}", got.len(), want.len());
    if ordered && sorted(got) == sorted(want) {
        out.push_str("; same rows, other order");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            out.push_str(&format!(
                "; row {i}: proxy {} vs {}",
                show(&got[i]),
                show(&want[i])
            ));
        }
        return out;
    }
    let (mut extra, mut missing) = (Vec::new(), Vec::new());
    let mut counts: HashMap<&Row, i64> = HashMap::new();
    for r in want {
        *counts.entry(r).or_default() += 1;
    }
    for r in got {
        *counts.entry(r).or_default() -= 1;
    }
    for (r, n) in counts {
        if n > 0 {
            missing.push(format!("{}×{n}", show(r)));
        } else if n < 0 {
            extra.push(format!("{}×{}", show(r), -n));
        }
    }
    extra.sort();
    missing.sort();
    extra.truncate(4);
    missing.truncate(4);
    out.push_str(&format!(
        "; only the proxy's: {}; only the single database's: {}",
        extra.join(" "),
        missing.join(" ")
    ));
    out
}

/// Whether `got` is a valid answer of a query whose full ordered answer (without LIMIT and
/// OFFSET) is `full`, sorted by the columns `keys` only (ties among rows with equal keys
/// go either way), of which rows `offset..offset+limit` are returned.
fn tie_problem(
    got: &[Row],
    full: &[Row],
    keys: &[usize],
    offset: usize,
    limit: Option<usize>,
) -> Option<String> {
    let key = |r: &Row| -> Vec<Option<String>> { keys.iter().map(|&k| r[k].clone()).collect() };
    // The tie groups of the full answer, in order.
    let mut group_of: HashMap<Vec<Option<String>>, usize> = HashMap::new();
    let mut groups: Vec<Vec<Row>> = Vec::new();
    let mut window: Vec<usize> = Vec::new(); // rows each group has in the window
    let end = limit.map_or(full.len(), |l| (offset + l).min(full.len()));
    for (i, r) in full.iter().enumerate() {
        let k = key(r);
        let g = match group_of.get(&k) {
            Some(&g) if g + 1 == groups.len() => g,
            Some(_) => {
                return Some(format!(
                    "the single database's rows are not grouped by the sort keys at row {i}"
                ))
            }
            None => {
                groups.push(Vec::new());
                window.push(0);
                group_of.insert(k, groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[g].push(r.clone());
        if i >= offset && i < end {
            window[g] += 1;
        }
    }
    let want = end.saturating_sub(offset);
    if got.len() != want {
        return Some(format!(
            "proxy {} row(s), expected {want} (of {} without the LIMIT)",
            got.len(),
            full.len()
        ));
    }
    let mut last = 0;
    let mut seen: Vec<Vec<Row>> = vec![Vec::new(); groups.len()];
    for (i, r) in got.iter().enumerate() {
        let Some(&g) = group_of.get(&key(r)) else {
            return Some(format!("row {i} {} is not an answer at all", show(r)));
        };
        if g < last {
            return Some(format!("row {i} {} is out of order", show(r)));
        }
        last = g;
        seen[g].push(r.clone());
    }
    for (g, rows) in seen.iter().enumerate() {
        if rows.len() != window[g] {
            return Some(format!(
                "{} row(s) with keys {} where {} belong",
                rows.len(),
                show(&key(&groups[g][0])),
                window[g]
            ));
        }
        let mut pool = groups[g].clone();
        for r in rows {
            match pool.iter().position(|p| p == r) {
                Some(at) => {
                    pool.swap_remove(at);
                }
                None => return Some(format!("row {} is not among its ties", show(r))),
            }
        }
    }
    None
}
