//! Fuzzes tokenization of arbitrary UTF-8 with the default model's tokenizer: counts and
//! truncation must stay consistent, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openembed_engine::tokenize::TextTokenizer;
use openembed_engine::Truncation;
use std::sync::OnceLock;

fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = std::env::var("OPENEMBED_FUZZ_MODEL")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models/all-MiniLM-L6-v2").to_string());
        TextTokenizer::load(dir.as_ref(), 256).expect("the default model (make model) for the tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = tokenizer();
    let vocab_size = t.vocab_size();
    for truncation in [Truncation::None, Truncation::End, Truncation::Start] {
        let out = t.tokenize(&[text, "x"], Some("query: "), truncation).expect("tokenizing UTF-8 never fails");
        assert_eq!(out.len(), 2);
        let first = &out[0];
        assert!(first.tokens() >= 2, "special tokens are always there");
        if truncation == Truncation::None {
            assert_eq!(first.tokens(), first.untruncated_tokens);
        } else {
            assert!(first.tokens() <= 256);
        }
        assert_eq!(first.over_limit, first.untruncated_tokens > 256);
        assert!(first.ids.iter().all(|&id| (id as usize) < vocab_size));
    }
});
