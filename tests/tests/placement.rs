//! Placement: written through the proxy, every row lands on the shard its map names, and
//! nowhere else. Two databases of the test cluster are the shards; each is read directly and
//! its rows checked against PostgreSQL's own hash partitioning (`satisfies_hash_partition`
//! over the remainders the shard owns) or against the bounds of the range map. Rows are
//! written three ways: simple-protocol multi-row INSERTs whose rows spread over both shards,
//! prepared INSERTs with binary parameters (tokio-postgres), and Parse/Bind/Execute with
//! text-format parameters over a raw connection.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, Utc};
use e2e::{cluster, create_database, psql_direct, APP_PASSWORD, SERVER_PASSWORD};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::types::{Date, Timestamp, ToSql};
use tokio_postgres::Client;

/// Distinct keys per hash key type: half written as simple multi-row INSERTs, a quarter with
/// binary parameters, a quarter with text parameters.
const KEYS: usize = 12_000;
/// Rows per simple-protocol INSERT.
const ROWS_PER_STATEMENT: usize = 500;
/// Connections each way writes over at once (clients log in once, for all ways).
const CONNECTIONS: usize = 4;
/// Statements pipelined at once on one connection (each ends in its own Sync or is its own
/// Query, so consecutive ones may go to different shards).
const IN_FLIGHT: usize = 32;
/// Hash partitions, and the remainders each shard owns.
const PARTITIONS: u32 = 8;
const OWNED: [&[i32]; 2] = [&[0, 3, 5, 6], &[1, 2, 4, 7]];

/// One key of any of the key types under test.
#[derive(Clone, Debug)]
enum Key {
    I16(i16),
    I32(i32),
    I64(i64),
    Text(String),
    Uuid(uuid::Uuid),
    Date(Date<NaiveDate>),
    Ts(Timestamp<DateTime<Utc>>),
}

impl Key {
    /// PostgreSQL's input text for the key (dates and timestamps in the years 1 to 9999).
    fn text(&self) -> String {
        match self {
            Key::I16(v) => v.to_string(),
            Key::I32(v) => v.to_string(),
            Key::I64(v) => v.to_string(),
            Key::Text(s) => s.clone(),
            Key::Uuid(u) => u.to_string(),
            Key::Date(Date::Value(d)) => d.format("%Y-%m-%d").to_string(),
            Key::Ts(Timestamp::Value(t)) => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            Key::Date(Date::PosInfinity) | Key::Ts(Timestamp::PosInfinity) => "infinity".into(),
            Key::Date(Date::NegInfinity) | Key::Ts(Timestamp::NegInfinity) => "-infinity".into(),
        }
    }

    /// The key as an SQL constant.
    fn literal(&self) -> String {
        match self {
            Key::I16(_) | Key::I32(_) | Key::I64(_) => self.text(),
            _ => format!("'{}'", self.text().replace('\'', "''")),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Key::I16(v) => v,
            Key::I32(v) => v,
            Key::I64(v) => v,
            Key::Text(v) => v,
            Key::Uuid(v) => v,
            Key::Date(v) => v,
            Key::Ts(v) => v,
        }
    }

    /// The key just below this one (integers, dates and timestamps).
    fn below(&self) -> Key {
        match self {
            Key::I32(v) => Key::I32(v - 1),
            Key::Date(Date::Value(d)) => Key::Date(Date::Value(d.pred_opt().unwrap())),
            Key::Ts(Timestamp::Value(t)) => {
                Key::Ts(Timestamp::Value(*t - chrono::Duration::microseconds(1)))
            }
            k => panic!("no key below {k:?}"),
        }
    }
}

