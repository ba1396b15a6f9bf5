//! The MPC client: one awc client per worker, timeouts, a retry only for
//! connections never established, and the classification of every answer
//! (or its absence). The circuit breaker is in [`breaker`].
//!
//! Whether a failed call may have reached the MPC decides everything
//! downstream (remembered or not, retried or not), so the classification
//! errs towards "it may have": only an error that awc can raise before the
//! first byte of the request is written counts as never connected.

pub mod breaker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use awc::error::{ConnectError, SendRequestError};
use serde::Serialize;
use serde_json::value::RawValue;

use rand::Rng;

use crate::config::UpstreamSettings;
use crate::domain::label::Label;
pub use crate::domain::outcome::MpcAnswer;
use crate::domain::outcome::{CallResult, Outcome, Uncertainty};
use crate::observe::metrics::Metrics;

/// Largest MPC body kept (SPEC: 4 KiB); the real answers are a few hundred
/// bytes, and every remembered outcome holds one.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// Attempts for a connection that could not be established (nothing sent yet).
const CONNECT_ATTEMPTS: u32 = 3;

/// First pause before reconnecting; doubled each time, plus jitter.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// Upper bound (exclusive) of the jitter added to each pause, in milliseconds.
const JITTER_MS: u64 = 50;

/// The pause after failed attempt `attempt` (from 1), with `jitter_ms` added.
fn backoff(attempt: u32, jitter_ms: u64) -> Duration {
    CONNECT_BACKOFF * 2_u32.pow(attempt - 1) + Duration::from_millis(jitter_ms)
}

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

/// TLS settings shared by every worker's client: webpki roots, ring crypto.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Calls the MPC's retrieve endpoint. Not `Send`: build one per worker.
pub struct MpcClient {
    http: awc::Client,
    url: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Serialize)]
struct RetrieveBody<'a> {
    label: &'a str,
}

impl MpcClient {
    /// Builds a client from settings and the shared TLS configuration.
    pub fn new(
        settings: &UpstreamSettings,
        tls: Arc<rustls::ClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let connector = awc::Connector::new()
            .timeout(settings.connect_timeout)
            .handshake_timeout(settings.connect_timeout)
            .rustls_0_23(tls);
        // awc's own deadline sits past ours so that ours decides the classification.
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(settings.timeout + Duration::from_secs(1))
            .disable_redirects()
            .no_default_headers()
            .add_default_header((header::USER_AGENT, settings.user_agent()))
            .finish();
        Self {
            http,
            url: settings.retrieve_url().to_string(),
            timeout: settings.timeout,
            metrics,
        }
    }

