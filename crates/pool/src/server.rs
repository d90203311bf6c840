//! One raw connection to a PostgreSQL server: connect, authenticate, then hand frames through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport::Stream;
use wire::messages::{self, tag, ErrorFields};
use wire::{Frame, FrameDecoder};

use crate::clock::Tick;

/// Session settings: parameter → statement that applies it, shared copy-on-write.
pub type SettingsMap = std::sync::Arc<BTreeMap<String, String>>;

/// Where to connect and as whom.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// The shard this server is of, for messages (empty: not named).
    pub shard: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// TLS towards this server.
    pub tls: ServerTls,
    /// The pool serves reads on a replica (its connections never take writes).
    pub replica: bool,
}

/// Whether and how connections to a server use TLS.
#[derive(Clone, Default)]
pub struct ServerTls {
    pub mode: sgconfig::ServerTlsMode,
    /// The CA file `config` was built from (what tells two settings apart).
    pub ca: Option<String>,
    /// Built from the CA file (`verify-full`) or taking any certificate; `None` when off.
    pub config: Option<std::sync::Arc<transport::rustls::ClientConfig>>,
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.ca == other.ca
    }
}

impl Eq for ServerTls {}

impl std::fmt::Debug for ServerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.shard.is_empty() {
            write!(f, "of shard \"{}\" ", self.shard)?;
        }
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to server {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to server {0}")]
    Timeout(String),
    /// The server refused us; its error is passed on to the client as it is.
    #[error("server {target} refused the connection: {} {}", .error.code, .error.message)]
    Refused {
        target: String,
        error: Box<ErrorFields>,
    },
    #[error("server {target}: {message}")]
    Protocol { target: String, message: String },
}

/// Largest message the proxy accepts from a server (PostgreSQL's own limit is 1 GiB).
const SERVER_MAX_MESSAGE: usize = 1 << 30;

/// The startup parameters a connection is opened with beyond user and database: session
/// pooling opens each client's connection with the client's own, so that the server
/// session's defaults (what RESET returns to, what DISCARD ALL restores) are the client's.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Startup {
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// What tells connections opened with different parameters apart; 0 for none.
    pub fn key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        if self.params.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.params.hash(&mut h);
        h.finish() | 1
    }
}

pub struct ServerConn {
    pub stream: Stream,
    pub read_buf: BytesMut,
    pub decoder: FrameDecoder,
    pub addr: SocketAddr,
    pub backend_pid: i32,
    pub secret_key: i32,
    /// ParameterStatus values reported at startup.
    pub startup_params: Vec<(String, String)>,
    /// Statements prepared on this connection, by the proxy's global statement id.
    pub prepared: crate::PreparedSet,
    /// Session settings applied on this connection: parameter → statement that applied it.
    /// Shared with the client whose settings it took, so that equal settings compare by pointer.
    pub applied: SettingsMap,
    /// The (client id, settings generation) `applied` was last made equal to.
    pub applied_for: Option<(u64, u64)>,
    /// Set when a rolled-back transaction may have undone settings: the next user resets all.
    pub settings_unknown: bool,
    pub created: Tick,
    /// When its last answer came (or it was opened).
    pub last_used: Tick,
    /// Past this, a connection whose last answer came later is too old to reuse (the
    /// pool's `server_lifetime` after `created`, set by the pool; `None`: no limit).
    pub retire_at: Option<Tick>,
    /// [`Startup::key`] of the parameters it was opened with.
    pub opened_with: u64,
    /// The pool's counters, once the connection is in a pool.
    counters: Option<std::sync::Arc<crate::Counters>>,
    /// When the request in flight began (its first message was sent).
    request_at: Option<Tick>,
    /// The request's first message, kept for the slow-statement log when it is on.
    pub request_text: Option<bytes::Bytes>,
    /// The client messages of the request in flight, kept until the server's first answer
    /// while the request may still be retried on another connection (empty otherwise):
    /// whole messages back to back, as they came (its capacity goes with the connection).
    pub replay: bytes::BytesMut,
    /// Messages are being kept in `replay`.
    pub replay_on: bool,
    /// When the transaction in progress began.
    xact_at: Option<Tick>,
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        if let Some(c) = &self.counters {
            c.closed(self.backend_pid);
        }
    }
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerConn({} pid {})", self.addr, self.backend_pid)
    }
}

