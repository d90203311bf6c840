//! Hash sharding is PostgreSQL's own: for every supported key type, the remainder the router
//! computes is the one for which PostgreSQL's `satisfies_hash_partition` holds.

use e2e::{ProxyOptions, TestDb};
use router::hash::{self, PARTITION_SEED};

const MODULUS: u64 = 8;
const KEYS: i64 = 10_000;

async fn mismatches(
    c: &tokio_postgres::Client,
    sql_type: &str,
    keys_sql: &str,
    keys: &(dyn tokio_postgres::types::ToSql + Sync),
    remainders: &[i32],
) -> i64 {
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS h; CREATE TABLE h (k {sql_type}) PARTITION BY HASH (k)"
    ))
    .await
    .unwrap();
    let sql = format!(
        "SELECT count(*) FROM unnest({keys_sql}, $2::int4[]) AS t(k, r)
         WHERE NOT satisfies_hash_partition('h'::regclass, {MODULUS}, r, k)"
    );
    c.query_one(&sql, &[keys, &remainders])
        .await
        .unwrap()
        .get(0)
}

fn rem(h: u64) -> i32 {
    hash::partition_remainder([h], MODULUS) as i32
}

#[tokio::test]
async fn every_key_type_hashes_as_postgresql_does() {
    let db = TestDb::new("hashing", ProxyOptions::default());
    let c = db.connect_direct().await;

    // Integers: spread over the whole range, small ones, negatives and the extremes.
    let ints: Vec<i64> = (0..KEYS)
        .map(|i| match i % 4 {
            0 => i,
            1 => -i,
            2 => i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64),
            _ => i64::MAX - i,
        })
        .collect();
    let r: Vec<i32> = ints
        .iter()
        .map(|&v| rem(hash::hash_int8(v, PARTITION_SEED)))
        .collect();
    assert_eq!(
        mismatches(&c, "bigint", "$1::int8[]", &ints, &r).await,
        0,
        "bigint"
    );

    let int4: Vec<i32> = ints.iter().map(|&v| v as i32).collect();
    let r: Vec<i32> = int4
        .iter()
        .map(|&v| rem(hash::hash_int4(v, PARTITION_SEED)))
        .collect();
    assert_eq!(
        mismatches(&c, "integer", "$1::int4[]", &int4, &r).await,
        0,
        "integer"
    );

    let int2: Vec<i16> = ints.iter().map(|&v| v as i16).collect();
    let r: Vec<i32> = int2
        .iter()
        .map(|&v| rem(hash::hash_int4(v as i32, PARTITION_SEED)))
        .collect();
    assert_eq!(
        mismatches(&c, "smallint", "$1::int2[]", &int2, &r).await,
        0,
        "smallint"
    );

    // Text of every length around the 12-byte blocks, with multi-byte UTF-8.
    let texts: Vec<String> = (0..KEYS)
        .map(|i| {
            let base = format!("key-{i}-é€-{}", "x".repeat((i % 29) as usize));
            base.chars().take((i % 40) as usize).collect()
        })
        .collect();
    let r: Vec<i32> = texts
        .iter()
        .map(|t| rem(hash::hash_text(t, PARTITION_SEED)))
        .collect();
    assert_eq!(
        mismatches(&c, "text", "$1::text[]", &texts, &r).await,
        0,
        "text"
    );
    assert_eq!(
        mismatches(&c, "varchar(64)", "$1::varchar[]", &texts, &r).await,
        0,
        "varchar"
    );

    let uuids: Vec<uuid::Uuid> = (0..KEYS as u128)
        .map(|i| uuid::Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)))
        .collect();
    let r: Vec<i32> = uuids
        .iter()
        .map(|u| rem(hash::hash_uuid(u.as_bytes(), PARTITION_SEED)))
        .collect();
    assert_eq!(
        mismatches(&c, "uuid", "$1::uuid[]", &uuids, &r).await,
        0,
        "uuid"
    );

    // Dates and timestamps hash as their offset from PostgreSQL's epoch, 2000-01-01.
    let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
    let dates: Vec<chrono::NaiveDate> = (0..KEYS)
        .map(|i| epoch + chrono::Duration::days(i * 7 - 30_000))
        .collect();
    let r: Vec<i32> = dates
        .iter()
        .map(|d| {
            let days = (*d - epoch).num_days() as i32;
            rem(hash::hash_int4(days, PARTITION_SEED))
        })
        .collect();
    assert_eq!(
        mismatches(&c, "date", "$1::date[]", &dates, &r).await,
        0,
        "date"
    );

    let t0 = epoch.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let stamps: Vec<chrono::DateTime<chrono::Utc>> = (0..KEYS)
        .map(|i| t0 + chrono::Duration::microseconds(i * 987_654_321_123 - 3_000_000_000_000_000))
        .collect();
    let r: Vec<i32> = stamps
        .iter()
        .map(|t| {
            let micros = (*t - t0).num_microseconds().unwrap();
            rem(hash::hash_int8(micros, PARTITION_SEED))
        })
        .collect();
    assert_eq!(
        mismatches(&c, "timestamptz", "$1::timestamptz[]", &stamps, &r).await,
        0,
        "timestamptz"
    );

    // Two key columns: the column hashes are combined in order.
    c.batch_execute(
        "DROP TABLE IF EXISTS h2; CREATE TABLE h2 (a bigint, b text) PARTITION BY HASH (a, b)",
    )
    .await
    .unwrap();
    let r: Vec<i32> = ints
        .iter()
        .zip(&texts)
        .map(|(&a, b)| {
            hash::partition_remainder(
                [
                    hash::hash_int8(a, PARTITION_SEED),
                    hash::hash_text(b, PARTITION_SEED),
                ],
                MODULUS,
            ) as i32
        })
        .collect();
    let bad: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM unnest($1::int8[], $2::text[], $3::int4[]) AS t(a, b, r)
                 WHERE NOT satisfies_hash_partition('h2'::regclass, {MODULUS}, r, a, b)"
            ),
            &[&ints, &texts, &r],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "(bigint, text)");
}