/// `keys` as one array parameter, with a NULL element after them when `null` is set.
fn array_param(keys: &[Key], null: bool) -> Box<dyn ToSql + Sync + Send> {
    fn typed<T: Clone>(
        keys: &[Key],
        null: bool,
        get: impl Fn(&Key) -> Option<T>,
    ) -> Vec<Option<T>> {
        let mut v: Vec<Option<T>> = keys
            .iter()
            .map(|k| Some(get(k).expect("keys of one type")))
            .collect();
        if null {
            v.push(None);
        }
        v
    }
    match keys.first().expect("some keys") {
        Key::I16(_) => Box::new(typed(keys, null, |k| match k {
            Key::I16(v) => Some(*v),
            _ => None,
        })),
        Key::I32(_) => Box::new(typed(keys, null, |k| match k {
            Key::I32(v) => Some(*v),
            _ => None,
        })),
        Key::I64(_) => Box::new(typed(keys, null, |k| match k {
            Key::I64(v) => Some(*v),
            _ => None,
        })),
        Key::Text(_) => Box::new(typed(keys, null, |k| match k {
            Key::Text(v) => Some(v.clone()),
            _ => None,
        })),
        Key::Uuid(_) => Box::new(typed(keys, null, |k| match k {
            Key::Uuid(v) => Some(*v),
            _ => None,
        })),
        Key::Date(_) => Box::new(typed(keys, null, |k| match k {
            Key::Date(v) => Some(*v),
            _ => None,
        })),
        Key::Ts(_) => Box::new(typed(keys, null, |k| match k {
            Key::Ts(v) => Some(*v),
            _ => None,
        })),
    }
}

/// Takes `n` distinct keys (by their text) from `candidates`.
fn distinct(n: usize, candidates: impl IntoIterator<Item = Key>) -> Vec<Key> {
    let mut seen = std::collections::HashSet::new();
    let keys: Vec<Key> = candidates
        .into_iter()
        .filter(|k| seen.insert(k.text()))
        .take(n)
        .collect();
    assert_eq!(keys.len(), n, "not enough distinct keys");
    keys
}

/// Integers spread over `bits` bits: the extremes, small ones of both signs, and a
/// multiplicative spread over the whole range.
fn integers(bits: u32) -> impl Iterator<Item = i64> {
    let (min, max) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
    let span = 1i128 << bits;
    [min, max, 0, 1, -1, min + 1, max - 1]
        .into_iter()
        .chain((0..span).flat_map(move |i| {
            let spread = (i * 0x9E37_79B9_7F4A_7C15i128).rem_euclid(span) + min;
            [i, -i, spread]
        }))
        .filter(move |v| (min..=max).contains(v))
        .map(|v| v as i64)
}

