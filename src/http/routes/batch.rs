//! `POST /api/action-codes/batch/status` and `POST /api/action-codes/batch/retrieve`:
//! many labels in one request, for dashboards. Each item is what the single
//! route answers for its label, built by the same code (`labels::known`,
//! `retrieve::reply`).

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::future::join_all;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::config::BATCH_BYTES_PER_LABEL;
use crate::domain::identity::Identity;
use crate::domain::label::Label;
use crate::http::context::Notes;
use crate::http::problem::{Problem, ProblemDocument};
use crate::http::routes::retrieve::{
    check_content_type, decode_json, object_only, read_body, refused_at_edge, reply,
};
use crate::http::routes::{JSON, Reply, labels, parse_label};
use crate::http::state::AppState;
use crate::observe::record::Asker;
use crate::upstream::MpcClient;

/// What the batch object must look like, as refusals say it.
const EXPECTING: &str = "a JSON object with a member \"labels\" holding a list of label strings";

/// A batch: the labels exactly as given, each judged as the single route would.
#[derive(Debug, ToSchema)]
pub struct BatchRequest {
    /// 1 to `server.max_batch_labels` (default 100) strings; any string is
    /// read, and one that is not a label the MPC accepts gets its 422 item.
    #[schema(min_items = 1, max_items = 100, example = json!(["A10cnQO", "2024-05-02T21:03:35.001_0000FzZw"]))]
    pub labels: Vec<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object with a member \"labels\" holding a list of label strings")]
struct Members {
    labels: Vec<String>,
}

impl<'de> Deserialize<'de> for BatchRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Members { labels } = object_only(deserializer, EXPECTING)?;
        Ok(Self { labels })
    }
}

/// Decodes a batch body: 400 when it is not a non-empty list of strings in
/// `labels`, 422 `batch-too-large` when it holds more than `max_labels`.
pub fn decode_batch(bytes: &[u8], max_labels: usize) -> Result<BatchRequest, Problem> {
    let batch: BatchRequest = decode_json(bytes).map_err(Problem::MalformedBatch)?;
    if batch.labels.is_empty() {
        return Err(Problem::MalformedBatch("\"labels\" is empty".to_owned()));
    }
    if batch.labels.len() > max_labels {
        return Err(Problem::BatchTooLarge { max_labels });
    }
    Ok(batch)
}

/// The answer to an accepted batch: one item per label given, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchAnswer<'a> {
    /// One per label, in the order given.
    items: Vec<BatchItem<'a>>,
}

/// What the single route would have answered for one label.
#[derive(Serialize, ToSchema)]
pub struct BatchItem<'a> {
    /// The label as given (untrimmed).
    #[schema(value_type = String, example = "A10cnQO")]
    label: &'a str,
    /// The HTTP status the single route would have answered.
    #[schema(example = 200)]
    status: u16,
    /// Its JSON body: for `batch/status` a `LabelStatus` or a problem, for
    /// `batch/retrieve` a `Retrieved` or a problem.
    #[schema(value_type = Object)]
    body: Box<RawValue>,
}

/// Reports what the gateway knows of each label, as
/// `GET /api/action-codes/labels/{label}` would; never contacts the MPC.
#[utoipa::path(
    post,
    path = "/api/action-codes/batch/status",
    tag = "action codes",
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The batch was read: one item per label, each with the label route's status and body", body = BatchAnswer),
        (status = 400, description = "`malformed-request`: the body is not JSON, or `labels` is missing, empty or holds a non-string", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: no or unknown credentials", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the API key lacks the scope `status`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 408, description = "`request-timeout`: the body did not arrive in time", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "`payload-too-large`: the body is over `server.max_batch_labels` × 128 bytes", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported-media-type`: the body is not declared as JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "`batch-too-large`: more labels than `server.max_batch_labels` (member `max_labels`)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "`quota-exceeded`: the caller's `requests_per_minute`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 431, description = "`headers-too-large`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("api_key" = []))
)]
pub async fn status(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let batch = match read_batch(&req, payload, state.max_batch_labels).await {
        Ok(batch) => batch,
        Err(problem) => return problem.error_response(),
    };
    let replies = join_all(batch.labels.iter().map(|raw| async {
        match parse_label(raw) {
            Ok(label) => labels::known(&state.dedup, &label).await,
            Err(problem) => Reply::problem(problem),
        }
    }))
    .await;
    answer(&batch.labels, replies)
}

