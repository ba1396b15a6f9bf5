//! The floor's app: a bare actix-web handler answering the retrieve POST with
//! a fixed JSON body. Shared by the floor server (`bench/floor.rs`) and the
//! in-process benchmark (`bench/app.rs`).

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpResponse, web};
use mpc_action_gateway::http::AppFactory;

/// The MPC's path, answered like the MPC answers it.
pub const PATH: &str = "/api/action-codes/retrieve";

async fn retrieve(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"message":"queued"}"#)
}

/// The floor: one route, no middleware.
pub fn app() -> App<impl AppFactory> {
    App::new().route(PATH, web::post().to(retrieve))
}

/// A fixed answer copied from another server: its status, headers and body.
#[derive(Clone, Debug)]
pub struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: web::Bytes,
}

impl Answer {
    /// An answer with this status, these headers (but `Content-Length` and
    /// `Date`) and body.
    pub fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: web::Bytes,
    ) -> Self {
        let headers = headers
            .into_iter()
            .filter(|(name, _)| name != "content-length" && name != "date")
            .collect();
        Self {
            status,
            headers,
            body,
        }
    }
}

async fn copied(_body: web::Bytes, answer: web::Data<Answer>) -> HttpResponse {
    let mut response = HttpResponse::build(answer.status);
    for header in &answer.headers {
        response.insert_header(header.clone());
    }
    response.body(answer.body.clone())
}

/// The floor answering with `answer` instead: what an answer of that size
/// and those headers costs the framework and the kernel, without any work.
pub fn app_answering(answer: Answer) -> App<impl AppFactory> {
    App::new()
        .app_data(web::Data::new(answer))
        .route(PATH, web::post().to(copied))
}