/// Text keys: ones the protocol or SQL quoting could trip over, then many of every length
/// with multi-byte characters.
fn texts() -> impl Iterator<Item = String> {
    [
        "",
        " ",
        "  lead",
        "trail  ",
        "in ner",
        "a,b",
        "{x}",
        "\"q\"",
        "it's",
        "''",
        "back\\slash",
        "\\",
        "NULL",
        "null",
        "tab\there",
        "new\nline",
        "é€😀",
        "$1",
        "$$",
        "/* c */",
        "--x",
        ";",
        "E'x'",
        "%s",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain((0..).map(|i: usize| {
        let base = format!("key-{i}-é€-{}", "x".repeat(i % 29));
        base.chars().take(6 + i % 40).collect()
    }))
}

/// `KEYS` distinct keys of a hash key type.
fn hash_keys(key_type: &str) -> Vec<Key> {
    let n = KEYS;
    match key_type {
        "smallint" => distinct(n, integers(16).map(|v| Key::I16(v as i16))),
        "integer" => distinct(n, integers(32).map(|v| Key::I32(v as i32))),
        "bigint" => distinct(n, integers(64).map(Key::I64)),
        "text" | "varchar" => distinct(n, texts().map(Key::Text)),
        "uuid" => distinct(
            n,
            [uuid::Uuid::nil(), uuid::Uuid::max()]
                .into_iter()
                .chain((1..).map(|i: u128| {
                    uuid::Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
                }))
                .map(Key::Uuid),
        ),
        other => panic!("no keys for {other}"),
    }
}

/// Two shard databases, each with `ddl` run on it, behind a proxy with one shard map.
struct TwoShards {
    addr: SocketAddr,
    shards: [String; 2],
    dir: std::path::PathBuf,
}

impl Drop for TwoShards {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TwoShards {
    fn new(name: &str, map: &str, ddl: &str) -> TwoShards {
        let info = cluster();
        let shards = [
            create_database(&format!("{name}_s0")),
            create_database(&format!("{name}_s1")),
        ];
        for db in &shards {
            psql_direct(db, ddl);
        }
        let dir = std::env::temp_dir().join(format!("sg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("map.yaml"), map).unwrap();
        let su = &info.superuser;
        let yaml = format!(
            "pool: {{ size: 8 }}\nusers:\n\
             \x20 - {{ name: app, password: {APP_PASSWORD}, server_user: {su}, server_password: {SERVER_PASSWORD} }}\n\
             \x20 - {{ name: trustuser, auth: trust, server_user: {su}, server_password: {SERVER_PASSWORD} }}\n\
             databases:\n  app:\n    shard_maps: [map.yaml]\n    shards:\n\
             \x20     s0: {{ primary: \"postgres://127.0.0.1:{port}/{d0}\" }}\n\
             \x20     s1: {{ primary: \"postgres://127.0.0.1:{port}/{d1}\" }}\n",
            port = info.port,
            d0 = shards[0],
            d1 = shards[1],
        );
        let addr = e2e::start_proxy_from(&dir, &yaml);
        TwoShards { addr, shards, dir }
    }

    /// `CONNECTIONS` clients through the proxy.
    async fn clients(&self) -> Vec<Client> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
            self.addr.port()
        );
        join_all((0..CONNECTIONS).map(|_| e2e::connect(&conninfo))).await
    }

    /// A client straight to shard `i`, in UTC.
    async fn direct(&self, i: usize) -> Client {
        let info = cluster();
        let c = e2e::connect(&format!(
            "host=127.0.0.1 port={} user={} password={SERVER_PASSWORD} dbname={}",
            info.port, info.superuser, self.shards[i]
        ))
        .await;
        c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        c
    }
}

/// Panics with the SQLSTATE and message of a failed call.
fn check<T>(what: &str, r: Result<T, tokio_postgres::Error>) -> T {
    r.unwrap_or_else(|e| match e.as_db_error() {
        Some(d) => panic!(
            "{what}: {} {} (hint: {:?})",
            d.code().code(),
            d.message(),
            d.hint()
        ),
        None => panic!("{what}: {e}"),
    })
}

/// Runs `each` over `items` on `CONNECTIONS` connections at once, connection `i` taking
/// every `CONNECTIONS`th item from the `i`th, in order.
async fn on_connections<'a, T, F, Fut>(items: &'a [T], each: F)
where
    F: Fn(usize, Vec<&'a T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    join_all((0..CONNECTIONS).map(|i| {
        each(
            i,
            items
                .iter()
                .skip(i)
                .step_by(CONNECTIONS)
                .collect::<Vec<_>>(),
        )
    }))
    .await;
}

/// Way 1: simple-protocol INSERTs of `ROWS_PER_STATEMENT` rows each.
async fn insert_simple(clients: &[Client], table: &str, way: i32, keys: &[Key]) {
    let statements: Vec<String> = keys
        .chunks(ROWS_PER_STATEMENT)
        .map(|rows| {
            let values: Vec<String> = rows
                .iter()
                .map(|k| format!("({}, {way})", k.literal()))
                .collect();
            format!("INSERT INTO {table} (k, way) VALUES {}", values.join(", "))
        })
        .collect();
    on_connections(&statements, |i, mine| async move {
        let c = &clients[i];
        for chunk in mine.chunks(IN_FLIGHT) {
            for r in join_all(chunk.iter().map(|s| c.batch_execute(s))).await {
                check("simple multi-row INSERT", r);
            }
        }
    })
    .await;
}

