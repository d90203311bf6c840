//! The proxy speaks the protocol as PostgreSQL does: types in text and binary, errors with
//! all their fields, COPY both ways, pipelining, cancel, LISTEN/NOTIFY, authentication.

use std::time::{Duration, Instant};

use e2e::{connect, sqlstate, ProxyOptions, TestDb, APP_PASSWORD};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::types::ToSql;

#[tokio::test]
async fn simple_and_extended_queries_in_text_and_binary() {
    let db = TestDb::new("types", ProxyOptions::default());
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE t (i2 int2, i4 int4, i8 int8, n numeric, f float8, s text, b bytea, ok bool,
                         ts timestamptz, d date, u uuid, j jsonb, a int4[], ta text[])",
    )
    .await
    .unwrap();
    let ts = chrono::DateTime::parse_from_rfc3339("2024-02-29T12:34:56.789+00:00")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let d = chrono::NaiveDate::from_ymd_opt(1999, 12, 31).unwrap();
    let u = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let j = serde_json::json!({"k": [1, 2, {"x": null}]});
    let n = rust_decimal::Decimal::new(-1234567891, 4);
    let params: [&(dyn ToSql + Sync); 14] = [
        &-32768i16,
        &2147483647i32,
        &-9223372036854775808i64,
        &n,
        &1.5e300f64,
        &"héllo 'quoted' \\ text",
        &vec![0u8, 1, 2, 255],
        &true,
        &ts,
        &d,
        &u,
        &j,
        &vec![1i32, -2, 3],
        &vec!["a".to_string(), "b c".to_string()],
    ];
    // Binary parameters.
    c.execute(
        "INSERT INTO t VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
        &params,
    )
    .await
    .unwrap();
    // Binary results.
    let row = c.query_one("SELECT * FROM t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i16>(0), -32768);
    assert_eq!(row.get::<_, i32>(1), 2147483647);
    assert_eq!(row.get::<_, i64>(2), i64::MIN);
    assert_eq!(row.get::<_, rust_decimal::Decimal>(3), n);
    assert_eq!(row.get::<_, f64>(4), 1.5e300);
    assert_eq!(row.get::<_, &str>(5), "héllo 'quoted' \\ text");
    assert_eq!(row.get::<_, Vec<u8>>(6), vec![0u8, 1, 2, 255]);
    assert!(row.get::<_, bool>(7));
    assert_eq!(row.get::<_, chrono::DateTime<chrono::Utc>>(8), ts);
    assert_eq!(row.get::<_, chrono::NaiveDate>(9), d);
    assert_eq!(row.get::<_, uuid::Uuid>(10), u);
    assert_eq!(row.get::<_, serde_json::Value>(11), j);
    assert_eq!(row.get::<_, Vec<i32>>(12), vec![1, -2, 3]);
    assert_eq!(row.get::<_, Vec<String>>(13), vec!["a", "b c"]);

    // Text results through the simple protocol equal the direct ones byte for byte.
    let sql = "SET TIME ZONE 'UTC'; SELECT * FROM t";
    let direct = db.connect_direct().await;
    let text = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<Option<String>>> {
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    };
    let via_proxy = text(c.simple_query(sql).await.unwrap());
    let via_direct = text(direct.simple_query(sql).await.unwrap());
    assert_eq!(via_proxy, via_direct);
    assert_eq!(via_proxy[0][0].as_deref(), Some("-32768"));
    assert_eq!(via_proxy[0][6].as_deref(), Some("\\x000102ff"));
    assert_eq!(
        via_proxy[0][8].as_deref(),
        Some("2024-02-29 12:34:56.789+00")
    );

    // Text-format parameters: the server parses them.
    let row = c
        .query_one(
            "SELECT $1::text::int8 + 1, $2::text::numeric * 2",
            &[&"41", &"1.25"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, rust_decimal::Decimal>(1).to_string(), "2.50");
}

#[tokio::test]
async fn errors_keep_every_field() {
    let db = TestDb::new("errors", ProxyOptions::default());
    let c = db.connect().await;
    let direct = db.connect_direct().await;
    c.batch_execute("CREATE TABLE u (id int PRIMARY KEY)")
        .await
        .unwrap();
    c.execute("INSERT INTO u VALUES (1)", &[]).await.unwrap();
    let cases = [
        "INSERT INTO u VALUES (1)",         // detail
        "SELECT no_such_function(1, 'x')",  // hint
        "SELECT 1 +* FROM u",               // position
        "SELECT * FROM u WHERE id = 'abc'", // invalid input, position
    ];
    for sql in cases {
        let pe = c.simple_query(sql).await.unwrap_err();
        let de = direct.simple_query(sql).await.unwrap_err();
        let (pe, de) = (pe.as_db_error().unwrap(), de.as_db_error().unwrap());
        assert_eq!(pe.code(), de.code(), "{sql}");
        assert_eq!(pe.message(), de.message(), "{sql}");
        assert_eq!(pe.detail(), de.detail(), "{sql}");
        assert_eq!(pe.hint(), de.hint(), "{sql}");
        assert_eq!(pe.position(), de.position(), "{sql}");
        assert_eq!(pe.severity(), de.severity(), "{sql}");
        // The same through the extended protocol.
        let pe = c.query(sql, &[]).await.unwrap_err();
        let de = direct.query(sql, &[]).await.unwrap_err();
        let (pe, de) = (pe.as_db_error().unwrap(), de.as_db_error().unwrap());
        assert_eq!(
            (pe.code(), pe.detail(), pe.hint()),
            (de.code(), de.detail(), de.hint())
        );
        assert_eq!(pe.position(), de.position(), "{sql}");
    }
    let e = c
        .simple_query("INSERT INTO u VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    assert!(e
        .as_db_error()
        .unwrap()
        .detail()
        .unwrap()
        .contains("(id)=(1)"));
    // The session is usable after errors.
    assert_eq!(
        c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
        7
    );
}

#[tokio::test]
async fn copy_in_and_out_of_100k_rows() {
    let db = TestDb::new("copy", ProxyOptions::default());
    let c = db.connect().await;
    c.batch_execute("CREATE TABLE big (id int, payload text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..100_000 {
        chunk.push_str(&format!("{i}\trow number {i}\n"));
        if chunk.len() > 60_000 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 100_000);
    let row = c
        .query_one(
            "SELECT count(*), sum(id)::int8, count(DISTINCT payload) FROM big",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 100_000);
    assert_eq!(row.get::<_, i64>(1), (0..100_000i64).sum::<i64>());
    assert_eq!(row.get::<_, i64>(2), 100_000);

    let stream = c
        .copy_out("COPY (SELECT * FROM big ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let all: Vec<u8> = chunks.concat();
    let text = String::from_utf8(all).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines[0], "0\trow number 0");
    assert_eq!(lines[99_999], "99999\trow number 99999");

    // A COPY that fails in the middle leaves the session usable.
    let sink = c.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not a number\tx\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&e), "22P02");
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn a_pipeline_of_100_queries() {
    let db = TestDb::new("pipeline", ProxyOptions::default());
    let c = db.connect().await;
    let stmt = c.prepare("SELECT $1::int4 * 2").await.unwrap();
    // tokio-postgres sends all of these before reading any answer.
    let futures = (0..100i32).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move { c.query_one(stmt, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32 * 2);
    }
    // A pipeline where one query fails: the others still get their answers, in order.
    let futures = (0..20i32).map(|i| {
        let c = &c;
        async move {
            let sql = if i == 10 { "SELECT 1/0" } else { "SELECT 1" };
            c.query(sql, &[]).await.map(|r| r.len())
        }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.iter().enumerate() {
        if i == 10 {
            assert_eq!(sqlstate(r.as_ref().unwrap_err()), "22012");
        } else {
            assert_eq!(*r.as_ref().unwrap(), 1, "query {i}");
        }
    }
}

#[tokio::test]
async fn cancel_reaches_the_running_query() {
    let db = TestDb::new("cancel", ProxyOptions::default());
    let c = db.connect().await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let start = Instant::now();
        let r = c.simple_query("SELECT pg_sleep(30)").await;
        (r.map(|_| ()), start.elapsed(), c)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, elapsed, c) = sleeper.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    eprintln!("pg_sleep(30) cancelled after {elapsed:?}");
    // Far below the 30 s the query would take uncancelled.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn listen_notify_in_session_mode() {
    let db = TestDb::new(
        "listen",
        ProxyOptions {
            mode: "session",
            ..Default::default()
        },
    );
    let (listener, mut conn) = tokio_postgres::connect(
        &db.proxy_conninfo("app", APP_PASSWORD),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = db.connect().await;
    sender.batch_execute("NOTIFY jobs, 'hello'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ("jobs".to_string(), "hello".to_string()));
}

#[tokio::test]
async fn listen_is_refused_in_transaction_mode_without_pinning() {
    let db = TestDb::new(
        "nolisten",
        ProxyOptions {
            pinning: false,
            ..ProxyOptions::default()
        },
    );
    let c = db.connect().await;
    let e = c.batch_execute("LISTEN jobs").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert!(e.as_db_error().unwrap().hint().unwrap().contains("session"));
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn authentication_methods_and_failures() {
    let db = TestDb::new("auth", ProxyOptions::default());
    // SCRAM (the default), md5 and trust users.
    for (user, pw) in [
        ("app", APP_PASSWORD),
        ("md5user", APP_PASSWORD),
        ("trustuser", ""),
    ] {
        let c = connect(&db.proxy_conninfo(user, pw)).await;
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1,
            "{user}"
        );
    }
    for (user, pw) in [("app", "wrong"), ("md5user", "wrong"), ("nobody", "x")] {
        let e = tokio_postgres::connect(&db.proxy_conninfo(user, pw), tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} with a wrong password got in"));
        assert_eq!(sqlstate(&e), "28P01", "{user}: {e}");
    }
    let conninfo = db
        .proxy_conninfo("app", APP_PASSWORD)
        .replace("dbname=app", "dbname=nope");
    let e = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e), "3D000", "{e}");
}

#[tokio::test]
async fn too_many_clients_get_53300() {
    let db = TestDb::new(
        "maxconn",
        ProxyOptions {
            max_client_connections: 2,
            ..Default::default()
        },
    );
    let a = db.connect().await;
    let b = db.connect().await;
    let e = tokio_postgres::connect(
        &db.proxy_conninfo("app", APP_PASSWORD),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    drop(a);
    // The slot frees once the client is gone.
    let mut ok = false;
    for _ in 0..100 {
        if tokio_postgres::connect(
            &db.proxy_conninfo("app", APP_PASSWORD),
            tokio_postgres::NoTls,
        )
        .await
        .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
    drop(b);
}
