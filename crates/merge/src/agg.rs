//! Final aggregation: the shards' partial aggregates, combined per group into what one
//! PostgreSQL would have computed over all the rows.
//!
//! count: the sum of the partial counts. sum: the sum of partial sums (bigint for smallint
//! and integer arguments, numeric for bigint and numeric, keeping the largest display
//! scale), NULL when every shard had none. avg: the numeric division of the summed partial
//! sums by the summed partial counts, with PostgreSQL's scale. min/max: the winning row's
//! value, passed through as its shard sent it. bool_and/bool_or: over the non-NULL partials.
//! Float sums are refused: floating-point addition depends on the order of the rows.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use crate::engine::ColType;
use crate::error::MergeError;
use crate::numeric::Numeric;
use crate::plan::AggKind;
use crate::row::Row;
use crate::types::{self, oid, Format, Usable, Value};

/// An aggregate with its columns resolved to row positions.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedAgg {
    pub kind: AggKind,
    pub column: usize,
    pub count: Option<usize>,
    pub compare: Option<usize>,
    pub bytewise_text: bool,
}

#[derive(Debug)]
enum Acc {
    Count(i64),
    SumInt(Option<i64>),
    SumNum(Option<Numeric>),
    Avg { sum: Option<Numeric>, count: i64 },
    Best(Option<Row>),
    Bool(Option<bool>),
}

#[derive(Debug)]
struct Group {
    first: Row,
    accs: Vec<Acc>,
}

/// The state of an Aggregate: one entry per group.
#[derive(Debug)]
pub(crate) struct AggStage {
    group: Vec<usize>,
    aggs: Vec<ResolvedAgg>,
    input: Vec<ColType>,
    output: Vec<ColType>,
    index: HashMap<Vec<u8>, usize>,
    groups: Vec<Group>,
    scratch: Vec<u8>,
}

fn float_refusal(what: &str) -> MergeError {
    MergeError::unsupported(
        format!("{what} of real or double precision values cannot be merged exactly across shards (floating-point addition depends on the order of the rows)"),
        "Cast the argument to numeric (e.g. sum(x::numeric)), or give the shard key so that the query runs on one shard.",
    )
}

fn int8(t: ColType, raw: &[u8]) -> Result<i64, MergeError> {
    match types::decode(t.oid, t.format, raw)? {
        Value::Int(i) => Ok(i),
        _ => Err(MergeError::BadData("expected an integer".into())),
    }
}

fn numeric(t: ColType, raw: &[u8]) -> Result<Numeric, MergeError> {
    match types::decode(t.oid, t.format, raw)? {
        Value::Int(i) => Ok(Numeric::from_i64(i)),
        Value::Numeric(n) => Ok(n),
        _ => Err(MergeError::BadData("expected a number".into())),
    }
}

fn overflow() -> MergeError {
    MergeError::Overflow("bigint out of range".into())
}

/// Encodes a final value in `format`.
fn encode_int8(v: i64, format: Format) -> Vec<u8> {
    match format {
        Format::Text => v.to_string().into_bytes(),
        Format::Binary => v.to_be_bytes().to_vec(),
    }
}

fn encode_numeric(v: &Numeric, format: Format) -> Vec<u8> {
    match format {
        Format::Text => v.to_string().into_bytes(),
        Format::Binary => {
            let mut b = Vec::new();
            v.write_binary(&mut b);
            b
        }
    }
}

fn encode_bool(v: bool, format: Format) -> Vec<u8> {
    match format {
        Format::Text => vec![if v { b't' } else { b'f' }],
        Format::Binary => vec![v as u8],
    }
}

