//! [`Stream`]: a TCP socket, plain or carrying TLS, used by readiness.
//!
//! The session loop waits on its sockets' readiness and then reads or writes what it can
//! without waiting (see `proxy::session`). A plain stream does exactly that on the socket. A
//! TLS stream keeps a rustls connection beside the socket: reading pulls records off the
//! socket and hands out the plaintext they carry; writing encrypts into rustls's outgoing
//! buffer and pushes it to the socket as far as it takes it, so a TLS stream may still have
//! bytes to send when the caller's buffer is empty ([`Stream::wants_write`]).
//!
//! [`AsyncRead`] and [`AsyncWrite`] are implemented on top for the code that reads and writes
//! with tokio's extension traits (login, fan-out). Their callers must `flush` after writing:
//! over TLS a write may leave ciphertext in rustls until the socket takes it.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket, with TLS or without.
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<Tls>>,
}

struct Tls {
    conn: rustls::Connection,
    /// Decrypted bytes wait in rustls: the stream is readable whatever the socket says.
    plain_pending: bool,
}

/// `std::io` over a tokio socket without waiting: `WouldBlock` when it is not ready (and
/// tokio's readiness is cleared then).
struct NoWait<'a>(&'a TcpStream);

impl Read for NoWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Stream {
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None }
    }

    /// The socket underneath (for addresses and socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS session, once the handshake is done (for channel binding and the like).
    pub fn tls_connection(&self) -> Option<&rustls::Connection> {
        self.tls.as_deref().map(|t| &t.conn)
    }

    /// Runs a TLS handshake as the server (after answering a client's SSLRequest with `S`).
    pub async fn accept_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<()> {
        let conn = rustls::ServerConnection::new(config).map_err(tls_error)?;
        self.handshake(rustls::Connection::Server(conn)).await
    }

    /// Runs a TLS handshake as the client (after a server answered an SSLRequest with `S`).
    pub async fn connect_tls(
        &mut self,
        config: std::sync::Arc<rustls::ClientConfig>,
        host: &str,
    ) -> io::Result<()> {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(tls_error)?;
        self.handshake(rustls::Connection::Client(conn)).await
    }

    async fn handshake(&mut self, mut conn: rustls::Connection) -> io::Result<()> {
        // No limit on rustls's outgoing buffer: what is written is bounded by the callers
        // (the session loop writes at most its high-water mark before it waits).
        conn.set_buffer_limit(None);
        let tcp = &self.tcp;
        loop {
            while conn.wants_write() {
                match conn.write_tls(&mut NoWait(tcp)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            if !conn.is_handshaking() {
                break;
            }
            match conn.read_tls(&mut NoWait(tcp)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // Send the alert that says why, as far as the socket takes it.
                        let _ = conn.write_tls(&mut NoWait(tcp));
                        return Err(tls_error(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.readable().await?,
                Err(e) => return Err(e),
            }
        }
        let plain_pending = conn
            .process_new_packets()
            .map_err(tls_error)?
            .plaintext_bytes_to_read()
            > 0;
        self.tls = Some(Box::new(Tls {
            conn,
            plain_pending,
        }));
        Ok(())
    }

    /// Writes all of `data` and waits until the socket took it (TLS bytes included).
    pub async fn send_all(&mut self, data: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(data).await?;
        self.flush().await
    }

    /// Ready when a read may find something.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tls.as_ref().is_some_and(|t| t.plain_pending) {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Ready when the socket takes more.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    /// TLS bytes are still waiting to go out.
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// Reads what is there into `buf` without waiting (room for at least `chunk / 4` bytes
    /// is made first); end of stream is an error.
    ///
    /// Plain: a read that returns less than the room offered has drained the socket, so
    /// readiness is cleared right away (reported to tokio as `WouldBlock`) instead of by a
    /// second read that would only say `EAGAIN`: one system call saved per message
    /// exchange. Data arriving after the read raises a new readiness event.
    pub fn try_read_into(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<()> {
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        let Some(tls) = self.tls.as_deref_mut() else {
            return try_read_plain(&self.tcp, buf);
        };
        loop {
            let mut got = false;
            loop {
                if buf.capacity() == buf.len() {
                    buf.reserve(chunk);
                }
                let room = spare(buf);
                match tls.conn.reader().read(room) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        // SAFETY: `read` initialised the first `n` bytes of the spare room.
                        unsafe { buf.set_len(buf.len() + n) };
                        got = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            tls.plain_pending = false;
            if got {
                return Ok(());
            }
            match tls.conn.read_tls(&mut NoWait(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    tls.conn.process_new_packets().map_err(tls_error)?;
                    // A key update or an alert may need an answer.
                    flush_tls(&mut tls.conn, &self.tcp)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much of `buf` as the socket takes without waiting, removing what was
    /// written. Over TLS all of `buf` is taken into rustls and what the socket does not
    /// take yet stays there ([`Stream::wants_write`]).
    pub fn try_write_from(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return try_write_plain(&self.tcp, buf);
        };
        if !buf.is_empty() {
            tls.conn.writer().write_all(buf)?;
            buf.clear();
        }
        flush_tls(&mut tls.conn, &self.tcp)
    }

    /// Writes from a slice without waiting: how much was taken (`WouldBlock`: nothing).
    /// Over TLS everything is taken; what the socket does not take yet stays in rustls.
    pub fn try_write_slice(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.tcp.try_write(data);
        };
        tls.conn.writer().write_all(data)?;
        flush_tls(&mut tls.conn, &self.tcp)?;
        Ok(data.len())
    }

    /// A read of at most `buf.len()` bytes without waiting, for probing an idle connection
    /// (`Ok(0)`: closed).
    pub fn try_read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.tcp.try_read(buf);
        };
        match tls.conn.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        match tls.conn.read_tls(&mut NoWait(&self.tcp))? {
            0 => Ok(0),
            _ => {
                tls.conn.process_new_packets().map_err(tls_error)?;
                tls.conn.reader().read(buf)
            }
        }
    }

    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            flush_tls(&mut tls.conn, &self.tcp)?;
            if !tls.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }
}

/// Pushes rustls's outgoing bytes to the socket until it would block.
fn flush_tls(conn: &mut rustls::Connection, tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut NoWait(tcp)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn spare(buf: &mut BytesMut) -> &mut [u8] {
    let room = buf.spare_capacity_mut();
    // rustls's reader writes into initialised memory only; zeroing the room is cheap next
    // to decryption.
    for b in room.iter_mut() {
        b.write(0);
    }
    // SAFETY: every byte of `room` was just initialised.
    unsafe { &mut *(room as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) }
}

fn try_write_plain(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    while !buf.is_empty() {
        match tcp.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // All of it: emptied where it starts, so that its whole room stays.
            Ok(n) if n == buf.len() => buf.clear(),
            Ok(n) => bytes::Buf::advance(buf, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn try_read_plain(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    let mut got = 0usize;
    let result = tcp.try_io(tokio::io::Interest::READABLE, || {
        let room = buf.spare_capacity_mut();
        let n = socket2::SockRef::from(tcp).recv(room)?;
        got = n;
        if n > 0 && n < room.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match result {
        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    // SAFETY: `recv` initialised the first `got` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + got) };
    Ok(())
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(tls) = this.tls.as_deref_mut() else {
            return Pin::new(&mut this.tcp).poll_read(cx, out);
        };
        loop {
            match tls.conn.reader().read(out.initialize_unfilled()) {
                Ok(n) => {
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tls.plain_pending = false,
                Err(e) => return Poll::Ready(Err(e)),
            }
            match tls.conn.read_tls(&mut NoWait(&this.tcp)) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {
                    tls.conn.process_new_packets().map_err(tls_error)?;
                    flush_tls(&mut tls.conn, &this.tcp)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(this.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tls.is_none() {
            return Pin::new(&mut this.tcp).poll_write(cx, data);
        }
        // What rustls holds goes out first, so that it never piles up.
        ready!(this.poll_flush_tls(cx))?;
        let tls = this.tls.as_deref_mut().expect("tls");
        let n = tls.conn.writer().write(data)?;
        flush_tls(&mut tls.conn, &this.tcp)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_deref_mut() {
            if !tls.conn.is_handshaking() {
                tls.conn.send_close_notify();
            }
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
