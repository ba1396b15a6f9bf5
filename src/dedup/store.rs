//! The seam between the dedup policy and where outcomes and claims live:
//! this process's memory, or a store shared by several replicas.
//!
//! The seam is written for a store held by others too: a claim carries a
//! fencing token (a claim that lapsed or was taken over must not call the
//! MPC), a waiter is fed through a channel that anything may fill (a call
//! in this process, or news from another replica), and an outcome may
//! arrive from outside at any time.

use std::time::Duration;

use tokio::sync::watch;

use crate::domain::label::Label;
use crate::domain::mpc_reply::UpstreamFailure;
use crate::domain::outcome::Remembered;
use crate::store::StoreFuture;

/// How an MPC call settled: remembered, or a failure that certainly sent nothing.
pub type Settled = Result<Remembered, UpstreamFailure>;

/// What a claim on a label comes to. The store hands out a [`ClaimId`] to
/// lead with; the dedup policy wraps it in its `Lease`.
pub enum Claim<Lead = ClaimId> {
    /// An outcome is remembered: answer from it.
    Remembered(Remembered),
    /// A call for the label is under way: wait for its result.
    Wait(Waiter),
    /// Nothing is known or under way: this caller holds the claim.
    Lead(Lead),
}

impl<Lead> Claim<Lead> {
    /// The same claim, with what leading hands out turned by `lead`.
    pub fn map_lead<Other>(self, lead: impl FnOnce(Lead) -> Other) -> Claim<Other> {
        match self {
            Self::Remembered(remembered) => Claim::Remembered(remembered),
            Self::Wait(waiter) => Claim::Wait(waiter),
            Self::Lead(held) => Claim::Lead(lead(held)),
        }
    }
}

/// A claim on a label, fenced by a token unique to this claim.
#[derive(Debug, PartialEq, Eq)]
pub struct ClaimId {
    label: Label,
    token: u64,
}

impl ClaimId {
    /// The claim numbered `token` on `label`.
    pub fn new(label: Label, token: u64) -> Self {
        Self { label, token }
    }

    /// The label claimed.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// The fencing token: a store accepts a step of this claim only while it
    /// is the label's current one.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// A place in the queue behind a call under way.
pub struct Waiter(watch::Receiver<Option<Settled>>);

impl Waiter {
    /// A waiter told through `receiver`; a sender dropped without a value
    /// means the claim was given up before calling.
    pub fn new(receiver: watch::Receiver<Option<Settled>>) -> Self {
        Self(receiver)
    }

    /// The call's result, or `None` when its claim was given up before calling.
    pub async fn settled(mut self) -> Option<Settled> {
        match self.0.wait_for(Option::is_some).await {
            Ok(settled) => settled.clone(),
            Err(_) => None,
        }
    }
}

/// Where remembered outcomes and claims live. The policy (what is
/// remembered for how long, what may be tried again) is the caller's.
pub trait DedupStore: Send + Sync {
    /// The outcome remembered for `label`, if one is current.
    fn get<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>>;

    /// Remembered, wait, or lead: decided atomically per label. A claim
    /// whose holder vanishes keeps the label for `hold_for` at most.
    fn claim<'a>(&'a self, label: &'a Label, hold_for: Duration) -> StoreFuture<'a, Claim>;

    /// Confirms, just before the MPC is called, that `claim` is still the
    /// label's current one; an error means the MPC must not be called.
    /// `user` is who the call is made for, should the call outlive its holder.
    fn begin_call<'a>(&'a self, claim: &'a ClaimId, user: &'a str) -> StoreFuture<'a, ()>;

    /// Remembers the outcome (a failure is only handed on), ends the claim
    /// and hands the result to every waiter.
    fn settle<'a>(&'a self, claim: ClaimId, settled: Settled) -> StoreFuture<'a, ()>;

    /// Ends a claim given up before calling, so that waiters claim again;
    /// never waits.
    fn release(&self, claim: ClaimId);

    /// Forgets `label`, so that the next request is forwarded again.
    fn forget<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>>;

    /// Puts a saved outcome into this process's copy, unless one is current
    /// there; returns whether it was put.
    fn restore(&self, label: Label, remembered: Remembered) -> bool;

    /// Every outcome current in this process's copy.
    fn snapshot(&self) -> Vec<(Label, Remembered)>;

    /// How many outcomes this process's copy holds (after pending housekeeping).
    fn len(&self) -> u64;

    /// Whether this process's copy holds no outcome.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many claims this process holds.
    fn in_flight(&self) -> usize;

    /// A counter that moves whenever this process's copy changes.
    fn changes(&self) -> u64;
}

