//! Values as the shards send them, decoded only to be compared, and compared exactly as
//! PostgreSQL's default btree operator classes compare them.
//!
//! Every type is read in BINARY format. TEXT format is read only where the text does not
//! depend on session settings (integers, oid, numeric, floats, bool, the text types, uuid,
//! bytea in hex); dates, times, timestamps and intervals print according to DateStyle,
//! IntervalStyle and TimeZone, so in text they cannot be ordered: the planner fetches a
//! binary helper column for them instead. For equality (GROUP BY, DISTINCT) the text of
//! dates, times and timestamps is usable as it is (one value, one text, in a session), that
//! of intervals is not (`1 mon` and `30 days` are equal).
//!
//! Text types compare bytewise: that is the "C" collation; ordering text under any other
//! collation is refused by the caller. `bpchar` ignores trailing spaces, as PostgreSQL's
//! `bpcharcmp` does.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::error::MergeError;
use crate::numeric::Numeric;

/// Type OIDs of the types the merge understands (`pg_type.oid`).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
}

/// The SQL name of a type, for messages.
pub fn type_name(t: u32) -> String {
    match t {
        oid::BOOL => "boolean",
        oid::BYTEA => "bytea",
        oid::CHAR => "\"char\"",
        oid::NAME => "name",
        oid::INT8 => "bigint",
        oid::INT2 => "smallint",
        oid::INT4 => "integer",
        oid::TEXT => "text",
        oid::OID => "oid",
        oid::FLOAT4 => "real",
        oid::FLOAT8 => "double precision",
        oid::UNKNOWN => "unknown",
        oid::BPCHAR => "character",
        oid::VARCHAR => "character varying",
        oid::DATE => "date",
        oid::TIME => "time without time zone",
        oid::TIMESTAMP => "timestamp without time zone",
        oid::TIMESTAMPTZ => "timestamp with time zone",
        oid::INTERVAL => "interval",
        oid::TIMETZ => "time with time zone",
        oid::NUMERIC => "numeric",
        oid::UUID => "uuid",
        other => return format!("with OID {other}"),
    }
    .to_owned()
}

/// Whether ordering values of type `t` depends on the collation (text, varchar, bpchar;
/// `name` is always "C").
pub fn is_collatable(t: u32) -> bool {
    matches!(t, oid::TEXT | oid::VARCHAR | oid::BPCHAR)
}

/// A result column's format code, as in Bind and RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }

    /// Bind's result-format codes for `n` columns: none means all text, one applies to
    /// all, otherwise one per column.
    pub fn per_column(codes: &[i16], n: usize) -> Result<Vec<Format>, MergeError> {
        let bad = || MergeError::Usage(format!("{} result formats for {n} columns", codes.len()));
        match codes.len() {
            0 => Ok(vec![Format::Text; n]),
            1 => Ok(vec![Format::from_code(codes[0]).ok_or_else(bad)?; n]),
            l if l == n => codes
                .iter()
                .map(|c| Format::from_code(*c).ok_or_else(bad))
                .collect(),
            _ => Err(bad()),
        }
    }
}

/// A decoded value, borrowing the row's bytes where it can.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Int(i64),
    Float(f64),
    Numeric(Numeric),
    Bool(bool),
    /// Text types (bytewise, C collation), bytea, uuid, "char".
    Bytes(Cow<'a, [u8]>),
    /// Days since 2000-01-01; ±infinity are i32::MAX / i32::MIN and order as such.
    Date(i32),
    /// Microseconds: time of day, or timestamps since 2000-01-01 (±infinity at the ends).
    Micros(i64),
    /// timetz: time of day in microseconds and the zone in seconds west of UTC.
    TimeTz(i64, i32),
    /// An interval as PostgreSQL compares it: microseconds with a month of 30 days.
    Interval(i128),
}

/// How a column of some type in some format can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Decoded and compared.
    Decode,
    /// Not ordered, but equal values have equal bytes (GROUP BY, DISTINCT may use them).
    EqualBytes,
    /// Neither.
    No,
}

