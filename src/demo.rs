//! `mpc-action-gateway demo`: the gateway as configured, in front of a
//! simulated MPC that never sends an email. It knows the example labels of
//! the MPC's documentation, refuses others, and fails on request:
//! a label starting with `FAIL` gets a 503, one starting with `SLOW` an
//! answer that arrives after the gateway's timeout.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::json;

use crate::config::{OptionalPath, Settings};

/// Labels the simulated MPC knows as real submissions.
pub const KNOWN_LABELS: [&str; 6] = [
    "A10cnQO",
    "ABC12345",
    "00000DwbEz",
    "2024-05-02T21:03:35.001_0000FzZw",
    "2024-05-02T21:03:35.001_0000FzZw_01",
    "2024-01-15T10:30:00.123_ABCD1234",
];

#[derive(Deserialize)]
struct Request {
    label: String,
}

struct Simulation {
    slow_for: Duration,
}

async fn retrieve(request: web::Json<Request>, simulation: web::Data<Simulation>) -> HttpResponse {
    let label = request.into_inner().label;
    if label.starts_with("FAIL") {
        tracing::warn!(%label, "simulated MPC: failing with 503 as asked");
        return HttpResponse::ServiceUnavailable()
            .json(json!({"error": "simulated failure (label starts with FAIL)"}));
    }
    if label.starts_with("SLOW") {
        tracing::warn!(%label, "simulated MPC: answering too late, as asked");
        tokio::time::sleep(simulation.slow_for).await;
    }
    if KNOWN_LABELS.contains(&label.as_str()) || label.starts_with("SLOW") {
        tracing::info!(
            %label,
            "simulated MPC: would email the action code to the submitter (no email sent)"
        );
        HttpResponse::Ok().json(json!({
            "message": "The action code has been sent to the original submitter (simulated: no email was sent)."
        }))
    } else {
        tracing::info!(%label, "simulated MPC: no such submission");
        HttpResponse::NotFound().json(json!({
            "error": format!("No submission found for label {label} (simulated)."),
            "known_labels": KNOWN_LABELS,
        }))
    }
}

/// Starts the simulated MPC on a free loopback port.
pub fn simulated_mpc(slow_for: Duration) -> std::io::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let simulation = web::Data::new(Simulation { slow_for });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(simulation.clone())
            .route("/api/action-codes/retrieve", web::post().to(retrieve))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((address, server))
}

/// The settings as configured, pointed at the simulated MPC at `mpc`, with
/// anonymous access and nothing written to disk.
pub fn demo_settings(mut settings: Settings, mpc: SocketAddr) -> Settings {
    let base = format!("http://{mpc}");
    settings.upstream.base_url = base.parse().expect("a socket address makes a valid URL");
    settings.upstream.path = "/api/action-codes/retrieve".to_owned();
    settings.auth.allow_anonymous = true;
    settings.dedup.state_file = OptionalPath::default();
    settings
}
