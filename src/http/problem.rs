//! The one error type of the HTTP boundary, rendered once as RFC 9457
//! `application/problem+json`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use std::sync::LazyLock;
use std::time::Duration;

use crate::auth::AuthError;
use crate::domain::identity::Scope;
use crate::domain::label::{ACCEPTED_FORMATS, AcceptedFormat, LabelError};
use crate::domain::outcome::{MpcAnswer, RetrievalOutcome, Uncertainty};
use crate::pause::Paused;
use crate::quota::{Refusal, whole_seconds};
use crate::retrieval::{Refused, STORE_RETRY_AFTER};
use crate::store::StoreError;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything that can refuse a request, each with its SPEC'd status and type.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The body is not JSON or has no `label` string.
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    /// A batch body is not a JSON object with 1 or more label strings in `labels`.
    #[error("malformed batch: {0}")]
    MalformedBatch(String),
    /// A batch holds more labels than `server.max_batch_labels`.
    #[error("batch of more than {max_labels} labels")]
    BatchTooLarge {
        /// The configured cap.
        max_labels: usize,
    },
    /// The caller's API key lacks the scope the route needs.
    #[error("forbidden: the key lacks the scope {}", .required_scope.as_str())]
    Forbidden {
        /// The scope the route needs.
        required_scope: Scope,
    },
    /// A browser request from another origin (`Sec-Fetch-Site` or `Origin`).
    #[error("cross-origin request")]
    CrossOrigin,
    /// The body is larger than `server.max_body_bytes`.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured cap.
        limit: usize,
    },
    /// The body is not declared as JSON.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The label breaks the MPC's rules.
    #[error("invalid label: {error}")]
    InvalidLabel {
        /// The label as the caller sent it.
        label: String,
        /// The rule it broke.
        error: LabelError,
    },
    /// The caller could not be identified.
    #[error("unauthenticated: {0}")]
    Unauthenticated(AuthError),
    /// A per-user limit refused the request.
    #[error("quota exceeded: {}", .0.limit.as_str())]
    QuotaExceeded(Refusal),
    /// The circuit breaker is open: nothing is sent to the MPC for now.
    #[error("circuit open")]
    CircuitOpen {
        /// When the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The request's headers are larger than the gateway accepts.
    #[error("request headers too large")]
    HeadersTooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The request body did not arrive in time.
    #[error("request body timeout")]
    BodyTimeout,
    /// The gateway-wide MPC budget is spent.
    #[error("gateway busy")]
    GatewayBusy {
        /// When the budget admits again.
        retry_after: Duration,
    },
    /// The MPC asked the gateway to slow down: nothing is forwarded until
    /// the pause ends.
    #[error("paused at the MPC's request")]
    UpstreamThrottled(Paused),
    /// The shared store could not be used: the label could not be claimed.
    #[error("shared store unavailable")]
    StoreUnavailable {
        /// When to try again.
        retry_after: Duration,
    },
    /// The MPC answered 4xx.
    #[error("the MPC refused the label with status {}", .0.status)]
    UpstreamRejected(MpcAnswer),
    /// The MPC answered 5xx or something unusable, or could not be reached:
    /// certainly nothing was sent.
    #[error("upstream error: {0}")]
    UpstreamError(String),
    /// The MPC may or may not have acted (timeout, connection lost mid-request).
    #[error("uncertain upstream outcome: {reason:?}")]
    UpstreamUncertain {
        /// What went wrong.
        reason: Uncertainty,
        /// How long the label is held before it may be forwarded again.
        retry_after: Duration,
    },
    /// Nothing is remembered for a label (admin API).
    #[error("nothing remembered for {0}")]
    NotRemembered(String),
    /// The admin token is missing or wrong.
    #[error("admin token missing or wrong")]
    AdminUnauthorized,
    /// The admin listener faces the network and no admin token is set.
    #[error("admin routes closed: no admin token on a non-loopback listener")]
    AdminClosed,
    /// An answer that could not be written (none is expected).
    #[error("internal error: {0}")]
    Internal(String),
    /// No such route.
    #[error("not found: {0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed {
        /// Methods the route accepts.
        allow: &'static str,
    },
}