impl AggStage {
    /// Checks the partial columns' types and works out the output columns' types;
    /// `out_format(c)` is the format column `c` must leave in.
    pub fn new(
        group: Vec<usize>,
        aggs: Vec<ResolvedAgg>,
        input: &[ColType],
        out_format: &dyn Fn(usize) -> Format,
    ) -> Result<AggStage, MergeError> {
        let mut output = input.to_vec();
        for &g in &group {
            let t = input[g];
            if types::usable(t.oid, t.format) == Usable::No {
                return Err(types::cannot_compare(t.oid, t.format));
            }
        }
        for a in &aggs {
            let t = input[a.column];
            let set = |output: &mut Vec<ColType>, c: usize, oid: u32| {
                output[c] = ColType {
                    oid,
                    format: out_format(c),
                };
            };
            match a.kind {
                AggKind::Count => {
                    if t.oid != oid::INT8 {
                        return Err(MergeError::BadData(format!(
                            "a partial count arrived as type {}",
                            types::type_name(t.oid)
                        )));
                    }
                    set(&mut output, a.column, oid::INT8);
                }
                AggKind::Sum | AggKind::Avg => {
                    let what = a.kind.name();
                    match t.oid {
                        oid::INT8 | oid::NUMERIC => {}
                        oid::FLOAT4 | oid::FLOAT8 => return Err(float_refusal(what)),
                        other => {
                            let hint = if other == oid::INTERVAL {
                                "Aggregate a number instead (e.g. extract(epoch FROM x), which counts a month as 30 days), or give the shard key so that the query runs on one shard."
                            } else {
                                "Cast the argument to numeric, or give the shard key so that the query runs on one shard."
                            };
                            return Err(MergeError::unsupported(
                                format!(
                                    "{what} of type {} is not merged across shards (the proxy adds bigint and numeric partial sums only)",
                                    types::type_name(other)
                                ),
                                hint,
                            ));
                        }
                    }
                    if a.kind == AggKind::Avg {
                        set(&mut output, a.column, oid::NUMERIC);
                        let c = a.count.ok_or_else(|| {
                            MergeError::Usage("avg without its partial count".into())
                        })?;
                        if input[c].oid != oid::INT8 {
                            return Err(MergeError::BadData(
                                "avg's partial count is not a bigint".into(),
                            ));
                        }
                        set(&mut output, c, oid::INT8);
                    } else {
                        set(&mut output, a.column, t.oid);
                    }
                }
                AggKind::Min | AggKind::Max => {
                    let c = input[a.compare.unwrap_or(a.column)];
                    if types::usable(c.oid, c.format) != Usable::Decode {
                        return Err(types::cannot_compare(c.oid, c.format));
                    }
                    if types::is_collatable(c.oid) && !a.bytewise_text {
                        return Err(MergeError::unsupported(
                            format!("{}() of {} values across shards, and the database's collation is not \"C\": the proxy compares text bytewise", a.kind.name(), types::type_name(c.oid)),
                            "Add COLLATE \"C\" to the argument (e.g. max(name COLLATE \"C\")), or give the shard key so that the query runs on one shard.",
                        ));
                    }
                }
                AggKind::BoolAnd | AggKind::BoolOr => {
                    if t.oid != oid::BOOL {
                        return Err(MergeError::BadData(
                            "a partial bool_and/bool_or is not a boolean".into(),
                        ));
                    }
                    set(&mut output, a.column, oid::BOOL);
                }
            }
        }
        Ok(AggStage {
            group,
            aggs,
            input: input.to_vec(),
            output,
            index: HashMap::new(),
            groups: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The columns' types after aggregation.
    pub fn output_types(&self) -> &[ColType] {
        &self.output
    }

    fn empty_accs(&self) -> Vec<Acc> {
        self.aggs
            .iter()
            .map(|a| match a.kind {
                AggKind::Count => Acc::Count(0),
                AggKind::Sum if self.input[a.column].oid == oid::INT8 => Acc::SumInt(None),
                AggKind::Sum => Acc::SumNum(None),
                AggKind::Avg => Acc::Avg {
                    sum: None,
                    count: 0,
                },
                AggKind::Min | AggKind::Max => Acc::Best(None),
                AggKind::BoolAnd | AggKind::BoolOr => Acc::Bool(None),
            })
            .collect()
    }

    /// Takes one row of partials; returns the change in bytes held.
    pub fn add(&mut self, row: Row) -> Result<isize, MergeError> {
        self.scratch.clear();
        for &g in &self.group {
            let t = self.input[g];
            types::key_bytes(t.oid, t.format, row.get(g), &mut self.scratch)?;
        }
        let mut grew: isize = 0;
        let gi = match self.index.get(self.scratch.as_slice()) {
            Some(i) => *i,
            None => {
                let accs = self.empty_accs();
                grew += (self.scratch.len() + row.footprint() + accs.len() * 48 + 96) as isize;
                self.index.insert(self.scratch.clone(), self.groups.len());
                self.groups.push(Group {
                    first: row.clone(),
                    accs,
                });
                self.groups.len() - 1
            }
        };
        let input = &self.input;
        let group = &mut self.groups[gi];
        for (a, acc) in self.aggs.iter().zip(group.accs.iter_mut()) {
            let t = input[a.column];
            let v = row.get(a.column);
            match acc {
                Acc::Count(n) => {
                    if let Some(v) = v {
                        *n = n.checked_add(int8(t, v)?).ok_or_else(overflow)?;
                    }
                }
                Acc::SumInt(s) => {
                    if let Some(v) = v {
                        let x = int8(t, v)?;
                        *s = Some(match s {
                            None => x,
                            Some(p) => p.checked_add(x).ok_or_else(overflow)?,
                        });
                    }
                }
                Acc::SumNum(s) => {
                    if let Some(v) = v {
                        let x = numeric(t, v)?;
                        *s = Some(match s {
                            None => x,
                            Some(p) => p.add(&x),
                        });
                    }
                }
                Acc::Avg { sum, count } => {
                    if let Some(v) = v {
                        let x = numeric(t, v)?;
                        *sum = Some(match sum {
                            None => x,
                            Some(p) => p.add(&x),
                        });
                    }
                    let c = a.count.expect("checked at construction");
                    if let Some(n) = row.get(c) {
                        *count = count.checked_add(int8(input[c], n)?).ok_or_else(overflow)?;
                    }
                }
                Acc::Best(best) => {
                    let c = a.compare.unwrap_or(a.column);
                    let Some(v) = row.get(c) else { continue };
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let ct = input[c];
                            let o = types::compare(
                                &types::decode(ct.oid, ct.format, v)?,
                                &types::decode(ct.oid, ct.format, b.get(c).expect("not NULL"))?,
                            );
                            if a.kind == AggKind::Min {
                                o == Ordering::Less
                            } else {
                                o == Ordering::Greater
                            }
                        }
                    };
                    if better {
                        if let Some(old) = best.as_ref() {
                            grew -= old.footprint() as isize;
                        }
                        grew += row.footprint() as isize;
                        *best = Some(row.clone());
                    }
                }
                Acc::Bool(b) => {
                    if let Some(v) = v {
                        let x = matches!(types::decode(t.oid, t.format, v)?, Value::Bool(true));
                        *b = Some(match (*b, a.kind) {
                            (None, _) => x,
                            (Some(p), AggKind::BoolAnd) => p && x,
                            (Some(p), _) => p || x,
                        });
                    }
                }
            }
        }
        Ok(grew)
    }

    /// The final rows, one per group (one row of empty aggregates when there is no GROUP BY
    /// and no row at all), with the bytes they held.
    pub fn finish(&mut self, width: usize) -> (Vec<Row>, usize) {
        let mut groups = std::mem::take(&mut self.groups);
        self.index.clear();
        if groups.is_empty() && self.group.is_empty() {
            groups.push(Group {
                first: Row::from_values(std::iter::repeat_n(None, width)),
                accs: self.empty_accs(),
            });
        }
        let mut held = 0;
        let rows = groups
            .into_iter()
            .map(|g| {
                held += g.first.footprint();
                self.final_row(&g)
            })
            .collect();
        (rows, held)
    }

    fn final_row(&self, g: &Group) -> Row {
        let mut values: Vec<Option<Cow<'_, [u8]>>> = (0..g.first.len())
            .map(|i| g.first.get(i).map(Cow::Borrowed))
            .collect();
        for (a, acc) in self.aggs.iter().zip(&g.accs) {
            let f = self.output[a.column].format;
            match acc {
                Acc::Count(n) => values[a.column] = Some(Cow::Owned(encode_int8(*n, f))),
                Acc::SumInt(s) => values[a.column] = s.map(|s| Cow::Owned(encode_int8(s, f))),
                Acc::SumNum(s) => {
                    values[a.column] = s.as_ref().map(|s| Cow::Owned(encode_numeric(s, f)))
                }
                Acc::Avg { sum, count } => {
                    values[a.column] = match (sum, *count) {
                        (Some(s), c) if c > 0 => {
                            Some(Cow::Owned(encode_numeric(&s.div_count(c), f)))
                        }
                        _ => None,
                    };
                    let c = a.count.expect("checked at construction");
                    values[c] = Some(Cow::Owned(encode_int8(*count, self.output[c].format)));
                }
                Acc::Best(best) => {
                    for c in std::iter::once(a.column).chain(a.compare) {
                        values[c] = best
                            .as_ref()
                            .and_then(|b| b.get(c))
                            .map(|v| Cow::Owned(v.to_vec()));
                    }
                }
                Acc::Bool(b) => values[a.column] = b.map(|b| Cow::Owned(encode_bool(b, f))),
            }
        }
        Row::from_values(values.iter().map(|v| v.as_deref()))
    }
}