impl ServerConn {
    /// Connects, authenticates and waits for the first ReadyForQuery.
    pub async fn connect(
        target: &ServerTarget,
        timeout: Duration,
        startup: &Startup,
    ) -> Result<ServerConn, ConnectError> {
        let name = format!("{target:?}");
        match tokio::time::timeout(timeout, Self::connect_inner(target, &name, startup)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(name)),
        }
    }

    async fn connect_inner(
        target: &ServerTarget,
        name: &str,
        startup: &Startup,
    ) -> Result<ServerConn, ConnectError> {
        let io = |source| ConnectError::Io {
            target: name.to_owned(),
            source,
        };
        let proto = |message: &str| ConnectError::Protocol {
            target: name.to_owned(),
            message: message.to_owned(),
        };
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let addr = tcp.peer_addr().map_err(io)?;
        let stream = negotiate_tls(Stream::plain(tcp), target, name).await?;
        let mut conn = ServerConn {
            stream,
            read_buf: BytesMut::with_capacity(8192),
            decoder: FrameDecoder::new(SERVER_MAX_MESSAGE),
            addr,
            backend_pid: 0,
            secret_key: 0,
            startup_params: Vec::new(),
            prepared: crate::PreparedSet::default(),
            applied: SettingsMap::default(),
            applied_for: None,
            settings_unknown: false,
            created: Tick::now(),
            last_used: Tick::now(),
            retire_at: None,
            opened_with: startup.key(),
            counters: None,
            request_at: None,
            request_text: None,
            replay: bytes::BytesMut::new(),
            replay_on: false,
            xact_at: None,
        };
        let mut params: Vec<(&str, &str)> =
            vec![("user", &target.user), ("database", &target.database)];
        if !startup
            .params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("client_encoding"))
        {
            params.push(("client_encoding", "UTF8"));
        }
        params.extend(startup.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let startup = wire::startup::encode_startup(&params);
        conn.stream.write_all(&startup).await.map_err(io)?;
        conn.stream.flush().await.map_err(io)?;
        let mut scram: Option<ScramSha256> = None;
        let mut out = BytesMut::new();
        loop {
            let frame = conn.read_frame().await.map_err(io)?;
            match frame.tag() {
                tag::AUTHENTICATION => {
                    let (code, data) = messages::authentication(&frame)
                        .map_err(|_| proto("bad authentication message"))?;
                    let password = || {
                        target.password.as_deref().ok_or_else(|| {
                            proto("the server asks for a password and none is configured")
                        })
                    };
                    match code {
                        0 => {}
                        3 => {
                            let mut p = password()?.as_bytes().to_vec();
                            p.push(0);
                            messages::password_message(&mut out, &p);
                        }
                        5 => {
                            let salt: [u8; 4] =
                                data.try_into().map_err(|_| proto("bad md5 salt"))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                target.user.as_bytes(),
                                password()?.as_bytes(),
                                salt,
                            );
                            let mut p = hash.into_bytes();
                            p.push(0);
                            messages::password_message(&mut out, &p);
                        }
                        10 => {
                            let offers_scram = data
                                .split(|&b| b == 0)
                                .any(|m| m == wire::auth::SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(proto(
                                    "the server offers no SASL mechanism the proxy supports",
                                ));
                            }
                            let s = ScramSha256::new(
                                password()?.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            messages::sasl_initial_response_msg(
                                &mut out,
                                wire::auth::SCRAM_SHA_256,
                                s.message(),
                            );
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| proto("unexpected SASL continue"))?;
                            s.update(data).map_err(|e| proto(&format!("SCRAM: {e}")))?;
                            messages::password_message(&mut out, s.message());
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| proto("unexpected SASL final"))?;
                            s.finish(data).map_err(|e| proto(&format!("SCRAM: {e}")))?;
                        }
                        _ => {
                            return Err(proto(&format!("unsupported authentication method {code}")))
                        }
                    }
                    if !out.is_empty() {
                        conn.stream.write_all(&out).await.map_err(io)?;
                        conn.stream.flush().await.map_err(io)?;
                        out.clear();
                    }
                }
                tag::PARAMETER_STATUS => {
                    if let Ok((k, v)) = messages::parameter_status(&frame) {
                        conn.startup_params.push((k.to_owned(), v.to_owned()));
                    }
                }
                tag::BACKEND_KEY_DATA => {
                    let (pid, key) = messages::backend_key_data(&frame)
                        .map_err(|_| proto("bad BackendKeyData"))?;
                    conn.backend_pid = pid;
                    conn.secret_key = key;
                }
                tag::READY_FOR_QUERY => return Ok(conn),
                tag::ERROR_RESPONSE => {
                    let error = Box::new(ErrorFields::parse(frame.body()).unwrap_or_default());
                    return Err(ConnectError::Refused {
                        target: name.to_owned(),
                        error,
                    });
                }
                tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
                _ => return Err(proto("unexpected message during startup")),
            }
        }
    }

    /// Counts this connection's requests in `counters` (its pool's), and lists it there.
    pub fn count_in(&mut self, counters: std::sync::Arc<crate::Counters>) {
        counters.opened(crate::ServerInfo {
            backend_pid: self.backend_pid,
            addr: self.addr,
            local_addr: self.stream.tcp().local_addr().ok(),
            connected_at: std::time::SystemTime::now(),
            tls: self.stream.is_tls(),
        });
        self.counters = Some(counters);
    }

    /// A request's first message goes to the server now (a no-op while one is in flight):
    /// true when this starts a request.
    #[inline]
    pub fn note_request(&mut self) -> bool {
        if self.request_at.is_some() {
            return false;
        }
        let now = Tick::now();
        self.request_at = Some(now);
        if self.xact_at.is_none() {
            self.xact_at = Some(now);
        }
        true
    }

    /// A request went to the server and its ReadyForQuery has not come back yet.
    pub fn request_in_flight(&self) -> bool {
        self.request_at.is_some()
    }

    /// The server said ReadyForQuery with `status`: the request in flight is answered, and
    /// with `I` a transaction ended. Returns how long the request took.
    #[inline]
    pub fn note_ready(&mut self, status: u8) -> Option<Duration> {
        let at = self.request_at.take()?;
        let now = Tick::now();
        self.last_used = now;
        let took = now.nanos_since(at);
        let xact = if status == b'I' {
            self.xact_at.take().map(|x| now.nanos_since(x))
        } else {
            None
        };
        if let Some(c) = &self.counters {
            c.request(took, xact);
        }
        Some(Duration::from_nanos(took))
    }

    /// Writes all of `data` (outside the session's pump).
    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    /// Reads one whole frame (used outside the session's pump: startup, control queries).
    pub async fn read_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                self.read_buf.reserve(8192);
            }
            let n = self.stream.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Runs a simple query to completion, discarding its results. Returns the first error the
    /// server reported, if any; an `Err` of the outer result means the connection is unusable.
    pub async fn run_simple(&mut self, sql: &str) -> std::io::Result<Option<ErrorFields>> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        let mut first_error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag() {
                tag::ERROR_RESPONSE if first_error.is_none() => {
                    first_error = Some(ErrorFields::parse(f.body()).unwrap_or_default());
                }
                tag::READY_FOR_QUERY => return Ok(first_error),
                tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    return Err(std::io::Error::other("unexpected COPY in a control query"));
                }
                _ => {}
            }
        }
    }

    /// Runs a query whose answer is one boolean: `None` when it failed or answered otherwise.
    pub async fn query_bool(&mut self, sql: &str) -> std::io::Result<Option<bool>> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        let mut answer = None;
        let mut failed = false;
        loop {
            let f = self.read_frame().await?;
            match f.tag() {
                tag::DATA_ROW => {
                    // One column: int16 count, int32 length, the value.
                    let b = f.body();
                    answer = (b.len() == 7).then(|| b[6] == b't');
                }
                tag::ERROR_RESPONSE => failed = true,
                tag::READY_FOR_QUERY => return Ok(answer.filter(|_| !failed)),
                tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    return Err(std::io::Error::other("unexpected COPY in a control query"));
                }
                _ => {}
            }
        }
    }

    /// Runs a simple query and returns the first column of each row it answers, as text
    /// (`None` for NULL), or the first error the server reported.
    pub async fn query_column(
        &mut self,
        sql: &str,
    ) -> std::io::Result<Result<Vec<Option<String>>, ErrorFields>> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        let mut rows = Vec::new();
        let mut first_error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag() {
                tag::DATA_ROW => {
                    // int16 column count, then int32 length (-1: NULL) and the bytes.
                    let b = f.body();
                    let value = b.get(2..6).and_then(|l| {
                        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
                        let len = usize::try_from(len).ok()?;
                        b.get(6..6 + len)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    });
                    rows.push(value);
                }
                tag::ERROR_RESPONSE if first_error.is_none() => {
                    first_error = Some(ErrorFields::parse(f.body()).unwrap_or_default());
                }
                tag::READY_FOR_QUERY => {
                    return Ok(match first_error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    })
                }
                tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    return Err(std::io::Error::other("unexpected COPY in a control query"));
                }
                _ => {}
            }
        }
    }

    /// Runs a simple query of several statements to completion: how many completed before
    /// the first error, and that error.
    pub async fn run_simple_counted(
        &mut self,
        sql: &str,
    ) -> std::io::Result<(usize, Option<ErrorFields>)> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        let mut first_error = None;
        let mut done = 0;
        loop {
            let f = self.read_frame().await?;
            match f.tag() {
                tag::COMMAND_COMPLETE if first_error.is_none() => done += 1,
                tag::ERROR_RESPONSE if first_error.is_none() => {
                    first_error = Some(ErrorFields::parse(f.body()).unwrap_or_default());
                }
                tag::READY_FOR_QUERY => return Ok((done, first_error)),
                tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    return Err(std::io::Error::other("unexpected COPY in a control query"));
                }
                _ => {}
            }
        }
    }

    /// True when an idle connection has been closed or has sent something unasked (a
    /// termination notice): such a connection is not handed out.
    pub fn is_stale(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read_some(&mut probe) {
            Ok(_) => true, // EOF (0) or unexpected data
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}

/// The SSLRequest code (1234 5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Asks the server for TLS as `target.tls` says, and runs the handshake when it agrees.
async fn negotiate_tls(
    mut stream: Stream,
    target: &ServerTarget,
    name: &str,
) -> Result<Stream, ConnectError> {
    use sgconfig::ServerTlsMode;
    let Some(config) = target.tls.config.clone() else {
        return Ok(stream);
    };
    let io = |source| ConnectError::Io {
        target: name.to_owned(),
        source,
    };
    stream.write_all(&SSL_REQUEST).await.map_err(io)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            stream
                .connect_tls(config, &target.host)
                .await
                .map_err(|e| ConnectError::Protocol {
                    target: name.to_owned(),
                    message: format!("TLS handshake failed: {e}"),
                })?;
            Ok(stream)
        }
        b'N' if target.tls.mode == ServerTlsMode::Prefer => Ok(stream),
        b'N' => Err(ConnectError::Protocol {
            target: name.to_owned(),
            message: "the server does not offer TLS, which server_tls requires".into(),
        }),
        _ => Err(ConnectError::Protocol {
            target: name.to_owned(),
            message: "unexpected answer to SSLRequest".into(),
        }),
    }
}
