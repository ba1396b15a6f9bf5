//! The stand-in MPC for the demo, the tests and the benches: an actix-web
//! server on a free loopback port that answers the retrieve POST by rules on
//! the label, optionally counting the calls per label. It never sends email.
//!
//! ```no_run
//! # use mpc_action_gateway::fake_mpc::{Answer, FakeMpc};
//! # use serde_json::json;
//! let (address, server) = FakeMpc::answering(Answer::json(200, |_| json!({"message": "queued"})))
//!     .when(|label| label.starts_with('R'), Answer::json(404, |_| json!({"error": "unknown"})))
//!     .start()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::Value;

use crate::http::AppFactory;

/// The path the fake MPC answers on: the MPC's own.
pub const PATH: &str = "/api/action-codes/retrieve";

/// The body of a call: the label, as the gateway forwards it.
#[derive(Deserialize)]
struct Call {
    label: String,
}

/// How loudly an answer is logged.
#[derive(Clone, Copy)]
enum Loudness {
    Info,
    Warn,
}

/// One answer of the fake MPC: a status, headers, a JSON body made from
/// the label (or none), a delay before it, and what to log when it is given.
#[derive(Clone, Copy)]
pub struct Answer {
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
    body: Option<fn(&str) -> Value>,
    after: Duration,
    note: Option<(Loudness, &'static str)>,
}

impl Answer {
    /// `status` with the JSON body `body(label)`.
    pub fn json(status: u16, body: fn(&str) -> Value) -> Self {
        Self {
            body: Some(body),
            ..Self::empty(status)
        }
    }

    /// `status` with an empty body.
    pub fn empty(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("a valid HTTP status"),
            headers: &[],
            body: None,
            after: Duration::ZERO,
            note: None,
        }
    }

    /// The same answer with `headers` (name, value), e.g. `Retry-After`.
    pub fn with_headers(self, headers: &'static [(&'static str, &'static str)]) -> Self {
        Self { headers, ..self }
    }

    /// The same answer, given `delay` after the call arrives.
    pub fn after(self, delay: Duration) -> Self {
        Self {
            after: delay,
            ..self
        }
    }

    /// The same answer, logged at info with `note` and the label.
    pub fn logged(self, note: &'static str) -> Self {
        Self {
            note: Some((Loudness::Info, note)),
            ..self
        }
    }

    /// The same answer, logged as a warning with `note` and the label.
    pub fn warned(self, note: &'static str) -> Self {
        Self {
            note: Some((Loudness::Warn, note)),
            ..self
        }
    }

    /// Waits, logs, and answers the call for `label`.
    async fn give(&self, label: &str) -> HttpResponse {
        match self.note {
            Some((Loudness::Info, note)) => tracing::info!(%label, "simulated MPC: {note}"),
            Some((Loudness::Warn, note)) => tracing::warn!(%label, "simulated MPC: {note}"),
            None => {}
        }
        if !self.after.is_zero() {
            tokio::time::sleep(self.after).await;
        }
        let mut response = HttpResponse::build(self.status);
        for header in self.headers {
            response.insert_header(*header);
        }
        match self.body {
            Some(body) => response.json(body(label)),
            None => response.finish(),
        }
    }
}

/// The calls a fake MPC received, per label; shared by clones.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<Mutex<HashMap<String, u32>>>);

impl Calls {
    /// A copy of the count per label so far.
    pub fn per_label(&self) -> HashMap<String, u32> {
        self.0.lock().expect("no counter panics").clone()
    }

    /// Counts one call for `label`.
    fn count(&self, label: &str) {
        let mut calls = self.0.lock().expect("no counter panics");
        *calls.entry(label.to_owned()).or_default() += 1;
    }
}

/// Which labels get which answer.
#[derive(Clone, Copy)]
struct Rule {
    applies: fn(&str) -> bool,
    answer: Answer,
}

/// A fake MPC under construction: its rules, tried in order, the answer
/// when none applies, and the counter it reports calls to.
#[derive(Clone)]
pub struct FakeMpc {
    rules: Vec<Rule>,
    otherwise: Answer,
    calls: Option<Calls>,
}

impl FakeMpc {
    /// A fake MPC giving `otherwise` to every label no rule is for.
    pub fn answering(otherwise: Answer) -> Self {
        Self {
            rules: Vec::new(),
            otherwise,
            calls: None,
        }
    }

