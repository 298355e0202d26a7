//! A loaded embedding model: tokenizer + transformer + pooling pipeline + compute threads.

use crate::batch::PackedBatch;
use crate::config::SentenceConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models;
use crate::pooling::{normalize, Dense, Pooling};
use crate::tokenize::{TextTokenizer, TokenizedInput, Truncation};
use crate::transformer::{Scratch, Transformer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Options for [`Model::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compute threads (default: the machine's available cores). The engine never runs more.
    pub threads: Option<usize>,
    /// A compute pool to share with other models (see [`compute_pool`]); `threads` is then
    /// ignored. Without one the model gets a pool of its own.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Precision of the dense layers (default float32, the reference results).
    pub dtype: DType,
}

/// A pool of compute threads (named `oe-compute-N`) for one or several models and their
/// tokenization: `threads`, or the machine's available cores.
pub fn compute_pool(threads: Option<usize>) -> Result<Arc<rayon::ThreadPool>> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("oe-compute-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::ThreadPool {
            threads,
            message: e.to_string(),
        })
}

/// What a model is, for listings and API responses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Folder it was loaded from.
    pub dir: PathBuf,
    /// `model_type` of `config.json`.
    pub architecture: String,
    /// Width of the transformer's hidden states.
    pub hidden_size: usize,
    /// Length of the output vectors.
    pub dimension: usize,
    /// Most tokens one input may have, special tokens included.
    pub max_input_tokens: usize,
    /// Rows of the embedding table; token ids must be below this.
    pub vocab_size: usize,
    /// Pooling modes in order.
    pub pooling: Vec<Pooling>,
    /// Whether vectors are L2-normalized.
    pub normalize: bool,
    /// Named prompts from `config_sentence_transformers.json`.
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when none is named.
    pub default_prompt_name: Option<String>,
    /// Precision of the dense layers.
    pub dtype: DType,
}

/// An embedding model ready to run.
pub struct Model {
    info: ModelInfo,
    tokenizer: TextTokenizer,
    transformer: Transformer,
    dense: Vec<Dense>,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
    scratch: Mutex<Scratch>,
}

impl Model {
    /// Loads a model folder in Hugging Face / sentence-transformers layout.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_owned(),
                expected: "a model folder".into(),
            });
        }
        let st = SentenceConfig::load(dir)?;
        let pool = match &options.pool {
            Some(pool) => Arc::clone(pool),
            None => compute_pool(options.threads)?,
        };
        // Packing and quantizing the weights runs on the compute threads too.
        let transformer = pool.install(|| models::load_transformer_with(&st.transformer_dir, options.dtype))?;
        let max_input_tokens = st
            .max_seq_length
            .unwrap_or(transformer.max_positions)
            .min(transformer.max_positions);
        let tokenizer = TextTokenizer::load_with(&st.transformer_dir, max_input_tokens, st.do_lower_case)?;
        if let Some(max_id) = tokenizer.max_id().filter(|&id| id as usize >= transformer.vocab_size) {
            return Err(Error::InvalidFile {
                path: st.transformer_dir.join("tokenizer.json"),
                message: format!(
                    "the tokenizer can emit token id {max_id}, but the model's embedding table has only {} rows \
                     (ids 0..{}); this tokenizer does not belong to these weights",
                    transformer.vocab_size, transformer.vocab_size
                ),
            });
        }
        let dense = st
            .dense_dirs
            .iter()
            .map(|d| Dense::load(d))
            .collect::<Result<Vec<_>>>()?;
        let mut dimension = transformer.hidden * st.pooling.len();
        for d in &dense {
            if d.in_features() != dimension {
                return Err(Error::Unsupported(format!(
                    "Dense module expects {} inputs but pooling gives {dimension}",
                    d.in_features()
                )));
            }
            dimension = d.out_features();
        }
        let threads = pool.current_num_threads();
        let info = ModelInfo {
            dir: dir.to_owned(),
            architecture: transformer.architecture.clone(),
            hidden_size: transformer.hidden,
            dimension,
            max_input_tokens,
            vocab_size: transformer.vocab_size,
            pooling: st.pooling.clone(),
            normalize: st.normalize,
            prompts: st.prompts.clone(),
            default_prompt_name: st.default_prompt_name.clone(),
            dtype: options.dtype,
        };
        Ok(Self {
            info,
            tokenizer,
            transformer,
            dense,
            threads,
            pool,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Compute threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokenizes texts for the long-input mode (on the compute threads); see
    /// [`TextTokenizer::tokenize_windows`].
    pub fn tokenize_windows(&self, texts: &[&str], prompt: Option<&str>, overlap: usize) -> Result<Vec<Vec<Vec<u32>>>> {
        self.pool
            .install(|| self.tokenizer.tokenize_windows(texts, prompt, overlap))
    }

    /// Tokenizes texts (on the compute threads). Over-long inputs are truncated only when
    /// `truncation` asks for it; otherwise they are returned whole with `over_limit` set.
    pub fn tokenize(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        truncation: Truncation,
    ) -> Result<Vec<TokenizedInput>> {
        self.pool.install(|| self.tokenizer.tokenize(texts, prompt, truncation))
    }

    /// Checks pre-tokenized ids of input `index` against the vocabulary and converts them.
    pub fn check_token_ids(&self, index: usize, ids: &[i64]) -> Result<Vec<u32>> {
        let vocab_size = self.info.vocab_size;
        ids.iter()
            .enumerate()
            .map(|(position, &id)| {
                if id < 0 || id as u64 >= vocab_size as u64 {
                    Err(Error::TokenIdOutOfRange {
                        index,
                        position,
                        id,
                        vocab_size,
                    })
                } else {
                    Ok(id as u32)
                }
            })
            .collect()
    }

    fn validate(&self, inputs: &[&[u32]]) -> Result<()> {
        for (index, ids) in inputs.iter().enumerate() {
            if ids.is_empty() {
                return Err(Error::EmptyInput { index });
            }
            if ids.len() > self.info.max_input_tokens {
                return Err(Error::InputTooLong {
                    index,
                    tokens: ids.len(),
                    limit: self.info.max_input_tokens,
                });
            }
            if let Some((position, &id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= self.info.vocab_size)
            {
                return Err(Error::TokenIdOutOfRange {
                    index,
                    position,
                    id: id as i64,
                    vocab_size: self.info.vocab_size,
                });
            }
        }
        Ok(())
    }

    /// Runs the transformer on inputs packed into one batch and hands the hidden states
    /// (`tokens × hidden`, sequences end to end) to `f`.
    fn with_hidden<R>(&self, inputs: &[&[u32]], f: impl FnOnce(&PackedBatch, &[f32]) -> R) -> Result<R> {
        self.validate(inputs)?;
        let batch = PackedBatch::new(inputs);
        let mut scratch = self.scratch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let scratch_ref: &mut Scratch = &mut scratch;
        self.pool
            .install(|| self.transformer.forward(&batch, scratch_ref, self.threads));
        let hidden = &scratch.hidden[..batch.total_tokens() * self.transformer.hidden];
        Ok(f(&batch, hidden))
    }

    /// The last hidden state of every input (`tokens × hidden_size` each).
    pub fn hidden_states(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let h = self.transformer.hidden;
        self.with_hidden(inputs, |batch, hidden| {
            (0..batch.len())
                .map(|i| {
                    let r = batch.range(i);
                    hidden[r.start * h..r.end * h].to_vec()
                })
                .collect()
        })
    }

    /// Embeds token-id inputs in one packed forward pass: pooled, Dense, normalized as the
    /// model's sentence-transformers pipeline says.
    pub fn embed_ids(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let h = self.transformer.hidden;
        let modes = &self.info.pooling;
        let width = h * modes.len();
        let mut pooled = self.with_hidden(inputs, |batch, hidden| {
            let mut pooled = vec![0.0f32; batch.len() * width];
            for (i, out) in pooled.chunks_exact_mut(width).enumerate() {
                let r = batch.range(i);
                for (m, mode) in modes.iter().enumerate() {
                    mode.pool(&hidden[r.start * h..r.end * h], h, &mut out[m * h..(m + 1) * h]);
                }
            }
            pooled
        })?;
        let mut dim = width;
        for d in &self.dense {
            pooled = d.forward(&pooled, inputs.len());
            dim = d.out_features();
        }
        Ok(pooled
            .chunks_exact(dim)
            .map(|v| {
                let mut v = v.to_vec();
                if self.info.normalize {
                    normalize(&mut v);
                }
                v
            })
            .collect())
    }

    /// Tokenizes and embeds texts in one batch (a convenience for tools and tests).
    pub fn embed_texts(&self, texts: &[&str], truncation: Truncation) -> Result<Vec<Vec<f32>>> {
        let toks = self.tokenize(texts, None, truncation)?;
        let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        self.embed_ids(&ids)
    }
}
