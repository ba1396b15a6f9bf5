//! The MPC client: one awc client per worker, timeouts, a retry only for
//! connections never established, and the sorting of awc's errors into
//! the domain's [`UpstreamFailure`]s (what each means is read in
//! `domain::mpc_reply`). The circuit breaker is in [`breaker`].
//!
//! Whether a failed call may have reached the MPC decides everything
//! downstream (remembered or not, retried or not), so the sorting errs
//! towards "it may have": only an error that awc can raise before the
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
use crate::domain::mpc_reply::{Reply, RetryAfter, UpstreamFailure, classify, read};
use crate::domain::outcome::MpcAnswer;
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
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(RetryAfter::parse);
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
        classify(MpcAnswer { status, body }, retry_after)
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
