//! A statement's route in words: what `shardgate route` prints and the admin console's
//! `SHOW ROUTE` returns, line by line.

use sgconfig::DatabaseConfig;

/// The lines that describe where `sql` runs on database `name`, and whether it is routed
/// (`false`: refused or not understood). `params` are `$1`, `$2`, ... in text form.
pub fn explain(
    name: &str,
    db: &DatabaseConfig,
    sql: &str,
    params: &[Option<String>],
) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    macro_rules! say {
        ($($t:tt)*) => { out.push(format!($($t)*)) };
    }
    let keys = |t: &str| crate::plan::map_for(db, t).map(|(_, c)| c.to_vec());
    let hints = match crate::hints::parse_hints(sql) {
        Ok(h) => h,
        Err(e) => {
            say!("refused (42601): {e}");
            return (out, false);
        }
    };
    if hints.shard.is_none() && hints.key.is_none() {
        if let Some(Ok(c)) = crate::copy::parse_copy(sql) {
            let sharded = crate::plan::map_for(db, &c.table).is_some();
            if c.from
                && c.client_side
                && !c.query
                && !c.format.binary
                && (sharded || db.reference_tables.contains(&c.table))
            {
                say!("database: {name}");
                say!("statement: COPY FROM STDIN into {}", c.table);
                if sharded {
                    say!("route: every shard, each row to the shard of its key (a simple query; each shard in a transaction, all or nothing)");
                } else {
                    say!("route: every shard, every row (reference table)");
                }
                return (out, true);
            }
        }
    }
    let analysis = match crate::analyze::analyze(sql, &keys) {
        Ok(a) => a,
        Err(e) if hints.shard.is_some() => {
            say!("cannot parse ({e}); the hint decides");
            crate::analyze::Analysis::of_kind(crate::analyze::Kind::Session)
        }
        Err(e) => {
            say!("cannot parse: {e}");
            say!("hint: name the shard with /* shardgate: shard=NAME */");
            return (out, false);
        }
    };
    say!("database: {name}");
    say!("statement: {:?}", analysis.kind);
    if !analysis.tables.is_empty() {
        say!("tables: {}", analysis.tables.join(", "));
    }
    for u in &analysis.keyed {
        say!("keys of {}: {:?}", u.table, u.keys);
    }
    let plan = crate::plan::plan_with_hints(db, &analysis, params, &hints);
    let home = db.shards.first().map(|(n, _)| n).unwrap_or("");
    match plan {
        crate::plan::Plan::Shard(s) => say!("route: shard {s} (primary)"),
        crate::plan::Plan::Shards(s) => {
            say!(
                "route: shards {} (rows concatenated, counts summed)",
                s.join(", ")
            );
            if let Some(rows) = crate::plan::row_shards(db, &analysis, params) {
                for shard in &s {
                    let n = rows.iter().filter(|r| *r == shard).count();
                    say!("  {shard}: {n} of the INSERT's {} rows", rows.len());
                }
            }
        }
        crate::plan::Plan::AllShards => say!("route: every shard"),
        crate::plan::Plan::AnyShard => say!("route: any one shard (reference tables)"),
        crate::plan::Plan::Session => say!("route: the session's shard (home: {home})"),
        crate::plan::Plan::Pinned => say!(
            "route: the shard the session's transaction is pinned to; refused outside one (name the shard with /* shardgate: shard=NAME */)"
        ),
        crate::plan::Plan::AtBind => {
            say!("route: decided at Bind (a key comes from a parameter; give it with --param)")
        }
        crate::plan::Plan::Refuse { .. } if crate::plan::mergeable(&analysis, &hints) => {
            let keys = |t: &str| crate::plan::map_for(db, t).map(|(_, c)| c.to_vec());
            use crate::union::UnionRoute;
            match crate::union::route_union_all(db, sql, params, &keys) {
                None => {}
                Some(UnionRoute::Shard(s)) => {
                    say!("route: shard {s} (primary), every part of the UNION ALL");
                    return (out, true);
                }
                Some(UnionRoute::AtBind) => {
                    say!("route: decided at Bind (a key comes from a parameter; give it with --param)");
                    return (out, true);
                }
                Some(UnionRoute::Refuse { reason, hint }) => {
                    say!("refused (0A000): {reason}");
                    say!("hint: {hint}");
                    return (out, false);
                }
                Some(UnionRoute::Shards(shards, parts)) => {
                    say!(
                        "route: shards {}, each running its parts of the UNION ALL (rows concatenated)",
                        shards.join(", ")
                    );
                    for (s, p) in shards.iter().zip(parts) {
                        say!("  {s}: {}", p.text);
                    }
                    return (out, true);
                }
            }
            // The database's collation is asked of a shard at run time; "C" is assumed here.
            match crate::merge_plan::plan_merge(
                db,
                &analysis,
                sql,
                params,
                &crate::merge_plan::Collation::C,
            ) {
                Ok(p) => {
                    say!(
                        "route: shards {}, rows merged by the proxy (plan below, read bottom up)",
                        p.shards().join(", ")
                    );
                    for line in p.to_string().lines() {
                        say!("  {line}");
                    }
                }
                Err(r) => {
                    say!("refused (0A000): {}", r.reason);
                    say!("hint: {}", r.hint);
                    return (out, false);
                }
            }
        }
        crate::plan::Plan::Refuse { reason, hint } => {
            say!("refused (0A000): {reason}");
            say!("hint: {hint}");
            return (out, false);
        }
    }
    (out, true)
}
