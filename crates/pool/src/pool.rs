//! A pool of server connections for one (database, user, shard).
//!
//! The ceiling is a gate of `size` permits (`gate.rs`): a permit is held while a connection is
//! checked out, and a new connection is opened only when a permit is held and no idle one is
//! left, so open connections never exceed `size`. Waiters are served in arrival order, a
//! connection coming back goes straight to the first of them, and they give up after
//! `checkout_timeout`. Idle connections are reused newest first (warm caches) and trimmed by a
//! maintenance task.
//!
//! While its server is being replaced (failover, switchover) a pool can be *held*: checkouts
//! wait instead of failing. Once replaced it is *retired* with a successor, the new server's
//! pool, and checkouts of sessions that still hold the old pool go to the successor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::gate::{Gate, Grant, Handoff, Waiter};
use crate::server::{ConnectError, ServerConn, ServerTarget, Startup};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: u32,
    pub min_idle: u32,
    pub checkout_timeout: Duration,
    pub idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub connect_timeout: Duration,
    /// Reuse the idle connection used least recently (default: most recently).
    pub round_robin: bool,
    /// Statements kept prepared per connection (0: no limit).
    pub max_prepared: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {waited_ms} ms waiting for a server connection to {target} (pool size {size})")]
    CheckoutTimeout {
        target: String,
        waited_ms: u64,
        size: u32,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An administrator took the server out of use (BAN).
    #[error("server {target} is banned by an administrator (UNBAN to use it again)")]
    Banned { target: String },
    /// The server is being replaced: the checkout waits (never returned by `get_for`).
    #[error("server {target} is being replaced")]
    Held { target: String },
    /// The server was replaced (failover) and nothing took its place.
    #[error("server {target} was taken out of use by a failover")]
    Retired { target: String },
}

/// Counters for SHOW POOLS and metrics.
#[derive(Debug, Default, Clone)]
pub struct PoolStats {
    pub idle: usize,
    pub active: usize,
    pub waiting: u64,
    pub checkouts: u64,
    pub connects: u64,
    pub timeouts: u64,
}

/// ParameterStatus name/value pairs a server reported at startup.
pub type ServerParams = Arc<Vec<(String, String)>>;

struct Inner {
    target: ServerTarget,
    settings: PoolSettings,
    /// The ceiling, the line and the idle connections.
    gate: Gate,
    waiting: AtomicU64,
    checkouts: AtomicU64,
    connects: AtomicU64,
    timeouts: AtomicU64,
    /// ParameterStatus of the first connection made, for clients' startup.
    server_params: Mutex<Option<ServerParams>>,
    counters: Arc<crate::Counters>,
    /// Taken out of use by an administrator: checkouts fail.
    banned: std::sync::atomic::AtomicBool,
    /// Checkouts wait until this time (the server is being replaced).
    held_until: Mutex<Option<Instant>>,
    /// `held_until` is set: read first, so that a checkout takes no lock for it.
    held: std::sync::atomic::AtomicBool,
    /// Wakes checkouts waiting on a hold or a failure report.
    changed: tokio::sync::Notify,
    /// Replaced: connections going back are closed, and checkouts go to the successor
    /// (or fail, without one).
    retired: std::sync::atomic::AtomicBool,
    successor: Mutex<Option<Pool>>,
    /// Told when a connection cannot be opened (the health checker then looks at once),
    /// and how long a checkout then waits for the server to be held or replaced.
    watch: Mutex<Option<(Arc<tokio::sync::Notify>, Duration)>>,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({:?})", self.inner.target)
    }
}

