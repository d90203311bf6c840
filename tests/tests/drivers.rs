//! The driver matrix: real drivers (JDBC, psycopg 3, asyncpg, node-postgres, tokio-postgres)
//! run a fixed script against a two-shard database through the proxy, and the same script
//! against one plain PostgreSQL database (the oracle) holding the same rows; both runs must
//! print exactly the same results. The scripts of the other languages are in
//! `integration/drivers/` (what they need is installed by its `install.sh`, which the first
//! test runs); tokio-postgres's script is here.
//!
//! Data: `customers` and `orders` hash-sharded by customer id in one map (4 partitions, s0
//! owning remainders 0 and 2, s1 owning 1 and 3). Customers 1000-1019, 2000-2019, ...,
//! 5000-5019 (one block per driver, so that the drivers' writes never meet), each with 5
//! orders `10 * customer + 0..4` of amount `(order id * 37 % 10000) / 100`. Each shard
//! database is loaded with its own rows only, placed by PostgreSQL's own hash partitioning,
//! so a key the proxy routes to the wrong shard finds nothing there.
//!
//! With `DRIVERS_TRACE=1` set, JDBC and psycopg log every protocol message they exchange into
//! their runs' log files (under the target directory's `tmp/drivers/`), and
//! `SHARDGATE_LOG=debug` shows the proxy's side.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::{create_database, psql_direct, APP_PASSWORD, SERVER_PASSWORD};
use rust_decimal::Decimal;
use tokio_postgres::types::Type;

/// The databases and URLs every driver test uses.
struct Matrix {
    shards: [String; 2],
    proxy_url: String,
    oracle_url: String,
}

static MATRIX: OnceLock<Matrix> = OnceLock::new();

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn drivers_dir() -> PathBuf {
    repo_root().join("integration/drivers")
}

/// Scratch space under the build's target directory (compiled Java, result files).
fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drivers");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

const MAP: &str = "name: drivers
type: hash
key_type: bigint
partitions: 4
assign: { s0: [0, 2], s1: [1, 3] }
tables: [{ table: customers, column: id }, { table: orders, column: customer_id }]
";

const SCHEMA: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, country text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount numeric(10,2) NOT NULL);
CREATE INDEX orders_customer ON orders (customer_id);
";

/// Loads the schema and the rows; `remainders`: only the rows of those hash remainders.
fn load(db: &str, remainders: Option<[u32; 2]>) {
    psql_direct(db, SCHEMA);
    let keys = "SELECT (d * 1000 + i)::bigint AS id FROM generate_series(1, 5) d, generate_series(0, 19) i";
    let filter = match remainders {
        None => String::new(),
        Some([a, b]) => format!(
            "WHERE satisfies_hash_partition('keyspace'::regclass, 4, {a}, id) \
             OR satisfies_hash_partition('keyspace'::regclass, 4, {b}, id)"
        ),
    };
    psql_direct(
        db,
        &format!(
            "CREATE TABLE keyspace (id bigint) PARTITION BY HASH (id);
             INSERT INTO customers SELECT id, 'c' || id, (ARRAY['de', 'fr', 'it', 'nl'])[1 + id % 4] FROM ({keys}) k {filter};
             INSERT INTO orders SELECT c.id * 10 + n, c.id, (c.id * 10 + n) * 37 % 10000 / 100.0 FROM customers c, generate_series(0, 4) n;
             DROP TABLE keyspace;
             ANALYZE;"
        ),
    );
}

