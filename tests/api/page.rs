//! The observer page: its headers, its form without JavaScript, and the
//! cross-origin protection of every public `POST`.

use serde_json::json;

use crate::helpers::{
    TestApp, add_tier, assert_problem, mpc_answers, mpc_never_called, spawn_app_with,
};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn roomy_app(customise: impl FnOnce(&mut mpc_action_gateway::config::Settings)) -> TestApp {
    spawn_app_with(|settings| {
        add_tier(settings, "default", 100_000, 1000, 1000);
        customise(settings);
    })
    .await
}

/// POSTs the page's form with `labels` and the given extra headers.
async fn submit(app: &TestApp, labels: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let body = serde_urlencoded::to_string([("labels", labels)]).unwrap();
    let mut request = app
        .client
        .post(format!("{}/", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request reaches the gateway")
}

#[tokio::test]
async fn the_page_loads_without_identity_with_its_security_headers() {
    let app = spawn_app_with(|settings| settings.auth.allow_anonymous = false).await;
    mpc_never_called(&app).await;

    let response = app.public_get("/").await;

    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["content-security-policy"], CSP);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "same-origin");
    let body = response.text().await.unwrap();
    assert!(
        body.contains("<textarea id=\"labels\" name=\"labels\""),
        "{body}"
    );
    assert!(
        body.contains("never shown"),
        "the page says the code is never shown"
    );
    assert!(
        body.contains("href=\"https://www.minorplanetcenter.net/submit_action_code\""),
        "the page links where the code is used"
    );
    assert!(
        body.contains("trksubs, trkids, submission IDs or submission\nblock IDs"),
        "the page names the four kinds of label: {body}"
    );
    for machine_words in ["obsid", "submission_id", "trksub_or_trkid", "label_kind"] {
        assert!(!body.contains(machine_words), "{machine_words:?} in {body}");
    }
    assert!(!body.contains("<script>"), "no inline script");
    assert!(
        !body.contains("<style") && !body.contains("style="),
        "no inline style"
    );

    let mut total = body.len();
    for (path, media) in [
        ("/static/page.js", "text/javascript; charset=utf-8"),
        ("/static/page.css", "text/css; charset=utf-8"),
    ] {
        let asset = app.public_get(path).await;
        assert_eq!(asset.status().as_u16(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], media);
        assert!(
            asset.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age=31536000"),
            "{path} is cached for long"
        );
        assert!(
            body.contains(&format!("{path}?v=")),
            "the page links {path}"
        );
        total += asset.bytes().await.unwrap().len();
    }
    println!("page and assets: {total} bytes");
    assert!(total <= 50 * 1024, "{total} bytes");
    assert_eq!(
        app.public_get("/static/other.js").await.status().as_u16(),
        404
    );
}

#[tokio::test]
async fn the_form_requests_each_valid_label_once_and_a_reload_shows_already_requested() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 2).await;
    let pasted = "A10cnQO, A10cnQP;\tBAD-LABEL!\nA10cnQO";

    let response = submit(&app, pasted, &[]).await;

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert_eq!(response.headers()["content-security-policy"], CSP);
    let body = response.text().await.unwrap();
    // The label given twice shares its one MPC call (`expect(2)` above).
    assert_eq!(
        body.matches("Sent: the MPC will email").count(),
        3,
        "{body}"
    );
    assert!(body.contains("Invalid, not sent"), "{body}");
    // Without JavaScript, moments read in UTC inside a machine-readable <time>.
    let moment = body
        .split("<time datetime=\"")
        .nth(1)
        .expect("a <time> element");
    let (datetime, rest) = moment.split_once("\">").unwrap();
    assert!(
        datetime.len() == 20 && datetime.ends_with('Z') && datetime.as_bytes()[10] == b'T',
        "{datetime}"
    );
    let shown = rest.split_once("</time>").unwrap().0;
    assert_eq!(
        shown,
        format!("{} {} UTC", &datetime[..10], &datetime[11..19])
    );
    assert!(
        body.contains("4 labels handled: 3 sent now, 1 invalid."),
        "{body}"
    );

    let again = submit(&app, pasted, &[]).await.text().await.unwrap();

    assert!(!again.contains("Sent: the MPC"), "{again}");
    assert_eq!(again.matches("Already requested at").count(), 3, "{again}");
    assert!(again.contains("a resend is possible after"), "{again}");
    assert!(
        again.contains("4 labels handled: 3 already requested, 1 invalid."),
        "{again}"
    );
}

