//! Routing hints in comments (`/* shardgate: shard=s1, key=42, role=primary */`): any text
//! through `parse_hints`, and what it gives through `plan_with_hints` against the fixed
//! database, for a statement on no table and for one on each map's table (a key hint is
//! parsed as that map's key type). Text without `shardgate:` has no hints.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::analyze::{analyze, Analysis, Kind};
use router::hints::{parse_hints, Hints};
use router::plan::plan_with_hints;
use shardgate_fuzz::{database, key_columns};

/// Statements whose first sharded table picks the map a key hint is read by.
const ON: [&str; 4] = [
    "SELECT * FROM orders",
    "SELECT * FROM events",
    "SELECT * FROM customers",
    "SELECT * FROM pairs",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(hints) = parse_hints(&text) else {
        return;
    };
    if !text.contains("shardgate:") {
        assert_eq!(hints, Hints::default(), "hints without the mark");
    }
    let db = database();
    let keys = |t: &str| key_columns(db, t);
    let _ = plan_with_hints(db, &Analysis::of_kind(Kind::Read), &[], &hints);
    for sql in ON {
        let a = analyze(sql, &keys).expect("a fixed statement analyses");
        let _ = plan_with_hints(db, &a, &[], &hints);
    }
});
