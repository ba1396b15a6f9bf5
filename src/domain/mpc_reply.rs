//! What an MPC answer means: the one reading of a call's result (an
//! answer, or its absence) into what to remember for the label, how
//! `upstream_requests_total` counts it and what the breaker makes of it.
//! The HTTP client that makes the call lives in `upstream`; the dedup
//! policy, the breaker and the pause read its result here.
//!
//! Whether a failed call may have reached the MPC decides everything
//! downstream (remembered or not, retried or not), so the reading errs
//! towards "it may have". An MPC that asks to be left alone (429, or 503
//! with `Retry-After`) said nothing about the label: that is never
//! remembered for it.

use std::time::{Duration, SystemTime};

use crate::domain::outcome::{CallResult, MpcAnswer, Outcome, Uncertainty};

/// A definite answer from the MPC about the label.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 2xx: the MPC accepted the request and emails the code.
    Accepted(MpcAnswer),
    /// 4xx (but 408 and 429): the MPC refused the label; nothing was sent.
    Rejected(MpcAnswer),
}

/// Why the MPC gave no definite answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UpstreamFailure {
    /// 5xx: the MPC failed; nothing was sent.
    #[error("the MPC answered {}", .0.status)]
    ServerError(MpcAnswer),
    /// 408: the MPC gave up reading the request; nothing was sent.
    #[error("the MPC answered {}: it did not read the request in time", .0.status)]
    NotRead(MpcAnswer),
    /// 429, or 503 with `Retry-After`: the MPC asked the gateway to slow
    /// down; nothing was sent.
    #[error("the MPC asked the gateway to slow down (it answered {})", .0.answer.status)]
    Throttled(Throttle),
    /// A status that is neither success nor a client or server error (1xx,
    /// 3xx): the MPC read the request and may have acted on it.
    #[error("the MPC answered with unexpected status {}", .0.status)]
    UnexpectedStatus(MpcAnswer),
    /// No answer within `upstream.timeout`; the MPC may have acted.
    #[error("the MPC did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection could be made; nothing was sent.
    #[error("could not connect to the MPC: {0}")]
    NotConnected(String),
    /// The connection failed after the request may have been sent.
    #[error("the connection to the MPC failed mid-request: {0}")]
    ConnectionLost(String),
}

impl UpstreamFailure {
    /// The MPC's answer, when it gave one.
    pub fn answer(&self) -> Option<&MpcAnswer> {
        match self {
            Self::ServerError(answer) | Self::NotRead(answer) | Self::UnexpectedStatus(answer) => {
                Some(answer)
            }
            Self::Throttled(throttle) => Some(&throttle.answer),
            Self::Timeout(_) | Self::NotConnected(_) | Self::ConnectionLost(_) => None,
        }
    }
}

/// The MPC's request to be left alone: it did not act on the call, and
/// said nothing about the label.
#[derive(Clone, Debug, PartialEq)]
pub struct Throttle {
    /// The MPC's answer (429, or 503).
    pub answer: MpcAnswer,
    /// When to call again: as the MPC's `Retry-After` said (`None` when it
    /// was absent or unreadable), or, once [obeyed](Throttle::obeyed), the
    /// end of the gateway's pause.
    pub retry_after: Option<RetryAfter>,
}

impl Throttle {
    /// The same request as the gateway obeys it: its `retry_after` becomes
    /// `until`, the end of the gateway's pause (capped by
    /// `upstream.max_pause`, or later when a longer pause was under way).
    pub fn obeyed(self, until: SystemTime) -> Self {
        Self {
            retry_after: Some(RetryAfter::At(until)),
            ..self
        }
    }
}

/// When the MPC asked to be called again: its `Retry-After` header
/// (RFC 9110, section 10.2.3), in either form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// A delay from the answer (delta-seconds).
    Delay(Duration),
    /// A point in time (an HTTP-date).
    At(SystemTime),
}

