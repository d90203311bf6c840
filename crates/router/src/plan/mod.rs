//! From an [`Analysis`] and a database's maps to where a statement runs.
//!
//! Tables are sharded (a map names them), reference (a full copy on every shard) or
//! unsharded (on the database's home shard, its first). A statement runs on one shard when
//! every use of a sharded table is pinned to that shard and its other tables live there too;
//! keys from parameters are resolved with the bound values. What cannot be run correctly on
//! the shards the router can name is refused, with the reason.

use std::collections::BTreeSet;

use sgconfig::shardmap::{KeyValue, ShardMap};
use sgconfig::DatabaseConfig;

use crate::analyze::{Analysis, KeyExpr, Kind};
use crate::sharding::shard_for_key;

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One shard.
    Shard(String),
    /// Several shards (a key IN list spread over them); rows are concatenated, counts summed.
    Shards(Vec<String>),
    /// Every shard: DDL, maintenance, writes to reference tables, keyless reads that can be
    /// concatenated.
    AllShards,
    /// Any one shard: reads of reference tables only.
    AnyShard,
    /// The session's shard: session commands, transaction control, statements on unsharded
    /// tables (the home shard when no transaction pins another).
    Session,
    /// A key comes from a parameter that is not bound yet.
    AtBind,
    /// Code the router cannot see into: the shard the session is pinned to (its
    /// transaction's), else refused.
    Pinned,
    /// Cannot be run correctly: the reason and what to do.
    Refuse { reason: String, hint: String },
}

fn refuse(reason: impl Into<String>, hint: impl Into<String>) -> Plan {
    Plan::Refuse {
        reason: reason.into(),
        hint: hint.into(),
    }
}

/// A read the plan refuses only because its rows need merging, which the merge planner
/// (`crate::merge_plan`) may do: no hint names where it runs.
pub fn mergeable(a: &Analysis, hints: &crate::hints::Hints) -> bool {
    a.kind == Kind::Read && a.needs_merge && hints.shard.is_none() && hints.key.is_none()
}

/// The map that places `table`, with the table's key columns.
pub fn map_for<'d>(db: &'d DatabaseConfig, table: &str) -> Option<(&'d ShardMap, &'d [String])> {
    db.maps.iter().find_map(|m| {
        m.tables
            .iter()
            .find(|t| t.table == table)
            .map(|t| (m, t.columns.as_slice()))
    })
}

/// Plans one analysed statement. `params` are the bound values in text form (`None`: not
/// bound yet or NULL).
pub fn plan(db: &DatabaseConfig, a: &Analysis, params: &[Option<String>]) -> Plan {
    let p = plan_shape(db, a, params);
    if (a.nested_sharded || unanchored(db, a))
        && matches!(a.kind, Kind::Read | Kind::Write)
        && matches!(p, Plan::Shards(_) | Plan::AllShards)
    {
        return refuse(
            "a sharded table is read in a subquery, CTE, derived table, select list, outer join or set operation of a statement for several shards: each shard would see only its own part of it, and the shards' rows could not simply be put together",
            "Give the shard key so that the statement runs on one shard, query the sharded table on its own, or name the shard: /* shardgate: shard=NAME */.",
        );
    }
    if matches!(p, Plan::Shards(_) | Plan::AllShards) && nullable_alone(db, a) {
        return refuse(
            "a sharded table on the null-extended side of an outer join, not joined on its shard key to a table of its map: each shard would extend its own rows with NULLs where another shard has the match",
            "Join the sharded tables on their shard keys, give the shard key, or name the shard: /* shardgate: shard=NAME */.",
        );
    }
    if a.cursor && matches!(p, Plan::Shards(_) | Plan::AllShards) {
        return refuse(
            "a cursor over several shards (its rows would need a merge the proxy cannot keep open across FETCHes)",
            "Give the shard key in the cursor's query, or name the shard: /* shardgate: shard=NAME */.",
        );
    }
    if a.one_shard && matches!(p, Plan::Shards(_) | Plan::AllShards) {
        return refuse(
            "a COPY, or an EXPLAIN of a write, that would need several shards (their output is not merged by shard)",
            "Give the shard key, or name the shard with /* shardgate: shard=NAME */.",
        );
    }
    p
}

