//! Client authentication at the proxy: SCRAM-SHA-256 (RFC 5802/7677 as PostgreSQL speaks it)
//! and MD5. The proxy keeps SCRAM verifiers, never needs the plain password for SCRAM.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PostgreSQL's default iteration count for new verifiers.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A stored SCRAM-SHA-256 secret: `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(&'static str),
    #[error("malformed SCRAM message: {0}")]
    Protocol(&'static str),
    #[error("password authentication failed")]
    Failed,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn to32(v: &[u8]) -> Option<[u8; 32]> {
    v.try_into().ok()
}

impl ScramVerifier {
    /// Parses PostgreSQL's `pg_authid.rolpassword` form.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(AuthError::BadVerifier("must start with SCRAM-SHA-256$"))?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or(AuthError::BadVerifier("missing keys"))?;
        let (iter, salt) = iter_salt
            .split_once(':')
            .ok_or(AuthError::BadVerifier("missing salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(AuthError::BadVerifier("missing server key"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| AuthError::BadVerifier("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(AuthError::BadVerifier("iteration count is zero"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| AuthError::BadVerifier("salt is not base64"))?;
        let stored_key =
            B64.decode(stored)
                .ok()
                .and_then(|v| to32(&v))
                .ok_or(AuthError::BadVerifier(
                    "stored key is not 32 bytes of base64",
                ))?;
        let server_key =
            B64.decode(server)
                .ok()
                .and_then(|v| to32(&v))
                .ok_or(AuthError::BadVerifier(
                    "server key is not 32 bytes of base64",
                ))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Makes a verifier from a plain password with a fresh random salt.
    pub fn from_password(password: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::from_password_and_salt(password, salt, iterations)
    }

    pub fn from_password_and_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        // SASLprep is the identity for the printable ASCII passwords configs hold; PostgreSQL
        // itself falls back to the raw bytes when a password is not valid for SASLprep.
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// The server side of one SCRAM-SHA-256 exchange (no channel binding: the proxy offers only
/// `SCRAM-SHA-256`).
pub struct ScramServer<'v> {
    verifier: &'v ScramVerifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl<'v> ScramServer<'v> {
    /// Takes the client-first-message, returns the server-first-message to send.
    pub fn start(
        verifier: &'v ScramVerifier,
        client_first: &[u8],
    ) -> Result<(Self, String), AuthError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| AuthError::Protocol("not UTF-8"))?;
        // gs2 header: "n,," or "y,," (client could bind but we did not offer it).
        let rest = if let Some(r) = text.strip_prefix("n,") {
            r
        } else if let Some(r) = text.strip_prefix("y,") {
            r
        } else if text.starts_with("p=") {
            return Err(AuthError::Protocol(
                "channel binding was requested but is not offered",
            ));
        } else {
            return Err(AuthError::Protocol("invalid GS2 header"));
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Protocol("invalid GS2 header"))?;
        if !authzid.is_empty() {
            return Err(AuthError::Protocol(
                "authorization identity is not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Protocol("client nonce missing"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(AuthError::Protocol("invalid client nonce"));
        }
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            ScramServer {
                verifier,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message; returns the server-final-message on success.
    pub fn finish(self, client_final: &[u8]) -> Result<String, AuthError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| AuthError::Protocol("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(AuthError::Protocol("proof missing"))?;
        let mut channel_ok = false;
        let mut nonce_ok = false;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                // base64("n,,") or base64("y,,")
                channel_ok = c == "biws" || c == "eSws";
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce_ok = r == self.nonce;
            }
        }
        if !channel_ok {
            return Err(AuthError::Protocol("unexpected channel binding"));
        }
        if !nonce_ok {
            return Err(AuthError::Protocol("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .ok()
            .and_then(|v| to32(&v))
            .ok_or(AuthError::Protocol("invalid proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &self.verifier.stored_key) {
            return Err(AuthError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `"md5" + md5hex(password + user)`: the form PostgreSQL stores.
pub fn md5_stored(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// What a client must answer to an MD5 challenge, from the stored `md5...` form.
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Checks an MD5 answer in constant time.
pub fn md5_verify(stored: &str, salt: [u8; 4], answer: &[u8]) -> bool {
    constant_time_eq(md5_response(stored, salt).as_bytes(), answer)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client side of SCRAM written from the RFC, to drive the server side.
    fn client_proof(
        password: &str,
        server_first: &str,
        client_first_bare: &str,
        final_wo_proof: &str,
    ) -> String {
        let mut salt = None;
        let mut iter = 0;
        for a in server_first.split(',') {
            if let Some(s) = a.strip_prefix("s=") {
                salt = Some(B64.decode(s).unwrap());
            } else if let Some(i) = a.strip_prefix("i=") {
                iter = i.parse().unwrap();
            }
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt.unwrap(), iter, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let auth = format!("{client_first_bare},{server_first},{final_wo_proof}");
        let sig = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        B64.encode(proof)
    }

    fn exchange(verifier: &ScramVerifier, password: &str) -> Result<String, AuthError> {
        let bare = "n=,r=abcdefghijklmnop";
        let (server, first) = ScramServer::start(verifier, format!("n,,{bare}").as_bytes())?;
        let nonce = first.split(',').next().unwrap().strip_prefix("r=").unwrap();
        let wo = format!("c=biws,r={nonce}");
        let proof = client_proof(password, &first, bare, &wo);
        server.finish(format!("{wo},p={proof}").as_bytes())
    }

    #[test]
    fn scram_accepts_the_password_and_refuses_others() {
        let v = ScramVerifier::from_password("secret", 4096);
        assert!(exchange(&v, "secret").unwrap().starts_with("v="));
        assert_eq!(exchange(&v, "wrong"), Err(AuthError::Failed));
        let parsed = ScramVerifier::parse(&v.encode()).unwrap();
        assert!(parsed == v);
    }

    #[test]
    fn verifier_encodes_and_parses() {
        let salt = B64.decode("c2FsdHNhbHRzYWx0c2FsdA==").unwrap();
        let v = ScramVerifier::from_password_and_salt("secret", salt, 4096);
        let again = ScramVerifier::parse(&v.encode()).unwrap();
        assert_eq!(again.stored_key, v.stored_key);
        assert!(ScramVerifier::parse("md5abc").is_err());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$x:YQ==$YQ==:YQ==").is_err());
    }

    #[test]
    fn md5_matches_postgresql() {
        // PostgreSQL stores 'md5' || md5('secret' || 'app').
        let stored = md5_stored("app", "secret");
        assert_eq!(stored, "md56a422f785c9e20873908ce25d1736ae2");
        assert_eq!(
            md5_response(&stored, [1, 2, 3, 4]),
            "md5911f527656472583a006e7727877b33e"
        );
        let salt = [1, 2, 3, 4];
        assert!(md5_verify(
            &stored,
            salt,
            md5_response(&stored, salt).as_bytes()
        ));
        assert!(!md5_verify(&stored, salt, b"md5000"));
    }

    #[test]
    fn garbage_scram_messages_are_errors() {
        let v = ScramVerifier::from_password("x", 16);
        assert!(ScramServer::start(&v, b"").is_err());
        assert!(ScramServer::start(&v, b"p=tls-server-end-point,,n=,r=x").is_err());
        assert!(ScramServer::start(&v, &[0xff, 0xfe]).is_err());
        let (s, _) = ScramServer::start(&v, b"n,,n=,r=abc").unwrap();
        assert!(s.finish(b"c=biws,r=zzz,p=AAAA").is_err());
    }
}
