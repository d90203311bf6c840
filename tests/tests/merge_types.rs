//! Merges type by type: a table with a column of every type the merge compares (int2, int4,
//! int8, numeric with NaN and ±Infinity, float4 and float8 with NaN, ±Infinity and -0, text,
//! varchar, char(n), bool, date, time, timetz, timestamp, timestamptz with ±infinity,
//! interval with `1 mon` = `30 days`, uuid, bytea; NULLs in every column), sharded by its id
//! over three shards behind the proxy and, with the same rows, in one database. Every merge
//! the proxy does for a column (ORDER BY in each direction and NULLS placement, ORDER BY with
//! LIMIT/OFFSET, min, max, count, sum and avg, GROUP BY, DISTINCT) is compared with the one
//! database over the simple protocol (text, with non-default DateStyle, IntervalStyle,
//! TimeZone, and extra_float_digits 0 and 3) and over the extended protocol (binary results,
//! value bytes compared). Any difference fails.
//!
//! Where PostgreSQL may return either of two equal values (GROUP BY and DISTINCT keep one
//! value of each group, min/max one of the equal extremes: `1.0` or `1.00`, `-0` or `0`,
//! `1 mon` or `30 days`), a value is compared by the set of equality classes of the table's
//! values that print (or send) exactly so, classes taken from the one database's
//! `dense_rank() OVER (ORDER BY col)`. Everything else is compared byte for byte.
//!
//! Refused by design, with SQLSTATE 0A000: sum and avg of real and double precision
//! (floating-point addition depends on the order of the rows), sum and avg of interval (the
//! proxy merges sums of bigint and numeric only).
//!
//! A second test does the same for text under a database collation that is not "C".

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use e2e::{psql_direct, sqlstate, APP_PASSWORD};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows of the table.
const ROWS: usize = 90;

/// What PostgreSQL offers for sum and avg of a column's type, and what the merge does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SumAvg {
    /// No sum/avg in PostgreSQL.
    None,
    /// Merged exactly (the result's bytes equal the one database's).
    Exact,
    /// Refused with 0A000.
    Refused,
}

struct ColSpec {
    name: &'static str,
    ty: &'static str,
    /// SQL literals; row i takes `values[(i * stride) % len]`.
    values: &'static [&'static str],
    stride: usize,
    /// Row i is NULL when `i % null_every == 0`.
    null_every: usize,
    sum_avg: SumAvg,
}

