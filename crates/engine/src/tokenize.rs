//! Text to token ids with the model's `tokenizer.json`, applying openembed's own limit and
//! truncation rules instead of the file's padding/truncation settings.

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

/// What to do with an input longer than the model limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep every token; the caller decides (the engine refuses to embed it).
    #[default]
    None,
    /// Drop tokens from the end (keeps special tokens).
    End,
    /// Drop tokens from the start (keeps special tokens).
    Start,
}

/// One tokenized input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedInput {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Length before any truncation.
    pub untruncated_tokens: usize,
    /// Whether the untruncated length exceeds the model limit.
    pub over_limit: bool,
}

impl TokenizedInput {
    /// Tokens that will be embedded (what `usage.prompt_tokens` counts).
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Whether tokens were dropped.
    pub fn truncated(&self) -> bool {
        self.ids.len() < self.untruncated_tokens
    }
}

/// The model's tokenizer with the model's token limit.
pub struct TextTokenizer {
    inner: Tokenizer,
    limit: usize,
    special_tokens: usize,
    vocab_size: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir`, dropping its padding and truncation settings.
    pub fn load(dir: &Path, limit: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::MissingFile {
                path,
                expected: "the Hugging Face tokenizer (tokenizer.json)".into(),
            });
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| Error::InvalidFile {
            path: path.clone(),
            message: format!("cannot load tokenizer: {e}"),
        })?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::InvalidFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let special_tokens = inner.get_post_processor().map(|p| p.added_tokens(false)).unwrap_or(0);
        // Computed once: tokenizers builds the whole vocabulary map to count it.
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self {
            inner,
            limit,
            special_tokens,
            vocab_size,
        })
    }

    /// The model limit in tokens, special tokens included.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Size of the tokenizer's vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Tokenizes a batch (in parallel on the current rayon pool). `prefix` (a prompt) is put in
    /// front of every text, as sentence-transformers does.
    pub fn tokenize(
        &self,
        texts: &[&str],
        prefix: Option<&str>,
        truncation: Truncation,
    ) -> Result<Vec<TokenizedInput>> {
        let inputs: Vec<String> = texts.iter().map(|t| format!("{}{t}", prefix.unwrap_or(""))).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        encodings
            .into_iter()
            .map(|mut enc| {
                let untruncated_tokens = enc.len() + self.special_tokens;
                let over_limit = untruncated_tokens > self.limit;
                if over_limit && truncation != Truncation::None {
                    let keep = self.limit.saturating_sub(self.special_tokens);
                    let dir = if truncation == Truncation::End {
                        TruncationDirection::Right
                    } else {
                        TruncationDirection::Left
                    };
                    enc.truncate(keep, 0, dir);
                }
                let enc = self
                    .inner
                    .post_process(enc, None, true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(TokenizedInput {
                    ids: enc.get_ids().to_vec(),
                    untruncated_tokens,
                    over_limit,
                })
            })
            .collect()
    }

    /// Tokenizes texts for the long-input mode: each text becomes windows of at most the model
    /// limit (special tokens included in each window), consecutive windows sharing `overlap`
    /// content tokens. A text within the limit is one window.
    pub fn tokenize_windows(&self, texts: &[&str], prefix: Option<&str>, overlap: usize) -> Result<Vec<Vec<Vec<u32>>>> {
        let inputs: Vec<String> = texts.iter().map(|t| format!("{}{t}", prefix.unwrap_or(""))).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let keep = self.limit.saturating_sub(self.special_tokens).max(1);
        let overlap = overlap.min(keep - 1);
        encodings
            .into_iter()
            .map(|mut enc| {
                if enc.len() > keep {
                    enc.truncate(keep, overlap, TruncationDirection::Right);
                }
                let enc = self
                    .inner
                    .post_process(enc, None, true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                let mut windows = vec![enc.get_ids().to_vec()];
                windows.extend(enc.get_overflowing().iter().map(|o| o.get_ids().to_vec()));
                Ok(windows)
            })
            .collect()
    }

    /// Decodes ids back to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn tokenizer() -> Option<TextTokenizer> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
        dir.join("tokenizer.json")
            .exists()
            .then(|| TextTokenizer::load(&dir, 16).unwrap())
    }

    #[test]
    fn windows_cover_the_text_with_overlap() {
        let Some(t) = tokenizer() else { return };
        let text = (0..40).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let whole = t.tokenize(&[&text], None, Truncation::None).unwrap().remove(0);
        let windows = t.tokenize_windows(&[&text, "short"], None, 4).unwrap();
        assert_eq!(windows[1].len(), 1, "a short text is one window");
        let w = &windows[0];
        assert!(w.len() > 1 && w.iter().all(|x| x.len() <= 16));
        let (cls, sep) = (whole.ids[0], *whole.ids.last().unwrap());
        assert!(w.iter().all(|x| x[0] == cls && *x.last().unwrap() == sep));
        // Content: every window's interior, minus the overlap, concatenates to the whole.
        let content: Vec<u32> = whole.ids[1..whole.ids.len() - 1].to_vec();
        let mut rebuilt: Vec<u32> = w[0][1..w[0].len() - 1].to_vec();
        for x in &w[1..] {
            rebuilt.extend_from_slice(&x[1 + 4..x.len() - 1]);
        }
        assert_eq!(rebuilt, content);
    }
}
