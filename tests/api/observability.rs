//! Metrics, request log lines and the audit trail, after real traffic.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, add_key, assert_problem, logs_for_request, mpc_answers, spawn_app, spawn_app_with,
};

async fn scrape(app: &TestApp) -> String {
    let response = app.admin_get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

/// The value of the series written exactly as `series` (name and labels).
fn value(exposition: &str, series: &str) -> f64 {
    crate::helpers::metric_value(exposition, series).unwrap_or_else(|| panic!("no series {series}"))
}

fn series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

#[tokio::test]
async fn metrics_count_real_traffic() {
    let app = spawn_app().await;
    mpc_answers(&app, 200, json!({}), 1).await;

    app.retrieve("A10cnQO").await;
    app.retrieve("A10cnQO").await;
    app.retrieve("bad label").await;
    app.retrieve_raw(Some("text/plain"), "x").await;
    let text = scrape(&app).await;

    let retrievals = "mpc_gateway_retrievals_total";
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"trksub\",outcome=\"sent\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"trksub\",outcome=\"deduplicated\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"none\",outcome=\"invalid_label\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"none\",outcome=\"malformed_request\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "mpc_gateway_http_requests_total{method=\"POST\",route=\"/api/action-codes/retrieve\",status=\"200\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "mpc_gateway_http_request_duration_seconds_count{route=\"/api/action-codes/retrieve\"}"
        ),
        4.0
    );
    assert_eq!(
        value(&text, "mpc_gateway_upstream_requests_total{result=\"2xx\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "mpc_gateway_upstream_requests_total{result=\"timeout\"}"
        ),
        0.0
    );
    assert_eq!(
        value(&text, "mpc_gateway_upstream_request_duration_seconds_count"),
        1.0
    );
    assert_eq!(value(&text, "mpc_gateway_upstream_in_flight"), 0.0);
    assert_eq!(value(&text, "mpc_gateway_dedup_entries"), 1.0);
    assert_eq!(value(&text, "mpc_gateway_circuit_breaker_state"), 0.0);
    assert_eq!(
        value(
            &text,
            &format!(
                "mpc_gateway_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(!text.contains("A10cnQO"), "no label value in any series");
    assert!(!text.contains("anonymous"), "no user in any series");
}

#[tokio::test]
async fn quota_refusals_and_failures_are_counted() {
    let app = spawn_app_with(|settings| {
        settings.auth.allow_anonymous = false;
        crate::helpers::add_tier(settings, "tiny", 2, 10, 1);
        add_key(settings, "alice", "alice-key", "tiny");
    })
    .await;
    mpc_answers(&app, 503, json!({}), 1).await;
    let alice = [("x-api-key", "alice-key")];

    app.retrieve("A10cnQO").await;
    app.retrieve_with("A10cnQO", &alice).await;
    app.retrieve_with("A10cnQP", &alice).await;
    app.retrieve_with("A10cnQQ", &alice).await;
    let text = scrape(&app).await;

    let retrievals = "mpc_gateway_retrievals_total";
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"none\",outcome=\"unauthenticated\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"trksub\",outcome=\"upstream_error\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"trksub\",outcome=\"quota_exceeded\"}}")
        ),
        1.0,
        "the upstream quota refused the second label"
    );
    assert_eq!(
        value(
            &text,
            &format!("{retrievals}{{label_kind=\"none\",outcome=\"quota_exceeded\"}}")
        ),
        1.0,
        "the anti-flood limit refused the third request before its body was read"
    );
    assert_eq!(
        value(
            &text,
            "mpc_gateway_quota_rejections_total{limit=\"upstream_per_hour\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "mpc_gateway_quota_rejections_total{limit=\"requests_per_minute\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "mpc_gateway_upstream_requests_total{result=\"5xx\"}"),
        1.0
    );
}

#[tokio::test]
async fn series_do_not_grow_with_labels_or_users() {
    let app = spawn_app_with(|settings| {
        settings.upstream.max_per_minute = 100_000.try_into().unwrap();
        crate::helpers::add_tier(settings, "default", 1000, 1000, 1000);
        settings.auth.trusted_user_header = "X-Forwarded-User".to_owned().try_into().unwrap();
        settings.auth.trusted_proxies = vec!["127.0.0.1".to_owned().try_into().unwrap()];
    })
    .await;
    mpc_answers(&app, 200, json!({}), 1010).await;

    let send = |from: usize, to: usize| {
        futures_util::stream::iter(from..to)
            .map(|n| {
                let app = &app;
                async move {
                    let user = format!("observer-{}", n % 250);
                    let label = format!("2024-05-02T21:03:35.001_{n:08}");
                    let response = app
                        .retrieve_with(&label, &[("x-forwarded-user", &user)])
                        .await;
                    assert_eq!(response.status().as_u16(), 200);
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
    };
    send(0, 10).await;
    scrape(&app).await; // the scrape's own series exist from now on
    let before = series(&scrape(&app).await);
    send(10, 1010).await;
    let after_text = scrape(&app).await;
    let after = series(&after_text);

    let added: Vec<_> = after.difference(&before).collect();
    assert!(
        added.is_empty(),
        "1 000 labels from 250 users added series: {added:?}"
    );
    assert_eq!(before.len(), after.len());
    assert_eq!(
        value(
            &after_text,
            "mpc_gateway_retrievals_total{label_kind=\"submission_id\",outcome=\"sent\"}"
        ),
        1010.0
    );
    assert_eq!(value(&after_text, "mpc_gateway_dedup_entries"), 1010.0);
}

#[tokio::test]
async fn metrics_are_only_on_the_admin_listener() {
    let app = spawn_app().await;
    let response = app.public_get("/metrics").await;
    assert_problem(response, 404, "urn:mpc-gateway:not-found").await;
}

#[tokio::test]
async fn the_request_log_line_carries_user_and_outcome() {
    let app = spawn_app().await;
    mpc_answers(&app, 200, json!({}), 1).await;

    for (id, expected) in [("obs-log-1", "sent"), ("obs-log-2", "deduplicated")] {
        app.retrieve_with("A10cnQO", &[("x-request-id", id)]).await;
        let line = logs_for_request(id)
            .into_iter()
            .find(|line| line["message"] == "request finished")
            .unwrap();
        assert_eq!(line["outcome"], expected);
        assert_eq!(line["user"], "anonymous:127.0.0.1");
        assert_eq!(line["label_kind"], "trksub");
        assert_eq!(line["span"]["route"], "/api/action-codes/retrieve");
        assert_eq!(line["status"], 200);
        assert!(line["latency_ms"].is_number());
    }
}

#[tokio::test]
async fn the_audit_trail_has_one_line_per_decision() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let app = spawn_app_with(|settings| {
        settings.log.audit_file = audit_file.to_string_lossy().into_owned().into();
        settings.auth.allow_anonymous = false;
        add_key(settings, "alice", "alice-key", "default");
        add_key(settings, "bob", "bob-key", "default");
    })
    .await;
    mpc_answers(&app, 200, json!({}), 1).await;

    let steps = [
        ("audit-1", "2024-05-02T21:03:35.001_0000FzZw", "alice-key"),
        ("audit-2", "2024-05-02T21:03:35.001_0000FzZw", "bob-key"),
        ("audit-3", "not a label", "bob-key"),
        ("audit-4", "A10cnQO", "wrong-key"),
    ];
    for (id, label, key) in steps {
        app.retrieve_with(label, &[("x-api-key", key), ("x-request-id", id)])
            .await;
    }
    // Other routes are no retrieve decisions.
    app.label_status_with("A10cnQO", &[("x-api-key", "bob-key")])
        .await;

    let text = std::fs::read_to_string(&audit_file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let expected = [
        (
            "audit-1",
            json!("alice"),
            json!("2024-05-02T21:03:35.001_0000FzZw"),
            "sent",
            json!(200),
            true,
        ),
        (
            "audit-2",
            json!("bob"),
            json!("2024-05-02T21:03:35.001_0000FzZw"),
            "deduplicated",
            json!(200),
            false,
        ),
        (
            "audit-3",
            json!("bob"),
            Value::Null,
            "invalid_label",
            Value::Null,
            false,
        ),
        (
            "audit-4",
            Value::Null,
            Value::Null,
            "unauthenticated",
            Value::Null,
            false,
        ),
    ];
    for (line, (id, user, label, outcome, status, emailed)) in lines.iter().zip(expected) {
        assert_eq!(line["request_id"], id);
        assert_eq!(line["user"], user, "{line}");
        assert_eq!(line["label"], label, "{line}");
        assert_eq!(line["outcome"], outcome, "{line}");
        assert_eq!(line["upstream_status"], status, "{line}");
        assert_eq!(line["email_may_have_been_triggered"], emailed, "{line}");
        assert!(humantime::parse_rfc3339(line["timestamp"].as_str().unwrap()).is_ok());
    }
    assert!(!text.contains("alice-key") && !text.contains("wrong-key"));
}

/// A 16 KiB tmpfs on a fresh directory, lazily unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// Mounts it; `None` (the test skipped) when that is impossible outside
    /// CI, which runs as root and must not skip.
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(dir.path())
            .status();
        if mounted.as_ref().is_ok_and(|status| status.success()) {
            return Some(Self(dir));
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (run as root): {mounted:?}"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root?): {mounted:?}");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a worker may still hold the audit file open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_loses_whole_audit_lines_and_counts_every_one() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let audit_file = disk.0.path().join("audit.jsonl");
    let app = spawn_app_with(|settings| {
        settings.log.audit_file = audit_file.to_string_lossy().into_owned().into();
    })
    .await;
    let failures = "mpc_gateway_audit_write_failures_total";
    assert_eq!(app.metric(failures).await, 0.0, "exported from start-up");

    // About 190 bytes a line: 16 KiB hold fewer than 90 of them.
    let requests = 150;
    for n in 0..requests {
        app.retrieve_with("not a label", &[("x-request-id", &format!("full-{n}"))])
            .await;
    }

    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(text.ends_with('\n'), "no line cut short");
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            line["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..ids.len()).map(|n| format!("full-{n}")).collect();
    assert_eq!(ids, expected, "the lines that fit, in order, none glued");
    let lost = app.metric(failures).await;
    assert!(lost > 0.0, "the disk filled up: {} lines", ids.len());
    assert_eq!(ids.len() as f64 + lost, f64::from(requests));
    app.shutdown().await;
}

#[tokio::test]
async fn lines_lost_on_a_full_device_are_counted() {
    let app =
        spawn_app_with(|settings| settings.log.audit_file = String::from("/dev/full").into()).await;
    for _ in 0..3 {
        app.retrieve("not a label").await;
    }
    assert_eq!(
        app.metric("mpc_gateway_audit_write_failures_total").await,
        3.0
    );
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alerts_is_exported() {
    let app = spawn_app().await;
    // Families without a series yet are not listed: give each some traffic.
    mpc_answers(&app, 200, json!({}), 1).await;
    app.retrieve("A10cnQO").await;
    scrape(&app).await;
    let exported: BTreeSet<String> = scrape(&app)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/grafana/dashboard.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut used = BTreeSet::new();
        for (start, _) in text.match_indices("mpc_gateway_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
        assert!(!used.is_empty(), "{file} queries no gateway metric");
        for name in used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(&name) || exported.contains(base),
                "{file} uses {name}, which the gateway does not export"
            );
        }
    }
}

#[tokio::test]
async fn every_route_is_counted_under_its_template() {
    let app = spawn_app().await;
    for (path, status) in [
        ("/api/action-codes/labels/A10cnQO", 200),
        ("/openapi.json", 200),
        ("/api/action-codes/retrieve", 405),
        ("/no/such/path", 404),
    ] {
        assert_eq!(
            app.public_get(path).await.status().as_u16(),
            status,
            "{path}"
        );
    }
    app.admin_get("/healthz").await;
    app.admin_get("/readyz").await;
    app.admin_get("/admin/labels/A10cnQO").await;
    app.admin_get("/metrics").await;

    let text = scrape(&app).await;
    let routes: BTreeSet<&str> = text
        .lines()
        .filter(|line| line.starts_with("mpc_gateway_http_requests_total{"))
        .filter_map(|line| line.split("route=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        routes,
        BTreeSet::from([
            "/admin/labels/{label}",
            "/api/action-codes/labels/{label}",
            "/api/action-codes/retrieve",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "unmatched",
        ])
    );
    let get = |route: &str, status: &str| {
        value(
            &text,
            &format!(
                "mpc_gateway_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(get("/api/action-codes/retrieve", "405"), 1.0);
    assert_eq!(get("unmatched", "404"), 1.0);
}
