//! Request-body decoding on arbitrary bytes: never panics; a decoded label is
//! then judged like the handler does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_action_gateway::label::Label;
use mpc_action_gateway::routes::retrieve::decode_body;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_body(data) {
        let _ = Label::parse(&request.label);
    }
});
