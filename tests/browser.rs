//! The observer page in a real Chromium (headless, driven by chromedriver)
//! against the real gateway on port 0 and a counting mock MPC: the live
//! check and its words, the button, moments in the observer's time zone,
//! each label's result as soon as it is known, the same without
//! JavaScript, the keyboard alone, screenshots at 360 px and 1280 px and an
//! axe-core scan.
//!
//! `UPDATE_SCREENSHOT=1` writes the screenshots over `docs/observer-page.png`
//! (360 px) and `docs/observer-page-1280.png`.
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

use helpers::mpc::mpc_call;
use helpers::{TestApp, add_tier, mpc_answers, spawn_app_with};
use wiremock::ResponseTemplate;
use wiremock::matchers::body_partial_json;

const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";

/// The browser's time zone: away from UTC by a half hour, so a moment shown
/// in UTC cannot pass for local time.
const TIME_ZONE: &str = "Asia/Kolkata";

/// Minutes [`TIME_ZONE`] is ahead of UTC (it keeps no summer time).
const ZONE_OFFSET_MINUTES: u32 = 5 * 60 + 30;

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
    // Chromium inherits the driver's environment: its time zone and language.
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .env("TZ", TIME_ZONE)
        .env("LANG", "en_US.UTF-8")
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
            "--window-size=1000,900", "--lang=en-US",
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

/// Waits until `script` (an expression) is true in the page (at most 10 s).
async fn until(client: &Client, script: &str) {
    until_within(client, script, Duration::from_secs(10)).await;
}

