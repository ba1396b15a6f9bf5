//! The MPC's own back-pressure, obeyed gateway-wide: when it answers 429,
//! or 503 with `Retry-After`, nothing is forwarded to it until the time it
//! named (`upstream.default_pause` when it named none the gateway could
//! read, never longer than `upstream.max_pause`).
//!
//! This module is the policy: how long a pause lasts, and whether a request
//! may be forwarded now. Where the pause lives is the store's business,
//! behind [`PauseStore`]: [`memory`] here, [`redis`] for replicas.

pub mod memory;
pub mod redis;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use store::PauseStore;

use crate::clock::{Clock, since_epoch};
use crate::domain::mpc_reply::{RetryAfter, Throttle};
use crate::store::StoreError;

/// How long pauses last: `upstream.default_pause` and `upstream.max_pause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    /// For an answer that named no time the gateway could read.
    pub default: Duration,
    /// The longest pause, whatever the MPC named.
    pub max: Duration,
}

/// A pause under way, as a refusal tells the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paused {
    /// When it ends, on the gateway's clock.
    pub until: SystemTime,
    /// How long it has left.
    pub remaining: Duration,
}

impl Paused {
    /// A pause with `remaining` left at `now`.
    pub fn from(now: SystemTime, remaining: Duration) -> Self {
        Self {
            until: now.checked_add(remaining).unwrap_or(now),
            remaining,
        }
    }

    /// When it ends, rounded up to the second, as callers are told it: no
    /// earlier than `Retry-After` (its whole seconds, rounded up) passes.
    pub fn shown_until(&self) -> SystemTime {
        let since_epoch = since_epoch(self.until);
        let partial = u64::from(since_epoch.subsec_nanos() > 0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs() + partial)
    }
}

/// The pause policy over a store.
pub struct Pause {
    store: Arc<dyn PauseStore>,
    clock: Arc<dyn Clock>,
    lengths: Lengths,
}

impl Pause {
    /// The policy over `store`, on `clock`, with pauses of `lengths`.
    pub fn new(store: Arc<dyn PauseStore>, clock: Arc<dyn Clock>, lengths: Lengths) -> Self {
        Self {
            store,
            clock,
            lengths,
        }
    }

    /// No pause yet, in this process's memory (a gateway that runs alone).
    pub fn in_memory(clock: Arc<dyn Clock>, lengths: Lengths) -> Self {
        Self::new(
            Arc::new(memory::MemoryStore::new(Arc::clone(&clock))),
            clock,
            lengths,
        )
    }

    /// How long to pause at `now` for an answer that asked `retry_after`.
    pub fn length(&self, retry_after: Option<&RetryAfter>, now: SystemTime) -> Duration {
        retry_after
            .map_or(self.lengths.default, |asked| asked.wait_from(now))
            .min(self.lengths.max)
    }

    /// Pauses forwarding as `throttle` asks, for every replica; returns when
    /// the pause ends (later than asked when a longer one was under way).
    pub async fn obey(&self, throttle: &Throttle) -> SystemTime {
        let now = self.clock.system_time();
        let wait = self.length(throttle.retry_after.as_ref(), now);
        let left = match self.store.extend(wait).await {
            Ok(left) => left,
            Err(error) => {
                tracing::error!(
                    %error,
                    "cannot share the MPC's pause with the other replicas: this replica obeys it"
                );
                wait
            }
        };
        let paused = Paused::from(now, left);
        tracing::warn!(
            status = throttle.answer.status,
            retry_after = ?throttle.retry_after,
            paused_until = %humantime::format_rfc3339_millis(paused.until),
            paused_for_ms = left.as_millis() as u64,
            "the MPC asked the gateway to slow down: nothing is forwarded to it until the pause ends"
        );
        paused.until
    }

    /// Whether a request may be forwarded now: `None`, or the pause under
    /// way. A shared store that cannot tell refuses: nothing is forwarded
    /// on a guess.
    pub async fn check(&self) -> Result<Option<Paused>, StoreError> {
        let remaining = self.store.remaining().await?;
        Ok((!remaining.is_zero()).then(|| Paused::from(self.clock.system_time(), remaining)))
    }

