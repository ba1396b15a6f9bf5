//! Logging set-up, request ids, and the per-request span and log line.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::observe::audit::{AuditEntry, AuditLog};
use crate::clock::{Clock, MonotonicClock, nanos};
use crate::config::{LogFormat, LogLevel, LogSettings};
use crate::domain::identity::Identity;
use crate::domain::label::{Label, LabelKind};
use crate::http::listener::ConnectionWatch;
use crate::observe::metrics::{Metrics, RetrievalDecision};
use crate::http::routes::{RETRIEVE_ROUTE, template_of};
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
    reloadable_subscriber(settings, writer, ansi).0
}

/// Changes the level of a running subscriber (on a configuration reload).
pub type LevelHandle = Box<dyn Fn(&LogLevel) -> Result<(), String> + Send + Sync>;

/// Like [`subscriber`], with a handle that changes its level later.
pub fn reloadable_subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> (Box<dyn Subscriber + Send + Sync>, LevelHandle)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse_lossy(settings.level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // One shape of handle for both formats, whose builder types differ.
    macro_rules! with_level_handle {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let level: LevelHandle = Box::new(move |level: &LogLevel| {
                handle
                    .reload(EnvFilter::builder().parse_lossy(level.as_str()))
                    .map_err(|error| error.to_string())
            });
            (builder.finish().with(ClientErrors::new()), level)
        }};
    }
    match settings.format {
        LogFormat::Json => {
            let (subscriber, level) = with_level_handle!(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
            );
            (Box::new(subscriber), level)
        }
        LogFormat::Pretty => {
            let (subscriber, level) = with_level_handle!(builder.with_target(false));
            (Box::new(subscriber), level)
        }
    }
}

/// Where actix-http logs, at ERROR, each connection it drops over the
/// client's bytes (an unparsable or too large request head).
const ACTIX_DISPATCHER: &str = "actix_http::h1::dispatcher";

/// How that line starts; actix's other ERROR lines there are left alone.
const STREAM_ERROR: &str = "stream error: ";

/// At most one line per this long about requests the HTTP parser refused.
const CLIENT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Turns actix-http's per-connection "stream error" lines, which anyone can
/// cause, into rate-limited warnings that count the lines held back.
struct ClientErrors(LineLimit);

impl ClientErrors {
    fn new() -> Self {
        Self(LineLimit::new(
            Arc::new(MonotonicClock::default()),
            CLIENT_ERROR_LOG_EVERY,
        ))
    }
}

impl<S: Subscriber> Layer<S> for ClientErrors {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::ERROR || metadata.target() != ACTIX_DISPATCHER {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let Some(error) = message.0.strip_prefix(STREAM_ERROR) else {
            return true;
        };
        if let Some(held_back) = self.0.admit() {
            tracing::warn!(
                error,
                held_back,
                "refused a request the HTTP parser could not read (held_back: \
                 such lines not logged since the last)"
            );
        }
        false
    }
}

/// An event's message text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// Lets one line through per interval and counts the ones held back.
pub struct LineLimit {
    clock: Arc<dyn Clock>,
    every: u64,
    next: AtomicU64,
    held_back: AtomicU64,
}

impl LineLimit {
    /// One line per `every` on `clock`, the first at once.
    pub fn new(clock: Arc<dyn Clock>, every: Duration) -> Self {
        Self {
            clock,
            every: nanos(every),
            next: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now, with how many were held back since the last.
    pub fn admit(&self) -> Option<u64> {
        let now = nanos(self.clock.now());
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Installs the process-wide subscriber writing to stdout; returns the
/// handle to its level, or `None` when a subscriber was already installed
/// (tests, embedding), which is then kept.
pub fn init(settings: &LogSettings) -> Option<LevelHandle> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (subscriber, level) = reloadable_subscriber(settings, std::io::stdout, ansi);
    tracing::subscriber::set_global_default(subscriber)
        .ok()
        .map(|()| level)
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
    // The head has arrived whole: its connection's head clock stops.
    let _serving = req
        .conn_data::<ConnectionWatch>()
        .map(ConnectionWatch::serve);
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
    fn one_line_per_interval_counting_the_rest() {
        let clock = Arc::new(crate::clock::FakeClock::default());
        let limit = LineLimit::new(clock.clone(), Duration::from_secs(10));
        assert_eq!(limit.admit(), Some(0), "the first line at once");
        assert_eq!(limit.admit(), None);
        clock.advance(Duration::from_secs(9));
        assert_eq!(limit.admit(), None);
        clock.advance(Duration::from_secs(1));
        assert_eq!(limit.admit(), Some(2), "two held back");
        assert_eq!(limit.admit(), None);
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_level_handle_changes_what_a_running_subscriber_writes() {
        for format in [LogFormat::Json, LogFormat::Pretty] {
            let settings = LogSettings {
                format,
                level: "info".to_owned().try_into().unwrap(),
                audit_file: Default::default(),
            };
            let lines = Lines::default();
            let writer = lines.clone();
            let (subscriber, level) =
                reloadable_subscriber(&settings, move || writer.clone(), false);
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!("before the reload");
                level(&"debug".to_owned().try_into().unwrap()).unwrap();
                tracing::debug!("after the reload");
            });
            let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("before the reload"), "{format:?}: {text}");
            assert!(text.contains("after the reload"), "{format:?}: {text}");
        }
    }

    #[test]
    fn missing_id_is_generated() {
        assert_ne!(RequestId::from_header(None), RequestId::from_header(None));
    }
}