fn matrix() -> &'static Matrix {
    MATRIX.get_or_init(|| {
        install();
        let shards = [create_database("drivers_s0"), create_database("drivers_s1")];
        let oracle = create_database("drivers_oracle");
        load(&oracle, None);
        load(&shards[0], Some([0, 2]));
        load(&shards[1], Some([1, 3]));
        let count = |db: &str| -> i64 {
            psql_direct(db, "SELECT count(*) FROM customers")
                .parse()
                .unwrap()
        };
        let on = [count(&shards[0]), count(&shards[1])];
        assert_eq!(on[0] + on[1], 100, "{on:?}");
        assert!(on[0] > 20 && on[1] > 20, "{on:?}");
        let (addr, _dir) = e2e::sharded_proxy("drivers", &shards, MAP, "", "{ size: 10 }");
        let info = e2e::cluster();
        Matrix {
            shards,
            proxy_url: format!(
                "postgres://app:{APP_PASSWORD}@127.0.0.1:{}/app",
                addr.port()
            ),
            oracle_url: format!(
                "postgres://{}:{SERVER_PASSWORD}@127.0.0.1:{}/{oracle}",
                info.superuser, info.port
            ),
        }
    })
}

/// Runs `integration/drivers/install.sh` (installs what is missing, quick otherwise).
fn install() {
    let out = Command::new("bash")
        .arg(drivers_dir().join("install.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "integration/drivers/install.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that the driver's keys live where its script says: `keys[i]` on shard `s{i}`.
fn assert_placement(keys: [&[i64]; 2]) {
    let m = matrix();
    for (i, shard_keys) in keys.iter().enumerate() {
        let list: Vec<String> = shard_keys.iter().map(i64::to_string).collect();
        let found = psql_direct(
            &m.shards[i],
            &format!(
                "SELECT count(*) FROM customers WHERE id IN ({})",
                list.join(", ")
            ),
        );
        assert_eq!(
            found,
            shard_keys.len().to_string(),
            "keys {list:?} are not all on s{i}"
        );
    }
}

/// What one run of a driver program left: its result lines and its own output.
struct Run {
    result: String,
    log: String,
    result_file: PathBuf,
    log_file: PathBuf,
}

impl Run {
    /// Removes the run's files (kept when a test fails, for a look).
    fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.result_file);
        let _ = std::fs::remove_file(&self.log_file);
    }
}

/// How long a driver program may take before it is taken for hung and killed.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// Runs `program args... URL RESULT_FILE` and returns the result file's text; panics when
/// the program fails.
fn run_program(driver: &str, side: &str, program: &str, args: &[String], url: &str) -> Run {
    let result_file = scratch().join(format!("{driver}-{side}-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&result_file);
    let log_file = scratch().join(format!("{driver}-{side}-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_file).expect("log file");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg(url)
        .arg(&result_file)
        .current_dir(drivers_dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    // The URL says everything; libpq-based drivers would also read PG* variables.
    for (var, _) in std::env::vars() {
        if var.starts_with("PG") {
            cmd.env_remove(var);
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for driver") {
            break status;
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{driver} against the {side} did not finish in {HANG_GUARD:?}; its output:\n{}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        status.success(),
        "{driver} against the {side} failed ({status}); its output:\n{log}"
    );
    let result = std::fs::read_to_string(&result_file)
        .unwrap_or_else(|e| panic!("{driver} against the {side} wrote no result: {e}\n{log}"));
    Run {
        result,
        log,
        result_file,
        log_file,
    }
}

/// Runs the driver program against the oracle and through the proxy; checks `expected`
/// lines in the oracle's result, then that the proxy's result is the same.
fn run_both(driver: &str, program: &str, args: &[String], expected: &[String]) {
    let m = matrix();
    let oracle = run_program(driver, "oracle", program, args, &m.oracle_url);
    let proxy = run_program(driver, "proxy", program, args, &m.proxy_url);
    let oracle_lines: Vec<&str> = oracle.result.lines().collect();
    let proxy_lines: Vec<&str> = proxy.result.lines().collect();
    // The error lines of the proxy run's own output (the whole of it is in its log file).
    let errors: Vec<&str> = proxy
        .log
        .lines()
        .filter(|l| l.contains(": ERROR ") || l.starts_with("HINT") || l.starts_with("  Hint"))
        .collect();
    let log = format!(
        "{}\n(all of it: {})",
        errors.join("\n"),
        proxy.log_file.display()
    );
    check(driver, &oracle_lines, &proxy_lines, expected, &log);
    oracle.remove_files();
    proxy.remove_files();
}

/// The oracle's result holds every expected line, and the proxy's result is the oracle's.
fn check(driver: &str, oracle: &[&str], proxy: &[&str], expected: &[String], proxy_log: &str) {
    assert!(
        oracle.len() >= expected.len() && !oracle.is_empty(),
        "{driver}: the oracle run printed only {} lines",
        oracle.len()
    );
    for line in expected {
        assert!(
            oracle.contains(&line.as_str()),
            "{driver}: the oracle run lacks the expected line\n  {line}\nit printed:\n{}",
            oracle.join("\n")
        );
    }
    if oracle != proxy {
        panic!(
            "{driver}: the run through the proxy differs from the run against one PostgreSQL\n{}\
             \nthe proxy run's own output (error messages):\n{proxy_log}",
            diff(oracle, proxy)
        );
    }
}

/// The operations whose results differ, matched by the operation's name (the text before
/// the first `: ` of each line; a name seen again is matched to its n-th occurrence).
fn diff(oracle: &[&str], proxy: &[&str]) -> String {
    fn keyed<'a>(lines: &[&'a str]) -> Vec<(String, &'a str)> {
        let mut seen = std::collections::HashMap::new();
        lines
            .iter()
            .map(|line| {
                let (name, result) = line.split_once(": ").unwrap_or((line, ""));
                let n = seen.entry(name).or_insert(0);
                *n += 1;
                let key = if *n == 1 {
                    name.to_owned()
                } else {
                    format!("{name} #{n}")
                };
                (key, result)
            })
            .collect()
    }
    let (o, p) = (keyed(oracle), keyed(proxy));
    let p_map: std::collections::HashMap<&str, &str> =
        p.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let o_map: std::collections::HashMap<&str, &str> =
        o.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mut entries = Vec::new();
    for (name, result) in &o {
        match p_map.get(name.as_str()) {
            Some(r) if r == result => {}
            Some(r) => entries.push(format!("{name}\n  oracle: {result}\n  proxy:  {r}")),
            None => entries.push(format!("{name}\n  oracle: {result}\n  proxy:  (missing)")),
        }
    }
    for (name, result) in &p {
        if !o_map.contains_key(name.as_str()) {
            entries.push(format!("{name}\n  oracle: (missing)\n  proxy:  {result}"));
        }
    }
    const SHOWN: usize = 80;
    let mut text = format!(
        "{} of {} operations differ:\n",
        entries.len(),
        o.len().max(p.len())
    );
    for e in entries.iter().take(SHOWN) {
        text.push_str(e);
        text.push('\n');
    }
    if entries.len() > SHOWN {
        text.push_str(&format!("... and {} more\n", entries.len() - SHOWN));
    }
    text
}

/// The loaded orders of a customer as the scripts print them, each amount raised by `add`
/// (in cents): `[["10030","11.10"],...]`.
fn orders_json(customer: i64, add: i64) -> String {
    let rows: Vec<String> = (0..5)
        .map(|n| {
            let id = customer * 10 + n;
            let cents = id * 37 % 10000 + add;
            format!("[\"{id}\",\"{}.{:02}\"]", cents / 100, cents % 100)
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// `[["5","<sum>"]]`: count and sum of a customer's loaded orders, each raised by `add` cents.
fn orders_count_sum_json(customer: i64, add: i64) -> String {
    let cents: i64 = (0..5).map(|n| (customer * 10 + n) * 37 % 10000 + add).sum();
    format!("[[\"5\",\"{}.{:02}\"]]", cents / 100, cents % 100)
}

// ---------------------------------------------------------------------------------------
// JDBC

const JDBC_KEYS: [&[i64]; 2] = [
    &[1000, 1001, 1002, 1008, 1010, 1011, 1014, 1016, 1017, 1018],
    &[1003, 1004, 1005, 1006, 1007, 1009, 1012, 1013, 1015, 1019],
];

/// Compiles JdbcMatrix.java against Debian's driver jar; returns the class directory.
fn compile_jdbc() -> PathBuf {
    let classes = scratch().join("jdbc-classes");
    std::fs::create_dir_all(&classes).expect("class dir");
    let out = Command::new("javac")
        .args(["-cp", "/usr/share/java/postgresql.jar", "-d"])
        .arg(&classes)
        .arg(drivers_dir().join("jdbc/JdbcMatrix.java"))
        .output()
        .expect("run javac");
    assert!(
        out.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    classes
}

#[test]
fn jdbc() {
    matrix();
    assert_placement(JDBC_KEYS);
    let classes = compile_jdbc();
    let classpath = format!("{}:/usr/share/java/postgresql.jar", classes.display());
    // Keys of the first combination (autocommit off, prepareThreshold 1, no fetch size).
    let (s1, s0) = (1003, 1000);
    let mut expected = Vec::new();
    for (key, shard) in [(s1, "s1"), (s0, "s0")] {
        let base = format!("select-update autocommit=false threshold=1 fetch=0 key={key}/{shard}");
        expected.push(format!("{base} run=1 select: {}", orders_json(key, 0)));
        expected.push(format!("{base} run=1 update: 5"));
        expected.push(format!("{base} run=1 commit: ok"));
        expected.push(format!("{base} run=6 select: {}", orders_json(key, 500)));
        expected.push(format!(
            "final orders key={key}: {}",
            orders_count_sum_json(key, 600)
        ));
    }
    // Autocommit on, threshold 5, fetch size 2: the last combination's keys.
    expected.push(format!(
        "select-update autocommit=true threshold=5 fetch=2 key=1013/s1 run=6 select: {}",
        orders_json(1013, 500)
    ));
    expected.push(format!(
        "batch autocommit=false s1 keys=1015,1019 execute: [{}]",
        ["1"; 20].join(",")
    ));
    expected.push(
        "batch autocommit=false s1 keys=1015,1019 read back: [[\"20\",\"2195.00\"]]".to_owned(),
    );
    let mut args = vec!["-cp".to_owned(), classpath, "JdbcMatrix".to_owned()];
    if std::env::var_os("DRIVERS_TRACE").is_some() {
        args.insert(
            0,
            "-Djava.util.logging.config.file=jdbc/trace.properties".to_owned(),
        );
    }
    run_both("jdbc", "java", &args, &expected);
}

// ---------------------------------------------------------------------------------------
// psycopg 3

const PSYCOPG_KEYS: [&[i64]; 2] = [
    &[
        2000, 2001, 2002, 2003, 2004, 2007, 2008, 2009, 2013, 2016, 2017, 2019,
    ],
    &[2005, 2006, 2010, 2011, 2012, 2014, 2015, 2018],
];

#[test]
fn psycopg() {
    matrix();
    assert_placement(PSYCOPG_KEYS);
    let doubled: Vec<String> = (0..5)
        .map(|n| {
            let id = 2011 * 10 + n;
            let cents = id * 37 % 10000 * 2;
            format!("[\"{id}\",\"{}.{:02}\"]", cents / 100, cents % 100)
        })
        .collect();
    let expected = vec![
        format!("prepared round=1 key=2000: {}", orders_json(2000, 0)),
        format!("prepared round=3 key=2005: {}", orders_json(2005, 0)),
        format!("named cursor key=2011 iterate: {}", orders_json(2011, 0)),
        "named cursor key=2011 update: 5".to_owned(),
        format!("named cursor key=2011 after: [{}]", doubled.join(",")),
        "executemany shard=s1 transaction=False read back: [[\"50\",\"1250.00\"]]".to_owned(),
        "executemany shard=s1 transaction=True read back: [[\"50\",\"1250.00\"]]".to_owned(),
        format!(
            "pipeline one shard key=2018 select: {}",
            orders_json(2018, 0)
        ),
        format!(
            "pipeline one shard key=2018 select again: {}",
            orders_json(2018, 1)
        ),
    ];
    run_both(
        "psycopg",
        "python3",
        &["python/psycopg_matrix.py".to_owned()],
        &expected,
    );
}

// ---------------------------------------------------------------------------------------
// asyncpg

const ASYNCPG_KEYS: [&[i64]; 2] = [
    &[3003, 3007, 3013, 3014, 3015, 3018, 3019],
    &[
        3000, 3001, 3002, 3004, 3005, 3006, 3008, 3009, 3010, 3011, 3012, 3016, 3017,
    ],
];

#[test]
fn asyncpg() {
    matrix();
    assert_placement(ASYNCPG_KEYS);
    let expected = vec![
        format!("prepared round=1 key=3003: {}", orders_json(3003, 0)),
        format!("prepared round=3 key=3000: {}", orders_json(3000, 0)),
        format!(
            "transaction commit key=3004 select: {}",
            orders_json(3004, 0)
        ),
        "transaction commit key=3004 update: \"UPDATE 5\"".to_owned(),
        format!(
            "transaction rollback key=3005 after: {}",
            orders_json(3005, 0)
        ),
        "executemany shard=s1 read back: [\"50\",\"1250.00\"]".to_owned(),
        format!(
            "cursor key=3010 iterate prefetch=2: {}",
            orders_json(3010, 0)
        ),
    ];
    run_both(
        "asyncpg",
        "python3",
        &["python/asyncpg_matrix.py".to_owned()],
        &expected,
    );
}

// ---------------------------------------------------------------------------------------
// node-postgres

const NODE_KEYS: [&[i64]; 2] = [
    &[
        4001, 4003, 4004, 4007, 4008, 4009, 4011, 4012, 4014, 4015, 4016,
    ],
    &[4000, 4002, 4005, 4006, 4010, 4013, 4017, 4018, 4019],
];

#[test]
fn node_postgres() {
    matrix();
    assert_placement(NODE_KEYS);
    let expected = vec![
        format!("named prepared round=1 key=4001: {}", orders_json(4001, 0)),
        format!("named prepared round=3 key=4002: {}", orders_json(4002, 0)),
        format!(
            "transaction commit keys=4006,4010 select: {}",
            orders_json(4006, 0)
        ),
        format!(
            "transaction rollback key=4013 after: {}",
            orders_json(4013, 0)
        ),
        "parallel reads key=4001: 10x [[\"4001\",\"c4001\",\"fr\"]]".to_owned(),
        "parallel reads key=4000: 10x [[\"4000\",\"c4000\",\"de\"]]".to_owned(),
    ];
    run_both(
        "node-postgres",
        "node",
        &["node/matrix.js".to_owned()],
        &expected,
    );
}

// ---------------------------------------------------------------------------------------
// tokio-postgres: the script is here, run against both sides in-process.

const TOKIO_KEYS: [&[i64]; 2] = [
    &[
        5000, 5002, 5004, 5005, 5008, 5009, 5010, 5011, 5015, 5016, 5017, 5018,
    ],
    &[5001, 5003, 5006, 5007, 5012, 5013, 5014, 5019],
];

const ORDERS_OF: &str = "SELECT id, amount FROM orders WHERE customer_id = $1 ORDER BY id";

/// Each column of a row as its text (results come in binary: each type read as itself).
fn row_text(row: &tokio_postgres::Row) -> Vec<Option<String>> {
    (0..row.len())
        .map(|i| match *row.columns()[i].type_() {
            Type::INT8 => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
            Type::INT4 => row.get::<_, Option<i32>>(i).map(|v| v.to_string()),
            Type::TEXT | Type::VARCHAR => row.get::<_, Option<String>>(i),
            Type::NUMERIC => row.get::<_, Option<Decimal>>(i).map(|v| v.to_string()),
            ref t => panic!("the tokio-postgres script reads no {t}"),
        })
        .collect()
}

/// The result lines of the tokio-postgres script.
#[derive(Default)]
struct Lines(Vec<String>);

impl Lines {
    fn rows(&mut self, label: &str, r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>) {
        self.value(
            label,
            r.map(|rows| serde_json::json!(rows.iter().map(row_text).collect::<Vec<_>>())),
        );
    }

    fn sorted_rows(
        &mut self,
        label: &str,
        r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    ) {
        self.value(
            label,
            r.map(|rows| {
                let mut v: Vec<_> = rows.iter().map(row_text).collect();
                v.sort();
                serde_json::json!(v)
            }),
        );
    }

    fn value(&mut self, label: &str, r: Result<serde_json::Value, tokio_postgres::Error>) {
        match r {
            Ok(v) => self.0.push(format!(
                "{label}: {}",
                serde_json::to_string(&v).expect("json")
            )),
            Err(e) => self.error(label, &e),
        }
    }

    fn error(&mut self, label: &str, e: &tokio_postgres::Error) {
        self.0.push(format!("{label}: ERROR {}", e2e::sqlstate(e)));
        println!("tokio-postgres {label}: ERROR {e:?}");
    }
}

async fn tokio_script(url: &str) -> Vec<String> {
    let [s0, s1] = TOKIO_KEYS;
    let mut c = e2e::connect(url).await;
    let mut out = Lines::default();

    // Prepared statements, results in binary.
    let orders_of = c.prepare(ORDERS_OF).await.expect("prepare");
    for round in 1..=3 {
        for key in [s0[0], s1[0]] {
            out.rows(
                &format!("prepared round={round} key={key}"),
                c.query(&orders_of, &[&key]).await,
            );
        }
    }
    let by_id = c
        .prepare_typed(
            "SELECT id, name, country FROM customers WHERE id = $1",
            &[Type::INT8],
        )
        .await
        .expect("prepare");
    for key in [s0[1], s1[1]] {
        out.rows(&format!("typed key={key}"), c.query(&by_id, &[&key]).await);
    }
    out.rows(
        "any of one shard",
        c.query(
            "SELECT id FROM orders WHERE customer_id = ANY($1) ORDER BY id",
            &[&vec![s1[2], s1[3]]],
        )
        .await,
    );
    for key in [s0[2], s1[2]] {
        out.rows(
            &format!("aggregate key={key}"),
            c.query(
                "SELECT count(*), sum(amount), max(amount) FROM orders WHERE customer_id = $1",
                &[&key],
            )
            .await,
        );
    }
    out.sorted_rows(
        "in-list both shards",
        c.query(
            "SELECT id, customer_id, amount FROM orders WHERE customer_id IN ($1, $2) AND id < 1000000",
            &[&s0[3], &s1[3]],
        )
        .await,
    );

    // Pipelined: ten statements on alternating shards in flight at once.
    let keys = [
        s0[4], s1[4], s0[5], s1[5], s0[4], s1[4], s0[5], s1[5], s0[4], s1[4],
    ];
    let results = futures_util::future::join_all(keys.iter().map(|&k| {
        let (c, st) = (&c, &orders_of);
        async move { c.query(st, &[&k]).await }
    }))
    .await;
    for (i, (k, r)) in keys.iter().zip(results).enumerate() {
        out.rows(&format!("pipelined #{i} key={k}"), r);
    }

    // A transaction on s1 keys that commits, one that rolls back, and transactions whose
    // first statement is one prepared before them, on each shard.
    let key = s1[6];
    let label = format!("transaction commit key={key}");
    let r: Result<(), tokio_postgres::Error> = async {
        let tx = c.transaction().await?;
        out.rows(
            &format!("{label} select"),
            Ok(tx.query(&orders_of, &[&key]).await?),
        );
        let n = tx
            .execute(
                "UPDATE orders SET amount = amount + 4 WHERE customer_id = $1",
                &[&key],
            )
            .await?;
        out.value(&format!("{label} update"), Ok(serde_json::json!(n)));
        let amount = Decimal::new(999, 2);
        let n = tx
            .execute(
                "INSERT INTO orders (id, customer_id, amount) VALUES ($1, $2, $3)",
                &[&5_100_000i64, &key, &amount],
            )
            .await?;
        out.value(&format!("{label} insert"), Ok(serde_json::json!(n)));
        // Pipelined inside the transaction.
        let (a, b) = futures_util::future::try_join(
            tx.query(&orders_of, &[&key]),
            tx.query_one(
                "SELECT count(*) FROM orders WHERE customer_id = $1",
                &[&key],
            ),
        )
        .await?;
        out.rows(&format!("{label} select again"), Ok(a));
        out.value(
            &format!("{label} count"),
            Ok(serde_json::json!(b.get::<_, i64>(0))),
        );
        tx.commit().await
    }
    .await;
    if let Err(e) = r {
        out.error(&label, &e);
    }
    out.rows(
        &format!("{label} after"),
        c.query(&orders_of, &[&key]).await,
    );

    let key = s1[7];
    let label = format!("transaction rollback key={key}");
    let r: Result<(), tokio_postgres::Error> = async {
        let tx = c.transaction().await?;
        let n = tx
            .execute("DELETE FROM orders WHERE customer_id = $1", &[&key])
            .await?;
        out.value(&format!("{label} delete"), Ok(serde_json::json!(n)));
        tx.rollback().await
    }
    .await;
    if let Err(e) = r {
        out.error(&label, &e);
    }
    out.rows(
        &format!("{label} after"),
        c.query(&orders_of, &[&key]).await,
    );

    for key in [s1[5], s0[6]] {
        let label = format!("transaction prepared first key={key}");
        let r: Result<(), tokio_postgres::Error> = async {
            let tx = c.transaction().await?;
            out.rows(
                &format!("{label} select"),
                Ok(tx.query(&by_id, &[&key]).await?),
            );
            let n = tx
                .execute(
                    "UPDATE customers SET name = name || '!' WHERE id = $1",
                    &[&key],
                )
                .await?;
            out.value(&format!("{label} update"), Ok(serde_json::json!(n)));
            tx.commit().await
        }
        .await;
        if let Err(e) = r {
            out.error(&label, &e);
        }
        out.rows(&format!("{label} after"), c.query(&by_id, &[&key]).await);
    }
    out.0
}

#[tokio::test]
async fn tokio_postgres() {
    let m = matrix();
    assert_placement(TOKIO_KEYS);
    let oracle = tokio_script(&m.oracle_url).await;
    let proxy = tokio_script(&m.proxy_url).await;
    let expected = vec![
        format!("prepared round=1 key=5000: {}", orders_json(5000, 0)),
        format!("prepared round=3 key=5001: {}", orders_json(5001, 0)),
        "typed key=5002: [[\"5002\",\"c5002\",\"it\"]]".to_owned(),
        format!("pipelined #1 key=5012: {}", orders_json(5012, 0)),
        format!(
            "transaction commit key=5014 select: {}",
            orders_json(5014, 0)
        ),
        "transaction commit key=5014 count: 6".to_owned(),
        format!(
            "transaction rollback key=5019 after: {}",
            orders_json(5019, 0)
        ),
    ];
    let oracle: Vec<&str> = oracle.iter().map(String::as_str).collect();
    let proxy: Vec<&str> = proxy.iter().map(String::as_str).collect();
    check(
        "tokio-postgres",
        &oracle,
        &proxy,
        &expected,
        "(above: lines starting with `tokio-postgres`)",
    );
}