impl RetryAfter {
    /// Reads a `Retry-After` value; `None` for anything that is neither
    /// form (garbage, a negative or fractional number, nothing at all).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
            // Too many digits for a u64 is still a delay, a very long one.
            let seconds = value.parse().unwrap_or(u64::MAX);
            return Some(Self::Delay(Duration::from_secs(seconds)));
        }
        httpdate::parse_http_date(value).ok().map(Self::At)
    }

    /// How long from `now` it asks to wait: zero for a time already past.
    pub fn wait_from(&self, now: SystemTime) -> Duration {
        match self {
            Self::Delay(delay) => *delay,
            Self::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }
}

/// What the MPC made of one call, or what became of it.
pub type MpcResult = Result<Reply, UpstreamFailure>;

/// What a call says of the MPC's health, as the circuit breaker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The MPC answered about the label (2xx, 4xx): the count starts again.
    Answering,
    /// The MPC failed, did not read the request, or could not be used.
    Failing,
    /// The MPC asked to be left alone: neither a failure nor an answer
    /// (the pause, not the breaker, stops forwarding).
    Throttled,
}

/// One MPC call read once, for everything that depends on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// What to remember for the label; `None` when certainly nothing was
    /// sent, so that the next request tries again.
    pub outcome: Option<Outcome>,
    /// How the call ended, for `upstream_requests_total`.
    pub result: CallResult,
    /// What the breaker counts.
    pub health: Health,
}

/// The one classification of an MPC call's result.
pub fn read(result: &MpcResult) -> Reading {
    let uncertain = |reason| Some(Outcome::Uncertain { reason });
    let (outcome, result, health) = match result {
        Ok(Reply::Accepted(upstream)) => (
            Some(Outcome::Sent {
                upstream: upstream.clone(),
            }),
            CallResult::Accepted,
            Health::Answering,
        ),
        Ok(Reply::Rejected(upstream)) => (
            Some(Outcome::Rejected {
                upstream: upstream.clone(),
            }),
            CallResult::Rejected,
            Health::Answering,
        ),
        Err(UpstreamFailure::ServerError(_)) => (None, CallResult::ServerError, Health::Failing),
        // Counted by its status class, failing like a 5xx: the request was
        // not read, so it says nothing about the label either.
        Err(UpstreamFailure::NotRead(_)) => (None, CallResult::Rejected, Health::Failing),
        Err(UpstreamFailure::Throttled(_)) => (None, CallResult::Throttled, Health::Throttled),
        // A 1xx or 3xx answer means the MPC read the request, as a lost
        // connection may: either could have sent an email.
        Err(UpstreamFailure::UnexpectedStatus(_)) => (
            uncertain(Uncertainty::ConnectionLost),
            CallResult::OtherStatus,
            Health::Failing,
        ),
        Err(UpstreamFailure::Timeout(_)) => (
            uncertain(Uncertainty::Timeout),
            CallResult::Timeout,
            Health::Failing,
        ),
        Err(UpstreamFailure::NotConnected(_)) => (None, CallResult::ConnectError, Health::Failing),
        Err(UpstreamFailure::ConnectionLost(_)) => (
            uncertain(Uncertainty::ConnectionLost),
            CallResult::ConnectionLost,
            Health::Failing,
        ),
    };
    Reading {
        outcome,
        result,
        health,
    }
}