/// Waits until `script` (an expression) is true in the page.
async fn until_within(client: &Client, script: &str, longest: Duration) {
    let tries = longest.as_millis() / 50;
    for _ in 0..tries {
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

/// Row `index` of the results table, as text.
fn row(index: usize) -> String {
    format!(
        "(document.querySelectorAll('#results tbody tr')[{index}] || {{textContent: ''}}).textContent"
    )
}

/// Evaluates `script` (an expression) in the page.
async fn eval(client: &Client, script: &str) -> Value {
    client
        .execute(&format!("return {script};"), vec![])
        .await
        .unwrap()
}

/// Words of the API that observers should never read, and a moment in UTC's
/// machine form: none may be visible.
async fn assert_observers_words(client: &Client) {
    let visible = eval(client, "document.body.innerText").await;
    let visible = visible.as_str().unwrap();
    for machine in [
        "obsid",
        "submission_id",
        "submission_block_id",
        "trksub_or_trkid",
        "label_kind",
    ] {
        assert!(!visible.contains(machine), "{machine:?} in {visible}");
    }
    let iso = eval(
        client,
        r"/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/.test(document.body.innerText)",
    )
    .await;
    assert_eq!(iso, json!(false), "a UTC timestamp is visible: {visible}");
}

/// Every `<time>` of the results: a UTC `datetime`, shown in the browser's
/// time zone with how far away it is.
async fn assert_local_times(client: &Client, at_least: usize) {
    let offset = eval(client, "new Date().getTimezoneOffset()").await;
    assert_eq!(
        offset,
        json!(-i64::from(ZONE_OFFSET_MINUTES)),
        "the browser runs in {TIME_ZONE}"
    );
    let times = eval(
        client,
        "Array.from(document.querySelectorAll('#results time')).map(function (t) { \
         return [t.getAttribute('datetime'), t.textContent]; })",
    )
    .await;
    let times = times.as_array().unwrap();
    assert!(times.len() >= at_least, "{times:?}");
    for pair in times {
        let (datetime, shown) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let at = humantime::parse_rfc3339(datetime)
            .unwrap_or_else(|_| panic!("datetime={datetime:?} is RFC 3339"));
        assert!(
            datetime.len() == 20 && datetime.ends_with('Z'),
            "{datetime:?} is UTC in whole seconds"
        );
        let minutes = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
        let local = (minutes + u64::from(ZONE_OFFSET_MINUTES)) % (24 * 60);
        let (hour, minute) = (local / 60, local % 60);
        let twelve = if hour % 12 == 0 { 12 } else { hour % 12 };
        assert!(
            shown.contains(&format!("{twelve}:{minute:02}"))
                || shown.contains(&format!("{hour:02}:{minute:02}")),
            "{shown:?} shows {datetime} in {TIME_ZONE}"
        );
        assert!(
            shown.contains(" ago") || shown.contains("in ") || shown.contains("now"),
            "{shown:?} says how far away it is"
        );
    }
}

/// Sets the window to `width` and as tall as the page, checks that nothing
/// is wider, and saves a screenshot as `name` (under `docs/` when asked).
async fn screenshot(client: &Client, width: u32, name: &str) {
    client.set_window_size(width, 900).await.unwrap();
    until(client, &format!("window.innerWidth <= {width}")).await;
    let height = eval(client, "document.documentElement.scrollHeight").await;
    let height = u32::try_from(height.as_u64().unwrap()).unwrap();
    // The window's size counts the browser's own bars above the page.
    let bars = eval(client, "window.outerHeight - window.innerHeight").await;
    let bars = u32::try_from(bars.as_u64().unwrap()).unwrap();
    client.set_window_size(width, height + bars).await.unwrap();
    until(client, &format!("window.innerHeight >= {height}")).await;
    let scroll_width = eval(client, "document.documentElement.scrollWidth").await;
    assert!(
        scroll_width.as_u64().unwrap() <= u64::from(width),
        "scroll width {scroll_width} at {width} px"
    );
    let png = client.screenshot().await.unwrap();
    // The README's copies are rewritten only when asked, so a test run leaves
    // the work tree as it was.
    let shot = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name)
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
    };
    std::fs::write(&shot, &png).unwrap();
    println!(
        "screenshot at {width} px: {} ({} bytes)",
        shot.display(),
        png.len()
    );
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// One label of each kind's words, and one that breaks the rules.
const LABELS: &str = "A10cnQO\nBAD-LABEL!\n2024-05-02T21:03:35.001_0000FzZw";

/// The MPC's page where an emailed action code is used.
const MPC_ACTION_CODE_PAGE: &str = "https://www.minorplanetcenter.net/submit_action_code";

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

    // With JavaScript: checked as typed, in words, nothing sent before the
    // click (two labels here, one more added below, one by the keyboard).
    let app = gateway(4).await;
    let client = browser(&driver, &chromium, &profiles.path().join("js"), true).await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    assert_eq!(
        eval(&client, "document.documentElement.classList.contains('js')").await,
        json!(true),
        "the page's script ran"
    );
    let link = client
        .find(Locator::Css(&format!("a[href='{MPC_ACTION_CODE_PAGE}']")))
        .await
        .expect("a link to the MPC's action code page");
    assert!(link.text().await.unwrap().contains("action code page"));
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
    assert_eq!(
        eval(&client, &rows_with("Valid: a tracklet ID (trksub).")).await,
        json!(1)
    );
    assert_eq!(
        eval(&client, &rows_with("Valid: a submission ID.")).await,
        json!(1)
    );
    assert!(
        text_of(&client, "#summary")
            .await
            .contains("2 ready to request")
    );
    assert_observers_words(&client).await;
    assert_eq!(
        mpc_calls(&app).await,
        0,
        "the live check never calls the MPC"
    );

    click(&client, "#request-button").await;
    until(&client, &format!("{} === 2", rows_with("Sent:"))).await;
    assert_eq!(mpc_calls(&app).await, 2, "one MPC call per valid label");
    assert!(text_of(&client, "#quota").await.contains("more labels"));
    assert!(
        text_of(&client, "#results")
            .await
            .contains("A resend is possible after"),
    );
    assert_local_times(&client, 2).await;
    assert_eq!(eval(&client, &rows_with("in 60 minutes")).await, json!(2));
    assert_observers_words(&client).await;

    // One more label: the two requested keep their words, only it is sent.
    area.send_keys("\nABC12345").await.unwrap();
    until(
        &client,
        &format!(
            "{} === 1",
            rows_with("Valid: a tracklet ID (trksub or trkid). Not requested yet.")
        ),
    )
    .await;
    until(
        &client,
        &format!("{} === 2", rows_with("Already requested at")),
    )
    .await;
    click(&client, "#request-button").await;
    until(
        &client,
        "document.getElementById('summary').textContent === \
         '4 labels handled: 1 sent now, 2 already requested, 1 invalid.'",
    )
    .await;
    assert_eq!(mpc_calls(&app).await, 3, "only the new label is sent");
    assert_eq!(eval(&client, &rows_with("Sent:")).await, json!(1));
    assert!(
        eval(&client, &row(3))
            .await
            .as_str()
            .unwrap()
            .contains("Sent:")
    );
    assert_local_times(&client, 5).await;
    assert_observers_words(&client).await;

    // The README's pictures, and axe-core on this page with every kind of row:
    // no serious or critical violation.
    screenshot(&client, 1280, "observer-page-1280.png").await;
    screenshot(&client, 360, "observer-page.png").await;
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

    // Nothing new: the button asks again for every valid label, and the
    // gateway answers from memory.
    client.set_window_size(1000, 900).await.unwrap();
    click(&client, "#request-button").await;
    until(
        &client,
        &format!("{} === 3", rows_with("Already requested at")),
    )
    .await;
    assert_eq!(mpc_calls(&app).await, 3, "no new MPC call");

    // The keyboard alone: Tab from the text to the button, Enter.
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
    drop(app);

    // Each label's result as soon as the MPC has answered for it: the fast
    // label's row says "Sent" while the slow one, given first, still waits.
    let slow = "A10cnQS";
    let app = spawn_app_with(|settings| {
        add_tier(settings, "default", 100_000, 1000, 1000);
        settings.upstream.timeout = Duration::from_secs(30);
    })
    .await;
    mpc_call()
        .and(body_partial_json(json!({ "label": slow })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "queued"}))
                .set_delay(Duration::from_secs(4)),
        )
        .with_priority(1)
        .expect(1)
        .mount(&app.mpc)
        .await;
    mpc_answers(&app, 200, json!({"message": "queued"}), 1).await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    let area = client.find(Locator::Css("#labels")).await.unwrap();
    area.send_keys(&format!("{slow}\nA10cnQT")).await.unwrap();
    until(
        &client,
        &format!("{} === 2", rows_with("Not requested yet")),
    )
    .await;
    click(&client, "#request-button").await;
    until(
        &client,
        &format!(
            "{} && {}.indexOf('Sent:') >= 0 && {}.indexOf('Requesting') >= 0",
            "document.getElementById('request-button').disabled",
            row(1),
            row(0),
        ),
    )
    .await;
    assert!(
        eval(&client, &row(0))
            .await
            .as_str()
            .unwrap()
            .starts_with(slow)
    );
    assert_eq!(
        text_of(&client, "#summary").await,
        "Requesting 2 labels…",
        "one line for screen readers, not one per label"
    );
    until_within(
        &client,
        &format!("{}.indexOf('Sent:') >= 0", row(0)),
        Duration::from_secs(20),
    )
    .await;
    until(
        &client,
        "document.getElementById('summary').textContent === '2 labels handled: 2 sent now.'",
    )
    .await;
    client.close().await.unwrap();
    drop(app);

    // Without JavaScript: the form's POST answers the page with the results.
    let app = gateway(2).await;
    let client = browser(&driver, &chromium, &profiles.path().join("nojs"), false).await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    // The page has loaded with its deferred script, which did not run: no
    // live check can come.
    assert_eq!(
        eval(&client, "document.documentElement.classList.contains('js')").await,
        json!(false),
        "the page's script did not run"
    );
    let area = client.find(Locator::Css("#labels")).await.unwrap();
    area.send_keys(LABELS).await.unwrap();
    assert_eq!(eval(&client, &rows_with("")).await, json!(0));
    assert_eq!(mpc_calls(&app).await, 0);
    click(&client, "#request-button").await;
    until(&client, &format!("{} === 2", rows_with("Sent:"))).await;
    assert_eq!(
        text_of(&client, "#results")
            .await
            .matches("Invalid, not sent")
            .count(),
        1
    );
    let moments = eval(
        &client,
        "Array.from(document.querySelectorAll('#results time')).map(function (t) { \
         return t.getAttribute('datetime') + ' ' + t.textContent; })",
    )
    .await;
    for moment in moments.as_array().unwrap() {
        let (datetime, shown) = moment.as_str().unwrap().split_once(' ').unwrap();
        assert_eq!(
            shown,
            format!("{} {} UTC", &datetime[..10], &datetime[11..19])
        );
    }
    assert_eq!(mpc_calls(&app).await, 2, "one MPC call per valid label");
    click(&client, "#request-button").await;
    until(
        &client,
        &format!("{} === 2", rows_with("Already requested at")),
    )
    .await;
    assert_eq!(mpc_calls(&app).await, 2, "no new MPC call");
    client.close().await.unwrap();
    drop(driver);
}
