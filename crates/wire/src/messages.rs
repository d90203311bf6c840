//! Typed views of the messages the proxy looks into, and builders for those it writes.
//!
//! Views borrow from a frame's body and validate as they go; builders append one whole
//! message to a `BytesMut`, ready to be written.

use bytes::{BufMut, BytesMut};

use crate::frame::{BodyReader, Frame, Malformed, Message};

/// Frontend message tags.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';

    // Backend tags.
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

fn utf8(bytes: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(bytes).map_err(|_| Malformed("invalid UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Views of frontend messages.

/// `Parse`: statement name, query text, parameter type OIDs (kept raw).
#[derive(Debug)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// `int16 count | int32 oid * count`, as sent.
    pub param_types: &'a [u8],
}

impl<'a> ParseView<'a> {
    pub fn new<M: Message + ?Sized>(frame: &'a M) -> Result<Self, Malformed> {
        let mut r = BodyReader::new(frame.message_body());
        let name = r.cstr()?;
        let query = r.cstr()?;
        let param_types = r.remaining();
        let n = r.i16()?;
        if n < 0 {
            return Err(Malformed("negative parameter count"));
        }
        r.bytes(n as usize * 4)?;
        r.finish()?;
        Ok(ParseView {
            name,
            query,
            param_types,
        })
    }
}

/// `Bind`: portal and statement names; the rest (formats, values, result formats) is kept raw.
#[derive(Debug)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> BindView<'a> {
    pub fn new<M: Message + ?Sized>(frame: &'a M) -> Result<Self, Malformed> {
        let mut r = BodyReader::new(frame.message_body());
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let rest = r.remaining();
        // Validate the layout so that a malformed Bind is refused here, not by the server.
        let nfmt = r.i16()?;
        if nfmt < 0 {
            return Err(Malformed("negative format count"));
        }
        r.bytes(nfmt as usize * 2)?;
        let nval = r.i16()?;
        if nval < 0 {
            return Err(Malformed("negative parameter count"));
        }
        for _ in 0..nval {
            let len = r.i32()?;
            if len < -1 {
                return Err(Malformed("invalid parameter length"));
            }
            if len > 0 {
                r.bytes(len as usize)?;
            }
        }
        let nres = r.i16()?;
        if nres < 0 {
            return Err(Malformed("negative result format count"));
        }
        r.bytes(nres as usize * 2)?;
        r.finish()?;
        Ok(BindView {
            portal,
            statement,
            rest,
        })
    }
}

/// `Describe` or `Close`: `S` (statement) or `P` (portal) and a name.
#[derive(Debug)]
pub struct TargetView<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> TargetView<'a> {
    pub fn new<M: Message + ?Sized>(frame: &'a M) -> Result<Self, Malformed> {
        let mut r = BodyReader::new(frame.message_body());
        let kind = r.u8()?;
        if kind != b'S' && kind != b'P' {
            return Err(Malformed("target must be 'S' or 'P'"));
        }
        let name = r.cstr()?;
        r.finish()?;
        Ok(TargetView { kind, name })
    }
}

/// `Execute`: portal and row limit.
pub fn execute_view<M: Message + ?Sized>(frame: &M) -> Result<(&[u8], i32), Malformed> {
    let mut r = BodyReader::new(frame.message_body());
    let portal = r.cstr()?;
    let max_rows = r.i32()?;
    r.finish()?;
    Ok((portal, max_rows))
}

/// `Query`: the SQL text without its terminator.
pub fn query_text<M: Message + ?Sized>(frame: &M) -> Result<&[u8], Malformed> {
    let mut r = BodyReader::new(frame.message_body());
    let q = r.cstr()?;
    r.finish()?;
    Ok(q)
}

/// Checks the layout of a message the proxy forwards without reading, so that garbage is
/// refused at the proxy. Returns the error for a message type the frontend may not send.
pub fn check_frontend<M: Message + ?Sized>(frame: &M) -> Result<(), Malformed> {
    match frame.message_tag() {
        tag::QUERY => query_text(frame).map(|_| ()),
        tag::PARSE => ParseView::new(frame).map(|_| ()),
        tag::BIND => BindView::new(frame).map(|_| ()),
        tag::DESCRIBE | tag::CLOSE => TargetView::new(frame).map(|_| ()),
        tag::EXECUTE => execute_view(frame).map(|_| ()),
        tag::SYNC | tag::FLUSH | tag::TERMINATE | tag::COPY_DONE => {
            if frame.message_body().is_empty() {
                Ok(())
            } else {
                Err(Malformed("unexpected message body"))
            }
        }
        tag::COPY_DATA => Ok(()),
        tag::COPY_FAIL => BodyReader::new(frame.message_body()).cstr().map(|_| ()),
        tag::FUNCTION_CALL => Ok(()),
        _ => Err(Malformed("invalid frontend message type")),
    }
}