/// Way 2: a prepared INSERT with the key as a binary parameter (tokio-postgres).
async fn insert_binary(clients: &[Client], table: &str, way: i32, keys: &[Key]) {
    let sql = format!("INSERT INTO {table} (k, way) VALUES ($1, {way})");
    let sql = &sql;
    on_connections(keys, |i, mine| async move {
        let c = &clients[i];
        let stmt = check("prepare", c.prepare(sql).await);
        for chunk in mine.chunks(IN_FLIGHT) {
            let params: Vec<[&(dyn ToSql + Sync); 1]> = chunk.iter().map(|k| [k.param()]).collect();
            for r in join_all(params.iter().map(|p| c.execute(&stmt, p))).await {
                check("INSERT with a binary parameter", r);
            }
        }
    })
    .await;
}

/// Reads backend messages until `n` ReadyForQuery; returns the CommandCompletes counted and
/// the ErrorResponses.
async fn read_until_ready(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    mut n: usize,
) -> (usize, Vec<wire::messages::ErrorFields>) {
    let decoder = wire::frame::FrameDecoder::new(1 << 24);
    let (mut completed, mut errors) = (0, Vec::new());
    while n > 0 {
        while let Some(frame) = decoder.decode(buf).unwrap() {
            match frame.tag() {
                b'C' => completed += 1,
                b'E' => errors.push(wire::messages::ErrorFields::parse(frame.body()).unwrap()),
                b'Z' => n -= 1,
                _ => {}
            }
            if n == 0 {
                break;
            }
        }
        if n > 0 && rd.read_buf(buf).await.unwrap() == 0 {
            panic!("the proxy closed the connection");
        }
    }
    (completed, errors)
}

/// Way 3: Parse/Bind/Execute/Sync per row with the key as a text-format parameter of no
/// declared type, written with the wire crate's builders over a raw connection (as the
/// trust user).
async fn insert_text_params(shards: &TwoShards, table: &str, way: i32, keys: &[Key]) {
    let sql = format!("INSERT INTO {table} (k, way) VALUES ($1, {way})");
    let sql = &sql;
    on_connections(keys, |_, mine| async move {
        let mut s = tokio::net::TcpStream::connect(shards.addr).await.unwrap();
        s.write_all(&wire::startup::encode_startup(&[
            ("user", "trustuser"),
            ("database", "app"),
        ]))
        .await
        .unwrap();
        let (mut rd, mut wr) = s.into_split();
        let mut buf = BytesMut::new();
        let (_, errors) = read_until_ready(&mut rd, &mut buf, 1).await;
        assert!(errors.is_empty(), "login: {errors:?}");
        for chunk in mine.chunks(IN_FLIGHT) {
            let mut out = BytesMut::new();
            for k in chunk {
                let text = k.text();
                wire::messages::parse(&mut out, b"", sql.as_bytes(), &[0, 0]);
                // No format codes (all text), one value, no result format codes.
                let mut rest = vec![0, 0, 0, 1];
                rest.extend_from_slice(&(text.len() as i32).to_be_bytes());
                rest.extend_from_slice(text.as_bytes());
                rest.extend_from_slice(&[0, 0]);
                wire::messages::bind(&mut out, b"", b"", &rest);
                wire::messages::execute(&mut out, b"", 0);
                wire::messages::empty_message(&mut out, b'S');
            }
            let (written, (completed, errors)) = tokio::join!(
                wr.write_all(&out),
                read_until_ready(&mut rd, &mut buf, chunk.len())
            );
            written.unwrap();
            if let Some(e) = errors.first() {
                panic!(
                    "INSERT with a text parameter: {} {} (hint: {:?})",
                    e.code, e.message, e.hint
                );
            }
            assert_eq!(completed, chunk.len());
        }
    })
    .await;
}

