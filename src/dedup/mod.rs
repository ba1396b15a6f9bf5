//! Remembered outcomes and coalescing: one MPC call per label per window,
//! however many callers ask and whatever they do meanwhile.
//!
//! This module is the policy: what is remembered for how long, and what may
//! be tried again. Where outcomes and claims live is the store's business,
//! behind [`DedupStore`]: [`memory`] here, a shared store for replicas.

pub mod memory;
pub mod persist;
pub mod redis;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::domain::outcome::{Outcome, Remembered, Uncertainty};
pub use store::{DedupStore, Settled, Waiter};

use crate::clock::Clock;
use crate::config::DedupSettings;
use crate::domain::label::Label;
use crate::domain::mpc_reply::{MpcResult, read};
use crate::store::StoreError;

/// Per-outcome lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Accepted requests.
    pub sent: Duration,
    /// MPC 4xx answers.
    pub rejected: Duration,
    /// Timeouts and connections lost mid-request.
    pub uncertain: Duration,
}

impl Lifetimes {
    /// The lifetimes set in `dedup.*_ttl`.
    pub fn of_settings(settings: &DedupSettings) -> Self {
        Self {
            sent: settings.sent_ttl,
            rejected: settings.rejected_ttl,
            uncertain: settings.uncertain_ttl,
        }
    }

    fn of(&self, outcome: &Outcome) -> Duration {
        match outcome {
            Outcome::Sent { .. } => self.sent,
            Outcome::Rejected { .. } => self.rejected,
            Outcome::Uncertain { .. } => self.uncertain,
        }
    }

    /// The longest of them: no outcome is kept past it.
    pub fn longest(&self) -> Duration {
        self.sent.max(self.rejected).max(self.uncertain)
    }
}

/// What a caller gets when asking about a label: remembered, wait, or lead
/// the call with a [`Lease`].
pub type Claim = store::Claim<Lease>;

/// The right, and duty, to make the one MPC call for a label.
pub struct Lease {
    dedup: Arc<Dedup>,
    claim: Option<store::ClaimId>,
}

impl Lease {
    /// The label the lease is for.
    pub fn label(&self) -> &Label {
        self.claim
            .as_ref()
            .expect("a lease holds its claim until it settles")
            .label()
    }

    /// Confirms that the claim is still this lease's: call the MPC only then.
    pub async fn begin_call(&self, user: &str) -> Result<(), StoreError> {
        match &self.claim {
            Some(claim) => self.dedup.store.begin_call(claim, user).await,
            None => Ok(()),
        }
    }

    /// Records what the call came to, hands it to every waiter and ends the
    /// lease: an outcome the MPC may have acted on is remembered for its
    /// lifetime; a failure that certainly sent nothing is only handed on.
    pub async fn settle(mut self, result: &MpcResult, user: Arc<str>) -> Settled {
        let settled = match (read(result).outcome, result) {
            (Some(outcome), _) => {
                let requested_at = self.dedup.clock.system_time();
                let expires_at = requested_at + self.dedup.lifetimes.of(&outcome);
                Ok(Remembered::new(outcome, requested_at, expires_at, user))
            }
            (None, Err(failure)) => Err(failure.clone()),
            (None, Ok(_)) => unreachable!("every MPC answer is remembered"),
        };
        let claim = self.claim.take().expect("a lease settles once");
        if let Err(error) = self.dedup.store.settle(claim, settled.clone()).await {
            tracing::error!(%error, "the outcome of an MPC call could not be stored");
        }
        settled
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            // Given up before calling (quota, budget, breaker): waiters retry.
            self.dedup.store.release(claim);
        }
    }
}

/// The dedup policy over a store of outcomes and claims.
pub struct Dedup {
    store: Arc<dyn DedupStore>,
    lifetimes: Lifetimes,
    max_entries: u64,
    clock: Arc<dyn Clock>,
}

impl Dedup {
    /// An empty memory bounded by `dedup.max_entries`, on `clock`.
    pub fn new(settings: &DedupSettings, clock: Arc<dyn Clock>) -> Arc<Self> {
        let lifetimes = Lifetimes::of_settings(settings);
        let max_entries = settings.max_entries.get();
        let store = memory::MemoryStore::new(clock.clone(), max_entries, lifetimes.longest());
        Self::with_store(Arc::new(store), lifetimes, max_entries, clock)
    }

    /// The policy over `store`.
    pub fn with_store(
        store: Arc<dyn DedupStore>,
        lifetimes: Lifetimes,
        max_entries: u64,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            lifetimes,
            max_entries,
            clock,
        })
    }

    /// The remembered outcome for `label`, if any is current.
    pub async fn get(&self, label: &Label) -> Result<Option<Remembered>, StoreError> {
        self.store.get(label).await
    }

    /// Remembered, wait, or lead: decided atomically per label.
    pub async fn claim(self: &Arc<Self>, label: &Label) -> Result<Claim, StoreError> {
        // A claim whose holder vanished mid-call may have emailed: it keeps
        // the label as long as an uncertain outcome would.
        let claim = self.store.claim(label, self.lifetimes.uncertain).await?;
        Ok(claim.map_lead(|claim| Lease {
            dedup: Arc::clone(self),
            claim: Some(claim),
        }))
    }

    /// Puts a saved outcome back (loading the state file), unless one is current.
    pub fn restore(&self, label: Label, remembered: Remembered) -> bool {
        self.store.restore(label, remembered)
    }

    /// Forgets `label`, so that the next request is forwarded again.
    pub async fn forget(&self, label: &Label) -> Result<Option<Remembered>, StoreError> {
        self.store.forget(label).await
    }

    /// Every outcome still remembered here.
    pub fn snapshot(&self) -> Vec<(Label, Remembered)> {
        self.store.snapshot()
    }

    /// The time on the gateway's clock, against which outcomes expire.
    pub fn now(&self) -> SystemTime {
        self.clock.system_time()
    }

    /// How many outcomes are remembered (after pending housekeeping).
    pub fn len(&self) -> u64 {
        self.store.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most outcomes remembered at once (`dedup.max_entries`).
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// How many MPC calls are in flight.
    pub fn in_flight(&self) -> usize {
        self.store.in_flight()
    }

    /// A counter that moves whenever the remembered set changes.
    pub fn changes(&self) -> u64 {
        self.store.changes()
    }
}

