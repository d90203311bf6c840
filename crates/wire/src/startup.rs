//! The untagged first message of a connection: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest (`int32 len | int32 code | ...`).

use bytes::BytesMut;

use crate::frame::{BodyReader, Malformed};

/// PostgreSQL's own limit on a startup packet.
pub const MAX_STARTUP_LEN: usize = 10_000;
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// Protocol 3.x with its parameters in the order the client sent them.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    Ssl,
    GssEnc,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
}

impl StartupRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupRequest::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

impl From<Malformed> for StartupError {
    fn from(m: Malformed) -> Self {
        StartupError::Malformed(m.0)
    }
}

/// Reads one startup-phase packet from `buf`; `None` until it has fully arrived.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupRequest>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_LEN {
        return Err(StartupError::BadLength);
    }
    let len = len as usize;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let packet = buf.split_to(len);
    let mut r = BodyReader::new(&packet[4..]);
    let code = r.i32()?;
    match code {
        SSL_REQUEST if r.is_empty() => Ok(Some(StartupRequest::Ssl)),
        GSSENC_REQUEST if r.is_empty() => Ok(Some(StartupRequest::GssEnc)),
        CANCEL_REQUEST => {
            let process_id = r.i32()?;
            let secret_key = r.i32()?;
            r.finish()?;
            Ok(Some(StartupRequest::Cancel {
                process_id,
                secret_key,
            }))
        }
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::BadLength),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                let name = std::str::from_utf8(name)
                    .map_err(|_| StartupError::Malformed("parameter name is not valid UTF-8"))?;
                let value = std::str::from_utf8(value)
                    .map_err(|_| StartupError::Malformed("parameter value is not valid UTF-8"))?;
                params.push((name.to_owned(), value.to_owned()));
            }
            r.finish()?;
            Ok(Some(StartupRequest::Startup { minor, params }))
        }
    }
}

/// Encodes a StartupMessage for protocol 3.0.
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes a CancelRequest.
pub fn encode_cancel(process_id: i32, secret_key: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16i32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out[8..12].copy_from_slice(&process_id.to_be_bytes());
    out[12..].copy_from_slice(&secret_key.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let raw = encode_startup(&[("user", "app"), ("database", "db")]);
        let mut buf = BytesMut::from(&raw[..]);
        let req = decode_startup(&mut buf).unwrap().unwrap();
        assert_eq!(req.param("user"), Some("app"));
        assert_eq!(req.param("database"), Some("db"));
        assert!(buf.is_empty());
    }

    #[test]
    fn cancel_and_ssl() {
        let mut buf = BytesMut::from(&encode_cancel(7, 9)[..]);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupRequest::Cancel {
                process_id: 7,
                secret_key: 9
            })
        );
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(StartupRequest::Ssl));
    }

    #[test]
    fn garbage_is_refused() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(decode_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0u8, 0, 0, 4][..]);
        assert_eq!(decode_startup(&mut buf), Err(StartupError::BadLength));
        let mut raw = encode_startup(&[("user", "app")]);
        raw.pop();
        raw.pop();
        let n = raw.len() as i32;
        raw[..4].copy_from_slice(&n.to_be_bytes());
        let mut buf = BytesMut::from(&raw[..]);
        assert!(decode_startup(&mut buf).is_err());
    }
}