// ---------------------------------------------------------------------------------------------
// Views of backend messages.

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> Result<Self, Malformed> {
        let mut r = BodyReader::new(body);
        let mut e = ErrorFields::default();
        loop {
            let t = r.u8()?;
            if t == 0 {
                break;
            }
            let v = String::from_utf8_lossy(r.cstr()?).into_owned();
            match t {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        Ok(e)
    }
}

/// The transaction status of a ReadyForQuery: `I`, `T` or `E`.
pub fn ready_status<M: Message + ?Sized>(frame: &M) -> Result<u8, Malformed> {
    let b = frame.message_body();
    if b.len() == 1 && matches!(b[0], b'I' | b'T' | b'E') {
        Ok(b[0])
    } else {
        Err(Malformed("invalid ReadyForQuery"))
    }
}

/// The command tag of a CommandComplete.
pub fn command_tag<M: Message + ?Sized>(frame: &M) -> Result<&[u8], Malformed> {
    let mut r = BodyReader::new(frame.message_body());
    r.cstr()
}

/// Name and value of a ParameterStatus.
pub fn parameter_status<M: Message + ?Sized>(frame: &M) -> Result<(&str, &str), Malformed> {
    let mut r = BodyReader::new(frame.message_body());
    let name = utf8(r.cstr()?)?;
    let value = utf8(r.cstr()?)?;
    Ok((name, value))
}

/// Process id and secret key of a BackendKeyData.
pub fn backend_key_data(frame: &Frame) -> Result<(i32, i32), Malformed> {
    let mut r = BodyReader::new(frame.body());
    let pid = r.i32()?;
    let key = r.i32()?;
    Ok((pid, key))
}

/// An Authentication request: its code and the data after it.
pub fn authentication(frame: &Frame) -> Result<(i32, &[u8]), Malformed> {
    let mut r = BodyReader::new(frame.body());
    let code = r.i32()?;
    Ok((code, r.remaining()))
}

/// A SASLInitialResponse: mechanism and the client's first message.
pub fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), Malformed> {
    let mut r = BodyReader::new(body);
    let mech = utf8(r.cstr()?)?;
    let len = r.i32()?;
    let data = if len < 0 {
        &[][..]
    } else {
        r.bytes(len as usize)?
    };
    r.finish()?;
    Ok((mech, data))
}

// ---------------------------------------------------------------------------------------------
// Builders.

/// Starts a message; returns the offset of its length field for [`end`].
#[inline]
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

#[inline]
fn end(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[inline]
fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// An error the proxy itself raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub fatal: bool,
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ProxyError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            fatal: false,
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            fatal: true,
            ..Self::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let sev: &[u8] = if self.fatal { b"FATAL" } else { b"ERROR" };
        let at = begin(buf, tag::ERROR_RESPONSE);
        buf.put_u8(b'S');
        put_cstr(buf, sev);
        buf.put_u8(b'V');
        put_cstr(buf, sev);
        buf.put_u8(b'C');
        put_cstr(buf, self.code.as_bytes());
        buf.put_u8(b'M');
        put_cstr(buf, self.message.as_bytes());
        if let Some(d) = &self.detail {
            buf.put_u8(b'D');
            put_cstr(buf, d.as_bytes());
        }
        if let Some(h) = &self.hint {
            buf.put_u8(b'H');
            put_cstr(buf, h.as_bytes());
        }
        buf.put_u8(0);
        end(buf, at);
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProxyError {}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_slice(&[tag::READY_FOR_QUERY, 0, 0, 0, 5, status]);
}

pub fn empty_message(buf: &mut BytesMut, t: u8) {
    buf.put_slice(&[t, 0, 0, 0, 4]);
}

pub fn authentication_ok(buf: &mut BytesMut) {
    buf.put_slice(&[tag::AUTHENTICATION, 0, 0, 0, 8, 0, 0, 0, 0]);
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(5);
    buf.put_slice(&salt);
    end(buf, at);
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m.as_bytes());
    }
    buf.put_u8(0);
    end(buf, at);
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(11);
    buf.put_slice(data);
    end(buf, at);
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(12);
    buf.put_slice(data);
    end(buf, at);
}

pub fn parameter_status_msg(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, tag::PARAMETER_STATUS);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    end(buf, at);
}

