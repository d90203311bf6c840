//! A client's bytes from the first one: startup-phase packets (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage) as the proxy's login reads them, the SCRAM or MD5
//! exchange of PasswordMessages, then tagged frames cut by `FrameDecoder`, each checked by
//! `check_frontend` and read by every view that applies. The bytes arrive in chunks of a
//! size the input chooses; cutting them differently must not change a packet or a frame.
//! Views that validate a message must give back fields that rebuild it byte for byte.
//! The server side's views (errors, ReadyForQuery, ParameterStatus, ...) read each frame
//! too, since they parse what a server sends through the same decoder.

#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::auth::{md5_stored, md5_verify, ScramServer, ScramVerifier};
use wire::frame::{Frame, FrameDecoder};
use wire::messages::{self, tag, BindView, ErrorFields, ParseView, TargetView};
use wire::startup::{decode_startup, StartupRequest};

fn verifier() -> &'static ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| {
        ScramVerifier::from_password_and_salt("secret", b"0123456789abcdef".to_vec(), 16)
    })
}

/// Feeds `input` to `buf` in pieces of `chunk` bytes until `decode` has an answer.
fn next<T, E>(
    buf: &mut BytesMut,
    input: &mut &[u8],
    chunk: usize,
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, E>,
) -> Option<Result<T, E>> {
    loop {
        match decode(buf) {
            Ok(Some(v)) => return Some(Ok(v)),
            Err(e) => return Some(Err(e)),
            Ok(None) if input.is_empty() => return None,
            Ok(None) => {
                let n = chunk.min(input.len());
                buf.extend_from_slice(&input[..n]);
                *input = &input[n..];
            }
        }
    }
}

/// Every view of a frontend message that applies to `f`, and the rebuild of what validates.
fn frontend_views(f: &Frame) {
    let checked = messages::check_frontend(f);
    let mut out = BytesMut::new();
    match f.tag() {
        tag::PARSE => {
            if let Ok(p) = ParseView::new(f) {
                messages::parse(&mut out, p.name, p.query, p.param_types);
                assert_eq!(&out[..], &f.raw()[..], "Parse rebuilt differently");
            }
        }
        tag::BIND => {
            if let Ok(b) = BindView::new(f) {
                messages::bind(&mut out, b.portal, b.statement, b.rest);
                assert_eq!(&out[..], &f.raw()[..], "Bind rebuilt differently");
            }
        }
        tag::DESCRIBE | tag::CLOSE => {
            if let Ok(t) = TargetView::new(f) {
                messages::target(&mut out, f.tag(), t.kind, t.name);
                assert_eq!(&out[..], &f.raw()[..], "Describe/Close rebuilt differently");
            }
        }
        tag::EXECUTE => {
            if let Ok((portal, max_rows)) = messages::execute_view(f) {
                messages::execute(&mut out, portal, max_rows);
                assert_eq!(&out[..], &f.raw()[..], "Execute rebuilt differently");
            }
        }
        tag::QUERY => {
            if let Ok(q) = messages::query_text(f) {
                if let Ok(sql) = std::str::from_utf8(q) {
                    messages::query(&mut out, sql);
                    assert_eq!(&out[..], &f.raw()[..], "Query rebuilt differently");
                }
            }
        }
        _ => {}
    }
    let valid_tag = matches!(
        f.tag(),
        tag::QUERY
            | tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::CLOSE
            | tag::EXECUTE
            | tag::SYNC
            | tag::FLUSH
            | tag::TERMINATE
            | tag::COPY_DATA
            | tag::COPY_DONE
            | tag::COPY_FAIL
            | tag::FUNCTION_CALL
    );
    if !valid_tag {
        assert!(checked.is_err(), "an unknown frontend tag passed the check");
    }
}

/// The views the server leg applies to what a server sends.
fn backend_views(f: &Frame) {
    let _ = ErrorFields::parse(f.body());
    let _ = messages::ready_status(f);
    let _ = messages::command_tag(f);
    let _ = messages::parameter_status(f);
    let _ = messages::backend_key_data(f);
    let _ = messages::authentication(f);
}

/// The password exchange: SCRAM's two messages, or an MD5 answer.
fn authenticate(frames: &[Frame], scram: bool) {
    let Some(first) = frames.first() else {
        return;
    };
    if !scram {
        let body = first.body();
        let answer = body.strip_suffix(&[0]).unwrap_or(body);
        let _ = md5_verify(&md5_stored("u", "secret"), [1, 2, 3, 4], answer);
        return;
    }
    let Ok((mech, data)) = messages::sasl_initial_response(first.body()) else {
        return;
    };
    if mech != wire::auth::SCRAM_SHA_256 {
        return;
    }
    let Ok((server, server_first)) = ScramServer::start(verifier(), data) else {
        return;
    };
    let mut out = BytesMut::new();
    messages::authentication_sasl_continue(&mut out, server_first.as_bytes());
    if let Some(last) = frames.get(1) {
        if let Ok(server_final) = server.finish(last.body()) {
            messages::authentication_sasl_final(&mut out, server_final.as_bytes());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, limit, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk % 64) + 1;
    let max_len = 1usize << (limit % 24);
    let scram = limit & 0x80 != 0;
    let mut input = rest;
    let mut buf = BytesMut::new();

    // The startup phase: at most two encryption requests, then a StartupMessage (or a
    // CancelRequest, which ends the connection).
    let whole = decode_startup(&mut BytesMut::from(rest));
    let mut first = true;
    let mut negotiations = 0;
    loop {
        let Some(r) = next(&mut buf, &mut input, chunk, decode_startup) else {
            return;
        };
        if first {
            assert_eq!(
                r.clone().map(Some),
                whole,
                "chunking changed the first packet"
            );
            first = false;
        }
        match r {
            Err(_) => return,
            Ok(StartupRequest::Ssl | StartupRequest::GssEnc) => {
                negotiations += 1;
                if negotiations > 2 || !buf.is_empty() {
                    return;
                }
            }
            Ok(StartupRequest::Cancel { .. }) => return,
            Ok(req @ StartupRequest::Startup { .. }) => {
                let _ = (
                    req.param("user"),
                    req.param("database"),
                    req.param("options"),
                );
                break;
            }
        }
    }

    // Tagged frames: decoded in chunks, and again from the rest all at once.
    let decoder = FrameDecoder::new(max_len);
    let mut all = BytesMut::from(&buf[..]);
    all.extend_from_slice(input);
    let mut frames = Vec::new();
    while let Some(r) = next(&mut buf, &mut input, chunk, |b| decoder.decode(b)) {
        let Ok(f) = r else { break };
        frames.push(f);
    }
    for f in &frames {
        let g = decoder
            .decode(&mut all)
            .ok()
            .flatten()
            .expect("the same frame from the whole buffer");
        assert_eq!(f, &g, "chunking changed a frame");
        let len = i32::from_be_bytes([f.raw()[1], f.raw()[2], f.raw()[3], f.raw()[4]]);
        assert_eq!(len as usize + 1, f.len());
        assert!(f.len() - 1 <= decoder.max_len());
    }

    let passwords: Vec<Frame> = frames
        .iter()
        .take_while(|f| f.tag() == tag::PASSWORD)
        .cloned()
        .collect();
    authenticate(&passwords, scram);
    for f in &frames[passwords.len()..] {
        frontend_views(f);
        backend_views(f);
    }
});
