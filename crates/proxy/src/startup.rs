//! The start of a client connection: SSL/GSS refusal, cancel requests, the startup packet,
//! authentication, and the greeting (ParameterStatus, BackendKeyData, ReadyForQuery).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pool::{ConnectError, Pool, PoolError};
use sgconfig::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport::Stream;
use wire::messages::{self, tag, ProxyError};
use wire::startup::{decode_startup, StartupRequest};
use wire::{Frame, FrameDecoder};

use crate::cancel::CancelSlot;
use crate::settings::Settings;
use crate::Proxy;

/// A client's whole login must finish within this time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The client socket with its read buffer.
pub struct ClientConn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub decoder: FrameDecoder,
}

fn lost(e: std::io::Error) -> ProxyError {
    ProxyError::fatal("08006", format!("client connection lost: {e}"))
}

impl ClientConn {
    pub async fn write_all(&mut self, b: &[u8]) -> Result<(), ProxyError> {
        self.stream.write_all(b).await.map_err(lost)?;
        self.stream.flush().await.map_err(lost)
    }

    async fn fill(&mut self) -> Result<(), ProxyError> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await.map_err(lost)?;
        if n == 0 {
            return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    pub async fn read_frame(&mut self) -> Result<Frame, ProxyError> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => self.fill().await?,
                Err(e) => return Err(ProxyError::fatal("08P01", e.to_string())),
            }
        }
    }

    /// Reads a PasswordMessage / SASL response; anything else is a protocol violation.
    pub async fn read_password(&mut self) -> Result<Frame, ProxyError> {
        let f = self.read_frame().await?;
        if f.tag() != tag::PASSWORD {
            return Err(ProxyError::fatal(
                "08P01",
                format!(
                    "expected password response, got message type {}",
                    char::from(f.tag())
                ),
            ));
        }
        Ok(f)
    }
}

/// What a login leads to.
pub enum Started {
    /// A client of a database, ready for its session.
    Session(Client),
    /// An admin user in the admin console (database `shardgate`).
    Admin {
        id: u64,
        user: String,
        conn: ClientConn,
    },
}

/// A logged-in client, ready for its session.
pub struct Client {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub conn: ClientConn,
    pub cancel_key: (i32, i32),
    pub cancel_slot: CancelSlot,
    pub settings: Settings,
    pub mode: PoolMode,
    pub pool: Pool,
    /// The config generation `pool` was taken under.
    pub generation: u64,
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// [`run`] on the heap. Made in a plain function so that the caller's own future keeps no
/// room for the unboxed login future (async functions would reserve it).
pub fn run_boxed(
    proxy: &Arc<Proxy>,
    stream: TcpStream,
) -> Boxed<'_, Result<Option<Started>, ProxyError>> {
    Box::pin(run(proxy, stream))
}

/// [`refuse`] on the heap, for the same reason as [`run_boxed`].
pub fn refuse_boxed(stream: TcpStream, err: ProxyError) -> Boxed<'static, ()> {
    Box::pin(refuse(stream, err))
}

