//! The sockets of both legs (client ↔ proxy, proxy ↔ server): [`Stream`] is a TCP socket
//! with or without TLS, used by readiness as the session loop needs; [`config`] builds the
//! rustls configurations from PEM files.

pub mod config;
mod stream;

pub use rustls;
pub use stream::Stream;
