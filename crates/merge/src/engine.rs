//! The executor: runs a [`MergePlan`] over the rows of k shards, synchronously.
//!
//! The caller owns the sockets. It asks [`Executor::wants`] what to read next (a row of one
//! shard for a k-way merge, a row of any shard otherwise, or nothing more), hands each
//! shard's DataRow bodies in with [`Executor::push`] (`None` when the shard's result ended),
//! and takes the DataRow frames ready for the client out with [`Executor::take_output`].
//! When every shard has ended (or a LIMIT was satisfied early), [`Executor::finish`] lets
//! the blocking primitives (Aggregate, Sort) emit their rows; [`Executor::rows_sent`] gives
//! the count for the client's `SELECT n`.
//!
//! Memory: a merge holds one row per shard; an Aggregate one entry per group; a Distinct
//! one key per distinct row; a Sort the aggregated rows. Past `memory_limit` bytes `push`
//! fails with [`MergeError::Memory`] (SQLSTATE 54000) instead of growing.

use std::cmp::Ordering;
use std::collections::HashSet;

use bytes::{Bytes, BytesMut};

use crate::agg::{AggStage, ResolvedAgg};
use crate::error::MergeError;
use crate::numeric::Numeric;
use crate::plan::{AggKind, CmpOp, Col, Literal, MergePlan, Node, Predicate, SortKey};
use crate::row::Row;
use crate::types::{self, oid, Format, Usable, Value};

/// A column of the shards' rows: its type (RowDescription's type OID) and the format the
/// proxy fetched it in (Bind's result format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub type_oid: u32,
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColType {
    pub oid: u32,
    pub format: Format,
}

/// What the executor needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The next row (or the end) of this shard.
    Row(usize),
    /// A row (or the end) of any shard that has not ended.
    Any,
    /// Nothing more: call [`Executor::finish`]. Shards that have not ended still owe their
    /// remaining rows; read and drop them (or cancel).
    Done,
}

#[derive(Debug, Clone)]
struct Key {
    col: usize,
    t: ColType,
    desc: bool,
    nulls_first: bool,
}

#[derive(Debug)]
enum Lit {
    Num(Numeric),
    Float(f64),
    Bytes(Vec<u8>),
    Bool(bool),
    Null,
}

#[derive(Debug)]
enum Pred {
    Cmp {
        col: usize,
        t: ColType,
        op: CmpOp,
        lit: Lit,
    },
    IsNull {
        col: usize,
        negated: bool,
    },
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
}

#[derive(Debug)]
enum Stage {
    Aggregate {
        agg: Box<AggStage>,
        held: usize,
    },
    Filter(Pred),
    Sort {
        keys: Vec<Key>,
        rows: Vec<Row>,
        held: usize,
    },
    Distinct {
        on: Vec<(usize, ColType)>,
        sorted: bool,
        seen: HashSet<Vec<u8>>,
        last: Option<Vec<u8>>,
        held: usize,
    },
    Limit {
        limit: Option<u64>,
        skip: u64,
    },
}

/// Runs one plan over the rows of its shards.
#[derive(Debug)]
pub struct Executor {
    width: usize,
    out_width: usize,
    merge: Option<Vec<Key>>,
    heads: Vec<Option<Row>>,
    ended: Vec<bool>,
    stages: Vec<Stage>,
    out: BytesMut,
    sent: u64,
    held: usize,
    limit: usize,
    done: bool,
    finished: bool,
    scratch: Vec<u8>,
}

fn text_order_refusal(t: u32) -> MergeError {
    MergeError::unsupported(
        format!("ORDER BY a {} value across shards, and the database's collation is not \"C\": the proxy merges text in bytewise order", types::type_name(t)),
        "Add COLLATE \"C\" to the sort key (ORDER BY name COLLATE \"C\"), or give the shard key so that the query runs on one shard.",
    )
}

