//! Limiter state in this process's memory: one TAT per key in a concurrent map.

use std::sync::Arc;

use dashmap::DashMap;

use super::gcra::{Cost, Decision, Limit, gcra};
use super::store::RateStore;
use crate::clock::{Clock, nanos};
use crate::store::{StoreFuture, ready};

/// Limiter state in this process's memory, on the injected clock.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    tats: DashMap<Box<str>, u64>,
}

impl MemoryStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            tats: DashMap::new(),
        }
    }

    /// One GCRA step on `key`, at once: the memory store never waits.
    pub fn step_now(&self, key: &str, limit: &Limit, cost: Cost) -> Decision {
        let now = nanos(self.clock.now());
        if let Some(mut tat) = self.tats.get_mut(key) {
            let (next, decision) = gcra(Some(*tat), now, limit, cost);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        if cost != Cost::Charge {
            // A key without state is a fresh key: nothing to store.
            return gcra(None, now, limit, cost).1;
        }
        // Another request may insert the key meanwhile: step on what is there.
        let mut tat = self.tats.entry(key.into()).or_insert(now);
        let (next, decision) = gcra(Some(*tat), now, limit, cost);
        if let Some(next) = next {
            *tat = next;
        }
        decision
    }

    /// How many keys have state.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

impl RateStore for MemoryStore {
    fn step<'a>(&'a self, key: &'a str, limit: &'a Limit, cost: Cost) -> StoreFuture<'a, Decision> {
        ready(self.step_now(key, limit, cost))
    }

    fn retain_recent(&self) -> usize {
        let now = nanos(self.clock.now());
        self.tats.retain(|_, tat| *tat > now);
        self.tats.len()
    }

    fn tracked(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    super::super::store::rate_store_suite!(async {
        let clock = Arc::new(FakeClock::default());
        super::super::store::suite::Fixture {
            upstream: Arc::new(MemoryStore::new(clock.clone())),
            budget: Arc::new(MemoryStore::new(clock.clone())),
            clock,
        }
    });

    #[test]
    fn a_peek_at_a_fresh_key_stores_nothing() {
        let store = MemoryStore::new(Arc::new(FakeClock::default()));
        let limit = Limit::per_minute(2.try_into().unwrap());
        assert!(store.step_now("alice", &limit, Cost::Peek).allowed);
        assert!(store.step_now("alice", &limit, Cost::Refund).allowed);
        assert!(store.is_empty());
        store.step_now("alice", &limit, Cost::Charge);
        assert_eq!(store.len(), 1);
        assert!(!store.is_empty());
    }
}