const COLS: &[ColSpec] = &[
    ColSpec {
        name: "i2",
        ty: "int2",
        values: &["-32768", "32767", "0", "-1", "1", "7", "7", "100"],
        stride: 3,
        null_every: 7,
        sum_avg: SumAvg::Exact,
    },
    ColSpec {
        name: "i4",
        ty: "int4",
        values: &[
            "-2147483648",
            "2147483647",
            "0",
            "-5",
            "42",
            "42",
            "1000000",
        ],
        stride: 2,
        null_every: 8,
        sum_avg: SumAvg::Exact,
    },
    ColSpec {
        name: "i8",
        ty: "int8",
        values: &[
            "-9223372036854775808",
            "9223372036854775807",
            "0",
            "3",
            "-3",
            "123456789012",
        ],
        stride: 5,
        null_every: 9,
        sum_avg: SumAvg::Exact,
    },
    ColSpec {
        name: "num",
        ty: "numeric",
        values: &[
            "1.0",
            "1.00",
            "1",
            "-2.5",
            "0.000001",
            "123456789012345678901234567890.123",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "0",
            "-0.00",
            "3.14159",
            "-7.25",
        ],
        stride: 4,
        null_every: 10,
        sum_avg: SumAvg::Exact,
    },
    ColSpec {
        name: "f4",
        ty: "float4",
        values: &[
            "'0'",
            "'-0'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'1.5'",
            "'1.0000001'",
            "'1'",
            "'-3.25e10'",
            "'0.1'",
            "'3.4028235e38'",
        ],
        stride: 3,
        null_every: 11,
        sum_avg: SumAvg::Refused,
    },
    ColSpec {
        name: "f8",
        ty: "float8",
        values: &[
            "'0'",
            "'-0'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'0.1'",
            "'0.10000000000000002'",
            "'1e150'",
            "'-2.5'",
            "'3.141592653589793'",
            "'5e-324'",
        ],
        stride: 7,
        null_every: 12,
        sum_avg: SumAvg::Refused,
    },
    ColSpec {
        name: "tx",
        ty: "text",
        values: &[
            "''", "'a'", "'A'", "'b'", "'ab'", "'a b'", "'é'", "'Z'", "'z'", "'10'", "'9'",
            "' lead'", "'trail '",
        ],
        stride: 5,
        null_every: 13,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "vc",
        ty: "varchar(20)",
        values: &["'x'", "'X'", "'x '", "'xy'", "''", "'ü'", "'_'", "'-1'"],
        stride: 3,
        null_every: 7,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "ch",
        ty: "char(5)",
        values: &["'a'", "'a  '", "'ab'", "'B'", "''", "' x'", "'abcde'"],
        stride: 2,
        null_every: 6,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "b",
        ty: "bool",
        values: &["true", "false", "false"],
        stride: 1,
        null_every: 5,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "d",
        ty: "date",
        values: &[
            "'infinity'",
            "'-infinity'",
            "'2024-02-29'",
            "'1999-12-31'",
            "'2000-01-01'",
            "'0044-03-15 BC'",
            "'2024-02-29'",
        ],
        stride: 4,
        null_every: 8,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "tm",
        ty: "time",
        values: &[
            "'00:00'",
            "'23:59:59.999999'",
            "'12:00'",
            "'24:00:00'",
            "'12:00:00.5'",
        ],
        stride: 3,
        null_every: 9,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "ttz",
        ty: "timetz",
        values: &[
            "'12:00+01'",
            "'11:00+00'",
            "'11:00:00-00'",
            "'00:00+14'",
            "'23:59-12'",
            "'06:30+05:30'",
        ],
        stride: 5,
        null_every: 10,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "ts",
        ty: "timestamp",
        values: &[
            "'infinity'",
            "'-infinity'",
            "'2024-01-01 00:00'",
            "'2024-01-01 00:00:00.000001'",
            "'1970-01-01'",
            "'2038-01-19 03:14:07'",
            "'1066-10-14 09:00 BC'",
        ],
        stride: 2,
        null_every: 11,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "tstz",
        ty: "timestamptz",
        values: &[
            "'infinity'",
            "'-infinity'",
            "'2024-11-03 01:30-04'",
            "'2024-11-03 01:30-05'",
            "'2024-03-10 07:30+00'",
            "'2000-01-01 00:00+00'",
            "'1999-12-31 19:00-05'",
        ],
        stride: 3,
        null_every: 12,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "iv",
        ty: "interval",
        values: &[
            "'1 mon'",
            "'30 days'",
            "'720 hours'",
            "'1 year'",
            "'360 days'",
            "'-1 mon'",
            "'1 day -24 hours'",
            "'0'",
            "'1.5 mon'",
            "'2 days 03:00:00.25'",
        ],
        stride: 7,
        null_every: 13,
        sum_avg: SumAvg::Refused,
    },
    ColSpec {
        name: "u",
        ty: "uuid",
        values: &[
            "'00000000-0000-0000-0000-000000000000'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'7fffffff-0000-0000-0000-000000000001'",
            "'80000000-0000-0000-0000-000000000000'",
        ],
        stride: 2,
        null_every: 7,
        sum_avg: SumAvg::None,
    },
    ColSpec {
        name: "by",
        ty: "bytea",
        values: &[
            "'\\x'",
            "'\\x00'",
            "'\\x0000'",
            "'\\xff'",
            "'\\x7f'",
            "'\\x00ff'",
            "'\\x01'",
        ],
        stride: 3,
        null_every: 8,
        sum_avg: SumAvg::None,
    },
];

