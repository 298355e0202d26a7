//! A loaded embedding model: tokenizer + transformer + pooling pipeline + compute threads.

use crate::config::SentenceConfig;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::late_interaction::{load_bge_m3_heads, maxsim, sparse_dot, ColbertSpec, LexicalHead, MultiVectorHead, Side};
use crate::models;
use crate::packed::PackedBatch;
use crate::pooling::{normalize, Dense, Pooling};
use crate::rerank::{ClassifierInfo, RerankHead, RerankKind, ScoreActivation, YesNoTemplate};
use crate::sparse::{MlmHead, SparseStatic, SpladePooling};
use crate::static_embedding::{Model2VecConfig, StaticEmbedding, StaticFormat};
use crate::tokenize::{TextTokenizer, TokenizedInput, Truncation};
use crate::transformer::{Scratch, Transformer};
use crate::weights::Weights;
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
    /// Task adapters the model has (jina-embeddings-v3 `lora_adaptations`), in adapter order;
    /// empty for models without tasks.
    pub tasks: Vec<String>,
    /// Text put in front of an input for each task (`task_instructions`).
    pub task_instructions: BTreeMap<String, String>,
    /// Vector lengths the model was trained for (`matryoshka_dimensions` in `config.json`),
    /// empty when it does not say.
    pub matryoshka_dimensions: Vec<usize>,
    /// Set for rerankers: the model scores (query, document) pairs instead of embedding texts;
    /// its output per input is one raw logit.
    pub rerank: Option<RerankInfo>,
    /// Set for sequence-classification models (classifiers, and cross-encoder rerankers): the
    /// labels of its outputs, one raw logit per label per input (a text or a pair).
    pub classifier: Option<ClassifierInfo>,
    /// Set for learned sparse models (SPLADE): the output is one weight per vocabulary entry
    /// (`dimension` = the vocabulary), almost all zero.
    pub sparse: Option<SpladePooling>,
    /// Whether a sparse model has a query side of its own (inference-free: a table lookup).
    pub sparse_query: bool,
    /// Width of the token vectors of a model with a multi-vector output (ColBERT, bge-m3).
    pub multi_vector: Option<usize>,
    /// Whether a ColBERT model tells queries from documents (prefixes, query expansion).
    pub multi_vector_sides: bool,
    /// Whether the model has lexical weights beside its dense vector (bge-m3's sparse output).
    pub lexical: bool,
}

/// What one input of a forward pass hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Its vector: pooled, Dense modules, normalized (a reranker's or classifier's logits).
    #[default]
    Pooled,
    /// Its last hidden states, one row per token.
    Tokens,
    /// The model's multi-vector output (ColBERT, bge-m3): one normalized vector per kept token,
    /// flat, for the input's side.
    MultiVector(Side),
    /// What the model scores a (query, document) pair by, from one forward pass (see
    /// [`Model::relevance`]): a ColBERT model's token vectors; bge-m3's dense vector, lexical
    /// weights and token vectors together.
    Retrieval(Side),
    /// The model's sparse output (SPLADE's vocabulary weights, bge-m3's lexical weights) as
    /// `[id₀, w₀, id₁, w₁, …]` by id, non-zero weights only; ids are exact in f32 (vocabularies
    /// are far below 2²⁴). See [`sparse_pairs`].
    Sparse,
}

/// The `(id, weight)` pairs of an [`Output::Sparse`] row.
pub fn sparse_pairs(row: &[f32]) -> impl Iterator<Item = (u32, f32)> + '_ {
    row.chunks_exact(2).map(|p| (p[0] as u32, p[1]))
}

/// The [`Output::Sparse`] row of a dense weight vector (one weight per vocabulary entry).
fn nonzero_row(weights: Vec<f32>) -> Vec<f32> {
    sparse_row(
        weights
            .into_iter()
            .enumerate()
            .filter(|(_, w)| *w != 0.0)
            .map(|(id, w)| (id as u32, w)),
    )
}

/// An [`Output::Sparse`] row of `(id, weight)` pairs.
fn sparse_row(pairs: impl IntoIterator<Item = (u32, f32)>) -> Vec<f32> {
    pairs.into_iter().flat_map(|(id, w)| [id as f32, w]).collect()
}

/// What a model's outputs are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Vectors of texts.
    Embedding,
    /// Relevance scores of (query, document) pairs; a one-label cross-encoder also classifies.
    Reranker,
    /// Label scores of texts or pairs.
    Classifier,
    /// Vocabulary weights of texts (learned sparse vectors).
    Sparse,
    /// Token vectors of texts, scored by late interaction (ColBERT): no single vector.
    MultiVector,
}

impl ModelKind {
    /// `embedding model`, `reranker`, `classifier`, `sparse model` or `late-interaction (multi-vector) model`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Embedding => "embedding model",
            Self::Reranker => "reranker",
            Self::Classifier => "classifier",
            Self::Sparse => "sparse model",
            Self::MultiVector => "late-interaction (multi-vector) model",
        }
    }
}