impl Problem {
    /// The problem's row in the contract: status, `type` URI and title.
    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        const BAD_GATEWAY: StatusCode = StatusCode::BAD_GATEWAY;
        const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
        match self {
            Self::MalformedRequest(_) | Self::MalformedBatch(_) => (
                StatusCode::BAD_REQUEST,
                "urn:mpc-gateway:malformed-request",
                "Malformed request",
            ),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:mpc-gateway:payload-too-large",
                "Payload too large",
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "urn:mpc-gateway:unsupported-media-type",
                "Unsupported media type",
            ),
            Self::InvalidLabel { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:mpc-gateway:invalid-label",
                "Invalid label",
            ),
            Self::BatchTooLarge { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:mpc-gateway:batch-too-large",
                "Too many labels in one batch",
            ),
            Self::Forbidden { .. } => (
                StatusCode::FORBIDDEN,
                "urn:mpc-gateway:forbidden",
                "Forbidden",
            ),
            Self::CrossOrigin => (
                StatusCode::FORBIDDEN,
                "urn:mpc-gateway:cross-origin-request",
                "Cross-origin request",
            ),
            Self::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "urn:mpc-gateway:unauthenticated",
                "Unauthenticated",
            ),
            Self::QuotaExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "urn:mpc-gateway:quota-exceeded",
                "Quota exceeded",
            ),
            Self::GatewayBusy { .. } => {
                (UNAVAILABLE, "urn:mpc-gateway:gateway-busy", "Gateway busy")
            }
            Self::CircuitOpen { .. } => (
                UNAVAILABLE,
                "urn:mpc-gateway:upstream-circuit-open",
                "The MPC is failing; calls are paused",
            ),
            Self::StoreUnavailable { .. } => (
                UNAVAILABLE,
                "urn:mpc-gateway:store-unavailable",
                "The shared store is unavailable",
            ),
            Self::UpstreamThrottled(_) => (
                UNAVAILABLE,
                "urn:mpc-gateway:upstream-throttled",
                "The MPC asked the gateway to slow down",
            ),
            Self::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "urn:mpc-gateway:request-timeout",
                "Request body too slow",
            ),
            Self::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "urn:mpc-gateway:headers-too-large",
                "Request headers too large",
            ),
            Self::UpstreamRejected(answer) => (
                StatusCode::from_u16(answer.status)
                    .ok()
                    .filter(StatusCode::is_client_error)
                    .unwrap_or(StatusCode::BAD_REQUEST),
                "urn:mpc-gateway:upstream-rejected",
                "The MPC rejected the request",
            ),
            Self::UpstreamError(_) => (
                BAD_GATEWAY,
                "urn:mpc-gateway:upstream-error",
                "The MPC could not be used",
            ),
            Self::UpstreamUncertain {
                reason: Uncertainty::ConnectionLost,
                ..
            } => (
                BAD_GATEWAY,
                "urn:mpc-gateway:upstream-error",
                "The connection to the MPC failed",
            ),
            Self::UpstreamUncertain {
                reason: Uncertainty::Timeout,
                ..
            } => (
                StatusCode::GATEWAY_TIMEOUT,
                "urn:mpc-gateway:upstream-timeout",
                "The MPC did not answer in time",
            ),
            Self::NotFound(_) | Self::NotRemembered(_) => (
                StatusCode::NOT_FOUND,
                "urn:mpc-gateway:not-found",
                "Not found",
            ),
            Self::AdminUnauthorized => (
                StatusCode::UNAUTHORIZED,
                "urn:mpc-gateway:unauthenticated",
                "Unauthenticated",
            ),
            Self::AdminClosed => (
                StatusCode::FORBIDDEN,
                "urn:mpc-gateway:forbidden",
                "Forbidden",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "urn:mpc-gateway:internal-error",
                "Internal error",
            ),
            Self::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "urn:mpc-gateway:method-not-allowed",
                "Method not allowed",
            ),
        }
    }

    /// The `type` URI; fixed by the contract.
    pub fn type_uri(&self) -> &'static str {
        self.kind().1
    }

    fn title(&self) -> &'static str {
        self.kind().2
    }

    fn detail(&self) -> String {
        match self {
            Self::MalformedRequest(why) => {
                format!("The body must be a JSON object with a string member \"label\": {why}.")
            }
            Self::MalformedBatch(why) => format!(
                "The body must be a JSON object whose member \"labels\" is a non-empty list \
                 of label strings: {why}."
            ),
            Self::BatchTooLarge { max_labels } => format!(
                "A batch may hold at most {max_labels} labels; send the rest in another batch. \
                 Nothing was sent."
            ),
            Self::Forbidden { required_scope } => format!(
                "This API key does not hold the scope \"{}\" that this route needs; ask the \
                 gateway's operators for a key that does.",
                required_scope.as_str()
            ),
            Self::CrossOrigin => "This request came from a page of another site; the gateway \
                 answers only its own page and clients that send no Origin. Nothing was sent."
                .to_owned(),
            Self::PayloadTooLarge { limit } => {
                format!("The request body is larger than the {limit} bytes this gateway accepts.")
            }
            Self::UnsupportedMediaType(why) => format!(
                "{why}; send the body as JSON with the header 'Content-Type: application/json'."
            ),
            Self::InvalidLabel { error, .. } => {
                format!("The label is not one the MPC accepts: {error}.")
            }
            Self::Unauthenticated(error) => {
                format!("The gateway does not know who is asking: {error}.")
            }
            Self::QuotaExceeded(refusal) => format!(
                "Your {} limit is used up; try again in {} s.",
                refusal.limit.as_str(),
                whole_seconds(refusal.retry_after)
            ),
            Self::GatewayBusy { retry_after } => format!(
                "The gateway's budget of calls to the MPC is spent for now; nothing was sent. \
                 Try again in {} s.",
                whole_seconds(*retry_after)
            ),
            Self::CircuitOpen { retry_after } => format!(
                "Recent calls to the MPC failed one after another, so the gateway is not \
                 calling it for now; nothing was sent. Try again in {} s. Labels already \
                 requested are still answered.",
                whole_seconds(*retry_after)
            ),
            Self::StoreUnavailable { retry_after } => format!(
                "The store the gateway's replicas share cannot be reached, so the label \
                 could not be claimed; nothing was sent. Try again in {} s.",
                whole_seconds(*retry_after)
            ),
            Self::UpstreamThrottled(paused) => format!(
                "The MPC asked the gateway to send it nothing until {}, so nothing was sent; \
                 this says nothing about the label. Try again in {} s. Labels already \
                 requested are still answered.",
                humantime::format_rfc3339_seconds(paused.shown_until()),
                whole_seconds(paused.remaining)
            ),
            Self::BodyTimeout => "The request body did not arrive in time.".to_owned(),
            Self::HeadersTooLarge { limit } => {
                format!("The request headers add up to more than {limit} bytes.")
            }
            Self::UpstreamRejected(answer) => format!(
                "The MPC answered {} for this label, so no action code was sent; \
                 check that the label belongs to a submission from this observatory.",
                answer.status
            ),
            Self::UpstreamError(why) => {
                format!("{why}. No action code was requested; try again later.")
            }
            Self::UpstreamUncertain {
                reason,
                retry_after,
            } => {
                let what = match reason {
                    Uncertainty::Timeout => "The MPC did not answer in time",
                    Uncertainty::ConnectionLost => {
                        "The connection to the MPC failed after the request was sent"
                    }
                };
                format!(
                    "{what}, so it may still email the action code: check the mailbox. \
                     To avoid a second email this label is not forwarded again for {} s.",
                    whole_seconds(*retry_after)
                )
            }
            Self::NotRemembered(label) => format!("Nothing is remembered for label {label}."),
            Self::AdminUnauthorized => {
                "The admin API requires 'Authorization: Bearer <admin token>'.".to_owned()
            }
            Self::AdminClosed => "The admin API is closed: admin.listen is not a loopback \
                address and no admin token is set. To open it, set admin.token_sha256 \
                (MPC_GATEWAY__ADMIN__TOKEN_SHA256) to the SHA-256 of a token (see \
                'mpc-action-gateway hash-key') and send 'Authorization: Bearer <admin token>', \
                or listen on a loopback address."
                .to_owned(),
            Self::Internal(why) => format!("The gateway could not write its answer: {why}."),
            Self::NotFound(path) => format!("There is no resource at {path}."),
            Self::MethodNotAllowed { allow } => {
                format!("This resource accepts only {allow}.")
            }
        }
    }

    /// The retrieval outcome of a retrieve request refused at the edge
    /// (before the use case), if this problem is such a refusal.
    pub fn edge_outcome(&self) -> Option<RetrievalOutcome> {
        Some(match self {
            Self::MalformedRequest(_)
            | Self::MalformedBatch(_)
            | Self::BatchTooLarge { .. }
            | Self::PayloadTooLarge { .. }
            | Self::UnsupportedMediaType(_)
            | Self::BodyTimeout
            | Self::HeadersTooLarge { .. } => RetrievalOutcome::MalformedRequest,
            Self::InvalidLabel { .. } => RetrievalOutcome::InvalidLabel,
            Self::Unauthenticated(_) => RetrievalOutcome::Unauthenticated,
            Self::QuotaExceeded(_) => RetrievalOutcome::QuotaExceeded,
            Self::Forbidden { .. } => RetrievalOutcome::Forbidden,
            Self::CrossOrigin => RetrievalOutcome::CrossOrigin,
            _ => return None,
        })
    }

    /// How long the caller should wait before asking again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QuotaExceeded(refusal) => Some(refusal.retry_after),
            Self::GatewayBusy { retry_after }
            | Self::CircuitOpen { retry_after }
            | Self::StoreUnavailable { retry_after }
            | Self::UpstreamUncertain { retry_after, .. } => Some(*retry_after),
            Self::UpstreamThrottled(paused) => Some(paused.remaining),
            _ => None,
        }
    }

    /// The RFC 9457 document, with this problem's extra members.
    pub fn document(&self) -> ProblemDocument {
        let mut document = ProblemDocument {
            type_uri: self.type_uri(),
            title: self.title(),
            status: self.status_code().as_u16(),
            detail: self.detail(),
            label: None,
            reason: None,
            accepted_formats: None,
            upstream: None,
            limit: None,
            retry_after_seconds: None,
            max_body_bytes: None,
            max_labels: None,
            required_scope: None,
            paused_until: None,
        };
        match self {
            Self::InvalidLabel { label, error } => {
                document.label = Some(label.clone());
                document.reason = Some(error.to_string());
                document.accepted_formats = Some(accepted_formats_json());
            }
            Self::UpstreamRejected(answer) => document.upstream = Some(answer.clone()),
            Self::PayloadTooLarge { limit } => document.max_body_bytes = Some(*limit),
            Self::BatchTooLarge { max_labels } => document.max_labels = Some(*max_labels),
            Self::Forbidden { required_scope } => {
                document.required_scope = Some(required_scope.as_str());
            }
            Self::QuotaExceeded(refusal) => {
                document.limit = Some(refusal.limit.as_str());
                document.retry_after_seconds = Some(whole_seconds(refusal.retry_after));
            }
            Self::UpstreamThrottled(paused) => {
                document.paused_until =
                    Some(humantime::format_rfc3339_seconds(paused.shown_until()).to_string());
            }
            _ => {}
        }
        document
    }
}

