//! A pool's ceiling, its line of waiting checkouts and its idle connections, under one lock
//! (a checkout that finds an idle connection, and a connection coming back, take it once).
//!
//! At most `size` connections are checked out at once. A checkout that finds none free waits
//! in line, first come first served, up to the checkout timeout. A connection coming back
//! goes straight to the first in line, its checkout's permit with it; and when that waiter
//! left a [`Handoff`], whoever gives the connection back runs it there and then: a waiting
//! client's request is on its way to the server at once, not after the waiting task has
//! been scheduled behind every other one that is ready (PgBouncer, single-threaded, does
//! the same within one event).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::server::ServerConn;

/// What a waiting checkout has done with the connection it is given, by whoever gives it,
/// before the waiter runs again (see the module comment).
pub trait Handoff: Send + Sync {
    /// `conn` has just been given to the waiter that left this.
    fn hand(&self, conn: &mut ServerConn);
}

/// What a waiter is given when its turn comes.
pub(crate) enum Grant {
    /// A connection, with the permit it was checked out under.
    Conn(Box<ServerConn>),
    /// A permit alone: the waiter looks for an idle connection or opens one.
    Permit,
}

enum Slot {
    Waiting,
    Granted(Grant),
    /// The waiter gave up (timed out, or its task was dropped): nothing more is given to it.
    Gone,
}

/// One checkout waiting in line.
pub(crate) struct Waiter {
    /// The [`crate::Startup::key`] the checkout wants its connection opened with.
    pub key: u64,
    pub handoff: Option<Arc<dyn Handoff>>,
    slot: Mutex<Slot>,
    notify: Notify,
}

impl Waiter {
    pub fn new(key: u64, handoff: Option<Arc<dyn Handoff>>) -> Arc<Waiter> {
        Arc::new(Waiter {
            key,
            handoff,
            slot: Mutex::new(Slot::Waiting),
            notify: Notify::new(),
        })
    }

    /// Gives `grant` to the waiter; it comes back when the waiter is gone.
    pub fn grant(&self, grant: Grant) -> Option<Grant> {
        let mut slot = self.slot.lock();
        match *slot {
            Slot::Waiting => {
                *slot = Slot::Granted(grant);
                drop(slot);
                self.notify.notify_one();
                None
            }
            _ => Some(grant),
        }
    }

    /// Gives `conn` to the waiter, its handoff run on it first; it comes back untouched
    /// when the waiter is gone. One step under the waiter's lock: a waiter leaving either
    /// was given the connection with its handoff done, or neither happened.
    pub fn grant_conn(&self, mut conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        let mut slot = self.slot.lock();
        match *slot {
            Slot::Waiting => {
                if let Some(h) = &self.handoff {
                    h.hand(&mut conn);
                }
                *slot = Slot::Granted(Grant::Conn(conn));
                drop(slot);
                self.notify.notify_one();
                None
            }
            _ => Some(conn),
        }
    }

    /// Waits until the waiter is given something (a wake-up that came first counts).
    pub async fn granted(&self) {
        self.notify.notified().await
    }

    /// Ends the wait: what was given, if anything; nothing is given after this.
    pub fn leave(&self) -> Option<Grant> {
        match std::mem::replace(&mut *self.slot.lock(), Slot::Gone) {
            Slot::Granted(g) => Some(g),
            _ => None,
        }
    }
}

/// The count of free permits, the line and the idle connections, under one lock.
pub(crate) struct Gate {
    state: Mutex<State>,
}

/// The idle connections, oldest-used first.
// Boxed: connections move in and out of `PooledConn` as a pointer.
#[allow(clippy::vec_box)]
pub(crate) type Idle = Vec<Box<ServerConn>>;

struct State {
    available: usize,
    line: VecDeque<Arc<Waiter>>,
    idle: Idle,
}

impl Gate {
    pub fn new(size: usize) -> Gate {
        Gate {
            state: Mutex::new(State {
                available: size,
                line: VecDeque::new(),
                idle: Vec::new(),
            }),
        }
    }

    /// Takes a permit if one is free and nobody waits for one.
    pub fn try_take(&self) -> bool {
        let mut s = self.state.lock();
        if s.available > 0 && s.line.is_empty() {
            s.available -= 1;
            true
        } else {
            false
        }
    }