fn schema() -> String {
    let cols: Vec<String> = COLS
        .iter()
        .map(|c| format!("\"{}\" {}", c.name, c.ty))
        .collect();
    format!(
        "CREATE TABLE ty (id bigint PRIMARY KEY, {})",
        cols.join(", ")
    )
}

fn insert() -> String {
    let names: Vec<String> = COLS.iter().map(|c| format!("\"{}\"", c.name)).collect();
    let mut rows = Vec::new();
    for i in 1..=ROWS {
        let vals: Vec<&str> = COLS
            .iter()
            .map(|c| {
                if i % c.null_every == 0 {
                    "NULL"
                } else {
                    c.values[(i * c.stride) % c.values.len()]
                }
            })
            .collect();
        rows.push(format!("({i}, {})", vals.join(", ")));
    }
    format!(
        "INSERT INTO ty (id, {}) VALUES {}",
        names.join(", "),
        rows.join(", ")
    )
}

/// A result: rows of values (text or binary bytes), NULL as None.
type Rows = Vec<Vec<Option<Vec<u8>>>>;

/// How values travel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Simple protocol, all text.
    Text,
    /// Extended protocol, binary results.
    Binary,
}

/// Runs `sql` in `mode`; binary results come with their column types.
async fn run(
    c: &Client,
    mode: Mode,
    sql: &str,
) -> Result<(Rows, Vec<tokio_postgres::types::Type>), tokio_postgres::Error> {
    match mode {
        Mode::Text => {
            let msgs = c.simple_query(sql).await?;
            let rows = msgs
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).map(|s| s.as_bytes().to_vec()))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect();
            Ok((rows, Vec::new()))
        }
        Mode::Binary => {
            let rows = c.query(sql, &[]).await?;
            let types = rows
                .first()
                .map(|r| r.columns().iter().map(|c| c.type_().clone()).collect())
                .unwrap_or_default();
            let rows = rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<_, Option<Raw>>(i).unwrap().map(|x| x.0))
                        .collect()
                })
                .collect();
            Ok((rows, types))
        }
    }
}

/// For one column and one way of printing: each printed (or sent) value → the equality
/// classes of the table's values that print so.
type Classes = HashMap<Vec<u8>, BTreeSet<i64>>;

async fn classes(single: &Client, mode: Mode, table: &str, col: &str) -> Classes {
    let sql = format!(
        "SELECT \"{col}\", dense_rank() OVER (ORDER BY \"{col}\") FROM {table} WHERE \"{col}\" IS NOT NULL"
    );
    let (rows, _) = run(single, mode, &sql).await.unwrap();
    let mut out = Classes::new();
    for r in rows {
        let v = r[0].clone().expect("not NULL");
        let rank: i64 = match mode {
            Mode::Text => String::from_utf8(r[1].clone().unwrap())
                .unwrap()
                .parse()
                .unwrap(),
            Mode::Binary => i64::from_be_bytes(r[1].clone().unwrap().try_into().unwrap()),
        };
        out.entry(v).or_default().insert(rank);
    }
    out
}

/// A value as compared: its bytes, or (for columns compared up to equality) the classes of
/// the table's values that look like it.
fn cell(v: &Option<Vec<u8>>, classes: Option<&Classes>) -> String {
    match (v, classes) {
        (None, _) => "NULL".into(),
        (Some(b), None) => format!("{:?}", String::from_utf8_lossy(b)),
        (Some(b), Some(cl)) => match cl.get(b) {
            Some(set) => format!("class{set:?}"),
            None => format!("NOT IN TABLE {:?}", String::from_utf8_lossy(b)),
        },
    }
}

/// What one comparison expects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Row for row, every value byte for byte.
    Ordered,
    /// One row; the columns listed are compared up to equality.
    UpToEquality(&'static [usize]),
    /// As a multiset; column 0 up to equality.
    Multiset,
}

