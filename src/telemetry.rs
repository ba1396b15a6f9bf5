//! Logging set-up, request ids, and the per-request span and log line.

use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::audit::{AuditEntry, AuditLog};
use crate::config::{LogFormat, LogSettings};
use crate::identity::Identity;
use crate::label::{Label, LabelKind};
use crate::metrics::{Metrics, RetrievalDecision};
use crate::routes::{RETRIEVE_ROUTE, template_of};
use crate::startup::Readiness;

/// Header carrying the request id, in and out.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A subscriber writing to `writer` in the configured format and level;
/// `ansi` colours the pretty format for a terminal.
pub fn subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse_lossy(settings.level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match settings.format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.with_target(false).finish()),
    }
}

/// Installs the process-wide subscriber writing to stdout.
pub fn init(settings: &LogSettings) {
    // A second init (tests, embedding) keeps the first subscriber.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing::subscriber::set_global_default(subscriber(settings, std::io::stdout, ansi));
}

/// The id that ties a response to its log lines, kept as the header value
/// it is sent back as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's id when it is well-formed, else a fresh one.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        value
            .filter(|v| v.to_str().is_ok_and(Self::is_acceptable))
            .map(|v| Self(v.clone()))
            .unwrap_or_else(Self::generate)
    }

    /// A new random id.
    pub fn generate() -> Self {
        let mut text = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        Self(HeaderValue::from_str(text).expect("a UUID is a valid header value"))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        // Both constructors hold visible ASCII only.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the `X-Request-Id` response header.
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }

    fn is_acceptable(value: &str) -> bool {
        (1..=128).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }
}

/// Middleware: request id in and out, one span and one log line per request.
///
/// The span carries what is known on arrival (request id, method, route), so
/// every line logged during the request has it; what is learnt later (user,
/// label kind, outcome) goes on the closing line. Recording it into the span
/// instead would make the JSON format re-read and re-write the span's fields
/// at every record, which cost more than the rest of a remembered answer.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let readiness = req.app_data::<web::Data<Readiness>>().cloned();
    let _active = readiness.as_ref().map(|readiness| readiness.enter());
    let request_id = RequestId::from_header(req.headers().get(X_REQUEST_ID));
    let route = template_of(req.request());
    let span = tracing::info_span!(
        "request",
        request_id = request_id.as_str(),
        method = %req.method(),
        route,
    );
    let method = req.method().clone();

    // Handlers and extractors turn their errors into responses; only a failing
    // middleware below this one could return `Err`, and none does.
    let mut response = tracing::Instrument::instrument(next.call(req), span.clone())
        .await?
        .map_into_boxed_body();
    response
        .headers_mut()
        .insert(X_REQUEST_ID, request_id.header_value());

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    {
        // Who asked and for which label, as the handlers left them.
        let extensions = response.request().extensions();
        let user = extensions.get::<Identity>().map(Identity::user);
        let label = extensions.get::<Label>();
        let outcome = observe(
            &response,
            route,
            &method,
            request_id.as_str(),
            elapsed,
            user,
            label,
        );
        let label_kind = label.map(|label| label.kind().as_str());
        span.in_scope(|| {
            if response.status().is_server_error() {
                tracing::warn!(
                    status,
                    latency_ms,
                    user,
                    label_kind,
                    outcome,
                    "request finished"
                );
            } else {
                tracing::info!(
                    status,
                    latency_ms,
                    user,
                    label_kind,
                    outcome,
                    "request finished"
                );
            }
        });
    }
    Ok(response)
}

/// Metrics for every request; for retrieve requests also the outcome, in the
/// audit trail and returned for the request's log line.
fn observe(
    response: &ServiceResponse<BoxBody>,
    route: &str,
    method: &Method,
    request_id: &str,
    elapsed: Duration,
    user: Option<&str>,
    label: Option<&Label>,
) -> Option<&'static str> {
    let request = response.request();
    let metrics = request.app_data::<web::Data<Metrics>>()?;
    metrics
        .route(route)
        .observe(method, response.status().as_u16(), elapsed);
    if route != RETRIEVE_ROUTE {
        return None;
    }
    let decision = response
        .response()
        .extensions()
        .get::<RetrievalDecision>()
        .copied()?;
    let kind = label.map(Label::kind);
    metrics.count_retrieval(decision.outcome, kind);
    if let Some(audit) = request
        .app_data::<web::Data<AuditLog>>()
        .filter(|audit| audit.is_enabled())
    {
        audit.record(&AuditEntry {
            timestamp: AuditEntry::now(),
            request_id,
            user,
            label: label.map(Label::as_str),
            label_kind: kind.map_or("none", LabelKind::as_str),
            outcome: decision.outcome.as_str(),
            upstream_status: decision.upstream_status,
            email_may_have_been_triggered: decision.may_have_emailed,
            simulated: audit.is_simulated(),
        });
    }
    Some(decision.outcome.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> RequestId {
        RequestId::from_header(Some(&HeaderValue::from_str(value).unwrap()))
    }

    #[test]
    fn well_formed_ids_are_kept() {
        for value in ["a", "req-1_2.3:4", &"x".repeat(128)] {
            assert_eq!(id(value).as_str(), value);
        }
    }

    #[test]
    fn bad_ids_are_replaced() {
        for value in ["", "has space", "semi;colon", &"x".repeat(129), "ünï"] {
            let replaced =
                RequestId::from_header(HeaderValue::from_bytes(value.as_bytes()).ok().as_ref());
            assert_ne!(replaced.as_str(), value);
            assert_eq!(replaced.as_str().len(), 36);
        }
    }

    #[test]
    fn missing_id_is_generated() {
        assert_ne!(RequestId::from_header(None), RequestId::from_header(None));
    }
}