    /// Asks the MPC to email the action code for `label`. Only a connection
    /// that was never established is tried again: anything later might have
    /// reached the MPC and a repeat could send a second email.
    pub async fn retrieve(&self, label: &Label) -> Result<Reply, UpstreamFailure> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.timeout);
        let mut attempt = 1;
        let result = loop {
            let call = self.metrics.upstream_call();
            let result = self.attempt(label, deadline).await;
            call.finish(read(&result).result);
            let pause = backoff(attempt, rand::rng().random_range(0..JITTER_MS));
            match result {
                Err(UpstreamFailure::NotConnected(ref reason))
                    if attempt < CONNECT_ATTEMPTS
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::info!(attempt, %reason, "no connection to the MPC; trying again");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                result => break result,
            }
        };
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            attempts = attempt,
            result = %describe(&result),
            "MPC call finished"
        );
        result
    }

    async fn attempt(
        &self,
        label: &Label,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, UpstreamFailure> {
        let request = self
            .http
            .post(&self.url)
            .insert_header((header::ACCEPT, "application/json"))
            .send_json(&RetrieveBody {
                label: label.as_str(),
            });
        let mut response = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => return Err(UpstreamFailure::Timeout(self.timeout)),
            Ok(Err(error)) => return Err(classify_send_error(error, self.timeout)),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let body = match tokio::time::timeout_at(deadline, response.body().limit(MAX_ANSWER_BYTES))
            .await
        {
            Ok(Ok(bytes)) => serde_json::from_slice::<Box<RawValue>>(&bytes)
                .ok()
                .map(Arc::from),
            Ok(Err(error)) => {
                tracing::warn!(status, %error, "unreadable MPC answer body");
                None
            }
            Err(_) => {
                tracing::warn!(status, "MPC answer body not complete in time");
                None
            }
        };
        classify_status(MpcAnswer { status, body })
    }
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

fn classify_send_error(error: SendRequestError, timeout: Duration) -> UpstreamFailure {
    match error {
        SendRequestError::Timeout => UpstreamFailure::Timeout(timeout),
        SendRequestError::Url(error) => UpstreamFailure::NotConnected(error.to_string()),
        SendRequestError::Connect(error) => match error {
            // Raised while resolving, connecting, or in the TLS or HTTP/2
            // handshake: no byte of the request has been written yet.
            ConnectError::Timeout => {
                UpstreamFailure::NotConnected("connection timed out".to_owned())
            }
            ConnectError::Resolver(_)
            | ConnectError::NoRecords
            | ConnectError::Unresolved
            | ConnectError::SslIsNotSupported
            | ConnectError::H2(_)
            | ConnectError::Io(_) => UpstreamFailure::NotConnected(error.to_string()),
            // `Disconnected` is what awc reports when the MPC closes the
            // connection after reading the request; like any variant added
            // later, it may follow a request the MPC has acted on.
            lost => UpstreamFailure::ConnectionLost(lost.to_string()),
        },
        // Writing the request, reading the answer, or anything unforeseen.
        lost => UpstreamFailure::ConnectionLost(lost.to_string()),
    }
}

fn describe(result: &Result<Reply, UpstreamFailure>) -> String {
    match result {
        Ok(Reply::Accepted(answer)) => format!("accepted ({})", answer.status),
        Ok(Reply::Rejected(answer)) => format!("rejected ({})", answer.status),
        Err(failure) => failure.to_string(),
    }
}

#[cfg(test)]
mod tests {
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

    fn classified(error: SendRequestError) -> UpstreamFailure {
        classify_send_error(error, Duration::from_secs(5))
    }

    #[test]
    fn errors_before_the_request_is_written_are_not_connected() {
        let before_any_byte = [
            SendRequestError::Connect(ConnectError::Timeout),
            SendRequestError::Connect(ConnectError::NoRecords),
            SendRequestError::Connect(ConnectError::Unresolved),
            SendRequestError::Connect(ConnectError::SslIsNotSupported),
            SendRequestError::Connect(ConnectError::Resolver("no such host".into())),
            SendRequestError::Connect(ConnectError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
            SendRequestError::Url(awc::error::InvalidUrl::MissingHost),
        ];
        for error in before_any_byte {
            let shown = error.to_string();
            assert!(
                matches!(classified(error), UpstreamFailure::NotConnected(_)),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_connection_that_ends_after_the_request_is_lost_never_unconnected() {
        let after_writing = [
            // What awc says when the MPC reads the request and closes.
            SendRequestError::Connect(ConnectError::Disconnected),
            SendRequestError::Send(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            SendRequestError::Send(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            SendRequestError::Response(actix_web::error::ParseError::Incomplete),
            SendRequestError::Body("the body stream failed".into()),
        ];
        for error in after_writing {
            let shown = error.to_string();
            let failure = classified(error);
            assert!(
                matches!(failure, UpstreamFailure::ConnectionLost(_)),
                "{shown}: {failure:?}"
            );
            assert!(read(&Err(failure)).outcome.is_some());
        }
        assert_eq!(
            classified(SendRequestError::Timeout),
            UpstreamFailure::Timeout(Duration::from_secs(5))
        );
    }

    #[test]
    fn each_reconnect_waits_twice_as_long_plus_its_jitter() {
        assert_eq!(backoff(1, 0), Duration::from_millis(50));
        assert_eq!(backoff(2, 0), Duration::from_millis(100));
        assert_eq!(backoff(3, 7), Duration::from_millis(207));
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

    #[test]
    fn the_log_line_says_how_a_call_ended() {
        assert_eq!(
            describe(&Ok(Reply::Accepted(answer(202)))),
            "accepted (202)"
        );
        assert_eq!(
            describe(&Ok(Reply::Rejected(answer(404)))),
            "rejected (404)"
        );
        assert_eq!(
            describe(&Err(UpstreamFailure::ServerError(answer(503)))),
            "the MPC answered 503"
        );
    }

    #[test]
    fn tls_config_builds_with_ring() {
        assert!(tls_config().crypto_provider().cipher_suites.len() > 1);
    }
}
