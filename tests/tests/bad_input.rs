//! Bad input on the wire: each offending client gets a FATAL 08P01 ErrorResponse and is
//! closed; clients with queries in flight at the same moment notice nothing.

use std::time::Duration;

use e2e::{raw_login, ProxyOptions, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the proxy closes; returns everything it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .ok();
    out
}

/// The SQLSTATE and severity of the first ErrorResponse in `bytes`.
fn first_error(bytes: &[u8]) -> Option<(String, String)> {
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
        if bytes[i] == b'E' {
            let e = wire::messages::ErrorFields::parse(&bytes[i + 5..i + 1 + len]).ok()?;
            return Some((e.severity, e.code));
        }
        i += 1 + len;
    }
    None
}

fn fatal_08p01(bytes: &[u8]) {
    assert_eq!(
        first_error(bytes),
        Some(("FATAL".to_string(), "08P01".to_string())),
        "got {bytes:?}"
    );
}

#[tokio::test]
async fn each_bad_client_is_told_and_closed_while_others_go_on() {
    let db = TestDb::new("badinput", ProxyOptions::default());
    let conninfo = db.proxy_conninfo("app", e2e::APP_PASSWORD);
    // Well-behaved clients with queries in flight the whole time.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (0..4i32)
        .map(|w| {
            let conninfo = conninfo.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let c = e2e::connect(&conninfo).await;
                let mut n = 0u32;
                while !*stop.borrow() {
                    let row = c
                        .query_one("SELECT pg_sleep(0.02), $1::int + 1", &[&w])
                        .await
                        .expect("a query in flight while bad clients come and go");
                    assert_eq!(row.get::<_, i32>(1), w + 1);
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Garbage after a successful startup.
    let mut s = raw_login(&db).await;
    s.write_all(b"this is not the PostgreSQL protocol at all")
        .await
        .unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // A message announcing 2 GiB.
    let mut s = raw_login(&db).await;
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // A length below the minimum.
    let mut s = raw_login(&db).await;
    s.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // An unknown message type.
    let mut s = raw_login(&db).await;
    s.write_all(&[b'z', 0, 0, 0, 4]).await.unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // A Bind whose parameter length runs past the end of the message.
    let mut s = raw_login(&db).await;
    s.write_all(&[b'B', 0, 0, 0, 14, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // A Query whose text is not terminated.
    let mut s = raw_login(&db).await;
    s.write_all(&[b'Q', 0, 0, 0, 7, b'a', b'b', b'c'])
        .await
        .unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // Garbage instead of a startup packet.
    let mut s = TcpStream::connect(db.proxy_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // A startup packet with an unterminated parameter.
    let mut s = TcpStream::connect(db.proxy_addr).await.unwrap();
    let mut p = wire::startup::encode_startup(&[("user", "trustuser")]);
    p.truncate(p.len() - 2);
    let n = p.len() as i32;
    p[..4].copy_from_slice(&n.to_be_bytes());
    s.write_all(&p).await.unwrap();
    fatal_08p01(&read_to_close(&mut s).await);

    // A message cut short by the client going away: no answer needed, nothing breaks.
    let mut s = raw_login(&db).await;
    s.write_all(&[b'Q', 0, 0, 0, 100, b's', b'e'])
        .await
        .unwrap();
    drop(s);

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    for w in workers {
        assert!(w.await.unwrap() > 0);
    }
    // The proxy still serves new clients.
    let c = e2e::connect(&conninfo).await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn unknown_prepared_statement_is_an_error_not_a_disconnect() {
    let db = TestDb::new("unknownstmt", ProxyOptions::default());
    let mut s = raw_login(&db).await;
    // Bind of a statement never prepared, then Sync.
    let mut out = bytes::BytesMut::new();
    wire::messages::bind(&mut out, b"", b"nope", &[0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    s.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            break;
        }
    }
    assert_eq!(
        first_error(&buf),
        Some(("ERROR".to_string(), "26000".to_string()))
    );
}
