//! The merge engine: plan primitives that combine the rows of several shards into the
//! answer one PostgreSQL would have given.
//!
//! [`plan`] holds the plan as a value (a small tree of primitives above a scatter of the
//! shard query); [`types`] decodes the values the shards send and compares them as
//! PostgreSQL's btree operator classes do; [`numeric`] is PostgreSQL's NUMERIC for sums and
//! averages; [`engine`] runs a plan over the shards' rows, synchronously, driven by the
//! caller (the proxy reads the shards and pushes their rows in, and takes DataRow frames
//! out); [`rowdesc`] rewrites the shards' RowDescription into the client's.

pub mod agg;
pub mod engine;
pub mod error;
pub mod numeric;
pub mod plan;
pub mod row;
pub mod rowdesc;
pub mod types;

pub use engine::{Column, Executor, Want};
pub use error::MergeError;
pub use plan::{Agg, AggKind, CmpOp, Col, MergePlan, Node, Predicate, SortKey};
pub use types::Format;
