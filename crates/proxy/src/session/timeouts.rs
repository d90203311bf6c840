//! The session's timeouts (`limits.client_idle_timeout_ms`, `idle_transaction_timeout_ms`,
//! `query_timeout_ms`): which one applies depends on what the session is doing, and it runs
//! from the moment the session started doing it. Off by default; when every one is off, the
//! session keeps no timer and reads no clock.

use std::time::{Duration, Instant};

use super::server::cancel_backend;
use super::*;

/// What the session is doing, as far as the timeouts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Between transactions, nothing running.
    Idle,
    /// Inside a transaction, nothing running.
    IdleInTransaction,
    /// Something runs on the server.
    Running,
}

pub(super) struct Timeouts {
    phase: Phase,
    since: Instant,
    pub(super) timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The running statement was cancelled by the query timeout: its 57014 is reported as
    /// the timeout's.
    pub(super) cancelled: bool,
}

impl Session {
    fn limits(&self) -> (u64, u64, u64) {
        let l = &self.proxy.config.load().limits;
        (
            l.client_idle_timeout_ms,
            l.idle_transaction_timeout_ms,
            l.query_timeout_ms,
        )
    }

    fn phase(&self) -> Phase {
        if !self.pending.is_empty() || self.unsynced {
            Phase::Running
        } else if self.tx_status != b'I' || self.held_begin.is_some() {
            Phase::IdleInTransaction
        } else {
            Phase::Idle
        }
    }

    /// Before each wait: the deadline of the timeout that applies now, if any.
    pub(super) fn arm_timeout(&mut self) {
        if self.timeouts.is_none()
            && !self
                .proxy
                .any_timeouts
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let (idle, in_tx, query) = self.limits();
        if idle == 0 && in_tx == 0 && query == 0 {
            self.timeouts = None;
            return;
        }
        let phase = self.phase();
        let now = Instant::now();
        let t = self.timeouts.get_or_insert_with(|| {
            Box::new(Timeouts {
                phase,
                since: now,
                timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                cancelled: false,
            })
        });
        if t.phase != phase {
            t.phase = phase;
            t.since = now;
            t.cancelled = false;
        }
        let ms = match phase {
            Phase::Idle => idle,
            Phase::IdleInTransaction => in_tx,
            Phase::Running if t.cancelled => 0,
            Phase::Running => query,
        };
        let deadline = (ms > 0).then(|| t.since + Duration::from_millis(ms));
        match deadline {
            Some(d) => t.timer.as_mut().reset(d.into()),
            // Far away: the timer stays armed but never fires while this phase lasts.
            None => t
                .timer
                .as_mut()
                .reset((now + Duration::from_secs(86_400 * 365)).into()),
        }
    }

    /// The armed timeout fired: what it does.
    pub(super) async fn timeout_fired(&mut self) -> Result<(), End> {
        let Some(t) = self.timeouts.as_mut() else {
            return Ok(());
        };
        match t.phase {
            Phase::Idle => Err(End::fatal(ProxyError::fatal(
                "57P05",
                "terminating connection due to idle-session timeout",
            ))),
            Phase::IdleInTransaction => Err(End::fatal(ProxyError::fatal(
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            ))),
            Phase::Running => {
                t.cancelled = true;
                if let Some(s) = self.server.as_ref() {
                    cancel_backend((s.backend_pid, s.secret_key, s.addr)).await;
                }
                Ok(())
            }
        }
    }

    /// An ErrorResponse from the server: when the query timeout cancelled the statement, the
    /// client reads that, not "canceling statement due to user request".
    pub(super) fn timeout_error(&mut self, frame: &Msg<'_>) -> bool {
        let Some(t) = self.timeouts.as_mut().filter(|t| t.cancelled) else {
            return false;
        };
        if !frame.body().windows(6).any(|w| w == b"C57014") {
            return false;
        }
        t.cancelled = false;
        ProxyError::error(
            "57014",
            "canceling statement due to query timeout (limits.query_timeout_ms)",
        )
        .encode(&mut self.wbuf);
        true
    }
}
