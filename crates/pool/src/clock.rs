//! A monotonic clock read as plain nanoseconds, for the times taken on every request.
//!
//! `std::time::Instant` reads the same clock (`CLOCK_MONOTONIC`), but each difference of two
//! instants is normalised into a `Duration` of seconds and nanoseconds; a request's start
//! and end are read and subtracted on every request, so here they are one integer each.

use std::time::Duration;

/// Nanoseconds on the system's monotonic clock (since some moment before the proxy started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

impl Tick {
    /// Now.
    #[inline]
    pub fn now() -> Tick {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Tick(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Nanoseconds from `earlier` to this (0 if `earlier` is later).
    #[inline]
    pub fn nanos_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The time from `earlier` to this (zero if `earlier` is later).
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }

    /// The time from this to now.
    pub fn elapsed(self) -> Duration {
        Tick::now().since(self)
    }

    /// This plus `d`, or `None` past the clock's end.
    pub fn checked_add(self, d: Duration) -> Option<Tick> {
        u64::try_from(d.as_nanos())
            .ok()
            .and_then(|n| self.0.checked_add(n))
            .map(Tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_agree_with_instants() {
        let (i0, t0) = (std::time::Instant::now(), Tick::now());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, i1) = (Tick::now(), std::time::Instant::now());
        // The same clock: the ticks' span lies within the instants' (read around them).
        assert!(t1.since(t0) <= i1 - i0);
        assert!(t1.since(t0) >= Duration::from_millis(20));
        assert_eq!(
            t0.since(t1),
            Duration::ZERO,
            "an earlier tick is not a negative span"
        );
        assert_eq!(
            t0.checked_add(Duration::from_secs(1)).unwrap().since(t0),
            Duration::from_secs(1)
        );
        assert_eq!(t0.checked_add(Duration::MAX), None);
    }
}