/// The key type's name in SQL, for tables.
fn sql_type(key_type: &str) -> &str {
    match key_type {
        "varchar" => "varchar(80)",
        t => t,
    }
}

/// One row as read from a shard: the key's text, how it was written, and whether it
/// belongs there.
struct Placed {
    key: String,
    way: i32,
    owned: bool,
}

/// Every row of `t` on shard `i`, checked with `satisfies_hash_partition` against the
/// remainders the shard owns.
async fn hash_rows(shards: &TwoShards, i: usize) -> Vec<Placed> {
    let c = shards.direct(i).await;
    let rows = c
        .query(
            &format!(
                "SELECT k::text, way, (SELECT bool_or(satisfies_hash_partition('t_parent'::regclass, {PARTITIONS}, r, k)) FROM unnest($1::int4[]) r) FROM t"
            ),
            &[&OWNED[i]],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| Placed {
            key: r.get(0),
            way: r.get(1),
            owned: r.get(2),
        })
        .collect()
}

/// Writes `KEYS` keys of `key_type` three ways through a two-shard hash map, then
/// checks every row on each shard and that exactly the keys written are there.
async fn hash_placement(key_type: &str) {
    let started = std::time::Instant::now();
    let ty = sql_type(key_type);
    let assign = |i: usize| format!("{:?}", OWNED[i]);
    let map = format!(
        "name: m\ntype: hash\nkey_type: {key_type}\npartitions: {PARTITIONS}\nassign: {{ s0: {}, s1: {} }}\ntables: [{{ table: t, column: k }}]\n",
        assign(0),
        assign(1)
    );
    let shards = TwoShards::new(
        &format!("place_{key_type}"),
        &map,
        &format!(
            "CREATE TABLE t (k {ty} PRIMARY KEY, way int NOT NULL);
             CREATE TABLE t_parent (k {ty}) PARTITION BY HASH (k);"
        ),
    );
    let keys = hash_keys(key_type);
    let (simple, params) = keys.split_at(KEYS / 2);
    let ways: [&[Key]; 3] = [simple, &params[..KEYS / 4], &params[KEYS / 4..]];
    let clients = shards.clients().await;
    insert_simple(&clients, "t", 1, ways[0]).await;
    insert_binary(&clients, "t", 2, ways[1]).await;
    insert_text_params(&shards, "t", 3, ways[2]).await;
    let written = started.elapsed();

    let mut found: HashMap<String, (usize, i32)> = HashMap::new();
    for i in 0..2 {
        let rows = hash_rows(&shards, i).await;
        let misplaced: Vec<&Placed> = rows.iter().filter(|p| !p.owned).collect();
        assert!(
            misplaced.is_empty(),
            "{key_type}: {} rows on s{i} belong to s{}, e.g. {:?} (way {})",
            misplaced.len(),
            1 - i,
            misplaced[0].key,
            misplaced[0].way
        );
        assert!(
            rows.len() > KEYS / 4,
            "{key_type}: s{i} holds only {} rows",
            rows.len()
        );
        for p in rows {
            if let Some(before) = found.insert(p.key.clone(), (i, p.way)) {
                panic!("{key_type}: key {:?} is on s{} and s{i}", p.key, before.0);
            }
        }
    }
    // Exactly the keys written, each once, each as written.
    assert_eq!(found.len(), keys.len(), "{key_type}: rows lost or added");
    for (w, part) in ways.iter().enumerate() {
        for k in part.iter() {
            match found.get(&k.text()) {
                Some((_, way)) => assert_eq!(*way, w as i32 + 1, "{key_type}: {k:?}"),
                None => panic!("{key_type}: key {k:?} (way {}) is on no shard", w + 1),
            }
        }
    }

    // The rows of one multi-row INSERT went to both shards.
    let first: Vec<usize> = ways[0][..ROWS_PER_STATEMENT]
        .iter()
        .map(|k| found[&k.text()].0)
        .collect();
    assert!(
        first.contains(&0) && first.contains(&1),
        "{key_type}: the first INSERT's rows are all on one shard"
    );

    // `= ANY` of keys of one shard, bound as a binary array, reads that shard.
    let c = &clients[0];
    let by_text: HashMap<String, &Key> = keys.iter().map(|k| (k.text(), k)).collect();
    for i in 0..2 {
        let on_shard: Vec<Key> = found
            .iter()
            .filter(|(_, (s, _))| *s == i)
            .take(300)
            .map(|(t, _)| by_text[t].clone())
            .collect();
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM t WHERE k = ANY($1)",
                &[&*array_param(&on_shard, false)],
            )
            .await
            .unwrap_or_else(|e| panic!("{key_type}: = ANY on s{i}: {e:?}"))
            .get(0);
        assert_eq!(n, on_shard.len() as i64, "{key_type}: = ANY on s{i}");
        // A NULL in the array is refused, not sent anywhere.
        let e = c
            .query_one(
                "SELECT count(*) FROM t WHERE k = ANY($1)",
                &[&*array_param(&on_shard[..1], true)],
            )
            .await
            .unwrap_err();
        assert_eq!(e2e::sqlstate(&e), "0A000", "{key_type}: {e:?}");
    }
    eprintln!(
        "{key_type}: {} rows written in {written:?}, checked in {:?}",
        keys.len(),
        started.elapsed() - written
    );
}

