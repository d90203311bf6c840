//! One raw connection to a PostgreSQL server: connect, authenticate, then hand frames through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::messages::{self, tag, ErrorFields};
use wire::{Frame, FrameDecoder};

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
}

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
    pub stream: TcpStream,
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
    pub created: Instant,
    pub last_used: Instant,
    /// [`Startup::key`] of the parameters it was opened with.
    pub opened_with: u64,
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
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let addr = stream.peer_addr().map_err(io)?;
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
            created: Instant::now(),
            last_used: Instant::now(),
            opened_with: startup.key(),
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

    /// Runs a simple query of several statements to completion: how many completed before
    /// the first error, and that error.
    pub async fn run_simple_counted(
        &mut self,
        sql: &str,
    ) -> std::io::Result<(usize, Option<ErrorFields>)> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
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
        match self.stream.try_read(&mut probe) {
            Ok(_) => true, // EOF (0) or unexpected data
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}
