//! What the fuzz targets share: a small fixed database to route against (a hash map, a
//! range map, a list map, a two-column hash map and a reference table over three shards),
//! and a way to cut one fuzz input into several byte strings.

use std::path::Path;
use std::sync::OnceLock;

use sgconfig::shardmap::load_shard_map;
use sgconfig::DatabaseConfig;

/// The shards of [`database`], in order.
pub const SHARDS: [&str; 3] = ["s0", "s1", "s2"];

const CONFIG: &str = "\
users: [{ name: u, auth: trust }]
databases:
  app:
    reference_tables: [countries]
    shards:
      s0: { primary: \"postgres://h/d0\" }
      s1: { primary: \"postgres://h/d1\" }
      s2: { primary: \"postgres://h/d2\" }
";

/// Shard maps of [`database`], as their files would hold them.
pub const MAPS: [&str; 4] = [
    "name: m\ntype: hash\nkey_type: bigint\npartitions: 4\nassign: { s0: [0], s1: [1, 2], s2: [3] }\ntables:\n  - { table: orders, column: customer_id }\n  - { table: payments, column: customer_id }\n",
    "name: r\ntype: range\nkey_type: date\nranges:\n  - { from: null, to: 2026-01-01, shard: s0 }\n  - { from: 2026-01-01, to: 2026-07-01, shard: s1 }\n  - { from: 2026-07-01, to: null, shard: s2 }\ntables:\n  - { table: events, column: day }\n",
    "name: l\ntype: list\nkey_type: text\nvalues:\n  s0: [us, ca]\n  s1: [de, fr]\ndefault: s2\ntables:\n  - { table: customers, column: country }\n",
    "name: p\ntype: hash\nkey_type: [integer, text]\npartitions: 3\nassign: { s0: [0], s1: [1], s2: [2] }\ntables:\n  - { table: pairs, columns: [a, b] }\n",
];

/// A database with no shard maps yet (`maps` empty), over [`SHARDS`].
pub fn bare_database() -> DatabaseConfig {
    let c = sgconfig::load_str(Path::new("fuzz/shardgate.yaml"), CONFIG)
        .expect("the fixed fuzz config loads");
    c.databases["app"].clone()
}

/// The fixed database the routing targets plan against.
pub fn database() -> &'static DatabaseConfig {
    static DB: OnceLock<DatabaseConfig> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = bare_database();
        for (i, text) in MAPS.iter().enumerate() {
            let file = format!("fuzz/map{i}.yaml");
            let map = load_shard_map(Path::new(&file), text, &SHARDS)
                .expect("the fixed fuzz shard maps load");
            db.maps.push(map);
        }
        db
    })
}

/// The key columns of a mapped table of `db`, as the proxy gives them to the analyser.
pub fn key_columns(db: &DatabaseConfig, table: &str) -> Option<Vec<String>> {
    router::plan::map_for(db, table).map(|(_, c)| c.to_vec())
}

/// `data` cut at NUL bytes into at most `n` parts (the last keeps any further NULs).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0).collect()
}
