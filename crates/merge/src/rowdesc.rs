//! The client's RowDescription, made from the shards': helper columns removed, aggregate
//! columns given the type PostgreSQL gives the aggregate (avg is numeric where the shards
//! ran a sum), every column in the format the client asked for.

use bytes::{BufMut, BytesMut};

use crate::error::MergeError;
use crate::plan::{AggKind, Col, MergePlan, Node};
use crate::types::{oid, Format};

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

/// Reads a RowDescription body (without tag and length).
pub fn parse(body: &[u8]) -> Result<Vec<Field>, MergeError> {
    let bad = || MergeError::BadData("malformed RowDescription from a shard".into());
    let mut at = 2;
    let n = i16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().expect("2 bytes"));
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = body[at..].iter().position(|b| *b == 0).ok_or_else(bad)? + at;
        let name = body[at..end].to_vec();
        at = end + 1;
        let f = body.get(at..at + 18).ok_or_else(bad)?;
        out.push(Field {
            name,
            table_oid: u32::from_be_bytes(f[0..4].try_into().expect("4")),
            column: i16::from_be_bytes(f[4..6].try_into().expect("2")),
            type_oid: u32::from_be_bytes(f[6..10].try_into().expect("4")),
            type_len: i16::from_be_bytes(f[10..12].try_into().expect("2")),
            type_mod: i32::from_be_bytes(f[12..16].try_into().expect("4")),
            format: i16::from_be_bytes(f[16..18].try_into().expect("2")),
        });
        at += 18;
    }
    if at != body.len() {
        return Err(bad());
    }
    Ok(out)
}

/// Writes a RowDescription body.
pub fn write(fields: &[Field], out: &mut BytesMut) {
    out.put_i16(fields.len() as i16);
    for f in fields {
        out.put_slice(&f.name);
        out.put_u8(0);
        out.put_u32(f.table_oid);
        out.put_i16(f.column);
        out.put_u32(f.type_oid);
        out.put_i16(f.type_len);
        out.put_i32(f.type_mod);
        out.put_i16(f.format);
    }
}

/// The client's RowDescription body from the shards' (any shard's: they agree), for a
/// client that asked for `client_formats` (one per visible column).
pub fn client_row_description(
    plan: &MergePlan,
    shard_body: &[u8],
    client_formats: &[Format],
) -> Result<BytesMut, MergeError> {
    let mut fields = parse(shard_body)?;
    let visible = fields.len().checked_sub(plan.helpers).ok_or_else(|| {
        MergeError::Usage(
            "the shards' RowDescription has fewer columns than the plan's helpers".into(),
        )
    })?;
    if client_formats.len() != visible {
        return Err(MergeError::Usage(format!(
            "{} client formats for {visible} columns",
            client_formats.len()
        )));
    }
    let index = |c: Col| match c {
        Col::Visible(i) => i,
        Col::Helper(i) => visible + i,
    };
    let mut node = Some(&plan.root);
    while let Some(n) = node {
        if let Node::Aggregate { aggs, .. } = n {
            for a in aggs {
                let Some(f) = fields.get_mut(index(a.column)) else {
                    continue;
                };
                let (t, len) = match a.kind {
                    AggKind::Count => (oid::INT8, 8),
                    AggKind::Sum if f.type_oid == oid::INT8 => (oid::INT8, 8),
                    AggKind::Sum if f.type_oid == oid::NUMERIC => (oid::NUMERIC, -1),
                    AggKind::Avg => (oid::NUMERIC, -1),
                    AggKind::BoolAnd | AggKind::BoolOr => (oid::BOOL, 1),
                    // min/max keep their argument's type; other sums are refused by the
                    // executor.
                    _ => continue,
                };
                f.type_oid = t;
                f.type_len = len;
                f.type_mod = -1;
                f.table_oid = 0;
                f.column = 0;
            }
        }
        node = n.input();
    }
    fields.truncate(visible);
    for (f, fmt) in fields.iter_mut().zip(client_formats) {
        f.format = fmt.code();
    }
    let mut out = BytesMut::new();
    write(&fields, &mut out);
    Ok(out)
}

/// The shards' column types, in order (for [`crate::Executor::new`]).
pub fn column_types(shard_body: &[u8]) -> Result<Vec<u32>, MergeError> {
    Ok(parse(shard_body)?.into_iter().map(|f| f.type_oid).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Agg;

    fn field(name: &str, t: u32, len: i16) -> Field {
        Field {
            name: name.as_bytes().to_vec(),
            table_oid: 0,
            column: 0,
            type_oid: t,
            type_len: len,
            type_mod: -1,
            format: 0,
        }
    }

    #[test]
    fn helpers_are_dropped_and_avg_becomes_numeric() {
        // SELECT g, avg(x) ... → shards: SELECT g, sum(x) AS avg, ..., count(x), g
        let plan = MergePlan {
            root: Node::Project {
                input: Box::new(Node::Aggregate {
                    input: Box::new(Node::Scatter {
                        shards: vec!["a".into(), "b".into()],
                        sql: String::new(),
                    }),
                    group: vec![Col::Helper(1)],
                    aggs: vec![Agg {
                        kind: AggKind::Avg,
                        column: Col::Visible(1),
                        count: Some(Col::Helper(0)),
                        compare: None,
                        bytewise_text: true,
                    }],
                }),
                helpers: 2,
            },
            helpers: 2,
            visible: Some(2),
        };
        let mut shard = BytesMut::new();
        write(
            &[
                Field {
                    table_oid: 16384,
                    column: 2,
                    ..field("g", oid::TEXT, -1)
                },
                field("avg", oid::INT8, 8),
                field("count", oid::INT8, 8),
                field("g", oid::TEXT, -1),
            ],
            &mut shard,
        );
        let out = client_row_description(&plan, &shard, &[Format::Text, Format::Binary]).unwrap();
        let fields = parse(&out).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].table_oid, 16384);
        assert_eq!(fields[0].format, 0);
        assert_eq!(
            (fields[1].type_oid, fields[1].type_len, fields[1].format),
            (oid::NUMERIC, -1, 1)
        );
        assert_eq!(
            column_types(&shard).unwrap(),
            [oid::TEXT, oid::INT8, oid::INT8, oid::TEXT]
        );
        assert!(parse(b"\x00\x01abc").is_err());
    }
}