/// What the merge can do with type `t` in `format`.
pub fn usable(t: u32, format: Format) -> Usable {
    match (t, format) {
        (
            oid::INT2
            | oid::INT4
            | oid::INT8
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::NUMERIC
            | oid::BOOL
            | oid::TEXT
            | oid::VARCHAR
            | oid::NAME
            | oid::BPCHAR
            | oid::CHAR
            | oid::UNKNOWN
            | oid::UUID
            | oid::BYTEA,
            _,
        ) => Usable::Decode,
        (
            oid::DATE | oid::TIME | oid::TIMETZ | oid::TIMESTAMP | oid::TIMESTAMPTZ,
            Format::Binary,
        )
        | (oid::INTERVAL, Format::Binary) => Usable::Decode,
        (oid::DATE | oid::TIME | oid::TIMETZ | oid::TIMESTAMP | oid::TIMESTAMPTZ, Format::Text) => {
            Usable::EqualBytes
        }
        _ => Usable::No,
    }
}

/// The error for a value the merge must order but cannot read.
pub fn cannot_compare(t: u32, format: Format) -> MergeError {
    let how = match format {
        Format::Text => " in text format",
        Format::Binary => "",
    };
    MergeError::unsupported(
        format!("cannot compare type {}{how}", type_name(t)),
        "Ask for the column in binary format, cast it to a type the proxy compares (e.g. ::text with COLLATE \"C\", ::numeric), or run the query on one shard.",
    )
}

fn bad(t: u32, why: &str) -> MergeError {
    MergeError::BadData(format!(
        "a shard sent a {} value that does not decode: {why}",
        type_name(t)
    ))
}

fn fixed<const N: usize>(t: u32, raw: &[u8]) -> Result<[u8; N], MergeError> {
    raw.try_into().map_err(|_| bad(t, "wrong length"))
}

fn text(t: u32, raw: &[u8]) -> Result<&str, MergeError> {
    std::str::from_utf8(raw).map_err(|_| bad(t, "not UTF-8"))
}

