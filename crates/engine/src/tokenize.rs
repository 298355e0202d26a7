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
    /// Length before any truncation, special tokens included. When the text was not read to
    /// its end (see [`Self::counted_all`]) this is a lower bound, already over the limit.
    pub untruncated_tokens: usize,
    /// Whether the untruncated length exceeds the model limit.
    pub over_limit: bool,
    /// Whether every token of the text was counted. An over-long text is only tokenized as far
    /// as truncation (or the limit check) needs.
    pub counted_all: bool,
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
    max_id: Option<u32>,
    lowercase: bool,
    add_special_tokens: bool,
    char_limit: Option<usize>,
}

/// Bytes of text read per token of the limit at first when truncating; the window grows 4×
/// while it holds too few whole words.
const BYTES_PER_TOKEN: usize = 8;

/// Without truncation, texts up to this size are counted to their end (the over-limit error
/// gives the exact count); longer ones only until they are surely over the limit.
const COUNT_ALL_BYTES: usize = 64 * 1024;

/// Which end of a text a window keeps.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Head,
    Tail,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir`, dropping its padding and truncation settings.
    /// `lowercase` lowercases every text first (sentence-transformers' `do_lower_case`).
    pub fn load(dir: &Path, limit: usize) -> Result<Self> {
        Self::load_with(dir, limit, false)
    }

    /// [`Self::load`], lowercasing texts (prompt included) when `lowercase` is set, as
    /// sentence-transformers does for `do_lower_case`.
    pub fn load_with(dir: &Path, limit: usize, lowercase: bool) -> Result<Self> {
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
        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.len();
        // Special added tokens (e.g. Gemma's `<image_soft_token>`) may lie past the embedding
        // table: they only appear when a text spells them out, and that input is refused then.
        let max_id = inner
            .get_vocab(false)
            .into_values()
            .chain(
                inner
                    .get_added_tokens_decoder()
                    .into_iter()
                    .filter(|(_, t)| !t.special)
                    .map(|(id, _)| id),
            )
            .max();
        Ok(Self {
            inner,
            limit,
            special_tokens,
            vocab_size,
            max_id,
            lowercase,
            add_special_tokens: true,
            char_limit: None,
        })
    }

    /// The same tokenizer with a limit of `limit` tokens, special tokens included.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The same tokenizer without the post-processor's special tokens (static models).
    pub fn without_special_tokens(mut self) -> Self {
        self.add_special_tokens = false;
        self.special_tokens = 0;
        self
    }

    /// Cuts every text (prompt included) to its first `chars` characters before tokenizing, as
    /// model2vec's `encode` does (`max_length × median token length`).
    pub fn with_char_limit(mut self, chars: Option<usize>) -> Self {
        self.char_limit = chars;
        self
    }

    /// The id of `token` in the vocabulary (added tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of `text` without special tokens or any limit (template parts).
    pub fn ids_of(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_whole(text)?.get_ids().to_vec())
    }

    /// The token after which the second segment of a pair starts, when the pair template gives
    /// the second segment its own token type (BERT's `[CLS] A [SEP] B [SEP]`: the first
    /// `[SEP]`); `None` when every token is type 0 (RoBERTa's template).
    pub fn segment_boundary(&self) -> Option<u32> {
        let empty = tokenizers::Encoding::default();
        let pair = self.inner.post_process(empty.clone(), Some(empty), true).ok()?;
        let types = pair.get_type_ids();
        let last_first = types.iter().rposition(|&t| t == 0)?;
        types.iter().any(|&t| t != 0).then(|| pair.get_ids()[last_first])
    }

    /// Tokenizes a (query, document) pair with the tokenizer's pair template. Over the limit,
    /// the document is cut first (then the query), when `truncation` allows; otherwise the
    /// input is returned whole with `over_limit` set.
    /// `max_doc_tokens` cuts the document first in any case.
    pub fn tokenize_pair(
        &self,
        query: &str,
        doc: &str,
        truncation: Truncation,
        max_doc_tokens: Option<usize>,
    ) -> Result<TokenizedInput> {
        let mut q = self.encode_whole(&self.full_text(None, query))?;
        let mut d = self.encode_whole(&self.full_text(None, doc))?;
        if let Some(cap) = max_doc_tokens.filter(|&cap| d.len() > cap) {
            d.truncate(cap, 0, TruncationDirection::Right);
        }
        let special = self
            .inner
            .get_post_processor()
            .map(|p| p.added_tokens(true))
            .unwrap_or(0);
        let untruncated_tokens = q.len() + d.len() + special;
        let over_limit = untruncated_tokens > self.limit;
        if over_limit && truncation != Truncation::None {
            let room = self.limit.saturating_sub(special);
            d.truncate(room.saturating_sub(q.len()), 0, TruncationDirection::Right);
            if q.len() + d.len() > room {
                q.truncate(room.saturating_sub(d.len()), 0, TruncationDirection::Right);
            }
        }
        let enc = self
            .inner
            .post_process(q, Some(d), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(TokenizedInput {
            ids: enc.get_ids().to_vec(),
            untruncated_tokens,
            over_limit,
            counted_all: true,
        })
    }

    /// The id of the tokenizer model's unknown token, if it has one.
    pub fn unknown_id(&self) -> Option<u32> {
        let model = serde_json::to_value(self.inner.get_model()).ok()?;
        match model.get("unk_token").and_then(|t| t.as_str()) {
            Some(token) => self.inner.token_to_id(token),
            None => model.get("unk_id").and_then(|i| i.as_u64()).map(|i| i as u32),
        }
    }

    /// The median length in characters of the vocabulary's tokens (ordered by id), rounded
    /// down as model2vec computes it.
    pub fn median_token_chars(&self) -> usize {
        let mut lengths: Vec<usize> = self.inner.get_vocab(true).keys().map(|t| t.chars().count()).collect();
        if lengths.is_empty() {
            return 0;
        }
        lengths.sort_unstable();
        let n = lengths.len();
        if n % 2 == 1 {
            lengths[n / 2]
        } else {
            (lengths[n / 2 - 1] + lengths[n / 2]) / 2
        }
    }

    /// The model limit in tokens, special tokens included.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Size of the tokenizer's vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The largest id the tokenizer emits for ordinary text (vocabulary and non-special added
    /// tokens).
    pub fn max_id(&self) -> Option<u32> {
        self.max_id
    }

    /// Whether texts are lowercased before tokenizing.
    pub fn lowercases(&self) -> bool {
        self.lowercase
    }

    /// The text the tokenizer sees: the prompt in front, lowercased when the model says so.
    fn full_text<'a>(&self, prefix: Option<&str>, text: &'a str) -> std::borrow::Cow<'a, str> {
        let joined: std::borrow::Cow<'a, str> = match prefix {
            Some(p) if !p.is_empty() => format!("{p}{text}").into(),
            _ => text.into(),
        };
        let joined = if self.lowercase {
            joined.to_lowercase().into()
        } else {
            joined
        };
        match self.char_limit {
            Some(limit) => match joined.char_indices().nth(limit) {
                Some((cut, _)) => joined[..cut].to_owned().into(),
                None => joined,
            },
            None => joined,
        }
    }

    /// Encodes with word ids (needed to tell whole words at a window's edge).
    fn encode(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Encodes a whole text without offsets or word ids (about 1.6× faster).
    fn encode_whole(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Tokenizes a batch (in parallel on the current rayon pool). `prefix` (a prompt) is put in
    /// front of every text, as sentence-transformers does. A text far over the limit is only
    /// tokenized as far as needed: a window at the kept end, grown until it holds more whole
    /// words' tokens than the limit (the word cut by the window's edge is never counted, so the
    /// kept tokens are exactly those of the whole text).
    pub fn tokenize(
        &self,
        texts: &[&str],
        prefix: Option<&str>,
        truncation: Truncation,
    ) -> Result<Vec<TokenizedInput>> {
        self.tokenize_within(texts, prefix, truncation, self.limit)
    }

    /// [`Self::tokenize`] with a limit of `limit` tokens (special tokens included) instead of
    /// the model's: a model whose queries and documents have lengths of their own (ColBERT).
    pub fn tokenize_within(
        &self,
        texts: &[&str],
        prefix: Option<&str>,
        truncation: Truncation,
        limit: usize,
    ) -> Result<Vec<TokenizedInput>> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|text| self.tokenize_one(&self.full_text(prefix, text), truncation, limit))
            .collect()
    }

    fn tokenize_one(&self, text: &str, truncation: Truncation, limit: usize) -> Result<TokenizedInput> {
        let keep = limit.saturating_sub(self.special_tokens);
        let side = if truncation == Truncation::Start {
            Side::Tail
        } else {
            Side::Head
        };
        let mut window = keep.saturating_mul(BYTES_PER_TOKEN).saturating_add(64);
        if truncation == Truncation::None {
            window = window.max(COUNT_ALL_BYTES);
        }
        let (mut enc, counted_all) = loop {
            if window >= text.len() {
                break (self.encode_whole(text)?, true);
            }
            let piece = match side {
                Side::Head => &text[..floor_char_boundary(text, window)],
                Side::Tail => &text[ceil_char_boundary(text, text.len() - window)..],
            };
            let enc = self.encode(piece)?;
            if whole_word_tokens(&enc, side).is_some_and(|sure| sure > keep) {
                break (enc, false);
            }
            window = window.saturating_mul(4);
        };
        let untruncated_tokens = enc.len() + self.special_tokens;
        let over_limit = untruncated_tokens > limit;
        if over_limit && truncation != Truncation::None {
            let dir = if side == Side::Head {
                TruncationDirection::Right
            } else {
                TruncationDirection::Left
            };
            enc.truncate(keep, 0, dir);
        }
        let enc = self
            .inner
            .post_process(enc, None, self.add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(TokenizedInput {
            ids: enc.get_ids().to_vec(),
            untruncated_tokens,
            over_limit,
            counted_all,
        })
    }

    /// Tokenizes texts for the long-input mode: each text becomes windows of at most the model
    /// limit (special tokens included in each window), consecutive windows sharing `overlap`
    /// content tokens. A text within the limit is one window.
    pub fn tokenize_windows(&self, texts: &[&str], prefix: Option<&str>, overlap: usize) -> Result<Vec<Vec<Vec<u32>>>> {
        let inputs: Vec<String> = texts.iter().map(|t| self.full_text(prefix, t).into_owned()).collect();
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
                    .post_process(enc, None, self.add_special_tokens)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                let mut windows = vec![enc.get_ids().to_vec()];
                windows.extend(enc.get_overflowing().iter().map(|o| o.get_ids().to_vec()));
                Ok(windows)
            })
            .collect()
    }

    /// Decodes ids back to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    /// Decodes ids back to text, keeping special tokens unless `skip_special_tokens`.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The tokens of a text (with `prefix`, a prompt, in front; lowercased when the model
    /// says so) as the model sees them, untruncated: id, the piece of the text it covers (the
    /// token itself for special tokens), and its byte span in that text.
    pub fn pieces(
        &self,
        text: &str,
        prefix: Option<&str>,
        add_special_tokens: bool,
    ) -> Result<(String, Vec<TokenPiece>)> {
        let seen = self.full_text(prefix, text).into_owned();
        let encoding = self
            .inner
            .encode(seen.as_str(), add_special_tokens && self.add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let pieces = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .zip(encoding.get_special_tokens_mask())
            .zip(encoding.get_tokens())
            .map(|(((&id, &(start, stop)), &special), token)| {
                if special == 1 {
                    TokenPiece {
                        id,
                        text: token.clone(),
                        special: true,
                        span: None,
                    }
                } else {
                    let bytes = seen.as_bytes().get(start..stop.max(start)).unwrap_or_default();
                    TokenPiece {
                        id,
                        text: String::from_utf8_lossy(bytes).into_owned(),
                        special: false,
                        span: Some((start, stop)),
                    }
                }
            })
            .collect();
        Ok((seen, pieces))
    }
}

/// One token of a text (see [`TextTokenizer::pieces`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPiece {
    /// Token id.
    pub id: u32,
    /// The text it covers, or the special token's own text.
    pub text: String,
    /// Whether the tokenizer's template added it (`[CLS]`, `</s>` …).
    pub special: bool,
    /// Byte span in the text (none for special tokens).
    pub span: Option<(usize, usize)>,
}

/// The largest char boundary at or below `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest char boundary at or above `i`.
fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Tokens of a window that belong to whole words: all but those of the word at the cut edge
/// (the last word for a head window, the first for a tail window). `None` when the tokenizer
/// does not report words for every token.
fn whole_word_tokens(enc: &tokenizers::Encoding, side: Side) -> Option<usize> {
    let words = enc.get_word_ids();
    if words.iter().any(Option::is_none) {
        return None;
    }
    let edge = match side {
        Side::Head => words.last().copied().flatten()?,
        Side::Tail => words.first().copied().flatten()?,
    };
    Some(words.iter().filter(|w| **w != Some(edge)).count())
}

