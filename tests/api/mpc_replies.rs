//! Every way an MPC call can end once the request may have been read: each
//! makes exactly one MPC call, and a repeat is answered from memory.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::ResponseTemplate;

use crate::helpers::mpc::{mpc_call, mpc_replying};
use crate::helpers::raw_mpc::{raw_mpc, reset_on_close};
use crate::helpers::{TestApp, assert_problem, spawn_app_with};

/// How the fake MPC ends the connection after reading the whole request.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// `shutdown(SHUT_RDWR)`: a FIN, no answer.
    Close,
    /// `SO_LINGER 0`: a TCP reset, no answer.
    Reset,
    /// Stops writing but keeps reading until the gateway gives up.
    HalfClose,
    /// A status line cut off halfway.
    MidHead,
    /// A `100 Continue` (never asked for), then a close.
    AfterContinue,
    /// A complete `302 Found`.
    Redirect,
    /// A complete head of a 200 whose body is cut off.
    MidBody,
}

async fn end(ending: Ending, mut stream: TcpStream) {
    let written = match ending {
        Ending::Close | Ending::Reset | Ending::HalfClose => "",
        Ending::MidHead => "HTTP/1.1 200 O",
        Ending::AfterContinue => "HTTP/1.1 100 Continue\r\n\r\n",
        Ending::Redirect => {
            "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
        }
        Ending::MidBody => {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"ok\":"
        }
    };
    let _ = stream.write_all(written.as_bytes()).await;
    let _ = stream.flush().await;
    match ending {
        Ending::Reset => drop(reset_on_close(stream)),
        Ending::HalfClose => {
            let _ = stream.shutdown().await;
            // Keep the read side open until the gateway closes its end.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
        Ending::Redirect => {
            // A complete answer on a kept-alive connection: hold it open.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
        _ => {
            let _ = stream
                .into_std()
                .unwrap()
                .shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A gateway in front of `address`, writing its audit trail into `audit`.
async fn app_against(address: &str, audit: &std::path::Path) -> TestApp {
    let (address, audit) = (address.to_owned(), audit.to_owned());
    spawn_app_with(move |settings| {
        settings.upstream.base_url = address.parse().unwrap();
        settings.upstream.timeout = Duration::from_secs(2);
        settings.upstream.connect_timeout = Duration::from_millis(500);
        settings.log.audit_file = audit.to_string_lossy().into_owned().into();
    })
    .await
}

fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The uncertain endings: remembered as "the MPC may have emailed".
async fn assert_uncertain_and_remembered(ending: Ending, result: &str) {
    let mpc = raw_mpc(move |stream| end(ending, stream)).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let app = app_against(&mpc.address, &audit).await;

    let first = app.retrieve("A10cnQO").await;
    assert!(
        first.headers().contains_key("retry-after"),
        "{ending:?}: a repeat is refused for a while"
    );
    let body = assert_problem(first, 502, "urn:mpc-gateway:upstream-error").await;
    assert!(
        body["detail"].as_str().unwrap().contains("may still email"),
        "{ending:?}: {body}"
    );
    let second = app.retrieve("A10cnQO").await;
    let cache_status = second.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache_status.contains("; hit"), "{ending:?}: {cache_status}");
    assert_problem(second, 502, "urn:mpc-gateway:upstream-error").await;

    assert_eq!(mpc.requests(), 1, "{ending:?}: one MPC call, never retried");
    let series = format!("mpc_gateway_upstream_requests_total{{result=\"{result}\"}}");
    assert_eq!(app.metric(&series).await, 1.0, "{ending:?}");
    assert_eq!(
        app.metric("mpc_gateway_upstream_requests_total{result=\"connect_error\"}")
            .await,
        0.0,
        "{ending:?}: not taken for a connection never made"
    );
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 2, "{ending:?}");
    assert_eq!(lines[0]["outcome"], "upstream_error", "{ending:?}");
    assert_eq!(
        lines[0]["email_may_have_been_triggered"], true,
        "{ending:?}: the audit trail says an email may have gone out"
    );
    assert_eq!(lines[1]["outcome"], "deduplicated", "{ending:?}");
    assert_eq!(lines[1]["email_may_have_been_triggered"], false);
}

#[tokio::test]
async fn a_close_after_reading_is_uncertain_and_never_retried() {
    assert_uncertain_and_remembered(Ending::Close, "connection_lost").await;
}

#[tokio::test]
async fn a_reset_after_reading_is_uncertain_and_never_retried() {
    assert_uncertain_and_remembered(Ending::Reset, "connection_lost").await;
}

#[tokio::test]
async fn a_half_close_after_reading_is_uncertain_and_never_retried() {
    assert_uncertain_and_remembered(Ending::HalfClose, "connection_lost").await;
}

#[tokio::test]
async fn a_close_mid_head_is_uncertain_and_never_retried() {
    assert_uncertain_and_remembered(Ending::MidHead, "connection_lost").await;
}

#[tokio::test]
async fn a_close_after_100_continue_is_uncertain_and_never_retried() {
    assert_uncertain_and_remembered(Ending::AfterContinue, "other_status").await;
}

#[tokio::test]
async fn a_3xx_answer_is_uncertain_and_never_followed() {
    assert_uncertain_and_remembered(Ending::Redirect, "other_status").await;
}

#[tokio::test]
async fn a_200_cut_off_mid_body_is_acceptance_and_remembered() {
    let mpc = raw_mpc(|stream| end(Ending::MidBody, stream)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app_against(&mpc.address, &dir.path().join("audit.jsonl")).await;

    let first: Value = app.retrieve("A10cnQO").await.json().await.unwrap();
    assert_eq!(first["status"], "sent", "{first}");
    assert_eq!(first["upstream"], json!({"status": 200, "body": null}));
    let second: Value = app.retrieve("A10cnQO").await.json().await.unwrap();
    assert_eq!(second["status"], "already_requested");
    assert_eq!(second["requested_at"], first["requested_at"]);
    assert_eq!(mpc.requests(), 1);
}

/// A JSON body of exactly `size` bytes: `{"pad":"xxx…"}`.
fn json_of_size(size: usize) -> Vec<u8> {
    let overhead = br#"{"pad":""}"#.len();
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(size - overhead));
    assert_eq!(body.len(), size);
    body.into_bytes()
}

#[tokio::test]
async fn an_mpc_body_is_kept_up_to_4_kib_and_dropped_above() {
    let app = spawn_app_with(|_| {}).await;
    for (label, size) in [("KEPT0001", 4096), ("DROPPED1", 4097)] {
        mpc_call()
            .and(wiremock::matchers::body_json(json!({"label": label})))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/json")
                    .set_body_bytes(json_of_size(size)),
            )
            .expect(1)
            .mount(&app.mpc)
            .await;
    }

    for via in ["fresh", "remembered"] {
        let kept: Value = app.retrieve("KEPT0001").await.json().await.unwrap();
        assert_eq!(
            kept["upstream"]["body"]["pad"].as_str().map(str::len),
            Some(4096 - 10),
            "{via}: a 4096-byte JSON body is kept"
        );
        let dropped: Value = app.retrieve("DROPPED1").await.json().await.unwrap();
        assert_eq!(
            dropped["status"],
            if via == "fresh" {
                "sent"
            } else {
                "already_requested"
            }
        );
        assert_eq!(
            dropped["upstream"],
            json!({"status": 200, "body": null}),
            "{via}: a 4097-byte JSON body is not kept"
        );
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_null_whatever_its_size() {
    let app = spawn_app_with(|_| {}).await;
    mpc_replying(ResponseTemplate::new(404).set_body_bytes(b"\xff\xfe<html>".to_vec()))
        .expect(1)
        .mount(&app.mpc)
        .await;
    let garbage = app.retrieve("A10cnQP").await;
    let body = assert_problem(garbage, 404, "urn:mpc-gateway:upstream-rejected").await;
    assert_eq!(body["upstream"], json!({"status": 404, "body": null}));
}