/// Both sides of a comparison and what went wrong so far.
struct Judge<'a> {
    proxy: &'a Client,
    single: &'a Client,
    failures: Vec<String>,
    matched: usize,
    refused: usize,
}

impl Judge<'_> {
    /// Compares `sql` through the proxy with the one database; `cl` are the classes of the
    /// column compared up to equality.
    async fn compare(&mut self, label: &str, mode: Mode, sql: &str, shape: Shape, cl: &Classes) {
        let want = run(self.single, mode, sql)
            .await
            .unwrap_or_else(|e| panic!("one database: {sql}: {e:?}"));
        let got = match run(self.proxy, mode, sql).await {
            Ok(g) => g,
            Err(e) => {
                let db = e.as_db_error();
                self.failures.push(format!(
                    "[{label} {mode:?}] {sql}: the proxy failed: {} {}",
                    sqlstate(&e),
                    db.map(|d| d.message()).unwrap_or("")
                ));
                return;
            }
        };
        if mode == Mode::Binary && !want.0.is_empty() && got.1 != want.1 {
            self.failures.push(format!(
                "[{label} {mode:?}] {sql}: column types {:?}, want {:?}",
                got.1, want.1
            ));
            return;
        }
        let render = |rows: &Rows| -> Vec<Vec<String>> {
            let mut out: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let up_to_eq = match shape {
                                Shape::Ordered => false,
                                Shape::UpToEquality(cols) => cols.contains(&i),
                                Shape::Multiset => i == 0,
                            };
                            cell(v, up_to_eq.then_some(cl))
                        })
                        .collect()
                })
                .collect();
            if shape == Shape::Multiset {
                out.sort();
            }
            out
        };
        let (w, g) = (render(&want.0), render(&got.0));
        if w != g {
            let mut msg = format!(
                "[{label} {mode:?}] {sql}: {} rows, want {}",
                g.len(),
                w.len()
            );
            let mut shown = 0;
            for i in 0..w.len().max(g.len()) {
                if w.get(i) != g.get(i) && shown < 4 {
                    let _ = write!(
                        msg,
                        "\n    row {i}: got {:?}\n           want {:?}",
                        g.get(i),
                        w.get(i)
                    );
                    shown += 1;
                }
            }
            self.failures.push(msg);
        } else {
            self.matched += 1;
        }
    }

    /// Like [`Judge::compare`], but a refusal with 0A000 whose hint names `COLLATE "C"` is
    /// accepted too; returns whether it was refused.
    async fn compare_or_refused(
        &mut self,
        label: &str,
        mode: Mode,
        sql: &str,
        shape: Shape,
        cl: &Classes,
    ) -> bool {
        if let Err(e) = run(self.proxy, mode, sql).await {
            let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or("");
            if sqlstate(&e) == "0A000" && hint.contains("COLLATE \"C\"") {
                self.refused += 1;
                self.proxy.simple_query("SELECT 1").await.unwrap();
                return true;
            }
            self.failures.push(format!(
                "[{label} {mode:?}] {sql}: failed with {} (hint {hint:?}), expected the answer or 0A000 with COLLATE \"C\": {e:?}",
                sqlstate(&e)
            ));
            return false;
        }
        self.compare(label, mode, sql, shape, cl).await;
        false
    }

    /// `sql` must be refused by the proxy with 0A000 (and answered by the one database).
    async fn refused(&mut self, label: &str, mode: Mode, sql: &str) -> Option<String> {
        run(self.single, mode, sql)
            .await
            .unwrap_or_else(|e| panic!("one database: {sql}: {e:?}"));
        match run(self.proxy, mode, sql).await {
            Ok(_) => {
                self.failures.push(format!(
                    "[{label} {mode:?}] {sql}: answered, expected a refusal (0A000)"
                ));
                None
            }
            Err(e) if sqlstate(&e) == "0A000" => {
                self.refused += 1;
                self.proxy.simple_query("SELECT 1").await.unwrap();
                let d = e.as_db_error().unwrap();
                Some(format!(
                    "{} (hint: {})",
                    d.message(),
                    d.hint().unwrap_or("")
                ))
            }
            Err(e) => {
                self.failures.push(format!(
                    "[{label} {mode:?}] {sql}: refused with {}, expected 0A000: {e:?}",
                    sqlstate(&e)
                ));
                None
            }
        }
    }
}

