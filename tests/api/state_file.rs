//! Remembered outcomes survive a restart: the state file (memory backend only;
//! with Redis the shared store keeps them and the file is ignored).

use std::time::Duration;

use crate::dedup::roomy_app;
use crate::helpers::{captured_logs, mpc_answers};
use serde_json::{Value, json};

const LABEL: &str = "2024-05-02T21:03:35.001_0000FzZw";

#[tokio::test]
async fn remembered_outcomes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let configure = |settings: &mut mpc_action_gateway::config::Settings| {
        settings.dedup.state_file = state_file.to_string_lossy().into_owned().into();
    };

    let before = roomy_app(configure).await;
    mpc_answers(&before, 200, json!({"message": "queued"}), 1).await;
    let first: Value = before.retrieve(LABEL).await.json().await.unwrap();
    assert_eq!(first["status"], "sent");
    before.shutdown().await;
    assert!(state_file.exists(), "written on a clean stop");

    let after = roomy_app(configure).await;
    crate::helpers::mpc_never_called(&after).await;
    let second: Value = after.retrieve(LABEL).await.json().await.unwrap();
    assert_eq!(second["status"], "already_requested");
    assert_eq!(second["requested_at"], first["requested_at"]);
}

#[tokio::test]
async fn a_corrupt_state_file_is_reported_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("corrupt-state.json");
    std::fs::write(&state_file, b"{\"version\": 1, \"entries\": [trunc").unwrap();

    let app = roomy_app(|settings| {
        settings.dedup.state_file = state_file.to_string_lossy().into_owned().into();
    })
    .await;
    mpc_answers(&app, 200, json!({}), 1).await;

    let response = app.retrieve(LABEL).await;
    assert_eq!(response.status().as_u16(), 200);
    let warned = captured_logs().lines().any(|line| {
        line.contains("ignoring the state file")
            && line.contains("corrupt-state.json")
            && line.contains("WARN")
    });
    assert!(warned, "a warning names the file");
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("corrupt-state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "kept aside, not overwritten: {kept:?}");
    let aside = std::fs::read(dir.path().join(&kept[0])).unwrap();
    assert_eq!(aside, b"{\"version\": 1, \"entries\": [trunc");
}

/// Starts the binary on loopback with `env` and expects it to refuse to
/// start: returns its exit code and what it printed on stderr.
fn refused_start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mpc-action-gateway"));
    command
        .env("MPC_GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__UPSTREAM__BASE_URL", "http://127.0.0.1:9")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

/// A read-only directory for the length of a test: a read-only tmpfs as
/// root (who ignores permission bits), mode 0555 otherwise.
struct ReadOnlyDirectory {
    path: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDirectory {
    fn new(path: std::path::PathBuf) -> Self {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(&path).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let target = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: every pointer is a NUL-terminated string that outlives the call.
            let mounted = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    c"size=16k".as_ptr().cast(),
                )
            };
            assert_eq!(
                mounted,
                0,
                "as root, this test mounts a read-only tmpfs: {}",
                std::io::Error::last_os_error()
            );
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        Self {
            path,
            mounted: root,
        }
    }
}

impl Drop for ReadOnlyDirectory {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.mounted {
            let target = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        } else {
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn a_state_file_that_cannot_be_written_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let plain_file = dir.path().join("plain");
    std::fs::write(&plain_file, b"").unwrap();
    let read_only = ReadOnlyDirectory::new(dir.path().join("read-only"));
    let cases = [
        (
            "missing directory",
            dir.path().join("missing").join("state.json"),
        ),
        ("parent is a file", plain_file.join("state.json")),
        ("read-only directory", read_only.path.join("state.json")),
    ];
    for (name, state_file) in cases {
        let state = state_file.to_string_lossy().into_owned();
        let (code, stderr) = refused_start(&[("MPC_GATEWAY__DEDUP__STATE_FILE", &state)]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains("dedup.state_file"), "{name}: {stderr}");
        assert!(stderr.contains(&state), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn a_second_gateway_given_the_same_state_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json").to_string_lossy().into_owned();
    let env = [
        ("MPC_GATEWAY__UPSTREAM__BASE_URL", "http://127.0.0.1:9"),
        ("MPC_GATEWAY__DEDUP__STATE_FILE", state.as_str()),
    ];
    let first = crate::helpers::run_binary(&[], &env).await;

    let (code, stderr) = refused_start(&env);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("dedup.state_file"), "{stderr}");
    assert!(stderr.contains("another gateway"), "{stderr}");

    assert_eq!(first.terminate().await, Some(0));
    let after = crate::helpers::run_binary(&[], &env).await;
    assert_eq!(
        after.terminate().await,
        Some(0),
        "free once the first has gone"
    );
}

#[tokio::test]
async fn a_clean_stop_that_cannot_write_the_state_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let directory = dir.path().join("state");
    std::fs::create_dir(&directory).unwrap();
    let state = directory.join("state.json").to_string_lossy().into_owned();
    let gateway = crate::helpers::run_binary(
        &[],
        &[
            ("MPC_GATEWAY__UPSTREAM__BASE_URL", "http://127.0.0.1:9"),
            ("MPC_GATEWAY__DEDUP__STATE_FILE", &state),
        ],
    )
    .await;

    // The directory goes away under the running gateway.
    std::fs::remove_dir_all(&directory).unwrap();
    assert_eq!(gateway.terminate().await, Some(1));
}

#[tokio::test]
async fn state_file_saves_are_exported_at_zero_from_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let app = roomy_app(|settings| {
        settings.dedup.state_file = state_file.to_string_lossy().into_owned().into();
    })
    .await;
    for result in ["ok", "error"] {
        let series = format!("mpc_gateway_state_file_saves_total{{result=\"{result}\"}}");
        assert_eq!(app.metric(&series).await, 0.0, "{series}");
    }
}
