//! The use case, free of any framework: a single request, a batch item and
//! a page action all retrieve a label's action code through
//! [`Retrieval::retrieve`], or [`Retrieval::retrieve_all`] for many labels,
//! which takes each through the same two steps.
//!
//! remembered or store claim → breaker → the MPC's pause → the user's
//! upstream quota → the courtesy budget → an MPC call slot → the MPC →
//! settle; each retrieval ends in one [`Decision`], recorded once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::dedup::{Claim, Dedup, Lease, Settled, Waiter};
use crate::domain::identity::Identity;
use crate::domain::label::Label;
use crate::domain::mpc_reply::UpstreamFailure;
use crate::domain::outcome::{Decision, Outcome, RetrievalOutcome, Uncertainty};
use crate::observe::record::{Asker, Observer};
use crate::pause::{Pause, Paused};
use crate::quota::{LimitKind, QuotaError, Quotas, Refusal};
use crate::store::StoreError;
use crate::upstream::MpcClient;
use crate::upstream::breaker::{Breaker, Permit};

/// How long a caller is asked to wait when the shared store failed.
pub const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a caller is asked to wait when every MPC call slot stayed busy.
const SLOTS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How a retrieval came by its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// From a remembered outcome; nothing was sent.
    Memory,
    /// This retrieval made the MPC call.
    Forwarded,
    /// Coalesced with a concurrent retrieval that made the call.
    Collapsed,
}

/// What a retrieval answers when it reached an outcome.
#[derive(Clone, Debug)]
pub struct Answered {
    /// The outcome, or the failure of a call that certainly sent nothing.
    pub settled: Settled,
    /// How it was come by.
    pub via: Via,
}

/// Why nothing was sent (and nothing is remembered).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The breaker is open.
    #[error("circuit open")]
    CircuitOpen {
        /// When the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The MPC asked the gateway to slow down, and the pause is not over.
    #[error("paused at the MPC's request")]
    Throttled(Paused),
    /// The user's upstream quota is used up.
    #[error("upstream quota used up")]
    Quota(Refusal),
    /// The courtesy budget is spent, or every MPC call slot stayed busy.
    #[error("gateway busy")]
    GatewayBusy {
        /// When to try again.
        retry_after: Duration,
    },
    /// The shared store could not be used, so the label could not be claimed.
    #[error(transparent)]
    StoreUnavailable(StoreError),
    /// The task making the call ended without an answer.
    #[error("the call to the MPC was interrupted")]
    Interrupted,
}

impl Refused {
    fn outcome(&self) -> RetrievalOutcome {
        match self {
            Self::CircuitOpen { .. } => RetrievalOutcome::CircuitOpen,
            Self::Throttled(_) => RetrievalOutcome::UpstreamThrottled,
            Self::Quota(_) => RetrievalOutcome::QuotaExceeded,
            Self::GatewayBusy { .. } => RetrievalOutcome::GatewayBusy,
            Self::StoreUnavailable(_) => RetrievalOutcome::StoreUnavailable,
            Self::Interrupted => RetrievalOutcome::UpstreamError,
        }
    }

    /// How long the caller should wait, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after } | Self::GatewayBusy { retry_after } => {
                Some(*retry_after)
            }
            Self::Throttled(paused) => Some(paused.remaining),
            Self::Quota(refusal) => Some(refusal.retry_after),
            Self::StoreUnavailable(_) => Some(STORE_RETRY_AFTER),
            Self::Interrupted => None,
        }
    }
}

/// What one retrieval came to, with the decision it recorded.
#[derive(Clone, Debug)]
pub struct Retrieved {
    /// The answer, or why nothing was sent.
    pub answer: Result<Answered, Refused>,
    /// What was recorded for it.
    pub decision: Decision,
    /// When it was decided, on the gateway's clock.
    pub decided_at: SystemTime,
}