fn plan_shape(db: &DatabaseConfig, a: &Analysis, params: &[Option<String>]) -> Plan {
    if let Some(reason) = &a.refuse {
        return refuse(
            reason.clone(),
            "See docs/routing.md for what the router understands.",
        );
    }
    match a.kind {
        Kind::Ddl | Kind::Maintenance => return Plan::AllShards,
        Kind::Transaction | Kind::Session => return Plan::Session,
        Kind::Opaque => return Plan::Pinned,
        Kind::Read | Kind::Write => {}
    }
    let home = db
        .shards
        .first()
        .map(|(n, _)| n.to_owned())
        .unwrap_or_default();
    let is_reference = |t: &String| db.reference_tables.contains(t);
    let unsharded: Vec<&String> = a
        .tables
        .iter()
        .filter(|t| map_for(db, t).is_none() && !is_reference(t))
        .collect();
    if a.keyed.is_empty() {
        let all_reference = !a.tables.is_empty() && unsharded.is_empty();
        return match (all_reference, a.kind) {
            (true, Kind::Read) => Plan::AnyShard,
            (true, _) => Plan::AllShards,
            _ => Plan::Session,
        };
    }
    // Every use of a sharded table must be pinned; gather the shards they pin. Keys travel
    // across equalities of co-located key columns.
    let (uses, colocated) = colocate(db, a);
    let mut shards: Option<BTreeSet<String>> = None;
    let mut unpinned = false;
    for u in &uses {
        let Some((map, _)) = map_for(db, &u.table) else {
            continue;
        };
        let Some(alternatives) = &u.keys else {
            // A read whose key is only compared (`day >= ...`): a range map names the shards
            // that may hold its rows.
            if a.kind == Kind::Read
                && matches!(map.rule, sgconfig::shardmap::Rule::Range { .. })
                && bounds_wait_for_bind(&u.bounds, params)
            {
                return Plan::AtBind;
            }
            match prune(map, &u.bounds, params).filter(|_| a.kind == Kind::Read) {
                Some(these) => {
                    shards = Some(match shards {
                        None => these,
                        Some(prev) if prev == these => prev,
                        Some(prev) => {
                            return refuse(
                                format!(
                                    "the statement needs shards {} for one table and {} for another",
                                    list(&prev),
                                    list(&these)
                                ),
                                "Cross-shard joins are not supported yet: query each shard's rows separately.",
                            )
                        }
                    });
                }
                None => unpinned = true,
            }
            continue;
        };
        let mut these = BTreeSet::new();
        for alt in alternatives {
            match resolve(map, alt, params) {
                Resolved::Shards(s) => these.extend(s),
                Resolved::AtBind => return Plan::AtBind,
                Resolved::Bad(reason) => {
                    return refuse(
                        reason,
                        format!("Give `{}` a key of type {}.", u.table, type_names(map)),
                    )
                }
            }
        }
        shards = Some(match shards {
            None => these,
            // Several sharded uses: all must agree on one shard set.
            Some(prev) if prev == these => prev,
            Some(prev) => {
                return refuse(
                    format!(
                        "the statement needs shards {} for one table and {} for another",
                        list(&prev),
                        list(&these)
                    ),
                    "Cross-shard joins are not supported yet: query each shard's rows separately, or pin the transaction with /* shardgate: shard=NAME */.",
                )
            }
        });
    }
    if unpinned {
        // One sharded table, or tables joined on their keys within one map: each shard
        // joins its own rows, and every row of the answer comes from one shard.
        if a.kind == Kind::Read && !a.needs_merge && colocated && unsharded.is_empty() {
            return Plan::AllShards;
        }
        // A write without a key: UPDATE and DELETE run on every shard, each on its own rows
        // (atomically: in the client's transaction, or with two-phase commit of their
        // own); an INSERT ... SELECT only from a source co-located on the target's key
        // (each shard inserts its own rows), never VALUES (they would go to every shard).
        if a.kind == Kind::Write
            && colocated
            && unsharded.is_empty()
            && (!a.insert || a.keyed.len() > 1)
        {
            return Plan::AllShards;
        }
        return refuse(
            match a.kind {
                Kind::Read if a.needs_merge => "a query without a shard key whose ORDER BY, LIMIT, DISTINCT, GROUP BY or aggregate would have to be merged across shards".to_owned(),
                Kind::Read => "a query without a shard key that joins a sharded table with other tables".to_owned(),
                _ => "a write without a shard key".to_owned(),
            },
            "Add the shard key to the WHERE clause, or name the shard with /* shardgate: shard=NAME */.",
        );
    }
    let shards = shards.unwrap_or_default();
    if !unsharded.is_empty() && (shards.len() != 1 || !shards.contains(&home)) {
        return refuse(
            format!(
                "table(s) {} live only on the home shard `{home}`, the sharded rows on {}",
                unsharded.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
                list(&shards)
            ),
            "Make the unsharded table a reference table (databases.<db>.reference_tables) or query it separately.",
        );
    }
    let mut v: Vec<String> = shards.into_iter().collect();
    match v.len() {
        0 => refuse(
            "no shard holds the key",
            "Check the shard map's ranges or list values.",
        ),
        1 => Plan::Shard(v.remove(0)),
        _ => {
            if a.kind == Kind::Read && a.needs_merge {
                refuse(
                    format!("keys on shards {} and an ORDER BY, LIMIT, DISTINCT, GROUP BY or aggregate to merge", v.join(", ")),
                    "Query one shard's keys at a time.",
                )
            } else {
                Plan::Shards(v)
            }
        }
    }
}

