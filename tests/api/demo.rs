//! `mpc-action-gateway demo`: the whole flow, offline, against the simulated MPC.

use serde_json::{Value, json};

use crate::helpers::run_binary;

#[tokio::test]
async fn demo_serves_a_full_retrieve_duplicate_status_flow() {
    let demo = run_binary(&["demo"], &[]).await;
    let client = reqwest::Client::new();
    let retrieve = |label: &str| {
        client
            .post(format!("{}/api/action-codes/retrieve", demo.public))
            .json(&json!({ "label": label }))
            .send()
    };
    let label = "2024-05-02T21:03:35.001_0000FzZw";

    let first: Value = retrieve(label).await.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "sent");
    assert!(
        first["upstream"]["body"]["message"]
            .as_str()
            .unwrap()
            .contains("no email was sent")
    );
    let second: Value = retrieve(label).await.unwrap().json().await.unwrap();
    assert_eq!(second["status"], "already_requested");
    assert_eq!(second["requested_at"], first["requested_at"]);
    let get = |url: String| async {
        let response = client.get(url).send().await.unwrap();
        response.json::<Value>().await.unwrap()
    };
    let status = get(format!("{}/api/action-codes/labels/{label}", demo.public)).await;
    assert_eq!(status["last_requested_at"], first["requested_at"]);

    let unknown = retrieve("Z99zzZ9").await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let failing = retrieve("FAIL001").await.unwrap();
    assert_eq!(failing.status().as_u16(), 502);
    let busy = retrieve("BUSY001").await.unwrap();
    assert_eq!(busy.status().as_u16(), 503);
    assert_eq!(
        busy.headers()["retry-after"],
        "5",
        "the simulated MPC asks for 5 s"
    );
    let admin = get(format!("{}/admin/labels/{label}", demo.admin)).await;
    assert_eq!(admin["user"], "anonymous:127.0.0.1");
    let page = client
        .get(format!("{}/", demo.public))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status().as_u16(),
        200,
        "the demo serves the observer page"
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("Request MPC action codes")
    );

    assert_eq!(demo.terminate().await, Some(0));
}

/// The README's demo walkthrough, between its marker comments.
const README: &str = include_str!("../../README.md");
const WALKTHROUGH_START: &str = "<!-- demo-walkthrough:";
const WALKTHROUGH_END: &str = "<!-- /demo-walkthrough -->";

/// One walkthrough command and the answer the README promises for it.
#[derive(Debug)]
struct Step {
    command: String,
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    status: u16,
    /// The README's `"member":value` pairs, each to be found in the answer.
    members: Vec<(String, Value)>,
}

/// The commands of the walkthrough's `sh` blocks, each with the `# <status> ...`
/// line that must follow it.
fn walkthrough_steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find(WALKTHROUGH_START)
        .expect("the README marks its demo walkthrough");
    let end = start
        + readme[start..]
            .find(WALKTHROUGH_END)
            .expect("the walkthrough's end is marked");
    let mut lines = readme[start..end]
        .lines()
        .filter(|line| !line.starts_with("```") && !line.starts_with("<!--"));
    let mut steps = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') {
            command.pop();
            command.push_str(lines.next().expect("a continued line continues"));
        }
        let expected = lines.next().unwrap_or_default();
        steps.push(step(&command, expected));
    }
    steps
}

fn step(command: &str, expected: &str) -> Step {
    let words = shell_words(command);
    assert_eq!(
        words[0], "curl",
        "the walkthrough runs curl only: {command}"
    );
    let (mut method, mut url, mut headers, mut body) = (None, None, Vec::new(), None);
    let mut words = words[1..].iter();
    while let Some(word) = words.next() {
        let mut value = || words.next().expect("an option's value").clone();
        match word.as_str() {
            "-s" => {}
            "-X" => method = Some(value().parse::<reqwest::Method>().unwrap()),
            "-H" => {
                let header = value();
                let (name, value) = header.split_once(':').expect("-H 'Name: value'");
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "-d" => body = Some(value()),
            url_word if url_word.starts_with("http://") => url = Some(url_word.to_owned()),
            other => panic!("this test does not know curl's {other:?} yet: {command}"),
        }
    }
    let rest = expected
        .strip_prefix("# ")
        .unwrap_or_else(|| panic!("after `{command}` comes `# <status> ...`, not {expected:?}"));
    let (status, answer) = rest.split_once(' ').unwrap_or((rest, ""));
    Step {
        command: command.to_owned(),
        method: method.unwrap_or(if body.is_some() {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        }),
        url: url.unwrap_or_else(|| panic!("no URL in {command}")),
        headers,
        body,
        status: status
            .parse()
            .unwrap_or_else(|_| panic!("{expected:?} starts with a status")),
        members: members(answer),
    }
}

/// Splits a command line as sh does, for the quoting the README uses.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {line}");
    if in_word {
        words.push(word);
    }
    words
}