impl Executor {
    /// `columns`: the shards' columns (from their RowDescription) with the formats fetched;
    /// `client_formats`: the formats the client asked for its (visible) columns.
    pub fn new(
        plan: &MergePlan,
        columns: &[Column],
        client_formats: &[Format],
        memory_limit: usize,
    ) -> Result<Executor, MergeError> {
        let width = columns.len();
        let visible = width.checked_sub(plan.helpers).ok_or_else(|| {
            MergeError::Usage(format!(
                "the shards returned {width} columns, fewer than the plan's {} helpers",
                plan.helpers
            ))
        })?;
        if plan.visible.is_some_and(|v| v != visible) || client_formats.len() != visible {
            return Err(MergeError::Usage(format!(
                "the shards returned {visible} visible columns, the plan expects {:?} and the client has {} formats",
                plan.visible,
                client_formats.len()
            )));
        }
        let resolve = |c: Col| -> Result<usize, MergeError> {
            let i = match c {
                Col::Visible(i) if i < visible => i,
                Col::Helper(i) if i < plan.helpers => visible + i,
                _ => return Err(MergeError::Usage(format!("column {c} is not in the rows"))),
            };
            Ok(i)
        };
        let out_format = |c: usize| {
            if c < visible {
                client_formats[c]
            } else {
                Format::Binary
            }
        };
        // The chain from the source up.
        let mut chain = Vec::new();
        let mut node = Some(&plan.root);
        while let Some(n) = node {
            chain.push(n);
            node = n.input();
        }
        chain.reverse();
        let shards = plan.shards().len();
        let mut types: Vec<ColType> = columns
            .iter()
            .map(|c| ColType {
                oid: c.type_oid,
                format: c.format,
            })
            .collect();
        // Visible columns pass through in the format they were fetched in, except the
        // aggregates the executor encodes itself.
        let mut recomputed = vec![false; width];
        for n in &chain {
            if let Node::Aggregate { aggs, .. } = n {
                for a in aggs {
                    if !matches!(a.kind, AggKind::Min | AggKind::Max) {
                        recomputed[resolve(a.column)?] = true;
                    }
                }
            }
        }
        for c in 0..visible {
            if !recomputed[c] && types[c].format != client_formats[c] {
                return Err(MergeError::Usage(format!(
                    "column {} was fetched in {:?} format, the client asked for {:?}",
                    c + 1,
                    types[c].format,
                    client_formats[c]
                )));
            }
        }
        let mut ex = Executor {
            width,
            out_width: width,
            merge: None,
            heads: vec![None; shards],
            ended: vec![false; shards],
            stages: Vec::new(),
            out: BytesMut::new(),
            sent: 0,
            held: 0,
            limit: memory_limit,
            done: false,
            finished: false,
            scratch: Vec::new(),
        };
        let keys = |keys: &[SortKey], types: &[ColType]| -> Result<Vec<Key>, MergeError> {
            keys.iter()
                .map(|k| {
                    let col = resolve(k.column)?;
                    let t = types[col];
                    if types::usable(t.oid, t.format) != Usable::Decode {
                        return Err(types::cannot_compare(t.oid, t.format));
                    }
                    if types::is_collatable(t.oid) && !k.bytewise_text {
                        return Err(text_order_refusal(t.oid));
                    }
                    Ok(Key {
                        col,
                        t,
                        desc: k.descending,
                        nulls_first: k.nulls_first,
                    })
                })
                .collect()
        };
        for (i, n) in chain.iter().enumerate() {
            match n {
                Node::Route { .. } | Node::Scatter { .. } if i == 0 => {}
                Node::MergeSort { keys: k, .. } if i == 1 => ex.merge = Some(keys(k, &types)?),
                Node::Aggregate { group, aggs, .. } => {
                    let group = group
                        .iter()
                        .map(|c| resolve(*c))
                        .collect::<Result<_, _>>()?;
                    let aggs = aggs
                        .iter()
                        .map(|a| {
                            Ok(ResolvedAgg {
                                kind: a.kind,
                                column: resolve(a.column)?,
                                count: a.count.map(resolve).transpose()?,
                                compare: a.compare.map(resolve).transpose()?,
                                bytewise_text: a.bytewise_text,
                            })
                        })
                        .collect::<Result<_, MergeError>>()?;
                    let agg = AggStage::new(group, aggs, &types, &out_format)?;
                    types = agg.output_types().to_vec();
                    ex.stages.push(Stage::Aggregate {
                        agg: Box::new(agg),
                        held: 0,
                    });
                }
                Node::Sort { keys: k, .. } => ex.stages.push(Stage::Sort {
                    keys: keys(k, &types)?,
                    rows: Vec::new(),
                    held: 0,
                }),
                Node::Filter { predicate, .. } => ex
                    .stages
                    .push(Stage::Filter(resolve_pred(predicate, &resolve, &types)?)),
                Node::Distinct { on, sorted, .. } => {
                    let cols: Vec<usize> = match on {
                        None => (0..visible).collect(),
                        Some(cols) => cols.iter().map(|c| resolve(*c)).collect::<Result<_, _>>()?,
                    };
                    let on = cols
                        .into_iter()
                        .map(|c| {
                            let t = types[c];
                            if types::usable(t.oid, t.format) == Usable::No {
                                return Err(types::cannot_compare(t.oid, t.format));
                            }
                            Ok((c, t))
                        })
                        .collect::<Result<_, _>>()?;
                    ex.stages.push(Stage::Distinct {
                        on,
                        sorted: *sorted,
                        seen: HashSet::new(),
                        last: None,
                        held: 0,
                    });
                }
                Node::Limit { limit, offset, .. } => {
                    if *limit == Some(0) {
                        ex.done = true;
                    }
                    ex.stages.push(Stage::Limit {
                        limit: *limit,
                        skip: *offset,
                    });
                }
                Node::Project { helpers, .. } => {
                    if *helpers != plan.helpers {
                        return Err(MergeError::Usage(
                            "Project drops another number of helpers than the plan has".into(),
                        ));
                    }
                    ex.out_width = visible;
                }
                other => {
                    return Err(MergeError::Usage(format!(
                        "unexpected primitive at level {i}: {}",
                        other.to_string().lines().next().unwrap_or("")
                    )))
                }
            }
        }
        if ex.out_width != visible {
            return Err(MergeError::Usage(
                "a plan with helper columns must end in Project".into(),
            ));
        }
        Ok(ex)
    }