/// Three shard databases and one database, created with `options` (after CREATE DATABASE
/// name); a proxy over the shards with table `table` hashed by `id`.
fn setup(
    name: &str,
    options: &str,
    table: &str,
) -> (
    Vec<String>,
    String,
    std::net::SocketAddr,
    std::path::PathBuf,
) {
    let pid = std::process::id();
    let dbs: Vec<String> = ["s0", "s1", "s2", "one"]
        .iter()
        .map(|s| {
            let db = format!("{name}_{s}_{pid}");
            psql_direct("postgres", &format!("CREATE DATABASE \"{db}\" {options}"));
            db
        })
        .collect();
    let shards = dbs[..3].to_vec();
    let (addr, dir) = e2e::sharded_proxy(
        name,
        &shards,
        &format!("name: {name}\ntype: hash\nkey_type: bigint\npartitions: 6\nassign: {{ s0: [0, 3], s1: [1, 4], s2: [2, 5] }}\ntables: [{{ table: {table}, column: id }}]\n"),
        "",
        "{ size: 4 }",
    );
    (shards, dbs[3].clone(), addr, dir)
}

async fn clients(addr: std::net::SocketAddr, single: &str) -> (Client, Client) {
    let proxy = e2e::connect(&format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app",
        addr.port()
    ))
    .await;
    let direct = e2e::connect(&format!(
        "host=127.0.0.1 port={} user={} password={} dbname={single}",
        e2e::cluster().port,
        e2e::cluster().superuser,
        e2e::SERVER_PASSWORD,
    ))
    .await;
    (proxy, direct)
}

async fn set_both(proxy: &Client, single: &Client, settings: &[&str]) {
    for s in settings {
        proxy.simple_query(s).await.unwrap();
        single.simple_query(s).await.unwrap();
    }
}

/// Whether PostgreSQL has `f(col)` for the column's type.
async fn has_aggregate(single: &Client, f: &str, col: &str) -> bool {
    match single
        .simple_query(&format!("SELECT {f}(\"{col}\") FROM ty"))
        .await
    {
        Ok(_) => true,
        Err(e) if sqlstate(&e) == "42883" => false,
        Err(e) => panic!("{f}({col}): {e:?}"),
    }
}

const SESSION: &[&str] = &[
    "SET DateStyle = 'SQL, DMY'",
    "SET IntervalStyle = 'postgres_verbose'",
    "SET TimeZone = 'America/New_York'",
];

