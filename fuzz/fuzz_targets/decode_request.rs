//! Fuzzes the request decoding and validation layer: any bytes must give a request or a 4xx
//! OpenAI error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        match openembed_server::api::decode(content_type, data) {
            Ok(request) => assert!(!request.inputs().is_empty() && !request.model.is_empty()),
            Err(error) => {
                assert!(error.status.is_client_error(), "{error:?}");
                assert!(!error.message.is_empty());
                let body = error.body();
                assert!(body["error"]["message"].is_string());
            }
        }
    }
});
