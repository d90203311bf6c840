//! Which shard holds a key: the lookup behind every shard map.

use sgconfig::shardmap::{KeyType, KeyValue, Rule, ShardMap};

use crate::hash::{self, PARTITION_SEED};

/// The hash PostgreSQL's partitioning computes for one key column of type `ty`.
pub fn hash_key(ty: KeyType, key: &KeyValue) -> Option<u64> {
    Some(match (ty, key) {
        (KeyType::Smallint | KeyType::Integer, KeyValue::Int(v)) => {
            hash::hash_int4(i32::try_from(*v).ok()?, PARTITION_SEED)
        }
        (KeyType::Bigint, KeyValue::Int(v)) => hash::hash_int8(*v, PARTITION_SEED),
        (KeyType::Text | KeyType::Varchar, KeyValue::Text(s)) => hash::hash_text(s, PARTITION_SEED),
        (KeyType::Uuid, KeyValue::Uuid(u)) => hash::hash_uuid(u, PARTITION_SEED),
        (KeyType::Date, KeyValue::Date(d)) => hash::hash_int4(*d, PARTITION_SEED),
        (KeyType::Timestamptz, KeyValue::Timestamptz(t)) => hash::hash_int8(*t, PARTITION_SEED),
        _ => return None,
    })
}

/// The shard that holds `key` (one value per key column), or `None` when the key does not
/// fit the map's key types or no shard takes it.
pub fn shard_for_key<'m>(map: &'m ShardMap, key: &[KeyValue]) -> Option<&'m str> {
    if key.len() != map.key_types.len() {
        return None;
    }
    match &map.rule {
        Rule::Hash { shards } => {
            let mut hashes = Vec::with_capacity(key.len());
            for (ty, k) in map.key_types.iter().zip(key) {
                hashes.push(hash_key(*ty, k)?);
            }
            let r = hash::partition_remainder(hashes, shards.len() as u64);
            shards.get(r as usize).map(String::as_str)
        }
        Rule::Range { ranges, default } => {
            let k = &key[0];
            // The last range starting at or below the key (unbounded starts sort first).
            let idx = ranges.partition_point(|r| r.from.as_ref().is_none_or(|f| f <= k));
            let hit = idx
                .checked_sub(1)
                .map(|i| &ranges[i])
                .filter(|r| r.to.as_ref().is_none_or(|t| k < t));
            hit.map(|r| r.shard.as_str()).or(default.as_deref())
        }
        Rule::List { values, default } => values
            .get(&key[0])
            .map(String::as_str)
            .or(default.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sgconfig::shardmap::load_shard_map;
    use std::path::Path;

    fn map(text: &str) -> ShardMap {
        load_shard_map(Path::new("m.yaml"), text, &["s0", "s1", "s2"])
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    const RANGE: &str = "name: r\ntype: range\nkey_type: bigint\nranges:\n  - { from: null, to: 100, shard: s0 }\n  - { from: 100, to: 1000, shard: s1 }\n  - { from: 1000, to: null, shard: s2 }\ntables: [{ table: t, column: id }]\n";
    const GAPPY: &str = "name: g\ntype: range\nkey_type: integer\nranges:\n  - { from: 0, to: 10, shard: s0 }\n  - { from: 20, to: 30, shard: s1 }\ndefault: s2\ntables: [{ table: t, column: id }]\n";
    const HASH: &str = "name: h\ntype: hash\nkey_type: bigint\npartitions: 8\nassign: { s0: [0, 1, 2, 3], s1: [4, 5, 6, 7] }\ntables: [{ table: t, column: id }]\n";
    const LIST: &str = "name: l\ntype: list\nkey_type: text\nvalues: { s0: [us, ca], s1: [de, fr] }\ndefault: s2\ntables: [{ table: t, column: country }]\n";

    #[test]
    fn range_bounds_are_from_inclusive_to_exclusive() {
        let m = map(RANGE);
        let at = |v: i64| shard_for_key(&m, &[KeyValue::Int(v)]);
        assert_eq!(at(i64::MIN), Some("s0"));
        assert_eq!(at(99), Some("s0"));
        assert_eq!(at(100), Some("s1"));
        assert_eq!(at(999), Some("s1"));
        assert_eq!(at(1000), Some("s2"));
        assert_eq!(at(i64::MAX), Some("s2"));
        let g = map(GAPPY);
        let at = |v: i64| shard_for_key(&g, &[KeyValue::Int(v)]);
        assert_eq!(
            (at(-1), at(0), at(9), at(10), at(19), at(20), at(29), at(30)),
            (
                Some("s2"),
                Some("s0"),
                Some("s0"),
                Some("s2"),
                Some("s2"),
                Some("s1"),
                Some("s1"),
                Some("s2")
            )
        );
    }

    #[test]
    fn list_values_and_default() {
        let m = map(LIST);
        let at = |v: &str| shard_for_key(&m, &[KeyValue::Text(v.into())]);
        assert_eq!(
            (at("us"), at("fr"), at("jp")),
            (Some("s0"), Some("s1"), Some("s2"))
        );
    }

    #[test]
    fn keys_of_the_wrong_shape_find_no_shard() {
        let m = map(HASH);
        assert_eq!(shard_for_key(&m, &[KeyValue::Text("1".into())]), None);
        assert_eq!(shard_for_key(&m, &[]), None);
    }

    proptest! {
        #[test]
        fn every_key_has_exactly_one_shard(v in any::<i64>()) {
            let r = map(RANGE);
            let s = shard_for_key(&r, &[KeyValue::Int(v)]).unwrap();
            let expected = if v < 100 { "s0" } else if v < 1000 { "s1" } else { "s2" };
            prop_assert_eq!(s, expected);
            let h = map(HASH);
            let s = shard_for_key(&h, &[KeyValue::Int(v)]).unwrap();
            let rem = crate::hash::partition_remainder([crate::hash::hash_int8(v, PARTITION_SEED)], 8);
            prop_assert_eq!(s, if rem < 4 { "s0" } else { "s1" });
        }

        #[test]
        fn range_lookup_matches_a_linear_scan(v in -50i64..50, cuts in proptest::collection::btree_set(-40i64..40, 1..6)) {
            // Contiguous ranges over the cuts, unbounded at both ends, shards in turn.
            let cuts: Vec<i64> = cuts.into_iter().collect();
            let mut yaml = String::from("name: p\ntype: range\nkey_type: bigint\nranges:\n");
            let mut bounds = vec![None];
            bounds.extend(cuts.iter().map(|c| Some(*c)));
            bounds.push(None);
            for (i, w) in bounds.windows(2).enumerate() {
                let b = |x: Option<i64>| x.map_or("null".to_string(), |v| v.to_string());
                yaml.push_str(&format!("  - {{ from: {}, to: {}, shard: s{} }}\n", b(w[0]), b(w[1]), i % 3));
            }
            yaml.push_str("tables: [{ table: t, column: id }]\n");
            let m = map(&yaml);
            let linear = bounds.windows(2).enumerate().find(|(_, w)| {
                w[0].is_none_or(|f| f <= v) && w[1].is_none_or(|t| v < t)
            }).map(|(i, _)| format!("s{}", i % 3));
            prop_assert_eq!(shard_for_key(&m, &[KeyValue::Int(v)]).map(str::to_owned), linear);
        }
    }
}
