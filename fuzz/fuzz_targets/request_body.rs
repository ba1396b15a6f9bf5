//! A retrieve request's body on arbitrary bytes, judged as the handler does:
//! a JSON object whose `label` member is a string gives that label, trimmed,
//! or the 422 invalid-label problem; anything else gives the 400
//! malformed-request problem. Never a panic, never another answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_action_gateway::domain::label::Label;
use mpc_action_gateway::http::problem::Problem;
use mpc_action_gateway::http::routes::retrieve::decode_body;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // What the body is, read independently of the gateway's decoder: JSON
    // is UTF-8, so a body that is not has no label.
    let parsed = std::str::from_utf8(data)
        .map_err(|error| error.to_string())
        .and_then(|text| serde_json::from_str::<Value>(text).map_err(|error| error.to_string()));
    let label_member = match &parsed {
        Ok(Value::Object(members)) => members.get("label").and_then(Value::as_str),
        _ => None,
    };
    match decode_body(data) {
        Ok(request) => {
            // Nesting too deep for `Value` may sit in a member the decoder skips.
            let too_deep = parsed
                .as_ref()
                .is_err_and(|error| error.contains("recursion limit"));
            if !too_deep {
                assert_eq!(Some(&*request.label), label_member, "decoded another label");
            }
            match Label::parse(&request.label) {
                Ok(label) => assert_eq!(
                    label.as_str(),
                    request
                        .label
                        .trim_matches(|c: char| c.is_ascii_whitespace())
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
