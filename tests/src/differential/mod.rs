//! The differential test of cross-shard reads: one dataset loaded into a single PostgreSQL
//! database and, through the proxy, into three shards; the same queries asked of both, the
//! proxy's answers judged against the single database's ([`compare`]); and the per-category
//! table of what matched, what was refused and why.

pub mod compare;
pub mod data;
mod merges;
pub mod queries;
mod shapes;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use compare::{Answer, Verdict};
use data::Dataset;
use queries::{Category, Query};

/// The seed of the dataset and of the queries.
pub const SEED: u64 = 0x5eed_0d1f;

/// Session settings both sides run with (a zone with a half-hour offset, so that a shard
/// without the client's settings would show in every timestamptz).
pub const SETTINGS: [&str; 4] = [
    "SET TimeZone = 'Asia/Kolkata'",
    "SET DateStyle = 'ISO, YMD'",
    "SET extra_float_digits = 1",
    "SET IntervalStyle = 'postgres'",
];

/// The loaded databases.
pub struct Fixture {
    /// Connection string of the proxy (database `app`, three shards).
    pub proxy: String,
    /// Connection string of the single database.
    pub single: String,
    /// Another single database with the same rows loaded in reverse order: its answers must
    /// pass the judge too, or the judge (or the generator) takes a choice PostgreSQL may
    /// make for a difference.
    pub twin: String,
    pub data: Dataset,
    /// The shard index of every customer id in the shards' rows.
    pub shard_of: HashMap<i64, usize>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The databases, created and loaded on first use (on a thread of its own, so that tests on
/// any runtime can share them).
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        std::thread::spawn(setup)
            .join()
            .expect("load the differential databases")
    })
}

fn setup() -> Fixture {
    let info = crate::cluster();
    let single_db = crate::create_database("diff_single");
    let twin_db = crate::create_database("diff_twin");
    let shards: Vec<String> = (0..3)
        .map(|i| crate::create_database(&format!("diff_s{i}")))
        .collect();
    let (addr, dir) = crate::sharded_proxy(
        "differential",
        &shards,
        data::SHARD_MAP,
        "reference_tables: [regions]",
        "{ size: 4 }",
    );
    // The proxy has read its config and shard map.
    let _ = std::fs::remove_dir_all(dir);
    let proxy = format!(
        "host=127.0.0.1 port={} user=app password={} dbname=app",
        addr.port(),
        crate::APP_PASSWORD
    );
    let direct = |db: &str| {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={db}",
            info.port,
            info.superuser,
            crate::SERVER_PASSWORD
        )
    };
    let (single, twin) = (direct(&single_db), direct(&twin_db));
    let data = Dataset::generate(SEED);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = crate::connect(&proxy).await;
        let s = crate::connect(&single).await;
        let t = crate::connect(&twin).await;
        for ddl in data::SCHEMA {
            p.batch_execute(ddl)
                .await
                .unwrap_or_else(|e| panic!("through the proxy: {ddl}: {e:?}"));
            s.batch_execute(ddl).await.expect(ddl);
            t.batch_execute(ddl).await.expect(ddl);
        }
        for insert in data.inserts_reversed() {
            t.batch_execute(&insert)
                .await
                .unwrap_or_else(|e| panic!("load the twin database: {e:?}"));
        }
        for insert in data.inserts() {
            p.batch_execute(&insert)
                .await
                .unwrap_or_else(|e| panic!("load through the proxy: {e:?}"));
            s.batch_execute(&insert)
                .await
                .unwrap_or_else(|e| panic!("load the single database: {e:?}"));
        }
    });
    // Where each key landed, and that the shards hold the single database's rows between
    // them.
    let mut shard_of = HashMap::new();
    let mut totals = [0usize; 3];
    for (i, db) in shards.iter().enumerate() {
        let keys = crate::psql_direct(
            db,
            "SELECT coalesce(string_agg(k::text, ','), '') FROM (SELECT id AS k FROM customers UNION SELECT customer_id FROM orders) x",
        );
        for k in keys.split(',').filter(|k| !k.is_empty()) {
            let k: i64 = k.parse().expect("a key");
            assert!(shard_of.insert(k, i).is_none(), "key {k} on two shards");
        }
        let counts = crate::psql_direct(
            db,
            "SELECT (SELECT count(*) FROM customers) || ',' || (SELECT count(*) FROM orders) || ',' || (SELECT count(*) FROM regions)",
        );
        let n: Vec<usize> = counts
            .split(',')
            .map(|x| x.parse().expect("count"))
            .collect();
        assert!(n[0] > 50 && n[1] > 300, "shard {db} holds {counts}");
        assert_eq!(n[2], data::REGIONS.len(), "regions on {db}");
        totals[0] += n[0];
        totals[1] += n[1];
    }
    assert_eq!(
        (totals[0], totals[1]),
        (data.customers.len(), data.orders.len())
    );
    Fixture {
        proxy,
        single,
        twin,
        data,
        shard_of,
    }
}

