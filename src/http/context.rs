//! The context of one HTTP request: its id, its span, its closing log line
//! and its HTTP metrics; the notes its handlers leave for that line.

use std::cell::{Cell, RefCell};
use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};

use crate::domain::label::LabelKind;
use crate::domain::outcome::RetrievalOutcome;
use crate::http::listener::ConnectionWatch;
use crate::http::routes::template_of;
use crate::http::state::Readiness;
use crate::observe::metrics::Metrics;

/// `X-Request-Id`: set by the caller (when well-formed) or generated.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// What a request's handlers learnt, for its closing log line: who asked,
/// the label's kind and what the request came to.
#[derive(Clone)]
pub struct Notes(Rc<Noted>);

struct Noted {
    request_id: RequestId,
    user: RefCell<Option<Arc<str>>>,
    label_kind: Cell<Option<LabelKind>>,
    outcome: Cell<Option<RetrievalOutcome>>,
}

impl Notes {
    fn new(request_id: RequestId) -> Self {
        Self(Rc::new(Noted {
            request_id,
            user: RefCell::new(None),
            label_kind: Cell::new(None),
            outcome: Cell::new(None),
        }))
    }

    /// The request's id.
    pub fn request_id(&self) -> &str {
        self.0.request_id.as_str()
    }

    /// Notes who asked.
    pub fn user(&self, user: Arc<str>) {
        self.0.user.replace(Some(user));
    }

    /// Notes the kind of the label the request is about.
    pub fn label_kind(&self, kind: LabelKind) {
        self.0.label_kind.set(Some(kind));
    }

    /// Notes what the request came to.
    pub fn outcome(&self, outcome: RetrievalOutcome) {
        self.0.outcome.set(Some(outcome));
    }
}

impl FromRequest for Notes {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Outside `request_context` (unit tests of a handler) notes go nowhere.
        ready(Ok(req
            .extensions()
            .get::<Notes>()
            .cloned()
            .unwrap_or_else(|| Notes::new(RequestId::generate()))))
    }
}

/// Middleware: request id in and out, one span and one log line per request.
///
/// The span carries what is known on arrival (request id, method, route), so
/// every line logged during the request has it; what is learnt later (user,
/// label kind, outcome) goes on the closing line, from the request's
/// [`Notes`]. Recording it into the span instead would make the JSON format
/// re-read and re-write the span's fields at every record, which cost more
/// than the rest of a remembered answer.
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
    let notes = Notes::new(RequestId::from_header(req.headers().get(X_REQUEST_ID)));
    req.extensions_mut().insert(notes.clone());
    let route = template_of(req.request());
    let span = tracing::info_span!(
        "request",
        request_id = notes.request_id(),
        method = %req.method(),
        route,
    );
    let method = req.method().clone();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();

    // Handlers and extractors turn their errors into responses; only a failing
    // middleware below this one could return `Err`, and none does.
    let mut response = tracing::Instrument::instrument(next.call(req), span.clone())
        .await?
        .map_into_boxed_body();
    response
        .headers_mut()
        .insert(X_REQUEST_ID, notes.0.request_id.header_value());

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(metrics) = metrics {
        metrics.route(route).observe(&method, status, elapsed);
    }
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let user = notes.0.user.borrow();
    let user = user.as_deref();
    let label_kind = notes.0.label_kind.get().map(LabelKind::as_str);
    let outcome = notes.0.outcome.get().map(RetrievalOutcome::as_str);
    // tracing's levels are fixed per call site: one site per level.
    macro_rules! finished {
        ($level:expr) => {
            tracing::event!(
                $level,
                status,
                latency_ms,
                user,
                label_kind,
                outcome,
                "request finished"
            )
        };
    }
    span.in_scope(|| {
        if response.status().is_server_error() {
            finished!(tracing::Level::WARN)
        } else {
            finished!(tracing::Level::INFO)
        }
    });
    Ok(response)
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