/// Requests the action code of each label, as `POST /api/action-codes/retrieve`
/// would for the same user: quota and budget are charged in the order given,
/// and a label given twice makes at most one MPC call.
#[utoipa::path(
    post,
    path = "/api/action-codes/batch/retrieve",
    tag = "action codes",
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The batch was read: one item per label, each with the retrieve route's status and body (items past the quota carry their 429 problem)", body = BatchAnswer,
         headers(
            ("X-Request-Id" = String, description = "The request's id in the gateway's logs and audit trail"),
            ("RateLimit-Policy" = String, description = "The caller's upstream quota"),
            ("RateLimit" = String, description = "What is left of it after the batch"),
         )),
        (status = 400, description = "`malformed-request`: the body is not JSON, or `labels` is missing, empty or holds a non-string", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: no or unknown credentials", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the API key lacks the scope `retrieve`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 408, description = "`request-timeout`: the body did not arrive in time", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "`payload-too-large`: the body is over `server.max_batch_labels` × 128 bytes", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported-media-type`: the body is not declared as JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "`batch-too-large`: more labels than `server.max_batch_labels` (member `max_labels`); nothing was sent", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "`quota-exceeded`: the caller's `requests_per_minute`; nothing was sent", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 431, description = "`headers-too-large`", body = ProblemDocument, content_type = "application/problem+json"),
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
    let asker = Asker {
        request_id: notes.request_id(),
        user: Some(identity.user()),
    };
    let batch = match read_batch(&req, payload, state.max_batch_labels).await {
        Ok(batch) => batch,
        Err(problem) => {
            refused_at_edge(&state, &notes, asker, &problem);
            return problem.error_response();
        }
    };
    let replies = retrieve_each(&state, &identity, asker, &batch.labels, mpc.into_inner()).await;
    answer(&batch.labels, replies)
}

/// Retrieves each of `raw` as `POST /api/action-codes/retrieve` would for
/// the same user, all through [`Retrieval::retrieve_all`]: an invalid label
/// is recorded as the single route records it and answered with its
/// problem. One reply per label, in the order given.
///
/// [`Retrieval::retrieve_all`]: crate::retrieval::Retrieval::retrieve_all
pub async fn retrieve_each(
    state: &AppState,
    identity: &Identity,
    asker: Asker<'_>,
    raw: &[impl AsRef<str>],
    mpc: Arc<MpcClient>,
) -> Vec<Reply> {
    let parsed: Vec<Result<Label, Problem>> =
        raw.iter().map(|raw| parse_label(raw.as_ref())).collect();
    for problem in parsed.iter().filter_map(|parsed| parsed.as_ref().err()) {
        // An invalid label is recorded as the single route records it.
        if let Some(outcome) = problem.edge_outcome() {
            state.retrieval.refused_at_edge(asker, outcome);
        }
    }
    let valid = parsed.iter().filter_map(|parsed| parsed.as_ref().ok());
    let mut retrieved = state
        .retrieval
        .retrieve_all(identity, asker.request_id, valid, mpc)
        .await
        .into_iter();
    parsed
        .into_iter()
        .map(|parsed| match parsed {
            Ok(label) => match retrieved.next() {
                Some(retrieved) => reply(&label, retrieved),
                None => Reply::problem(Problem::Internal("an item was lost".to_owned())),
            },
            Err(problem) => Reply::problem(problem),
        })
        .collect()
}

/// The body, checked and decoded (415, 413, 400, 422).
async fn read_batch(
    req: &HttpRequest,
    payload: web::Payload,
    max_labels: usize,
) -> Result<BatchRequest, Problem> {
    check_content_type(req)?;
    let limit = max_labels.saturating_mul(BATCH_BYTES_PER_LABEL);
    let bytes = read_body(req, payload, limit).await?;
    decode_batch(&bytes, max_labels)
}

/// The items, in the order given, each with its label as given.
fn answer(labels: &[String], replies: Vec<Reply>) -> HttpResponse {
    let items = labels
        .iter()
        .zip(replies)
        .map(|(label, reply)| {
            let (status, body) = reply.into_item();
            BatchItem {
                label,
                status,
                body,
            }
        })
        .collect();
    match serde_json::to_vec(&BatchAnswer { items }) {
        Ok(body) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(JSON)))
            .body(body),
        Err(error) => Problem::Internal(error.to_string()).error_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_is_a_list_of_strings_in_labels() {
        let batch =
            decode_batch(br#"{"labels": [" A10cnQO ", "bad label"], "x": 1}"#, 100).unwrap();
        assert_eq!(batch.labels, [" A10cnQO ", "bad label"]);
    }

    #[test]
    fn other_bodies_are_malformed() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"[[\"A10cnQO\"]]",
            b"{}",
            b"{\"labels\": []}",
            b"{\"labels\": \"A10cnQO\"}",
            b"{\"labels\": [\"A10cnQO\", 1]}",
            b"{\"labels\": [null]}",
            b"{\"labels\": [\"a\"], \"labels\": [\"b\"]}",
            b"\xff",
        ] {
            assert!(
                matches!(decode_batch(body, 100), Err(Problem::MalformedBatch(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn more_labels_than_allowed_is_too_large() {
        let body =
            serde_json::to_vec(&serde_json::json!({ "labels": ["A10cnQO", "A10cnQP", "A10cnQQ"] }))
                .unwrap();
        assert!(decode_batch(&body, 3).is_ok());
        assert!(matches!(
            decode_batch(&body, 2),
            Err(Problem::BatchTooLarge { max_labels: 2 })
        ));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![Just("labels".to_owned()), ".{0,6}"],
                    inner,
                    0..4
                )
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_body_is_a_batch_or_a_4xx_problem(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            match decode_batch(&body, 4) {
                Ok(batch) => prop_assert!((1..=4).contains(&batch.labels.len())),
                Err(problem) => prop_assert!(problem.status_code().is_client_error()),
            }
        }

        #[test]
        fn any_bytes_are_a_batch_or_a_4xx_problem(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(problem) = decode_batch(&body, 100) {
                prop_assert!(problem.status_code().is_client_error());
            }
        }
    }
}
