//! Named prepared statements under transaction pooling.
//!
//! A client's statement name means nothing to the server connection its next transaction
//! gets. So every distinct (query text, parameter types) gets one proxy-wide id, and servers
//! know it as `sg_<id>`: clients that prepare the same statement share it, and a server
//! connection that already has it is not asked to parse it again.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// What a server needs to prepare a statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub query: Bytes,
    pub param_types: Bytes,
    /// Server-side name: `sg_<id>`.
    pub server_name: Box<[u8]>,
    /// Set when the statement changes session state (SET ...), for tracking at Execute.
    pub command: Option<router::SessionCommand>,
    /// The statement is a lone BEGIN (the proxy may hold it).
    pub begin: bool,
    /// Some server has parsed this text without error.
    valid: std::sync::atomic::AtomicBool,
    /// Parameter types a server described (for reading binary parameters at Bind).
    described: std::sync::OnceLock<Vec<u32>>,
    /// How the router sees the statement, kept so that a Bind does not analyse it again.
    pub route: arc_swap::ArcSwapOption<StatementRoute>,
    /// Whether it is a read a replica may answer (see `session::replicas`), once asked.
    pub read_class: std::sync::OnceLock<u8>,
}

/// A prepared statement's analysis for one config generation.
#[derive(Debug)]
pub struct StatementRoute {
    pub generation: u64,
    /// The database it was analysed for (statements are shared between databases).
    pub scope: u64,
    pub analysis: Arc<router::analyze::Analysis>,
    /// Parameters of the analysis that are the statement's own (bound at Bind); its
    /// constants follow them.
    pub own: usize,
    pub constants: Vec<Option<String>>,
    pub hints: router::hints::Hints,
}