/// Sends one error and closes.
pub async fn refuse(mut stream: TcpStream, err: ProxyError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Runs the startup phase. `Ok(None)`: the connection was a cancel request or the client
/// left; `Err`: the client was told why and closed.
pub async fn run(proxy: &Arc<Proxy>, stream: TcpStream) -> Result<Option<Started>, ProxyError> {
    let max = proxy.config.load().limits.max_message_size as usize;
    let mut conn = ClientConn {
        stream: Stream::plain(stream),
        rbuf: BytesMut::with_capacity(1024),
        decoder: FrameDecoder::new(max),
    };
    let result = tokio::time::timeout(LOGIN_TIMEOUT, login(proxy, &mut conn)).await;
    let err = match result {
        Ok(Ok(Some(Entry::Admin { id, user }))) => {
            return Ok(Some(Started::Admin { id, user, conn }))
        }
        Ok(Ok(Some(Entry::Session(l)))) => {
            return Ok(Some(Started::Session(Client {
                id: l.id,
                user: l.user,
                database: l.database,
                conn,
                cancel_key: l.cancel_key,
                cancel_slot: l.cancel_slot,
                settings: l.settings,
                mode: l.mode,
                pool: l.pool,
                generation: l.generation,
            })))
        }
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => e,
        Err(_) => ProxyError::fatal("08P01", "canceling authentication due to timeout"),
    };
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = conn.stream.write_all(&out).await;
    let _ = conn.stream.shutdown().await;
    Err(err)
}

/// Where a login leads.
enum Entry {
    Session(Login),
    Admin { id: u64, user: String },
}

/// What login learns; the session's [`Client`] adds the connection.
struct Login {
    id: u64,
    user: String,
    database: String,
    cancel_key: (i32, i32),
    cancel_slot: CancelSlot,
    settings: Settings,
    mode: PoolMode,
    pool: Pool,
    generation: u64,
}

async fn login(proxy: &Arc<Proxy>, conn: &mut ClientConn) -> Result<Option<Entry>, ProxyError> {
    let mut negotiations = 0;
    let params = loop {
        let req = loop {
            match decode_startup(&mut conn.rbuf) {
                Ok(Some(r)) => break r,
                Ok(None) => {
                    if conn.rbuf.capacity() - conn.rbuf.len() < 256 {
                        conn.rbuf.reserve(1024);
                    }
                    let n = conn.stream.read_buf(&mut conn.rbuf).await.map_err(lost)?;
                    if n == 0 {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(ProxyError::fatal("08P01", e.to_string())),
            }
        };
        match req {
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                negotiations += 1;
                if negotiations > 2 || !conn.rbuf.is_empty() {
                    return Err(ProxyError::fatal("08P01", "invalid startup packet layout"));
                }
                let tls = match req {
                    StartupRequest::Ssl if !conn.stream.is_tls() => proxy.tls_acceptor(),
                    _ => None,
                };
                match tls {
                    Some(config) => {
                        conn.write_all(b"S").await?;
                        conn.stream.accept_tls(config).await.map_err(|e| {
                            ProxyError::fatal("08P01", format!("TLS handshake failed: {e}"))
                        })?;
                    }
                    None => conn.write_all(b"N").await?,
                }
            }
            StartupRequest::Cancel {
                process_id,
                secret_key,
            } => {
                proxy.cancels.cancel((process_id, secret_key)).await;
                return Ok(None);
            }
            StartupRequest::Startup { params, .. } => break params,
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(ProxyError::fatal(
            "0A000",
            "replication connections are not supported by shardgate",
        ));
    }
    let user = match get("user") {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ => {
            return Err(ProxyError::fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            ))
        }
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    if !conn.stream.is_tls() && proxy.config.load().tls.mode == sgconfig::TlsMode::Require {
        return Err(ProxyError::fatal(
            "28000",
            format!(
                "connection without TLS refused for user \"{user}\", database \"{database}\": the proxy requires TLS"
            ),
        )
        .with_hint("Connect with sslmode=require (or verify-ca / verify-full)."));
    }

    let users = proxy.users.load_full();
    crate::auth::authenticate(conn, &users, &user).await?;

    if database == crate::admin::DATABASE {
        if !proxy.config.load().admin_users.contains(&user) {
            return Err(ProxyError::fatal(
                "42501",
                format!("user \"{user}\" is not allowed into the admin console"),
            )
            .with_hint("List the user in admin_users in the config."));
        }
        let id = proxy
            .next_client_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::admin::greet(conn).await?;
        return Ok(Some(Entry::Admin { id, user }));
    }

    let config = proxy.config.load_full();
    let Some(db) = config.databases.get(&database) else {
        return Err(ProxyError::fatal(
            "3D000",
            format!("database \"{database}\" does not exist"),
        ));
    };
    let generation = proxy.generation();
    let pool = proxy.home_pool(&database, &user).map_err(|mut e| {
        e.fatal = true;
        e
    })?;
    let server_params = match pool.server_params().await {
        Ok(p) => p,
        Err(e) if unreachable(&e) => {
            // The home shard is down: the client may still use the others, whose servers
            // report the same parameters.
            let mut found = None;
            for (shard, _) in db.shards.iter().skip(1) {
                if let Ok(p) = proxy.pool_for(&database, &user, shard) {
                    if let Ok(sp) = p.server_params().await {
                        found = Some(sp);
                        break;
                    }
                }
            }
            found.ok_or_else(|| pool_error_fatal(e))?
        }
        Err(e) => return Err(pool_error_fatal(e)),
    };

    let mut settings = Settings::from_startup(&params, &server_params);
    settings.intern(&proxy.startup_settings);
    let mode = proxy.pool_mode(&user);
    if mode == sgconfig::PoolMode::Session {
        // The client's server session is opened with the client's own startup parameters.
        settings.open_with(&params);
    }
    let (cancel_key, cancel_slot) = proxy.cancels.register();
    let mut out = BytesMut::with_capacity(512);
    for (k, v) in server_params.iter() {
        // The client's own values for what it set at startup.
        let own = params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
            .filter(|v| !(k == "client_encoding" && v.eq_ignore_ascii_case("auto")));
        messages::parameter_status_msg(&mut out, k, own.unwrap_or(v));
    }
    messages::backend_key_data_msg(&mut out, cancel_key.0, cancel_key.1);
    messages::ready_for_query(&mut out, b'I');
    if let Err(e) = conn.write_all(&out).await {
        proxy.cancels.remove(cancel_key);
        return Err(e);
    }
    let id = proxy
        .next_client_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(Entry::Session(Login {
        id,
        user,
        database,
        cancel_key,
        cancel_slot,
        settings,
        mode,
        pool,
        generation,
    })))
}

/// The server could not be reached at all (as opposed to refusing the login).
fn unreachable(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::CheckoutTimeout { .. }
            | PoolError::Connect(ConnectError::Io { .. } | ConnectError::Timeout(_))
    )
}

/// A pool failure during login or a session, as the client should see it.
pub fn pool_error(e: PoolError, fatal: bool) -> ProxyError {
    let mut err = match e {
        PoolError::CheckoutTimeout { .. } => ProxyError::error("53300", e.to_string()),
        PoolError::Connect(ConnectError::Refused { error, .. }) => ProxyError {
            fatal: false,
            code: error.code.into(),
            message: error.message,
            detail: error.detail,
            hint: error.hint,
        },
        PoolError::Connect(other) => ProxyError::error("08006", other.to_string()),
        PoolError::Banned { .. } | PoolError::Retired { .. } | PoolError::Held { .. } => {
            ProxyError::error("08006", e.to_string())
        }
    };
    err.fatal = fatal;
    err
}

fn pool_error_fatal(e: PoolError) -> ProxyError {
    pool_error(e, true)
}
