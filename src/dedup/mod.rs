//! Remembered outcomes and coalescing: one MPC call per label per window,
//! however many callers ask and whatever they do meanwhile.
//!
//! The interface is what a shared store for several replicas would also
//! offer: [`Dedup::get`], [`Dedup::claim`] (remembered, wait for the call in
//! flight, or lead a new one), [`Lease::settle`] (store and hand the result
//! to the waiters), [`Dedup::forget`] and [`Dedup::snapshot`].

pub mod persist;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::DedupSettings;
use crate::domain::label::Label;
use crate::upstream::{MpcAnswer, Reply, UpstreamFailure};

/// What the MPC made of the last call for a label.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The MPC accepted: the email is on its way.
    Sent {
        /// The MPC's answer.
        upstream: MpcAnswer,
    },
    /// The MPC refused the label.
    Rejected {
        /// The MPC's answer.
        upstream: MpcAnswer,
    },
    /// The MPC may or may not have acted.
    Uncertain {
        /// What went wrong.
        reason: Uncertainty,
    },
}

impl Outcome {
    /// The outcome's name in admin answers and the state file.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::Rejected { .. } => "rejected",
            Self::Uncertain { .. } => "uncertain",
        }
    }
}

/// Why an outcome is uncertain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Uncertainty {
    /// No answer within `upstream.timeout`.
    Timeout,
    /// The connection failed after the request may have been sent.
    ConnectionLost,
}

/// A remembered outcome: what happened, when, for whom, until when.
/// Kept small and cheap to clone: there may be a million of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Remembered {
    outcome: Outcome,
    requested_at: UnixMillis,
    expires_at: UnixMillis,
    user: Arc<str>,
}

impl Remembered {
    /// An outcome of a call made at `requested_at` by `user`, current until `expires_at`.
    pub fn new(
        outcome: Outcome,
        requested_at: SystemTime,
        expires_at: SystemTime,
        user: Arc<str>,
    ) -> Self {
        Self {
            outcome,
            requested_at: UnixMillis::from(requested_at),
            expires_at: UnixMillis::from(expires_at),
            user,
        }
    }

    /// What the MPC made of the call.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// When the MPC call was made.
    pub fn requested_at(&self) -> SystemTime {
        self.requested_at.into()
    }

