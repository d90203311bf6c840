//! The executor against the obvious answer: rows partitioned at random over k shards,
//! each shard's part prepared as PostgreSQL would (sorted, or partially aggregated), merged
//! by the executor, and compared with the same operation over all the rows at once.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use merge::numeric::Numeric;
use merge::plan::{Agg, AggKind, CmpOp, Col, Literal, MergePlan, Node, Predicate, SortKey};
use merge::types::oid;
use merge::{Column, Executor, Format, MergeError, Want};
use proptest::prelude::*;

type Val = Option<Vec<u8>>;

/// Rows by group: (x, b) of each.
type Groups = BTreeMap<i64, Vec<(Option<i64>, Option<bool>)>>;

fn body(values: &[Val]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.freeze()
}

/// The DataRow frames back into rows.
fn rows_of(mut out: &[u8]) -> Vec<Vec<Val>> {
    let mut rows = Vec::new();
    while !out.is_empty() {
        assert_eq!(out[0], b'D');
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        let frame = &out[5..1 + len];
        let n = i16::from_be_bytes(frame[..2].try_into().unwrap());
        let mut at = 2;
        let mut row = Vec::new();
        for _ in 0..n {
            let l = i32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
            at += 4;
            if l < 0 {
                row.push(None);
            } else {
                row.push(Some(frame[at..at + l as usize].to_vec()));
                at += l as usize;
            }
        }
        rows.push(row);
        out = &out[1 + len..];
    }
    rows
}

/// Drives the executor over the shards' rows, as the proxy would.
fn run(ex: &mut Executor, shards: Vec<Vec<Vec<Val>>>) -> Result<Vec<Vec<Val>>, MergeError> {
    let mut iters: Vec<_> = shards.into_iter().map(|s| s.into_iter()).collect();
    let mut ended = vec![false; iters.len()];
    let mut out = BytesMut::new();
    loop {
        let s = match ex.wants() {
            Want::Done => break,
            Want::Row(s) => s,
            Want::Any => (0..iters.len()).find(|s| !ended[*s]).unwrap(),
        };
        match iters[s].next() {
            Some(r) => ex.push(s, Some(body(&r)))?,
            None => {
                ended[s] = true;
                ex.push(s, None)?
            }
        }
        out.extend_from_slice(&ex.take_output());
    }
    ex.finish()?;
    out.extend_from_slice(&ex.take_output());
    let rows = rows_of(&out);
    assert_eq!(rows.len() as u64, ex.rows_sent());
    Ok(rows)
}

fn scatter(k: usize) -> Box<Node> {
    Box::new(Node::Scatter {
        shards: (0..k).map(|i| format!("s{i}")).collect(),
        sql: "SELECT ...".into(),
    })
}

fn int4(v: i32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn text_int(v: i64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn int_of(v: &[u8]) -> i64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// Rows of (key int4 binary, nullable; payload text), split over k shards by `assign`.
fn partition<T: Clone>(rows: &[T], assign: &[usize], k: usize) -> Vec<Vec<T>> {
    let mut parts = vec![Vec::new(); k];
    for (r, a) in rows.iter().zip(assign) {
        parts[a % k].push(r.clone());
    }
    parts
}

fn key_order(
    a: &Option<i32>,
    b: &Option<i32>,
    desc: bool,
    nulls_first: bool,
) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (None, None) => Equal,
        (None, _) => {
            if nulls_first {
                Less
            } else {
                Greater
            }
        }
        (_, None) => {
            if nulls_first {
                Greater
            } else {
                Less
            }
        }
        (Some(x), Some(y)) => {
            if desc {
                y.cmp(x)
            } else {
                x.cmp(y)
            }
        }
    }
}

fn sort_plan(
    k: usize,
    desc: bool,
    nulls_first: bool,
    limit: Option<u64>,
    offset: u64,
) -> MergePlan {
    let mut root = Node::MergeSort {
        input: scatter(k),
        keys: vec![SortKey {
            column: Col::Helper(0),
            descending: desc,
            nulls_first,
            bytewise_text: true,
        }],
    };
    if limit.is_some() || offset > 0 {
        root = Node::Limit {
            input: Box::new(root),
            limit,
            offset,
        };
    }
    MergePlan {
        root: Node::Project {
            input: Box::new(root),
            helpers: 1,
        },
        helpers: 1,
        visible: Some(2),
    }
}

