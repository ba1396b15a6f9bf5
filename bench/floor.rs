//! The floor: a bare actix-web server answering the retrieve POST with a
//! fixed JSON body, one worker. What the framework itself costs on this
//! machine, and the upstream for the gateway's miss path in `bench/run.sh`.
//!
//! `cargo run --release --example floor -- 127.0.0.1:18400 [ANSWER]`
//!
//! With `ANSWER`, a file of `curl --include` output, it answers with that
//! response's status, headers and body instead (`bench/run.sh` passes it the
//! gateway's own hit and invalid-label answers).

use actix_web::HttpServer;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::web::Bytes;

mod floor_app;

/// Reads `curl --include` output: a status line, header lines, a blank
/// line, the body.
fn from_http(text: &str) -> Option<floor_app::Answer> {
    let text = text.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n")?;
    let mut lines = head.lines();
    // `HTTP/1.1 422 Unprocessable Entity`
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = HeaderName::try_from(name.trim()).ok()?;
            let value = HeaderValue::try_from(value.trim()).ok()?;
            Some((name, value))
        })
        .collect();
    Some(floor_app::Answer::new(
        status,
        headers,
        Bytes::from(body.to_owned()),
    ))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:18400".to_owned());
    let server = match args.next() {
        None => HttpServer::new(floor_app::app)
            .workers(1)
            .bind(address)?
            .run(),
        Some(path) => {
            let answer = from_http(&std::fs::read_to_string(&path)?)
                .ok_or_else(|| std::io::Error::other(format!("{path} is not an HTTP response")))?;
            HttpServer::new(move || floor_app::app_answering(answer.clone()))
                .workers(1)
                .bind(address)?
                .run()
        }
    };
    server.await
}