/// The parts a retrieval passes through, shared by every route.
pub struct Retrieval {
    /// Remembered outcomes and claims.
    pub dedup: Arc<Dedup>,
    /// Stops calling a failing MPC.
    pub breaker: Arc<Breaker>,
    /// Stops calling an MPC that asked to be left alone.
    pub pause: Arc<Pause>,
    /// The user's upstream quota and the courtesy budget.
    pub quotas: Arc<Quotas>,
    /// One permit per MPC call allowed under way (`upstream.max_concurrent`).
    pub slots: Arc<Semaphore>,
    /// Longest wait for a free call slot.
    pub slot_wait: Duration,
    /// Records each decision.
    pub observer: Observer,
}

/// How far a retrieval got before its one wait: what it came to already,
/// the call under way that it joined, or the call it is about to make.
enum Step {
    /// Decided without waiting: remembered, or refused.
    Done(Result<Answered, Refused>),
    /// Another retrieval holds the label's claim: wait for its outcome.
    Wait(Waiter),
    /// This retrieval leads, charged: a call slot, then the MPC.
    Call { lease: Lease, permit: Permit },
}

impl Retrieval {
    /// Retrieves the action code for `label` on behalf of `identity`:
    /// answers from memory, joins the call under way, or asks the MPC, and
    /// records the decision (metric and audit line).
    pub async fn retrieve(
        &self,
        identity: &Identity,
        request_id: &str,
        label: &Label,
        mpc: Arc<MpcClient>,
    ) -> Retrieved {
        let step = self.start(identity, label).await;
        self.finish(identity, request_id, label, step, mpc).await
    }

