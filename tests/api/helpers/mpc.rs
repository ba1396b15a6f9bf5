//! The wiremock MPC's answers: every test builds its mocks here and still
//! chooses its own `.expect(n)`. (The MPC misbehaving below HTTP is
//! `raw_mpc`; the demo's and the load test's MPC is the library's
//! `fake_mpc`.)

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockBuilder, ResponseTemplate};

use super::{MPC_PATH, TestApp};

/// A retrieve call reaching the MPC (POST on its path), for a test to add
/// matchers to.
pub fn mpc_call() -> MockBuilder {
    Mock::given(method("POST")).and(path(MPC_PATH))
}

/// The MPC answering every retrieve call with `template`.
pub fn mpc_replying(template: ResponseTemplate) -> Mock {
    mpc_call().respond_with(template)
}

/// The MPC answering every retrieve call with `status` and the JSON `body`.
pub fn mpc_answering(status: u16, body: Value) -> Mock {
    mpc_replying(ResponseTemplate::new(status).set_body_json(body))
}

/// The MPC accepting every retrieve call (`{"message": "queued"}`) `delay`
/// after it arrives.
pub fn mpc_accepting_after(delay: Duration) -> Mock {
    mpc_replying(
        ResponseTemplate::new(200)
            .set_body_json(json!({"message": "queued"}))
            .set_delay(delay),
    )
}

/// The MPC answering `status` with `body` to every retrieve call, expecting `calls` of them.
pub async fn mpc_answers(app: &TestApp, status: u16, body: Value, calls: u64) {
    mpc_answering(status, body)
        .expect(calls)
        .mount(&app.mpc)
        .await;
}

/// The MPC answering any request at all, whatever its method or path,
/// with 200 and `{}`.
pub fn mpc_answering_any_request() -> Mock {
    Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
}

/// The MPC must not be called at all.
pub async fn mpc_never_called(app: &TestApp) {
    mpc_answering_any_request()
        .expect(0)
        .named("no call may reach the MPC")
        .mount(&app.mpc)
        .await;
}