#[tokio::test]
async fn smallint_keys_land_where_the_hash_map_says() {
    hash_placement("smallint").await;
}

#[tokio::test]
async fn integer_keys_land_where_the_hash_map_says() {
    hash_placement("integer").await;
}

#[tokio::test]
async fn bigint_keys_land_where_the_hash_map_says() {
    hash_placement("bigint").await;
}

#[tokio::test]
async fn text_keys_land_where_the_hash_map_says() {
    hash_placement("text").await;
}

#[tokio::test]
async fn varchar_keys_land_where_the_hash_map_says() {
    hash_placement("varchar").await;
}

#[tokio::test]
async fn uuid_keys_land_where_the_hash_map_says() {
    hash_placement("uuid").await;
}

/// A range map: half-open ranges (`None`: unbounded) and the default shard.
struct Ranges {
    ranges: Vec<(Option<Key>, Option<Key>, usize)>,
    default: usize,
}

impl Ranges {
    fn yaml(&self, key_type: &str) -> String {
        let bound = |b: &Option<Key>| match b {
            Some(k) => format!("\"{}\"", k.text()),
            None => "null".into(),
        };
        let mut y = format!("name: r\ntype: range\nkey_type: {key_type}\nranges:\n");
        for (from, to, shard) in &self.ranges {
            y += &format!(
                "  - {{ from: {}, to: {}, shard: s{shard} }}\n",
                bound(from),
                bound(to)
            );
        }
        y + &format!(
            "default: s{}\ntables: [{{ table: r, column: k }}]\n",
            self.default
        )
    }

    /// SQL that holds for the keys of one range.
    fn within(&self, i: usize, ty: &str) -> String {
        let (from, to, _) = &self.ranges[i];
        let mut parts = vec!["true".to_owned()];
        if let Some(f) = from {
            parts.push(format!("k >= {}::{ty}", f.literal()));
        }
        if let Some(t) = to {
            parts.push(format!("k < {}::{ty}", t.literal()));
        }
        format!("({})", parts.join(" AND "))
    }

