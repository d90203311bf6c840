//! Shard maps: which shard holds which key, one YAML file per map.
//!
//! A map is `hash` (PostgreSQL's hash partitioning: `partitions` remainders assigned to
//! shards), `range` (half-open ranges, from inclusive, to exclusive) or `list` (values per
//! shard, with an optional default). Loading checks every rule of the contract and reports
//! each violation as `file:line:col: message`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::load::Problem;

/// The SQL type of a shard key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Smallint,
    Integer,
    Bigint,
    Text,
    Varchar,
    Uuid,
    Date,
    Timestamptz,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Smallint => "smallint",
            KeyType::Integer => "integer",
            KeyType::Bigint => "bigint",
            KeyType::Text => "text",
            KeyType::Varchar => "varchar",
            KeyType::Uuid => "uuid",
            KeyType::Date => "date",
            KeyType::Timestamptz => "timestamptz",
        }
    }
}

/// A key value of one of the [`KeyType`]s, in the form PostgreSQL hashes and orders it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyValue {
    /// smallint, integer, bigint.
    Int(i64),
    /// text, varchar.
    Text(String),
    Uuid([u8; 16]),
    /// Days since 2000-01-01.
    Date(i32),
    /// Microseconds since 2000-01-01 00:00 UTC.
    Timestamptz(i64),
}

/// PostgreSQL's epoch for dates and timestamps.
fn pg_epoch() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date")
}

impl KeyValue {
    /// Parses a key as PostgreSQL's input function for `ty` would (the common formats).
    pub fn parse(ty: KeyType, text: &str) -> Result<KeyValue, String> {
        let range_err =
            |ty: KeyType| format!("value \"{text}\" is out of range for type {}", ty.name());
        match ty {
            KeyType::Smallint | KeyType::Integer | KeyType::Bigint => {
                let v: i64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid input syntax for type {}: \"{text}\"", ty.name()))?;
                let ok = match ty {
                    KeyType::Smallint => i16::try_from(v).is_ok(),
                    KeyType::Integer => i32::try_from(v).is_ok(),
                    _ => true,
                };
                if ok {
                    Ok(KeyValue::Int(v))
                } else {
                    Err(range_err(ty))
                }
            }
            KeyType::Text | KeyType::Varchar => Ok(KeyValue::Text(text.to_owned())),
            KeyType::Uuid => uuid::Uuid::parse_str(text.trim())
                .map(|u| KeyValue::Uuid(*u.as_bytes()))
                .map_err(|_| format!("invalid input syntax for type uuid: \"{text}\"")),
            KeyType::Date => match infinity(text) {
                Some(true) => Ok(KeyValue::Date(i32::MAX)),
                Some(false) => Ok(KeyValue::Date(i32::MIN)),
                None => chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                    .map(|d| KeyValue::Date((d - pg_epoch()).num_days() as i32)),
            }
                .map_err(|_| format!("invalid input syntax for type date: \"{text}\" (use YYYY-MM-DD)")),
            KeyType::Timestamptz => match infinity(text) {
                Some(true) => Some(i64::MAX),
                Some(false) => Some(i64::MIN),
                None => parse_timestamptz(text.trim()),
            }
                .map(KeyValue::Timestamptz)
                .ok_or_else(|| {
                    format!(
                        "invalid input syntax for type timestamptz: \"{text}\" (use YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]], UTC when no offset)"
                    )
                }),
        }
    }
}