    /// When the memory of it ends and the label may be forwarded again.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at.into()
    }

    /// The user whose request made the call.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Time left before the label may be forwarded again.
    pub fn remaining(&self) -> Duration {
        self.expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch: half a `SystemTime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnixMillis(u64);

impl From<SystemTime> for UnixMillis {
    fn from(at: SystemTime) -> Self {
        let since_epoch = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

impl From<UnixMillis> for SystemTime {
    fn from(at: UnixMillis) -> Self {
        SystemTime::UNIX_EPOCH + Duration::from_millis(at.0)
    }
}

/// How an MPC call settled: remembered, or a failure that certainly sent nothing.
pub type Settled = Result<Remembered, UpstreamFailure>;

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
    fn of(&self, outcome: &Outcome) -> Duration {
        match outcome {
            Outcome::Sent { .. } => self.sent,
            Outcome::Rejected { .. } => self.rejected,
            Outcome::Uncertain { .. } => self.uncertain,
        }
    }
}

/// What a caller gets when asking about a label.
pub enum Claim {
    /// An outcome is remembered: answer from memory.
    Remembered(Remembered),
    /// A call for the label is in flight: wait for its result.
    Wait(Waiter),
    /// Nothing is known or in flight: this caller leads the call.
    Lead(Lease),
}

/// A place in the queue behind a call in flight.
pub struct Waiter(watch::Receiver<Option<Settled>>);

impl Waiter {
    /// The call's result, or `None` when its leader gave up before calling.
    pub async fn settled(mut self) -> Option<Settled> {
        match self.0.wait_for(Option::is_some).await {
            Ok(settled) => settled.clone(),
            Err(_) => None,
        }
    }
}

/// The right, and duty, to make the one MPC call for a label.
pub struct Lease {
    dedup: Arc<Dedup>,
    label: Label,
    sender: Option<watch::Sender<Option<Settled>>>,
}

impl Lease {
    /// Records the call's result, hands it to every waiter and ends the lease.
    pub fn settle(mut self, result: Result<Reply, UpstreamFailure>, user: Arc<str>) -> Settled {
        let settled = self.dedup.remember(&self.label, result, user);
        // Store first, then leave the in-flight map: a newcomer finds one or the other.
        self.dedup.inflight.remove(&self.label);
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(settled.clone()));
        }
        settled
    }

    /// The label the lease is for.
    pub fn label(&self) -> &Label {
        &self.label
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.sender.is_some() {
            // Given up before calling (quota, budget, breaker): waiters retry.
            self.dedup.inflight.remove(&self.label);
        }
    }
}

/// The remembered outcomes and the calls in flight.
pub struct Dedup {
    cache: Cache<Label, Remembered>,
    inflight: DashMap<Label, watch::Receiver<Option<Settled>>>,
    lifetimes: Lifetimes,
    max_entries: u64,
    changes: AtomicU64,
}

impl Dedup {
    /// An empty memory bounded by `dedup.max_entries`.
    pub fn new(settings: &DedupSettings) -> Arc<Self> {
        let lifetimes = Lifetimes {
            sent: settings.sent_ttl,
            rejected: settings.rejected_ttl,
            uncertain: settings.uncertain_ttl,
        };
        // One lifetime for the cache keeps moka's per-entry bookkeeping small
        // (no timer wheel); shorter-lived outcomes are judged by their own
        // `expires_at` on every read and linger unseen until moka drops them.
        let longest = lifetimes
            .sent
            .max(lifetimes.rejected)
            .max(lifetimes.uncertain);
        let cache = Cache::builder()
            .max_capacity(settings.max_entries.get())
            .time_to_live(longest)
            .build();
        Arc::new(Self {
            cache,
            inflight: DashMap::new(),
            lifetimes,
            max_entries: settings.max_entries.get(),
            changes: AtomicU64::new(0),
        })
    }

    /// The remembered outcome for `label`, if any is current.
    pub fn get(&self, label: &Label) -> Option<Remembered> {
        self.cache
            .get(label)
            .filter(|remembered| !remembered.remaining().is_zero())
    }

    /// Remembered, wait, or lead: decided atomically per label.
    pub fn claim(self: &Arc<Self>, label: &Label) -> Claim {
        if let Some(remembered) = self.get(label) {
            return Claim::Remembered(remembered);
        }
        match self.inflight.entry(label.clone()) {
            Entry::Occupied(call) => Claim::Wait(Waiter(call.get().clone())),
            Entry::Vacant(slot) => {
                // The call may have settled since the first look.
                if let Some(remembered) = self.get(label) {
                    return Claim::Remembered(remembered);
                }
                let (sender, receiver) = watch::channel(None);
                slot.insert(receiver);
                Claim::Lead(Lease {
                    dedup: Arc::clone(self),
                    label: label.clone(),
                    sender: Some(sender),
                })
            }
        }
    }

    fn remember(
        &self,
        label: &Label,
        result: Result<Reply, UpstreamFailure>,
        user: Arc<str>,
    ) -> Settled {
        let outcome = match result {
            Ok(Reply::Accepted(upstream)) => Outcome::Sent { upstream },
            Ok(Reply::Rejected(upstream)) => Outcome::Rejected { upstream },
            Err(UpstreamFailure::Timeout(_)) => Outcome::Uncertain {
                reason: Uncertainty::Timeout,
            },
            // A 1xx or 3xx answer means the MPC read the request, as a lost
            // connection may: either could have sent an email.
            Err(UpstreamFailure::ConnectionLost(_) | UpstreamFailure::UnexpectedStatus(_)) => {
                Outcome::Uncertain {
                    reason: Uncertainty::ConnectionLost,
                }
            }
            // Certainly nothing was sent: the next request tries again.
            Err(failure) => return Err(failure),
        };
        let requested_at = SystemTime::now();
        let expires_at = requested_at + self.lifetimes.of(&outcome);
        let remembered = Remembered::new(outcome, requested_at, expires_at, user);
        self.store(label.clone(), remembered.clone());
        Ok(remembered)
    }

    /// Stores an outcome as is (used when loading saved state).
    pub fn store(&self, label: Label, remembered: Remembered) {
        if remembered.remaining().is_zero() {
            return;
        }
        self.cache.insert(label, remembered);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets `label`, so that the next request is forwarded again.
    pub fn forget(&self, label: &Label) -> Option<Remembered> {
        let forgotten = self.cache.remove(label);
        if forgotten.is_some() {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        forgotten
    }

    /// Every outcome still remembered.
    pub fn snapshot(&self) -> Vec<(Label, Remembered)> {
        self.cache
            .iter()
            .filter(|(_, remembered)| !remembered.remaining().is_zero())
            .map(|(label, remembered)| (Label::clone(&label), remembered))
            .collect()
    }

    /// How many outcomes are remembered (after pending housekeeping).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
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
        self.inflight.len()
    }

    /// A counter that moves whenever the remembered set changes.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedup(sent: Duration) -> Arc<Dedup> {
        Dedup::new(&DedupSettings {
            sent_ttl: sent,
            rejected_ttl: Duration::from_secs(60),
            uncertain_ttl: Duration::from_secs(120),
            max_entries: 1000.try_into().unwrap(),
            state_file: Default::default(),
        })
    }

    #[test]
    fn outcomes_are_named_as_operators_read_them() {
        let upstream = MpcAnswer {
            status: 200,
            body: None,
        };
        assert_eq!(
            Outcome::Sent {
                upstream: upstream.clone()
            }
            .as_str(),
            "sent"
        );
        assert_eq!(Outcome::Rejected { upstream }.as_str(), "rejected");
        let uncertain = Outcome::Uncertain {
            reason: Uncertainty::Timeout,
        };
        assert_eq!(uncertain.as_str(), "uncertain");
    }

    fn label(text: &str) -> Label {
        Label::parse(text).unwrap()
    }

    fn accepted() -> Result<Reply, UpstreamFailure> {
        Ok(Reply::Accepted(MpcAnswer {
            status: 200,
            body: None,
        }))
    }

    fn lead(dedup: &Arc<Dedup>, l: &Label) -> Lease {
        match dedup.claim(l) {
            Claim::Lead(lease) => lease,
            _ => panic!("expected to lead"),
        }
    }

    #[test]
    fn empty_until_an_outcome_is_remembered() {
        let dedup = dedup(Duration::from_secs(3600));
        assert!(dedup.is_empty());
        let l = label("A10cnQO");
        lead(&dedup, &l).settle(accepted(), "alice".into()).unwrap();
        assert!(!dedup.is_empty());
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn first_claim_leads_then_others_wait_then_it_is_remembered() {
        let dedup = dedup(Duration::from_secs(3600));
        let l = label("A10cnQO");
        let lease = lead(&dedup, &l);
        let Claim::Wait(waiter) = dedup.claim(&l) else {
            panic!("expected to wait")
        };
        let settled = lease.settle(accepted(), "alice".into()).unwrap();
        assert_eq!(settled.user(), "alice");
        assert_eq!(dedup.in_flight(), 0);

        let shared = futures_util::FutureExt::now_or_never(waiter.settled())
            .flatten()
            .unwrap()
            .unwrap();
        assert_eq!(shared, settled, "the waiter gets the same result");
        let Claim::Remembered(remembered) = dedup.claim(&l) else {
            panic!("expected a remembered outcome")
        };
        assert!(matches!(remembered.outcome(), Outcome::Sent { .. }));
        let ttl = remembered
            .expires_at()
            .duration_since(remembered.requested_at())
            .unwrap();
        assert_eq!(ttl, Duration::from_secs(3600));
    }

    #[test]
    fn a_lease_given_up_releases_the_waiters() {
        let dedup = dedup(Duration::from_secs(3600));
        let l = label("A10cnQO");
        let lease = lead(&dedup, &l);
        let Claim::Wait(waiter) = dedup.claim(&l) else {
            panic!("expected to wait")
        };
        drop(lease);
        let settled = futures_util::FutureExt::now_or_never(waiter.settled()).unwrap();
        assert!(settled.is_none(), "the waiter is told to try again");
        lead(&dedup, &l);
    }

    #[test]
    fn each_outcome_has_its_lifetime_and_certain_failures_are_not_stored() {
        let dedup = dedup(Duration::from_secs(3600));
        let cases: [(Result<Reply, UpstreamFailure>, Option<u64>); 5] = [
            (
                Ok(Reply::Rejected(MpcAnswer {
                    status: 404,
                    body: None,
                })),
                Some(60),
            ),
            (
                Err(UpstreamFailure::Timeout(Duration::from_secs(1))),
                Some(120),
            ),
            (
                Err(UpstreamFailure::ConnectionLost("reset".into())),
                Some(120),
            ),
            (
                Err(UpstreamFailure::ServerError(MpcAnswer {
                    status: 500,
                    body: None,
                })),
                None,
            ),
            (Err(UpstreamFailure::NotConnected("refused".into())), None),
        ];
        for (index, (result, ttl)) in cases.into_iter().enumerate() {
            let l = label(&format!("LABEL{index}"));
            let settled = lead(&dedup, &l).settle(result, "alice".into());
            match ttl {
                Some(seconds) => {
                    let remembered = settled.unwrap();
                    let lifetime = remembered
                        .expires_at()
                        .duration_since(remembered.requested_at())
                        .unwrap();
                    assert_eq!(lifetime, Duration::from_secs(seconds), "case {index}");
                    assert!(dedup.get(&l).is_some());
                }
                None => {
                    assert!(settled.is_err());
                    assert!(
                        dedup.get(&l).is_none(),
                        "case {index} must not be remembered"
                    );
                    lead(&dedup, &l);
                }
            }
        }
    }

    #[test]
    fn outcomes_expire() {
        let dedup = dedup(Duration::from_millis(50));
        let l = label("A10cnQO");
        lead(&dedup, &l).settle(accepted(), "alice".into()).unwrap();
        assert!(dedup.get(&l).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(dedup.get(&l).is_none());
        lead(&dedup, &l);
    }

    #[test]
    fn forget_and_snapshot() {
        let dedup = dedup(Duration::from_secs(3600));
        for text in ["A10cnQO", "A10cnQP"] {
            lead(&dedup, &label(text))
                .settle(accepted(), "alice".into())
                .unwrap();
        }
        let before = dedup.changes();
        assert_eq!(dedup.snapshot().len(), 2);
        assert!(dedup.forget(&label("A10cnQO")).is_some());
        assert!(dedup.forget(&label("A10cnQO")).is_none());
        assert_eq!(dedup.len(), 1);
        assert!(dedup.changes() > before);
        lead(&dedup, &label("A10cnQO"));
    }
}
