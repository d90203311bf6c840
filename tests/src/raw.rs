//! A tiny raw protocol client for tests that need exact control of the messages: batches
//! without Sync, Flush between Bind and Execute, text in other encodings.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}
pub fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}
pub fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes()); // all text
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}
pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}
pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}
pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

/// A backend message, summarised: its tag and a readable detail (error code+message, row
/// values, command tag, ready status).
#[derive(Debug, Clone, PartialEq)]
pub struct M(pub char, pub String);

pub fn summarise(tag: u8, body: &[u8]) -> M {
    let detail = match tag {
        b'E' | b'N' => {
            let mut code = String::new();
            let mut text = String::new();
            for f in body.split(|b| *b == 0) {
                if let Some((&k, v)) = f.split_first() {
                    match k {
                        b'C' => code = String::from_utf8_lossy(v).into(),
                        b'M' => text = String::from_utf8_lossy(v).into(),
                        _ => {}
                    }
                }
            }
            format!("{code} {text}")
        }
        b'D' => {
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    vals.push("NULL".to_string());
                } else {
                    vals.push(String::from_utf8_lossy(&body[at..at + len as usize]).into());
                    at += len as usize;
                }
            }
            vals.join("|")
        }
        b'C' => String::from_utf8_lossy(&body[..body.len() - 1]).into(),
        b'Z' => (body[0] as char).to_string(),
        _ => String::new(),
    };
    M(tag as char, detail)
}

pub struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn login(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&wire::startup::encode_startup(&[
            ("user", "trustuser"),
            ("database", "app"),
        ]))
        .await
        .unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        r.until_ready(1).await;
        r
    }

    pub async fn send(&mut self, parts: &[Vec<u8>]) {
        let all: Vec<u8> = parts.concat();
        self.s.write_all(&all).await.unwrap();
    }

    /// Reads messages until `n` ReadyForQuery have come (10 s at most).
    pub async fn until_ready(&mut self, n: usize) -> Vec<M> {
        let mut out = Vec::new();
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen < n {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let frame: Vec<u8> = self.buf.drain(..1 + len).collect();
                let m = summarise(frame[0], &frame[5..]);
                if m.0 == 'Z' {
                    seen += 1;
                }
                out.push(m);
                if seen == n {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            let got = tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await;
            match got {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    out.push(M('!', "connection closed".into()));
                    return out;
                }
                Ok(Ok(k)) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => {
                    out.push(M('!', "timed out".into()));
                    return out;
                }
            }
        }
        out
    }

    /// Reads messages until one with tag `t` (10 s at most).
    pub async fn until_tag(&mut self, t: char) -> Vec<M> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let frame: Vec<u8> = self.buf.drain(..1 + len).collect();
                let m = summarise(frame[0], &frame[5..]);
                let done = m.0 == t;
                out.push(m);
                if done {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(k)) if k > 0 => self.buf.extend_from_slice(&chunk[..k]),
                _ => {
                    out.push(M('!', "closed or timed out".into()));
                    return out;
                }
            }
        }
    }

    pub async fn round(&mut self, parts: &[Vec<u8>]) -> Vec<M> {
        self.send(parts).await;
        self.until_ready(1).await
    }
}

pub fn errors(ms: &[M]) -> Vec<String> {
    ms.iter()
        .filter(|m| m.0 == 'E')
        .map(|m| m.1.clone())
        .collect()
}
pub fn rows(ms: &[M]) -> Vec<String> {
    ms.iter()
        .filter(|m| m.0 == 'D')
        .map(|m| m.1.clone())
        .collect()
}

/// Logs in as the trust user with extra startup parameters.
pub async fn login_with(addr: SocketAddr, extra: &[(&str, &str)]) -> Raw {
    let mut params = vec![("user", "trustuser"), ("database", "app")];
    params.extend_from_slice(extra);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&wire::startup::encode_startup(&params))
        .await
        .unwrap();
    let mut r = Raw { s, buf: Vec::new() };
    r.until_ready(1).await;
    r
}

/// A simple Query of raw bytes (text in any encoding).
pub fn query_bytes(sql: &[u8]) -> Vec<u8> {
    let mut b = sql.to_vec();
    b.push(0);
    msg(b'Q', &b)
}