fn trim_spaces(raw: &[u8]) -> &[u8] {
    let end = raw.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    &raw[..end]
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes a non-NULL value of type `t` sent in `format`.
pub fn decode(t: u32, format: Format, raw: &[u8]) -> Result<Value<'_>, MergeError> {
    use Format::*;
    Ok(match (t, format) {
        (oid::INT2, Binary) => Value::Int(i16::from_be_bytes(fixed(t, raw)?) as i64),
        (oid::INT4, Binary) => Value::Int(i32::from_be_bytes(fixed(t, raw)?) as i64),
        (oid::INT8, Binary) => Value::Int(i64::from_be_bytes(fixed(t, raw)?)),
        (oid::OID, Binary) => Value::Int(u32::from_be_bytes(fixed(t, raw)?) as i64),
        (oid::INT2 | oid::INT4 | oid::INT8 | oid::OID, Text) => Value::Int(
            text(t, raw)?
                .parse::<i64>()
                .map_err(|_| bad(t, "not an integer"))?,
        ),
        (oid::FLOAT4, Binary) => Value::Float(f32::from_be_bytes(fixed(t, raw)?) as f64),
        (oid::FLOAT8, Binary) => Value::Float(f64::from_be_bytes(fixed(t, raw)?)),
        (oid::FLOAT4, Text) => Value::Float(
            text(t, raw)?
                .parse::<f32>()
                .map_err(|_| bad(t, "not a number"))? as f64,
        ),
        (oid::FLOAT8, Text) => Value::Float(
            text(t, raw)?
                .parse::<f64>()
                .map_err(|_| bad(t, "not a number"))?,
        ),
        (oid::NUMERIC, Binary) => {
            Value::Numeric(Numeric::parse_binary(raw).map_err(|e| bad(t, &e.0))?)
        }
        (oid::NUMERIC, Text) => {
            Value::Numeric(Numeric::parse_text(text(t, raw)?).map_err(|e| bad(t, &e.0))?)
        }
        (oid::BOOL, Binary) => match raw {
            [b] => Value::Bool(*b != 0),
            _ => return Err(bad(t, "wrong length")),
        },
        (oid::BOOL, Text) => match raw {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(bad(t, "not t or f")),
        },
        (oid::BPCHAR, _) => Value::Bytes(Cow::Borrowed(trim_spaces(raw))),
        (oid::TEXT | oid::VARCHAR | oid::NAME | oid::CHAR | oid::UNKNOWN, _) => {
            Value::Bytes(Cow::Borrowed(raw))
        }
        (oid::BYTEA, Binary) => Value::Bytes(Cow::Borrowed(raw)),
        (oid::BYTEA, Text) => {
            let hex = raw
                .strip_prefix(b"\\x")
                .ok_or_else(|| cannot_compare(t, Text))?;
            if hex.len() % 2 != 0 {
                return Err(bad(t, "odd hex length"));
            }
            let mut out = Vec::with_capacity(hex.len() / 2);
            for pair in hex.chunks(2) {
                match (hex_nibble(pair[0]), hex_nibble(pair[1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(bad(t, "not hex")),
                }
            }
            Value::Bytes(Cow::Owned(out))
        }
        (oid::UUID, Binary) => Value::Bytes(Cow::Borrowed(fixed::<16>(t, raw).map(|_| raw)?)),
        (oid::UUID, Text) => {
            let mut out = Vec::with_capacity(16);
            let mut hi: Option<u8> = None;
            for c in raw
                .iter()
                .filter(|c| **c != b'-' && **c != b'{' && **c != b'}')
            {
                let n = hex_nibble(*c).ok_or_else(|| bad(t, "not hex"))?;
                match hi.take() {
                    None => hi = Some(n),
                    Some(h) => out.push(h << 4 | n),
                }
            }
            if out.len() != 16 || hi.is_some() {
                return Err(bad(t, "not 16 bytes"));
            }
            Value::Bytes(Cow::Owned(out))
        }
        (oid::DATE, Binary) => Value::Date(i32::from_be_bytes(fixed(t, raw)?)),
        (oid::TIME | oid::TIMESTAMP | oid::TIMESTAMPTZ, Binary) => {
            Value::Micros(i64::from_be_bytes(fixed(t, raw)?))
        }
        (oid::TIMETZ, Binary) => {
            let b: [u8; 12] = fixed(t, raw)?;
            Value::TimeTz(
                i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                i32::from_be_bytes(b[8..].try_into().expect("4 bytes")),
            )
        }
        (oid::INTERVAL, Binary) => {
            let b: [u8; 16] = fixed(t, raw)?;
            let micros = i64::from_be_bytes(b[..8].try_into().expect("8 bytes")) as i128;
            let days = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes")) as i128;
            let months = i32::from_be_bytes(b[12..].try_into().expect("4 bytes")) as i128;
            Value::Interval(micros + (months * 30 + days) * 86_400_000_000)
        }
        _ => return Err(cannot_compare(t, format)),
    })
}

/// PostgreSQL's float order: NaN equals NaN and sorts after every other value; -0 = 0.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compares two values of one column (same type).
pub fn compare(a: &Value<'_>, b: &Value<'_>) -> Ordering {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => cmp_float(*x, *y),
        (Numeric(x), Numeric(y)) => x.cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        (Bytes(x), Bytes(y)) => x.as_ref().cmp(y.as_ref()),
        (Date(x), Date(y)) => x.cmp(y),
        (Micros(x), Micros(y)) => x.cmp(y),
        // timetz_cmp: by the UTC instant, then by zone (equal only when both are).
        (TimeTz(t1, z1), TimeTz(t2, z2)) => {
            let u1 = *t1 as i128 + *z1 as i128 * 1_000_000;
            let u2 = *t2 as i128 + *z2 as i128 * 1_000_000;
            u1.cmp(&u2).then(z1.cmp(z2))
        }
        (Interval(x), Interval(y)) => x.cmp(y),
        // Different kinds never meet in one column; keep the order total anyway.
        _ => kind_rank(a).cmp(&kind_rank(b)),
    }
}

fn kind_rank(v: &Value<'_>) -> u8 {
    match v {
        Value::Int(_) => 0,
        Value::Float(_) => 1,
        Value::Numeric(_) => 2,
        Value::Bool(_) => 3,
        Value::Bytes(_) => 4,
        Value::Date(_) => 5,
        Value::Micros(_) => 6,
        Value::TimeTz(..) => 7,
        Value::Interval(_) => 8,
    }
}

/// Compares two possibly NULL values of a column, NULLs first or last.
pub fn compare_nullable(
    t: u32,
    format: Format,
    a: Option<&[u8]>,
    b: Option<&[u8]>,
    nulls_first: bool,
) -> Result<Ordering, MergeError> {
    Ok(match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) if nulls_first => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) if nulls_first => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => compare(&decode(t, format, x)?, &decode(t, format, y)?),
    })
}