impl Pool {
    /// Makes a pool and starts its maintenance task (which ends when the pool is dropped).
    pub fn new(target: ServerTarget, settings: PoolSettings) -> Pool {
        let inner = Arc::new(Inner {
            gate: Gate::new(settings.size as usize),
            target,
            settings,
            waiting: AtomicU64::new(0),
            checkouts: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            server_params: Mutex::new(None),
            counters: Arc::default(),
            banned: Default::default(),
            held_until: Mutex::new(None),
            held: Default::default(),
            changed: tokio::sync::Notify::new(),
            retired: Default::default(),
            successor: Mutex::new(None),
            watch: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(maintain(weak));
        Pool { inner }
    }

    /// The same pool (not merely one with the same settings).
    pub fn same(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn target(&self) -> &ServerTarget {
        &self.inner.target
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Checks a connection out, waiting up to the checkout timeout.
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        self.get_for(&Startup::default()).await
    }

    /// Checks a connection opened with `startup` out, waiting up to the checkout timeout. An
    /// idle connection opened with other parameters is closed to make room for a new one.
    pub async fn get_for(&self, startup: &Startup) -> Result<PooledConn, PoolError> {
        self.get_handing(startup, None).await
    }

    /// [`Pool::get_for`]; when the checkout waits in line, `handoff` is run on the connection
    /// it is given by whoever gives it (see `gate.rs`).
    pub async fn get_handing(
        &self,
        startup: &Startup,
        handoff: Option<Arc<dyn Handoff>>,
    ) -> Result<PooledConn, PoolError> {
        let mut reported = false;
        loop {
            self.wait_while_held().await;
            if let Some(next) = self.successor() {
                return Box::pin(next.get_handing(startup, handoff)).await;
            }
            match self.get_here(startup, handoff.clone()).await {
                Err(PoolError::Connect(e)) if !reported => {
                    // Tell the health checker, and give it the time of one check to hold
                    // or replace the server: then this checkout waits for the new one.
                    let Some((notify, grace)) = self.inner.watch.lock().clone() else {
                        return Err(PoolError::Connect(e));
                    };
                    reported = true;
                    let changed = self.inner.changed.notified();
                    notify.notify_one();
                    let _ = tokio::time::timeout(grace, changed).await;
                    if !self.is_held() && self.successor().is_none() {
                        return Err(PoolError::Connect(e));
                    }
                }
                // A hold began while this checkout took its permit: wait for its end.
                Err(PoolError::Held { .. }) => continue,
                r => return r,
            }
        }
    }

    /// Waits while the pool is held, up to the hold's end.
    async fn wait_while_held(&self) {
        loop {
            let changed = self.inner.changed.notified();
            let Some(until) = *self.inner.held_until.lock() else {
                return;
            };
            let now = Instant::now();
            if now >= until {
                return;
            }
            self.inner.waiting.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::time::timeout(until - now, changed).await;
            self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn successor(&self) -> Option<Pool> {
        if !self.inner.retired.load(Ordering::Acquire) {
            return None;
        }
        self.inner.successor.lock().clone()
    }

    /// Checkouts wait (up to `timeout`) until [`Pool::unhold`] or [`Pool::retire`].
    pub fn hold(&self, timeout: Duration) {
        let mut h = self.inner.held_until.lock();
        let now = Instant::now();
        if h.is_none_or(|t| t <= now) {
            *h = Some(now + timeout);
        }
        self.inner.held.store(true, Ordering::Release);
    }

    pub fn unhold(&self) {
        let mut h = self.inner.held_until.lock();
        *h = None;
        self.inner.held.store(false, Ordering::Release);
        drop(h);
        self.inner.changed.notify_waiters();
    }

    pub fn is_held(&self) -> bool {
        self.inner.is_held()
    }

    /// The server is out of use for good: idle connections close, connections coming back
    /// close, and checkouts go to `successor` (or fail).
    pub fn retire(&self, successor: Option<Pool>) {
        *self.inner.successor.lock() = successor;
        self.inner.retired.store(true, Ordering::Release);
        self.close_idle();
        self.unhold();
    }

    pub fn is_retired(&self) -> bool {
        self.inner.retired.load(Ordering::Acquire)
    }

    /// Whether this pool's connections are to a replica.
    pub fn is_replica(&self) -> bool {
        self.inner.target.replica
    }

    /// Reports connection failures to `notify`; a checkout whose connection failed then
    /// waits up to `grace` for the server to be held or replaced.
    pub fn set_watch(&self, notify: Arc<tokio::sync::Notify>, grace: Duration) {
        *self.inner.watch.lock() = Some((notify, grace));
    }

    /// The error of a checkout that waited `waited` for a connection and got none.
    pub fn timeout_error(&self, waited: Duration) -> PoolError {
        PoolError::CheckoutTimeout {
            target: format!("{:?}", self.inner.target),
            waited_ms: waited.as_millis() as u64,
            size: self.inner.settings.size,
        }
    }

    async fn get_here(
        &self,
        startup: &Startup,
        handoff: Option<Arc<dyn Handoff>>,
    ) -> Result<PooledConn, PoolError> {
        let inner = &self.inner;
        if inner.retired.load(Ordering::Acquire) {
            return Err(PoolError::Retired {
                target: format!("{:?}", inner.target),
            });
        }
        if self.is_banned() {
            return Err(PoolError::Banned {
                target: format!("{:?}", inner.target),
            });
        }
        let start = Instant::now();
        let key = startup.key();
        let mut given = None;
        let permit = match inner.gate.take_or_wait(key, handoff) {
            None => Permit::new(inner),
            Some(waiter) => {
                let mut wait = Wait::new(inner, waiter.clone());
                let _ =
                    tokio::time::timeout(inner.settings.checkout_timeout, waiter.granted()).await;
                match wait.leave() {
                    Some(Grant::Conn(conn)) => {
                        given = Some(conn);
                        Permit::new(inner)
                    }
                    Some(Grant::Permit) => Permit::new(inner),
                    None => {
                        inner.timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(self.timeout_error(start.elapsed()));
                    }
                }
            }
        };
        if let Some(conn) = given {
            // Given by a connection coming back: checked out already.
            inner.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(permit.with(conn));
        }
        if self.is_held() {
            // Checked after the permit is taken: whoever holds the pool and then waits for
            // checked-out connections to come back sees this one, or this one sees the hold.
            return Err(PoolError::Held {
                target: format!("{:?}", inner.target),
            });
        }
        inner.checkouts.fetch_add(1, Ordering::Relaxed);
        if let Some(conn) = self.pop_idle(key) {
            return Ok(permit.with(conn));
        }
        {
            // Open connections stay within the size: an idle one of other parameters goes.
            let checked_out = inner.settings.size as usize - inner.gate.available();
            inner.gate.with_idle(|idle| {
                if !idle.is_empty() && idle.len() + checked_out > inner.settings.size as usize {
                    idle.remove(0);
                }
            });
        }
        // Boxed: connecting is rare, and its state would otherwise sit in every waiting session.
        let conn = Box::pin(self.connect(startup)).await?;
        Ok(permit.with(Box::new(conn)))
    }

    /// Checks out an idle connection if one is free right now, without waiting.
    pub fn try_get(&self) -> Option<PooledConn> {
        self.try_get_for(&Startup::default())
    }

    /// Checks out an idle connection opened with `startup` if one is free right now.
    pub fn try_get_for(&self, startup: &Startup) -> Option<PooledConn> {
        if self.is_banned() {
            return None;
        }
        if self.inner.retired.load(Ordering::Acquire) {
            return self.successor()?.try_get_for(startup);
        }
        let key = startup.key();
        let round_robin = self.inner.settings.round_robin;
        // A permit and the connection in one step under the gate's lock.
        let first = self
            .inner
            .gate
            .try_take_idle(|idle| find_idle(idle, key, round_robin))?;
        let permit = Permit::new(&self.inner);
        if self.is_held() {
            // Checked after the permit is taken (see `get_for`).
            self.inner.gate.with_idle(|idle| idle.push(first));
            return None;
        }
        let conn = match usable(first) {
            Some(conn) => conn,
            None => self.pop_idle(key)?,
        };
        self.inner.checkouts.fetch_add(1, Ordering::Relaxed);
        Some(permit.with(conn))
    }

    /// The most recently used idle connection opened with `key` that is still good.
    fn pop_idle(&self, key: u64) -> Option<Box<ServerConn>> {
        let inner = &self.inner;
        let round_robin = inner.settings.round_robin;
        loop {
            let conn = inner
                .gate
                .with_idle(|idle| find_idle(idle, key, round_robin).map(|at| idle.remove(at)))?;
            if let Some(conn) = usable(conn) {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, startup: &Startup) -> Result<ServerConn, ConnectError> {
        let inner = &self.inner;
        let mut conn =
            ServerConn::connect(&inner.target, inner.settings.connect_timeout, startup).await?;
        inner.adopt(&mut conn);
        if startup.params.is_empty() {
            let mut sp = inner.server_params.lock();
            if sp.is_none() {
                *sp = Some(Arc::new(conn.startup_params.clone()));
            }
        }
        Ok(conn)
    }

    /// ParameterStatus values of this pool's server, connecting once if none is known yet.
    pub async fn server_params(&self) -> Result<ServerParams, PoolError> {
        if let Some(p) = self.inner.server_params.lock().clone() {
            return Ok(p);
        }
        let c = self.get().await?;
        c.release();
        Ok(self.inner.server_params.lock().clone().unwrap_or_default())
    }

    /// Takes the server out of use (checkouts fail, idle connections close) or back.
    pub fn set_banned(&self, banned: bool) {
        self.inner.banned.store(banned, Ordering::Release);
        if banned {
            self.close_idle();
        }
    }

    pub fn is_banned(&self) -> bool {
        self.inner.banned.load(Ordering::Acquire)
    }

    /// What this pool counts.
    pub fn counters(&self) -> &Arc<crate::Counters> {
        &self.inner.counters
    }

    /// Backend pids of the idle connections.
    pub fn idle_pids(&self) -> Vec<i32> {
        self.inner
            .gate
            .with_idle(|idle| idle.iter().map(|c| c.backend_pid).collect())
    }

    pub fn stats(&self) -> PoolStats {
        let (available, idle) = self.inner.gate.counts();
        PoolStats {
            idle,
            active: self.inner.settings.size as usize - available,
            waiting: self.inner.waiting.load(Ordering::Relaxed),
            checkouts: self.inner.checkouts.load(Ordering::Relaxed),
            connects: self.inner.connects.load(Ordering::Relaxed),
            timeouts: self.inner.timeouts.load(Ordering::Relaxed),
        }
    }

    /// Closes every idle connection (used on shutdown and reload).
    pub fn close_idle(&self) {
        // Dropped (closed) outside the lock.
        let idle = self.inner.gate.with_idle(std::mem::take);
        drop(idle);
    }
}

/// A permit of the pool's gate, held while a connection is checked out (or opened for a
/// checkout): given back when dropped.
struct Permit<'a> {
    inner: &'a Arc<Inner>,
    armed: bool,
}

impl<'a> Permit<'a> {
    fn new(inner: &'a Arc<Inner>) -> Permit<'a> {
        Permit { inner, armed: true }
    }

    /// The checked-out `conn`, which holds the permit from now on.
    fn with(mut self, conn: Box<ServerConn>) -> PooledConn {
        self.armed = false;
        PooledConn {
            conn: Some(conn),
            pool: self.inner.clone(),
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.return_permit();
        }
    }
}

/// A checkout waiting in line, counted while it waits; leaving (also when dropped), it gives
/// back whatever it was given and not taken.
struct Wait<'a> {
    inner: &'a Arc<Inner>,
    waiter: Option<Arc<Waiter>>,
    /// Its entry among the pool's counters' waiters.
    id: u64,
}

impl<'a> Wait<'a> {
    fn new(inner: &'a Arc<Inner>, waiter: Arc<Waiter>) -> Wait<'a> {
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        let id = inner.counters.wait_started();
        Wait {
            inner,
            waiter: Some(waiter),
            id,
        }
    }

    /// Ends the wait: what was given, if anything.
    fn leave(&mut self) -> Option<Grant> {
        let w = self.waiter.take()?;
        self.inner.gate.remove(&w);
        self.inner.counters.wait_ended(self.id);
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        w.leave()
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        // The checkout was dropped while it waited (its client went, the proxy stops).
        match self.leave() {
            Some(Grant::Conn(conn)) if !conn.request_in_flight() => self.inner.give_back(conn),
            Some(Grant::Conn(conn)) => {
                // Its handoff's request went out on it: closed.
                drop(conn);
                self.inner.return_permit();
            }
            Some(Grant::Permit) => self.inner.return_permit(),
            None => {}
        }
    }
}

/// A checked-out connection. Return it with [`PooledConn::release`] only when it is clean
/// (idle, outside a transaction, nothing in flight); dropping it closes the connection.
pub struct PooledConn {
    /// Boxed so that a session holding an `Option<PooledConn>` stays small while idle.
    /// While it is here, this holds a permit of the pool's gate.
    conn: Option<Box<ServerConn>>,
    pool: Arc<Inner>,
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closed; its permit goes to the next checkout.
            drop(conn);
            self.pool.return_permit();
        }
    }
}

impl PooledConn {
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.request_in_flight() {
                // Never hand out a connection whose last request is unanswered: closed.
                tracing::warn!(
                    pid = conn.backend_pid,
                    "connection released with a request in flight; closed"
                );
                drop(conn);
                self.pool.return_permit();
                return;
            }
            // Last used when its last answer came (read then, not again here).
            if conn.retire_at.is_some_and(|r| conn.last_used > r)
                || self.pool.retired.load(Ordering::Acquire)
            {
                drop(conn);
                self.pool.return_permit();
                return;
            }
            self.pool.give_back(conn);
        }
    }
}

impl PooledConn {
    /// Whether this connection is to a replica.
    pub fn is_replica(&self) -> bool {
        self.pool.target.replica
    }
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("connection present until released")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("connection present until released")
    }
}

impl Inner {
    fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
            && self.held_until.lock().is_some_and(|t| t > Instant::now())
    }

    /// A permit given back: to the first in line, or free.
    fn return_permit(&self) {
        while let Some(w) = self.gate.next_or(|_| {}) {
            if w.grant(Grant::Permit).is_none() {
                return;
            }
        }
    }

    /// A clean connection coming back (its permit with it): to the first in line, run there
    /// and then by the waiter's handoff if it left one; with nobody waiting, idle.
    fn give_back(&self, conn: Box<ServerConn>) {
        if self.is_held() {
            // No new request starts on a server being replaced: the first in line gets
            // the permit, and its checkout waits for the hold's end.
            self.gate.with_idle(|idle| idle.push(conn));
            self.return_permit();
            return;
        }
        let mut conn = Some(conn);
        loop {
            let idle = |idle: &mut crate::gate::Idle| idle.push(conn.take().expect("coming back"));
            let Some(w) = self.gate.next_or(idle) else {
                return;
            };
            let c = conn.take().expect("coming back");
            if w.key != c.opened_with {
                // It wants a connection opened otherwise: it gets the permit and opens one.
                self.gate.with_idle(|idle| idle.push(c));
                if w.grant(Grant::Permit).is_some() {
                    self.return_permit();
                }
                return;
            }
            match w.grant_conn(c) {
                None => return,
                // That waiter is gone: the next one.
                Some(back) => conn = Some(back),
            }
        }
    }

    /// A connection just opened for this pool: counted, given its lifetime and its
    /// prepared-statement limit.
    fn adopt(&self, conn: &mut ServerConn) {
        conn.count_in(self.counters.clone());
        conn.retire_at = conn.created.checked_add(self.settings.server_lifetime);
        conn.prepared = crate::PreparedSet::with_limit(self.settings.max_prepared);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where among the idle connections the one to hand out for `key` is: the most recently
/// used, or with `round_robin` the least recently used.
fn find_idle(idle: &crate::gate::Idle, key: u64, round_robin: bool) -> Option<usize> {
    if round_robin {
        idle.iter().position(|c| c.opened_with == key)
    } else {
        idle.iter().rposition(|c| c.opened_with == key)
    }
}

/// `conn`, taken out of the idle ones, if it is still good; else it is dropped (closed).
///
/// Every connection is probed (one non-blocking read, which costs no system call while
/// nothing has arrived): a server restarted or killed even a moment ago has closed it, and
/// a client must never get the FATAL its backend left behind. Its age is as of its last use
/// (no clock read per checkout): one that grew old idle goes with the pool's upkeep.
fn usable(mut conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
    let old = conn.retire_at.is_some_and(|r| conn.last_used > r);
    (!conn.is_stale() && !old).then_some(conn)
}

async fn maintain(pool: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        let s = &inner.settings;
        // Dropped (closed) outside the lock.
        let _gone: Vec<_> = inner.gate.with_idle(|idle| {
            let mut gone = Vec::new();
            // Oldest-used first at the front; keep min_idle of the newest.
            let keep_min = s.min_idle as usize;
            let mut i = 0;
            while i < idle.len() {
                let c = &idle[i];
                let expired = c.created.elapsed() > s.server_lifetime;
                let unused = c.last_used.elapsed() > s.idle_timeout && idle.len() > keep_min;
                if expired || unused {
                    gone.push(idle.remove(i));
                } else {
                    i += 1;
                }
            }
            gone
        });
        // Open connections up to min_idle, each under a permit so the ceiling holds.
        loop {
            let (available, idle) = inner.gate.counts();
            let open = idle + (s.size as usize - available);
            if idle >= s.min_idle as usize || open >= s.size as usize {
                break;
            }
            if !inner.gate.try_take() {
                break;
            }
            let permit = Permit::new(&inner);
            match ServerConn::connect(&inner.target, s.connect_timeout, &Startup::default()).await {
                Ok(mut conn) => {
                    inner.adopt(&mut conn);
                    // To the first in line, if any, else idle.
                    permit.with(Box::new(conn)).release();
                }
                Err(e) => {
                    tracing::warn!(target = ?inner.target, error = %e, "could not open idle connection");
                    break;
                }
            }
        }
        drop(inner);
    }
}