    /// What to read next.
    pub fn wants(&self) -> Want {
        if self.done || self.ended.iter().all(|e| *e) {
            return Want::Done;
        }
        if self.merge.is_none() {
            return Want::Any;
        }
        match (0..self.heads.len()).find(|s| !self.ended[*s] && self.heads[*s].is_none()) {
            Some(s) => Want::Row(s),
            None => Want::Done, // unreachable: a full set of heads is merged at once
        }
    }

    /// Hands in a shard's next DataRow body, or `None` when its rows ended.
    pub fn push(&mut self, shard: usize, row: Option<Bytes>) -> Result<(), MergeError> {
        if shard >= self.ended.len() || self.ended[shard] {
            return Err(MergeError::Usage(format!(
                "shard {shard} has ended or does not exist"
            )));
        }
        let Some(body) = row else {
            self.ended[shard] = true;
            return self.advance();
        };
        if self.done {
            return Ok(());
        }
        let row = Row::parse(body)?;
        if row.len() != self.width {
            return Err(MergeError::BadData(format!(
                "a shard sent a row of {} columns, its RowDescription has {}",
                row.len(),
                self.width
            )));
        }
        if self.merge.is_none() {
            return self.feed(0, row);
        }
        if self.heads[shard].is_some() {
            return Err(MergeError::Usage(format!(
                "a row of shard {shard}, which was not asked for"
            )));
        }
        self.account(row.footprint() as isize)?;
        self.heads[shard] = Some(row);
        self.advance()
    }

    /// Merges while every shard that has not ended has a row waiting.
    fn advance(&mut self) -> Result<(), MergeError> {
        if self.merge.is_none() {
            return Ok(());
        }
        loop {
            if self.done {
                return Ok(());
            }
            if (0..self.heads.len()).any(|s| !self.ended[s] && self.heads[s].is_none()) {
                return Ok(());
            }
            let keys = self.merge.as_deref().expect("a merge");
            let mut best: Option<usize> = None;
            for s in 0..self.heads.len() {
                let Some(r) = &self.heads[s] else { continue };
                best = match best {
                    None => Some(s),
                    Some(b) => {
                        let o = compare_rows(keys, r, self.heads[b].as_ref().expect("a head"))?;
                        Some(if o == Ordering::Less { s } else { b })
                    }
                };
            }
            let Some(s) = best else { return Ok(()) };
            let row = self.heads[s].take().expect("a head");
            self.account(-(row.footprint() as isize))?;
            self.feed(0, row)?;
        }
    }

    fn account(&mut self, delta: isize) -> Result<(), MergeError> {
        self.held = self.held.saturating_add_signed(delta);
        if self.held > self.limit {
            return Err(MergeError::Memory { limit: self.limit });
        }
        Ok(())
    }

