//! The differential test's dataset: customers, their orders (co-located with them by
//! customer id) and the regions reference table, drawn from a seeded generator so that every
//! run loads the same rows. The rows carry the awkward values a merge must get right: NULLs
//! in most columns, ties, negative numbers, NaN and ±Infinity, infinite dates, text beyond
//! ASCII, regions without customers, customers without orders and orders without customers.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The tables, created the same way on the single database and (through the proxy) on every
/// shard.
pub const SCHEMA: [&str; 3] = [
    "CREATE TABLE customers (id bigint PRIMARY KEY, name text, region text, score int, \
     balance numeric(12,2), rating float8, joined date, seen timestamptz, active bool)",
    "CREATE TABLE orders (id bigint, customer_id bigint, amount numeric(10,2), qty int, \
     placed timestamp, note text, PRIMARY KEY (customer_id, id))",
    "CREATE TABLE regions (code text PRIMARY KEY, name text)",
];

/// The shard map of the proxy: `customers.id` and `orders.customer_id` in one bigint hash map
/// over three shards, so a customer's orders live on the customer's shard.
pub const SHARD_MAP: &str = "name: customers\ntype: hash\nkey_type: bigint\npartitions: 6\n\
assign: { s0: [0, 3], s1: [1, 4], s2: [2, 5] }\n\
tables: [{ table: customers, column: id }, { table: orders, column: customer_id }]\n";

/// Region codes with their names; the last two have no customers (and Oceania no name).
pub const REGIONS: [(&str, Option<&str>); 6] = [
    ("EU", Some("Europe")),
    ("NA", Some("North America")),
    ("AS", Some("Asia")),
    ("SA", Some("South America")),
    ("AF", Some("Africa")),
    ("OC", None),
];

/// A customer row, each value already an SQL literal (`NULL` for NULL).
#[derive(Clone, Debug)]
pub struct Customer {
    pub id: i64,
    pub values: [String; 8],
}

/// An order row: its id and customer, and the other values as SQL literals.
#[derive(Clone, Debug)]
pub struct Order {
    pub id: i64,
    pub customer_id: i64,
    pub values: [String; 4],
}

/// The whole dataset.
pub struct Dataset {
    pub customers: Vec<Customer>,
    pub orders: Vec<Order>,
    /// Customer ids that have at least one order.
    pub with_orders: Vec<i64>,
    /// Customer ids of orders whose customer does not exist.
    pub orphans: Vec<i64>,
}

const NAMES: [&str; 16] = [
    "Ada",
    "ada",
    "Bob",
    "Chloé",
    "Dmitri",
    "Émile",
    "O'Brien",
    "Zoë",
    "Ångström",
    "bob",
    "Carla",
    "Dan",
    "Eve",
    "Frank",
    "Ünal",
    "Yuki",
];
const NOTES: [&str; 7] = ["gift", "Gift", "rush", "", "return", "ünïcode", "a'b"];

/// `'text'` with quotes doubled.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Cents as a numeric literal: `-1234` is `-12.34`.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

