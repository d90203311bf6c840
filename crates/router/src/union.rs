//! `q1 UNION ALL q2 UNION ALL ...` over shards: each part is routed on its own, and since a
//! UNION ALL is the concatenation of its parts, each shard runs the whole statement with only
//! the parts it owns live. The parts it does not own stay in the statement as
//! `(SELECT * FROM (part) AS sg_skip LIMIT 0)`, so that every shard resolves the union's
//! column types from the same parts, as one PostgreSQL would.

use sgconfig::DatabaseConfig;
use sqlparser::ast::{SetExpr, SetOperator, SetQuantifier, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::analyze::{analyze, Kind};
use crate::plan::{plan, Plan};
use crate::rewrite::Part;

/// How a UNION ALL routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnionRoute {
    /// Every part runs on this one shard: the statement as written.
    Shard(String),
    /// Several shards, each its own statement (in the database's shard order); rows are
    /// concatenated.
    Shards(Vec<String>, Vec<Part>),
    /// A part's key is a parameter not bound yet.
    AtBind,
    /// A part cannot run on the shards the router can name.
    Refuse { reason: String, hint: String },
}

/// The route of `sql` when it is a top-level UNION ALL of parts (no ORDER BY, LIMIT, WITH or
/// locking clause around them); `None` for any other statement.
pub fn route_union_all(
    db: &DatabaseConfig,
    sql: &str,
    params: &[Option<String>],
    key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Option<UnionRoute> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Query(q) = statements.remove(0) else {
        return None;
    };
    if q.with.is_some()
        || q.order_by.is_some()
        || q.limit_clause.is_some()
        || q.fetch.is_some()
        || !q.locks.is_empty()
    {
        return None;
    }
    let mut parts: Vec<&SetExpr> = Vec::new();
    if !flatten(&q.body, &mut parts) || parts.len() < 2 {
        return None;
    }
    let home = db.shards.first().map(|(n, _)| n.to_owned())?;
    let all: Vec<String> = db.shards.iter().map(|(n, _)| n.to_owned()).collect();
    let mut owners: Vec<Vec<String>> = Vec::with_capacity(parts.len());
    for part in &parts {
        let text = part.to_string();
        let a = match analyze(&text, key_columns) {
            Ok(a) => a,
            Err(e) => {
                return Some(UnionRoute::Refuse {
                    reason: format!("a part of the UNION ALL does not parse ({e})"),
                    hint: "Name the shard: /* shardgate: shard=NAME */.".into(),
                })
            }
        };
        if a.kind != Kind::Read {
            return None;
        }
        let shards = match plan(db, &a, params) {
            Plan::Shard(s) => vec![s],
            Plan::AnyShard | Plan::Session => vec![home.clone()],
            // Concatenation of the part's rows is its answer (the plan refuses otherwise).
            Plan::Shards(s) => s,
            Plan::AllShards => all.clone(),
            Plan::AtBind => return Some(UnionRoute::AtBind),
            Plan::Pinned => {
                return Some(UnionRoute::Refuse {
                    reason: "a part of the UNION ALL runs code the router cannot see into".into(),
                    hint: "Name the shard: /* shardgate: shard=NAME */.".into(),
                })
            }
            Plan::Refuse { reason, hint } => {
                return Some(UnionRoute::Refuse {
                    reason: format!("a part of the UNION ALL: {reason}"),
                    hint,
                })
            }
        };
        owners.push(shards);
    }
    let used: Vec<String> = all
        .iter()
        .filter(|s| owners.iter().any(|o| o.contains(s)))
        .cloned()
        .collect();
    if let [one] = used.as_slice() {
        return Some(UnionRoute::Shard(one.clone()));
    }
    let max_param = max_param(sql);
    let texts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    let statements = used
        .iter()
        .map(|shard| {
            let text = texts
                .iter()
                .zip(&owners)
                .map(|(t, o)| {
                    if o.contains(shard) {
                        format!("({t})")
                    } else {
                        format!("(SELECT * FROM ({t}) AS sg_skip LIMIT 0)")
                    }
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            Part {
                text,
                params: (1..=max_param).collect(),
            }
        })
        .collect();
    Some(UnionRoute::Shards(used, statements))
}

/// The parts of a tree of UNION ALLs; false when another set operation is in it.
fn flatten<'q>(e: &'q SetExpr, out: &mut Vec<&'q SetExpr>) -> bool {
    match e {
        SetExpr::SetOperation {
            op: SetOperator::Union,
            set_quantifier: SetQuantifier::All,
            left,
            right,
        } => flatten(left, out) && flatten(right, out),
        SetExpr::SetOperation { .. } => false,
        SetExpr::Query(q)
            if q.with.is_none()
                && q.order_by.is_none()
                && q.limit_clause.is_none()
                && q.fetch.is_none()
                && matches!(q.body.as_ref(), SetExpr::SetOperation { .. }) =>
        {
            flatten(&q.body, out)
        }
        other => {
            out.push(other);
            true
        }
    }
}

/// The highest `$n` of the statement that a Bind can carry.
fn max_param(sql: &str) -> usize {
    crate::lexer::Lexer::new(sql)
        .filter_map(|t| match t {
            crate::lexer::Token::Param(p) => p[1..].parse().ok(),
            _ => None,
        })
        .filter(|&n| n <= crate::lexer::MAX_PARAM)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> DatabaseConfig {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sg-union-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("m.yaml"),
            "name: m\ntype: hash\nkey_type: bigint\npartitions: 2\nassign: { s0: [0], s1: [1] }\ntables: [{ table: t, column: id }]\n",
        )
        .unwrap();
        let yaml = "users: [{ name: u, password: p }]\ndatabases:\n  app:\n    shard_maps: [m.yaml]\n    reference_tables: [r]\n    shards:\n      s0: { primary: \"postgres://h/a\" }\n      s1: { primary: \"postgres://h/b\" }\n";
        let c = sgconfig::load_str(&dir.join("c.yaml"), yaml).unwrap();
        c.databases["app"].clone()
    }

    fn keys(t: &str) -> Option<Vec<String>> {
        (t == "t").then(|| vec!["id".to_owned()])
    }

    /// Two keys on the two shards (1 and 2 hash to different remainders of 2).
    fn two_shards() -> (String, String) {
        let d = db();
        let map = &d.maps[0];
        let shard = |k: i64| {
            crate::sharding::shard_for_key(
                map,
                &[sgconfig::KeyValue::parse(map.key_types[0], &k.to_string()).unwrap()],
            )
            .unwrap()
            .to_owned()
        };
        let a = (1..100).find(|k| shard(*k) == "s0").unwrap();
        let b = (1..100).find(|k| shard(*k) == "s1").unwrap();
        (a.to_string(), b.to_string())
    }

    #[test]
    fn parts_on_two_shards_each_run_where_they_belong() {
        let (a, b) = two_shards();
        let sql =
            format!("SELECT id FROM t WHERE id = {a} UNION ALL SELECT id FROM t WHERE id = {b}");
        let Some(UnionRoute::Shards(shards, parts)) = route_union_all(&db(), &sql, &[], &keys)
        else {
            panic!("not split");
        };
        assert_eq!(shards, ["s0", "s1"]);
        assert_eq!(
            parts[0].text,
            format!("(SELECT id FROM t WHERE id = {a}) UNION ALL (SELECT * FROM (SELECT id FROM t WHERE id = {b}) AS sg_skip LIMIT 0)")
        );
        assert!(parts[1]
            .text
            .starts_with("(SELECT * FROM (SELECT id FROM t WHERE id = "));
    }

    #[test]
    fn a_parameter_no_bind_can_carry_sizes_no_part() {
        let (a, b) = two_shards();
        let sql = format!(
            "SELECT id FROM t WHERE id = {a} AND $99999999999 = 1 UNION ALL SELECT id FROM t WHERE id = {b}"
        );
        let Some(UnionRoute::Shards(_, parts)) = route_union_all(&db(), &sql, &[], &keys) else {
            panic!("not split");
        };
        assert!(parts.iter().all(|p| p.params.is_empty()));
    }

    #[test]
    fn parts_on_one_shard_run_as_written_and_others_are_not_split() {
        let (a, _) = two_shards();
        let sql = format!("SELECT id FROM t WHERE id = {a} UNION ALL SELECT code FROM r");
        assert_eq!(
            route_union_all(&db(), &sql, &[], &keys),
            Some(UnionRoute::Shard("s0".into()))
        );
        assert_eq!(
            route_union_all(&db(), "SELECT id FROM t UNION SELECT id FROM t", &[], &keys),
            None
        );
        assert_eq!(
            route_union_all(
                &db(),
                "SELECT id FROM t UNION ALL SELECT id FROM t ORDER BY 1",
                &[],
                &keys
            ),
            None
        );
        assert!(matches!(
            route_union_all(
                &db(),
                "SELECT count(*) FROM t UNION ALL SELECT 1",
                &[],
                &keys
            ),
            Some(UnionRoute::Refuse { .. })
        ));
        assert_eq!(
            route_union_all(
                &db(),
                "SELECT id FROM t WHERE id = $1 UNION ALL SELECT 1",
                &[],
                &keys
            ),
            Some(UnionRoute::AtBind)
        );
    }
}