    /// Passes a row through the stages from `from` on, to the output.
    fn feed(&mut self, from: usize, row: Row) -> Result<(), MergeError> {
        let mut last_of_limit = false;
        for i in from..self.stages.len() {
            if self.done {
                return Ok(());
            }
            let mut grew: isize = 0;
            let mut absorbed = false;
            match &mut self.stages[i] {
                Stage::Aggregate { agg, held } => {
                    grew = agg.add(row.clone())?;
                    *held = held.saturating_add_signed(grew);
                    absorbed = true;
                }
                Stage::Sort { rows, held, .. } => {
                    grew = row.footprint() as isize;
                    *held += grew as usize;
                    rows.push(row.clone());
                    absorbed = true;
                }
                Stage::Filter(p) => {
                    if eval(p, &row)? != Some(true) {
                        return Ok(());
                    }
                }
                Stage::Distinct {
                    on,
                    sorted,
                    seen,
                    last,
                    held,
                } => {
                    self.scratch.clear();
                    for (c, t) in on.iter() {
                        types::key_bytes(t.oid, t.format, row.get(*c), &mut self.scratch)?;
                    }
                    if *sorted {
                        if last.as_deref() == Some(self.scratch.as_slice()) {
                            return Ok(());
                        }
                        grew = self.scratch.len() as isize
                            - last.as_ref().map_or(0, |l| l.len()) as isize;
                        *held = held.saturating_add_signed(grew);
                        *last = Some(self.scratch.clone());
                    } else {
                        if seen.contains(self.scratch.as_slice()) {
                            return Ok(());
                        }
                        grew = (self.scratch.len() + 48) as isize;
                        *held += grew as usize;
                        seen.insert(self.scratch.clone());
                    }
                }
                Stage::Limit { limit, skip } => {
                    if *skip > 0 {
                        *skip -= 1;
                        return Ok(());
                    }
                    if let Some(l) = limit {
                        *l -= 1;
                        last_of_limit = *l == 0;
                    }
                }
            }
            self.account(grew)?;
            if absorbed {
                return Ok(());
            }
        }
        row.write_data_row(self.out_width, &mut self.out);
        self.sent += 1;
        if last_of_limit {
            self.done = true;
        }
        Ok(())
    }

    /// After every shard ended (or [`Want::Done`]): lets Aggregate and Sort emit their rows.
    pub fn finish(&mut self) -> Result<(), MergeError> {
        if self.finished {
            return Ok(());
        }
        if !self.done && !self.ended.iter().all(|e| *e) {
            return Err(MergeError::Usage("finish before every shard ended".into()));
        }
        self.finished = true;
        for i in 0..self.stages.len() {
            if self.done {
                break;
            }
            let (rows, held) = match &mut self.stages[i] {
                Stage::Aggregate { agg, held } => {
                    let (rows, _) = agg.finish(self.width);
                    (rows, std::mem::take(held))
                }
                Stage::Sort { keys, rows, held } => {
                    let mut rows = std::mem::take(rows);
                    let mut err = None;
                    rows.sort_by(|a, b| {
                        compare_rows(keys, a, b).unwrap_or_else(|e| {
                            err.get_or_insert(e);
                            Ordering::Equal
                        })
                    });
                    if let Some(e) = err {
                        return Err(e);
                    }
                    (rows, std::mem::take(held))
                }
                _ => continue,
            };
            for r in rows {
                self.feed(i + 1, r)?;
            }
            self.account(-(held as isize))?;
        }
        Ok(())
    }

    /// The DataRow frames ready for the client.
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    /// Bytes of output waiting.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Rows written so far (the client's `SELECT n`).
    pub fn rows_sent(&self) -> u64 {
        self.sent
    }

    /// Bytes of rows, groups and keys held now.
    pub fn memory_held(&self) -> usize {
        self.held
    }
}