fn sorted_columns() -> [Column; 3] {
    [
        Column {
            type_oid: oid::INT4,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::TEXT,
            format: Format::Text,
        },
        Column {
            type_oid: oid::INT4,
            format: Format::Binary,
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A k-way merge of sorted streams is the sorted union (ties, NULLS FIRST/LAST, DESC),
    /// and LIMIT/OFFSET over it is LIMIT/OFFSET of the sorted union.
    #[test]
    fn merge_sort_equals_sorting_the_union(
        keys in prop::collection::vec(prop::option::weighted(0.85, -20i32..20), 0..60),
        assign in prop::collection::vec(0usize..8, 60),
        k in 1usize..5,
        desc: bool,
        nulls_first: bool,
        limit in prop::option::of(0u64..30),
        offset in 0u64..10,
    ) {
        let rows: Vec<(Option<i32>, String)> = keys.iter().enumerate().map(|(i, k)| (*k, format!("r{i}"))).collect();
        let mut parts = partition(&rows, &assign, k);
        for p in &mut parts {
            p.sort_by(|a, b| key_order(&a.0, &b.0, desc, nulls_first));
        }
        let shard_rows: Vec<Vec<Vec<Val>>> = parts.iter().map(|p| p.iter().map(|(key, name)| {
            vec![key.map(int4), Some(name.clone().into_bytes()), key.map(int4)]
        }).collect()).collect();
        let plan = sort_plan(k, desc, nulls_first, limit, offset);
        let mut ex = Executor::new(&plan, &sorted_columns(), &[Format::Binary, Format::Text], 1 << 20).unwrap();
        let got = run(&mut ex, shard_rows).unwrap();
        let mut all = rows.clone();
        all.sort_by(|a, b| key_order(&a.0, &b.0, desc, nulls_first));
        let want: Vec<Option<i32>> = all.iter().map(|r| r.0).skip(offset as usize).take(limit.unwrap_or(u64::MAX) as usize).collect();
        let got_keys: Vec<Option<i32>> = got.iter().map(|r| {
            prop_assert_eq!(r.len(), 2, "helpers dropped");
            Ok(r[0].as_ref().map(|v| i32::from_be_bytes(v[..].try_into().unwrap())))
        }).collect::<Result<_, _>>()?;
        prop_assert_eq!(got_keys, want);
        if limit.is_none() && offset == 0 {
            let names: BTreeSet<Vec<u8>> = got.iter().map(|r| r[1].clone().unwrap()).collect();
            prop_assert_eq!(names.len(), rows.len());
        }
    }

    /// count, sum, min, max, avg, bool_and, bool_or over partial aggregates of a random
    /// partition equal the aggregates of the whole, per group (and without GROUP BY).
    #[test]
    fn aggregates_of_partials_equal_aggregates_of_the_whole(
        rows in prop::collection::vec((0i64..4, prop::option::weighted(0.8, -1000i64..1000), prop::option::of(any::<bool>())), 0..50),
        assign in prop::collection::vec(0usize..8, 50),
        k in 1usize..5,
        grouped: bool,
    ) {
        let key = |g: i64| if grouped { g } else { 0 };
        let parts = partition(&rows, &assign, k);
        // Each shard: SELECT g?, count(*), count(x), sum(x), min(x), max(x), sum(x) AS avg,
        // bool_and(b), bool_or(b), g FROM part GROUP BY g (int8 partials in text).
        let partial = |part: &[(i64, Option<i64>, Option<bool>)]| -> Vec<Vec<Val>> {
            let mut groups: Groups = BTreeMap::new();
            for (g, x, b) in part {
                groups.entry(key(*g)).or_default().push((*x, *b));
            }
            if !grouped && groups.is_empty() {
                groups.insert(0, Vec::new());
            }
            groups.into_iter().map(|(g, vals)| {
                let xs: Vec<i64> = vals.iter().filter_map(|v| v.0).collect();
                let bs: Vec<bool> = vals.iter().filter_map(|v| v.1).collect();
                let sum = (!xs.is_empty()).then(|| xs.iter().sum::<i64>());
                vec![
                    Some(text_int(vals.len() as i64)),
                    Some(text_int(xs.len() as i64)),
                    sum.map(text_int),
                    xs.iter().min().map(|m| text_int(*m)),
                    xs.iter().max().map(|m| text_int(*m)),
                    sum.map(text_int),
                    (!bs.is_empty()).then(|| if bs.iter().all(|b| *b) { b"t".to_vec() } else { b"f".to_vec() }),
                    (!bs.is_empty()).then(|| if bs.iter().any(|b| *b) { b"t".to_vec() } else { b"f".to_vec() }),
                    Some(text_int(g)),
                ]
            }).collect()
        };
        let shard_rows: Vec<_> = parts.iter().map(|p| partial(p)).collect();
        let t = |oid| Column { type_oid: oid, format: Format::Text };
        let columns = [t(oid::INT8), t(oid::INT8), t(oid::INT8), t(oid::INT8), t(oid::INT8), t(oid::INT8), t(oid::BOOL), t(oid::BOOL), t(oid::INT8)];
        let agg = |kind, column, count, compare| Agg { kind, column: Col::Visible(column), count, compare, bytewise_text: true };
        let plan = MergePlan {
            root: Node::Project {
                input: Box::new(Node::Aggregate {
                    input: scatter(k),
                    group: if grouped { vec![Col::Helper(0)] } else { vec![] },
                    aggs: vec![
                        agg(AggKind::Count, 0, None, None),
                        agg(AggKind::Count, 1, None, None),
                        agg(AggKind::Sum, 2, None, None),
                        agg(AggKind::Min, 3, None, None),
                        agg(AggKind::Max, 4, None, None),
                        agg(AggKind::Avg, 5, Some(Col::Visible(1)), None),
                        agg(AggKind::BoolAnd, 6, None, None),
                        agg(AggKind::BoolOr, 7, None, None),
                    ],
                }),
                helpers: 1,
            },
            helpers: 1,
            visible: Some(8),
        };
        let mut ex = Executor::new(&plan, &columns, &[Format::Text; 8], 1 << 20).unwrap();
        let got = run(&mut ex, shard_rows).unwrap();
        // The whole, computed directly.
        let mut want = BTreeMap::new();
        let mut groups: Groups = BTreeMap::new();
        for (g, x, b) in &rows {
            groups.entry(key(*g)).or_default().push((*x, *b));
        }
        if !grouped && groups.is_empty() {
            groups.insert(0, Vec::new());
        }
        for (g, vals) in groups {
            let xs: Vec<i64> = vals.iter().filter_map(|v| v.0).collect();
            let bs: Vec<bool> = vals.iter().filter_map(|v| v.1).collect();
            let sum = (!xs.is_empty()).then(|| xs.iter().sum::<i64>());
            let avg = sum.map(|s| Numeric::from_i64(s).div_count(xs.len() as i64).to_string().into_bytes());
            want.insert(g, vec![
                Some(text_int(vals.len() as i64)),
                Some(text_int(xs.len() as i64)),
                sum.map(text_int),
                xs.iter().min().map(|m| text_int(*m)),
                xs.iter().max().map(|m| text_int(*m)),
                avg,
                (!bs.is_empty()).then(|| if bs.iter().all(|b| *b) { b"t".to_vec() } else { b"f".to_vec() }),
                (!bs.is_empty()).then(|| if bs.iter().any(|b| *b) { b"t".to_vec() } else { b"f".to_vec() }),
            ]);
        }
        prop_assert_eq!(got.len(), want.len());
        for r in &got {
            prop_assert_eq!(r.len(), 8);
        }
        let got_set: BTreeSet<Vec<Val>> = got.into_iter().collect();
        let want_set: BTreeSet<Vec<Val>> = want.into_values().collect();
        prop_assert_eq!(got_set, want_set);
    }

    /// DISTINCT over the shards' distinct rows is the set of distinct rows of the whole.
    #[test]
    fn distinct_equals_the_set_of_distinct_rows(
        rows in prop::collection::vec((prop::option::of(0i64..5), 0i64..3), 0..60),
        assign in prop::collection::vec(0usize..8, 60),
        k in 1usize..5,
    ) {
        let parts = partition(&rows, &assign, k);
        let shard_rows: Vec<Vec<Vec<Val>>> = parts.iter().map(|p| {
            let set: BTreeSet<_> = p.iter().cloned().collect();
            set.into_iter().map(|(a, b)| vec![a.map(text_int), Some(text_int(b))]).collect()
        }).collect();
        let plan = MergePlan {
            root: Node::Distinct { input: scatter(k), on: None, sorted: false },
            helpers: 0,
            visible: Some(2),
        };
        let t = |oid| Column { type_oid: oid, format: Format::Text };
        let mut ex = Executor::new(&plan, &[t(oid::INT8), t(oid::INT4)], &[Format::Text; 2], 1 << 20).unwrap();
        let got = run(&mut ex, shard_rows).unwrap();
        let want: BTreeSet<Vec<Val>> = rows.iter().map(|(a, b)| vec![a.map(text_int), Some(text_int(*b))]).collect();
        prop_assert_eq!(got.len(), want.len(), "no duplicates");
        prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    }
}

#[test]
fn the_memory_limit_errors_instead_of_growing() {
    let plan = MergePlan {
        root: Node::Aggregate {
            input: scatter(2),
            group: vec![Col::Visible(0)],
            aggs: vec![Agg {
                kind: AggKind::Count,
                column: Col::Visible(1),
                count: None,
                compare: None,
                bytewise_text: true,
            }],
        },
        helpers: 0,
        visible: Some(2),
    };
    let t = |oid| Column {
        type_oid: oid,
        format: Format::Text,
    };
    let cols = [t(oid::INT8), t(oid::INT8)];
    let rows: Vec<Vec<Val>> = (0..10_000)
        .map(|i| vec![Some(text_int(i)), Some(text_int(1))])
        .collect();
    let mut ex = Executor::new(&plan, &cols, &[Format::Text; 2], 64 * 1024).unwrap();
    let e = run(&mut ex, vec![rows.clone(), vec![]]).unwrap_err();
    assert_eq!(e, MergeError::Memory { limit: 64 * 1024 });
    assert_eq!(e.sqlstate(), "54000");
    assert!(ex.memory_held() <= 64 * 1024 + 1024);
    // Distinct too.
    let plan = MergePlan {
        root: Node::Distinct {
            input: scatter(2),
            on: None,
            sorted: false,
        },
        helpers: 0,
        visible: Some(2),
    };
    let mut ex = Executor::new(&plan, &cols, &[Format::Text; 2], 64 * 1024).unwrap();
    assert!(matches!(
        run(&mut ex, vec![rows, vec![]]),
        Err(MergeError::Memory { .. })
    ));
}

#[test]
fn a_limit_stops_asking_for_rows() {
    let plan = sort_plan(2, false, false, Some(2), 1);
    let mut ex = Executor::new(
        &plan,
        &sorted_columns(),
        &[Format::Binary, Format::Text],
        1 << 20,
    )
    .unwrap();
    let row = |k: i32| body(&[Some(int4(k)), Some(b"x".to_vec()), Some(int4(k))]);
    assert_eq!(ex.wants(), Want::Row(0));
    ex.push(0, Some(row(1))).unwrap();
    assert_eq!(ex.wants(), Want::Row(1));
    ex.push(1, Some(row(2))).unwrap();
    ex.push(0, Some(row(3))).unwrap();
    ex.push(1, Some(row(4))).unwrap();
    // 1 skipped (offset), 2 and 3 sent: done, though neither shard ended.
    assert_eq!(ex.wants(), Want::Done);
    ex.finish().unwrap();
    assert_eq!(ex.rows_sent(), 2);
    // LIMIT 0 needs nothing at all.
    let plan = sort_plan(2, false, false, Some(0), 0);
    let ex = Executor::new(
        &plan,
        &sorted_columns(),
        &[Format::Binary, Format::Text],
        1 << 20,
    )
    .unwrap();
    assert_eq!(ex.wants(), Want::Done);
}

#[test]
fn aggregates_without_rows_and_having_sort_limit() {
    // SELECT count(*), sum(x), avg(x), max(x) FROM t  -- over no rows at all on any shard.
    let plan = MergePlan {
        root: Node::Project {
            input: Box::new(Node::Aggregate {
                input: scatter(2),
                group: vec![],
                aggs: vec![
                    Agg {
                        kind: AggKind::Count,
                        column: Col::Visible(0),
                        count: None,
                        compare: None,
                        bytewise_text: true,
                    },
                    Agg {
                        kind: AggKind::Sum,
                        column: Col::Visible(1),
                        count: None,
                        compare: None,
                        bytewise_text: true,
                    },
                    Agg {
                        kind: AggKind::Avg,
                        column: Col::Visible(2),
                        count: Some(Col::Helper(0)),
                        compare: None,
                        bytewise_text: true,
                    },
                    Agg {
                        kind: AggKind::Max,
                        column: Col::Visible(3),
                        count: None,
                        compare: Some(Col::Helper(1)),
                        bytewise_text: true,
                    },
                ],
            }),
            helpers: 2,
        },
        helpers: 2,
        visible: Some(4),
    };
    let cols = [
        Column {
            type_oid: oid::INT8,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::NUMERIC,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::NUMERIC,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::TIMESTAMPTZ,
            format: Format::Text,
        },
        Column {
            type_oid: oid::INT8,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::TIMESTAMPTZ,
            format: Format::Binary,
        },
    ];
    let formats = [Format::Text, Format::Text, Format::Text, Format::Text];
    let zero = Some(0i64.to_be_bytes().to_vec());
    let empty = vec![zero.clone(), None, None, None, zero.clone(), None];
    let mut ex = Executor::new(&plan, &cols, &formats, 1 << 20).unwrap();
    let got = run(&mut ex, vec![vec![empty.clone()], vec![empty]]).unwrap();
    assert_eq!(got, vec![vec![Some(b"0".to_vec()), None, None, None]]);
    // With rows: max passes the text of the winning row through, compared by its twin.
    let mut ex = Executor::new(&plan, &cols, &formats, 1 << 20).unwrap();
    let num = |s: &str| {
        let mut b = Vec::new();
        Numeric::parse_text(s).unwrap().write_binary(&mut b);
        Some(b)
    };
    let a = vec![
        Some(2i64.to_be_bytes().to_vec()),
        num("3"),
        num("3"),
        Some(b"2026-01-02 00:00:00+01".to_vec()),
        Some(2i64.to_be_bytes().to_vec()),
        Some(100i64.to_be_bytes().to_vec()),
    ];
    let b = vec![
        Some(1i64.to_be_bytes().to_vec()),
        num("1.5"),
        num("1.5"),
        Some(b"2026-01-01 23:30:00+00".to_vec()),
        Some(1i64.to_be_bytes().to_vec()),
        Some(200i64.to_be_bytes().to_vec()),
    ];
    let got = run(&mut ex, vec![vec![a], vec![b]]).unwrap();
    assert_eq!(
        got,
        vec![vec![
            Some(b"3".to_vec()),
            Some(b"4.5".to_vec()),
            Some(b"1.5000000000000000".to_vec()),
            Some(b"2026-01-01 23:30:00+00".to_vec()),
        ]]
    );
}

#[test]
fn having_filters_final_aggregates_then_sort_and_limit() {
    // SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > 2 ORDER BY 2 DESC LIMIT 2
    let plan = MergePlan {
        root: Node::Project {
            input: Box::new(Node::Limit {
                input: Box::new(Node::Sort {
                    input: Box::new(Node::Filter {
                        input: Box::new(Node::Aggregate {
                            input: scatter(2),
                            group: vec![Col::Helper(0)],
                            aggs: vec![Agg {
                                kind: AggKind::Count,
                                column: Col::Visible(1),
                                count: None,
                                compare: None,
                                bytewise_text: true,
                            }],
                        }),
                        predicate: Predicate::Cmp {
                            column: Col::Visible(1),
                            op: CmpOp::Gt,
                            value: Literal::Number("2".into()),
                            bytewise_text: true,
                        },
                    }),
                    keys: vec![SortKey {
                        column: Col::Visible(1),
                        descending: true,
                        nulls_first: true,
                        bytewise_text: true,
                    }],
                }),
                limit: Some(2),
                offset: 0,
            }),
            helpers: 1,
        },
        helpers: 1,
        visible: Some(2),
    };
    let cols = [
        Column {
            type_oid: oid::TEXT,
            format: Format::Text,
        },
        Column {
            type_oid: oid::INT8,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::TEXT,
            format: Format::Binary,
        },
    ];
    let r = |g: &str, n: i64| {
        vec![
            Some(g.as_bytes().to_vec()),
            Some(n.to_be_bytes().to_vec()),
            Some(g.as_bytes().to_vec()),
        ]
    };
    let mut ex = Executor::new(&plan, &cols, &[Format::Text, Format::Text], 1 << 20).unwrap();
    let got = run(
        &mut ex,
        vec![
            vec![r("a", 1), r("b", 2), r("c", 5)],
            vec![r("a", 1), r("b", 2), r("d", 3)],
        ],
    )
    .unwrap();
    let shown: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            (
                String::from_utf8(r[0].clone().unwrap()).unwrap(),
                String::from_utf8(r[1].clone().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("c".to_owned(), "5".to_owned()),
            ("b".to_owned(), "4".to_owned())
        ]
    );
    assert_eq!(int_of(got[1][1].as_ref().unwrap()), 4);
}

#[test]
fn what_cannot_be_merged_exactly_is_refused_at_execution() {
    // A float sum.
    let plan = MergePlan {
        root: Node::Aggregate {
            input: scatter(2),
            group: vec![],
            aggs: vec![Agg {
                kind: AggKind::Sum,
                column: Col::Visible(0),
                count: None,
                compare: None,
                bytewise_text: true,
            }],
        },
        helpers: 0,
        visible: Some(1),
    };
    let e = Executor::new(
        &plan,
        &[Column {
            type_oid: oid::FLOAT8,
            format: Format::Text,
        }],
        &[Format::Text],
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
    assert!(e.to_string().contains("double precision"), "{e}");
    // An interval sum: refused, with a hint that fits an interval (no cast to numeric).
    let e = Executor::new(
        &plan,
        &[Column {
            type_oid: oid::INTERVAL,
            format: Format::Binary,
        }],
        &[Format::Binary],
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
    assert!(e.to_string().contains("sum of type interval"), "{e}");
    assert!(e.hint().unwrap().contains("extract(epoch FROM x)"), "{e:?}");
    // Text ordered under a collation other than C.
    let plan = MergePlan {
        root: Node::MergeSort {
            input: scatter(2),
            keys: vec![SortKey {
                column: Col::Visible(0),
                descending: false,
                nulls_first: false,
                bytewise_text: false,
            }],
        },
        helpers: 0,
        visible: Some(1),
    };
    let e = Executor::new(
        &plan,
        &[Column {
            type_oid: oid::VARCHAR,
            format: Format::Text,
        }],
        &[Format::Text],
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
    assert!(e.hint().unwrap().contains("COLLATE \"C\""));
    // The same key as an integer is fine.
    assert!(Executor::new(
        &plan,
        &[Column {
            type_oid: oid::INT4,
            format: Format::Text
        }],
        &[Format::Text],
        1 << 20
    )
    .is_ok());
    // A timestamp sort key in text cannot be ordered.
    let e = Executor::new(
        &plan,
        &[Column {
            type_oid: oid::TIMESTAMPTZ,
            format: Format::Text,
        }],
        &[Format::Text],
        1 << 20,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot compare type timestamp with time zone in text format"),
        "{e}"
    );
}

proptest! {
    /// Whatever the rows and the limit, the executor either finishes within the limit or
    /// stops with the memory error; it never holds more than the limit plus one entry.
    #[test]
    fn memory_stays_within_the_limit(
        groups in prop::collection::vec(0i64..500, 0..400),
        limit in 1usize..40_000,
    ) {
        let plan = MergePlan {
            root: Node::Aggregate {
                input: scatter(1),
                group: vec![Col::Visible(0)],
                aggs: vec![Agg::new(AggKind::Count, Col::Visible(1))],
            },
            helpers: 0,
            visible: Some(2),
        };
        let t = |oid| Column { type_oid: oid, format: Format::Text };
        let mut ex = Executor::new(&plan, &[t(oid::INT8), t(oid::INT8)], &[Format::Text; 2], limit).unwrap();
        let rows: Vec<Vec<Val>> = groups.iter().map(|g| vec![Some(text_int(*g)), Some(text_int(1))]).collect();
        let distinct: BTreeSet<i64> = groups.iter().copied().collect();
        match run(&mut ex, vec![rows]) {
            Ok(got) => prop_assert_eq!(got.len(), distinct.len()),
            Err(e) => prop_assert_eq!(e, MergeError::Memory { limit }),
        }
        prop_assert!(ex.memory_held() <= limit + 512);
    }
}

/// A plain DISTINCT compares binary twins of the select list (the planner appends them), not
/// the client's text: floats that print alike under extra_float_digits 0 stay distinct, and
/// `1 mon` and `30 days` (whose text cannot be compared) are one value.
#[test]
fn distinct_compares_binary_twins_not_the_clients_text() {
    let plan = MergePlan {
        root: Node::Project {
            input: Box::new(Node::Distinct {
                input: scatter(2),
                on: Some(vec![Col::Helper(0), Col::Helper(1)]),
                sorted: false,
            }),
            helpers: 2,
        },
        helpers: 2,
        visible: Some(2),
    };
    let columns = [
        Column {
            type_oid: oid::FLOAT8,
            format: Format::Text,
        },
        Column {
            type_oid: oid::INTERVAL,
            format: Format::Text,
        },
        Column {
            type_oid: oid::FLOAT8,
            format: Format::Binary,
        },
        Column {
            type_oid: oid::INTERVAL,
            format: Format::Binary,
        },
    ];
    let interval = |days: i32, months: i32| {
        let mut b = 0i64.to_be_bytes().to_vec();
        b.extend_from_slice(&days.to_be_bytes());
        b.extend_from_slice(&months.to_be_bytes());
        b
    };
    let row = |text: &str, f: f64, iv: &str, ivb: Vec<u8>| -> Vec<Val> {
        vec![
            Some(text.as_bytes().to_vec()),
            Some(iv.as_bytes().to_vec()),
            Some(f.to_be_bytes().to_vec()),
            Some(ivb),
        ]
    };
    let shards = vec![
        vec![row("0.1", 0.1, "1 mon", interval(0, 1))],
        vec![
            row("0.1", 0.10000000000000002, "1 mon", interval(0, 1)),
            row("0.1", 0.1, "30 days", interval(30, 0)),
        ],
    ];
    let mut ex = Executor::new(&plan, &columns, &[Format::Text, Format::Text], 1 << 20).unwrap();
    let got = run(&mut ex, shards).unwrap();
    assert_eq!(
        got,
        vec![
            vec![Some(b"0.1".to_vec()), Some(b"1 mon".to_vec())],
            vec![Some(b"0.1".to_vec()), Some(b"1 mon".to_vec())],
        ],
        "0.1 and 0.10000000000000002 are two values; 1 mon = 30 days"
    );
    // Over the client's text the interval could not be compared at all.
    let visible = MergePlan {
        root: Node::Distinct {
            input: scatter(2),
            on: None,
            sorted: false,
        },
        helpers: 0,
        visible: Some(2),
    };
    let e = Executor::new(
        &visible,
        &columns[..2],
        &[Format::Text, Format::Text],
        1 << 20,
    )
    .unwrap_err();
    assert!(e.to_string().contains("interval in text format"), "{e}");
}