/// A key as a map would write it: integers plainly, dates as YYYY-MM-DD, timestamps as
/// `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (UTC), `infinity`/`-infinity`, UUIDs hyphenated, and
/// text as is unless it needs quotes to be read back as the same text.
impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Text(t) if plain_text(t) => f.write_str(t),
            KeyValue::Text(t) => write!(f, "{t:?}"),
            KeyValue::Uuid(b) => write!(f, "{}", uuid::Uuid::from_bytes(*b)),
            KeyValue::Date(i32::MAX) | KeyValue::Timestamptz(i64::MAX) => f.write_str("infinity"),
            KeyValue::Date(i32::MIN) | KeyValue::Timestamptz(i64::MIN) => f.write_str("-infinity"),
            KeyValue::Date(days) => {
                let epoch = pg_epoch();
                let offset = chrono::Days::new(days.unsigned_abs().into());
                let date = if *days < 0 {
                    epoch.checked_sub_days(offset)
                } else {
                    epoch.checked_add_days(offset)
                };
                match date {
                    Some(d) => write!(f, "{}", d.format("%Y-%m-%d")),
                    None => write!(f, "{days} days from 2000-01-01"),
                }
            }
            KeyValue::Timestamptz(us) => {
                let (secs, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
                let t = pg_epoch()
                    .and_hms_opt(0, 0, 0)
                    .and_then(|t0| t0.checked_add_signed(chrono::TimeDelta::try_seconds(secs)?));
                let Some(t) = t else {
                    return write!(f, "{us} microseconds from 2000-01-01 00:00:00+00");
                };
                write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S"))?;
                if frac != 0 {
                    let digits = format!("{frac:06}");
                    write!(f, ".{}", digits.trim_end_matches('0'))?;
                }
                f.write_str("+00")
            }
        }
    }
}

/// Text that reads back as itself without quotes and cannot be taken for a null, a boolean
/// or a missing bound.
fn plain_text(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@'))
        && !["null", "unbounded", "true", "false"]
            .iter()
            .any(|w| t.eq_ignore_ascii_case(w))
}