/// Whether a nested use of a sharded table (in a subquery, CTE, derived table, select
/// list) is not joined on its key, through uses of its map, to a row source of the
/// statement: run on several shards, it would see only each shard's part of its table.
fn unanchored(db: &DatabaseConfig, a: &Analysis) -> bool {
    let roots = components(db, a);
    (0..a.keyed.len()).any(|i| {
        a.keyed[i].nested && !(0..a.keyed.len()).any(|j| roots[j] == roots[i] && !a.keyed[j].nested)
    })
}

/// Whether a sharded table on the null-extended side of an outer join is not joined on
/// keys (directly or through others) to a table of its map on a preserved side: its
/// null-extended rows would come from every shard.
/// Also whether the sides of a FULL JOIN of sharded tables are not all joined on their
/// keys.
fn nullable_alone(db: &DatabaseConfig, a: &Analysis) -> bool {
    let roots = components(db, a);
    let apart = a.together.iter().any(|g| {
        g.iter()
            .any(|&i| i >= roots.len() || roots[i] != roots[g[0]])
    });
    apart
        || (0..a.keyed.len()).any(|i| {
            a.keyed[i].nullable
                && !(0..a.keyed.len()).any(|j| roots[j] == roots[i] && !a.keyed[j].nullable)
        })
}

/// For each use of a sharded table, the representative of its group of uses joined on
/// their keys within one map.
fn components(db: &DatabaseConfig, a: &Analysis) -> Vec<usize> {
    let n = a.keyed.len();
    let map_name = |i: usize| map_for(db, &a.keyed[i].table).map(|(m, _)| m.name.clone());
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for &(x, y) in &a.key_joins {
        if x >= n || y >= n {
            continue;
        }
        match (map_name(x), map_name(y)) {
            (Some(mx), Some(my)) if mx == my => {
                let (rx, ry) = (root(&mut parent, x), root(&mut parent, y));
                parent[rx] = ry;
            }
            _ => {}
        }
    }
    (0..n).map(|i| root(&mut parent, i)).collect()
}

/// The statement's uses of sharded tables with keys carried across the equalities of
/// their key columns (`o.customer_id = c.id AND c.id = 5` pins both), where the two tables
/// share a map (so one key's rows of both live on one shard); and whether all uses are
/// co-located: one use, or all joined on their keys within one map.
fn colocate(db: &DatabaseConfig, a: &Analysis) -> (Vec<crate::analyze::TableUse>, bool) {
    let mut uses = a.keyed.clone();
    let n = uses.len();
    let roots = components(db, a);
    for i in 0..n {
        if uses[i].keys.is_some() {
            continue;
        }
        if let Some(j) = (0..n).find(|&j| roots[j] == roots[i] && a.keyed[j].keys.is_some()) {
            uses[i].keys = a.keyed[j].keys.clone();
        }
    }
    let colocated = n == 1 || (n > 1 && roots.iter().all(|r| *r == roots[0]));
    (uses, colocated)
}