    /// SQL that holds for the keys shard `s` owns.
    fn owned_by(&self, s: usize, ty: &str) -> String {
        let mut mine: Vec<String> = (0..self.ranges.len())
            .filter(|&i| self.ranges[i].2 == s)
            .map(|i| self.within(i, ty))
            .collect();
        if self.default == s {
            let any: Vec<String> = (0..self.ranges.len()).map(|i| self.within(i, ty)).collect();
            mine.push(format!("NOT ({})", any.join(" OR ")));
        }
        format!("({})", mine.join(" OR "))
    }

    /// Every bound, the key just below each, and `extra`.
    fn keys(&self, extra: impl IntoIterator<Item = Key>) -> Vec<Key> {
        let bounds: Vec<Key> = self
            .ranges
            .iter()
            .flat_map(|(f, t, _)| [f.clone(), t.clone()])
            .flatten()
            .collect();
        let candidates: Vec<Key> = bounds
            .iter()
            .flat_map(|b| [b.clone(), b.below()])
            .chain(extra)
            .collect();
        let mut seen = std::collections::HashSet::new();
        candidates
            .into_iter()
            .filter(|k| seen.insert(k.text()))
            .collect()
    }
}

/// Writes `keys` as simple multi-row INSERTs and with binary parameters (and `binary_only`
/// those only with binary parameters: values the shard map's text parser does not read,
/// such as years BC), then checks every row on each shard against the map's bounds.
async fn range_placement(key_type: &str, ranges: Ranges, keys: Vec<Key>, binary_only: Vec<Key>) {
    let started = std::time::Instant::now();
    let shards = TwoShards::new(
        &format!("place_range_{key_type}"),
        &ranges.yaml(key_type),
        &format!("CREATE TABLE r (k {key_type}, way int NOT NULL, PRIMARY KEY (k, way))"),
    );
    let clients = shards.clients().await;
    insert_simple(&clients, "r", 1, &keys).await;
    let all: Vec<Key> = keys.iter().chain(&binary_only).cloned().collect();
    insert_binary(&clients, "r", 2, &all).await;
    let written = started.elapsed();

    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    for s in 0..2 {
        let d = shards.direct(s).await;
        let misplaced = d
            .query(
                &format!(
                    "SELECT k::text, way FROM r WHERE NOT {}",
                    ranges.owned_by(s, key_type)
                ),
                &[],
            )
            .await
            .unwrap();
        let shown: Vec<(String, i32)> = misplaced
            .iter()
            .take(10)
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(
            misplaced.is_empty(),
            "{key_type}: {} rows on s{s} belong elsewhere: {shown:?}",
            misplaced.len()
        );
        for r in d
            .query("SELECT way, count(*) FROM r GROUP BY way", &[])
            .await
            .unwrap()
        {
            *counts.entry(r.get(0)).or_default() += r.get::<_, i64>(1);
        }
        let n: i64 = d
            .query_one("SELECT count(*) FROM r", &[])
            .await
            .unwrap()
            .get(0);
        assert!(n > 0, "{key_type}: s{s} holds no rows");
    }
    let expected = BTreeMap::from([(1, keys.len() as i64), (2, all.len() as i64)]);
    assert_eq!(counts, expected, "{key_type}: rows per way");

    // Keys of one range, bound as a binary array, read the shard of that range.
    let c = &clients[0];
    for (i, (from, to, _)) in ranges.ranges.iter().enumerate() {
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        let mut one = vec![from.clone()];
        if to.below().text() != from.text() {
            one.push(to.below());
        }
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM r WHERE k = ANY($1)",
                &[&*array_param(&one, false)],
            )
            .await
            .unwrap_or_else(|e| panic!("{key_type}: = ANY in range {i}: {e:?}"))
            .get(0);
        assert_eq!(n, 2 * one.len() as i64, "{key_type}: = ANY in range {i}");
    }
    eprintln!(
        "range {key_type}: {} rows written in {written:?}, checked in {:?}",
        keys.len() + all.len(),
        started.elapsed() - written
    );
}

