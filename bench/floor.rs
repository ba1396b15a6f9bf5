//! The floor: a bare actix-web server answering the retrieve POST with a
//! fixed JSON body, one worker. What the framework itself costs on this
//! machine, and the upstream for the gateway's miss path in `bench/run.sh`.
//! `cargo run --release --example floor -- 127.0.0.1:18400`

use actix_web::HttpServer;

mod floor_app;

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18400".to_owned());
    HttpServer::new(floor_app::app)
        .workers(1)
        .bind(address)?
        .run()
        .await
}