/// Plans with the statement's hints: `shard=` names the shard outright, `key=` gives the key
/// of the map of the statement's sharded table (or of the database's only map).
pub fn plan_with_hints(
    db: &DatabaseConfig,
    a: &Analysis,
    params: &[Option<String>],
    hints: &crate::hints::Hints,
) -> Plan {
    if let Some(s) = &hints.shard {
        return if db.shards.iter().any(|(n, _)| n == s) {
            Plan::Shard(s.clone())
        } else {
            refuse(
                format!("the hint names shard `{s}`, which the database does not have"),
                format!(
                    "Shards: {}.",
                    db.shards
                        .iter()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
    }
    if let Some(k) = &hints.key {
        let map = a
            .keyed
            .first()
            .and_then(|u| map_for(db, &u.table))
            .map(|(m, _)| m)
            .or_else(|| (db.maps.len() == 1).then(|| &db.maps[0]));
        let Some(map) = map else {
            return refuse(
                "a key hint needs a statement on a sharded table (or a database with one shard map)",
                "Name the shard instead: /* shardgate: shard=NAME */.",
            );
        };
        return match resolve(map, &[KeyExpr::Literal(k.clone())], &[]) {
            Resolved::Shards(mut s) if s.len() == 1 => Plan::Shard(s.remove(0)),
            Resolved::Bad(reason) => refuse(
                reason,
                format!("The key of map `{}` is {}.", map.name, type_names(map)),
            ),
            _ => refuse(
                "the key hint names no single shard",
                "Name the shard instead.",
            ),
        };
    }
    plan(db, a, params)
}

/// The shard of each row of a multi-row `INSERT ... VALUES`, in order; `None` when the
/// statement is not one or a row's key does not resolve (the plan says why).
pub fn row_shards(
    db: &DatabaseConfig,
    a: &Analysis,
    params: &[Option<String>],
) -> Option<Vec<String>> {
    if !a.insert_rows {
        return None;
    }
    let u = a.keyed.first()?;
    let (map, _) = map_for(db, &u.table)?;
    u.keys
        .as_ref()?
        .iter()
        .map(|alt| match resolve(map, alt, params) {
            Resolved::Shards(mut s) if s.len() == 1 => Some(s.remove(0)),
            _ => None,
        })
        .collect()
}

fn list(s: &BTreeSet<String>) -> String {
    s.iter()
        .map(|x| format!("`{x}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn type_names(m: &ShardMap) -> String {
    m.key_types
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

enum Resolved {
    Shards(Vec<String>),
    AtBind,
    Bad(String),
}

/// The shard(s) of one key alternative.
fn resolve(map: &ShardMap, alt: &[KeyExpr], params: &[Option<String>]) -> Resolved {
    // An array parameter spreads over its elements (single-column keys only).
    if let [KeyExpr::ParamArray(n)] = alt {
        let Some(Some(text)) = params.get(n - 1) else {
            return Resolved::AtBind;
        };
        let mut out = Vec::new();
        for item in parse_array(text) {
            let Some(item) = item else {
                return Resolved::Bad("the key array holds a NULL, which no shard holds".into());
            };
            match KeyValue::parse(map.key_types[0], &item) {
                Ok(k) => match shard_for_key(map, &[k]) {
                    Some(s) => out.push(s.to_owned()),
                    None => return Resolved::Bad(format!("no shard holds key {item}")),
                },
                Err(e) => return Resolved::Bad(e),
            }
        }
        return Resolved::Shards(out);
    }
    let mut key = Vec::with_capacity(alt.len());
    for (ty, e) in map.key_types.iter().zip(alt) {
        let text = match e {
            KeyExpr::Literal(t) => t.as_str(),
            KeyExpr::Param(n) => match params.get(n - 1) {
                Some(Some(t)) => t.as_str(),
                _ => return Resolved::AtBind,
            },
            KeyExpr::ParamArray(_) => return Resolved::Bad("= ANY over a multi-column key".into()),
        };
        match KeyValue::parse(*ty, text) {
            Ok(k) => key.push(k),
            Err(e) => return Resolved::Bad(e),
        }
    }
    match shard_for_key(map, &key) {
        Some(s) => Resolved::Shards(vec![s.to_owned()]),
        None => Resolved::Bad("no shard holds the key".into()),
    }
}

/// Whether a bound of a range map's key is a parameter not bound yet: the shards it prunes
/// to are known at Bind (a merge it makes unnecessary must not be refused before).
fn bounds_wait_for_bind(bounds: &[crate::analyze::Bound], params: &[Option<String>]) -> bool {
    use crate::analyze::Bound;
    bounds.iter().any(|b| match b {
        Bound::Above(KeyExpr::Param(n), _) | Bound::Below(KeyExpr::Param(n), _) => {
            !matches!(params.get(n - 1), Some(Some(_)))
        }
        _ => false,
    })
}

/// The shards of a range map that may hold keys within `bounds`; `None` when the map is not
/// a range map, a bound is not known (a parameter not bound yet) or nothing is pruned.
fn prune(
    map: &ShardMap,
    bounds: &[crate::analyze::Bound],
    params: &[Option<String>],
) -> Option<BTreeSet<String>> {
    use crate::analyze::Bound;
    use sgconfig::shardmap::Rule;
    let Rule::Range { ranges, default } = &map.rule else {
        return None;
    };
    if bounds.is_empty() || map.key_types.len() != 1 {
        return None;
    }
    // Only types PostgreSQL compares as the map does: text compares by collation, and a
    // timestamp bound without an offset depends on the session's TimeZone.
    use sgconfig::shardmap::KeyType;
    if !matches!(
        map.key_types[0],
        KeyType::Smallint | KeyType::Integer | KeyType::Bigint | KeyType::Date
    ) {
        return None;
    }
    let value = |e: &KeyExpr| -> Option<KeyValue> {
        let text = match e {
            KeyExpr::Literal(t) => t.as_str(),
            KeyExpr::Param(n) => params.get(n - 1)?.as_deref()?,
            KeyExpr::ParamArray(_) => return None,
        };
        KeyValue::parse(map.key_types[0], text).ok()
    };
    // The tightest bounds: keys above `lo` and below `hi`.
    let mut lo: Option<(KeyValue, bool)> = None;
    let mut hi: Option<(KeyValue, bool)> = None;
    for b in bounds {
        match b {
            Bound::Above(e, incl) => {
                let v = value(e)?;
                if lo.as_ref().is_none_or(|(l, _)| v > *l) {
                    lo = Some((v, *incl));
                }
            }
            Bound::Below(e, incl) => {
                let v = value(e)?;
                if hi.as_ref().is_none_or(|(h, _)| v < *h) {
                    hi = Some((v, *incl));
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for r in ranges {
        // The range holds [from, to).
        let below = matches!((&r.to, &lo), (Some(to), Some((l, _))) if to <= l);
        let above = matches!((&r.from, &hi), (Some(from), Some((h, incl))) if from > h || (!incl && from == h));
        if !below && !above {
            out.insert(r.shard.clone());
        }
    }
    // Keys outside every range may match too (conservatively: whenever there is a default).
    if let Some(d) = default {
        out.insert(d.clone());
    }
    (!out.is_empty()).then_some(out)
}

/// The elements of a one-dimensional array in text form: `{1,2,"a b",NULL}`. Double-quoted
/// elements are taken as written (a backslash escapes the next character), unquoted ones
/// without their surrounding white space; an unquoted `NULL` is `None`.
pub fn parse_array(text: &str) -> Vec<Option<String>> {
    let text = text.trim();
    let inner = text.strip_prefix('{').unwrap_or(text);
    let inner = inner.strip_suffix('}').unwrap_or(inner);
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return out;
    }
    let mut chars = inner.chars();
    loop {
        let mut item = String::new();
        let mut quoted = false;
        // Quotes or escapes make the element a value even when it reads NULL.
        let mut literal = false;
        // Length of `item` up to its last character that is not unquoted white space.
        let mut kept = 0;
        let mut more = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    quoted = !quoted;
                    literal = true;
                }
                '\\' => {
                    if let Some(n) = chars.next() {
                        item.push(n);
                    }
                    literal = true;
                    kept = item.len();
                }
                ',' if !quoted => {
                    more = true;
                    break;
                }
                c if !quoted && c.is_whitespace() => {
                    if kept > 0 {
                        item.push(c);
                    }
                }
                c => {
                    item.push(c);
                    kept = item.len();
                }
            }
        }
        item.truncate(kept);
        let null = !literal && item.eq_ignore_ascii_case("NULL");
        out.push((!null).then_some(item));
        if !more {
            return out;
        }
    }
}
#[cfg(test)]
mod tests;