    /// The pause under way as this replica knows it, without asking anyone.
    pub fn current(&self) -> Option<Paused> {
        let remaining = self.store.known();
        (!remaining.is_zero()).then(|| Paused::from(self.clock.system_time(), remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::domain::outcome::MpcAnswer;

    const LENGTHS: Lengths = Lengths {
        default: Duration::from_secs(60),
        max: Duration::from_secs(3600),
    };

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn pause() -> (Arc<FakeClock>, Pause) {
        let clock = Arc::new(FakeClock::default());
        (clock.clone(), Pause::in_memory(clock, LENGTHS))
    }

    fn throttle(retry_after: Option<RetryAfter>) -> Throttle {
        Throttle {
            answer: MpcAnswer {
                status: 429,
                body: None,
            },
            retry_after,
        }
    }

    #[test]
    fn a_pause_lasts_what_the_mpc_asked_the_default_without_and_never_past_the_cap() {
        let (clock, pause) = pause();
        let now = clock.system_time();
        let delay = |seconds| Some(RetryAfter::Delay(secs(seconds)));
        assert_eq!(pause.length(delay(120).as_ref(), now), secs(120));
        assert_eq!(pause.length(None, now), secs(60), "upstream.default_pause");
        assert_eq!(pause.length(delay(3600).as_ref(), now), secs(3600));
        assert_eq!(
            pause.length(delay(3601).as_ref(), now),
            secs(3600),
            "capped"
        );
        assert_eq!(pause.length(delay(u64::MAX).as_ref(), now), secs(3600));
        let date = RetryAfter::At(now + secs(90));
        assert_eq!(pause.length(Some(&date), now), secs(90), "an HTTP-date");
        let far = RetryAfter::At(now + secs(86_400 * 365));
        assert_eq!(pause.length(Some(&far), now), secs(3600));
        let past = RetryAfter::At(now - secs(5));
        assert_eq!(pause.length(Some(&past), now), Duration::ZERO);
    }

    #[tokio::test]
    async fn an_obeyed_answer_pauses_until_the_time_it_named() {
        let (clock, pause) = pause();
        assert_eq!(pause.check().await.unwrap(), None);
        assert_eq!(pause.current(), None);
        let now = clock.system_time();
        let until = pause
            .obey(&throttle(Some(RetryAfter::Delay(secs(3)))))
            .await;
        assert_eq!(until, now + secs(3));
        let paused = Paused {
            until,
            remaining: secs(3),
        };
        assert_eq!(pause.check().await.unwrap(), Some(paused));
        assert_eq!(pause.current(), Some(paused));
        clock.advance(secs(1));
        assert_eq!(
            pause.check().await.unwrap(),
            Some(Paused {
                until,
                remaining: secs(2)
            })
        );
        clock.advance(secs(2));
        assert_eq!(pause.check().await.unwrap(), None);
        assert_eq!(pause.current(), None);
    }

    #[tokio::test]
    async fn a_shorter_request_ends_with_the_longer_pause_under_way() {
        let (clock, pause) = pause();
        let now = clock.system_time();
        let first = pause.obey(&throttle(None)).await;
        assert_eq!(first, now + secs(60));
        let second = pause
            .obey(&throttle(Some(RetryAfter::Delay(secs(5)))))
            .await;
        assert_eq!(second, first);
    }

    /// A shared store that cannot be reached.
    struct Unreachable;

    impl PauseStore for Unreachable {
        fn extend(&self, _wait: Duration) -> crate::store::StoreFuture<'_, Duration> {
            Box::pin(std::future::ready(Err(StoreError {
                operation: "pause",
                reason: "down".into(),
            })))
        }
        fn remaining(&self) -> crate::store::StoreFuture<'_, Duration> {
            self.extend(Duration::ZERO)
        }
        fn known(&self) -> Duration {
            Duration::ZERO
        }
    }

    #[tokio::test]
    async fn a_store_that_cannot_tell_refuses_and_a_pause_it_cannot_share_is_still_reported() {
        let clock = Arc::new(FakeClock::default());
        let pause = Pause::new(Arc::new(Unreachable), clock.clone(), LENGTHS);
        assert_eq!(pause.check().await.unwrap_err().operation, "pause");
        let until = pause.obey(&throttle(None)).await;
        assert_eq!(until, clock.system_time() + secs(60));
    }

    #[test]
    fn a_pause_is_shown_ending_on_the_second_after_it_ends() {
        let start = SystemTime::UNIX_EPOCH + secs(1_000);
        let shown = |millis| Paused::from(start, Duration::from_millis(millis)).shown_until();
        assert_eq!(shown(3_000), start + secs(3));
        assert_eq!(shown(2_001), start + secs(3));
        assert_eq!(shown(2_999), start + secs(3));
        assert_eq!(shown(1), start + secs(1));
        assert_eq!(shown(0), start);
    }

    #[test]
    fn a_pause_too_long_for_the_clock_ends_now_rather_than_overflowing() {
        let now = SystemTime::UNIX_EPOCH;
        let paused = Paused::from(now, Duration::MAX);
        assert_eq!(paused.until, now);
        assert_eq!(paused.remaining, Duration::MAX);
        assert_eq!(
            Paused::from(now, secs(5)).until,
            SystemTime::UNIX_EPOCH + secs(5)
        );
    }
}