    /// Retrieves every label as [`Retrieval::retrieve`] would, one after
    /// another up to the quota charge (claims and charges follow the order
    /// given, so the first labels get the quota), then waits for every call
    /// and every joined call at once: a slow MPC answer for one label holds
    /// up none of the others. A label given twice is claimed by its first
    /// occurrence and joined by the later ones: one MPC call.
    pub async fn retrieve_all<'a>(
        &self,
        identity: &Identity,
        request_id: &str,
        labels: impl IntoIterator<Item = &'a Label>,
        mpc: Arc<MpcClient>,
    ) -> Vec<Retrieved> {
        let mut started = Vec::new();
        for label in labels {
            started.push((label, self.start(identity, label).await));
        }
        let finishing = started
            .into_iter()
            .map(|(label, step)| self.finish(identity, request_id, label, step, Arc::clone(&mpc)));
        futures_util::future::join_all(finishing).await
    }

    /// Records a refusal at the edge (before a label was read, or an
    /// invalid one) as a retrieval decision.
    pub fn refused_at_edge(&self, asker: Asker<'_>, outcome: RetrievalOutcome) {
        let decision = Decision {
            outcome,
            upstream_status: None,
            may_have_emailed: false,
        };
        self.observer.record(asker, None, decision);
    }

    /// Everything up to the first wait on another party: the claim, and for
    /// the leader the breaker, the pause, the quota and the budget.
    async fn start(&self, identity: &Identity, label: &Label) -> Step {
        let claim = match self.dedup.claim(label).await {
            Ok(claim) => claim,
            Err(error) => return Step::Done(Err(Refused::StoreUnavailable(error))),
        };
        match claim {
            Claim::Remembered(remembered) => Step::Done(Ok(Answered {
                settled: Ok(remembered),
                via: Via::Memory,
            })),
            Claim::Wait(waiter) => Step::Wait(waiter),
            Claim::Lead(lease) => {
                let permit = match self.breaker.admit() {
                    Ok(permit) => permit,
                    Err(retry_after) => {
                        return Step::Done(Err(Refused::CircuitOpen { retry_after }));
                    }
                };
                match self.pause.check().await {
                    Ok(None) => {}
                    Ok(Some(paused)) => {
                        tracing::info!(
                            paused_until = %humantime::format_rfc3339_millis(paused.until),
                            "paused at the MPC's request: not forwarding"
                        );
                        return Step::Done(Err(Refused::Throttled(paused)));
                    }
                    Err(error) => return Step::Done(Err(Refused::StoreUnavailable(error))),
                }
                match self.charge(identity).await {
                    Ok(()) => Step::Call { lease, permit },
                    Err(refused) => Step::Done(Err(refused)),
                }
            }
        }
    }

    /// Waits for what `step` left to wait for, then records the decision.
    async fn finish(
        &self,
        identity: &Identity,
        request_id: &str,
        label: &Label,
        step: Step,
        mpc: Arc<MpcClient>,
    ) -> Retrieved {
        let answer = self.answer(identity, label, step, mpc).await;
        let decision = decide(&answer);
        let asker = Asker {
            request_id,
            user: Some(identity.user()),
        };
        self.observer.record(asker, Some(label), decision);
        Retrieved {
            answer,
            decision,
            decided_at: self.dedup.now(),
        }
    }

    async fn answer(
        &self,
        identity: &Identity,
        label: &Label,
        mut step: Step,
        mpc: Arc<MpcClient>,
    ) -> Result<Answered, Refused> {
        loop {
            match step {
                Step::Done(answer) => return answer,
                Step::Wait(waiter) => {
                    if let Some(settled) = waiter.settled().await {
                        return Ok(Answered {
                            settled,
                            via: Via::Collapsed,
                        });
                    }
                    // The leader was refused before calling the MPC: claim again.
                    step = self.start(identity, label).await;
                }
                Step::Call { lease, permit } => {
                    return self.call(lease, permit, identity, mpc).await;
                }
            }
        }
    }

    /// Makes the one MPC call for the label, charged already, once a call
    /// slot is free.
    async fn call(
        &self,
        lease: Lease,
        permit: Permit,
        identity: &Identity,
        mpc: Arc<MpcClient>,
    ) -> Result<Answered, Refused> {
        let slot = tokio::time::timeout(self.slot_wait, Arc::clone(&self.slots).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        let Some(slot) = slot else {
            tracing::warn!("every MPC call slot stayed busy");
            self.refund(identity).await;
            return Err(Refused::GatewayBusy {
                retry_after: SLOTS_RETRY_AFTER,
            });
        };
        let user = identity.shared_user();
        let (pause, quotas, payer) = (
            Arc::clone(&self.pause),
            Arc::clone(&self.quotas),
            identity.clone(),
        );
        // Its own task: a caller that disconnects cannot cancel the call
        // halfway and let a waiter send a second email.
        let call = actix_web::rt::spawn(
            async move {
                lease.begin_call(&user).await?;
                let result = mpc.retrieve(lease.label()).await;
                drop(slot);
                permit.record(&result);
                // Paused before the waiters hear of it, so that none
                // claims the label again and finds the MPC still open.
                let result = match result {
                    Err(UpstreamFailure::Throttled(throttle)) => {
                        let until = pause.obey(&throttle).await;
                        Err(UpstreamFailure::Throttled(throttle.obeyed(until)))
                    }
                    result => result,
                };
                let settled = lease.settle(&result, user).await;
                if let Err(UpstreamFailure::Throttled(_)) = settled {
                    // The MPC did not act on it: the units were not used
                    // (given back here, should the caller have left).
                    give_back(&quotas, &payer).await;
                }
                Ok::<_, StoreError>(settled)
            }
            .instrument(tracing::Span::current()),
        );
        match call.await {
            Ok(Ok(settled)) => Ok(Answered {
                settled,
                via: Via::Forwarded,
            }),
            Ok(Err(error)) => {
                // The claim lapsed before the call: nothing was sent.
                self.refund(identity).await;
                Err(Refused::StoreUnavailable(error))
            }
            Err(_) => Err(Refused::Interrupted),
        }
    }

    /// Charges the user's upstream quota, then the courtesy budget; a
    /// refusal by the budget gives the user's unit back, since nothing is sent.
    async fn charge(&self, identity: &Identity) -> Result<(), Refused> {
        let (user, tier) = (identity.user(), identity.tier());
        self.quotas
            .admit_upstream(user, tier)
            .await
            .map_err(|error| self.refused_by(error))?;
        if let Err(error) = self.quotas.admit_budget().await {
            given_back(self.quotas.refund_upstream(user, tier).await);
            if matches!(error, QuotaError::Exceeded(_)) {
                tracing::warn!("courtesy budget towards the MPC is spent");
            }
            return Err(self.refused_by(error));
        }
        Ok(())
    }

    /// Gives back what [`Retrieval::charge`] took, when nothing was sent.
    async fn refund(&self, identity: &Identity) {
        give_back(&self.quotas, identity).await;
    }

    fn refused_by(&self, error: QuotaError) -> Refused {
        match error {
            QuotaError::Exceeded(refusal) => {
                self.observer.metrics().quota_rejected(refusal.limit);
                match refusal.limit {
                    LimitKind::CourtesyBudget => Refused::GatewayBusy {
                        retry_after: refusal.retry_after,
                    },
                    _ => Refused::Quota(refusal),
                }
            }
            QuotaError::Store(error) => Refused::StoreUnavailable(error),
        }
    }
}