#[tokio::test]
async fn every_type_merges_as_one_database() {
    let started = Instant::now();
    let (shards, single, addr, dir) = setup("mty", "", "ty");
    let (proxy, direct) = clients(addr, &single).await;
    proxy.batch_execute(&schema()).await.unwrap();
    proxy.batch_execute(&insert()).await.unwrap();
    direct.batch_execute(&schema()).await.unwrap();
    direct.batch_execute(&insert()).await.unwrap();
    // The rows are spread: every shard holds some.
    for s in &shards {
        let n = psql_direct(s, "SELECT count(*) FROM ty");
        assert!(n.trim().parse::<usize>().unwrap() > 10, "{s}: {n}");
    }
    let mut judge = Judge {
        proxy: &proxy,
        single: &direct,
        failures: Vec::new(),
        matched: 0,
        refused: 0,
    };
    let passes: [(&str, Mode, &str); 3] = [
        ("text efd0", Mode::Text, "SET extra_float_digits = 0"),
        ("text efd3", Mode::Text, "SET extra_float_digits = 3"),
        ("binary", Mode::Binary, "SET extra_float_digits = 1"),
    ];
    let mut report = Vec::new();
    let mut refusal_messages = Vec::new();
    for c in COLS {
        let col = format!("\"{}\"", c.name);
        let minmax = has_aggregate(&direct, "max", c.name).await;
        let before = (judge.matched, judge.refused, judge.failures.len());
        for (label, mode, efd) in passes {
            let mut settings = SESSION.to_vec();
            settings.push(efd);
            set_both(&proxy, &direct, &settings).await;
            let cl = classes(&direct, mode, "ty", c.name).await;
            let label = format!("{} {label}", c.name);
            for dir in [
                "ASC NULLS FIRST",
                "ASC NULLS LAST",
                "DESC NULLS FIRST",
                "DESC NULLS LAST",
                "ASC",
                "DESC",
            ] {
                let sql = format!("SELECT id, {col} FROM ty ORDER BY {col} {dir}, id");
                judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
            }
            for (limit, offset) in [(7, 5), (10, 0), (3, 80), (20, 41)] {
                let sql = format!(
                    "SELECT id, {col} FROM ty ORDER BY {col}, id LIMIT {limit} OFFSET {offset}"
                );
                judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
                let sql = format!(
                    "SELECT {col}, id FROM ty ORDER BY {col} DESC NULLS LAST, id DESC LIMIT {limit} OFFSET {offset}"
                );
                judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
            }
            if minmax {
                let sql = format!("SELECT min({col}), max({col}), count({col}), count(*) FROM ty");
                judge
                    .compare(&label, mode, &sql, Shape::UpToEquality(&[0, 1]), &cl)
                    .await;
                let sql = format!(
                    "SELECT id % 4 AS g, min({col}), max({col}), count({col}) FROM ty GROUP BY id % 4 ORDER BY 1"
                );
                judge
                    .compare(&label, mode, &sql, Shape::UpToEquality(&[1, 2]), &cl)
                    .await;
            } else {
                let sql = format!("SELECT count({col}), count(*) FROM ty");
                judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
            }
            let sums = [
                format!("SELECT sum({col}), avg({col}) FROM ty"),
                format!("SELECT id % 5 AS g, sum({col}), avg({col}), count({col}) FROM ty GROUP BY 1 ORDER BY 1"),
            ];
            match c.sum_avg {
                SumAvg::None => {}
                SumAvg::Exact => {
                    for sql in &sums {
                        judge.compare(&label, mode, sql, Shape::Ordered, &cl).await;
                    }
                    // Sums and averages of finite values only.
                    let sql = format!(
                        "SELECT sum({col}), avg({col}), count({col}) FROM ty WHERE {col} BETWEEN -1e40 AND 1e40"
                    );
                    judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
                    let sql = format!("SELECT sum({col}), avg({col}) FROM ty WHERE id % 10 = 3");
                    judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
                }
                SumAvg::Refused => {
                    for sql in [
                        format!("SELECT sum({col}) FROM ty"),
                        format!("SELECT avg({col}) FROM ty"),
                        sums[1].clone(),
                    ] {
                        if let Some(m) = judge.refused(&label, mode, &sql).await {
                            refusal_messages.push(format!("{sql}: {m}"));
                        }
                    }
                }
            }
            let sql = format!("SELECT {col}, count(*) FROM ty GROUP BY {col}");
            judge
                .compare(&label, mode, &sql, Shape::Multiset, &cl)
                .await;
            let sql = format!("SELECT DISTINCT {col} FROM ty");
            judge
                .compare(&label, mode, &sql, Shape::Multiset, &cl)
                .await;
            // The same, sorted at the proxy (groups) or merged (DISTINCT): one row per class.
            let sql = format!(
                "SELECT {col}, count(*) FROM ty GROUP BY {col} ORDER BY {col} DESC NULLS LAST"
            );
            judge
                .compare(&label, mode, &sql, Shape::UpToEquality(&[0]), &cl)
                .await;
            let sql = format!("SELECT DISTINCT {col} FROM ty ORDER BY {col} NULLS FIRST");
            judge
                .compare(&label, mode, &sql, Shape::UpToEquality(&[0]), &cl)
                .await;
            if minmax {
                // DISTINCT over aggregated rows.
                let sql = format!("SELECT DISTINCT max({col}) FROM ty GROUP BY id % 9");
                judge
                    .compare(&label, mode, &sql, Shape::Multiset, &cl)
                    .await;
            }
        }
        let after = (judge.matched, judge.refused, judge.failures.len());
        let line = format!(
            "{:>5} {:<12} matched {:>3}, refused {:>2}, different {:>2} (ORDER BY x6 directions, LIMIT/OFFSET x8, {}{}GROUP BY, DISTINCT, both also sorted; text with extra_float_digits 0 and 3, binary)",
            c.name,
            c.ty,
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            if minmax { "min/max/count, " } else { "count (no min/max in PostgreSQL), " },
            match c.sum_avg {
                SumAvg::None => "",
                SumAvg::Exact => "sum/avg exact, ",
                SumAvg::Refused => "sum/avg refused, ",
            },
        );
        println!("{line}");
        report.push(line);
    }
    refusal_messages.sort();
    refusal_messages.dedup();
    for m in &refusal_messages {
        println!("refused: {m}");
    }
    println!(
        "{} comparisons matched, {} refused as expected, {} different, in {:?}",
        judge.matched,
        judge.refused,
        judge.failures.len(),
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        judge.failures.is_empty(),
        "{} differences:\n{}",
        judge.failures.len(),
        judge.failures.join("\n")
    );
}

