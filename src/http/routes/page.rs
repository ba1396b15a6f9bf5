//! The observer page: `GET /` shows it, `POST /` (its form without
//! JavaScript) requests the labels pasted and shows the page with each
//! one's result, by the same use case as `batch/retrieve`. Its script and
//! style sheet are compiled in and served from `/static/`.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::identity::Identity;
use crate::http::context::Notes;
use crate::http::problem::Problem;
use crate::http::routes::Timestamp;
use crate::http::routes::batch;
use crate::http::routes::retrieve::read_body;
use crate::http::state::AppState;
use crate::observe::record::Asker;
use crate::upstream::MpcClient;

/// The page's script, as served.
pub const SCRIPT: &str = include_str!("../../../static/page.js");
/// The page's style sheet, as served.
pub const STYLE: &str = include_str!("../../../static/page.css");

/// The policy of every HTML answer: only this origin's script and style,
/// none inline, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The form's media type.
const FORM: &str = "application/x-www-form-urlencoded";

/// A short digest of the assets, in their URLs, so they can be cached for long.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::new()
        .chain_update(SCRIPT)
        .chain_update(STYLE)
        .finalize();
    hex::encode(&digest[..6])
});

/// The page, empty or with results.
#[derive(Template)]
#[template(path = "page.html")]
struct Page<'a> {
    version: &'a str,
    labels: &'a str,
    max_labels: usize,
    summary: String,
    quota: String,
    rows: Vec<Row>,
    access: Option<String>,
}

/// One label's line in the table.
struct Row {
    label: String,
    words: Words,
}

/// A label's result in words, and the class its row takes.
pub struct Words {
    /// The sentence, text and moments in turn.
    pub parts: Vec<Part>,
    /// `sent`, `already`, `invalid` or `refused`: the row's colour, and what
    /// the summary counts.
    pub class: &'static str,
}

/// A piece of a result's sentence.
pub enum Part {
    /// Plain text, escaped when shown.
    Text(String),
    /// A moment, shown in a `<time>` element: the page's script turns it
    /// into the observer's local time and how long ago or until.
    Time(Timestamp),
}

impl Part {
    /// The moment as shown without JavaScript, e.g. `2026-11-26 04:00:00 UTC`.
    fn utc(at: &Timestamp) -> String {
        let text = at.as_str();
        format!(
            "{} UTC",
            text.strip_suffix('Z').unwrap_or(text).replacen('T', " ", 1)
        )
    }
}

impl Words {
    fn new(class: &'static str) -> Self {
        Self {
            parts: Vec::new(),
            class,
        }
    }

    fn text(mut self, text: impl Into<String>) -> Self {
        self.parts.push(Part::Text(text.into()));
        self
    }

    /// The moment named by `field` of `body`, or "an unknown time".
    fn time(mut self, body: &Value, field: &str) -> Self {
        let at = body
            .get(field)
            .and_then(Value::as_str)
            .and_then(|text| humantime::parse_rfc3339(text).ok());
        self.parts.push(match at {
            Some(at) => Part::Time(Timestamp::new(at)),
            None => Part::Text("an unknown time".to_owned()),
        });
        self
    }

    fn at(mut self, at: SystemTime) -> Self {
        self.parts.push(Part::Time(Timestamp::new(at)));
        self
    }
}

/// The form's one field.
#[derive(Deserialize)]
struct Form {
    #[serde(default)]
    labels: String,
}

/// `GET /`: the page, loaded without identity.
pub async fn show(state: web::Data<AppState>) -> HttpResponse {
    html(StatusCode::OK, &page(&state, "", Vec::new(), None))
}