/// `infinity` (`Some(true)`) or `-infinity` (`Some(false)`), which PostgreSQL stores as the
/// largest and smallest date or timestamp.
fn infinity(text: &str) -> Option<bool> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("infinity") || t.eq_ignore_ascii_case("+infinity") {
        Some(true)
    } else if t.eq_ignore_ascii_case("-infinity") {
        Some(false)
    } else {
        None
    }
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.f]][Z|±HH[:MM]]` or a bare date, as microseconds since the epoch.
fn parse_timestamptz(s: &str) -> Option<i64> {
    let t0 = pg_epoch().and_hms_opt(0, 0, 0)?.and_utc();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return (d.and_hms_opt(0, 0, 0)?.and_utc() - t0).num_microseconds();
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return (t.with_timezone(&chrono::Utc) - t0).num_microseconds();
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(naive, f) {
            return (t.and_utc() - t0).num_microseconds();
        }
    }
    None
}

/// One or several of something, as YAML allows either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A bound or list value as written: YAML scalars of any kind, kept as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, a string or null")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Err(E::custom(format!(
                    "{v} is not an integer, a string or null"
                )))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    Hash,
    Range,
    List,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    from: Spanned<Scalar>,
    to: Spanned<Scalar>,
    shard: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    table: Spanned<String>,
    #[serde(default)]
    column: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
}

/// `assign:` as written: shard → partitions, each with its place in the file.
type Assign = Spanned<BTreeMap<String, Spanned<Vec<Spanned<u64>>>>>;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    name: String,
    #[serde(rename = "type")]
    kind: MapKind,
    key_type: Spanned<OneOrMany<KeyType>>,
    #[serde(default)]
    partitions: Option<Spanned<u64>>,
    #[serde(default)]
    assign: Option<Assign>,
    #[serde(default)]
    ranges: Option<Spanned<Vec<RawRange>>>,
    #[serde(default)]
    values: Option<Spanned<BTreeMap<String, Vec<Spanned<Scalar>>>>>,
    #[serde(default)]
    default: Option<Spanned<String>>,
    tables: Vec<RawTable>,
}

/// A half-open key range and its shard (`None` bounds are unbounded).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRange {
    pub from: Option<KeyValue>,
    pub to: Option<KeyValue>,
    pub shard: String,
}

/// How a map assigns keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// `shards[r]` holds remainder `r` of PostgreSQL's hash modulo `shards.len()`.
    Hash { shards: Vec<String> },
    /// Sorted, non-overlapping ranges; keys outside every range go to `default`.
    Range {
        ranges: Vec<KeyRange>,
        default: Option<String>,
    },
    /// Values and their shard; other values go to `default`.
    List {
        values: BTreeMap<KeyValue, String>,
        default: Option<String>,
    },
}

/// A table whose rows a map places, by these columns.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedTable {
    pub table: String,
    pub columns: Vec<String>,
}

/// A validated shard map.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMap {
    pub name: String,
    pub key_types: Vec<KeyType>,
    pub rule: Rule,
    pub tables: Vec<MappedTable>,
}

impl ShardMap {
    /// Every shard the map can send a key to.
    pub fn shards(&self) -> Vec<&str> {
        let mut out: Vec<&str> = match &self.rule {
            Rule::Hash { shards } => shards.iter().map(String::as_str).collect(),
            Rule::Range { ranges, default } => ranges
                .iter()
                .map(|r| r.shard.as_str())
                .chain(default.as_deref())
                .collect(),
            Rule::List { values, default } => values
                .values()
                .map(String::as_str)
                .chain(default.as_deref())
                .collect(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn at(file: &Path, loc: &serde_saphyr::Location, message: String) -> Problem {
    Problem {
        file: file.to_owned(),
        line: loc.line(),
        column: loc.column(),
        message,
    }
}

/// Loads and validates one shard map; `shards` are the shards the database defines.
pub fn load_shard_map(file: &Path, text: &str, shards: &[&str]) -> Result<ShardMap, Vec<Problem>> {
    let raw: RawMap =
        serde_saphyr::from_str(text).map_err(|e| vec![crate::load::parse_problem(file, &e)])?;
    let mut problems = Vec::new();
    let name = raw.name.clone();
    let key_types = raw.key_type.value.to_vec();
    if key_types.is_empty() {
        problems.push(at(
            file,
            &raw.key_type.referenced,
            format!("map `{name}`: key_type is empty"),
        ));
    }
    let known = |s: &str| shards.contains(&s);
    let check_shard = |problems: &mut Vec<Problem>, s: &Spanned<String>| {
        if !known(&s.value) {
            problems.push(at(
                file,
                &s.referenced,
                format!(
                    "map `{name}`: shard `{}` is not defined in the database (shards: {})",
                    s.value,
                    shards.join(", ")
                ),
            ));
        }
    };
    let single_key = |problems: &mut Vec<Problem>, what: &str| {
        if key_types.len() != 1 {
            problems.push(at(
                file,
                &raw.key_type.referenced,
                format!("map `{name}`: a {what} map has exactly one key column"),
            ));
        }
    };
    let rule = match raw.kind {
        MapKind::Hash => {
            let Some(partitions) = raw.partitions.as_ref() else {
                return Err(vec![Problem {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: format!("map `{name}`: a hash map needs `partitions`"),
                }]);
            };
            let n = partitions.value;
            if n == 0 || n > 65_536 {
                problems.push(at(
                    file,
                    &partitions.referenced,
                    format!("map `{name}`: partitions must be between 1 and 65536, not {n}"),
                ));
            }
            let mut owner: Vec<Option<String>> = vec![None; n.min(65_536) as usize];
            match raw.assign.as_ref() {
                None => problems.push(at(
                    file,
                    &partitions.referenced,
                    format!("map `{name}`: a hash map needs `assign`"),
                )),
                Some(assign) => {
                    for (shard, parts) in &assign.value {
                        if !known(shard) {
                            problems.push(at(file, &parts.referenced, format!("map `{name}`: shard `{shard}` is not defined in the database (shards: {})", shards.join(", "))));
                        }
                        for p in &parts.value {
                            let r = p.value;
                            match owner.get_mut(r as usize) {
                                None => problems.push(at(file, &p.referenced, format!("map `{name}`: partition {r} does not exist (partitions: {n}, so 0 to {})", n.saturating_sub(1)))),
                                Some(Some(other)) => problems.push(at(file, &p.referenced, format!("map `{name}`: partition {r} is assigned twice (to `{other}` and `{shard}`)"))),
                                Some(slot) => *slot = Some(shard.clone()),
                            }
                        }
                    }
                    let missing: Vec<String> = owner
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| o.is_none())
                        .map(|(i, _)| i.to_string())
                        .collect();
                    if !missing.is_empty() {
                        problems.push(at(
                            file,
                            &assign.referenced,
                            format!(
                                "map `{name}`: partition(s) {} assigned to no shard",
                                missing.join(", ")
                            ),
                        ));
                    }
                }
            }
            Rule::Hash {
                shards: owner.into_iter().map(Option::unwrap_or_default).collect(),
            }
        }
        MapKind::Range => {
            single_key(&mut problems, "range");
            let ty = key_types.first().copied().unwrap_or(KeyType::Bigint);
            let default = raw.default.as_ref().map(|d| {
                check_shard(&mut problems, d);
                d.value.clone()
            });
            let mut ranges = Vec::new();
            // Ranges with unreadable bounds are not compared with their neighbours.
            let mut bad_bound = false;
            let raw_ranges = raw
                .ranges
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default();
            if raw_ranges.is_empty() {
                problems.push(Problem {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: format!("map `{name}`: a range map needs `ranges`"),
                });
            }
            for r in &raw_ranges {
                check_shard(&mut problems, &r.shard);
                let bound =
                    |problems: &mut Vec<Problem>, b: &Spanned<Scalar>| -> Option<KeyValue> {
                        let text = b.value.0.as_deref()?;
                        match KeyValue::parse(ty, text) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                problems.push(at(
                                    file,
                                    &b.referenced,
                                    format!(
                                        "map `{name}`: bound cannot be held by key_type {}: {e}",
                                        ty.name()
                                    ),
                                ));
                                None
                            }
                        }
                    };
                let before = problems.len();
                let from = bound(&mut problems, &r.from);
                let to = bound(&mut problems, &r.to);
                bad_bound |= problems.len() > before;
                if let (Some(f), Some(t)) = (&from, &to) {
                    if f >= t {
                        problems.push(at(
                            file,
                            &r.from.referenced,
                            format!("map `{name}`: range is empty (from must be below to)"),
                        ));
                    }
                }
                ranges.push((from, to, r.shard.value.clone(), r.from.referenced));
            }
            // Sort by lower bound (unbounded first) and check neighbours.
            ranges.sort_by(|a, b| match (&a.0, &b.0) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, _) => std::cmp::Ordering::Less,
                (_, None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.cmp(y),
            });
            for w in ranges.windows(2).filter(|_| !bad_bound) {
                let (prev, next) = (&w[0], &w[1]);
                match (&prev.1, &next.0) {
                    (None, _) | (_, None) => problems.push(at(file, &next.3, format!("map `{name}`: ranges overlap"))),
                    (Some(pt), Some(nf)) if pt > nf => problems.push(at(file, &next.3, format!("map `{name}`: ranges overlap"))),
                    (Some(pt), Some(nf)) if pt < nf && default.is_none() => problems.push(at(
                        file,
                        &next.3,
                        format!("map `{name}`: gap between ranges (keys from {pt} up to {nf} have no shard); close it or give a `default`"),
                    )),
                    _ => {}
                }
            }
            if default.is_none() && !bad_bound {
                if let Some(first) = ranges.first() {
                    if first.0.is_some() {
                        problems.push(at(file, &first.3, format!("map `{name}`: keys below the first range have no shard; start it with `from: null` or give a `default`")));
                    }
                }
                if let Some(last) = ranges.last() {
                    if last.1.is_some() {
                        problems.push(at(file, &last.3, format!("map `{name}`: keys from the last range's `to` up have no shard; end it with `to: null` or give a `default`")));
                    }
                }
            }
            Rule::Range {
                ranges: ranges
                    .into_iter()
                    .map(|(from, to, shard, _)| KeyRange { from, to, shard })
                    .collect(),
                default,
            }
        }
        MapKind::List => {
            single_key(&mut problems, "list");
            let ty = key_types.first().copied().unwrap_or(KeyType::Text);
            let default = raw.default.as_ref().map(|d| {
                check_shard(&mut problems, d);
                d.value.clone()
            });
            let mut values = BTreeMap::new();
            match raw.values.as_ref() {
                None => problems.push(Problem {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: format!("map `{name}`: a list map needs `values`"),
                }),
                Some(v) => {
                    for (shard, items) in &v.value {
                        if !known(shard) {
                            problems.push(at(file, &v.referenced, format!("map `{name}`: shard `{shard}` is not defined in the database (shards: {})", shards.join(", "))));
                        }
                        for item in items {
                            let Some(text) = item.value.0.as_deref() else {
                                problems.push(at(
                                    file,
                                    &item.referenced,
                                    format!("map `{name}`: null is not a list value"),
                                ));
                                continue;
                            };
                            match KeyValue::parse(ty, text) {
                                Ok(k) => {
                                    if let Some(other) = values.insert(k, shard.clone()) {
                                        problems.push(at(file, &item.referenced, format!("map `{name}`: value `{text}` is listed twice (for `{other}` and `{shard}`)")));
                                    }
                                }
                                Err(e) => problems.push(at(
                                    file,
                                    &item.referenced,
                                    format!(
                                        "map `{name}`: value cannot be held by key_type {}: {e}",
                                        ty.name()
                                    ),
                                )),
                            }
                        }
                    }
                }
            }
            Rule::List { values, default }
        }
    };
    if raw.kind != MapKind::Hash && (raw.partitions.is_some() || raw.assign.is_some()) {
        problems.push(Problem {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: format!("map `{name}`: `partitions` and `assign` belong to hash maps"),
        });
    }
    let mut tables = Vec::new();
    for t in &raw.tables {
        let columns = match (&t.column, &t.columns) {
            (Some(c), None) => vec![c.clone()],
            (None, Some(cs)) => cs.clone(),
            _ => {
                problems.push(at(
                    file,
                    &t.table.referenced,
                    format!(
                        "map `{name}`: table `{}` needs `column` or `columns` (one of them)",
                        t.table.value
                    ),
                ));
                continue;
            }
        };
        if columns.len() != key_types.len() {
            problems.push(at(
                file,
                &t.table.referenced,
                format!(
                    "map `{name}`: table `{}` names {} key column(s) for {} key type(s)",
                    t.table.value,
                    columns.len(),
                    key_types.len()
                ),
            ));
        }
        if tables
            .iter()
            .any(|m: &MappedTable| m.table == t.table.value)
        {
            problems.push(at(
                file,
                &t.table.referenced,
                format!("map `{name}`: table `{}` is mapped twice", t.table.value),
            ));
        }
        tables.push(MappedTable {
            table: t.table.value.clone(),
            columns,
        });
    }
    if problems.is_empty() {
        Ok(ShardMap {
            name,
            key_types,
            rule,
            tables,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARDS: &[&str] = &["s0", "s1"];

    /// Loads a broken map and returns its single problem as (line, message).
    fn problem(text: &str) -> (u64, String) {
        let ps = load_shard_map(Path::new("m.yaml"), text, SHARDS).expect_err("the map is broken");
        assert_eq!(ps.len(), 1, "{ps:?}");
        (ps[0].line, ps[0].message.clone())
    }

    fn expect(text: &str, line: u64, words: &str) {
        let (l, m) = problem(text);
        assert!(m.contains(words), "message {m:?} lacks {words:?}");
        assert_eq!(l, line, "line of {m:?}");
    }

    const TABLES: &str = "tables: [{ table: t, column: id }]\n";

    #[test]
    fn overlapping_ranges() {
        let t = format!("name: r\ntype: range\nkey_type: bigint\nranges:\n  - {{ from: null, to: 100, shard: s0 }}\n  - {{ from: 50, to: null, shard: s1 }}\n{TABLES}");
        expect(&t, 6, "ranges overlap");
    }

    #[test]
    fn gapped_ranges_without_default() {
        let t = format!("name: r\ntype: range\nkey_type: bigint\nranges:\n  - {{ from: null, to: 100, shard: s0 }}\n  - {{ from: 200, to: null, shard: s1 }}\n{TABLES}");
        expect(
            &t,
            6,
            "gap between ranges (keys from 100 up to 200 have no shard)",
        );
        let dates = format!("name: r\ntype: range\nkey_type: date\nranges:\n  - {{ from: null, to: 2024-01-01, shard: s0 }}\n  - {{ from: 2024-06-01, to: null, shard: s1 }}\n{TABLES}");
        expect(
            &dates,
            6,
            "keys from 2024-01-01 up to 2024-06-01 have no shard",
        );
        // With a default the gap is fine.
        let ok = t.replace("tables:", "default: s0\ntables:");
        assert!(load_shard_map(Path::new("m.yaml"), &ok, SHARDS).is_ok());
    }

    #[test]
    fn open_ends_without_default() {
        let t = format!("name: r\ntype: range\nkey_type: bigint\nranges:\n  - {{ from: 0, to: null, shard: s0 }}\n{TABLES}");
        expect(&t, 5, "keys below the first range");
    }

    #[test]
    fn partition_assigned_twice() {
        let t = format!("name: h\ntype: hash\nkey_type: bigint\npartitions: 4\nassign:\n  s0: [0, 1]\n  s1: [1, 2, 3]\n{TABLES}");
        expect(&t, 7, "partition 1 is assigned twice");
    }

    #[test]
    fn partition_never_assigned() {
        let t = format!("name: h\ntype: hash\nkey_type: bigint\npartitions: 4\nassign:\n  s0: [0, 1]\n  s1: [3]\n{TABLES}");
        expect(&t, 6, "partition(s) 2 assigned to no shard");
    }

    #[test]
    fn partition_out_of_range() {
        let t = format!("name: h\ntype: hash\nkey_type: bigint\npartitions: 2\nassign: {{ s0: [0], s1: [1, 2] }}\n{TABLES}");
        expect(&t, 5, "partition 2 does not exist");
    }

    #[test]
    fn shard_not_defined() {
        let t = format!("name: r\ntype: range\nkey_type: bigint\nranges:\n  - {{ from: null, to: null, shard: s9 }}\n{TABLES}");
        expect(&t, 5, "shard `s9` is not defined");
        let t = format!(
            "name: h\ntype: hash\nkey_type: bigint\npartitions: 1\nassign:\n  s7: [0]\n{TABLES}"
        );
        expect(&t, 6, "shard `s7` is not defined");
    }

    #[test]
    fn key_type_cannot_hold_the_bound() {
        let t = format!("name: r\ntype: range\nkey_type: smallint\nranges:\n  - {{ from: null, to: 100000, shard: s0 }}\n  - {{ from: 100000, to: null, shard: s1 }}\n{TABLES}");
        let ps = load_shard_map(Path::new("m.yaml"), &t, SHARDS).unwrap_err();
        assert!(
            ps.iter()
                .all(|p| p.message.contains("out of range for type smallint")),
            "{ps:?}"
        );
        assert_eq!(ps[0].line, 5);
        let t = format!("name: r\ntype: range\nkey_type: date\nranges:\n  - {{ from: null, to: 2024-13-01, shard: s0 }}\n  - {{ from: 2024-13-01, to: null, shard: s1 }}\n{TABLES}");
        let ps = load_shard_map(Path::new("m.yaml"), &t, SHARDS).unwrap_err();
        assert!(
            ps[0].message.contains("invalid input syntax for type date"),
            "{ps:?}"
        );
        let t = format!(
            "name: l\ntype: list\nkey_type: uuid\nvalues: {{ s0: [not-a-uuid] }}\n{TABLES}"
        );
        expect(&t, 4, "invalid input syntax for type uuid");
    }

    #[test]
    fn table_mapped_twice() {
        let t = "name: h\ntype: hash\nkey_type: bigint\npartitions: 1\nassign: { s0: [0] }\ntables:\n  - { table: t, column: id }\n  - { table: t, column: other }\n";
        expect(t, 8, "table `t` is mapped twice");
    }

    #[test]
    fn list_value_twice() {
        let t = format!(
            "name: l\ntype: list\nkey_type: text\nvalues:\n  s0: [us, ca]\n  s1: [ca]\n{TABLES}"
        );
        expect(&t, 6, "value `ca` is listed twice");
    }

    #[test]
    fn unknown_keys_and_types() {
        let t = format!("name: h\ntype: hash\nkey_type: bigint\npartitions: 1\nassign: {{ s0: [0] }}\nmodulus: 4\n{TABLES}");
        let (l, m) = problem(&t);
        assert_eq!(l, 6, "{m}");
        assert!(m.contains("modulus"), "{m}");
        let t = format!(
            "name: h\ntype: hash\nkey_type: float8\npartitions: 1\nassign: {{ s0: [0] }}\n{TABLES}"
        );
        let (l, m) = problem(&t);
        assert_eq!(l, 3, "{m}");
    }

    #[test]
    fn parser_errors_give_their_place_once() {
        for (t, line) in [
            (format!("name: h\ntype: hash\nkey_type: bigint\npartitions: many\nassign: {{ s0: [0] }}\n{TABLES}"), 4),
            (format!("name: h\ntype: hash\nkey_type: bigint\npartitions: 1\nassign: {{ s0: [0]\n{TABLES}"), 6),
        ] {
            let (l, m) = problem(&t);
            assert_eq!(l, line, "{m}");
            assert!(
                !m.is_empty() && !m.contains(&format!("line {line}")),
                "the place is given twice: {m}"
            );
        }
    }

    #[test]
    fn multi_column_hash_keys() {
        let t = "name: h\ntype: hash\nkey_type: [bigint, text]\npartitions: 2\nassign: { s0: [0], s1: [1] }\ntables: [{ table: t, columns: [a, b] }]\n";
        let m = load_shard_map(Path::new("m.yaml"), t, SHARDS).unwrap();
        assert_eq!(m.key_types, vec![KeyType::Bigint, KeyType::Text]);
        let bad = t.replace("columns: [a, b]", "column: a");
        expect(&bad, 6, "names 1 key column(s) for 2 key type(s)");
    }

    #[test]
    fn key_values_display_as_written() {
        let shown = |ty: KeyType, text: &str| KeyValue::parse(ty, text).unwrap().to_string();
        assert_eq!(shown(KeyType::Date, "2024-01-01"), "2024-01-01");
        assert_eq!(shown(KeyType::Date, "1999-12-31"), "1999-12-31");
        assert_eq!(shown(KeyType::Date, "infinity"), "infinity");
        assert_eq!(shown(KeyType::Date, "-infinity"), "-infinity");
        assert_eq!(shown(KeyType::Bigint, "-42"), "-42");
        assert_eq!(shown(KeyType::Smallint, " 7"), "7");
        assert_eq!(
            shown(KeyType::Timestamptz, "2024-03-01 00:00:00+00"),
            "2024-03-01 00:00:00+00"
        );
        assert_eq!(
            shown(KeyType::Timestamptz, "2024-03-01T12:30:00Z"),
            "2024-03-01 12:30:00+00"
        );
        assert_eq!(
            shown(KeyType::Timestamptz, "2000-01-01 01:00:01.25+01"),
            "2000-01-01 00:00:01.25+00"
        );
        assert_eq!(
            shown(KeyType::Timestamptz, "1999-12-31 23:59:59.5"),
            "1999-12-31 23:59:59.5+00"
        );
        assert_eq!(shown(KeyType::Timestamptz, "-infinity"), "-infinity");
        assert_eq!(
            shown(KeyType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(shown(KeyType::Text, "m"), "m");
        assert_eq!(shown(KeyType::Text, "new york"), "\"new york\"");
        assert_eq!(shown(KeyType::Text, ""), "\"\"");
        assert_eq!(shown(KeyType::Text, "null"), "\"null\"");
        assert_eq!(shown(KeyType::Text, "unbounded"), "\"unbounded\"");
    }

    #[test]
    fn key_values_parse_like_postgresql() {
        assert_eq!(
            KeyValue::parse(KeyType::Date, "2000-01-02"),
            Ok(KeyValue::Date(1))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Date, "1999-12-31"),
            Ok(KeyValue::Date(-1))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Timestamptz, "2000-01-01 01:00:00+01"),
            Ok(KeyValue::Timestamptz(0))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Timestamptz, "2000-01-01T00:00:01.5Z"),
            Ok(KeyValue::Timestamptz(1_500_000))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Date, "Infinity"),
            Ok(KeyValue::Date(i32::MAX))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Date, "-infinity"),
            Ok(KeyValue::Date(i32::MIN))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Timestamptz, " infinity"),
            Ok(KeyValue::Timestamptz(i64::MAX))
        );
        assert_eq!(
            KeyValue::parse(KeyType::Timestamptz, "-infinity"),
            Ok(KeyValue::Timestamptz(i64::MIN))
        );
        assert!(KeyValue::parse(KeyType::Integer, "2147483648").is_err());
        assert_eq!(
            KeyValue::parse(KeyType::Smallint, "-32768"),
            Ok(KeyValue::Int(-32768))
        );
    }
}
