//! PostgreSQL protocol 3.0 on the wire.
//!
//! The proxy reads every message through [`frame::FrameDecoder`], which checks the length
//! before it allocates and hands out each message as one [`frame::Frame`] holding the bytes
//! exactly as they arrived, so a message that is only forwarded is written out unchanged.
//! [`messages`] has typed, borrowing views of the few messages the proxy must look into and
//! builders for the ones it writes itself; [`auth`] has SCRAM-SHA-256 and MD5.

pub mod auth;
pub mod frame;
pub mod messages;
pub mod startup;

pub use frame::{Frame, FrameDecoder, FrameError, Message, Msg};
