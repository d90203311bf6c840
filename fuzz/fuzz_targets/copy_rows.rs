//! COPY FROM STDIN: a COPY statement through `parse_copy`, whose format (text or CSV,
//! delimiter, quote, escape, NULL marker, header) and column list set up a `RowSplitter`;
//! the data is fed in chunks of sizes the input chooses, and each row's key fields are
//! parsed and looked up in a map of the fixed database, as the proxy's COPY does. The rows
//! (bytes, keys, header flag) and the outcome must be the same however the data is cut:
//! the splitter is also fed the whole data at once and compared.
//!
//! Input: the COPY statement, a NUL, one byte of chunk sizes, then the data. A statement
//! that does not parse falls back to a format made from that byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::copy::{parse_copy, CopyFormat, Row, RowSplitter};
use sgconfig::shardmap::KeyValue;
use shardgate_fuzz::database;

type Rows = Vec<(Vec<u8>, Vec<Option<String>>, bool)>;

/// Feeds `data` in chunks (sizes cycling through `sizes`) and collects the rows.
fn split(
    format: &CopyFormat,
    key_fields: &[usize],
    data: &[u8],
    sizes: &[usize],
) -> (Rows, Result<u64, String>) {
    let mut rows: Rows = Vec::new();
    let mut s = RowSplitter::new(format.clone(), key_fields.to_vec());
    let mut collect = |r: Row<'_>| -> Result<(), String> {
        rows.push((r.bytes.to_vec(), r.keys.clone(), r.header));
        Ok(())
    };
    let mut rest = data;
    let mut i = 0;
    let result = (|| {
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            i += 1;
            s.feed(&rest[..n], &mut collect)?;
            rest = &rest[n..];
        }
        s.finish(&mut collect)?;
        Ok(s.rows())
    })();
    (rows, result)
}

fuzz_target!(|data: &[u8]| {
    let (stmt, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let [sizes, data @ ..] = rest else {
        return;
    };
    let stmt = String::from_utf8_lossy(stmt);
    let (format, columns) = match parse_copy(&stmt) {
        Some(Ok(c)) if !c.format.binary => (c.format, c.columns),
        Some(_) => return,
        None => {
            let f = CopyFormat {
                csv: sizes & 1 != 0,
                header: sizes & 2 != 0,
                ..CopyFormat::default()
            };
            let f = if f.csv {
                CopyFormat {
                    delimiter: b',',
                    null: Vec::new(),
                    ..f
                }
            } else {
                f
            };
            (f, Vec::new())
        }
    };
    // The key column among the listed ones, as the proxy finds it (first field otherwise).
    let key_fields: Vec<usize> = match columns
        .iter()
        .position(|c| c == "customer_id" || c == "day")
    {
        Some(p) => vec![p],
        None if columns.is_empty() => vec![0],
        None => vec![columns.len() - 1],
    };
    let sizes: Vec<usize> = [sizes & 0x0f, sizes >> 4, 1]
        .iter()
        .map(|&n| usize::from(n) + 1)
        .collect();
    let whole = split(&format, &key_fields, data, &[data.len().max(1)]);
    let chunked = split(&format, &key_fields, data, &sizes);
    assert_eq!(whole, chunked, "cutting the data changed its rows");

    // Each row to its shard, by the hash map's bigint key and the range map's date key.
    let db = database();
    for (_, keys, header) in &whole.0 {
        if *header {
            continue;
        }
        for map in &db.maps[..2] {
            let Some(Some(text)) = keys.first() else {
                continue;
            };
            if let Ok(k) = KeyValue::parse(map.key_types[0], text) {
                let _ = router::sharding::shard_for_key(map, &[k]);
            }
        }
    }
});
