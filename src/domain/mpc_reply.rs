//! What an MPC answer means: the one reading of a call's result (an
//! answer, or its absence) into what to remember for the label and how
//! `upstream_requests_total` counts it. The HTTP client that makes the call
//! lives in `upstream`; the dedup policy and the breaker read its result here.
//!
//! Whether a failed call may have reached the MPC decides everything
//! downstream (remembered or not, retried or not), so the reading errs
//! towards "it may have".

use std::time::Duration;

use crate::domain::outcome::{CallResult, MpcAnswer, Outcome, Uncertainty};

/// A definite answer from the MPC about the label.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 2xx: the MPC accepted the request and emails the code.
    Accepted(MpcAnswer),
    /// 4xx: the MPC refused the label; nothing was sent.
    Rejected(MpcAnswer),
}

/// Why the MPC gave no definite answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UpstreamFailure {
    /// 5xx: the MPC failed; nothing was sent.
    #[error("the MPC answered {}", .0.status)]
    ServerError(MpcAnswer),
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
            Self::ServerError(answer) | Self::UnexpectedStatus(answer) => Some(answer),
            _ => None,
        }
    }
}

/// What the MPC made of one call, or what became of it.
pub type MpcResult = Result<Reply, UpstreamFailure>;

/// One MPC call read once, for everything that depends on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// What to remember for the label; `None` when certainly nothing was
    /// sent, so that the next request tries again.
    pub outcome: Option<Outcome>,
    /// How the call ended, for `upstream_requests_total`.
    pub result: CallResult,
}

/// The one classification of an MPC call's result.
pub fn read(result: &MpcResult) -> Reading {
    let uncertain = |reason| Some(Outcome::Uncertain { reason });
    let (outcome, result) = match result {
        Ok(Reply::Accepted(upstream)) => (
            Some(Outcome::Sent {
                upstream: upstream.clone(),
            }),
            CallResult::Accepted,
        ),
        Ok(Reply::Rejected(upstream)) => (
            Some(Outcome::Rejected {
                upstream: upstream.clone(),
            }),
            CallResult::Rejected,
        ),
        Err(UpstreamFailure::ServerError(_)) => (None, CallResult::ServerError),
        // A 1xx or 3xx answer means the MPC read the request, as a lost
        // connection may: either could have sent an email.
        Err(UpstreamFailure::UnexpectedStatus(_)) => (
            uncertain(Uncertainty::ConnectionLost),
            CallResult::OtherStatus,
        ),
        Err(UpstreamFailure::Timeout(_)) => (uncertain(Uncertainty::Timeout), CallResult::Timeout),
        Err(UpstreamFailure::NotConnected(_)) => (None, CallResult::ConnectError),
        Err(UpstreamFailure::ConnectionLost(_)) => (
            uncertain(Uncertainty::ConnectionLost),
            CallResult::ConnectionLost,
        ),
    };
    Reading { outcome, result }
}

/// Sorts an answer by its status: any 2xx is acceptance, whatever the body.
pub fn classify_status(answer: MpcAnswer) -> Result<Reply, UpstreamFailure> {
    match answer.status {
        200..=299 => Ok(Reply::Accepted(answer)),
        400..=499 => Ok(Reply::Rejected(answer)),
        500..=599 => Err(UpstreamFailure::ServerError(answer)),
        _ => Err(UpstreamFailure::UnexpectedStatus(answer)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn answer(status: u16) -> MpcAnswer {
        MpcAnswer { status, body: None }
    }

    #[test]
    fn any_2xx_is_acceptance() {
        for status in [200, 201, 202, 204, 299] {
            assert!(matches!(
                classify_status(answer(status)),
                Ok(Reply::Accepted(_))
            ));
        }
    }

    #[test]
    fn client_errors_are_rejections_and_server_errors_failures() {
        assert!(matches!(
            classify_status(answer(404)),
            Ok(Reply::Rejected(_))
        ));
        assert!(matches!(
            classify_status(answer(400)),
            Ok(Reply::Rejected(_))
        ));
        assert!(matches!(
            classify_status(answer(503)),
            Err(UpstreamFailure::ServerError(_))
        ));
        assert!(matches!(
            classify_status(answer(302)),
            Err(UpstreamFailure::UnexpectedStatus(_))
        ));
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
    }

    /// Whether the failure is remembered as uncertain rather than forgotten.
    fn may_have_sent(failure: UpstreamFailure) -> bool {
        read(&Err(failure)).outcome.is_some()
    }

    #[test]
    fn each_result_is_read_into_its_outcome_and_metric_label() {
        let cases = [
            (Ok(Reply::Accepted(answer(200))), "sent", "2xx"),
            (Ok(Reply::Rejected(answer(404))), "rejected", "4xx"),
            (
                Err(UpstreamFailure::ServerError(answer(500))),
                "none",
                "5xx",
            ),
            (
                Err(UpstreamFailure::UnexpectedStatus(answer(302))),
                "uncertain",
                "other_status",
            ),
            (
                Err(UpstreamFailure::Timeout(Duration::from_secs(1))),
                "uncertain",
                "timeout",
            ),
            (
                Err(UpstreamFailure::NotConnected("refused".into())),
                "none",
                "connect_error",
            ),
            (
                Err(UpstreamFailure::ConnectionLost("reset".into())),
                "uncertain",
                "connection_lost",
            ),
        ];
        for (result, outcome, label) in cases {
            let reading = read(&result);
            assert_eq!(
                reading.outcome.as_ref().map_or("none", Outcome::as_str),
                outcome
            );
            assert_eq!(reading.result.as_str(), label);
        }
        let timeout = read(&Err(UpstreamFailure::Timeout(Duration::from_secs(1))));
        assert_eq!(
            timeout.outcome,
            Some(Outcome::Uncertain {
                reason: Uncertainty::Timeout
            })
        );
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
}