/// `GET /static/{file}`: the script or the style sheet.
pub async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, media) = match file.as_str() {
        "page.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "page.css" => (STYLE, "text/css; charset=utf-8"),
        other => {
            return actix_web::ResponseError::error_response(&Problem::NotFound(format!(
                "/static/{other}"
            )));
        }
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, media))
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// `POST /`: requests each valid label pasted, as `batch/retrieve` does,
/// and answers the page with each label's result in words.
pub async fn submit(
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
    let form = match read_form(&req, payload, state.max_batch_labels).await {
        Ok(form) => form,
        Err(problem) => {
            crate::http::routes::retrieve::refused_at_edge(&state, &notes, asker, &problem);
            return refused(&problem);
        }
    };
    let raw = split_labels(&form.labels);
    if raw.is_empty() {
        return html(
            StatusCode::OK,
            &page(&state, &form.labels, Vec::new(), None).with_summary("Paste at least one label."),
        );
    }
    if raw.len() > state.max_batch_labels {
        let problem = Problem::BatchTooLarge {
            max_labels: state.max_batch_labels,
        };
        return html(
            StatusCode::UNPROCESSABLE_ENTITY,
            &page(&state, &form.labels, Vec::new(), None).with_summary(&problem.document().detail),
        );
    }
    let replies = batch::retrieve_each(&state, &identity, asker, &raw, mpc.into_inner()).await;
    let now = state.dedup.now();
    let rows: Vec<Row> = raw
        .iter()
        .zip(replies)
        .map(|(raw, item)| {
            let (status, body) = item.into_item();
            let body: Value = serde_json::from_str(body.get()).unwrap_or(Value::Null);
            Row {
                label: (*raw).to_owned(),
                words: retrieval_words(status, &body, now),
            }
        })
        .collect();
    let summary = summary(rows.iter().map(|row| row.words.class));
    html(
        StatusCode::OK,
        &page(&state, &form.labels, rows, None).with_summary(&summary),
    )
}