/// Gives back the user's upstream-quota unit and the courtesy budget's
/// unit that a call charged, when the MPC did not act on it.
async fn give_back(quotas: &Quotas, identity: &Identity) {
    given_back(
        quotas
            .refund_upstream(identity.user(), identity.tier())
            .await,
    );
    given_back(quotas.refund_budget().await);
}

/// Logs a quota unit that could not be given back: it stays spent, though nothing was sent.
fn given_back(refund: Result<(), StoreError>) {
    if let Err(error) = refund {
        tracing::warn!(%error, "a quota unit could not be given back");
    }
}

/// What a retrieval came to: any answer from memory counts as
/// deduplicated, any shared one as coalesced; only the retrieval that made
/// the call may have made the MPC send an email.
fn decide(answer: &Result<Answered, Refused>) -> Decision {
    let Answered { settled, via } = match answer {
        Ok(answered) => answered,
        Err(refused) => {
            return Decision {
                outcome: refused.outcome(),
                upstream_status: None,
                may_have_emailed: false,
            };
        }
    };
    let (outcome, upstream_status, may_have_emailed) = match settled {
        Ok(remembered) => {
            let outcome = remembered.outcome();
            let (retrieval, status) = match outcome {
                Outcome::Sent { upstream } => (RetrievalOutcome::Sent, Some(upstream.status)),
                Outcome::Rejected { upstream } => {
                    (RetrievalOutcome::UpstreamRejected, Some(upstream.status))
                }
                Outcome::Uncertain {
                    reason: Uncertainty::Timeout,
                } => (RetrievalOutcome::UpstreamTimeout, None),
                Outcome::Uncertain {
                    reason: Uncertainty::ConnectionLost,
                } => (RetrievalOutcome::UpstreamError, None),
            };
            (retrieval, status, outcome.may_have_emailed())
        }
        Err(failure) => (
            match failure {
                UpstreamFailure::Throttled(_) => RetrievalOutcome::UpstreamThrottled,
                _ => RetrievalOutcome::UpstreamError,
            },
            failure.answer().map(|answer| answer.status),
            false,
        ),
    };
    Decision {
        outcome: match via {
            Via::Forwarded => outcome,
            Via::Memory => RetrievalOutcome::Deduplicated,
            Via::Collapsed => RetrievalOutcome::Coalesced,
        },
        upstream_status,
        may_have_emailed: may_have_emailed && *via == Via::Forwarded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::mpc_reply::{RetryAfter, Throttle};
    use crate::domain::outcome::{MpcAnswer, Remembered};

    fn answered(outcome: Outcome, via: Via) -> Result<Answered, Refused> {
        let now = SystemTime::now();
        let remembered = Remembered::new(outcome, now, now + Duration::from_secs(60), "a".into());
        Ok(Answered {
            settled: Ok(remembered),
            via,
        })
    }

    #[test]
    fn only_the_retrieval_that_called_may_have_emailed() {
        let sent = || Outcome::Sent {
            upstream: MpcAnswer {
                status: 200,
                body: None,
            },
        };
        let forwarded = decide(&answered(sent(), Via::Forwarded));
        assert_eq!(forwarded.outcome, RetrievalOutcome::Sent);
        assert_eq!(forwarded.upstream_status, Some(200));
        assert!(forwarded.may_have_emailed);
        for (via, outcome) in [
            (Via::Memory, RetrievalOutcome::Deduplicated),
            (Via::Collapsed, RetrievalOutcome::Coalesced),
        ] {
            let shared = decide(&answered(sent(), via));
            assert_eq!(shared.outcome, outcome);
            assert!(!shared.may_have_emailed, "{via:?}");
        }
    }

    #[test]
    fn each_outcome_is_decided_once() {
        let answer = |status| MpcAnswer { status, body: None };
        let cases = [
            (
                Outcome::Uncertain {
                    reason: Uncertainty::Timeout,
                },
                RetrievalOutcome::UpstreamTimeout,
                None,
                true,
            ),
            (
                Outcome::Uncertain {
                    reason: Uncertainty::ConnectionLost,
                },
                RetrievalOutcome::UpstreamError,
                None,
                true,
            ),
            (
                Outcome::Rejected {
                    upstream: answer(404),
                },
                RetrievalOutcome::UpstreamRejected,
                Some(404),
                false,
            ),
        ];
        for (outcome, expected, status, emailed) in cases {
            let decision = decide(&answered(outcome, Via::Forwarded));
            assert_eq!(
                (
                    decision.outcome,
                    decision.upstream_status,
                    decision.may_have_emailed
                ),
                (expected, status, emailed)
            );
        }
        let failed = decide(&Ok(Answered {
            settled: Err(UpstreamFailure::ServerError(MpcAnswer {
                status: 503,
                body: None,
            })),
            via: Via::Forwarded,
        }));
        assert_eq!(failed.outcome, RetrievalOutcome::UpstreamError);
        assert_eq!(failed.upstream_status, Some(503));
        assert!(!failed.may_have_emailed);
        let throttle = |via| {
            decide(&Ok(Answered {
                settled: Err(UpstreamFailure::Throttled(Throttle {
                    answer: MpcAnswer {
                        status: 429,
                        body: None,
                    },
                    retry_after: Some(RetryAfter::Delay(Duration::from_secs(3))),
                })),
                via,
            }))
        };
        let throttled = throttle(Via::Forwarded);
        assert_eq!(throttled.outcome, RetrievalOutcome::UpstreamThrottled);
        assert_eq!(throttled.upstream_status, Some(429));
        assert!(!throttled.may_have_emailed);
        assert_eq!(
            throttle(Via::Collapsed).outcome,
            RetrievalOutcome::Coalesced
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let paused = Refused::Throttled(Paused::from(now, Duration::from_secs(7)));
        assert_eq!(
            decide(&Err(paused.clone())).outcome,
            RetrievalOutcome::UpstreamThrottled
        );
        assert_eq!(paused.retry_after(), Some(Duration::from_secs(7)));
        let refused = decide(&Err(Refused::GatewayBusy {
            retry_after: Duration::from_secs(1),
        }));
        assert_eq!(refused.outcome, RetrievalOutcome::GatewayBusy);
        assert!(!refused.may_have_emailed);
        let unavailable = Refused::StoreUnavailable(StoreError {
            operation: "claim",
            reason: "down".into(),
        });
        assert_eq!(
            decide(&Err(unavailable.clone())).outcome,
            RetrievalOutcome::StoreUnavailable
        );
        assert_eq!(unavailable.retry_after(), Some(STORE_RETRY_AFTER));
    }
}