fn compare_rows(keys: &[Key], a: &Row, b: &Row) -> Result<Ordering, MergeError> {
    for k in keys {
        let o = match (a.get(k.col), b.get(k.col)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                let o = types::compare(
                    &types::decode(k.t.oid, k.t.format, x)?,
                    &types::decode(k.t.oid, k.t.format, y)?,
                );
                if k.desc {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if o != Ordering::Equal {
            return Ok(o);
        }
    }
    Ok(Ordering::Equal)
}

fn resolve_pred(
    p: &Predicate,
    resolve: &dyn Fn(Col) -> Result<usize, MergeError>,
    types: &[ColType],
) -> Result<Pred, MergeError> {
    let all = |ps: &[Predicate]| -> Result<Vec<Pred>, MergeError> {
        ps.iter().map(|p| resolve_pred(p, resolve, types)).collect()
    };
    Ok(match p {
        Predicate::And(ps) => Pred::And(all(ps)?),
        Predicate::Or(ps) => Pred::Or(all(ps)?),
        Predicate::Not(p) => Pred::Not(Box::new(resolve_pred(p, resolve, types)?)),
        Predicate::IsNull { column, negated } => Pred::IsNull {
            col: resolve(*column)?,
            negated: *negated,
        },
        Predicate::Cmp {
            column,
            op,
            value,
            bytewise_text,
        } => {
            let col = resolve(*column)?;
            let t = types[col];
            let refuse = |why: &str| {
                MergeError::unsupported(
                    format!("HAVING compares a {} value with {value}: {why}", types::type_name(t.oid)),
                    "Compare aggregates or grouped columns with numbers, strings or booleans the proxy can read, or give the shard key so that the query runs on one shard.",
                )
            };
            if types::usable(t.oid, t.format) != Usable::Decode {
                return Err(types::cannot_compare(t.oid, t.format));
            }
            let text = match value {
                Literal::Null => None,
                Literal::Number(s) | Literal::String(s) => Some(s.as_str()),
                Literal::Bool(b) => Some(if *b { "true" } else { "false" }),
            };
            let lit = match (t.oid, text) {
                (_, None) => Lit::Null,
                (oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::NUMERIC, Some(s)) => {
                    Lit::Num(Numeric::parse_text(s).map_err(|e| refuse(&e.0))?)
                }
                (oid::FLOAT4 | oid::FLOAT8, Some(s)) => Lit::Float(
                    s.trim()
                        .parse::<f64>()
                        .map_err(|_| refuse("not a number"))?,
                ),
                (oid::BOOL, Some(s)) => Lit::Bool(match s.to_ascii_lowercase().as_str() {
                    "t" | "true" | "yes" | "on" | "1" => true,
                    "f" | "false" | "no" | "off" | "0" => false,
                    _ => return Err(refuse("not a boolean")),
                }),
                (oid::TEXT | oid::VARCHAR | oid::NAME | oid::CHAR | oid::UNKNOWN, Some(s)) => {
                    Lit::Bytes(s.as_bytes().to_vec())
                }
                (oid::BPCHAR, Some(s)) => Lit::Bytes(s.trim_end_matches(' ').as_bytes().to_vec()),
                _ => return Err(refuse("the proxy does not read such constants")),
            };
            if types::is_collatable(t.oid) && !bytewise_text && !matches!(op, CmpOp::Eq | CmpOp::Ne)
            {
                return Err(text_order_refusal(t.oid));
            }
            Pred::Cmp {
                col,
                t,
                op: *op,
                lit,
            }
        }
    })
}

/// Three-valued: None is NULL (unknown).
fn eval(p: &Pred, row: &Row) -> Result<Option<bool>, MergeError> {
    Ok(match p {
        Pred::IsNull { col, negated } => Some(row.get(*col).is_none() != *negated),
        Pred::Not(p) => eval(p, row)?.map(|b| !b),
        Pred::And(ps) => {
            let mut out = Some(true);
            for p in ps {
                match eval(p, row)? {
                    Some(false) => return Ok(Some(false)),
                    None => out = None,
                    Some(true) => {}
                }
            }
            out
        }
        Pred::Or(ps) => {
            let mut out = Some(false);
            for p in ps {
                match eval(p, row)? {
                    Some(true) => return Ok(Some(true)),
                    None => out = None,
                    Some(false) => {}
                }
            }
            out
        }
        Pred::Cmp { col, t, op, lit } => {
            let Some(raw) = row.get(*col) else {
                return Ok(None);
            };
            let v = types::decode(t.oid, t.format, raw)?;
            let o = match (lit, &v) {
                (Lit::Null, _) => return Ok(None),
                (Lit::Num(l), Value::Int(i)) => Numeric::from_i64(*i).cmp(l),
                (Lit::Num(l), Value::Numeric(n)) => n.cmp(l),
                (Lit::Float(l), Value::Float(f)) => {
                    types::compare(&Value::Float(*f), &Value::Float(*l))
                }
                (Lit::Bool(l), Value::Bool(b)) => b.cmp(l),
                (Lit::Bytes(l), Value::Bytes(b)) => b.as_ref().cmp(l.as_slice()),
                _ => {
                    return Err(MergeError::BadData(
                        "a HAVING value of an unexpected type".into(),
                    ))
                }
            };
            Some(match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            })
        }
    })
}