pub fn backend_key_data_msg(buf: &mut BytesMut, pid: i32, key: i32) {
    let at = begin(buf, tag::BACKEND_KEY_DATA);
    buf.put_i32(pid);
    buf.put_i32(key);
    end(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, command_tag: &str) {
    let at = begin(buf, tag::COMMAND_COMPLETE);
    put_cstr(buf, command_tag.as_bytes());
    end(buf, at);
}

/// A simple Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, tag::QUERY);
    put_cstr(buf, sql.as_bytes());
    end(buf, at);
}

/// A Parse with the given statement name; `param_types` as held by a [`ParseView`].
pub fn parse(buf: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    let at = begin(buf, tag::PARSE);
    put_cstr(buf, name);
    put_cstr(buf, query);
    buf.put_slice(param_types);
    end(buf, at);
}

/// A Bind that names another statement; `rest` as held by a [`BindView`].
pub fn bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let at = begin(buf, tag::BIND);
    put_cstr(buf, portal);
    put_cstr(buf, statement);
    buf.put_slice(rest);
    end(buf, at);
}

/// An Execute of a portal; `max_rows` 0 is no limit.
pub fn execute(buf: &mut BytesMut, portal: &[u8], max_rows: i32) {
    let at = begin(buf, tag::EXECUTE);
    put_cstr(buf, portal);
    buf.put_i32(max_rows);
    end(buf, at);
}

/// A Describe or Close of a statement or portal.
pub fn target(buf: &mut BytesMut, t: u8, kind: u8, name: &[u8]) {
    let at = begin(buf, t);
    buf.put_u8(kind);
    put_cstr(buf, name);
    end(buf, at);
}

/// A PasswordMessage (also SASLResponse) carrying raw bytes.
pub fn password_message(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    buf.put_slice(data);
    end(buf, at);
}

/// A SASLInitialResponse.
pub fn sasl_initial_response_msg(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(buf, tag::PASSWORD);
    put_cstr(buf, mechanism.as_bytes());
    buf.put_i32(data.len() as i32);
    buf.put_slice(data);
    end(buf, at);
}

/// A RowDescription of text columns (for result sets the proxy makes itself).
pub fn row_description_text(buf: &mut BytesMut, columns: &[&str]) {
    let at = begin(buf, tag::ROW_DESCRIPTION);
    buf.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(buf, c.as_bytes());
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_i32(25); // text
        buf.put_i16(-1);
        buf.put_i32(-1);
        buf.put_i16(0); // text format
    }
    end(buf, at);
}

/// A DataRow of text values (`None` is NULL).
pub fn data_row_text(buf: &mut BytesMut, values: &[Option<&str>]) {
    let at = begin(buf, tag::DATA_ROW);
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(s) => {
                buf.put_i32(s.len() as i32);
                buf.put_slice(s.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    end(buf, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    fn one(buf: &mut BytesMut) -> Frame {
        FrameDecoder::new(1 << 20).decode(buf).unwrap().unwrap()
    }

    #[test]
    fn parse_and_bind_rewrite_keep_the_rest() {
        let mut buf = BytesMut::new();
        parse(&mut buf, b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        let f = one(&mut buf);
        let p = ParseView::new(&f).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        assert_eq!(p.param_types, &[0, 1, 0, 0, 0, 23]);

        let rest = [0u8, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0];
        bind(&mut buf, b"", b"s1", &rest);
        let f = one(&mut buf);
        let b = BindView::new(&f).unwrap();
        assert_eq!(b.statement, b"s1");
        assert_eq!(b.rest, &rest);
    }

    #[test]
    fn malformed_bind_is_refused() {
        let mut buf = BytesMut::new();
        bind(&mut buf, b"", b"s1", &[0, 0, 0, 1, 0x7f, 0, 0, 0]);
        let f = one(&mut buf);
        assert!(BindView::new(&f).is_err());
        let mut buf = BytesMut::new();
        empty_message(&mut buf, tag::BIND);
        let f = one(&mut buf);
        assert!(check_frontend(&f).is_err());
    }

    #[test]
    fn error_round_trip() {
        let mut buf = BytesMut::new();
        ProxyError::error("0A000", "nope")
            .with_hint("use a hint")
            .encode(&mut buf);
        let f = one(&mut buf);
        let e = ErrorFields::parse(f.body()).unwrap();
        assert_eq!(e.code, "0A000");
        assert_eq!(e.message, "nope");
        assert_eq!(e.hint.as_deref(), Some("use a hint"));
        assert_eq!(e.severity, "ERROR");
    }
}
