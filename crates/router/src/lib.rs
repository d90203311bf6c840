//! Statement analysis.
//!
//! [`lexer`] splits SQL text into statements and tokens the way PostgreSQL's scanner does
//! (quotes, dollar quotes, nested comments), without allocating per token. [`session`]
//! recognises the statements that change session state (SET, RESET, DISCARD, LISTEN), which
//! transaction pooling must track and replay.

pub mod lexer;
pub mod session;

pub use session::{classify, SessionCommand};
