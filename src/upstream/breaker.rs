//! The circuit breaker towards the MPC: after `upstream.breaker_failures`
//! consecutive failures it opens for `upstream.breaker_open_for`, during
//! which nothing is sent; then one probe goes through, and its result
//! closes the breaker or opens it again. An MPC that asks to be left alone
//! (throttled) is neither failing nor well: the breaker does not count it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::Clock;

use crate::domain::mpc_reply::{Health, MpcResult, read};

/// What the breaker lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe may go through (or is under way).
    HalfOpen,
    /// Nothing goes through.
    Open,
}

impl BreakerState {
    /// The `circuit_breaker_state` gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    /// The name shown in `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Duration },
    HalfOpen { probing: bool },
}

/// Counts consecutive MPC failures and stops calling when there are too many.
pub struct Breaker {
    clock: Arc<dyn Clock>,
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// How long a caller refused while a probe is under way should wait.
const PROBE_WAIT: Duration = Duration::from_secs(1);

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures.
    pub fn new(clock: Arc<dyn Clock>, threshold: u32, open_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            clock,
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks to call the MPC: a permit, or how long until the breaker may let one through.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Duration> {
        let now = self.clock.now();
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return Err(until - now),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                tracing::info!("circuit breaker half-open: probing the MPC");
                true
            }
            State::HalfOpen { probing: true } => return Err(PROBE_WAIT),
        };
        Ok(Permit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    /// The state as callers would find it now.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if self.clock.now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn record(&self, success: bool, probe: bool) {
        let now = self.clock.now();
        let mut state = self.lock();
        if success {
            if !matches!(*state, State::Closed { failures: 0 }) {
                tracing::info!("circuit breaker closed: the MPC answers again");
            }
            *state = State::Closed { failures: 0 };
            return;
        }
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            _ => self.threshold,
        };
        if probe || failures >= self.threshold {
            tracing::warn!(
                failures,
                open_for = ?self.open_for,
                "circuit breaker open: not calling the MPC"
            );
            *state = State::Open {
                until: now + self.open_for,
            };
        } else if let State::Closed { .. } = *state {
            *state = State::Closed { failures };
        }
    }

    fn release_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { probing: true } = *state {
            *state = State::HalfOpen { probing: false };
        }
    }
}

/// Leave to make one MPC call; its result must be recorded.
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// Records the call: any answer about the label (2xx, 4xx) is a
    /// success, a throttled one nothing at all, anything else a failure.
    pub fn record(mut self, result: &MpcResult) {
        let success = match read(result).health {
            Health::Answering => true,
            Health::Failing => false,
            // Neither counted nor reset: the pause already stops forwarding.
            // A probe answered so is released (on drop): the MPC gave no
            // word on its health, so the breaker stays half-open and the
            // first request forwarded after the pause probes again, rather
            // than closing on a word it did not give or opening for
            // `breaker_open_for` on top of the MPC's own pause.
            Health::Throttled => return,
        };
        self.settled = true;
        self.breaker.record(success, self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Refused after admission (quota, budget): let another request probe.
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::domain::mpc_reply::{Reply, Throttle, UpstreamFailure};
    use crate::domain::outcome::MpcAnswer;

    fn answer(status: u16) -> MpcAnswer {
        MpcAnswer { status, body: None }
    }

    fn ok() -> Result<Reply, UpstreamFailure> {
        Ok(Reply::Accepted(answer(200)))
    }

    fn failed() -> Result<Reply, UpstreamFailure> {
        Err(UpstreamFailure::ServerError(answer(503)))
    }

    fn throttled() -> Result<Reply, UpstreamFailure> {
        Err(UpstreamFailure::Throttled(Throttle {
            answer: answer(429),
            retry_after: None,
        }))
    }

    fn breaker() -> (Arc<FakeClock>, Arc<Breaker>) {
        let clock = Arc::new(FakeClock::default());
        let breaker = Breaker::new(clock.clone(), 3, Duration::from_secs(30));
        (clock, breaker)
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_at_once() {
        let (clock, breaker) = breaker();
        for _ in 0..2 {
            breaker.admit().unwrap().record(&failed());
            assert_eq!(breaker.state(), BreakerState::Closed);
        }
        breaker.admit().unwrap().record(&failed());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit().err(), Some(Duration::from_secs(30)));
        clock.advance(Duration::from_secs(10));
        assert_eq!(breaker.admit().err(), Some(Duration::from_secs(20)));
    }

    #[test]
    fn any_answer_resets_the_count() {
        let (_clock, breaker) = breaker();
        for _ in 0..5 {
            breaker.admit().unwrap().record(&failed());
            breaker.admit().unwrap().record(&failed());
            breaker
                .admit()
                .unwrap()
                .record(&Ok(Reply::Rejected(answer(404))));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn one_probe_after_the_pause_closes_on_success() {
        let (clock, breaker) = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().record(&failed());
        }
        clock.advance(Duration::from_secs(30));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.admit().unwrap();
        assert_eq!(breaker.admit().err(), Some(PROBE_WAIT), "only one probe");
        probe.record(&ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let (clock, breaker) = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().record(&failed());
        }
        clock.advance(Duration::from_secs(30));
        breaker
            .admit()
            .unwrap()
            .record(&Err(UpstreamFailure::Timeout(Duration::from_secs(1))));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit().err(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn an_unused_probe_is_released() {
        let (clock, breaker) = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().record(&failed());
        }
        clock.advance(Duration::from_secs(30));
        drop(breaker.admit().unwrap());
        assert!(breaker.admit().is_ok(), "the next request may probe");
    }

    #[test]
    fn a_throttled_answer_neither_counts_nor_resets() {
        let (_clock, breaker) = breaker();
        breaker.admit().unwrap().record(&failed());
        breaker.admit().unwrap().record(&failed());
        for _ in 0..5 {
            breaker.admit().unwrap().record(&throttled());
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "not counted");
        breaker.admit().unwrap().record(&failed());
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "the two failures before still counted: not reset"
        );
    }

    #[test]
    fn a_408_counts_as_a_failure() {
        let (_clock, breaker) = breaker();
        for _ in 0..3 {
            breaker
                .admit()
                .unwrap()
                .record(&Err(UpstreamFailure::NotRead(answer(408))));
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn a_throttled_probe_leaves_the_breaker_half_open_for_the_next_probe() {
        let (clock, breaker) = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().record(&failed());
        }
        clock.advance(Duration::from_secs(30));
        breaker.admit().unwrap().record(&throttled());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.admit().expect("the next request probes");
        assert_eq!(
            breaker.admit().err(),
            Some(PROBE_WAIT),
            "one probe at a time"
        );
        probe.record(&ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn gauge_values() {
        assert_eq!(BreakerState::Closed.gauge(), 0);
        assert_eq!(BreakerState::HalfOpen.gauge(), 1);
        assert_eq!(BreakerState::Open.gauge(), 2);
    }
}
