//! The binary's subcommands, run as a script would run them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::helpers::spawn_app;

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mpc-action-gateway"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MPC_GATEWAY__") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs the gateway with `args` and `stdin` as its input.
fn with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = gateway()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `hash-key` with `stdin` as its input.
fn hash_key(stdin: &str) -> Output {
    with_stdin(&["hash-key"], stdin.as_bytes())
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn validate_prints_kinds_and_a_summary_and_exits_0_when_all_are_valid() {
    let output = gateway()
        .args([
            "validate",
            "A10cnQO",
            " 00000DwbEz ",
            "2024-05-02T21:03:35.001_0000FzZw_01",
        ])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        "A10cnQO\ttrksub\n\
         00000DwbEz\ttrkid\n\
         2024-05-02T21:03:35.001_0000FzZw_01\tsubmission_block_id\n\
         3 valid, 0 invalid\n"
    );
}

#[test]
fn validate_exits_1_and_explains_when_any_is_invalid() {
    let output = gateway()
        .args(["validate", "A10cnQO", "2023-02-29T00:00:00.000_0000FzZw"])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout(&output),
        "A10cnQO\ttrksub\n\
         2023-02-29T00:00:00.000_0000FzZw\tinvalid: day 29 does not exist in month 02 of year 2023, \
         which has 28 days\n\
         1 valid, 1 invalid\n"
    );
}

#[test]
fn validate_dash_reads_labels_from_stdin_one_per_line() {
    let output = with_stdin(
        &["validate", "A10cnQO", "-"],
        b"00000DwbEz\r\n\n  A10cnQP  \na b\n2023-02-29T00:00:00.000_0000FzZw",
    );

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "A10cnQO\ttrksub\n\
         00000DwbEz\ttrkid\n\
         A10cnQP\ttrksub\n\
         a b\tinvalid: whitespace ' ' at byte 1 is not allowed inside a label \
         (only leading and trailing whitespace is removed)\n\
         2023-02-29T00:00:00.000_0000FzZw\tinvalid: day 29 does not exist in month 02 of year 2023, \
         which has 28 days\n\
         3 valid, 2 invalid\n"
    );
}

#[test]
fn validate_dash_exits_0_when_every_stdin_label_is_valid() {
    let output = with_stdin(&["validate", "-"], b"A10cnQO\n00000DwbEz\n");

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "A10cnQO\ttrksub\n00000DwbEz\ttrkid\n2 valid, 0 invalid\n"
    );
}

#[test]
fn hash_key_prints_the_sha256_of_stdin_without_its_newline() {
    let output = hash_key("abc\n");

    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
}

#[test]
fn hash_key_strips_surrounding_whitespace_as_the_gateway_does() {
    let output = hash_key("  abc \r\n");

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n",
        "the digest of \"abc\", the key a client sending \" abc \" is compared as"
    );
}

#[test]
fn hash_key_refuses_an_empty_key() {
    let output = hash_key("\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no key"));
}

#[test]
fn hash_key_refuses_several_lines() {
    let output = hash_key("first-key\nsecond-key\n");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "no digest of a key nobody has");
    assert!(
        stderr(&output).contains("exactly one key"),
        "{}",
        stderr(&output)
    );
}

/// A config file defining the tier `ops`.
fn config_with_ops_tier() -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(
        b"[quota.tiers.ops]\nrequests_per_minute = 60\nupstream_per_hour = 10\nupstream_burst = 3\n",
    )
    .unwrap();
    file
}

/// Runs `gen-key` for alice in the tier `ops` that `config` defines.
fn gen_key_for_alice(config: &tempfile::NamedTempFile) -> Output {
    gateway()
        .args(["gen-key", "--user", "alice", "--tier", "ops", "--config"])
        .arg(config.path())
        .output()
        .unwrap()
}

#[test]
fn gen_key_prints_the_key_on_stderr_and_only_config_lines_on_stdout() {
    let config = config_with_ops_tier();
    let output = gen_key_for_alice(&config);

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let errors = stderr(&output);
    let key = errors.lines().next().unwrap();
    assert!(key.starts_with("mpcgw_") && key.len() > 40, "{key}");
    let text = stdout(&output);
    assert!(
        !text.contains(key),
        "the key never goes where the config goes"
    );
    let lines: toml::Table = text.parse().expect("stdout is TOML as a whole");
    let entry = &lines["auth"]["keys"][0];
    assert_eq!(entry["user"].as_str(), Some("alice"));
    assert_eq!(entry["tier"].as_str(), Some("ops"));
    assert_eq!(
        entry["sha256"].as_str(),
        Some(mpc_action_gateway::auth::key_digest(key).as_str())
    );
}

