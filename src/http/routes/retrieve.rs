//! `POST /api/action-codes/retrieve`: the MPC's own request, checked and forwarded.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::identity::Identity;
use crate::domain::label::{Label, LabelKind};
use crate::domain::mpc_reply::UpstreamFailure;
use crate::domain::outcome::{MpcAnswer, Outcome, Remembered};
use crate::http::context::Notes;
use crate::http::problem::{Problem, ProblemDocument};
use crate::http::routes::media_type::MediaType;
use crate::http::routes::{JSON, Reply, Timestamp, parse_label};
use crate::http::state::AppState;
use crate::observe::record::Asker;
use crate::pause::Paused;
use crate::retrieval::{self, Answered, Via};
use crate::upstream::MpcClient;
use utoipa::ToSchema;

/// Longest a client may take to send its (small) body once the head is in.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for a typical answer, so it is written without growing.
const ANSWER_CAPACITY: usize = 640;

/// The request body the MPC accepts; other members are ignored.
#[derive(Debug, ToSchema)]
pub struct RetrieveRequest<'a> {
    /// The label exactly as sent, not yet judged: any string is read, and
    /// one that is not a label the MPC accepts gets a 422 problem.
    #[schema(value_type = String, example = "2024-05-02T21:03:35.001_0000FzZw")]
    pub label: Cow<'a, str>,
}

/// The members of a [`RetrieveRequest`]; read only from a JSON object.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object with a string member \"label\"")]
struct Members<'a> {
    // Borrowed from the body unless it has escapes.
    #[serde(borrow)]
    label: Cow<'a, str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RetrieveRequest<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Members { label } =
            object_only(deserializer, "a JSON object with a string member \"label\"")?;
        Ok(Self { label })
    }
}

/// Reads `T` from a JSON object only: serde's derived impl for a struct also
/// accepts a sequence of its members in order, so `["A10cnQO"]` would be
/// read as a label.
pub fn object_only<'de, D, T>(deserializer: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectOnly<T> {
        expecting: &'static str,
        shape: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(ObjectOnly {
        expecting,
        shape: PhantomData,
    })
}

/// The answer to an accepted (or already accepted) request.
#[derive(Serialize, ToSchema)]
pub struct Retrieved<'a> {
    /// `sent`: this request (or the one it joined) reached the MPC, which
    /// accepted it; `already_requested`: an accepted request for the label
    /// was made within `dedup.sent_ttl`, so no new email is sent.
    #[schema(value_type = String, example = "sent")]
    status: &'static str,
    /// The label, trimmed.
    #[schema(value_type = Label)]
    label: &'a Label,
    /// Its format.
    label_kind: LabelKind,
    /// A sentence for a person.
    #[schema(value_type = String)]
    message: SentMessage<'a>,
    /// When the MPC call that sent the email was made (RFC 3339, UTC).
    #[schema(value_type = String, example = "2026-11-26T04:00:00Z")]
    requested_at: Timestamp,
    /// When a new request for the label will be forwarded again.
    #[schema(value_type = String, example = "2026-11-26T05:00:00Z")]
    resend_available_at: Timestamp,
    /// The MPC's status and JSON body.
    #[schema(value_type = MpcAnswer)]
    upstream: &'a MpcAnswer,
}