/// The `"name":value` pairs written in an expected answer such as
/// `{"status":"sent",...}` (string, number, boolean or null values).
fn members(answer: &str) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let name = &after[..close];
        let tail = &after[close + 1..];
        let Some(value_text) = tail.strip_prefix(':') else {
            rest = tail;
            continue;
        };
        let (value, consumed) = if let Some(string) = value_text.strip_prefix('"') {
            let end = string.find('"').expect("a closed string value");
            (Value::String(string[..end].to_owned()), end + 2)
        } else {
            let end = value_text.find([',', '}']).unwrap_or(value_text.len());
            let literal = &value_text[..end];
            match serde_json::from_str(literal) {
                Ok(value) => (value, end),
                // `...` stands for members left out.
                Err(_) => (Value::Null, usize::MAX),
            }
        };
        if consumed != usize::MAX {
            found.push((name.to_owned(), value));
        }
        rest = &value_text[consumed.min(value_text.len())..];
    }
    found
}

/// Whether `name` holds `expected` anywhere in `answer`.
fn has_member(answer: &Value, name: &str, expected: &Value) -> bool {
    match answer {
        Value::Object(map) => {
            map.get(name) == Some(expected) || map.values().any(|v| has_member(v, name, expected))
        }
        Value::Array(items) => items.iter().any(|v| has_member(v, name, expected)),
        _ => false,
    }
}

#[tokio::test]
async fn the_readme_walkthrough_runs_to_the_end_in_demo_mode() {
    let steps = walkthrough_steps(README);
    let forwarded = steps
        .iter()
        .filter(|s| s.url.contains("/retrieve") && s.status != 422)
        .count();
    assert!(
        forwarded > 3,
        "the walkthrough forwards more labels than the shipped burst of 3"
    );
    let dir = tempfile::tempdir().unwrap();
    let (audit, state) = (
        dir.path().join("audit.jsonl"),
        dir.path().join("state.json"),
    );
    let demo = run_binary(
        &["demo"],
        &[
            ("MPC_GATEWAY__LOG__AUDIT_FILE", audit.to_str().unwrap()),
            ("MPC_GATEWAY__DEDUP__STATE_FILE", state.to_str().unwrap()),
            // SLOW001 then takes 1 s, not the default 15 s; quotas stay as shipped.
            ("MPC_GATEWAY__UPSTREAM__TIMEOUT", "1s"),
            ("MPC_GATEWAY__UPSTREAM__CONNECT_TIMEOUT", "1s"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for step in &steps {
        let url = step
            .url
            .replace("http://127.0.0.1:8080", &demo.public)
            .replace("http://127.0.0.1:8081", &demo.admin);
        let mut request = client.request(step.method.clone(), url);
        for (name, value) in &step.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &step.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, step.status, "{}\n{answer}", step.command);
        for (name, value) in &step.members {
            assert!(
                has_member(&answer, name, value),
                "{}: no \"{name}\":{value} in {answer}",
                step.command
            );
        }
    }

    assert_eq!(demo.terminate().await, Some(0));
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let retrievals = steps.iter().filter(|s| s.url.contains("/retrieve")).count();
    assert_eq!(lines.len(), retrievals, "one audit line per retrieve");
    assert!(
        lines.iter().all(|line| line["simulated"] == true),
        "{lines:?}"
    );
    assert!(!state.exists(), "the demo ignores dedup.state_file");
}
