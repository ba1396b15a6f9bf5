//! `Label::parse` on arbitrary text: never panics, and what it accepts
//! round-trips and is ASCII, trimmed and at most 35 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_action_gateway::domain::label::Label;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(label) = Label::parse(text) {
        let value = label.as_str();
        assert!(value.is_ascii());
        assert!(!value.is_empty() && value.len() <= 35);
        assert_eq!(value, value.trim_matches(|c: char| c.is_ascii_whitespace()));
        assert_eq!(Label::parse(value), Ok(label.clone()));
    }
});