/// Checks the body, then answers from memory, joins the call in flight, or
/// asks the MPC to email the label's action code.
#[utoipa::path(
    post,
    path = "/api/action-codes/retrieve",
    tag = "action codes",
    request_body(content = RetrieveRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The MPC accepted the request (now or within `dedup.sent_ttl`)", body = Retrieved,
         headers(
            ("Cache-Status" = String, description = "RFC 9211: `hit; ttl=N`, `fwd=miss; stored` or `fwd=miss; collapsed`"),
            ("X-Request-Id" = String, description = "The request's id in the gateway's logs"),
            ("RateLimit-Policy" = String, description = "The caller's upstream quota"),
            ("RateLimit" = String, description = "What is left of it"),
         )),
        (status = 400, description = "`malformed-request`: the body is not JSON or has no string `label`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: no or unknown credentials", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the API key lacks the scope `retrieve`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 408, description = "`request-timeout`: the body did not arrive in time", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "`payload-too-large`: the body is over `server.max_body_bytes`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported-media-type`: the body is not declared as JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "`invalid-label`: the label breaks the MPC's rules; nothing was sent", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "`quota-exceeded`: a per-user limit; see `Retry-After`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 431, description = "`headers-too-large`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = "4XX", description = "`upstream-rejected`: the MPC refused the label, with its own 4xx status", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 502, description = "`upstream-error`: the MPC failed or could not be reached", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "`upstream-circuit-open`, `upstream-throttled` (the MPC asked the gateway to slow down; member `paused_until`), `gateway-busy` or `store-unavailable`: nothing was sent; see `Retry-After`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 504, description = "`upstream-timeout`: the MPC did not answer in time; it may still email", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn retrieve(
    identity: Identity,
    notes: Notes,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    mpc: web::Data<MpcClient>,
) -> HttpResponse {
    let label = match read_label(&req, payload, state.max_body_bytes).await {
        Ok(label) => label,
        Err(problem) => {
            let asker = Asker {
                request_id: notes.request_id(),
                user: Some(identity.user()),
            };
            refused_at_edge(&state, &notes, asker, &problem);
            return problem.error_response();
        }
    };
    notes.label_kind(label.kind());
    let retrieved = state
        .retrieval
        .retrieve(&identity, notes.request_id(), &label, mpc.into_inner())
        .await;
    notes.outcome(retrieved.decision.outcome);
    reply(&label, retrieved).into_response()
}

/// The body, checked and decoded, and its label parsed.
async fn read_label(
    req: &HttpRequest,
    payload: web::Payload,
    max_body_bytes: usize,
) -> Result<Label, Problem> {
    check_content_type(req)?;
    let bytes = read_body(req, payload, max_body_bytes).await?;
    let request = decode_body(&bytes)?;
    parse_label(&request.label)
}

/// Records a retrieve request refused before its label was read (or for an
/// invalid one) as a retrieval decision, and notes it for the log line.
pub fn refused_at_edge(state: &AppState, notes: &Notes, asker: Asker<'_>, problem: &Problem) {
    if let Some(outcome) = problem.edge_outcome() {
        notes.outcome(outcome);
        state.retrieval.refused_at_edge(asker, outcome);
    }
}

/// What a retrieval came to, as the single route and a batch item answer
/// it: the 200 answer or the problem, with its `Cache-Status`.
pub fn reply(label: &Label, retrieved: retrieval::Retrieved) -> Reply {
    let Answered { settled, via } = match retrieved.answer {
        Ok(answered) => answered,
        Err(refused) => return Reply::problem(Problem::from(refused)),
    };
    let now = retrieved.decided_at;
    let cache_status = match (via, &settled) {
        (Via::Memory, Ok(remembered)) => format!(
            "mpc-action-gateway; hit; ttl={}",
            remembered.remaining(now).as_secs()
        ),
        (Via::Forwarded, Ok(_)) => "mpc-action-gateway; fwd=miss; stored".to_owned(),
        (Via::Collapsed, _) => "mpc-action-gateway; fwd=miss; collapsed".to_owned(),
        (_, Err(_)) => "mpc-action-gateway; fwd=miss".to_owned(),
    };
    let reply = match settled {
        Ok(remembered) => match remembered.outcome() {
            Outcome::Sent { upstream } => sent(label, &remembered, upstream, via),
            Outcome::Rejected { upstream } => {
                Reply::problem(Problem::UpstreamRejected(upstream.clone()))
            }
            Outcome::Uncertain { reason } => Reply::problem(Problem::UpstreamUncertain {
                reason: *reason,
                retry_after: remembered.remaining(now),
            }),
        },
        Err(UpstreamFailure::Throttled(throttle)) => {
            // Obeyed: `retry_after` says when the gateway's pause ends.
            let wait = throttle
                .retry_after
                .map_or(Duration::ZERO, |pause| pause.wait_from(now));
            Reply::problem(Problem::UpstreamThrottled(Paused::from(now, wait)))
        }
        Err(failure) => Reply::problem(Problem::UpstreamError(capitalise(&failure.to_string()))),
    };
    reply.with_cache_status(cache_status)
}

fn sent(label: &Label, remembered: &Remembered, upstream: &MpcAnswer, via: Via) -> Reply {
    let requested_at = Timestamp::new(remembered.requested_at());
    let resend_available_at = Timestamp::new(remembered.expires_at());
    let remembered = via == Via::Memory;
    let answer = Retrieved {
        status: if remembered {
            "already_requested"
        } else {
            "sent"
        },
        label,
        label_kind: label.kind(),
        message: SentMessage {
            label,
            requested_at,
            resend_available_at,
            remembered,
        },
        requested_at,
        resend_available_at,
        upstream,
    };
    // Written into a buffer sized for it, where `HttpResponse::json` would
    // grow one from empty.
    Reply::json(&answer, ANSWER_CAPACITY)
}

