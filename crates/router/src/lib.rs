//! Statement analysis.
//!
//! [`lexer`] splits SQL text into statements and tokens the way PostgreSQL's scanner does
//! (quotes, dollar quotes, nested comments), without allocating per token. [`session`]
//! recognises the statements that change session state (SET, RESET, DISCARD, LISTEN), which
//! transaction pooling must track and replay. [`hash`] is PostgreSQL's hash partitioning,
//! bit for bit, for hash shard maps.

pub mod analyze;
pub mod cache;
pub mod copy;
pub mod explain;
pub mod hash;
pub mod hints;
pub mod lexer;
pub mod merge_plan;
pub mod plan;
pub mod readonly;
pub mod rewrite;
pub mod session;
pub mod sharding;
pub mod sqlprepare;
pub mod subquery;
pub mod union;
pub mod wordset;

pub use session::{classify, SessionCommand};