#[test]
fn gen_key_output_appended_to_a_config_file_loads_and_admits_the_key() {
    let config = config_with_ops_tier();
    let output = gen_key_for_alice(&config);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // What `gen-key >> gateway.toml` does.
    std::fs::OpenOptions::new()
        .append(true)
        .open(config.path())
        .unwrap()
        .write_all(&output.stdout)
        .unwrap();

    let settings = mpc_action_gateway::config::Settings::load_from(
        Some(config.path()),
        Some(Default::default()),
    )
    .expect("the appended file is a valid config");
    let key = stderr(&output).lines().next().unwrap().to_owned();
    let digest = mpc_action_gateway::auth::key_digest(&key);
    assert_eq!(settings.auth.keys.len(), 1);
    assert_eq!(settings.auth.keys[0].user, "alice");
    assert_eq!(settings.auth.keys[0].tier, "ops");
    assert_eq!(hex::encode(settings.auth.keys[0].sha256.as_bytes()), digest);
}

#[test]
fn gen_key_refuses_a_tier_that_is_not_configured() {
    let output = gateway()
        .args(["gen-key", "--user", "alice", "--tier", "gold"])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    let errors = stderr(&output);
    assert!(
        errors.contains("\"gold\" is not a tier in quota.tiers"),
        "{errors}"
    );
    assert!(errors.contains("configured: default"), "{errors}");
    assert!(!errors.contains("mpcgw_"), "no key is made: {errors}");
}

#[test]
fn check_config_prints_the_effective_config_as_toml() {
    let output = gateway()
        .arg("check-config")
        .env("MPC_GATEWAY__UPSTREAM__TIMEOUT", "1m 30s")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config: toml::Table = stdout(&output).parse().unwrap();
    assert_eq!(config["upstream"]["timeout"].as_str(), Some("1m 30s"));
    assert_eq!(config["server"]["listen"].as_str(), Some("127.0.0.1:8080"));
}

#[test]
fn check_config_exits_1_naming_a_bad_key() {
    let output = gateway()
        .arg("check-config")
        .env("MPC_GATEWAY__SERVER__MAX_BODY_BYTES", "lots")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("server.max_body_bytes"),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn check_config_exits_1_naming_an_unknown_key_in_a_file() {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    writeln!(file, "[upstream]\nbase_ulr = \"http://127.0.0.1:1\"").unwrap();

    let output = gateway()
        .arg("--config")
        .arg(file.path())
        .arg("check-config")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("base_ulr"), "{}", stderr(&output));
}

#[test]
fn serve_refuses_to_start_on_a_bad_config() {
    let output = gateway()
        .env("MPC_GATEWAY__UPSTREAM__TIMEOUT", "soon")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("upstream.timeout"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_says_first_where_it_forwards_that_emails_are_real_and_how_to_run_the_demo() {
    let mut child = gateway()
        .env("MPC_GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (first, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut text);
        let _ = first.send(text);
    });
    let banner = line.recv_timeout(std::time::Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let banner = banner.expect("a first line on stderr within 20 s");

    for words in [
        "forwards to the MPC at https://data.minorplanetcenter.net/api/action-codes/retrieve",
        "valid labels of real submissions trigger real emails",
        "run the demo instead: mpc-action-gateway demo",
    ] {
        assert!(banner.contains(words), "{words:?} in {banner:?}");
    }
}

#[tokio::test]
async fn healthcheck_exits_0_for_a_live_gateway_and_1_otherwise() {
    let app = spawn_app().await;
    let url = format!("{}/healthz", app.admin_address);
    let live = tokio::task::spawn_blocking(move || {
        gateway()
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(live.status.code(), Some(0), "{}", stderr(&live));

    let closed = crate::helpers::refusing_port();
    let closed_url = format!("http://127.0.0.1:{}/healthz", closed.port);
    let dead = tokio::task::spawn_blocking(move || {
        gateway()
            .args(["healthcheck", "--url", &closed_url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(dead.status.code(), Some(1));

    let admin_listen = app.admin_address.trim_start_matches("http://").to_owned();
    let from_config = tokio::task::spawn_blocking(move || {
        gateway()
            .arg("healthcheck")
            .env("MPC_GATEWAY__ADMIN__LISTEN", admin_listen)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        from_config.status.code(),
        Some(0),
        "{}",
        stderr(&from_config)
    );
}

#[test]
fn gen_key_writes_its_scopes_and_check_config_shows_them() {
    let mut config = config_with_ops_tier();
    let output = gateway()
        .args(["gen-key", "--user", "dash", "--scope", "status", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines: toml::Table = stdout(&output).parse().expect("stdout is TOML");
    let scopes = lines["auth"]["keys"][0]["scopes"].as_array().unwrap();
    assert_eq!(scopes, &[toml::Value::from("status")]);
    config.write_all(&output.stdout).unwrap();

    let checked = gateway()
        .arg("check-config")
        .arg("--config")
        .arg(config.path())
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(0), "{}", stderr(&checked));
    let effective: toml::Table = stdout(&checked).parse().unwrap();
    assert_eq!(
        effective["auth"]["keys"][0]["scopes"].as_array().unwrap(),
        &[toml::Value::from("status")]
    );

    let refused = gateway()
        .args(["gen-key", "--user", "dash", "--scope", "admin"])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "clap refuses an unknown scope"
    );
}
