//! The gateway's own cost per request, without the network: the real public
//! app (both middlewares, the handler, the response) called in-process,
//! against the floor's app called the same way. The ratio is what the
//! gateway adds in user space; `bench/run.sh` measures the whole server.

#[path = "floor_app.rs"]
mod floor_app;

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header;
use actix_web::test::{TestRequest, init_service};
use criterion::{Criterion, criterion_group, criterion_main};
use mpc_action_gateway::auth::key_digest;
use mpc_action_gateway::clock::SystemClock;
use mpc_action_gateway::config::Settings;
use mpc_action_gateway::dedup::Claim;
use mpc_action_gateway::domain::label::Label;
use mpc_action_gateway::domain::mpc_reply::Reply;
use mpc_action_gateway::domain::outcome::MpcAnswer;
use mpc_action_gateway::startup::Gateway;

const KEY: &str = "mpcgw_bench_key";
const REMEMBERED: &str = "2024-05-02T21:03:35.001_0000FzZw";
const INVALID: &str = "2024-02-30T21:03:35.001_0000FzZw";

fn settings() -> Settings {
    let contents = format!(
        "[auth]\nallow_anonymous = false\n\
         [[auth.keys]]\nuser = \"bench\"\nsha256 = \"{}\"\n\
         [quota.tiers.default]\nrequests_per_minute = 4000000000\n\
         upstream_per_hour = 1000000000\nupstream_burst = 1000000000\n\
         [log]\nlevel = \"warn\"\n",
        key_digest(KEY)
    );
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    Settings::load_from(Some(file.path()), Some(HashMap::new())).unwrap()
}

fn retrieve(label: &str) -> TestRequest {
    TestRequest::post()
        .uri(floor_app::PATH)
        .peer_addr(SocketAddr::from(([127, 0, 0, 1], 40000)))
        .insert_header((header::AUTHORIZATION, format!("Bearer {KEY}")))
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .set_payload(format!(r#"{{"label": "{label}"}}"#))
}

/// Calls `service` `iters` times with a fresh request each, consuming the body.
async fn drive<S, R, B>(service: &S, request: impl Fn() -> R, iters: u64) -> Duration
where
    S: Service<R, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let started = Instant::now();
    for _ in 0..iters {
        let response = service.call(request()).await.unwrap();
        black_box(actix_web::body::to_bytes(response.into_body()).await.ok());
    }
    started.elapsed()
}

fn per_request(c: &mut Criterion) {
    let system = actix_web::rt::System::new();
    let gateway = Gateway::new(&settings(), Arc::new(SystemClock)).unwrap();
    let claim = system.block_on(gateway.dedup().claim(&Label::parse(REMEMBERED).unwrap()));
    let Ok(Claim::Lead(lease)) = claim else {
        panic!("nothing is remembered yet");
    };
    let accepted = Ok(Reply::Accepted(MpcAnswer::with_json(
        200,
        &serde_json::json!({"message": "queued"}),
    )));
    let _ = system.block_on(lease.settle(&accepted, "bench".into()));
    let floor = system.block_on(init_service(floor_app::app()));
    let public = system.block_on(init_service(gateway.public_app()));
    for (label, status) in [(REMEMBERED, 200), (INVALID, 422)] {
        let response = system
            .block_on(public.call(retrieve(label).to_request()))
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{label}");
    }
    // The floor again, answering with the gateway's hit answer, byte for byte.
    let hit = system
        .block_on(public.call(retrieve(REMEMBERED).to_request()))
        .unwrap();
    let status = hit.status();
    let headers = hit
        .headers()
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let body = system
        .block_on(actix_web::body::to_bytes(hit.into_body()))
        .unwrap();
    let floor_answer = system.block_on(init_service(floor_app::app_answering(
        floor_app::Answer::new(status, headers, body),
    )));

    let mut group = c.benchmark_group("app");
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            system.block_on(drive(&floor, || retrieve(REMEMBERED).to_request(), iters))
        });
    });
    group.bench_function("floor_with_gateway_answer", |b| {
        b.iter_custom(|iters| {
            system.block_on(drive(
                &floor_answer,
                || retrieve(REMEMBERED).to_request(),
                iters,
            ))
        });
    });
    group.bench_function("gateway_hit", |b| {
        b.iter_custom(|iters| {
            system.block_on(drive(&public, || retrieve(REMEMBERED).to_request(), iters))
        });
    });
    group.bench_function("gateway_invalid", |b| {
        b.iter_custom(|iters| {
            system.block_on(drive(&public, || retrieve(INVALID).to_request(), iters))
        });
    });
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