/// The page that answers a refused form (401, 403, 429, 415, 413), saying
/// how to get access rather than showing a problem document.
pub fn refused(problem: &Problem) -> HttpResponse {
    let document = problem.document();
    let access = match problem {
        Problem::Unauthenticated(_) => format!(
            "Nothing was sent: the gateway does not know who you are. Sign in through your \
             observatory's single sign-on, or ask the gateway's operators for access. ({})",
            document.detail
        ),
        Problem::Forbidden { .. } => format!(
            "Nothing was sent: your access does not allow requesting action codes. Ask the \
             gateway's operators for it. ({})",
            document.detail
        ),
        Problem::CrossOrigin => {
            "Nothing was sent: the form was sent from another site. Open this page from the \
             gateway's own address and try again."
                .to_owned()
        }
        _ => format!("Nothing was sent. {}", document.detail),
    };
    let body = Page {
        version: &VERSION,
        labels: "",
        max_labels: 0,
        summary: String::new(),
        quota: String::new(),
        rows: Vec::new(),
        access: Some(access),
    };
    let mut response = html(actix_web::ResponseError::status_code(problem), &body);
    if let Some(seconds) = problem.retry_after().map(|after| after.as_secs().max(1))
        && let Ok(value) = HeaderValue::try_from(seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The labels pasted: separated by whitespace, commas or semicolons.
pub fn split_labels(text: &str) -> Vec<&str> {
    text.split(['\n', '\r', ' ', '\t', ',', ';'])
        .filter(|part| !part.is_empty())
        .collect()
}

/// What a retrieval's item says, in words: the one place a result becomes a
/// sentence (`retrievalWords` in `static/page.js` says the same).
pub fn retrieval_words(status: u16, body: &Value, now: SystemTime) -> Words {
    let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("?");
    if status == 200 {
        return match text("status") {
            "sent" => Words::new("sent")
                .text("Sent: the MPC will email the action code. A resend is possible after ")
                .time(body, "resend_available_at")
                .text("."),
            _ => Words::new("already")
                .text("Already requested at ")
                .time(body, "requested_at")
                .text("; a resend is possible after ")
                .time(body, "resend_available_at")
                .text("."),
        };
    }
    let after = body
        .get("retry_after_seconds")
        .and_then(Value::as_u64)
        .map(|seconds| now + Duration::from_secs(seconds));
    match (text("type"), after) {
        ("urn:mpc-gateway:invalid-label", _) => {
            Words::new("invalid").text(format!("Invalid, not sent: {}.", text("reason")))
        }
        ("urn:mpc-gateway:upstream-rejected", _) => {
            Words::new("refused").text(format!("Refused by the MPC: {}", text("detail")))
        }
        ("urn:mpc-gateway:quota-exceeded", Some(at)) => {
            let why = match text("limit") {
                "requests_per_minute" => "you sent too many requests in the last minute",
                _ => "your quota of labels sent to the MPC is used up for now",
            };
            Words::new("refused")
                .text(format!("Not sent: {why}. Try again after "))
                .at(at)
                .text(".")
        }
        // Their detail says whether the MPC may still send the email.
        ("urn:mpc-gateway:upstream-timeout" | "urn:mpc-gateway:upstream-error", _) => {
            Words::new("refused").text(text("detail"))
        }
        ("urn:mpc-gateway:upstream-throttled", _) => Words::new("refused")
            .text("Not sent: the MPC asked the gateway to wait until ")
            .time(body, "paused_until")
            .text(
                " before sending it anything, so nothing was sent; this says nothing about the \
                 label. Try again after that time.",
            ),
        _ => Words::new("refused").text(format!("Not sent: {}", text("detail"))),
    }
}

/// The line above the table once labels are handled, from their rows' classes.
fn summary<'a>(classes: impl Iterator<Item = &'a str>) -> String {
    let (mut total, mut sent, mut already, mut invalid) = (0, 0, 0, 0);
    for class in classes {
        total += 1;
        match class {
            "sent" => sent += 1,
            "already" => already += 1,
            "invalid" => invalid += 1,
            _ => {}
        }
    }
    let not_sent = total - sent - already - invalid;
    let counts: Vec<String> = [
        (sent, "sent now"),
        (already, "already requested"),
        (invalid, "invalid"),
        (not_sent, "not sent"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, words)| format!("{count} {words}"))
    .collect();
    format!(
        "{total} label{} handled: {}.",
        if total == 1 { "" } else { "s" },
        counts.join(", ")
    )
}

/// The empty page.
fn page<'a>(state: &AppState, labels: &'a str, rows: Vec<Row>, access: Option<String>) -> Page<'a> {
    Page {
        version: &VERSION,
        labels,
        max_labels: state.max_batch_labels,
        summary: String::new(),
        quota: String::new(),
        rows,
        access,
    }
}

impl Page<'_> {
    fn with_summary(mut self, summary: &str) -> Self {
        summary.clone_into(&mut self.summary);
        self
    }
}

/// The form's body: declared as a form (415), within the batch's size (413).
async fn read_form(
    req: &HttpRequest,
    payload: web::Payload,
    max_labels: usize,
) -> Result<Form, Problem> {
    let declared = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = declared.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case(FORM) {
        return Err(Problem::UnsupportedMediaType(format!(
            "The form must be sent as {FORM}"
        )));
    }
    // Percent-encoding may triple each byte of a label.
    let limit = max_labels.saturating_mul(crate::config::BATCH_BYTES_PER_LABEL * 3);
    let bytes = read_body(req, payload, limit).await?;
    serde_urlencoded::from_bytes(&bytes)
        .map_err(|error| Problem::MalformedRequest(error.to_string()))
}

