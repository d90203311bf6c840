//! What can go wrong while merging, with the SQLSTATE the proxy reports for each.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MergeError {
    /// More rows, groups or distinct keys held than `limits.merge_memory` allows.
    #[error("the merge needs more than limits.merge_memory ({limit} bytes) to hold the rows, groups or distinct values of this query")]
    Memory { limit: usize },
    /// The results cannot be merged exactly (a float sum, text ordered under a non-C
    /// collation, a type the proxy cannot compare): refused, never guessed.
    #[error("{reason}")]
    Unsupported { reason: String, hint: String },
    /// A value out of its type's range (`bigint out of range`).
    #[error("{0}")]
    Overflow(String),
    /// A shard sent a row or value that does not decode as its RowDescription says.
    #[error("{0}")]
    BadData(String),
    /// The caller drove the executor against its protocol (a row for a shard that was not
    /// asked for, a row after the shard ended, ...).
    #[error("{0}")]
    Usage(String),
}

impl MergeError {
    pub fn unsupported(reason: impl Into<String>, hint: impl Into<String>) -> MergeError {
        MergeError::Unsupported {
            reason: reason.into(),
            hint: hint.into(),
        }
    }

    /// The SQLSTATE to report to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MergeError::Memory { .. } => "54000",
            MergeError::Unsupported { .. } => "0A000",
            MergeError::Overflow(_) => "22003",
            MergeError::BadData(_) => "XX000",
            MergeError::Usage(_) => "XX000",
        }
    }

    /// A hint for the client, when there is one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            MergeError::Memory { .. } => Some("Give the shard key so that the query runs on one shard, make the result smaller (a narrower WHERE, fewer groups), or raise limits.merge_memory."),
            MergeError::Unsupported { hint, .. } => Some(hint),
            _ => None,
        }
    }
}
