//! Configuration as YAML: any text through `sgconfig::load_str` (parse, validation with
//! located problems), and a shard map through `load_shard_map` for the three shards of the
//! fixed database. A map that loads is put in that database and used: its keys looked up
//! (`KeyValue::parse` of the input's key texts by the map's key types, `shard_for_key`),
//! its bounds and values printed, and a statement on its tables analysed and planned.
//!
//! Input: the config text, a NUL, the shard map text, a NUL, then key texts separated by
//! NULs.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use router::analyze::analyze;
use router::plan::plan;
use sgconfig::shardmap::{load_shard_map, KeyValue, Rule};
use shardgate_fuzz::{bare_database, key_columns, parts, SHARDS};

fuzz_target!(|data: &[u8]| {
    let p = parts(data, 4);
    let config = String::from_utf8_lossy(p[0]);
    if let Err(e) = sgconfig::load_str(Path::new("fuzz/shardgate.yaml"), &config) {
        let _ = e.to_string();
    }
    let Some(map_text) = p.get(1) else {
        return;
    };
    let map_text = String::from_utf8_lossy(map_text);
    let map = match load_shard_map(Path::new("fuzz/map.yaml"), &map_text, &SHARDS) {
        Ok(m) => m,
        Err(problems) => {
            for pr in problems {
                let _ = pr.to_string();
            }
            return;
        }
    };
    let _ = map.shards();
    match &map.rule {
        Rule::Hash { shards } => assert!(!shards.is_empty(), "a hash map without partitions"),
        Rule::Range { ranges, .. } => {
            for r in ranges {
                let _ = (
                    r.from.as_ref().map(|v| v.to_string()),
                    r.to.as_ref().map(|v| v.to_string()),
                );
            }
        }
        Rule::List { values, .. } => {
            for v in values.keys() {
                let _ = v.to_string();
            }
        }
    }
    let texts: Vec<String> = p
        .get(2)
        .map(|k| {
            k.split(|&b| b == 0)
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut key = Vec::new();
    for (ty, t) in map
        .key_types
        .iter()
        .zip(texts.iter().chain(std::iter::repeat(&"1".to_owned())))
    {
        match KeyValue::parse(*ty, t) {
            Ok(v) => {
                let _ = v.to_string();
                key.push(v);
            }
            Err(_) => return,
        }
    }
    if let Some(shard) = router::sharding::shard_for_key(&map, &key) {
        assert!(
            SHARDS.contains(&shard),
            "a key went to shard `{shard}`, not in the database"
        );
    }

    // The map in a database, with a statement on its first table keyed by the key texts.
    let Some(table) = map.tables.first().cloned() else {
        return;
    };
    let mut db = bare_database();
    db.maps.push(map);
    let keys = |t: &str| key_columns(&db, t);
    let cond: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("\"{}\" = ${}", c.replace('"', "\"\""), i + 1))
        .collect();
    let sql = format!(
        "SELECT * FROM \"{}\" WHERE {}",
        table.table.replace('"', "\"\""),
        cond.join(" AND ")
    );
    let params: Vec<Option<String>> = texts.iter().cloned().map(Some).collect();
    if let Ok(a) = analyze(&sql, &keys) {
        let _ = plan(&db, &a, &params);
    }
});