impl ModelInfo {
    /// What the model's outputs are for.
    pub fn kind(&self) -> ModelKind {
        match (&self.rerank, &self.classifier, &self.sparse) {
            (Some(_), _, _) => ModelKind::Reranker,
            (None, Some(_), _) => ModelKind::Classifier,
            (None, None, Some(_)) => ModelKind::Sparse,
            (None, None, None) if self.pooling.is_empty() && self.multi_vector.is_some() => ModelKind::MultiVector,
            (None, None, None) => ModelKind::Embedding,
        }
    }

    /// Whether the model scores (query, document) pairs: a reranker, or a late-interaction
    /// model (ColBERT's MaxSim, bge-m3's combined score).
    pub fn reranks(&self) -> bool {
        self.rerank.is_some() || self.multi_vector.is_some()
    }

    /// Whether the model has a sparse output (SPLADE, bge-m3's lexical weights).
    pub fn has_sparse(&self) -> bool {
        self.sparse.is_some() || self.lexical
    }

    /// The outputs the model gives, by the names the API uses: `dense`, `sparse`,
    /// `multi_vector`, `scores` (a reranker), `labels` (a classifier).
    pub fn outputs(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        match self.kind() {
            ModelKind::Embedding => out.push("dense"),
            ModelKind::Reranker => out.push("scores"),
            ModelKind::Classifier => out.push("labels"),
            ModelKind::Sparse | ModelKind::MultiVector => {}
        }
        if self.classifier.is_some() && self.rerank.is_some() {
            out.push("labels");
        }
        if self.has_sparse() {
            out.push("sparse");
        }
        if self.multi_vector.is_some() {
            out.push("multi_vector");
        }
        out
    }

    /// Whether the model's outputs are vectors to embed with (not a reranker's or classifier's
    /// logits).
    pub fn embeds(&self) -> bool {
        self.kind() == ModelKind::Embedding
    }
}

/// What a reranker is and how its logits become scores.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankInfo {
    /// Cross-encoder or yes/no causal LM.
    pub kind: RerankKind,
    /// Applied to the logit to give the score (`raw_scores` skips it).
    pub activation: ScoreActivation,
    /// The prompt of a yes/no reranker.
    pub template: Option<YesNoTemplate>,
}

/// What turns token ids into per-token vectors.
enum Encoder {
    /// A transformer stack, run on packed batches.
    Transformer(Box<Transformer>),
    /// A static table, averaged per input (the pooling is its own).
    Static(StaticEmbedding),
}

/// Token limit of static models without one: sentence-transformers' `StaticEmbedding` embeds
/// every token (the request size limits still apply).
const STATIC_TOKEN_LIMIT: usize = 1 << 20;

/// A transformer folder as read at load: its config, architecture, open weights and the kind
/// of reranker it holds, if any.
struct Folder {
    cfg: crate::config::ConfigJson,
    architecture: &'static models::Architecture,
    weights: Weights,
    rerank: Option<RerankKind>,
}

/// `matryoshka_dimensions` of a config, if it lists them.
fn matryoshka_dimensions(cfg: &crate::config::ConfigJson) -> Vec<usize> {
    cfg.value
        .get("matryoshka_dimensions")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
        .unwrap_or_default()
}

impl ModelInfo {
    /// The text put in front of an input: task `task`'s instruction (jina-embeddings-v3's
    /// `task_instructions`), then `prompt`.
    pub fn prefix(&self, task: Option<usize>, prompt: Option<&str>) -> Option<String> {
        let instruction = task
            .and_then(|t| self.tasks.get(t))
            .and_then(|name| self.task_instructions.get(name))
            .filter(|i| !i.is_empty());
        match (instruction, prompt) {
            (Some(i), p) => Some(format!("{i}{}", p.unwrap_or_default())),
            (None, p) => p.map(str::to_owned),
        }
    }
}

/// The head of a reranker or classifier beside its transformer.
struct HeadParts {
    head: RerankHead,
    segment_boundary: Option<u32>,
    template_ids: Option<(Vec<u32>, Vec<u32>)>,
}

/// Most tokens of a yes/no reranker's prompt (Qwen3-Reranker's card uses 8,192).
const YES_NO_TOKEN_LIMIT: usize = 8192;

