//! Where the queue reads the time, so tests can move it instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The time source of a queue backend, in Unix milliseconds: the system clock
/// ([`Clock::system`], the default) or a [`ManualClock`] that only moves when told.
///
/// Leases, due times, creation and update times all come from it. Reading it takes no lock
/// and allocates nothing (the system clock is a `None` here, a manual one an atomic load);
/// cloning the system clock copies nothing.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    /// The system's wall clock ([`crate::now_ms`]).
    pub fn system() -> Clock {
        Clock(None)
    }

    /// Milliseconds since the Unix epoch, by this clock.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            None => crate::now_ms(),
            Some(ms) => ms.load(Ordering::Acquire),
        }
    }
}

/// A clock that stands still until [`advance`](Self::advance)d, for tests that check what
/// happens before and after a lease ends or a retry comes due without sleeping. Clones share
/// the time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Stands at `start_ms` (Unix ms).
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Stands at the system's now: stored times look real (message ages, retention).
    pub fn at_system_now() -> ManualClock {
        ManualClock::new(crate::now_ms())
    }

    /// The [`Clock`] to hand to a queue; it reads this clock's time.
    pub fn clock(&self) -> Clock {
        Clock(Some(Arc::clone(&self.0)))
    }

    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_time_moves_only_when_advanced() {
        let manual = ManualClock::new(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now_ms(), 1_000);
        manual.advance(Duration::from_millis(250));
        assert_eq!((clock.now_ms(), manual.now_ms()), (1_250, 1_250));
        assert_eq!(clock.clone().now_ms(), 1_250);
    }

    #[test]
    fn the_default_is_the_system_clock() {
        let before = crate::now_ms();
        let now = Clock::default().now_ms();
        assert!(now >= before && now <= crate::now_ms());
    }
}