/// Runs the [`suite`] against the backend that `$fixture` (a future of a
/// [`suite::Fixture`]) makes afresh for each test.
#[cfg(test)]
macro_rules! dedup_store_suite {
    ($fixture:expr) => {
        $crate::dedup::store::dedup_store_suite!(@each $fixture;
            first_claim_leads_then_others_wait_then_it_is_remembered,
            a_claim_given_up_releases_the_waiters,
            each_outcome_has_its_lifetime_and_certain_failures_are_not_stored,
            outcomes_expire_on_the_clock,
            forget_and_snapshot,
            a_restored_outcome_does_not_replace_a_current_one
        );
    };
    (@each $fixture:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::dedup::store::suite::$name($fixture.await).await
            }
        )*
    };
}

#[cfg(test)]
pub(crate) use dedup_store_suite;

/// The behaviour every [`DedupStore`] owes the policy above it, as one
/// suite that any backend runs with [`dedup_store_suite!`].
#[cfg(test)]
pub(crate) mod suite {
    use std::sync::Arc;
    use std::time::Duration;

    use super::DedupStore;
    use crate::clock::{Clock, FakeClock};
    use crate::dedup::{Claim, Dedup, Lease, Lifetimes};
    use crate::domain::label::Label;
    use crate::domain::mpc_reply::{MpcResult, Reply, UpstreamFailure};
    use crate::domain::outcome::{MpcAnswer, Outcome, Uncertainty};

    /// The store under test and the clock it follows.
    pub struct Fixture {
        pub clock: Arc<FakeClock>,
        pub store: Arc<dyn DedupStore>,
    }

    const LIFETIMES: Lifetimes = Lifetimes {
        sent: Duration::from_secs(3600),
        rejected: Duration::from_secs(60),
        uncertain: Duration::from_secs(120),
    };

    fn dedup(fixture: Fixture) -> (Arc<FakeClock>, Arc<Dedup>) {
        let dedup = Dedup::with_store(fixture.store, LIFETIMES, 1000, fixture.clock.clone());
        (fixture.clock, dedup)
    }

    fn label(text: &str) -> Label {
        Label::parse(text).unwrap()
    }

    fn accepted() -> MpcResult {
        Ok(Reply::Accepted(MpcAnswer {
            status: 200,
            body: None,
        }))
    }

    async fn lead(dedup: &Arc<Dedup>, label: &Label) -> Lease {
        match dedup.claim(label).await.unwrap() {
            Claim::Lead(lease) => lease,
            Claim::Remembered(_) => panic!("expected to lead, found a remembered outcome"),
            Claim::Wait(_) => panic!("expected to lead, found a call under way"),
        }
    }

    pub async fn first_claim_leads_then_others_wait_then_it_is_remembered(fixture: Fixture) {
        let (clock, dedup) = dedup(fixture);
        let l = label("A10cnQO");
        let lease = lead(&dedup, &l).await;
        assert_eq!(dedup.in_flight(), 1, "the claim is held");
        let Claim::Wait(waiter) = dedup.claim(&l).await.unwrap() else {
            panic!("expected to wait")
        };
        assert_eq!(dedup.in_flight(), 1, "a waiter holds no claim");
        lease.begin_call("alice").await.unwrap();
        let settled = lease.settle(&accepted(), "alice".into()).await.unwrap();
        assert_eq!(settled.user(), "alice");
        assert_eq!(settled.requested_at(), clock.system_time());
        assert_eq!(dedup.in_flight(), 0);

        let shared = waiter.settled().await.unwrap().unwrap();
        assert_eq!(shared, settled, "the waiter gets the same result");
        let Claim::Remembered(remembered) = dedup.claim(&l).await.unwrap() else {
            panic!("expected a remembered outcome")
        };
        assert!(matches!(remembered.outcome(), Outcome::Sent { .. }));
        assert_eq!(dedup.get(&l).await.unwrap(), Some(remembered));
    }

    pub async fn a_claim_given_up_releases_the_waiters(fixture: Fixture) {
        let (_clock, dedup) = dedup(fixture);
        let l = label("A10cnQO");
        let lease = lead(&dedup, &l).await;
        let Claim::Wait(waiter) = dedup.claim(&l).await.unwrap() else {
            panic!("expected to wait")
        };
        drop(lease);
        assert!(
            waiter.settled().await.is_none(),
            "the waiter is told to try again"
        );
        assert_eq!(dedup.in_flight(), 0);
        lead(&dedup, &l).await;
    }

