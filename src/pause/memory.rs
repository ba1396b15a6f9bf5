//! The pause in this process's memory, on the injected clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::PauseStore;
use crate::clock::Clock;
use crate::store::{StoreFuture, ready};

/// The pause of a gateway that runs alone.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    /// When the pause ends, as time since the Unix epoch (zero: never paused).
    until: Mutex<Duration>,
}

impl MemoryStore {
    /// No pause, on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            until: Mutex::new(Duration::ZERO),
        }
    }

    fn left(&self, until: Duration) -> Duration {
        until.saturating_sub(self.clock.now())
    }
}

impl PauseStore for MemoryStore {
    fn extend(&self, wait: Duration) -> StoreFuture<'_, Duration> {
        let now = self.clock.now();
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        *until = (*until).max(now.saturating_add(wait));
        ready(until.saturating_sub(now))
    }

    fn remaining(&self) -> StoreFuture<'_, Duration> {
        ready(self.known())
    }

    fn known(&self) -> Duration {
        self.left(*self.until.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    super::super::store::pause_store_suite!(async {
        let clock = Arc::new(FakeClock::default());
        super::super::store::suite::Fixture {
            store: Arc::new(MemoryStore::new(clock.clone())),
            clock,
        }
    });
}