/// The sentence of a [`Retrieved`] answer, written straight into its JSON.
struct SentMessage<'a> {
    label: &'a Label,
    requested_at: Timestamp,
    resend_available_at: Timestamp,
    remembered: bool,
}

impl fmt::Display for SentMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            label,
            requested_at,
            resend_available_at,
            ..
        } = self;
        if self.remembered {
            write!(
                f,
                "The MPC already accepted a request for {label} at {requested_at}, so no new \
                 email is sent; ask again after {resend_available_at} if it never arrived."
            )
        } else {
            write!(
                f,
                "The MPC accepted the request: it emails the action code for {label} to the \
                 address that submitted it."
            )
        }
    }
}

impl Serialize for SentMessage<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Refuses bodies not declared as UTF-8 JSON (415) before reading them.
pub fn check_content_type(req: &HttpRequest) -> Result<(), Problem> {
    let Some(declared) = req.headers().get(header::CONTENT_TYPE) else {
        return Err(Problem::UnsupportedMediaType(
            "The request has no Content-Type header".to_owned(),
        ));
    };
    if declared.as_bytes().eq_ignore_ascii_case(JSON.as_bytes()) {
        return Ok(());
    }
    let media = declared
        .to_str()
        .ok()
        .map(MediaType::parse)
        .ok_or_else(|| {
            Problem::UnsupportedMediaType("The Content-Type header is not ASCII text".to_owned())
        })?
        .map_err(|error| {
            Problem::UnsupportedMediaType(format!("The Content-Type header is malformed: {error}"))
        })?;
    if !media.is("application", "json") {
        return Err(Problem::UnsupportedMediaType(format!(
            "Content-Type {}/{} is not application/json",
            media.type_, media.subtype
        )));
    }
    match media.charset {
        Some(charset) if !charset.eq_ignore_ascii_case("utf-8") => {
            Err(Problem::UnsupportedMediaType(format!(
                "charset {charset} is not supported, JSON is UTF-8"
            )))
        }
        _ => Ok(()),
    }
}

/// Reads the body, refusing (413) as soon as it passes `limit` bytes.
pub async fn read_body(
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
    let mut read = std::pin::pin!(payload.to_bytes_limited(limit));
    // A small body usually came in with the head: then no timer is needed.
    let read = match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(read) => read,
        Poll::Pending => tokio::time::timeout(BODY_TIMEOUT, read)
            .await
            .map_err(|_| Problem::BodyTimeout)?,
    };
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(Problem::MalformedRequest(format!(
            "the body could not be read ({error})"
        ))),
        Err(_) => Err(Problem::PayloadTooLarge { limit }),
    }
}

/// Decodes a body into the MPC's request shape (400 when it is not one).
pub fn decode_body(bytes: &[u8]) -> Result<RetrieveRequest<'_>, Problem> {
    decode_json(bytes).map_err(Problem::MalformedRequest)
}

/// Decodes a JSON body into `T`, or says why it is not one.
pub fn decode_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".to_owned());
    }
    // serde_json skips the members it ignores without checking their UTF-8.
    let text =
        std::str::from_utf8(bytes).map_err(|error| format!("the body is not UTF-8 ({error})"))?;
    serde_json::from_str(text).map_err(|error| error.to_string())
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
            "application/json ; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
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
            "application/json; charset=utf-8; charset=latin1",
            "application/json charset=utf-8",
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
        assert!(matches!(request.label, Cow::Borrowed(_)));
        let escaped = decode_body(br#"{"label": "A10cnQ\u004F"}"#).unwrap();
        assert_eq!(escaped.label, "A10cnQO");
    }

    #[test]
    fn bodies_without_a_label_string_are_malformed() {
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"[]",
            b"[\"ARR00001\"]",
            b"[\"ARR00001\", 1]",
            b"\"A10cnQO\"",
            b"{}",
            b"{\"label\": 5}",
            b"{\"label\": null}",
            b"{\"label\": \"a\", \"label\": \"b\"}",
            b"\xff\xfe",
            b"{\"label\": \"A10cnQO\", \"x\": \"\xd1\"}",
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
