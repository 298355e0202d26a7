//! What integer inputs mean. At OpenAI an array of integers in `input` is a list of tiktoken
//! ids (`cl100k_base` for text-embedding-3 and ada-002), and clients such as langchain-openai
//! send them instead of text. With a tiktoken encoding the ids are decoded to text (bytes of all
//! ids of one input joined, invalid UTF-8 replaced, as tiktoken does) and that text is tokenized
//! by the model's own tokenizer. `native` means ids of the model's own vocabulary.
//! The encodings come bundled in the `tiktoken-rs` crate: nothing is downloaded.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// The meaning of token-id inputs for one served model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIds {
    /// tiktoken `cl100k_base` (text-embedding-3-*, text-embedding-ada-002): OpenAI's meaning.
    #[default]
    Cl100kBase,
    /// tiktoken `o200k_base`.
    O200kBase,
    /// The model's own vocabulary.
    Native,
}

impl std::str::FromStr for TokenIds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cl100k_base" => Ok(Self::Cl100kBase),
            "o200k_base" => Ok(Self::O200kBase),
            "native" => Ok(Self::Native),
            other => Err(format!("'{other}': expected cl100k_base, o200k_base or native")),
        }
    }
}

impl TokenIds {
    /// The setting's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cl100kBase => "cl100k_base",
            Self::O200kBase => "o200k_base",
            Self::Native => "native",
        }
    }

    /// The tiktoken encoding and its count of ordinary tokens (ids `0..count`; the special
    /// tokens lie above), or `None` for native ids. The counts are fixed by the published files.
    fn encoding(self) -> Option<(&'static CoreBPE, u32)> {
        match self {
            Self::Cl100kBase => Some((tiktoken_rs::cl100k_base_singleton(), 100_256)),
            Self::O200kBase => Some((tiktoken_rs::o200k_base_singleton(), 199_998)),
            Self::Native => None,
        }
    }

    /// The ids of the encoding's special tokens (computed once per encoding).
    fn special_ids(self) -> &'static [u32] {
        static CL100K: OnceLock<Vec<u32>> = OnceLock::new();
        static O200K: OnceLock<Vec<u32>> = OnceLock::new();
        let cell = match self {
            Self::Cl100kBase => &CL100K,
            Self::O200kBase => &O200K,
            Self::Native => return &[],
        };
        cell.get_or_init(|| match self.encoding() {
            Some((bpe, _)) => bpe
                .special_tokens()
                .iter()
                .flat_map(|s| bpe.encode_with_special_tokens(s))
                .collect(),
            None => Vec::new(),
        })
    }

    /// Loads the encoding now (a few hundred ms), so the first request does not pay for it.
    pub fn warm_up(self) {
        let _ = self.special_ids();
    }

    /// The largest ordinary id, for documentation (`None` for native ids).
    pub fn max_ordinary_id(self) -> Option<u32> {
        self.encoding().map(|(_, count)| count - 1)
    }

    /// Decodes the ids of input `index` to text; `None` for native ids. An id that is not in
    /// the encoding is an error naming it.
    pub fn decode(self, index: usize, ids: &[i64]) -> Option<Result<String, String>> {
        let (bpe, ordinary) = self.encoding()?;
        let specials = self.special_ids();
        let mut ranks = Vec::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            match u32::try_from(id) {
                Ok(rank) if rank < ordinary || specials.contains(&rank) => ranks.push(rank),
                _ => {
                    return Some(Err(format!(
                        "token id {id} at position {position} of input {index} is not a {} token",
                        self.name()
                    )))
                }
            }
        }
        let bytes: Vec<u8> = bpe._decode_native_and_split(ranks).flatten().collect();
        Some(Ok(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const TEXTS: &[&str] = &[
        "This is an example sentence",
        "  leading and trailing   spaces  ",
        "line one\nline two\ttabbed",
        "Café, naïve, façade, jalapeño, Ångström.",
        "敏捷的棕色狐狸跳过了懒狗。",
        "Быстрая коричневая лиса",
        "Emoji test 😀🎉👍🏽 and a family 👨\u{200d}👩\u{200d}👧\u{200d}👦",
        "\u{a0}non-breaking\u{a0}spaces\u{a0}",
        "<|endoftext|> is just text here",
    ];

    #[test]
    fn ids_decode_to_the_same_text() {
        for enc in [TokenIds::Cl100kBase, TokenIds::O200kBase] {
            let (bpe, _) = enc.encoding().unwrap();
            for text in TEXTS {
                let ids: Vec<i64> = bpe.encode_ordinary(text).into_iter().map(i64::from).collect();
                assert_eq!(enc.decode(0, &ids).unwrap().unwrap(), *text, "{}", enc.name());
            }
        }
    }

    #[test]
    fn the_ordinary_ranges_are_right() {
        for enc in [TokenIds::Cl100kBase, TokenIds::O200kBase] {
            let (bpe, count) = enc.encoding().unwrap();
            assert!(bpe.decode(vec![count - 1]).is_ok() || bpe._decode_native_and_split(vec![count - 1]).count() == 1);
            assert!(
                bpe.decode(vec![count]).is_err(),
                "{} has no ordinary id {count}",
                enc.name()
            );
            let specials: HashSet<u32> = bpe
                .special_tokens()
                .iter()
                .flat_map(|s| bpe.encode_with_special_tokens(s))
                .collect();
            assert!(!specials.is_empty() && specials.iter().all(|&s| s > count));
        }
    }

    #[test]
    fn bad_ids_are_errors_and_split_characters_are_replaced() {
        let enc = TokenIds::Cl100kBase;
        for bad in [-1, 100_256, 1 << 40, i64::MAX] {
            let err = enc.decode(2, &[5, bad]).unwrap().unwrap_err();
            assert!(
                err.contains(&bad.to_string()) && err.contains("position 1 of input 2"),
                "{err}"
            );
        }
        // A multi-byte character split across inputs decodes with a replacement character.
        let (bpe, _) = enc.encoding().unwrap();
        let ids = bpe.encode_ordinary("😀");
        assert!(ids.len() > 1);
        let first = enc.decode(0, &[i64::from(ids[0])]).unwrap().unwrap();
        assert!(first.contains('\u{fffd}'));
        assert_eq!(TokenIds::Native.decode(0, &[1]), None);
    }
}