    /// Takes a permit, or puts a waiter for one in line (returned).
    pub fn take_or_wait(&self, key: u64, handoff: Option<Arc<dyn Handoff>>) -> Option<Arc<Waiter>> {
        let mut s = self.state.lock();
        if s.available > 0 && s.line.is_empty() {
            s.available -= 1;
            return None;
        }
        let w = Waiter::new(key, handoff);
        s.line.push_back(w.clone());
        Some(w)
    }

    /// Takes a permit and an idle connection (the one `pick` chooses) together, if a permit
    /// is free, nobody waits for one and `pick` finds one; else takes nothing.
    pub fn try_take_idle(
        &self,
        pick: impl FnOnce(&Idle) -> Option<usize>,
    ) -> Option<Box<ServerConn>> {
        let mut s = self.state.lock();
        if s.available == 0 || !s.line.is_empty() {
            return None;
        }
        let at = pick(&s.idle)?;
        s.available -= 1;
        Some(s.idle.remove(at))
    }

    /// Runs `f` on the idle connections, under the lock.
    pub fn with_idle<R>(&self, f: impl FnOnce(&mut Idle) -> R) -> R {
        f(&mut self.state.lock().idle)
    }

    /// Takes `w` out of the line, if it is still there.
    pub fn remove(&self, w: &Arc<Waiter>) {
        let mut s = self.state.lock();
        if let Some(at) = s.line.iter().position(|x| Arc::ptr_eq(x, w)) {
            s.line.remove(at);
        }
    }

    /// The first in line, taken out of it; or, with nobody waiting, `otherwise` runs on the
    /// idle connections under the gate's lock and the permit becomes free.
    pub fn next_or(&self, otherwise: impl FnOnce(&mut Idle)) -> Option<Arc<Waiter>> {
        let mut s = self.state.lock();
        match s.line.pop_front() {
            Some(w) => Some(w),
            None => {
                otherwise(&mut s.idle);
                s.available += 1;
                None
            }
        }
    }

    /// Free permits.
    pub fn available(&self) -> usize {
        self.state.lock().available
    }

    /// Free permits and idle connections, at one moment.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.available, s.idle.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(g: Option<Grant>) -> bool {
        matches!(g, Some(Grant::Permit))
    }

    #[test]
    fn waiters_are_served_in_arrival_order_and_nobody_jumps_the_line() {
        let gate = Gate::new(1);
        assert!(gate.try_take());
        assert!(!gate.try_take(), "the only permit is taken");
        let first = gate.take_or_wait(0, None).expect("waits");
        let second = gate.take_or_wait(0, None).expect("waits");
        // A permit given back goes to the first in line, not to the gate.
        let w = gate.next_or(|_| panic!("someone waits")).unwrap();
        assert!(Arc::ptr_eq(&w, &first));
        assert!(w.grant(Grant::Permit).is_none());
        assert_eq!(gate.available(), 0);
        assert!(granted(first.leave()));
        // The second still waits; a try does not pass it.
        assert!(!gate.try_take());
        let w = gate.next_or(|_| panic!("someone waits")).unwrap();
        assert!(Arc::ptr_eq(&w, &second));
        assert!(w.grant(Grant::Permit).is_none());
        assert!(granted(second.leave()));
        // Nobody waits: the permit is free again.
        let mut ran = false;
        assert!(gate.next_or(|_| ran = true).is_none());
        assert!(ran);
        assert_eq!(gate.available(), 1);
    }

    #[test]
    fn a_waiter_that_left_is_given_nothing() {
        let gate = Gate::new(0);
        let w = gate.take_or_wait(7, None).expect("waits");
        assert_eq!(w.key, 7);
        gate.remove(&w);
        assert!(w.leave().is_none(), "nothing was given");
        assert!(
            granted(w.grant(Grant::Permit)),
            "a grant to a waiter that left comes back"
        );
        assert!(
            gate.next_or(|_| {}).is_none(),
            "it is out of the line: the permit is free"
        );
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn a_grant_made_before_the_wait_is_not_lost() {
        let gate = Gate::new(0);
        let w = gate.take_or_wait(0, None).expect("waits");
        let next = gate.next_or(|_| {}).unwrap();
        assert!(next.grant(Grant::Permit).is_none());
        tokio::time::timeout(std::time::Duration::from_secs(5), w.granted())
            .await
            .expect("woken by the earlier grant");
        assert!(granted(w.leave()));
    }
}