/// An embedding model ready to run.
pub struct Model {
    info: ModelInfo,
    tokenizer: TextTokenizer,
    encoder: Encoder,
    /// Reranker or classifier head, with the token after which a pair's second segment starts
    /// (type 1) and a yes/no reranker's template ids (prefix, suffix).
    head: Option<HeadParts>,
    /// A SPLADE model's masked-LM head and pooling.
    sparse: Option<(MlmHead, SpladePooling)>,
    /// An inference-free model's query side.
    sparse_query: Option<SparseStatic>,
    dense: Vec<Dense>,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
    /// Work space of forward passes, one per pass in flight (a pass run between the layers of
    /// another takes a second one).
    scratches: Mutex<Vec<Scratch>>,
    /// The multi-vector output (ColBERT, bge-m3).
    multi: Option<MultiVectorHead>,
    /// bge-m3's lexical weights.
    lexical: Option<LexicalHead>,
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
        let mut st = SentenceConfig::load(dir)?;
        let pool = match &options.pool {
            Some(pool) => Arc::clone(pool),
            None => compute_pool(options.threads)?,
        };
        let model2vec = Model2VecConfig::load(st.static_dir.as_deref().unwrap_or(dir))?;
        let (encoder, tokenizer, max_input_tokens, folder) = match (&st.static_dir, model2vec) {
            (_, Some(m2v)) => {
                // model2vec's own semantics, whatever modules.json says.
                let sdir = st.static_dir.clone().unwrap_or_else(|| dir.to_owned());
                let limit = m2v.max_length.unwrap_or(STATIC_TOKEN_LIMIT);
                let tokenizer = TextTokenizer::load_with(&sdir, limit, st.do_lower_case)?.without_special_tokens();
                let chars = m2v.max_length.map(|n| n.saturating_mul(tokenizer.median_token_chars()));
                let tokenizer = tokenizer.with_char_limit(chars);
                let table = StaticEmbedding::load(&sdir, StaticFormat::Model2Vec, tokenizer.unknown_id())?;
                st.normalize = m2v.normalize;
                st.pooling = vec![Pooling::Mean];
                (Encoder::Static(table), tokenizer, limit, None)
            }
            (Some(sdir), None) => {
                let limit = st.max_seq_length.unwrap_or(STATIC_TOKEN_LIMIT);
                let tokenizer = TextTokenizer::load_with(sdir, limit, st.do_lower_case)?.without_special_tokens();
                let table = StaticEmbedding::load(sdir, StaticFormat::SentenceTransformers, None)?;
                st.pooling = vec![Pooling::Mean];
                (Encoder::Static(table), tokenizer, limit, None)
            }
            (None, None) => {
                // The folder's config is read once and its weights opened once, for the encoder
                // and any head.
                let (cfg, architecture, weights) = models::open(&st.transformer_dir, options.dtype)?;
                // Packing and quantizing the weights runs on the compute threads too.
                let transformer = pool.install(|| (architecture.load)(&cfg, &weights))?;
                let rerank = RerankKind::detect(&st.transformer_dir, &cfg, architecture);
                let mut limit = st
                    .max_seq_length
                    .unwrap_or(transformer.max_positions)
                    .min(transformer.max_positions);
                if rerank == Some(RerankKind::YesNo) {
                    limit = limit.min(YES_NO_TOKEN_LIMIT);
                }
                let tokenizer = TextTokenizer::load_with(&st.transformer_dir, limit, st.do_lower_case)?;
                let folder = Folder {
                    cfg,
                    architecture,
                    weights,
                    rerank,
                };
                (
                    Encoder::Transformer(Box::new(transformer)),
                    tokenizer,
                    limit,
                    Some(folder),
                )
            }
        };
        // A ColBERT folder's Dense modules project every token; its lengths are its own.
        let colbert = match &encoder {
            Encoder::Transformer(t) => ColbertSpec::load(dir, &tokenizer)?.map(|spec| (spec, t.max_positions)),
            Encoder::Static(_) => None,
        };
        let (mut tokenizer, mut max_input_tokens) = (tokenizer, max_input_tokens);
        let mut colbert_projection = Vec::new();
        if let Some((spec, positions)) = &colbert {
            max_input_tokens = spec.max_tokens().min(*positions);
            tokenizer = tokenizer.with_limit(max_input_tokens);
            colbert_projection = std::mem::take(&mut st.dense_dirs);
            st.pooling.clear();
            st.normalize = false;
        }
        let (architecture, hidden_size, vocab_size) = match &encoder {
            Encoder::Transformer(t) => (t.architecture.clone(), t.hidden, t.vocab_size),
            Encoder::Static(s) => (
                match s.format() {
                    StaticFormat::SentenceTransformers => "static_embedding".to_owned(),
                    StaticFormat::Model2Vec => "model2vec".to_owned(),
                },
                s.dimension(),
                s.vocab_size(),
            ),
        };
        if let Some(max_id) = tokenizer.max_id().filter(|&id| id as usize >= vocab_size) {
            return Err(Error::InvalidFile {
                path: st.transformer_dir.join("tokenizer.json"),
                message: format!(
                    "the tokenizer can emit token id {max_id}, but the model's embedding table has only {vocab_size} rows \
                     (ids 0..{vocab_size}); this tokenizer does not belong to these weights"
                ),
            });
        }
        let dense = st
            .dense_dirs
            .iter()
            .map(|d| Dense::load(d))
            .collect::<Result<Vec<_>>>()?;
        let mut dimension = hidden_size * st.pooling.len();
        for d in &dense {
            if d.in_features() != dimension {
                return Err(Error::Unsupported(format!(
                    "Dense module expects {} inputs but pooling gives {dimension}",
                    d.in_features()
                )));
            }
            dimension = d.out_features();
        }
        let tasks = folder
            .as_ref()
            .and_then(|f| f.architecture.tasks.map(|tasks| tasks(&f.cfg)))
            .unwrap_or_default();
        if tasks.normalizes && !dir.join("modules.json").exists() {
            st.normalize = true; // the original `encode` normalizes by default
        }
        let (head, rerank_info, classifier) = match (&encoder, &folder) {
            (Encoder::Transformer(t), Some(folder)) => Self::load_head(&st.transformer_dir, folder, t, &tokenizer)?,
            _ => (None, None, None),
        };
        if let Some(head) = &head {
            // A reranker's or classifier's output is its logits: no pooling, Dense heads or
            // normalization.
            dimension = head.head.labels();
            st.normalize = false;
        }
        let sparse = match (st.splade, &folder, &encoder) {
            (Some(pooling), Some(folder), Encoder::Transformer(t)) => {
                let head = pool.install(|| MlmHead::load(&folder.cfg, &folder.weights, t.hidden, t.vocab_size))?;
                dimension = head.vocab;
                st.normalize = false;
                Some((head, pooling))
            }
            (Some(_), _, _) => {
                return Err(Error::Unsupported(format!(
                    "{}: SpladePooling needs a transformer with a masked-LM head",
                    dir.display()
                )))
            }
            _ => None,
        };
        let (multi, lexical) = match (&encoder, colbert) {
            (Encoder::Transformer(t), Some((spec, _))) => {
                let projection = colbert_projection
                    .iter()
                    .map(|d| Dense::load(d))
                    .collect::<Result<Vec<_>>>()?;
                let mut width = t.hidden;
                for d in &projection {
                    if d.in_features() != width {
                        return Err(Error::Unsupported(format!(
                            "{}: a ColBERT Dense module expects {} inputs but gets {width}",
                            dir.display(),
                            d.in_features()
                        )));
                    }
                    width = d.out_features();
                }
                if projection.is_empty() {
                    return Err(Error::Unsupported(format!(
                        "{}: a ColBERT model without a Dense projection",
                        dir.display()
                    )));
                }
                dimension = width;
                (Some(MultiVectorHead::Colbert { spec, projection }), None)
            }
            (Encoder::Transformer(t), None) if head.is_none() && sparse.is_none() => {
                load_bge_m3_heads(&st.transformer_dir, &tokenizer, t.hidden)?
            }
            _ => (None, None),
        };
        let matryoshka_dimensions = folder
            .as_ref()
            .map(|f| matryoshka_dimensions(&f.cfg))
            .unwrap_or_default();
        // Loading is done: the weight files' pages go back to the OS.
        drop(folder);
        let threads = pool.current_num_threads();
        let info = ModelInfo {
            dir: dir.to_owned(),
            architecture,
            hidden_size,
            dimension,
            max_input_tokens,
            vocab_size,
            pooling: st.pooling.clone(),
            normalize: st.normalize,
            prompts: st.prompts.clone(),
            default_prompt_name: st.default_prompt_name.clone(),
            dtype: options.dtype,
            tasks: tasks.names,
            task_instructions: tasks.instructions,
            matryoshka_dimensions,
            rerank: rerank_info,
            classifier,
            sparse: sparse.as_ref().map(|(_, p)| *p),
            sparse_query: st.sparse_query_dir.is_some(),
            multi_vector: multi.as_ref().map(MultiVectorHead::dimension),
            multi_vector_sides: matches!(multi, Some(MultiVectorHead::Colbert { .. })),
            lexical: lexical.is_some(),
        };
        Ok(Self {
            info,
            tokenizer,
            encoder,
            head,
            sparse,
            sparse_query: st.sparse_query_dir.as_deref().map(SparseStatic::load).transpose()?,
            dense,
            multi,
            lexical,
            threads,
            pool,
            scratches: Mutex::new(Vec::new()),
        })
    }

    /// The head of a folder that holds a reranker or classifier (see [`RerankKind::detect`]):
    /// a sequence-classification head reranks when it has one label and classifies with its
    /// labels either way; a yes/no head only reranks.
    fn load_head(
        dir: &Path,
        folder: &Folder,
        transformer: &Transformer,
        tokenizer: &TextTokenizer,
    ) -> Result<(Option<HeadParts>, Option<RerankInfo>, Option<ClassifierInfo>)> {
        let (cfg, weights) = (&folder.cfg, &folder.weights);
        let Some(kind) = folder.rerank else {
            return Ok((None, None, None));
        };
        let h = transformer.hidden;
        match kind {
            RerankKind::CrossEncoder => {
                let (head, classifier) = RerankHead::classifier(cfg, weights, folder.architecture, h)?;
                let rerank = match classifier.labels.len() {
                    1 => Some(RerankInfo {
                        kind,
                        activation: ScoreActivation::from_config(cfg)?,
                        template: None,
                    }),
                    _ => None,
                };
                let parts = HeadParts {
                    head,
                    segment_boundary: transformer
                        .embeddings
                        .token_type
                        .as_ref()
                        .filter(|t| t.len() >= 2 * h)
                        .and_then(|_| tokenizer.segment_boundary()),
                    template_ids: None,
                };
                Ok((Some(parts), rerank, Some(classifier)))
            }
            RerankKind::YesNo => {
                let template = YesNoTemplate::load(dir)?;
                let id = |token: &str| {
                    tokenizer.token_id(token).ok_or_else(|| Error::InvalidFile {
                        path: dir.join("tokenizer.json"),
                        message: format!(
                            "the reranker's answer token `{token}` is not in the vocabulary (set yes_token / \
                             no_token in {})",
                            YesNoTemplate::FILE
                        ),
                    })
                };
                let tables = folder.architecture.yes_no.map_or(&[][..], |y| y.tables);
                let head = RerankHead::yes_no(
                    weights,
                    tables,
                    transformer.vocab_size,
                    h,
                    id(&template.yes_token)?,
                    id(&template.no_token)?,
                )?;
                let ids = (tokenizer.ids_of(&template.prefix)?, tokenizer.ids_of(&template.suffix)?);
                let parts = HeadParts {
                    head,
                    segment_boundary: None,
                    template_ids: Some(ids),
                };
                let rerank = RerankInfo {
                    kind,
                    activation: ScoreActivation::Sigmoid,
                    template: Some(template),
                };
                Ok((Some(parts), Some(rerank), None))
            }
        }
    }

    /// Tokenizes (query, document) pairs for a reranker: the tokenizer's pair template for a
    /// cross-encoder (the document cut first when over the limit), the prompt template for a
    /// yes/no reranker (`instruction` replaces its default). `max_doc_tokens` caps each
    /// document of a cross-encoder pair. Refused for embedding models.
    pub fn tokenize_pairs(
        &self,
        query: &str,
        documents: &[&str],
        instruction: Option<&str>,
        truncation: Truncation,
        max_doc_tokens: Option<usize>,
    ) -> Result<Vec<TokenizedInput>> {
        let Some(parts) = &self.head else {
            return Err(Error::Unsupported("this model embeds texts; it does not rerank".into()));
        };
        let template = self.info.rerank.as_ref().and_then(|r| r.template.as_ref());
        self.pool.install(|| {
            use rayon::prelude::*;
            documents
                .par_iter()
                .map(|doc| match (template, &parts.template_ids) {
                    (Some(template), Some((prefix, suffix))) => {
                        let body = self.tokenizer.ids_of(&template.body(instruction, query, doc))?;
                        let fixed = prefix.len() + suffix.len();
                        let untruncated_tokens = fixed + body.len();
                        let limit = self.info.max_input_tokens;
                        let over_limit = untruncated_tokens > limit;
                        let keep = if over_limit && truncation != Truncation::None {
                            limit.saturating_sub(fixed)
                        } else {
                            body.len()
                        };
                        let mut ids = prefix.clone();
                        ids.extend_from_slice(&body[..keep.min(body.len())]);
                        ids.extend_from_slice(suffix);
                        Ok(TokenizedInput {
                            ids,
                            untruncated_tokens,
                            over_limit,
                            counted_all: true,
                        })
                    }
                    _ => self.tokenizer.tokenize_pair(query, doc, truncation, max_doc_tokens),
                })
                .collect()
        })
    }

    /// Scores tokenized pairs of a reranker in one packed batch: the activated score, or the raw
    /// logit with `raw`.
    pub fn score_ids(&self, inputs: &[&[u32]], raw: bool) -> Result<Vec<f32>> {
        if self.info.rerank.is_none() {
            return Err(Error::Unsupported("this model embeds texts; it does not rerank".into()));
        }
        let logits = self.embed_ids(inputs)?;
        Ok(self.scores_from_logits(&logits, raw))
    }

    /// A reranker's scores from its logits (one row per pair): the first logit, through the
    /// model's score activation unless `raw`. An embedding model's rows pass unchanged.
    pub fn scores_from_logits(&self, logits: &[Vec<f32>], raw: bool) -> Vec<f32> {
        let activation = self.info.rerank.as_ref().map(|r| r.activation).filter(|_| !raw);
        logits
            .iter()
            .map(|l| {
                let x = l.first().copied().unwrap_or(0.0);
                activation.map_or(x, |a| a.apply(x))
            })
            .collect()
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
            if ids.is_empty() && matches!(self.encoder, Encoder::Transformer(_)) {
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

    /// Runs the encoder on inputs packed into one batch and hands the per-token vectors
    /// (`tokens × hidden`, sequences end to end) to `f`.
    fn with_hidden<R>(
        &self,
        inputs: &[&[u32]],
        tasks: Option<&[Option<usize>]>,
        attended: Option<&[usize]>,
        between_layers: &mut (dyn FnMut() + Send),
        f: impl FnOnce(&PackedBatch, &[f32]) -> R,
    ) -> Result<R> {
        self.validate(inputs)?;
        let mut batch = PackedBatch::new(inputs);
        if let Some(attended) = attended {
            batch = batch.with_attended(attended);
        }
        if let Some(tasks) = tasks {
            if tasks.len() != inputs.len() {
                return Err(Error::Unsupported(format!(
                    "{} task entries for {} inputs",
                    tasks.len(),
                    inputs.len()
                )));
            }
            if let Some(&bad) = tasks.iter().flatten().find(|&&t| t >= self.info.tasks.len()) {
                return Err(Error::UnknownTask {
                    task: bad.to_string(),
                    known: self.info.tasks.clone(),
                });
            }
            batch = batch.with_tasks(tasks);
        }
        if let Some(boundary) = self.head.as_ref().and_then(|r| r.segment_boundary) {
            // A pair's second segment (after the template's first separator) is token type 1.
            let mut types = Vec::with_capacity(batch.total_tokens());
            for ids in inputs {
                let cut = ids.iter().position(|&t| t == boundary).map_or(ids.len(), |p| p + 1);
                types.extend((0..ids.len()).map(|i| u8::from(i >= cut)));
            }
            batch = batch.with_token_types(types);
        }
        match &self.encoder {
            Encoder::Transformer(transformer) => {
                let scratches = || self.scratches.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let mut scratch = scratches().pop().unwrap_or_default();
                self.pool
                    .install(|| transformer.forward_yielding(&batch, &mut scratch, self.threads, between_layers));
                let hidden = &scratch.hidden[..batch.total_tokens() * transformer.hidden];
                let result = f(&batch, hidden);
                scratches().push(scratch);
                Ok(result)
            }
            Encoder::Static(table) => Ok(f(&batch, &table.token_vectors(batch.ids()))),
        }
    }

    /// The last hidden state of every input (`tokens × hidden_size` each); for a static model,
    /// its token vectors.
    pub fn hidden_states(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let h = self.info.hidden_size;
        self.with_hidden(inputs, None, None, &mut || {}, |batch, hidden| {
            (0..batch.len())
                .map(|i| {
                    let r = batch.range(i);
                    hidden[r.start * h..r.end * h].to_vec()
                })
                .collect()
        })
    }

    /// Pooled rows (`inputs × hidden·modes`) before any Dense module; a reranker's or
    /// classifier's logits (`inputs × labels`).
    fn pooled(
        &self,
        inputs: &[&[u32]],
        tasks: Option<&[Option<usize>]>,
        between_layers: &mut (dyn FnMut() + Send),
    ) -> Result<Vec<f32>> {
        let h = self.info.hidden_size;
        if let (Encoder::Static(table), None) = (&self.encoder, &self.head) {
            // A table's mean needs only the ids, not the token vectors.
            self.validate(inputs)?;
            let mut pooled = vec![0.0f32; inputs.len() * h];
            self.pool.install(|| {
                use rayon::prelude::*;
                pooled
                    .par_chunks_mut(h)
                    .zip(inputs.par_iter())
                    .for_each(|(out, ids)| table.mean(ids, out));
            });
            return Ok(pooled);
        }
        let width = self.pooled_width();
        self.with_hidden(inputs, tasks, None, between_layers, |batch, hidden| {
            let mut pooled = vec![0.0f32; batch.len() * width];
            self.pool.install(|| {
                for (i, out) in pooled.chunks_exact_mut(width).enumerate() {
                    let r = batch.range(i);
                    self.pool_one(inputs[i], &hidden[r.start * h..r.end * h], out, self.threads);
                }
            });
            pooled
        })
    }

    /// Length of one input's row before the Dense modules: a head's labels, a sparse model's
    /// vocabulary, or the hidden size per pooling mode.
    fn pooled_width(&self) -> usize {
        match (&self.head, &self.sparse, &self.encoder) {
            (Some(parts), _, _) => parts.head.labels(),
            (None, Some((head, _)), _) => head.vocab,
            (None, None, Encoder::Static(_)) => self.info.hidden_size,
            (None, None, Encoder::Transformer(_)) => self.info.hidden_size * self.info.pooling.len(),
        }
    }

    /// One input's row before the Dense modules, from its ids and token vectors (`rows`):
    /// a head's logits, a sparse model's vocabulary weights, or the pooled modes.
    fn pool_one(&self, ids: &[u32], rows: &[f32], out: &mut [f32], threads: usize) {
        let h = self.info.hidden_size;
        match (&self.head, &self.sparse, &self.encoder) {
            (Some(parts), _, _) => parts.head.logits(rows, h, out),
            (None, Some((head, pooling)), _) => head.weights(rows, h, *pooling, out, threads),
            (None, None, Encoder::Static(table)) => table.mean(ids, out),
            (None, None, Encoder::Transformer(_)) => {
                for (m, mode) in self.info.pooling.iter().enumerate() {
                    mode.pool(rows, h, &mut out[m * h..(m + 1) * h]);
                }
            }
        }
    }

    /// Embeds token-id inputs in one packed forward pass: pooled, Dense, normalized as the
    /// model's sentence-transformers pipeline says.
    pub fn embed_ids(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.embed_ids_with_tasks(inputs, None)
    }

    /// The index of a task adapter by name; `Error::UnknownTask` lists the model's tasks.
    pub fn task_index(&self, task: &str) -> Result<usize> {
        self.info
            .tasks
            .iter()
            .position(|t| t == task)
            .ok_or_else(|| Error::UnknownTask {
                task: task.to_owned(),
                known: self.info.tasks.clone(),
            })
    }

    /// [`Self::embed_ids`] with a task adapter per input (`None` = the base weights), mixed
    /// freely inside the one packed batch. `tasks` indexes [`ModelInfo::tasks`].
    /// For a reranker or classifier each output is the input's raw logits (one per label).
    pub fn embed_ids_with_tasks(&self, inputs: &[&[u32]], tasks: Option<&[Option<usize>]>) -> Result<Vec<Vec<f32>>> {
        self.embed_ids_yielding(inputs, tasks, &mut || {})
    }

    /// [`Self::embed_ids_with_tasks`], calling `between_layers` after each transformer layer but
    /// the last, on the compute thread that runs the pass. It may embed another batch with this
    /// model there (a short request served inside a long batch); the outer pass resumes after.
    /// Not called for static models.
    pub fn embed_ids_yielding(
        &self,
        inputs: &[&[u32]],
        tasks: Option<&[Option<usize>]>,
        between_layers: &mut (dyn FnMut() + Send),
    ) -> Result<Vec<Vec<f32>>> {
        self.run_yielding(inputs, tasks, None, between_layers)
    }

    /// [`Self::embed_ids_yielding`] with an output kind per input (`None`: all pooled): an input
    /// marked [`Output::Tokens`] gets its last hidden states (`tokens × hidden_size`, flat; a
    /// static model's token vectors) instead of its vector, in the same forward pass as the
    /// others.
    pub fn run_yielding(
        &self,
        inputs: &[&[u32]],
        tasks: Option<&[Option<usize>]>,
        outputs: Option<&[Output]>,
        between_layers: &mut (dyn FnMut() + Send),
    ) -> Result<Vec<Vec<f32>>> {
        if let Some(outputs) = outputs.filter(|o| o.iter().any(|o| *o != Output::Pooled)) {
            return self.mixed_outputs(inputs, tasks, outputs, between_layers);
        }
        self.check_output(Output::Pooled)?;
        let pooled = self.pooled(inputs, tasks, between_layers)?;
        Ok(self.finish(pooled))
    }

    /// An error naming the model's outputs when it cannot give `output`.
    pub fn check_output(&self, output: Output) -> Result<()> {
        let info = &self.info;
        let has = match output {
            Output::Pooled => info.kind() != ModelKind::MultiVector,
            Output::Tokens => true,
            Output::MultiVector(_) | Output::Retrieval(_) => self.multi.is_some(),
            Output::Sparse => info.has_sparse(),
        };
        if has {
            return Ok(());
        }
        let wanted = match output {
            Output::Pooled => "a single vector per input",
            Output::Tokens => "token vectors",
            Output::MultiVector(_) => "a multi-vector output",
            Output::Retrieval(_) => "a late-interaction relevance score",
            Output::Sparse => "a sparse output",
        };
        Err(Error::Unsupported(format!(
            "this model does not give {wanted}; its outputs are: {}",
            info.outputs().join(", ")
        )))
    }

    /// Tokenizes texts for `side` (on the compute threads): a ColBERT model's query or document
    /// form (prefix, PyLate's lengths, query expansion); for other models the same as
    /// [`Self::tokenize`].
    pub fn tokenize_side(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        truncation: Truncation,
        side: Side,
    ) -> Result<Vec<TokenizedInput>> {
        match &self.multi {
            Some(MultiVectorHead::Colbert { spec, .. }) => {
                self.pool.install(|| spec.tokenize(&self.tokenizer, texts, side))
            }
            _ => self.tokenize(texts, prompt, truncation),
        }
    }

    /// One input's [`Output::Sparse`] row from its ids and last hidden states.
    fn sparse_output(&self, ids: &[u32], rows: &[f32]) -> Vec<f32> {
        match &self.lexical {
            Some(lexical) => sparse_row(lexical.weights(ids, rows)),
            None => {
                let mut weights = vec![0.0; self.pooled_width()];
                self.pool
                    .install(|| self.pool_one(ids, rows, &mut weights, self.threads));
                nonzero_row(weights)
            }
        }
    }

    /// Vectors from pooled rows (`rows × pooled_width`): through the Dense modules, then
    /// normalized when the model's pipeline says so.
    fn finish(&self, mut pooled: Vec<f32>) -> Vec<Vec<f32>> {
        let rows = pooled.len() / self.pooled_width().max(1);
        let mut dim = self.pooled_width();
        for d in &self.dense {
            pooled = d.forward(&pooled, rows);
            dim = d.out_features();
        }
        pooled
            .chunks_exact(dim.max(1))
            .map(|v| {
                let mut v = v.to_vec();
                if self.info.normalize {
                    normalize(&mut v);
                }
                v
            })
            .collect()
    }

    /// One forward pass whose inputs want different outputs: token rows copied out, the rest
    /// pooled (or scored by the head), put through the Dense modules and normalized as
    /// [`Self::embed_ids_yielding`] does.
    fn mixed_outputs(
        &self,
        inputs: &[&[u32]],
        tasks: Option<&[Option<usize>]>,
        outputs: &[Output],
        between_layers: &mut (dyn FnMut() + Send),
    ) -> Result<Vec<Vec<f32>>> {
        if outputs.len() != inputs.len() {
            return Err(Error::Unsupported(format!(
                "{} output kinds for {} inputs",
                outputs.len(),
                inputs.len()
            )));
        }
        for &output in outputs {
            self.check_output(output)?;
        }
        let h = self.info.hidden_size;
        let width = self.pooled_width();
        // A ColBERT query's positions do not attend to its expansion padding.
        let attended: Option<Vec<usize>> = match &self.multi {
            Some(MultiVectorHead::Colbert { spec, .. }) => Some(
                inputs
                    .iter()
                    .zip(outputs)
                    .map(|(ids, output)| match output {
                        Output::MultiVector(side) | Output::Retrieval(side) => spec.attended(ids, *side),
                        _ => ids.len(),
                    })
                    .collect(),
            ),
            _ => None,
        };
        let (mut out, pooled) =
            self.with_hidden(inputs, tasks, attended.as_deref(), between_layers, |batch, hidden| {
                let mut pooled = Vec::new();
                // SPLADE: the sparse inputs' tokens share the masked-LM head's GEMMs.
                let mut splade = match (&self.sparse, &self.lexical) {
                    (Some((head, pooling)), None) => {
                        let sparse: Vec<usize> = (0..batch.len()).filter(|&i| outputs[i] == Output::Sparse).collect();
                        let ranges: Vec<_> = sparse.iter().map(|&i| batch.range(i)).collect();
                        let rows = self
                            .pool
                            .install(|| head.sparse_rows(hidden, h, &ranges, *pooling, self.threads));
                        sparse.into_iter().zip(rows.into_iter().map(sparse_row)).collect()
                    }
                    _ => std::collections::HashMap::new(),
                };
                let out: Vec<Vec<f32>> = (0..batch.len())
                    .map(|i| {
                        let r = batch.range(i);
                        let rows = &hidden[r.start * h..r.end * h];
                        if let Some(row) = splade.remove(&i) {
                            return row;
                        }
                        match outputs[i] {
                            Output::Pooled => {
                                let start = pooled.len();
                                pooled.resize(start + width, 0.0);
                                self.pool_one(inputs[i], rows, &mut pooled[start..], 1);
                                Vec::new()
                            }
                            other => self.token_output(other, inputs[i], rows),
                        }
                    })
                    .collect();
                (out, pooled)
            })?;
        let mut vectors = self.finish(pooled).into_iter();
        for (slot, _) in out.iter_mut().zip(outputs).filter(|(_, o)| **o == Output::Pooled) {
            *slot = vectors.next().unwrap_or_default();
        }
        Ok(out)
    }

    /// One input's output other than [`Output::Pooled`], from its ids and last hidden states.
    fn token_output(&self, output: Output, ids: &[u32], rows: &[f32]) -> Vec<f32> {
        let h = self.info.hidden_size;
        let multi = |side| {
            self.multi
                .as_ref()
                .map_or_else(Vec::new, |m| m.vectors(ids, rows, h, side))
        };
        match output {
            Output::Pooled | Output::Tokens => rows.to_vec(),
            Output::MultiVector(side) => multi(side),
            Output::Sparse => self.sparse_output(ids, rows),
            Output::Retrieval(side) if self.lexical.is_some() => {
                // bge-m3: [dense vector | pair count | lexical pairs | token vectors].
                let mut dense = vec![0.0; self.pooled_width()];
                self.pool_one(ids, rows, &mut dense, 1);
                let mut row = self.finish(dense).pop().unwrap_or_default();
                let pairs = self.sparse_output(ids, rows);
                row.push((pairs.len() / 2) as f32);
                row.extend(pairs);
                row.extend(multi(side));
                row
            }
            Output::Retrieval(side) => multi(side),
        }
    }

    /// The relevance of a document to a query from their [`Output::Retrieval`] rows (the query's
    /// for [`Side::Query`]): ColBERT's MaxSim (the sum over query vectors of the best dot
    /// product); for bge-m3 FlagEmbedding's `compute_score` with equal weights: the mean of the
    /// dense dot product, the lexical matching score and the ColBERT score (MaxSim over the
    /// query's vector count).
    pub fn relevance<'a>(&self, query: &'a [f32], document: &'a [f32]) -> f32 {
        let dim = self.info.multi_vector.unwrap_or(1).max(1);
        if self.lexical.is_none() {
            return maxsim(query, document, dim);
        }
        // The parts of a row, in place: dense vector, lexical pairs, token vectors.
        let split = |row: &'a [f32]| -> (&'a [f32], Vec<(u32, f32)>, &'a [f32]) {
            let d = self.info.dimension.min(row.len());
            let n = row.get(d).map_or(0, |&n| n as usize);
            let pairs_end = d.saturating_add(1).saturating_add(n.saturating_mul(2)).min(row.len());
            let pairs = sparse_pairs(row.get(d + 1..pairs_end).unwrap_or_default()).collect();
            (&row[..d], pairs, row.get(pairs_end..).unwrap_or_default())
        };
        let (qd, qs, qm) = split(query);
        let (dd, ds, dm) = split(document);
        let dense: f32 = qd.iter().zip(dd).map(|(a, b)| a * b).sum();
        let lexical = sparse_dot(&qs, &ds);
        let colbert = maxsim(qm, dm, dim) / (qm.len() / dim).max(1) as f32;
        (dense + lexical + colbert) / 3.0
    }

    /// The query weights of an inference-free sparse model as [`Output::Sparse`] rows: each
    /// text tokenized without special tokens (cut at the query tokenizer's limit), each distinct
    /// id's table weight. `None` when the model has no query side.
    pub fn sparse_queries(&self, texts: &[&str]) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(query) = &self.sparse_query else {
            return Ok(None);
        };
        let toks = self
            .pool
            .install(|| query.tokenizer().tokenize(texts, None, Truncation::End))?;
        Ok(Some(toks.iter().map(|t| nonzero_row(query.weights(&t.ids))).collect()))
    }

    /// Tokenizes and embeds texts in one batch (a convenience for tools and tests).
    pub fn embed_texts(&self, texts: &[&str], truncation: Truncation) -> Result<Vec<Vec<f32>>> {
        let toks = self.tokenize(texts, None, truncation)?;
        let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        self.embed_ids(&ids)
    }
}
