//! Remembered outcomes and claims in this process's memory: moka for the
//! outcomes, a concurrent map of watch channels for the calls under way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use moka::sync::Cache;
use tokio::sync::watch;

use super::store::{Claim, ClaimId, DedupStore, Settled, Waiter};
use crate::clock::Clock;
use crate::domain::label::Label;
use crate::domain::outcome::Remembered;
use crate::store::{StoreFuture, ready};

/// A call under way: its claim's token and the channel its waiters watch.
struct InFlight {
    token: u64,
    sender: watch::Sender<Option<Settled>>,
}

/// Outcomes and claims in this process's memory.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    cache: Cache<Label, Remembered>,
    inflight: DashMap<Label, InFlight>,
    tokens: AtomicU64,
    changes: AtomicU64,
}

impl MemoryStore {
    /// An empty store of at most `max_entries` outcomes, none kept past `longest`.
    pub fn new(clock: Arc<dyn Clock>, max_entries: u64, longest: Duration) -> Self {
        // One lifetime for the cache keeps moka's per-entry bookkeeping small
        // (no timer wheel); shorter-lived outcomes are judged by their own
        // `expires_at` on every read and linger unseen until moka drops them.
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .time_to_live(longest)
            .build();
        Self {
            clock,
            cache,
            inflight: DashMap::new(),
            tokens: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    fn current(&self, label: &Label) -> Option<Remembered> {
        let now = self.clock.system_time();
        self.cache
            .get(label)
            .filter(|remembered| !remembered.remaining(now).is_zero())
    }

    fn claim_now(&self, label: &Label) -> Claim {
        if let Some(remembered) = self.current(label) {
            return Claim::Remembered(remembered);
        }
        match self.inflight.entry(label.clone()) {
            Entry::Occupied(call) => Claim::Wait(Waiter::new(call.get().sender.subscribe())),
            Entry::Vacant(slot) => {
                // The call may have settled since the first look.
                if let Some(remembered) = self.current(label) {
                    return Claim::Remembered(remembered);
                }
                let token = self.tokens.fetch_add(1, Ordering::Relaxed);
                let (sender, _) = watch::channel(None);
                slot.insert(InFlight { token, sender });
                Claim::Lead(ClaimId::new(label.clone(), token))
            }
        }
    }

    fn settle_now(&self, claim: ClaimId, settled: Settled) {
        if let Ok(remembered) = &settled {
            self.put(claim.label().clone(), remembered.clone());
        }
        // Store first, then end the claim: a newcomer finds one or the other.
        if let Some((_, call)) = self
            .inflight
            .remove_if(claim.label(), |_, call| call.token == claim.token())
        {
            call.sender.send_replace(Some(settled));
        }
    }

    /// Stores an outcome as is, unless it has already expired.
    fn put(&self, label: Label, remembered: Remembered) -> bool {
        if remembered.remaining(self.clock.system_time()).is_zero() {
            return false;
        }
        self.cache.insert(label, remembered);
        self.changes.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn forget_now(&self, label: &Label) -> Option<Remembered> {
        let forgotten = self.cache.remove(label);
        if forgotten.is_some() {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        forgotten
    }
}

impl DedupStore for MemoryStore {
    fn get<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
        ready(self.current(label))
    }

    fn claim<'a>(&'a self, label: &'a Label, _hold_for: Duration) -> StoreFuture<'a, Claim> {
        // A claim here dies with the process that holds it, and so does
        // everything it could hold up.
        ready(self.claim_now(label))
    }

    fn begin_call<'a>(&'a self, _claim: &'a ClaimId, _user: &'a str) -> StoreFuture<'a, ()> {
        // Only its holder can end a claim in this process: it is still current.
        ready(())
    }

    fn settle<'a>(&'a self, claim: ClaimId, settled: Settled) -> StoreFuture<'a, ()> {
        self.settle_now(claim, settled);
        ready(())
    }

    fn release(&self, claim: ClaimId) {
        // Dropping the sender tells the waiters to claim again.
        self.inflight
            .remove_if(claim.label(), |_, call| call.token == claim.token());
    }

    fn forget<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
        ready(self.forget_now(label))
    }

    fn restore(&self, label: Label, remembered: Remembered) -> bool {
        if self.current(&label).is_some() {
            return false;
        }
        self.put(label, remembered)
    }

    fn snapshot(&self) -> Vec<(Label, Remembered)> {
        let now = self.clock.system_time();
        self.cache
            .iter()
            .filter(|(_, remembered)| !remembered.remaining(now).is_zero())
            .map(|(label, remembered)| (Label::clone(&label), remembered))
            .collect()
    }

    fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    super::super::store::dedup_store_suite!(async {
        let clock = Arc::new(FakeClock::default());
        super::super::store::suite::Fixture {
            store: Arc::new(MemoryStore::new(
                clock.clone(),
                1000,
                Duration::from_secs(3600),
            )),
            clock,
        }
    });
}