#[cfg(test)]
mod window_tests {
    use super::*;

    /// The default model's folder, or `None` after printing that the test is skipped.
    fn default_model_dir() -> Option<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
        if dir.join("tokenizer.json").exists() {
            Some(dir)
        } else {
            crate::kernels::report_skipped("the default model is missing (make model)");
            None
        }
    }

    fn tokenizer() -> Option<TextTokenizer> {
        default_model_dir().map(|dir| TextTokenizer::load(&dir, 16).unwrap())
    }

    #[test]
    fn long_texts_are_read_only_as_far_as_needed_with_the_same_ids() {
        let Some(dir) = default_model_dir() else {
            return;
        };
        let t = TextTokenizer::load(&dir, 32).unwrap();
        let words = ["alpha", "unbelievably", "x", "Zürich", "東京", "co-operation", "9.5%"];
        let text: String = (0..5000).map(|i| words[i % words.len()]).collect::<Vec<_>>().join(" ");
        let big = t.full_text(None, &text);
        for truncation in [Truncation::End, Truncation::Start] {
            let got = t.tokenize_one(&big, truncation, t.limit).unwrap();
            assert!(!got.counted_all && got.over_limit && got.ids.len() == 32);
            // The whole text tokenized at once gives the same ids.
            let mut whole = t.encode(&big).unwrap();
            let dir = if truncation == Truncation::End {
                TruncationDirection::Right
            } else {
                TruncationDirection::Left
            };
            whole.truncate(30, 0, dir);
            let whole = t.inner.post_process(whole, None, true).unwrap();
            assert_eq!(got.ids, whole.get_ids(), "{truncation:?}");
        }
        let none = t.tokenize_one(&big, Truncation::None, t.limit).unwrap();
        assert!(
            none.over_limit && none.counted_all,
            "texts up to 64 KiB are counted to the end"
        );
        let huge = big.repeat(4);
        let none = t.tokenize_one(&huge, Truncation::None, t.limit).unwrap();
        assert!(none.over_limit && none.untruncated_tokens > 32 && !none.counted_all);
        let short = t.tokenize_one("a short text", Truncation::None, t.limit).unwrap();
        assert!(short.counted_all && !short.over_limit);
        // One unbroken "word" far over the window: read to its end, never cut inside.
        let word = "a".repeat(20_000);
        let got = t.tokenize_one(&word, Truncation::End, t.limit).unwrap();
        assert!(got.counted_all);
    }

    #[test]
    fn lowercasing_covers_the_prompt_too() {
        let Some(dir) = default_model_dir() else {
            return;
        };
        let t = TextTokenizer::load_with(&dir, 256, true).unwrap();
        assert_eq!(t.full_text(Some("Query: "), "ÀB Σ"), "query: àb σ");
    }

    #[test]
    fn windows_cover_the_text_with_overlap() {
        let Some(t) = tokenizer() else {
            return;
        };
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