    /// Gives `answer` to the labels `applies` to, unless an earlier rule did.
    pub fn when(mut self, applies: fn(&str) -> bool, answer: Answer) -> Self {
        self.rules.push(Rule { applies, answer });
        self
    }

    /// Counts every call in `calls`, per label.
    pub fn counting(self, calls: Calls) -> Self {
        Self {
            calls: Some(calls),
            ..self
        }
    }

    /// The answer for `label`: the first rule's that applies, or `otherwise`.
    fn answer_for(&self, label: &str) -> &Answer {
        self.rules
            .iter()
            .find(|rule| (rule.applies)(label))
            .map_or(&self.otherwise, |rule| &rule.answer)
    }

    /// Binds a free loopback port and returns its address and the server,
    /// one worker, not yet running (await or spawn it), deaf to signals.
    pub fn start(self) -> std::io::Result<(SocketAddr, Server)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let fake = web::Data::new(self);
        let server = HttpServer::new(move || app(fake.clone()))
            .workers(1)
            .disable_signals()
            .listen(listener)?
            .run();
        Ok((address, server))
    }
}

/// The fake's one route.
fn app(fake: web::Data<FakeMpc>) -> App<impl AppFactory> {
    App::new()
        .app_data(fake)
        .route(PATH, web::post().to(retrieve))
}

async fn retrieve(call: web::Json<Call>, fake: web::Data<FakeMpc>) -> HttpResponse {
    let label = call.into_inner().label;
    if let Some(calls) = &fake.calls {
        calls.count(&label);
    }
    fake.answer_for(&label).give(&label).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::{TestRequest, call_service, init_service, read_body};
    use serde_json::json;

    /// Status and body of the fake's answer to `label`.
    async fn ask(fake: FakeMpc, labels: &[&str]) -> Vec<(u16, String)> {
        let service = init_service(app(web::Data::new(fake))).await;
        let mut answers = Vec::new();
        for label in labels {
            let request = TestRequest::post()
                .uri(PATH)
                .set_json(json!({ "label": label }))
                .to_request();
            let response = call_service(&service, request).await;
            let status = response.status().as_u16();
            let body = String::from_utf8(read_body(response).await.to_vec()).unwrap();
            answers.push((status, body));
        }
        answers
    }

    #[actix_web::test]
    async fn the_first_rule_that_applies_answers_and_otherwise_the_rest() {
        let fake = FakeMpc::answering(Answer::json(404, |label| json!({ "unknown": label })))
            .when(|label| label.starts_with('F'), Answer::empty(503))
            .when(|label| label.starts_with("FA"), Answer::empty(500))
            .when(|label| label == "A10cnQO", Answer::json(200, |_| json!({})));
        let answers = ask(fake, &["FAIL1", "A10cnQO", "B1"]).await;
        assert_eq!(
            answers,
            [
                (503, String::new()),
                (200, "{}".to_owned()),
                (404, r#"{"unknown":"B1"}"#.to_owned()),
            ]
        );
    }

    #[actix_web::test]
    async fn an_answer_carries_its_headers() {
        let fake = FakeMpc::answering(
            Answer::empty(429).with_headers(&[("retry-after", "5"), ("x-other", "1")]),
        );
        let service = init_service(app(web::Data::new(fake))).await;
        let request = TestRequest::post()
            .uri(PATH)
            .set_json(json!({ "label": "BUSY1" }))
            .to_request();
        let response = call_service(&service, request).await;
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("retry-after").unwrap(), "5");
        assert_eq!(response.headers().get("x-other").unwrap(), "1");
    }

    #[actix_web::test]
    async fn calls_are_counted_per_label_whatever_the_answer() {
        let calls = Calls::default();
        let fake = FakeMpc::answering(Answer::empty(200))
            .when(|label| label.starts_with('F'), Answer::empty(500))
            .counting(calls.clone());
        ask(fake, &["A1", "F1", "A1"]).await;
        assert_eq!(
            calls.per_label(),
            HashMap::from([("A1".to_owned(), 2), ("F1".to_owned(), 1)])
        );
    }

    #[actix_web::test]
    async fn a_delayed_answer_waits_before_it_is_given() {
        let fake = FakeMpc::answering(Answer::empty(200).after(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        ask(fake, &["A1"]).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