impl Problem {
    /// The RFC 9457 document as JSON: the body of the response, or of a batch item.
    pub fn document_json(&self) -> Vec<u8> {
        // Sized for the largest common document, an invalid label's.
        let mut body = Vec::with_capacity(1024);
        if serde_json::to_writer(&mut body, &self.document()).is_err() {
            body.clear();
        }
        body
    }
}

/// [`ACCEPTED_FORMATS`] as JSON, written once: every invalid label's
/// problem carries it.
fn accepted_formats_json() -> &'static RawValue {
    static JSON: LazyLock<Box<RawValue>> = LazyLock::new(|| {
        serde_json::value::to_raw_value(&ACCEPTED_FORMATS)
            .expect("the accepted formats are plain strings")
    });
    &JSON
}

impl From<Refused> for Problem {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::CircuitOpen { retry_after } => Self::CircuitOpen { retry_after },
            Refused::Throttled(paused) => Self::UpstreamThrottled(paused),
            Refused::Quota(refusal) => Self::QuotaExceeded(refusal),
            Refused::GatewayBusy { retry_after } => Self::GatewayBusy { retry_after },
            Refused::StoreUnavailable(error) => {
                tracing::warn!(%error, "the shared store failed");
                Self::StoreUnavailable {
                    retry_after: STORE_RETRY_AFTER,
                }
            }
            Refused::Interrupted => {
                Self::UpstreamError("The call to the MPC was interrupted".to_owned())
            }
        }
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        Self::from(Refused::StoreUnavailable(error))
    }
}