/// Sorts an answer by its status, and for a 503 by whether it carried a
/// readable `Retry-After`: any 2xx is acceptance, whatever the body.
pub fn classify(answer: MpcAnswer, retry_after: Option<RetryAfter>) -> MpcResult {
    match (answer.status, retry_after) {
        (429, retry_after) | (503, retry_after @ Some(_)) => {
            Err(UpstreamFailure::Throttled(Throttle {
                answer,
                retry_after,
            }))
        }
        (408, _) => Err(UpstreamFailure::NotRead(answer)),
        (200..=299, _) => Ok(Reply::Accepted(answer)),
        (400..=499, _) => Ok(Reply::Rejected(answer)),
        (500..=599, _) => Err(UpstreamFailure::ServerError(answer)),
        _ => Err(UpstreamFailure::UnexpectedStatus(answer)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::*;

    fn answer(status: u16) -> MpcAnswer {
        MpcAnswer { status, body: None }
    }

    fn delay(seconds: u64) -> Option<RetryAfter> {
        Some(RetryAfter::Delay(Duration::from_secs(seconds)))
    }

    /// The variant a status (and `Retry-After`) is sorted into.
    fn sorted(status: u16, retry_after: Option<RetryAfter>) -> &'static str {
        match classify(answer(status), retry_after) {
            Ok(Reply::Accepted(_)) => "accepted",
            Ok(Reply::Rejected(_)) => "rejected",
            Err(UpstreamFailure::ServerError(_)) => "server_error",
            Err(UpstreamFailure::NotRead(_)) => "not_read",
            Err(UpstreamFailure::Throttled(_)) => "throttled",
            Err(UpstreamFailure::UnexpectedStatus(_)) => "unexpected",
            Err(other) => panic!("an answer read as {other:?}"),
        }
    }

    #[test]
    fn each_status_is_sorted_once_retry_after_deciding_only_for_a_503() {
        let date = Some(RetryAfter::At(SystemTime::UNIX_EPOCH));
        let cases = [
            (200, None, "accepted"),
            (202, delay(5), "accepted"),
            (299, None, "accepted"),
            (400, None, "rejected"),
            (404, delay(5), "rejected"),
            (409, None, "rejected"),
            (499, None, "rejected"),
            (408, None, "not_read"),
            (408, delay(5), "not_read"),
            (429, None, "throttled"),
            (429, delay(120), "throttled"),
            (429, date, "throttled"),
            (503, delay(120), "throttled"),
            (503, date, "throttled"),
            (503, None, "server_error"),
            (500, delay(5), "server_error"),
            (502, None, "server_error"),
            (599, None, "server_error"),
            (100, None, "unexpected"),
            (302, delay(5), "unexpected"),
            (600, None, "unexpected"),
        ];
        for (status, retry_after, expected) in cases {
            assert_eq!(
                sorted(status, retry_after),
                expected,
                "{status} {retry_after:?}"
            );
        }
    }

    #[test]
    fn a_throttle_keeps_what_the_mpc_asked_until_it_is_obeyed() {
        let Err(UpstreamFailure::Throttled(throttle)) = classify(answer(429), delay(120)) else {
            panic!("a 429 is a throttle")
        };
        assert_eq!(throttle.answer, answer(429));
        assert_eq!(throttle.retry_after, delay(120));
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let obeyed = throttle.obeyed(until);
        assert_eq!(obeyed.retry_after, Some(RetryAfter::At(until)));
        assert_eq!(obeyed.answer, answer(429), "the MPC's answer is kept");
    }

    #[test]
    fn only_timeouts_lost_connections_and_odd_statuses_may_have_sent() {
        assert!(may_have_sent(UpstreamFailure::Timeout(
            Duration::from_secs(1)
        )));
        assert!(may_have_sent(UpstreamFailure::ConnectionLost(
            "reset".into()
        )));
        assert!(may_have_sent(UpstreamFailure::UnexpectedStatus(answer(
            302
        ))));
        assert!(may_have_sent(UpstreamFailure::UnexpectedStatus(answer(
            100
        ))));
        assert!(!may_have_sent(UpstreamFailure::NotConnected(
            "refused".into()
        )));
        assert!(!may_have_sent(UpstreamFailure::ServerError(answer(500))));
        assert!(!may_have_sent(UpstreamFailure::NotRead(answer(408))));
        assert!(!may_have_sent(UpstreamFailure::Throttled(Throttle {
            answer: answer(429),
            retry_after: None,
        })));
    }

    /// Whether the failure is remembered as uncertain rather than forgotten.
    fn may_have_sent(failure: UpstreamFailure) -> bool {
        read(&Err(failure)).outcome.is_some()
    }

    #[test]
    fn each_result_is_read_into_its_outcome_metric_label_and_health() {
        let throttled = |status| {
            Err(UpstreamFailure::Throttled(Throttle {
                answer: answer(status),
                retry_after: delay(3),
            }))
        };
        let cases = [
            (
                Ok(Reply::Accepted(answer(200))),
                "sent",
                "2xx",
                Health::Answering,
            ),
            (
                Ok(Reply::Rejected(answer(404))),
                "rejected",
                "4xx",
                Health::Answering,
            ),
            (
                Err(UpstreamFailure::ServerError(answer(500))),
                "none",
                "5xx",
                Health::Failing,
            ),
            (
                Err(UpstreamFailure::NotRead(answer(408))),
                "none",
                "4xx",
                Health::Failing,
            ),
            (throttled(429), "none", "throttled", Health::Throttled),
            (throttled(503), "none", "throttled", Health::Throttled),
            (
                Err(UpstreamFailure::UnexpectedStatus(answer(302))),
                "uncertain",
                "other_status",
                Health::Failing,
            ),
            (
                Err(UpstreamFailure::Timeout(Duration::from_secs(1))),
                "uncertain",
                "timeout",
                Health::Failing,
            ),
            (
                Err(UpstreamFailure::NotConnected("refused".into())),
                "none",
                "connect_error",
                Health::Failing,
            ),
            (
                Err(UpstreamFailure::ConnectionLost("reset".into())),
                "uncertain",
                "connection_lost",
                Health::Failing,
            ),
        ];
        for (result, outcome, label, health) in cases {
            let reading = read(&result);
            assert_eq!(
                reading.outcome.as_ref().map_or("none", Outcome::as_str),
                outcome,
                "{result:?}"
            );
            assert_eq!(reading.result.as_str(), label, "{result:?}");
            assert_eq!(reading.health, health, "{result:?}");
        }
        let timeout = read(&Err(UpstreamFailure::Timeout(Duration::from_secs(1))));
        assert_eq!(
            timeout.outcome,
            Some(Outcome::Uncertain {
                reason: Uncertainty::Timeout
            })
        );
        let lost = read(&Err(UpstreamFailure::ConnectionLost("reset".into())));
        assert_eq!(
            lost.outcome,
            Some(Outcome::Uncertain {
                reason: Uncertainty::ConnectionLost
            })
        );
    }

    #[test]
    fn retry_after_is_read_in_both_forms() {
        let at = |seconds| {
            Some(RetryAfter::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
            ))
        };
        let cases = [
            ("120", delay(120)),
            ("0", delay(0)),
            (" 5\t", delay(5)),
            ("007", delay(7)),
            ("99999999999999999999999", delay(u64::MAX)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", at(784_111_777)),
            ("Sun Nov  6 08:49:37 1994", at(784_111_777)),
        ];
        for (text, expected) in cases {
            assert_eq!(RetryAfter::parse(text), expected, "{text:?}");
        }
    }

    #[test]
    fn garbage_negative_and_fractional_retry_afters_are_absent() {
        for text in [
            "",
            " ",
            "-5",
            "+5",
            "1.5",
            "5s",
            "soon",
            "0x10",
            "1 2",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT trailing",
        ] {
            assert_eq!(RetryAfter::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_retry_after_asks_for_a_wait_from_now_and_none_for_a_time_past() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            RetryAfter::Delay(Duration::from_secs(5)).wait_from(now),
            Duration::from_secs(5)
        );
        let later = RetryAfter::At(now + Duration::from_millis(2_500));
        assert_eq!(later.wait_from(now), Duration::from_millis(2_500));
        let past = RetryAfter::At(now - Duration::from_secs(1));
        assert_eq!(past.wait_from(now), Duration::ZERO);
        assert_eq!(RetryAfter::At(now).wait_from(now), Duration::ZERO);
    }

    #[test]
    fn answers_are_equal_by_status_and_body_text() {
        let body = |status, text: &str| MpcAnswer {
            status,
            body: Some(Arc::from(RawValue::from_string(text.to_owned()).unwrap())),
        };
        assert_eq!(body(200, "{}"), body(200, "{}"));
        assert_ne!(body(200, "{}"), body(201, "{}"), "another status");
        assert_ne!(body(200, "{}"), body(200, "[]"), "another body");
        assert_ne!(body(200, "{}"), answer(200), "a body and none");
        assert_eq!(answer(404), answer(404));
    }

    #[test]
    fn only_failures_with_an_mpc_answer_carry_it() {
        assert_eq!(
            UpstreamFailure::ServerError(answer(503)).answer(),
            Some(&answer(503))
        );
        assert_eq!(
            UpstreamFailure::NotRead(answer(408)).answer(),
            Some(&answer(408))
        );
        let throttle = Throttle {
            answer: answer(429),
            retry_after: None,
        };
        assert_eq!(
            UpstreamFailure::Throttled(throttle).answer(),
            Some(&answer(429))
        );
        assert_eq!(
            UpstreamFailure::UnexpectedStatus(answer(302)).answer(),
            Some(&answer(302))
        );
        for failure in [
            UpstreamFailure::Timeout(Duration::from_secs(1)),
            UpstreamFailure::NotConnected("refused".into()),
            UpstreamFailure::ConnectionLost("reset".into()),
        ] {
            assert_eq!(failure.answer(), None, "{failure:?}");
        }
    }

    #[test]
    fn the_log_line_of_each_answer_names_its_status() {
        let throttled = UpstreamFailure::Throttled(Throttle {
            answer: answer(429),
            retry_after: None,
        });
        assert_eq!(
            throttled.to_string(),
            "the MPC asked the gateway to slow down (it answered 429)"
        );
        assert_eq!(
            UpstreamFailure::NotRead(answer(408)).to_string(),
            "the MPC answered 408: it did not read the request in time"
        );
    }

    /// Any status, the few that decide most often.
    fn status() -> impl Strategy<Value = u16> {
        prop_oneof![
            prop::sample::select(vec![200, 404, 408, 429, 500, 503]),
            100_u16..600,
            any::<u16>(),
        ]
    }

    /// A `Retry-After` value of any shape: either form, near misses, or anything.
    fn retry_after_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|seconds| seconds.to_string()),
            any::<i64>().prop_map(|seconds| seconds.to_string()),
            "[0-9]{1,40}",
            (0_u64..253_402_300_799).prop_map(|seconds| {
                httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
            }),
            ".{0,40}",
        ]
    }

    proptest! {
        /// Whatever the MPC answers (status, `Retry-After`, body), the
        /// reading never panics, and a throttled answer (a 429, or a 503
        /// with a readable `Retry-After`) is never remembered for the label.
        #[test]
        fn no_answer_panics_and_no_throttled_answer_is_remembered(
            status in status(),
            header in proptest::option::of(retry_after_text()),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<u64>(),
        ) {
            let retry_after = header.as_deref().and_then(RetryAfter::parse);
            let body = serde_json::from_slice::<Box<RawValue>>(&body).ok().map(Arc::from);
            let throttled = status == 429 || (status == 503 && retry_after.is_some());
            let result = classify(MpcAnswer { status, body }, retry_after);
            let reading = read(&result);
            prop_assert_eq!(reading.result == CallResult::Throttled, throttled);
            prop_assert_eq!(status == 408, matches!(result, Err(UpstreamFailure::NotRead(_))));
            prop_assert_eq!(reading.health == Health::Throttled, throttled);
            if throttled {
                prop_assert!(reading.outcome.is_none(), "a throttled answer is not remembered");
            }
            if let Some(retry_after) = retry_after {
                let now = SystemTime::UNIX_EPOCH + Duration::from_nanos(now);
                let _ = retry_after.wait_from(now);
            }
        }
    }
}