    pub async fn each_outcome_has_its_lifetime_and_certain_failures_are_not_stored(
        fixture: Fixture,
    ) {
        let (clock, dedup) = dedup(fixture);
        let answer = |status| MpcAnswer { status, body: None };
        let cases: [(MpcResult, Option<u64>); 7] = [
            (accepted(), Some(3600)),
            (Ok(Reply::Rejected(answer(404))), Some(60)),
            (
                Err(UpstreamFailure::Timeout(Duration::from_secs(1))),
                Some(120),
            ),
            (
                Err(UpstreamFailure::ConnectionLost("reset".into())),
                Some(120),
            ),
            (
                Err(UpstreamFailure::UnexpectedStatus(answer(302))),
                Some(120),
            ),
            (Err(UpstreamFailure::ServerError(answer(500))), None),
            (Err(UpstreamFailure::NotConnected("refused".into())), None),
        ];
        for (index, (result, ttl)) in cases.into_iter().enumerate() {
            let l = label(&format!("LABEL{index}"));
            let settled = lead(&dedup, &l).await.settle(&result, "alice".into()).await;
            match ttl {
                Some(seconds) => {
                    let remembered = settled.unwrap();
                    let lifetime = remembered
                        .expires_at()
                        .duration_since(remembered.requested_at())
                        .unwrap();
                    assert_eq!(lifetime, Duration::from_secs(seconds), "case {index}");
                    assert!(dedup.get(&l).await.unwrap().is_some(), "case {index}");
                }
                None => {
                    assert_eq!(settled.unwrap_err(), result.clone().unwrap_err());
                    assert!(
                        dedup.get(&l).await.unwrap().is_none(),
                        "case {index} must not be remembered"
                    );
                    lead(&dedup, &l).await;
                }
            }
        }
        // Each expires at its own time, not at the longest one's.
        clock.advance(Duration::from_secs(60));
        assert!(
            dedup.get(&label("LABEL1")).await.unwrap().is_none(),
            "rejected"
        );
        assert!(
            dedup.get(&label("LABEL2")).await.unwrap().is_some(),
            "uncertain"
        );
        clock.advance(Duration::from_secs(60));
        assert!(
            dedup.get(&label("LABEL2")).await.unwrap().is_none(),
            "uncertain"
        );
        assert!(dedup.get(&label("LABEL0")).await.unwrap().is_some(), "sent");
        let uncertain = Outcome::Uncertain {
            reason: Uncertainty::Timeout,
        };
        assert!(uncertain.may_have_emailed());
    }

    pub async fn outcomes_expire_on_the_clock(fixture: Fixture) {
        let (clock, dedup) = dedup(fixture);
        let l = label("A10cnQO");
        lead(&dedup, &l)
            .await
            .settle(&accepted(), "alice".into())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(3599));
        let remembered = dedup.get(&l).await.unwrap().unwrap();
        assert_eq!(
            remembered.remaining(clock.system_time()),
            Duration::from_secs(1)
        );
        clock.advance(Duration::from_secs(1));
        assert!(dedup.get(&l).await.unwrap().is_none());
        assert!(
            dedup.snapshot().is_empty(),
            "an expired outcome is not saved"
        );
        lead(&dedup, &l).await;
    }

    pub async fn forget_and_snapshot(fixture: Fixture) {
        let (_clock, dedup) = dedup(fixture);
        for text in ["A10cnQO", "A10cnQP"] {
            lead(&dedup, &label(text))
                .await
                .settle(&accepted(), "alice".into())
                .await
                .unwrap();
        }
        let before = dedup.changes();
        assert_eq!(dedup.snapshot().len(), 2);
        assert!(dedup.forget(&label("A10cnQO")).await.unwrap().is_some());
        assert!(dedup.forget(&label("A10cnQO")).await.unwrap().is_none());
        assert_eq!(dedup.len(), 1);
        assert!(dedup.changes() > before);
        lead(&dedup, &label("A10cnQO")).await;
    }

    pub async fn a_restored_outcome_does_not_replace_a_current_one(fixture: Fixture) {
        let (clock, dedup) = dedup(fixture);
        let l = label("A10cnQO");
        let now = clock.system_time();
        let saved = crate::domain::outcome::Remembered::new(
            Outcome::Uncertain {
                reason: Uncertainty::Timeout,
            },
            now,
            now + Duration::from_secs(30),
            "bob".into(),
        );
        assert!(dedup.restore(l.clone(), saved.clone()));
        assert_eq!(dedup.get(&l).await.unwrap(), Some(saved.clone()));
        assert!(!dedup.restore(l.clone(), saved), "one is current");
        let expired = crate::domain::outcome::Remembered::new(
            Outcome::Uncertain {
                reason: Uncertainty::Timeout,
            },
            now - Duration::from_secs(60),
            now,
            "bob".into(),
        );
        assert!(!dedup.restore(label("A10cnQP"), expired), "expired");
        lead(&dedup, &label("A10cnQP")).await;
    }
}
