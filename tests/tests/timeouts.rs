//! The proxy's timeouts, each as PostgreSQL words its own: a client idle too long is
//! disconnected (57P05), one idle inside a transaction too (25P03, its transaction rolled
//! back), and a statement running too long is cancelled (57014) while the session goes on.

use e2e::{psql_direct, sqlstate, ProxyOptions, TestDb};

fn db(prefix: &str, timeouts_ms: (u64, u64, u64)) -> TestDb {
    TestDb::new(
        prefix,
        ProxyOptions {
            timeouts_ms,
            ..ProxyOptions::default()
        },
    )
}

#[tokio::test]
async fn an_idle_client_is_disconnected() {
    let db = db("to_idle", (300, 0, 0));
    let mut raw = e2e::raw::Raw::login(db.proxy_addr).await;
    // It says why, then closes.
    let ms = raw.until_tag('E').await;
    assert!(
        ms.last().is_some_and(|m| m.1.starts_with("57P05")),
        "{ms:?}"
    );
    let c = db.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert!(c.simple_query("SELECT 1").await.is_err());
    assert!(c.is_closed());
    let other = db.connect().await;
    other.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_client_idle_in_a_transaction_is_disconnected_and_its_work_rolled_back() {
    let db = db("to_tx", (0, 300, 0));
    psql_direct(&db.name, "CREATE TABLE t (x int)");
    let c = db.connect().await;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut raw = e2e::raw::Raw::login(db.proxy_addr).await;
    let ms = raw.round(&[e2e::raw::query("BEGIN; SELECT 1")]).await;
    assert!(e2e::raw::errors(&ms).is_empty(), "{ms:?}");
    let ms = raw.until_tag('E').await;
    assert!(
        ms.last().is_some_and(|m| m.1.starts_with("25P03")),
        "{ms:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert!(c.simple_query("COMMIT").await.is_err());
    assert!(c.is_closed());
    assert_eq!(psql_direct(&db.name, "SELECT count(*) FROM t"), "0");
    // Outside a transaction the same client may idle as long as it likes.
    let c = db.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_statement_running_too_long_is_cancelled_and_the_session_goes_on() {
    let db = db("to_query", (0, 0, 300));
    let c = db.connect().await;
    let e = c.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("query timeout")),
        "{e:?}"
    );
    let m = c.simple_query("SELECT 2").await.unwrap();
    assert_eq!(e2e::simple_rows(&m), [[Some("2".to_owned())]]);
}