impl Dataset {
    /// The dataset of `seed`: about 300 customers and 2000 orders.
    pub fn generate(seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids: BTreeSet<i64> = (1..=12).collect();
        while ids.len() < 300 {
            ids.insert(rng.gen_range(-300..=3000));
        }
        let mut customers = Vec::new();
        for &id in &ids {
            customers.push(Customer {
                id,
                values: customer_values(&mut rng),
            });
        }
        // A tenth of the customers get no orders (never 9, which the regressions query).
        let mut buyers: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|&id| id == 9 || !rng.gen_bool(0.1))
            .collect();
        buyers.shuffle(&mut rng);
        let orphans: Vec<i64> = (0..5).map(|i| 9000 + i * 7).collect();
        let mut order_ids: Vec<i64> = (1..=2000).collect();
        order_ids.shuffle(&mut rng);
        let mut orders = Vec::new();
        for (n, id) in order_ids.into_iter().enumerate() {
            let customer_id = if n < buyers.len() {
                // Every buyer gets one order, then the rest are skewed towards the first.
                buyers[n]
            } else if rng.gen_bool(0.02) {
                *orphans.choose(&mut rng).expect("orphans")
            } else {
                let r: f64 = rng.gen();
                buyers[((r * r) * buyers.len() as f64) as usize]
            };
            orders.push(Order {
                id,
                customer_id,
                values: order_values(&mut rng),
            });
        }
        let mut with_orders: Vec<i64> = orders
            .iter()
            .map(|o| o.customer_id)
            .filter(|c| ids.contains(c))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        with_orders.sort();
        Dataset {
            customers,
            orders,
            with_orders,
            orphans,
        }
    }

    /// Multi-row INSERTs with column lists, in batches: the regions, the customers, then the
    /// orders.
    pub fn inserts(&self) -> Vec<String> {
        self.inserts_in(false)
    }

    /// The same rows in reverse order (batches and rows within them): a database loaded so
    /// lays them out otherwise, and answers ties and unordered LIMITs otherwise.
    pub fn inserts_reversed(&self) -> Vec<String> {
        self.inserts_in(true)
    }

    fn inserts_in(&self, reversed: bool) -> Vec<String> {
        let order = |mut v: Vec<String>| {
            if reversed {
                v.reverse();
            }
            v
        };
        let mut out = vec![format!(
            "INSERT INTO regions (code, name) VALUES {}",
            REGIONS
                .iter()
                .map(|(c, n)| format!("({}, {})", quote(c), n.map_or("NULL".into(), quote)))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        let mut batches = Vec::new();
        for batch in self.customers.chunks(100) {
            let rows: Vec<String> = batch
                .iter()
                .map(|c| format!("({}, {})", c.id, c.values.join(", ")))
                .collect();
            batches.push(format!(
                "INSERT INTO customers (id, name, region, score, balance, rating, joined, seen, active) VALUES {}",
                order(rows).join(", ")
            ));
        }
        for batch in self.orders.chunks(250) {
            let rows: Vec<String> = batch
                .iter()
                .map(|o| format!("({}, {}, {})", o.id, o.customer_id, o.values.join(", ")))
                .collect();
            batches.push(format!(
                "INSERT INTO orders (id, customer_id, amount, qty, placed, note) VALUES {}",
                order(rows).join(", ")
            ));
        }
        out.extend(order(batches));
        out
    }

    /// Every customer id.
    pub fn customer_ids(&self) -> Vec<i64> {
        self.customers.iter().map(|c| c.id).collect()
    }
}

fn customer_values(rng: &mut StdRng) -> [String; 8] {
    let null = |rng: &mut StdRng, p: f64| rng.gen_bool(p);
    let name = if null(rng, 0.08) {
        "NULL".to_owned()
    } else if rng.gen_bool(0.02) {
        "''".to_owned()
    } else {
        quote(NAMES.choose(rng).expect("names"))
    };
    let region = match rng.gen_range(0..100) {
        0..=29 => "'EU'",
        30..=54 => "'NA'",
        55..=74 => "'AS'",
        75..=84 => "'SA'",
        85..=94 => "NULL",
        _ => "'XX'", // a code the regions table does not have
    }
    .to_owned();
    let score = if null(rng, 0.1) {
        "NULL".to_owned()
    } else {
        rng.gen_range(-50..=150).to_string()
    };
    let balance = if null(rng, 0.1) {
        "NULL".to_owned()
    } else if rng.gen_bool(0.2) {
        ["0.00", "100.00", "-5.50"]
            .choose(rng)
            .expect("pool")
            .to_string()
    } else {
        money(rng.gen_range(-100_000..=1_000_000))
    };
    let rating = match rng.gen_range(0..100) {
        0..=7 => "NULL".to_owned(),
        8..=10 => "'NaN'".to_owned(),
        11..=12 => "'Infinity'".to_owned(),
        13..=14 => "'-Infinity'".to_owned(),
        15..=34 => ["1.5", "2.5", "0.1", "-3"]
            .choose(rng)
            .expect("pool")
            .to_string(),
        _ => format!("{}", f64::from(rng.gen_range(-4000..4000)) / 7.0),
    };
    let joined = match rng.gen_range(0..100) {
        0..=9 => "NULL".to_owned(),
        10 => "'infinity'".to_owned(),
        11 => "'-infinity'".to_owned(),
        12..=24 => "'2020-02-29'".to_owned(),
        _ => {
            let d = chrono::NaiveDate::from_ymd_opt(2015, 1, 1).expect("date")
                + chrono::Duration::days(rng.gen_range(0..3650));
            format!("'{d}'")
        }
    };
    let seen = if null(rng, 0.1) {
        "NULL".to_owned()
    } else {
        let t = chrono::NaiveDate::from_ymd_opt(2020, 1, 1)
            .expect("date")
            .and_hms_opt(0, 0, 0)
            .expect("time")
            + chrono::Duration::seconds(rng.gen_range(0..4 * 365 * 86_400));
        let micros = if rng.gen_bool(0.3) {
            format!(".{:06}", rng.gen_range(0..1_000_000))
        } else {
            String::new()
        };
        let offset = ["+00", "+05:30", "-08"].choose(rng).expect("offsets");
        format!("'{}{micros}{offset}'", t.format("%Y-%m-%d %H:%M:%S"))
    };
    let active = match rng.gen_range(0..10) {
        0 => "NULL",
        1..=3 => "false",
        _ => "true",
    }
    .to_owned();
    [name, region, score, balance, rating, joined, seen, active]
}

fn order_values(rng: &mut StdRng) -> [String; 4] {
    let amount = match rng.gen_range(0..100) {
        0..=4 => "NULL".to_owned(),
        5..=14 => money(-rng.gen_range(1..50_000)),
        15..=29 => ["9.99", "10.00", "0.00"]
            .choose(rng)
            .expect("pool")
            .to_string(),
        _ => money(rng.gen_range(1..5_000_000)),
    };
    let qty = if rng.gen_bool(0.1) {
        "NULL".to_owned()
    } else {
        rng.gen_range(-3..=20).to_string()
    };
    let placed = if rng.gen_bool(0.05) {
        "NULL".to_owned()
    } else {
        let t = chrono::NaiveDate::from_ymd_opt(2022, 1, 1)
            .expect("date")
            .and_hms_opt(0, 0, 0)
            .expect("time")
            + chrono::Duration::minutes(rng.gen_range(0..2 * 365 * 1440));
        format!("'{}'", t.format("%Y-%m-%d %H:%M:%S"))
    };
    let note = if rng.gen_bool(0.4) {
        "NULL".to_owned()
    } else {
        quote(NOTES.choose(rng).expect("notes"))
    };
    [amount, qty, placed, note]
}