/// The CREATE DATABASE options of a database whose default collation is not "C": a libc
/// locale of the machine other than C and POSIX when PostgreSQL knows one (en_US first),
/// else ICU's en-US.
fn non_c_collation() -> (String, String) {
    let libc = psql_direct(
        "postgres",
        "SELECT collcollate FROM pg_collation WHERE collprovider = 'c' AND collencoding IN (-1, 6) \
         AND collcollate NOT IN ('C', 'POSIX') AND collcollate NOT ILIKE 'C.%' \
         ORDER BY collcollate NOT ILIKE 'en_US%', collcollate LIMIT 1",
    );
    let libc = libc.trim();
    if !libc.is_empty() {
        return (
            format!("TEMPLATE template0 LC_COLLATE '{libc}' LC_CTYPE '{libc}'"),
            format!("libc locale {libc}"),
        );
    }
    println!("no libc locale other than C/POSIX on this machine: using the ICU collation en-US");
    (
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'".into(),
        "ICU en-US".into(),
    )
}

/// Text under a database collation that is not "C": ORDER BY and min/max of text either
/// match the one database (same collation) or are refused with 0A000 and a hint to use
/// COLLATE "C"; with COLLATE "C" they match; GROUP BY and DISTINCT match (equality under a
/// deterministic collation is bytewise).
#[tokio::test]
async fn text_under_a_non_c_collation() {
    let started = Instant::now();
    let (options, what) = non_c_collation();
    let (_, single, addr, dir) = setup("mcoll", &options, "tc");
    let (proxy, direct) = clients(addr, &single).await;
    let provider = psql_direct(
        &single,
        "SELECT datlocprovider::text || ' ' || datcollate || ' ' || coalesce(daticulocale, '') FROM pg_database WHERE datname = current_database()",
    );
    println!("collation: {what} ({})", provider.trim());
    let schema = "CREATE TABLE tc (id bigint PRIMARY KEY, name text, vc varchar(10), ch char(4))";
    let names = [
        "'a'", "'B'", "'b'", "'A'", "'é'", "'e'", "'f'", "'Z'", "'_x'", "'10'", "'9'", "'a b'",
        "'ab'", "'Ä'", "'z'", "''", "'-'",
    ];
    let mut rows = Vec::new();
    for i in 1..=60usize {
        let v = |stride: usize| {
            if i % 9 == 0 {
                "NULL"
            } else {
                names[(i * stride) % names.len()]
            }
        };
        rows.push(format!("({i}, {}, {}, {})", v(1), v(5), v(7)));
    }
    let insert = format!(
        "INSERT INTO tc (id, name, vc, ch) VALUES {}",
        rows.join(", ")
    );
    for c in [&proxy, &direct] {
        c.batch_execute(schema).await.unwrap();
        c.batch_execute(&insert).await.unwrap();
    }
    // The collation orders otherwise than bytes, or this test would prove nothing.
    let collated = psql_direct(
        &single,
        "SELECT string_agg(DISTINCT name, ' ' ORDER BY name) FROM tc",
    );
    let bytewise = psql_direct(
        &single,
        "SELECT string_agg(DISTINCT name COLLATE \"C\", ' ' ORDER BY name COLLATE \"C\") FROM tc",
    );
    let line = |t: &str| t.trim().to_owned();
    println!(
        "collation order: {}\nbytewise order:  {}",
        line(&collated),
        line(&bytewise)
    );
    assert_ne!(line(&collated), line(&bytewise));
    let mut judge = Judge {
        proxy: &proxy,
        single: &direct,
        failures: Vec::new(),
        matched: 0,
        refused: 0,
    };
    let mut refused_sql = BTreeSet::new();
    for mode in [Mode::Text, Mode::Binary] {
        for col in ["name", "vc", "ch"] {
            let cl = classes(&direct, mode, "tc", col).await;
            let label = format!("{col} ({what})");
            // In the collation's order: the answer, or refused.
            for sql in [
                format!("SELECT id, {col} FROM tc ORDER BY {col}, id"),
                format!(
                    "SELECT id, {col} FROM tc ORDER BY {col} DESC NULLS LAST, id LIMIT 5 OFFSET 2"
                ),
                format!("SELECT {col}, count(*) FROM tc GROUP BY {col} ORDER BY {col}"),
            ] {
                if judge
                    .compare_or_refused(&label, mode, &sql, Shape::Ordered, &cl)
                    .await
                {
                    refused_sql.insert(sql);
                }
            }
            let sql = format!("SELECT min({col}), max({col}), count({col}) FROM tc");
            if judge
                .compare_or_refused(&label, mode, &sql, Shape::UpToEquality(&[0, 1]), &cl)
                .await
            {
                refused_sql.insert(sql);
            }
            // Bytewise: must match.
            for sql in [
                format!("SELECT id, {col} FROM tc ORDER BY {col} COLLATE \"C\", id"),
                format!("SELECT id, {col} FROM tc ORDER BY {col} COLLATE \"C\" DESC, id LIMIT 4 OFFSET 3"),
                format!("SELECT {col}, count(*) FROM tc GROUP BY {col} ORDER BY {col} COLLATE \"C\" NULLS FIRST"),
            ] {
                judge.compare(&label, mode, &sql, Shape::Ordered, &cl).await;
            }
            let sql = format!("SELECT min({col} COLLATE \"C\"), max({col} COLLATE \"C\") FROM tc");
            judge
                .compare(&label, mode, &sql, Shape::UpToEquality(&[0, 1]), &cl)
                .await;
            // Equality: must match.
            let sql = format!("SELECT {col}, count(*) FROM tc GROUP BY {col}");
            judge
                .compare(&label, mode, &sql, Shape::Multiset, &cl)
                .await;
            let sql = format!("SELECT DISTINCT {col} FROM tc");
            judge
                .compare(&label, mode, &sql, Shape::Multiset, &cl)
                .await;
        }
    }
    for sql in &refused_sql {
        println!("refused (0A000, hint COLLATE \"C\"): {sql}");
    }
    println!(
        "{what}: {} comparisons matched, {} refused, {} different, in {:?}",
        judge.matched,
        judge.refused,
        judge.failures.len(),
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        judge.failures.is_empty(),
        "{} differences:\n{}",
        judge.failures.len(),
        judge.failures.join("\n")
    );
}

/// A value's bytes as the server sent them (binary format).
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}