#[tokio::test]
async fn hostile_labels_are_shown_as_text() {
    let app = roomy_app(|_| {}).await;
    mpc_never_called(&app).await;

    let body = submit(
        &app,
        "<script>alert(1)</script>\n\"><img src=x onerror=alert(2)>",
        &[],
    )
    .await
    .text()
    .await
    .unwrap();

    assert!(!body.contains("<script>alert"), "{body}");
    assert!(!body.contains("<img src=x"), "{body}");
    assert!(
        body.contains("&#60;script&#62;") || body.contains("&lt;script&gt;"),
        "{body}"
    );
    assert!(body.contains("Invalid, not sent"), "{body}");
}

#[tokio::test]
async fn a_refused_form_says_how_to_get_access() {
    let app = spawn_app_with(|settings| settings.auth.allow_anonymous = false).await;
    mpc_never_called(&app).await;

    let response = submit(&app, "A10cnQO", &[]).await;

    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(
        body.contains("ask the gateway&#39;s operators for access")
            || body.contains("operators for access"),
        "{body}"
    );
}

#[tokio::test]
async fn cross_origin_posts_are_refused_before_identity_and_send_nothing() {
    let app = spawn_app_with(|settings| settings.auth.allow_anonymous = false).await;
    mpc_never_called(&app).await;

    let form = submit(&app, "A10cnQO", &[("origin", "https://evil.example")]).await;
    assert_eq!(form.status().as_u16(), 403, "before identity (401)");
    let json = app
        .batch(
            "retrieve",
            &["A10cnQO"],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_problem(json, 403, "urn:mpc-gateway:cross-origin-request").await;
    let single = app.retrieve_with("A10cnQO", &[("origin", "null")]).await;
    assert_problem(single, 403, "urn:mpc-gateway:cross-origin-request").await;
    let site = app
        .retrieve_with("A10cnQO", &[("sec-fetch-site", "same-site")])
        .await;
    assert_problem(site, 403, "urn:mpc-gateway:cross-origin-request").await;
}

#[tokio::test]
async fn same_origin_posts_and_scripts_pass() {
    let app = roomy_app(|_| {}).await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 3).await;
    let own = app.address.clone();

    let form = submit(
        &app,
        "A10cnQO",
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(form.status().as_u16(), 200);
    assert!(form.text().await.unwrap().contains("Sent: the MPC"));
    let json = app
        .batch(
            "retrieve",
            &["A10cnQP"],
            &[("origin", &own), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(json.status().as_u16(), 200);
    let typed = app
        .retrieve_with("A10cnQQ", &[("sec-fetch-site", "none")])
        .await;
    assert_eq!(typed.status().as_u16(), 200, "a request the user typed");
}

#[tokio::test]
async fn the_configured_public_origin_is_the_one_accepted() {
    let app = roomy_app(|settings| {
        settings.server.public_origin = "https://gateway.obs.example".to_owned();
    })
    .await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 1).await;
    let own = app.address.clone();

    let direct = app.retrieve_with("A10cnQO", &[("origin", &own)]).await;
    assert_problem(direct, 403, "urn:mpc-gateway:cross-origin-request").await;
    let proxied = app
        .retrieve_with("A10cnQO", &[("origin", "https://gateway.obs.example")])
        .await;
    assert_eq!(proxied.status().as_u16(), 200);
}

#[tokio::test]
async fn cross_origin_refusals_are_counted() {
    let app = roomy_app(|_| {}).await;
    mpc_never_called(&app).await;
    assert_eq!(
        app.metric("mpc_gateway_retrievals_total{label_kind=\"none\",outcome=\"cross_origin\"}")
            .await,
        0.0
    );

    let refused = app
        .retrieve_with("A10cnQO", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(refused.status().as_u16(), 403);

    assert_eq!(
        app.metric("mpc_gateway_retrievals_total{label_kind=\"none\",outcome=\"cross_origin\"}")
            .await,
        1.0
    );
}
