//! The merge engine: plan primitives that combine the rows of several shards into the
//! answer one PostgreSQL would have given.
//!
//! [`types`] decodes the values the shards send and compares them as PostgreSQL's btree
//! operator classes do; [`numeric`] is PostgreSQL's NUMERIC for sums and averages.

pub mod error;
pub mod numeric;
pub mod types;

pub use error::MergeError;
pub use types::Format;