/// A connection with [`SETTINGS`] applied.
pub async fn session(conninfo: &str) -> tokio_postgres::Client {
    let c = crate::connect(conninfo).await;
    for s in SETTINGS {
        c.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
    c
}

/// A simple query's rows as text, or its error's SQLSTATE and message (a proxy that does
/// not answer within 20 s is an error too).
pub async fn answer(c: &tokio_postgres::Client, sql: &str) -> Answer {
    match tokio::time::timeout(Duration::from_secs(20), c.simple_query(sql)).await {
        Err(_) => Err(("timeout".into(), "no answer within 20 s".into())),
        Ok(Ok(m)) => Ok(crate::simple_rows(&m)),
        Ok(Err(e)) => Err((
            crate::sqlstate(&e),
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// The per-category table, the refusal reasons with their counts, and every failure.
pub fn report(corpus: &[Query], verdicts: &[Verdict]) -> (String, Vec<String>) {
    #[derive(Default)]
    struct Row {
        queries: usize,
        matched: usize,
        refused: usize,
        wrong: usize,
        undocumented: usize,
        errors: usize,
        reasons: BTreeMap<String, usize>,
    }
    let mut rows: BTreeMap<Category, Row> = BTreeMap::new();
    let mut failures = Vec::new();
    for (q, v) in corpus.iter().zip(verdicts) {
        let r = rows.entry(q.category).or_default();
        r.queries += 1;
        let name = q.category.name();
        match v {
            Verdict::Matched => r.matched += 1,
            Verdict::Refused(why) => {
                r.refused += 1;
                *r.reasons.entry((*why).to_owned()).or_default() += 1;
            }
            Verdict::UndocumentedRefusal(m) => {
                r.undocumented += 1;
                failures.push(format!("[{name}] UNDOCUMENTED REFUSAL {}\n    {m}", q.sql));
            }
            Verdict::Wrong(d) => {
                r.wrong += 1;
                failures.push(format!("[{name}] WRONG {}\n    {d}", q.sql));
            }
            Verdict::Error(e) => {
                r.errors += 1;
                failures.push(format!("[{name}] ERROR {}\n    {e}", q.sql));
            }
        }
    }
    let mut out = format!(
        "{:<16}{:>8}{:>9}{:>9}{:>7}{:>14}{:>8}   refusal reasons\n",
        "category", "queries", "matched", "refused", "wrong", "undocumented", "errors"
    );
    let mut total = Row::default();
    for c in Category::ALL {
        let Some(r) = rows.get(&c) else { continue };
        let reasons: Vec<String> = r.reasons.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        out.push_str(&format!(
            "{:<16}{:>8}{:>9}{:>9}{:>7}{:>14}{:>8}   {}\n",
            c.name(),
            r.queries,
            r.matched,
            r.refused,
            r.wrong,
            r.undocumented,
            r.errors,
            reasons.join(", ")
        ));
        total.queries += r.queries;
        total.matched += r.matched;
        total.refused += r.refused;
        total.wrong += r.wrong;
        total.undocumented += r.undocumented;
        total.errors += r.errors;
    }
    out.push_str(&format!(
        "{:<16}{:>8}{:>9}{:>9}{:>7}{:>14}{:>8}\n",
        "total",
        total.queries,
        total.matched,
        total.refused,
        total.wrong,
        total.undocumented,
        total.errors
    ));
    (out, failures)
}
