//! A plain-path request waiting for a connection, left with the pool to be sent by whoever
//! gives a connection back, the moment it does (`pool::Handoff`; see pool's `gate.rs`).
//!
//! A session whose client's messages the plain path would take, but whose pool has no idle
//! connection, waits in the pool's line. Without this, the connection given back goes to
//! it, and its request reaches the server only once its task is scheduled, behind every
//! other session that is ready; the server idles meanwhile. With it, the request (the
//! run of client messages the plain path takes, exactly as they came) goes out on the
//! connection at once, when that connection already carries the client's settings; the
//! waiting session, when it runs, handles those messages as the plain path does, except
//! that their bytes are on the wire already.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

pub(super) struct PlainHandoff {
    /// The run of client messages to send.
    bytes: Bytes,
    /// The client's settings key (see `conn_in_line`) and the settings it stands for.
    key: (u64, u64),
    desired: pool::SettingsMap,
    cancel_slot: crate::cancel::CancelSlot,
    /// How many of `bytes` went out (0: none; the session sends them all).
    written: AtomicUsize,
}

impl PlainHandoff {
    pub(super) fn new(client: &Client, bytes: Bytes) -> PlainHandoff {
        PlainHandoff {
            bytes,
            key: (client.id, client.settings.generation),
            desired: client.settings.desired().clone(),
            cancel_slot: client.cancel_slot.clone(),
            written: AtomicUsize::new(0),
        }
    }

    /// How many of the bytes went out on the connection the session was given.
    pub(super) fn written(&self) -> usize {
        self.written.load(Ordering::Acquire)
    }
}

impl pool::Handoff for PlainHandoff {
    fn hand(&self, conn: &mut pool::ServerConn) {
        // Only a connection the request can go to as it is: opened plain, carrying the
        // client's settings (what `conn_in_line` finds), nothing unsent or unread on it.
        if conn.opened_with != 0
            || conn.settings_unknown
            || conn.stream.wants_write()
            || !conn.read_buf.is_empty()
            || conn.request_in_flight()
        {
            return;
        }
        let in_line = conn.applied_for == Some(self.key)
            || Arc::ptr_eq(&conn.applied, &self.desired)
            || *conn.applied == *self.desired;
        if !in_line {
            return;
        }
        conn.applied_for = Some(self.key);
        let n = match conn.stream.try_write_slice(&self.bytes) {
            Ok(n) if n > 0 => n,
            // Nothing went out: the session sends it all (and meets any error itself).
            _ => return,
        };
        conn.note_request();
        crate::cancel::point(
            &self.cancel_slot,
            Some(CancelTarget {
                addr: conn.addr,
                backend_pid: conn.backend_pid,
                secret_key: conn.secret_key,
            }),
        );
        self.written.store(n, Ordering::Release);
    }
}