/// An HTML answer with the page's security headers.
fn html(status: StatusCode, page: &Page<'_>) -> HttpResponse {
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            return actix_web::ResponseError::error_response(&Problem::Internal(error.to_string()));
        }
    };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        // Not `no-referrer`: under it a browser sends the form's POST with
        // `Origin: null`, which the cross-origin check refuses.
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_split_on_every_separator() {
        assert_eq!(
            split_labels("A10cnQO\nA10cnQP\r\n A10cnQQ,A10cnQR;\tA10cnQS;;"),
            ["A10cnQO", "A10cnQP", "A10cnQQ", "A10cnQR", "A10cnQS"]
        );
        assert!(split_labels(" \n,;").is_empty());
    }

    /// The words as one line, moments as their RFC 3339 text in brackets.
    fn plain(words: &Words) -> String {
        words
            .parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Time(at) => format!("[{at}]"),
            })
            .collect()
    }

    #[test]
    fn answers_read_as_sentences_with_their_moments_apart() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_665_600);
        let sent = retrieval_words(
            200,
            &serde_json::json!({"status": "sent", "resend_available_at": "2026-11-26T05:00:00Z"}),
            now,
        );
        assert_eq!(sent.class, "sent");
        assert_eq!(
            plain(&sent),
            "Sent: the MPC will email the action code. A resend is possible after \
             [2026-11-26T05:00:00Z]."
        );
        let already = retrieval_words(
            200,
            &serde_json::json!({"status": "already_requested", "requested_at": "2026-11-26T04:00:00Z",
                                "resend_available_at": "garbled"}),
            now,
        );
        assert_eq!(already.class, "already");
        assert_eq!(
            plain(&already),
            "Already requested at [2026-11-26T04:00:00Z]; a resend is possible after an \
             unknown time."
        );
    }

    #[test]
    fn quota_refusals_say_when_in_words_without_config_keys() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_665_600);
        for (limit, why) in [
            ("upstream_per_hour", "your quota of labels sent to the MPC"),
            (
                "requests_per_minute",
                "too many requests in the last minute",
            ),
        ] {
            let body = serde_json::json!({"type": "urn:mpc-gateway:quota-exceeded",
                "limit": limit, "retry_after_seconds": 90,
                "detail": format!("Your {limit} limit is used up; try again in 90 s.")});
            let words = plain(&retrieval_words(429, &body, now));
            assert!(words.contains(why), "{words}");
            assert!(
                words.ends_with("Try again after [2026-11-26T04:01:30Z]."),
                "{words}"
            );
            assert!(!words.contains(limit), "{words}");
        }
    }

    #[test]
    fn an_answer_that_may_still_bring_an_email_is_not_called_not_sent() {
        let detail = "The MPC did not answer in time, so it may still email the action code";
        let words = retrieval_words(
            504,
            &serde_json::json!({"type": "urn:mpc-gateway:upstream-timeout", "detail": detail}),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(plain(&words), detail);
        assert_eq!(words.class, "refused");
    }

    #[test]
    fn a_refusal_by_the_mpc_says_who_refused() {
        let words = retrieval_words(
            404,
            &serde_json::json!({"type": "urn:mpc-gateway:upstream-rejected",
                                "detail": "The MPC answered 404 for this label."}),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            plain(&words),
            "Refused by the MPC: The MPC answered 404 for this label."
        );
        assert_eq!(words.class, "refused");
    }

    #[test]
    fn moments_without_javascript_read_in_utc() {
        let at = Timestamp::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_665_600));
        assert_eq!(Part::utc(&at), "2026-11-26 04:00:00 UTC");
    }

    #[test]
    fn the_summary_counts_each_kind_of_result() {
        assert_eq!(
            summary(["sent", "already", "sent", "invalid", "refused"].into_iter()),
            "5 labels handled: 2 sent now, 1 already requested, 1 invalid, 1 not sent."
        );
        assert_eq!(
            summary(["already"].into_iter()),
            "1 label handled: 1 already requested."
        );
    }

    #[test]
    fn hostile_labels_are_escaped() {
        let body = Page {
            version: "v",
            labels: "<script>alert(1)</script>",
            max_labels: 1,
            summary: String::new(),
            quota: String::new(),
            rows: vec![Row {
                label: "<img src=x>".to_owned(),
                words: Words::new("invalid").text("\"&"),
            }],
            access: None,
        }
        .render()
        .unwrap();
        assert!(!body.contains("<script>alert"), "{body}");
        assert!(!body.contains("<img src=x>"), "{body}");
        assert!(
            body.contains("&#60;script&#62;") || body.contains("&lt;script&gt;"),
            "{body}"
        );
    }
}
