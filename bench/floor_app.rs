//! The floor's app: a bare actix-web handler answering the retrieve POST with
//! a fixed JSON body. Shared by the floor server (`bench/floor.rs`) and the
//! in-process benchmark (`bench/app.rs`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpResponse, web};

/// The MPC's path, answered like the MPC answers it.
pub const PATH: &str = "/api/action-codes/retrieve";

async fn retrieve(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"message":"queued"}"#)
}

/// The floor: one route, no middleware.
pub fn app() -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new().route(PATH, web::post().to(retrieve))
}