#[tokio::test]
async fn integer_keys_land_where_the_range_map_says() {
    let k = |v: i32| Some(Key::I32(v));
    let ranges = Ranges {
        ranges: vec![
            (None, k(-1000), 1),
            (k(-1000), k(0), 0),
            (k(0), k(1000), 1),
            (k(2000), k(5000), 1),
            (k(5000), k(5001), 0),
            (k(100_000), None, 1),
        ],
        default: 0,
    };
    let spread = (-3_000..=6_000)
        .step_by(7)
        .chain((0..200).map(|i| i * 10_007 - 1_000_000))
        .chain([i32::MIN, i32::MAX, i32::MIN + 1, i32::MAX - 1])
        .map(Key::I32);
    let keys = ranges.keys(spread);
    range_placement("integer", ranges, keys, Vec::new()).await;
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

#[tokio::test]
async fn date_keys_land_where_the_range_map_says() {
    let k = |y, m, d| Some(Key::Date(Date::Value(day(y, m, d))));
    let ranges = Ranges {
        ranges: vec![
            (None, k(1970, 1, 1), 0),
            (k(1970, 1, 1), k(2000, 1, 1), 1),
            (k(2000, 1, 1), k(2024, 2, 29), 0),
            (k(2024, 2, 29), k(2024, 3, 1), 1),
            (k(2026, 1, 1), k(9999, 12, 31), 1),
        ],
        default: 0,
    };
    let spread = (0..800)
        .map(|i| day(2023, 12, 1) + chrono::Duration::days(i))
        .chain((0..400).map(|i| day(1, 1, 1) + chrono::Duration::days(i * 9_127)))
        .map(|d| Key::Date(Date::Value(d)))
        .chain([Key::Date(Date::PosInfinity), Key::Date(Date::NegInfinity)]);
    let keys = ranges.keys(spread);
    // 44 BC, 4713 BC and a year past 9999: PostgreSQL holds them, the map's text form of a
    // date does not, the binary form does.
    let binary_only = [day(-43, 3, 15), day(-4712, 1, 1), day(20_000, 6, 1)]
        .into_iter()
        .map(|d| Key::Date(Date::Value(d)))
        .collect();
    range_placement("date", ranges, keys, binary_only).await;
}

#[tokio::test]
async fn timestamptz_keys_land_where_the_range_map_says() {
    let at = |s: &str| {
        DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
            .unwrap()
            .with_timezone(&Utc)
    };
    let k = |s: &str| Some(Key::Ts(Timestamp::Value(at(s))));
    let ranges = Ranges {
        ranges: vec![
            (None, k("2000-01-01 00:00:00+00"), 1),
            (k("2000-01-01 00:00:00+00"), k("2024-03-10 02:30:00+00"), 0),
            (
                k("2024-03-10 02:30:00+00"),
                k("2024-03-10 02:30:00.000001+00"),
                1,
            ),
            (k("2025-06-01 12:00:00.5+00"), None, 1),
        ],
        default: 0,
    };
    let base = at("2024-03-09 00:00:00+00");
    let spread = (0..1_000)
        .map(|i| base + chrono::Duration::seconds(i * 3_607))
        .chain((0..300).map(|i| at("1900-01-01 00:00:00+00") + chrono::Duration::days(i * 331)))
        .map(|t| Key::Ts(Timestamp::Value(t)))
        .chain([
            Key::Ts(Timestamp::PosInfinity),
            Key::Ts(Timestamp::NegInfinity),
        ]);
    let keys = ranges.keys(spread);
    let binary_only = [
        day(-43, 3, 15).and_hms_micro_opt(12, 0, 0, 1).unwrap(),
        day(20_000, 6, 1).and_hms_opt(0, 0, 0).unwrap(),
    ]
    .into_iter()
    .map(|t| Key::Ts(Timestamp::Value(t.and_utc())))
    .collect();
    range_placement("timestamptz", ranges, keys, binary_only).await;
}