/// A memory of at most `max_entries` outcomes on the system clock, with the
/// shipped lifetimes (1 h, 10 min, 2 min), for the unit tests of its users.
#[cfg(test)]
pub(crate) fn in_memory(max_entries: u64) -> Arc<Dedup> {
    let settings = DedupSettings {
        sent_ttl: Duration::from_secs(3600),
        rejected_ttl: Duration::from_secs(600),
        uncertain_ttl: Duration::from_secs(120),
        max_entries: max_entries
            .try_into()
            .expect("a test memory holds something"),
        state_file: Default::default(),
    };
    Dedup::new(&settings, Arc::new(crate::clock::SystemClock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::domain::mpc_reply::Reply;
    use crate::domain::outcome::MpcAnswer;
    use crate::store::StoreFuture;

    #[test]
    fn outcomes_are_named_as_operators_read_them() {
        let upstream = MpcAnswer {
            status: 200,
            body: None,
        };
        let sent = Outcome::Sent {
            upstream: upstream.clone(),
        };
        assert_eq!(sent.as_str(), "sent");
        assert_eq!(Outcome::Rejected { upstream }.as_str(), "rejected");
        let uncertain = Outcome::Uncertain {
            reason: Uncertainty::Timeout,
        };
        assert_eq!(uncertain.as_str(), "uncertain");
    }

    /// A store whose every claim has lapsed by the time its call begins,
    /// as a shared store's may when another replica took the label over.
    struct Lapsing(memory::MemoryStore);

    impl DedupStore for Lapsing {
        fn get<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
            self.0.get(label)
        }
        fn claim<'a>(
            &'a self,
            label: &'a Label,
            hold_for: Duration,
        ) -> StoreFuture<'a, store::Claim> {
            self.0.claim(label, hold_for)
        }
        fn begin_call<'a>(
            &'a self,
            _claim: &'a store::ClaimId,
            _user: &'a str,
        ) -> StoreFuture<'a, ()> {
            Box::pin(std::future::ready(Err(StoreError {
                operation: "begin_call",
                reason: "the claim was taken over".into(),
            })))
        }
        fn settle<'a>(&'a self, claim: store::ClaimId, settled: Settled) -> StoreFuture<'a, ()> {
            self.0.settle(claim, settled)
        }
        fn release(&self, claim: store::ClaimId) {
            self.0.release(claim)
        }
        fn forget<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
            self.0.forget(label)
        }
        fn restore(&self, label: Label, remembered: Remembered) -> bool {
            self.0.restore(label, remembered)
        }
        fn snapshot(&self) -> Vec<(Label, Remembered)> {
            self.0.snapshot()
        }
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn in_flight(&self) -> usize {
            self.0.in_flight()
        }
        fn changes(&self) -> u64 {
            self.0.changes()
        }
    }

    #[tokio::test]
    async fn a_lapsed_claim_refuses_to_begin_the_call_and_frees_the_label() {
        let clock: Arc<dyn Clock> = Arc::new(FakeClock::default());
        let lifetimes = Lifetimes {
            sent: Duration::from_secs(3600),
            rejected: Duration::from_secs(600),
            uncertain: Duration::from_secs(120),
        };
        let store = Lapsing(memory::MemoryStore::new(
            clock.clone(),
            10,
            lifetimes.longest(),
        ));
        let dedup = Dedup::with_store(Arc::new(store), lifetimes, 10, clock);
        let label = Label::parse("A10cnQO").unwrap();
        let Ok(Claim::Lead(lease)) = dedup.claim(&label).await else {
            panic!("expected to lead")
        };
        let refused = lease.begin_call("alice").await.unwrap_err();
        assert_eq!(refused.operation, "begin_call");
        drop(lease);
        assert_eq!(dedup.in_flight(), 0, "the claim given up is released");
    }

    #[tokio::test]
    async fn empty_until_an_outcome_is_remembered() {
        let settings = DedupSettings {
            sent_ttl: Duration::from_secs(3600),
            rejected_ttl: Duration::from_secs(60),
            uncertain_ttl: Duration::from_secs(120),
            max_entries: 1000.try_into().unwrap(),
            state_file: Default::default(),
        };
        let dedup = Dedup::new(&settings, Arc::new(FakeClock::default()));
        assert!(dedup.is_empty());
        assert_eq!(dedup.max_entries(), 1000);
        let Ok(Claim::Lead(lease)) = dedup.claim(&Label::parse("A10cnQO").unwrap()).await else {
            panic!("expected to lead")
        };
        assert_eq!(lease.label().as_str(), "A10cnQO");
        let accepted = Ok(Reply::Accepted(MpcAnswer {
            status: 200,
            body: None,
        }));
        lease.settle(&accepted, "alice".into()).await.unwrap();
        assert!(!dedup.is_empty());
        assert_eq!(dedup.len(), 1);
    }
}
