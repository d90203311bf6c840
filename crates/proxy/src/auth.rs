//! Client authentication: each configured user's method and secret, and the exchanges.

use std::collections::HashMap;

use bytes::BytesMut;
use rand::RngCore;
use sgconfig::{is_md5_hash, is_scram_verifier, AuthMethod, Config};
use wire::auth::{md5_stored, md5_verify, ScramServer, ScramVerifier};
use wire::messages::{self, ProxyError};

use crate::startup::ClientConn;

/// How one user proves who they are.
pub enum Secret {
    Trust,
    Scram(ScramVerifier),
    /// `md5` + md5(password + user)
    Md5(String),
}

pub struct UserTable {
    users: HashMap<String, Secret>,
}

impl UserTable {
    pub fn from_config(c: &Config) -> Self {
        let mut users = HashMap::new();
        for u in &c.users {
            let p = u.password.as_deref();
            let secret = match (u.auth, p) {
                (AuthMethod::Trust, _) | (_, None) => Secret::Trust,
                (AuthMethod::ScramSha256, Some(p)) if is_scram_verifier(p) => {
                    match ScramVerifier::parse(p) {
                        Ok(v) => Secret::Scram(v),
                        Err(_) => continue, // refused by validation; never reached
                    }
                }
                (AuthMethod::ScramSha256, Some(p)) => Secret::Scram(ScramVerifier::from_password(
                    p,
                    wire::auth::DEFAULT_ITERATIONS,
                )),
                (AuthMethod::Md5, Some(p)) if is_md5_hash(p) => Secret::Md5(p.to_owned()),
                (AuthMethod::Md5, Some(p)) => Secret::Md5(md5_stored(&u.name, p)),
            };
            users.insert(u.name.clone(), secret);
        }
        UserTable { users }
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }
}

fn failed(user: &str) -> ProxyError {
    let kind = "password";
    ProxyError::fatal(
        "28P01",
        format!("{kind} authentication failed for user \"{user}\""),
    )
}

/// Runs the exchange for `user`; on success AuthenticationOk has been queued in `out`.
pub async fn authenticate(
    conn: &mut ClientConn,
    table: &UserTable,
    user: &str,
) -> Result<(), ProxyError> {
    let Some(secret) = table.get(user) else {
        return Err(failed(user));
    };
    let mut out = BytesMut::new();
    match secret {
        Secret::Trust => {}
        Secret::Md5(stored) => {
            let mut salt = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut salt);
            messages::authentication_md5(&mut out, salt);
            conn.write_all(&out).await?;
            out.clear();
            let answer = conn.read_password().await?;
            let answer = answer.body();
            let answer = answer.strip_suffix(&[0]).unwrap_or(answer);
            if !md5_verify(stored, salt, answer) {
                return Err(failed(user));
            }
        }
        Secret::Scram(verifier) => {
            messages::authentication_sasl(&mut out, &[wire::auth::SCRAM_SHA_256]);
            conn.write_all(&out).await?;
            out.clear();
            let first = conn.read_password().await?;
            let (mech, data) = messages::sasl_initial_response(first.body())
                .map_err(|e| ProxyError::fatal("08P01", e.to_string()))?;
            if mech != wire::auth::SCRAM_SHA_256 {
                return Err(ProxyError::fatal(
                    "28000",
                    "client selected an invalid SASL authentication mechanism",
                ));
            }
            let (server, server_first) = ScramServer::start(verifier, data)
                .map_err(|e| ProxyError::fatal("08P01", e.to_string()))?;
            messages::authentication_sasl_continue(&mut out, server_first.as_bytes());
            conn.write_all(&out).await?;
            out.clear();
            let last = conn.read_password().await?;
            let server_final = server.finish(last.body()).map_err(|e| match e {
                wire::auth::AuthError::Failed => failed(user),
                other => ProxyError::fatal("08P01", other.to_string()),
            })?;
            messages::authentication_sasl_final(&mut out, server_final.as_bytes());
        }
    }
    messages::authentication_ok(&mut out);
    conn.write_all(&out).await?;
    Ok(())
}