/// An RFC 9457 problem document, as every error is answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDocument {
    /// A `urn:mpc-gateway:*` URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "urn:mpc-gateway:invalid-label")]
    pub type_uri: &'static str,
    /// A short, fixed summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened and what to do, for a person.
    pub detail: String,
    /// `invalid-label`: the label as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `invalid-label`: the rule the label broke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `invalid-label`: the label formats the MPC accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<AcceptedFormat>>)]
    pub accepted_formats: Option<&'static RawValue>,
    /// `upstream-rejected`: the MPC's status and body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<MpcAnswer>,
    /// `quota-exceeded`: which limit refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "upstream_per_hour")]
    pub limit: Option<&'static str>,
    /// `quota-exceeded`: whole seconds until the limit admits again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// `payload-too-large`: the cap on request bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// `batch-too-large`: the most labels one batch may hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_labels: Option<usize>,
    /// `forbidden`: the scope the route needs (`status` or `retrieve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "retrieve")]
    pub required_scope: Option<&'static str>,
    /// `upstream-throttled`: when the pause the MPC asked for ends (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-11-26T04:02:00Z")]
    pub paused_until: Option<String>,
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.kind().0
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        match self {
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            Self::Unauthenticated(_) | Self::AdminUnauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mpc-action-gateway\""),
                ));
            }
            _ => {}
        }
        if let Some(wait) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, whole_seconds(wait)));
        }
        response.body(self.document_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::label::Label;
    use serde_json::{Value, json};

    impl Problem {
        fn to_json(&self) -> Value {
            serde_json::to_value(self.document()).unwrap()
        }
    }

    #[test]
    fn invalid_label_carries_reason_and_formats() {
        let error = Label::parse("bad label").unwrap_err();
        let problem = Problem::InvalidLabel {
            label: "bad label".into(),
            error: error.clone(),
        };
        let body = problem.to_json();
        assert_eq!(body["type"], "urn:mpc-gateway:invalid-label");
        assert_eq!(body["status"], 422);
        assert_eq!(body["label"], "bad label");
        assert_eq!(body["reason"], error.to_string());
        assert_eq!(body["accepted_formats"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn batch_and_scope_problems_carry_their_members() {
        let too_large = Problem::BatchTooLarge { max_labels: 100 }.to_json();
        assert_eq!(too_large["type"], "urn:mpc-gateway:batch-too-large");
        assert_eq!(too_large["status"], 422);
        assert_eq!(too_large["max_labels"], 100);
        let forbidden = Problem::Forbidden {
            required_scope: Scope::Retrieve,
        }
        .to_json();
        assert_eq!(forbidden["type"], "urn:mpc-gateway:forbidden");
        assert_eq!(forbidden["status"], 403);
        assert_eq!(forbidden["required_scope"], "retrieve");
        let malformed = Problem::MalformedBatch("x".into()).to_json();
        assert_eq!(malformed["type"], "urn:mpc-gateway:malformed-request");
    }

    #[test]
    fn upstream_rejection_keeps_the_mpc_status() {
        let problem =
            Problem::UpstreamRejected(MpcAnswer::with_json(404, &json!({"error": "unknown"})));
        assert_eq!(problem.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(problem.to_json()["upstream"]["body"]["error"], "unknown");
    }

    #[test]
    fn a_throttled_request_says_until_when_and_that_nothing_was_sent() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let paused = Paused::from(now, Duration::from_millis(2_500));
        let problem = Problem::UpstreamThrottled(paused);
        assert_eq!(problem.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem.retry_after(), Some(Duration::from_millis(2_500)));
        let body = problem.to_json();
        assert_eq!(body["type"], "urn:mpc-gateway:upstream-throttled");
        assert_eq!(
            body["paused_until"], "2027-01-15T08:00:03Z",
            "rounded up to the second"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("until 2027-01-15T08:00:03Z"), "{detail}");
        assert!(detail.contains("nothing was sent"), "{detail}");
        assert!(detail.contains("Try again in 3 s"), "{detail}");
        let response = problem.error_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "3");
        let whole = Problem::UpstreamThrottled(Paused::from(now, Duration::from_secs(3)));
        assert_eq!(whole.to_json()["paused_until"], "2027-01-15T08:00:03Z");
        assert_eq!(
            Problem::CircuitOpen {
                retry_after: Duration::from_secs(1)
            }
            .to_json()
            .get("paused_until"),
            None
        );
    }

    #[test]
    fn every_problem_has_the_rfc9457_members() {
        let problems = [
            Problem::MalformedRequest("x".into()),
            Problem::MalformedBatch("x".into()),
            Problem::BatchTooLarge { max_labels: 100 },
            Problem::Forbidden {
                required_scope: Scope::Retrieve,
            },
            Problem::PayloadTooLarge { limit: 1 },
            Problem::UnsupportedMediaType("x".into()),
            Problem::UpstreamError("x".into()),
            Problem::UpstreamUncertain {
                reason: Uncertainty::Timeout,
                retry_after: Duration::from_secs(120),
            },
            Problem::NotRemembered("A10cnQO".into()),
            Problem::CircuitOpen {
                retry_after: Duration::from_secs(30),
            },
            Problem::StoreUnavailable {
                retry_after: Duration::from_secs(1),
            },
            Problem::UpstreamThrottled(Paused::from(
                std::time::SystemTime::now(),
                Duration::from_secs(3),
            )),
            Problem::BodyTimeout,
            Problem::HeadersTooLarge { limit: 16384 },
            Problem::AdminUnauthorized,
            Problem::AdminClosed,
            Problem::NotFound("/x".into()),
            Problem::Internal("x".into()),
            Problem::MethodNotAllowed { allow: "POST" },
        ];
        for problem in problems {
            let body = problem.to_json();
            for member in ["type", "title", "status", "detail"] {
                assert!(body.get(member).is_some(), "{problem:?} lacks {member}");
            }
            assert_eq!(body["status"], problem.status_code().as_u16());
        }
    }
}
