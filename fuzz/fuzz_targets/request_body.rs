//! A retrieve request's body on arbitrary bytes, judged as the handler does:
//! a JSON object whose `label` member is a string gives that label, trimmed,
//! or the 422 invalid-label problem; anything else gives the 400
//! malformed-request problem. Never a panic, never another answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_action_gateway::label::Label;
use mpc_action_gateway::problem::Problem;
use mpc_action_gateway::routes::retrieve::decode_body;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // What the body is, read independently of the gateway's decoder.
    let parsed = serde_json::from_slice::<Value>(data);
    let label_member = match &parsed {
        Ok(Value::Object(members)) => members.get("label").and_then(Value::as_str),
        // A known leniency: serde also reads the request from a sequence of
        // its members, so `["A10cnQO"]` is taken as `{"label": "A10cnQO"}`.
        Ok(Value::Array(items)) if items.len() == 1 => items[0].as_str(),
        _ => None,
    };
    match decode_body(data) {
        Ok(request) => {
            // What `Value` refuses but the decoder may skip unread in a member
            // it ignores: nesting too deep, and (a known leniency: the body
            // is not JSON) bytes that are not UTF-8.
            let skipped = matches!(&parsed, Err(error) if error.to_string().contains("recursion limit"))
                || std::str::from_utf8(data).is_err();
            if !skipped {
                assert_eq!(Some(&*request.label), label_member, "decoded another label");
            }
            match Label::parse(&request.label) {
                Ok(label) => assert_eq!(
                    label.as_str(),
                    request.label.trim_matches(|c: char| c.is_ascii_whitespace())
                ),
                Err(error) => {
                    let document = Problem::InvalidLabel {
                        label: request.label.clone().into_owned(),
                        error,
                    }
                    .document();
                    assert_eq!(document.status, 422);
                    assert_eq!(document.label.as_deref(), Some(&*request.label));
                }
            }
        }
        Err(problem) => {
            assert!(
                matches!(problem, Problem::MalformedRequest(_)),
                "only ever a malformed-request problem"
            );
            assert_eq!(problem.document().status, 400);
            if label_member.is_some() {
                // serde_json's `Value` keeps the last of repeated members;
                // the request's shape refuses them.
                let Problem::MalformedRequest(why) = &problem else {
                    unreachable!()
                };
                assert!(why.contains("duplicate field"), "refused: {why}");
            }
        }
    }
});
