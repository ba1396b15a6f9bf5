//! The one clock every time-dependent part reads (limits, remembered
//! outcomes, the breaker, rate-limited log lines), injectable so that tests
//! advance time instead of sleeping.
//!
//! Time is Unix time, a reading that shared stores and other replicas can
//! agree on, never a process-local `Instant`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Wall-clock time, injectable for tests.
pub trait Clock: Send + Sync {
    /// Time elapsed since the Unix epoch.
    fn now(&self) -> Duration;

    /// The same reading as a `SystemTime`.
    fn system_time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.now()
    }
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        since_epoch(SystemTime::now())
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// A clock standing at `since_epoch`.
    pub fn at(since_epoch: Duration) -> Self {
        Self(AtomicU64::new(nanos(since_epoch)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(nanos(by), Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    /// A clock standing at the start of the second it is made in, so that
    /// the times it puts into answers read as today's and whole.
    fn default() -> Self {
        Self::at(Duration::from_secs(SystemClock.now().as_secs()))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Time since the Unix epoch; zero for a time before it.
pub fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// A duration in whole nanoseconds, saturating.
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_unix_time() {
        let before = since_epoch(SystemTime::now());
        let read = SystemClock.now();
        assert!(read >= before && read - before < Duration::from_secs(5));
        assert!(SystemClock.system_time() >= SystemTime::UNIX_EPOCH + before);
        let fake = FakeClock::default().now();
        assert_eq!(
            fake.subsec_nanos(),
            0,
            "a fake clock starts on a whole second"
        );
        assert!(before.saturating_sub(fake) < Duration::from_secs(5));
    }

    #[test]
    fn a_fake_clock_moves_only_when_told() {
        let clock = FakeClock::at(Duration::from_secs(1_000));
        assert_eq!(clock.now(), Duration::from_secs(1_000));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now(), Duration::from_millis(1_001_500));
        assert_eq!(
            clock.system_time(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_001_500)
        );
    }
}
