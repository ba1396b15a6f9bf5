//! `POST /api/action-codes/retrieve`: the MPC's own request, checked and forwarded.

use std::time::SystemTime;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::label::{Label, LabelKind};
use crate::problem::Problem;
use crate::startup::AppState;
use crate::upstream::{MpcAnswer, MpcClient, Reply, UpstreamFailure};

/// Header telling caches and people where an answer came from (RFC 9211).
pub const CACHE_STATUS: &str = "cache-status";

/// The request body the MPC accepts; other members are ignored.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a JSON object with a string member \"label\"")]
pub struct RetrieveRequest {
    /// The label exactly as sent, not yet judged.
    pub label: String,
}

#[derive(Serialize)]
struct Retrieved<'a> {
    status: &'static str,
    label: &'a Label,
    label_kind: LabelKind,
    message: String,
    requested_at: String,
    resend_available_at: String,
    upstream: &'a MpcAnswer,
}

/// Checks the body, then asks the MPC to email the label's action code.
pub async fn retrieve(
    identity: Identity,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    mpc: web::Data<MpcClient>,
) -> Result<HttpResponse, Problem> {
    check_content_type(&req)?;
    let bytes = read_body(&req, payload, state.max_body_bytes).await?;
    let request = decode_body(&bytes)?;
    let label = Label::parse(&request.label).map_err(|error| Problem::InvalidLabel {
        label: request.label,
        error,
    })?;
    tracing::Span::current().record("label_kind", label.kind().as_str());

    charge_upstream(&state, &identity)?;
    let requested_at = SystemTime::now();
    match mpc.retrieve(&label).await {
        Ok(Reply::Accepted(answer)) => {
            let at = humantime::format_rfc3339_seconds(requested_at).to_string();
            Ok(HttpResponse::Ok()
                .insert_header((
                    CACHE_STATUS,
                    HeaderValue::from_static("mpc-action-gateway; fwd=miss"),
                ))
                .json(Retrieved {
                    status: "sent",
                    label: &label,
                    label_kind: label.kind(),
                    message: format!(
                        "The MPC accepted the request: it emails the action code for {label} \
                         to the address that submitted it."
                    ),
                    requested_at: at.clone(),
                    resend_available_at: at,
                    upstream: &answer,
                }))
        }
        Ok(Reply::Rejected(answer)) => Err(Problem::UpstreamRejected(answer)),
        Err(UpstreamFailure::Timeout(_)) => Err(Problem::UpstreamTimeout),
        Err(failure) => Err(Problem::UpstreamError(capitalise(&failure.to_string()))),
    }
}

/// Charges the user's upstream quota, then the courtesy budget; a refusal
/// by the budget gives the user's unit back, since nothing is sent.
fn charge_upstream(state: &AppState, identity: &Identity) -> Result<(), Problem> {
    let quotas = &state.quotas;
    quotas
        .admit_upstream(identity.user(), identity.tier())
        .map_err(Problem::QuotaExceeded)?;
    quotas.admit_budget().map_err(|retry_after| {
        quotas.refund_upstream(identity.user(), identity.tier());
        tracing::warn!("courtesy budget towards the MPC is spent");
        Problem::GatewayBusy { retry_after }
    })
}

/// Refuses bodies not declared as UTF-8 JSON (415) before reading them.
pub fn check_content_type(req: &HttpRequest) -> Result<(), Problem> {
    let mime = req.mime_type().map_err(|_| {
        Problem::UnsupportedMediaType("The Content-Type header cannot be parsed".to_owned())
    })?;
    let Some(mime) = mime else {
        return Err(Problem::UnsupportedMediaType(
            "The request has no Content-Type header".to_owned(),
        ));
    };
    if mime.type_() != mime::APPLICATION || mime.subtype() != mime::JSON || mime.suffix().is_some()
    {
        return Err(Problem::UnsupportedMediaType(format!(
            "Content-Type {mime} is not application/json"
        )));
    }
    match mime.get_param(mime::CHARSET) {
        Some(charset) if !charset.as_str().eq_ignore_ascii_case("utf-8") => {
            Err(Problem::UnsupportedMediaType(format!(
                "charset {charset} is not supported, JSON is UTF-8"
            )))
        }
        _ => Ok(()),
    }
}

/// Reads the body, refusing (413) as soon as it passes `limit` bytes.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, Problem> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Problem::PayloadTooLarge { limit });
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(Problem::MalformedRequest(format!(
            "the body could not be read ({error})"
        ))),
        Err(_) => Err(Problem::PayloadTooLarge { limit }),
    }
}

/// Decodes a body into the MPC's request shape (400 when it is not one).
pub fn decode_body(bytes: &[u8]) -> Result<RetrieveRequest, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::MalformedRequest("the body is empty".to_owned()));
    }
    serde_json::from_slice(bytes).map_err(|error| Problem::MalformedRequest(error.to_string()))
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use proptest::prelude::*;

    #[test]
    fn json_content_types_are_accepted() {
        for value in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON; charset=UTF-8",
        ] {
            let req = TestRequest::default()
                .insert_header((header::CONTENT_TYPE, value))
                .to_http_request();
            assert!(check_content_type(&req).is_ok(), "{value}");
        }
    }

    #[test]
    fn other_content_types_are_refused() {
        for value in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/problem+json",
            "nonsense",
        ] {
            let req = TestRequest::default()
                .insert_header((header::CONTENT_TYPE, value))
                .to_http_request();
            assert!(
                matches!(
                    check_content_type(&req),
                    Err(Problem::UnsupportedMediaType(_))
                ),
                "{value}"
            );
        }
        let req = TestRequest::default().to_http_request();
        assert!(check_content_type(&req).is_err(), "missing header");
    }

    #[test]
    fn body_decoding_takes_the_label_and_ignores_the_rest() {
        let request = decode_body(br#"{"label": " A10cnQO ", "extra": [1, 2]}"#).unwrap();
        assert_eq!(request.label, " A10cnQO ");
    }

    #[test]
    fn bodies_without_a_label_string_are_malformed() {
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"[]",
            b"\"A10cnQO\"",
            b"{}",
            b"{\"label\": 5}",
            b"{\"label\": null}",
            b"{\"label\": \"a\", \"label\": \"b\"}",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(decode_body(body), Err(Problem::MalformedRequest(_))),
                "{body:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body(&body);
        }
    }
}
