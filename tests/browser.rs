//! The observer page in a real Chromium (headless, driven by chromedriver)
//! against the real gateway on port 0 and a counting mock MPC: the live
//! check, the button, the same without JavaScript, the keyboard alone, a
//! screenshot at 360 px and an axe-core scan.
//!
//! `UPDATE_SCREENSHOT=1` writes the screenshot over `docs/observer-page.png`.
//!
//! Needs `chromium` and `chromedriver` on the PATH and axe-core (`AXE_CORE_JS`
//! naming `axe.min.js`, or where `scripts/test` installs it); without them it
//! says so and passes, except under `CI`, where it fails.

/// Whether the gateways of this test binary keep their state in Redis.
pub const ON_REDIS: bool = false;

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use helpers::{TestApp, add_tier, mpc_answers, spawn_app_with};

const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";

/// A program on the PATH.
fn program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// What is missing to run these tests, if anything: fails under `CI`.
fn missing(what: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing, and CI must run the browser tests");
    }
    eprintln!(
        "SKIPPED: the browser tests need {what} (scripts/test installs them); \
         set CI to make this a failure"
    );
    true
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(chromedriver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on port {port}");
}

/// A fresh headless Chromium session; `javascript` false turns scripts off.
async fn browser(driver: &Driver, chromium: &Path, profile: &Path, javascript: bool) -> Client {
    let mut options = json!({
        "binary": chromium,
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            "--window-size=1000,900",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    if !javascript {
        options["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_owned(), options);
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Waits until `script` (an expression) is true in the page.
async fn until(client: &Client, script: &str) {
    for _ in 0..200 {
        if client
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap()
            == Value::Bool(true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let table = text_of(client, "#results").await;
    let summary = text_of(client, "#summary").await;
    let access = text_of(client, "#access").await;
    panic!("never true: {script}\nsummary: {summary}\ntable: {table}\naccess: {access}");
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Rows of the results table whose text holds `words`.
fn rows_with(words: &str) -> String {
    format!(
        "Array.from(document.querySelectorAll('#results tbody tr')).filter(function (r) {{ \
         return r.textContent.indexOf({words:?}) >= 0; }}).length"
    )
}

async fn mpc_calls(app: &TestApp) -> usize {
    app.mpc.received_requests().await.unwrap().len()
}

/// A gateway whose mock MPC expects exactly `calls` calls.
async fn gateway(calls: u64) -> TestApp {
    let app = spawn_app_with(|settings| add_tier(settings, "default", 100_000, 1000, 1000)).await;
    mpc_answers(&app, 200, json!({"message": "queued"}), calls).await;
    app
}

/// `axe.min.js`: from `AXE_CORE_JS`, else where `scripts/test` installs it.
fn axe_core() -> Option<String> {
    let path = match std::env::var_os("AXE_CORE_JS") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
            cache.join("mpc-action-gateway/axe-core-4.14.1/node_modules/axe-core/axe.min.js")
        }
    };
    std::fs::read_to_string(path).ok()
}

const LABELS: &str = "A10cnQO\nBAD-LABEL!\nA10cnQP";

#[tokio::test]
async fn the_observer_page_in_chromium() {
    let (Some(chromium), Some(chromedriver)) = (
        program("chromium").or_else(|| program("chromium-browser")),
        program("chromedriver"),
    ) else {
        missing("chromium and chromedriver");
        return;
    };
    let Some(axe) = axe_core() else {
        missing("axe-core (AXE_CORE_JS names axe.min.js)");
        return;
    };
    // Both rustls providers are in the tree (redis, fantoccini): pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = start_driver(&chromedriver).await;
    let profiles = tempfile::tempdir().unwrap();

    // With JavaScript: checked as typed, nothing sent before the click
    // (two labels here, one more by the keyboard below).
    let app = gateway(3).await;
    let client = browser(&driver, &chromium, &profiles.path().join("js"), true).await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    let area = client.find(Locator::Css("#labels")).await.unwrap();
    area.send_keys(LABELS).await.unwrap();
    until(
        &client,
        &format!("{} === 1", rows_with("Invalid, will not be sent")),
    )
    .await;
    until(
        &client,
        &format!("{} === 2", rows_with("Not requested yet")),
    )
    .await;
    assert!(
        text_of(&client, "#summary")
            .await
            .contains("2 ready to request")
    );
    assert_eq!(
        mpc_calls(&app).await,
        0,
        "the live check never calls the MPC"
    );

    client
        .find(Locator::Css("#request-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&client, &format!("{} === 2", rows_with("Sent:"))).await;
    assert_eq!(mpc_calls(&app).await, 2, "one MPC call per valid label");
    assert!(text_of(&client, "#quota").await.contains("more labels"));

    client
        .find(Locator::Css("#request-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        &format!("{} === 2", rows_with("Already requested at")),
    )
    .await;
    assert_eq!(mpc_calls(&app).await, 2, "no new MPC call");

    // At 360 px: the screenshot, and nothing wider than the screen.
    client.set_window_size(360, 1500).await.unwrap();
    until(&client, "window.innerWidth <= 360").await;
    let width = client
        .execute("return document.documentElement.scrollWidth;", vec![])
        .await
        .unwrap();
    assert!(width.as_u64().unwrap() <= 360, "scroll width {width}");
    let png = client.screenshot().await.unwrap();
    // The README's copy is rewritten only when asked, so a test run leaves
    // the work tree as it was.
    let shot = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observer-page.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("observer-page.png")
    };
    std::fs::write(&shot, &png).unwrap();
    println!(
        "screenshot at 360 px: {} ({} bytes)",
        shot.display(),
        png.len()
    );

    // axe-core: no serious or critical violation, on the page with results.
    client.execute(&axe, vec![]).await.unwrap();
    let violations = client
        .execute(
            "return axe.run(document).then(function (r) { return r.violations.map(function (v) { \
             return { id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }; }); });",
            vec![],
        )
        .await
        .unwrap();
    println!("axe-core violations: {violations}");
    let grave: Vec<&Value> = violations
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(grave.is_empty(), "serious or critical: {grave:?}");

    // The keyboard alone: Tab from the text to the button, Enter.
    client.set_window_size(1000, 900).await.unwrap();
    client.goto(&format!("{}/", app.address)).await.unwrap();
    let area = client.find(Locator::Css("#labels")).await.unwrap();
    area.send_keys("A10cnQQ").await.unwrap();
    until(
        &client,
        &format!("{} === 1", rows_with("Not requested yet")),
    )
    .await;
    client
        .active_element()
        .await
        .unwrap()
        .send_keys(TAB)
        .await
        .unwrap();
    let focused = client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("request-button")
    );
    focused.send_keys(ENTER).await.unwrap();
    until(&client, &format!("{} === 1", rows_with("Sent:"))).await;
    client.close().await.unwrap();
    drop(app);

    // Without JavaScript: the form's POST answers the page with the results.
    let app = gateway(2).await;
    let client = browser(&driver, &chromium, &profiles.path().join("nojs"), false).await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    let area = client.find(Locator::Css("#labels")).await.unwrap();
    area.send_keys(LABELS).await.unwrap();
    // The page's script is off: no live check comes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = client
        .execute(&format!("return {};", rows_with("")), vec![])
        .await
        .unwrap();
    assert_eq!(rows, json!(0), "the page's script did not run");
    assert_eq!(mpc_calls(&app).await, 0);
    client
        .find(Locator::Css("#request-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&client, &format!("{} === 2", rows_with("Sent:"))).await;
    assert_eq!(
        text_of(&client, "#results")
            .await
            .matches("Invalid, not sent")
            .count(),
        1
    );
    assert_eq!(mpc_calls(&app).await, 2, "one MPC call per valid label");
    client
        .find(Locator::Css("#request-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        &format!("{} === 2", rows_with("Already requested at")),
    )
    .await;
    assert_eq!(mpc_calls(&app).await, 2, "no new MPC call");
    client.close().await.unwrap();
    drop(driver);
}