/// Appends bytes that are equal for two values exactly when PostgreSQL's `=` holds (NULLs
/// equal each other, as GROUP BY and DISTINCT treat them): the key of a group.
pub fn key_bytes(
    t: u32,
    format: Format,
    raw: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), MergeError> {
    let Some(raw) = raw else {
        out.push(0);
        return Ok(());
    };
    out.push(1);
    let put_var = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    match usable(t, format) {
        Usable::EqualBytes => put_var(out, raw),
        Usable::No => return Err(cannot_compare(t, format)),
        Usable::Decode => match decode(t, format, raw)? {
            Value::Int(i) => out.extend_from_slice(&i.to_be_bytes()),
            Value::Float(f) => {
                let canon = if f.is_nan() {
                    f64::NAN.to_bits()
                } else if f == 0.0 {
                    0
                } else {
                    f.to_bits()
                };
                out.extend_from_slice(&canon.to_be_bytes());
            }
            Value::Numeric(n) => {
                let mut b = Vec::new();
                n.write_value_key(&mut b);
                put_var(out, &b);
            }
            Value::Bool(v) => out.push(v as u8),
            Value::Bytes(b) => put_var(out, &b),
            Value::Date(d) => out.extend_from_slice(&d.to_be_bytes()),
            Value::Micros(m) => out.extend_from_slice(&m.to_be_bytes()),
            Value::TimeTz(tm, z) => {
                out.extend_from_slice(&tm.to_be_bytes());
                out.extend_from_slice(&z.to_be_bytes());
            }
            Value::Interval(i) => out.extend_from_slice(&i.to_be_bytes()),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Format::*;

    fn cmp(t: u32, f: Format, a: &[u8], b: &[u8]) -> Ordering {
        compare(&decode(t, f, a).unwrap(), &decode(t, f, b).unwrap())
    }

    fn key(t: u32, f: Format, v: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        key_bytes(t, f, v, &mut out).unwrap();
        out
    }

    #[test]
    fn integers_in_both_formats() {
        assert_eq!(cmp(oid::INT4, Text, b"-5", b"3"), Ordering::Less);
        assert_eq!(
            cmp(
                oid::INT8,
                Binary,
                &(-1i64).to_be_bytes(),
                &1i64.to_be_bytes()
            ),
            Ordering::Less
        );
        assert_eq!(
            cmp(
                oid::INT2,
                Binary,
                &(7i16).to_be_bytes(),
                &(7i16).to_be_bytes()
            ),
            Ordering::Equal
        );
        // oid is unsigned.
        assert_eq!(
            cmp(
                oid::OID,
                Binary,
                &u32::MAX.to_be_bytes(),
                &1u32.to_be_bytes()
            ),
            Ordering::Greater
        );
        assert_eq!(cmp(oid::OID, Text, b"4294967295", b"1"), Ordering::Greater);
    }

    #[test]
    fn floats_order_nan_last_and_negative_zero_as_zero() {
        fn f(s: &str) -> Value<'_> {
            decode(oid::FLOAT8, Text, s.as_bytes()).unwrap()
        }
        let mut v: Vec<&str> = vec!["NaN", "1.5", "-Infinity", "Infinity", "-0", "0", "-2e300"];
        v.sort_by(|a, b| compare(&f(a), &f(b)));
        assert_eq!(
            v,
            ["-Infinity", "-2e300", "-0", "0", "1.5", "Infinity", "NaN"]
        );
        assert_eq!(compare(&f("NaN"), &f("NaN")), Ordering::Equal);
        assert_eq!(compare(&f("-0"), &f("0")), Ordering::Equal);
        assert_eq!(
            key(oid::FLOAT8, Text, Some(b"-0")),
            key(oid::FLOAT8, Text, Some(b"0"))
        );
        assert_eq!(
            key(oid::FLOAT8, Binary, Some(&f64::NAN.to_be_bytes())),
            key(oid::FLOAT8, Text, Some(b"NaN"))
        );
        assert_eq!(
            cmp(
                oid::FLOAT4,
                Binary,
                &f32::NAN.to_be_bytes(),
                &f32::INFINITY.to_be_bytes()
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn numerics_ignore_the_display_scale() {
        assert_eq!(cmp(oid::NUMERIC, Text, b"1.0", b"1.00"), Ordering::Equal);
        assert_eq!(
            cmp(oid::NUMERIC, Text, b"NaN", b"Infinity"),
            Ordering::Greater
        );
        assert_eq!(cmp(oid::NUMERIC, Text, b"NaN", b"NaN"), Ordering::Equal);
        assert_eq!(
            key(oid::NUMERIC, Text, Some(b"1.0")),
            key(oid::NUMERIC, Text, Some(b"1.000"))
        );
        assert_ne!(
            key(oid::NUMERIC, Text, Some(b"1.0")),
            key(oid::NUMERIC, Text, Some(b"1.01"))
        );
    }

    #[test]
    fn text_is_bytewise_and_bpchar_ignores_trailing_spaces() {
        assert_eq!(cmp(oid::TEXT, Text, b"B", b"a"), Ordering::Less);
        assert_eq!(cmp(oid::TEXT, Text, b"a", b"a "), Ordering::Less);
        assert_eq!(cmp(oid::VARCHAR, Binary, b"ab", b"abc"), Ordering::Less);
        assert_eq!(cmp(oid::BPCHAR, Text, b"a  ", b"a"), Ordering::Equal);
        assert_eq!(cmp(oid::BPCHAR, Text, b"a  ", b"a\t"), Ordering::Less);
        assert_eq!(
            key(oid::BPCHAR, Text, Some(b"x ")),
            key(oid::BPCHAR, Text, Some(b"x"))
        );
        // UTF-8 bytewise is code point order.
        assert_eq!(
            cmp(oid::TEXT, Text, "é".as_bytes(), b"z"),
            Ordering::Greater
        );
    }

    #[test]
    fn bools_uuids_and_bytea() {
        assert_eq!(cmp(oid::BOOL, Text, b"f", b"t"), Ordering::Less);
        assert_eq!(cmp(oid::BOOL, Binary, &[1], &[0]), Ordering::Greater);
        let u1 = b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let u2 = b"b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(cmp(oid::UUID, Text, u1, u2), Ordering::Less);
        let mut bin = [0u8; 16];
        bin[0] = 0xa0;
        assert_eq!(
            compare(
                &decode(oid::UUID, Binary, &bin).unwrap(),
                &decode(oid::UUID, Text, b"a0000000-0000-0000-0000-000000000000").unwrap()
            ),
            Ordering::Equal
        );
        assert_eq!(cmp(oid::BYTEA, Text, b"\\x00ff", b"\\x01"), Ordering::Less);
        assert_eq!(cmp(oid::BYTEA, Text, b"\\x01", b"\\x0100"), Ordering::Less);
        assert!(
            decode(oid::BYTEA, Text, b"abc").is_err(),
            "escape format depends on bytea_output"
        );
    }

    #[test]
    fn dates_and_timestamps_in_binary_including_infinities() {
        let d = |v: i32| v.to_be_bytes();
        assert_eq!(cmp(oid::DATE, Binary, &d(-1), &d(0)), Ordering::Less);
        assert_eq!(
            cmp(oid::DATE, Binary, &d(i32::MAX), &d(100_000)),
            Ordering::Greater
        );
        assert_eq!(
            cmp(oid::DATE, Binary, &d(i32::MIN), &d(-100_000)),
            Ordering::Less
        );
        let ts = |v: i64| v.to_be_bytes();
        assert_eq!(
            cmp(oid::TIMESTAMPTZ, Binary, &ts(i64::MAX), &ts(0)),
            Ordering::Greater
        );
        assert_eq!(
            cmp(oid::TIMESTAMP, Binary, &ts(i64::MIN), &ts(-5)),
            Ordering::Less
        );
        assert_eq!(cmp(oid::TIME, Binary, &ts(1), &ts(2)), Ordering::Less);
        // Text of settings-dependent types: never ordered, but equal bytes are equal values.
        for t in [
            oid::DATE,
            oid::TIME,
            oid::TIMETZ,
            oid::TIMESTAMP,
            oid::TIMESTAMPTZ,
        ] {
            let e = decode(t, Text, b"2020-01-01").unwrap_err();
            assert!(e.to_string().contains("in text format"), "{e}");
            assert_eq!(usable(t, Text), Usable::EqualBytes);
        }
        assert_eq!(usable(oid::INTERVAL, Text), Usable::No);
    }

    #[test]
    fn timetz_orders_by_instant_then_zone() {
        let tz = |micros: i64, zone: i32| {
            let mut b = micros.to_be_bytes().to_vec();
            b.extend_from_slice(&zone.to_be_bytes());
            b
        };
        // 12:00+01 (zone -3600 west) is 11:00 UTC, before 11:30+00.
        assert_eq!(
            cmp(
                oid::TIMETZ,
                Binary,
                &tz(12 * 3_600_000_000, -3600),
                &tz(41_400_000_000, 0)
            ),
            Ordering::Less
        );
        // Same instant, different zones: not equal.
        assert_ne!(
            cmp(
                oid::TIMETZ,
                Binary,
                &tz(12 * 3_600_000_000, -3600),
                &tz(11 * 3_600_000_000, 0)
            ),
            Ordering::Equal
        );
    }

    #[test]
    fn intervals_compare_by_span_with_thirty_day_months() {
        let iv = |micros: i64, days: i32, months: i32| {
            let mut b = micros.to_be_bytes().to_vec();
            b.extend_from_slice(&days.to_be_bytes());
            b.extend_from_slice(&months.to_be_bytes());
            b
        };
        assert_eq!(
            cmp(oid::INTERVAL, Binary, &iv(0, 0, 1), &iv(0, 30, 0)),
            Ordering::Equal
        );
        assert_eq!(
            cmp(
                oid::INTERVAL,
                Binary,
                &iv(86_400_000_000, 0, 0),
                &iv(0, 1, 0)
            ),
            Ordering::Equal
        );
        assert_eq!(
            cmp(oid::INTERVAL, Binary, &iv(1, 30, 0), &iv(0, 0, 1)),
            Ordering::Greater
        );
        assert_eq!(
            key(oid::INTERVAL, Binary, Some(&iv(0, 0, 1))),
            key(oid::INTERVAL, Binary, Some(&iv(0, 30, 0)))
        );
        // No overflow at the extremes.
        assert_eq!(
            cmp(
                oid::INTERVAL,
                Binary,
                &iv(i64::MAX, i32::MAX, i32::MAX),
                &iv(i64::MIN, i32::MIN, i32::MIN)
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn nulls_first_or_last_and_equal_as_keys() {
        let n = compare_nullable(oid::INT4, Text, None, Some(b"1"), true).unwrap();
        assert_eq!(n, Ordering::Less);
        let n = compare_nullable(oid::INT4, Text, None, Some(b"1"), false).unwrap();
        assert_eq!(n, Ordering::Greater);
        let n = compare_nullable(oid::INT4, Text, None, None, false).unwrap();
        assert_eq!(n, Ordering::Equal);
        assert_eq!(key(oid::TEXT, Text, None), key(oid::TEXT, Text, None));
        assert_ne!(key(oid::TEXT, Text, None), key(oid::TEXT, Text, Some(b"")));
    }

    #[test]
    fn result_formats_per_column() {
        assert_eq!(Format::per_column(&[], 2).unwrap(), [Text, Text]);
        assert_eq!(Format::per_column(&[1], 2).unwrap(), [Binary, Binary]);
        assert_eq!(Format::per_column(&[0, 1], 2).unwrap(), [Text, Binary]);
        assert!(Format::per_column(&[0, 1], 3).is_err());
        assert!(Format::per_column(&[2], 1).is_err());
    }
}