impl Statement {
    pub fn is_valid(&self) -> bool {
        self.valid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The type OID of each parameter: as the Parse gave it, else as a server described it.
    pub fn param_oids(&self) -> Vec<u32> {
        let given = parse_oids(&self.param_types);
        let described = self.described.get();
        (0..given.len().max(described.map_or(0, Vec::len)))
            .map(|i| match given.get(i) {
                Some(&oid) if oid != 0 => oid,
                _ => described.and_then(|d| d.get(i).copied()).unwrap_or(0),
            })
            .collect()
    }

    pub fn set_described(&self, oids: Vec<u32>) {
        let _ = self.described.set(oids);
    }

    pub fn mark_valid(&self) {
        if !self.is_valid() {
            self.valid.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Every statement some client holds, by text, so that clients preparing the same text
/// share one (and servers prepare it once). Entries are weak: a statement no client names
/// any more is freed, and its entry swept, so the registry is bounded by what clients hold.
#[derive(Default)]
pub struct StatementRegistry {
    /// By a hash of (query, parameter types); a bucket holds the rare collisions.
    by_hash: Mutex<HashMap<u64, Vec<Weak<Statement>>>>,
    count: std::sync::atomic::AtomicU64,
    /// Interned since the last sweep of dead entries.
    since_sweep: std::sync::atomic::AtomicUsize,
}

fn text_hash(query: &[u8], param_types: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    query.hash(&mut h);
    param_types.hash(&mut h);
    h.finish()
}

impl StatementRegistry {
    pub fn intern(&self, query: &[u8], param_types: &[u8]) -> Arc<Statement> {
        let hash = text_hash(query, param_types);
        let mut map = self.by_hash.lock();
        let bucket = map.entry(hash).or_default();
        let mut found = None;
        bucket.retain(|w| match w.upgrade() {
            Some(s) => {
                if found.is_none() && s.query == query && s.param_types == param_types {
                    found = Some(s);
                }
                true
            }
            None => false,
        });
        if let Some(s) = found {
            return s;
        }
        let id = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let command = std::str::from_utf8(query)
            .ok()
            .map(router::classify)
            .filter(|c| *c != router::SessionCommand::Other);
        let s = Arc::new(Statement {
            id,
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            server_name: server_name(id).into_bytes().into_boxed_slice(),
            command,
            begin: crate::session::lone_begin(query),
            valid: std::sync::atomic::AtomicBool::new(false),
            described: std::sync::OnceLock::new(),
            read_class: std::sync::OnceLock::new(),
            route: arc_swap::ArcSwapOption::empty(),
        });
        bucket.push(Arc::downgrade(&s));
        // Now and then, drop the entries of statements no client holds any more.
        let n = self
            .since_sweep
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= 1024 && n >= map.len() / 2 {
            self.sweep_locked(&mut map);
        }
        s
    }

    /// After a client that prepared many statements left: drops the entries of statements
    /// no client holds any more (an entry keeps its statement's allocation), if enough were
    /// made since the last sweep to be worth a pass over the registry.
    pub fn sweep_if_due(&self) {
        if self.since_sweep.load(std::sync::atomic::Ordering::Relaxed) >= 1024 {
            self.sweep_locked(&mut self.by_hash.lock());
        }
    }

    fn sweep_locked(&self, map: &mut HashMap<u64, Vec<Weak<Statement>>>) {
        map.retain(|_, b| {
            b.retain(|w| w.strong_count() > 0);
            !b.is_empty()
        });
        map.shrink_to_fit();
        self.since_sweep
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Entries held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.by_hash.lock().values().map(Vec::len).sum()
    }
}

/// The name servers know statement `id` by.
pub fn server_name(id: u64) -> String {
    format!("sg_{id}")
}

/// The OIDs of a Parse's `int16 count | int32 oid * count`.
pub fn parse_oids(raw: &[u8]) -> Vec<u32> {
    if raw.len() < 2 {
        return Vec::new();
    }
    let n = i16::from_be_bytes([raw[0], raw[1]]).max(0) as usize;
    raw[2..]
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The values of a Bind (`rest` as held by a `BindView`) in text form, as far as the router
/// can read them: text-format values, and binary values of the types [`binary_as_text`]
/// reads. `None` for NULL and for what cannot be read.
#[cfg(test)]
pub fn bind_params_as_text(rest: &[u8], oids: &[u32]) -> Vec<Option<String>> {
    bind_params_for_routing(rest, oids, true)
}

/// [`bind_params_as_text`] for a client whose encoding may not be UTF-8 (`utf8` false):
/// text-format values beyond ASCII cannot be read then, and are `None`.
pub fn bind_params_for_routing(rest: &[u8], oids: &[u32], utf8: bool) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let rd16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| i16::from_be_bytes([x[0], x[1]]));
    let rd32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    let Some(nfmt) = rd16(rest, 0) else {
        return out;
    };
    let nfmt = nfmt.max(0) as usize;
    let formats: Vec<i16> = (0..nfmt).filter_map(|i| rd16(rest, 2 + 2 * i)).collect();
    let mut at = 2 + 2 * nfmt;
    let Some(nval) = rd16(rest, at) else {
        return out;
    };
    at += 2;
    for i in 0..nval.max(0) as usize {
        let Some(len) = rd32(rest, at) else { break };
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let Some(v) = rest.get(at..at + len as usize) else {
            break;
        };
        at += len as usize;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        let oid = oids.get(i).copied().unwrap_or(0);
        // Text, in text format or binary, is in the client's encoding.
        let textual = format == 0 || matches!(oid, 25 | 1043 | 1009 | 1015);
        out.push(if textual && !utf8 && !v.is_ascii() {
            None
        } else if format == 0 {
            Some(String::from_utf8_lossy(v).into_owned())
        } else {
            binary_as_text(oids.get(i).copied().unwrap_or(0), v)
        });
    }
    out
}

/// A binary parameter of type `oid` in the text form the router parses (PostgreSQL's own
/// output form, except that dates and timestamps keep astronomical years: `-0043-03-15`
/// for 44 BC): integers, text, varchar, uuid, date, timestamp, timestamptz and
/// one-dimensional arrays of those. `None` for other types, malformed values and arrays
/// holding a NULL (a NULL never names a shard).
fn binary_as_text(oid: u32, v: &[u8]) -> Option<String> {
    match (oid, v.len()) {
        (21, 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (23, 4) => Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (20, 8) => Some(i64::from_be_bytes(v.try_into().ok()?).to_string()),
        (25 | 1043, _) => std::str::from_utf8(v).ok().map(str::to_owned),
        (2950, 16) => {
            let h: String = v.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        (1082, 4) => Some(date_text(i32::from_be_bytes([v[0], v[1], v[2], v[3]]))),
        (1114, 8) => Some(timestamp_text(i64::from_be_bytes(v.try_into().ok()?), "")),
        (1184, 8) => Some(timestamp_text(
            i64::from_be_bytes(v.try_into().ok()?),
            "+00",
        )),
        _ => array_as_text(element_oid(oid)?, v),
    }
}

/// The element type of the array types [`binary_as_text`] reads.
fn element_oid(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1009 => 25,
        1015 => 1043,
        2951 => 2950,
        1182 => 1082,
        1115 => 1114,
        1185 => 1184,
        _ => return None,
    })
}

/// A binary one-dimensional array (`int32 ndim | int32 flags | oid element | (int32 size |
/// int32 lower bound) * ndim | (int32 len | bytes) * size`) as `{a,b,"c d"}`. An empty
/// array is `{}`; NULL elements, other element types, more dimensions and trailing bytes
/// give `None`.
fn array_as_text(element: u32, v: &[u8]) -> Option<String> {
    let mut rest = v;
    let ndim = take_i32(&mut rest)?;
    let _flags = take_i32(&mut rest)?;
    if take_i32(&mut rest)? as u32 != element {
        return None;
    }
    let mut out = String::from("{");
    match ndim {
        0 => {}
        1 => {
            let size = take_i32(&mut rest)?;
            let _lower_bound = take_i32(&mut rest)?;
            for i in 0..size.max(0) {
                let len = usize::try_from(take_i32(&mut rest)?).ok()?;
                let item = rest.get(..len)?;
                rest = &rest[len..];
                if i > 0 {
                    out.push(',');
                }
                push_array_element(&mut out, &binary_as_text(element, item)?);
            }
        }
        _ => return None,
    }
    out.push('}');
    rest.is_empty().then_some(out)
}

/// Reads a big-endian int32 off the front of `rest`.
fn take_i32(rest: &mut &[u8]) -> Option<i32> {
    let (x, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(i32::from_be_bytes(*x))
}

/// Appends one array element, double-quoted when array syntax would otherwise change it
/// (empty, `NULL`, delimiters, quotes, backslashes, surrounding or inner white space).
fn push_array_element(out: &mut String, item: &str) {
    let plain = !item.is_empty()
        && !item.eq_ignore_ascii_case("NULL")
        && !item
            .chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if plain {
        out.push_str(item);
        return;
    }
    out.push('"');
    for c in item.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const UNIX_TO_PG_DAYS: i64 = 10_957;

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01; year 0 is
/// 1 BC.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Counted in 400-year eras from 0000-03-01, so that leap days end each year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` of a day counted from 2000-01-01. Years above 9999 carry a `+`, years
/// before 1 AD are astronomical (`-0043` is 44 BC), as the shard map's date parser reads them.
fn ymd(days: i64) -> String {
    let (y, m, d) = civil_from_days(days + UNIX_TO_PG_DAYS);
    let year = match y {
        0..=9999 => format!("{y:04}"),
        10_000.. => format!("+{y}"),
        _ => format!("-{:04}", -y),
    };
    format!("{year}-{m:02}-{d:02}")
}

/// A binary date: days since 2000-01-01, `i32::MAX`/`MIN` being infinity/-infinity.
fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => ymd(d.into()),
    }
}

/// A binary timestamp: microseconds since 2000-01-01 00:00:00 (UTC for timestamptz, whose
/// `offset` is `+00`), `i64::MAX`/`MIN` being infinity/-infinity.
fn timestamp_text(micros: i64, offset: &str) -> String {
    const DAY: i64 = 86_400_000_000;
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let (days, time) = (micros.div_euclid(DAY), micros.rem_euclid(DAY));
    let (secs, frac) = (time / 1_000_000, time % 1_000_000);
    let mut out = format!(
        "{} {:02}:{:02}:{:02}",
        ymd(days),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!(".{frac:06}");
        out.push_str(f.trim_end_matches('0'));
    }
    out.push_str(offset);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_values_in_text_and_binary() {
        // formats: 2 (text, binary); values: '42', int8 7, NULL
        let mut rest = vec![0, 2, 0, 0, 0, 1, 0, 3];
        rest.extend_from_slice(&2i32.to_be_bytes());
        rest.extend_from_slice(b"42");
        rest.extend_from_slice(&8i32.to_be_bytes());
        rest.extend_from_slice(&7i64.to_be_bytes());
        rest.extend_from_slice(&(-1i32).to_be_bytes());
        rest.extend_from_slice(&[0, 0]);
        let v = bind_params_as_text(&rest, &[25, 20, 23]);
        assert_eq!(v, vec![Some("42".into()), Some("7".into()), None]);
        assert_eq!(binary_as_text(2950, &[0xa0; 16]).unwrap().len(), 36);
        assert_eq!(parse_oids(&[0, 2, 0, 0, 0, 20, 0, 0, 0, 25]), vec![20, 25]);
    }

    use sgconfig::shardmap::{KeyType, KeyValue};

    /// The day of (year, month, day) counted from 2000-01-01: the inverse of
    /// `civil_from_days`, to check it against.
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = i64::from((m + 9) % 12);
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468 - UNIX_TO_PG_DAYS
    }

    fn days_in_month(y: i64, m: u32) -> u32 {
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ][m as usize - 1]
    }

    /// Days since 2000-01-01 in the range both PostgreSQL and the shard map parser hold,
    /// dense around the epoch and spread out to the ends.
    fn sample_days() -> Vec<i32> {
        let mut v: Vec<i32> = (-3_000..3_000).collect();
        v.extend((-95_000_000..95_000_000).step_by(7_919));
        v.extend([
            -730_120, -730_119, -730_485, 2_921_939, 2_921_940, -2_451_545,
        ]);
        v
    }

    #[test]
    fn calendar_dates_of_known_days() {
        for (days, text) in [
            (0, "2000-01-01"),
            (-1, "1999-12-31"),
            (-10_957, "1970-01-01"),
            (9_829, "2026-11-29"),
            (8_825, "2024-02-29"),
            (8_826, "2024-03-01"),
            (59, "2000-02-29"),
            (-36_466, "1900-02-28"),
            (-36_465, "1900-03-01"),
            (-730_119, "0001-01-01"),
            (-730_120, "0000-12-31"),
            (-730_485 + 59, "0000-02-29"),
            (-730_485, "0000-01-01"),
            (-730_486, "-0001-12-31"),
            (2_921_939, "9999-12-31"),
            (2_921_940, "+10000-01-01"),
        ] {
            assert_eq!(date_text(days), text, "day {days}");
            let (y, m, d) = civil_from_days(i64::from(days) + UNIX_TO_PG_DAYS);
            assert_eq!(days_from_civil(y, m, d), i64::from(days), "{text}");
        }
        assert_eq!(date_text(i32::MAX), "infinity");
        assert_eq!(date_text(i32::MIN), "-infinity");
    }

    #[test]
    fn calendar_steps_one_day_at_a_time() {
        // Every day from 1 BC to 2401 AD follows the one before, through every month end.
        let start = days_from_civil(-1, 1, 1);
        let mut prev = civil_from_days(start + UNIX_TO_PG_DAYS);
        assert_eq!(prev, (-1, 1, 1));
        for day in start + 1..days_from_civil(2401, 1, 1) {
            let (y, m, d) = civil_from_days(day + UNIX_TO_PG_DAYS);
            let expected = if prev.2 < days_in_month(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "day {day}");
            assert_eq!(days_from_civil(y, m, d), day);
            prev = (y, m, d);
        }
    }

    #[test]
    fn binary_dates_round_trip_through_the_key_parser() {
        for days in sample_days() {
            let text = binary_as_text(1082, &days.to_be_bytes()).unwrap();
            assert_eq!(
                KeyValue::parse(KeyType::Date, &text),
                Ok(KeyValue::Date(days)),
                "{text}"
            );
        }
        for days in [i32::MAX, i32::MIN] {
            let text = binary_as_text(1082, &days.to_be_bytes()).unwrap();
            assert_eq!(
                KeyValue::parse(KeyType::Date, &text),
                Ok(KeyValue::Date(days))
            );
        }
        // Past what the parser holds (PostgreSQL's dates go to 5874897 AD): refused, never
        // read as another day.
        for days in [i32::MAX - 1, 2_000_000_000, -2_451_545 - 100_000_000] {
            let text = binary_as_text(1082, &days.to_be_bytes()).unwrap();
            assert!(KeyValue::parse(KeyType::Date, &text).is_err(), "{text}");
        }
        assert_eq!(binary_as_text(1082, &[0, 0, 0]), None);
    }

    #[test]
    fn binary_timestamps_round_trip_through_the_key_parser() {
        const DAY: i64 = 86_400_000_000;
        assert_eq!(
            binary_as_text(1184, &0i64.to_be_bytes()).as_deref(),
            Some("2000-01-01 00:00:00+00")
        );
        assert_eq!(
            binary_as_text(1184, &1_500_000i64.to_be_bytes()).as_deref(),
            Some("2000-01-01 00:00:01.5+00")
        );
        assert_eq!(
            binary_as_text(1184, &(-1i64).to_be_bytes()).as_deref(),
            Some("1999-12-31 23:59:59.999999+00")
        );
        assert_eq!(
            binary_as_text(1114, &(9_829 * DAY + 45_296_000_123).to_be_bytes()).as_deref(),
            Some("2026-11-29 12:34:56.000123")
        );
        assert_eq!(
            binary_as_text(1184, &i64::MAX.to_be_bytes()).as_deref(),
            Some("infinity")
        );
        assert_eq!(
            binary_as_text(1114, &i64::MIN.to_be_bytes()).as_deref(),
            Some("-infinity")
        );
        let mut micros: Vec<i64> = vec![i64::MAX, i64::MIN, 0, 1, -1, DAY - 1, -DAY];
        for days in sample_days() {
            let base = i64::from(days) * DAY;
            let within = (i64::from(days).rem_euclid(86_400)) * 1_000_000
                + 7 * i64::from(days).rem_euclid(1_000_000);
            micros.extend([base, base + within.rem_euclid(DAY), base - 1]);
        }
        for t in micros {
            for oid in [1184, 1114] {
                let text = binary_as_text(oid, &t.to_be_bytes()).unwrap();
                assert_eq!(
                    KeyValue::parse(KeyType::Timestamptz, &text),
                    Ok(KeyValue::Timestamptz(t)),
                    "{text}"
                );
            }
        }
        assert_eq!(binary_as_text(1184, &[0; 4]), None);
    }

    /// PostgreSQL's binary form of a one-dimensional array (`None` elements are NULL).
    fn binary_array(element: u32, items: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&i32::from(items.iter().any(Option::is_none)).to_be_bytes());
        v.extend_from_slice(&element.to_be_bytes());
        v.extend_from_slice(&(items.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for item in items {
            match item {
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    /// The text of a binary array as the router reads it, element by element.
    fn elements(oid: u32, bytes: &[u8]) -> Vec<Option<String>> {
        router::plan::parse_array(&binary_as_text(oid, bytes).unwrap())
    }

    #[test]
    fn binary_arrays_of_every_key_type() {
        let ints: Vec<i64> = vec![0, -1, 42, i64::from(i16::MIN), i64::from(i16::MAX)];
        let some = |v: &[String]| v.iter().cloned().map(Some).collect::<Vec<_>>();
        let texts: Vec<String> = ints.iter().map(i64::to_string).collect();
        for (oid, element, width) in [(1005, 21, 2), (1007, 23, 4), (1016, 20, 8)] {
            let items: Vec<_> = ints
                .iter()
                .map(|v| Some(v.to_be_bytes()[8 - width..].to_vec()))
                .collect();
            let bytes = binary_array(element, &items);
            assert_eq!(
                binary_as_text(oid, &bytes).unwrap(),
                format!("{{{}}}", texts.join(","))
            );
            assert_eq!(elements(oid, &bytes), some(&texts));
        }
        // Text needing quotes comes back exactly, through the router's array reader.
        let words: Vec<String> = [
            "plain",
            "",
            " lead",
            "trail ",
            "in ner",
            "a,b",
            "{x}",
            "q\"uote",
            "back\\slash",
            "NULL",
            "null",
            "tab\there",
            "é€",
            "\\\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (oid, element) in [(1009, 25), (1015, 1043)] {
            let items: Vec<_> = words.iter().map(|w| Some(w.as_bytes().to_vec())).collect();
            let bytes = binary_array(element, &items);
            assert_eq!(elements(oid, &bytes), some(&words));
            for (text, word) in elements(oid, &bytes).iter().zip(&words) {
                assert_eq!(
                    KeyValue::parse(KeyType::Text, text.as_deref().unwrap()),
                    Ok(KeyValue::Text(word.clone()))
                );
            }
        }
        let u = [
            0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let bytes = binary_array(2950, &[Some(u.to_vec()), Some(vec![0; 16])]);
        assert_eq!(
            binary_as_text(2951, &bytes).unwrap(),
            "{12345678-9abc-def0-0102-030405060708,00000000-0000-0000-0000-000000000000}"
        );
        let days = [0i32, -730_486, 9_829, i32::MAX, i32::MIN];
        let bytes = binary_array(
            1082,
            &days
                .iter()
                .map(|d| Some(d.to_be_bytes().to_vec()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            binary_as_text(1182, &bytes).unwrap(),
            "{2000-01-01,-0001-12-31,2026-11-29,infinity,-infinity}"
        );
        for (text, d) in elements(1182, &bytes).iter().zip(days) {
            assert_eq!(
                KeyValue::parse(KeyType::Date, text.as_deref().unwrap()),
                Ok(KeyValue::Date(d))
            );
        }
        let micros = [0i64, -1, 1_500_000, i64::MAX];
        let bytes = binary_array(
            1184,
            &micros
                .iter()
                .map(|t| Some(t.to_be_bytes().to_vec()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            binary_as_text(1185, &bytes).unwrap(),
            r#"{"2000-01-01 00:00:00+00","1999-12-31 23:59:59.999999+00","2000-01-01 00:00:01.5+00",infinity}"#
        );
        for (text, t) in elements(1185, &bytes).iter().zip(micros) {
            assert_eq!(
                KeyValue::parse(KeyType::Timestamptz, text.as_deref().unwrap()),
                Ok(KeyValue::Timestamptz(t))
            );
        }
        let bytes = binary_array(1114, &[Some(0i64.to_be_bytes().to_vec())]);
        assert_eq!(
            binary_as_text(1115, &bytes).as_deref(),
            Some(r#"{"2000-01-01 00:00:00"}"#)
        );
    }

    #[test]
    fn binary_arrays_that_name_no_key_are_not_read() {
        let one = |v: i64| Some(v.to_be_bytes().to_vec());
        // A NULL element: no text that could be read as a key.
        assert_eq!(
            binary_as_text(1016, &binary_array(20, &[one(1), None])),
            None
        );
        // Empty: no keys.
        let mut empty = Vec::new();
        for x in [0i32, 0, 20] {
            empty.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(binary_as_text(1016, &empty).as_deref(), Some("{}"));
        assert!(router::plan::parse_array("{}").is_empty());
        // Element type other than the array's, a wrong length, trailing or missing bytes.
        assert_eq!(binary_as_text(1007, &binary_array(20, &[one(1)])), None);
        assert_eq!(
            binary_as_text(1016, &binary_array(20, &[Some(vec![0; 4])])),
            None
        );
        let mut trailing = binary_array(20, &[one(1)]);
        trailing.push(0);
        assert_eq!(binary_as_text(1016, &trailing), None);
        let full = binary_array(20, &[one(1), one(2)]);
        assert_eq!(binary_as_text(1016, &full[..full.len() - 1]), None);
        // Two dimensions.
        let mut two = Vec::new();
        for x in [2i32, 0, 20, 1, 1, 1, 1, 8] {
            two.extend_from_slice(&x.to_be_bytes());
        }
        two.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(binary_as_text(1016, &two), None);
        // Arrays of types the router does not read.
        assert_eq!(
            binary_as_text(1021, &binary_array(700, &[Some(vec![0; 4])])),
            None
        );
    }

    #[test]
    fn bind_values_of_dates_and_arrays() {
        // One format code for all: binary; a date and an int8[] of two keys.
        let mut rest = vec![0, 1, 0, 1, 0, 2];
        rest.extend_from_slice(&4i32.to_be_bytes());
        rest.extend_from_slice(&9_829i32.to_be_bytes());
        let arr = binary_array(
            20,
            &[
                Some(5i64.to_be_bytes().to_vec()),
                Some(6i64.to_be_bytes().to_vec()),
            ],
        );
        rest.extend_from_slice(&(arr.len() as i32).to_be_bytes());
        rest.extend_from_slice(&arr);
        rest.extend_from_slice(&[0, 0]);
        assert_eq!(
            bind_params_as_text(&rest, &[1082, 1016]),
            vec![Some("2026-11-29".into()), Some("{5,6}".into())]
        );
    }
}
