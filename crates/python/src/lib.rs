//! `openembed._openembed`: the Python binding, kept thin — it translates `encode`'s arguments
//! into a request of openembed's pipeline (the same plan, tokenization, batch queue and result
//! shaping as the server and the command line) and its errors into Python exceptions. The
//! pure-Python package `openembed` (python/openembed) wraps it with numpy, tqdm and
//! sentence-transformers' `encode` signature.

use openembed_engine::{DType, Error, LabelFunction, LoadOptions, Side, Truncation};
use openembed_pipeline::{
    ClassifyInput, ClassifyJob, Codes, Defaults, EmbedRequest, EmbeddingType, ErrorKind, Input, LoadError, ModelSpec,
    Plan, RequestError, SchedulerConfig, ServedModel, TokenIds,
};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A sparse vector's non-zero entries: (token ids, weights).
type SparseWeights = (Vec<u32>, Vec<f32>);

/// Inputs handed back at a time (the progress callback's step).
const CHUNK: usize = 1024;

/// The plan of a request for an output other than the vector (`request` says which; its model
/// and truncation are filled in here).
fn plan_of(served: &ServedModel, request: EmbedRequest, truncate: bool) -> Result<Plan, RequestError> {
    let request = EmbedRequest {
        model: served.name.clone(),
        truncate: Some(truncate),
        ..request
    };
    let defaults = Defaults {
        truncate_hint: "Pass truncate=True to cut over-long inputs at the limit instead.",
        ..Defaults::default()
    };
    served.plan(&request, &defaults)
}

/// Each text's row under `plan`, as the pipeline hands it back.
fn outputs_of(served: &ServedModel, plan: &Plan, texts: Vec<String>) -> Result<Vec<Vec<f32>>, RequestError> {
    let inputs: Vec<Input> = texts.into_iter().map(Input::Text).collect();
    let mut out = Vec::with_capacity(inputs.len());
    served.embed_chunked(plan, &inputs, CHUNK, |_, rows, _| -> Result<(), RequestError> {
        out.extend(rows);
        Ok(())
    })?;
    Ok(out)
}

/// The engine's error as the Python exception a user expects.
fn py_error(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::MissingFile { .. } => PyFileNotFoundError::new_err(message),
        Error::Io { .. } => PyOSError::new_err(message),
        e if e.is_input_error() => PyValueError::new_err(message),
        Error::InvalidFile { .. } | Error::MissingTensor { .. } | Error::BadTensor { .. } | Error::Unsupported(_) => {
            PyOSError::new_err(message)
        }
        _ => PyRuntimeError::new_err(message),
    }
}

/// A pipeline error as the Python exception a user expects: `ValueError` for a wrong request,
/// `RuntimeError` for a failure.
fn request_error(e: RequestError) -> PyErr {
    match e.kind {
        ErrorKind::Invalid | ErrorKind::ModelNotFound => PyValueError::new_err(e.message),
        ErrorKind::QueueFull | ErrorKind::Unavailable | ErrorKind::Internal => PyRuntimeError::new_err(e.message),
    }
}

/// Why `encode` stopped: the pipeline refused, or the progress callback raised.
enum Stop {
    Request(RequestError),
    Python(PyErr),
}

impl From<RequestError> for Stop {
    fn from(e: RequestError) -> Self {
        Self::Request(e)
    }
}

/// One input: a text or token ids.
#[derive(FromPyObject)]
enum PyInput {
    Text(String),
    Tokens(Vec<i64>),
}

/// A loaded embedding model (see `openembed.Model`), with its batch queue.
#[pyclass(frozen, module = "openembed._openembed")]
struct Model {
    served: Arc<ServedModel>,
    inner: Arc<openembed_engine::Model>,
}

#[pymethods]
impl Model {
    /// Loads a model folder or Hugging Face hub id (`HF_HUB_OFFLINE` respected); integer inputs
    /// are read as `token_ids` (`native`: the model's own, `cl100k_base` / `o200k_base`: tiktoken's).
    #[new]
    #[pyo3(signature = (path, dtype = "float32", threads = None, token_ids = "native"))]
    fn new(py: Python<'_>, path: &str, dtype: &str, threads: Option<usize>, token_ids: &str) -> PyResult<Self> {
        let dtype: DType = dtype.parse().map_err(|e: String| PyValueError::new_err(e))?;
        let token_ids: TokenIds = token_ids.parse().map_err(|e: String| PyValueError::new_err(e))?;
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        let path = path.to_owned();
        let served = py.detach(move || {
            let local = std::path::Path::new(&path);
            let looks_local = local.is_absolute() || path.starts_with('.') || local.exists();
            if looks_local && !local.is_dir() {
                return Err(PyFileNotFoundError::new_err(format!("model folder not found: {path}")));
            }
            let spec = ModelSpec {
                token_ids,
                dtype,
                ..ModelSpec::named(&path, &path)
            };
            let options = LoadOptions {
                threads,
                ..LoadOptions::default()
            };
            ServedModel::load(&spec, &options, SchedulerConfig::offline()).map_err(|e| match e {
                // The engine's own error keeps its exception type (a missing file, a bad tensor …).
                LoadError::Model { error, .. } => py_error(error),
                other => PyOSError::new_err(other.to_string()),
            })
        })?;
        let served = Arc::new(served);
        Ok(Self {
            inner: Arc::clone(&served.model),
            served,
        })
    }

    /// Embeds inputs (texts or token-id lists) as one request of the pipeline: `prompt` (text)
    /// or `prompt_name` in front of every text (default: the model's default prompt), `task`'s
    /// adapter, over-long inputs cut at the model limit (refused unless `truncate`), vectors cut
    /// to `dimensions` and L2-normalized when `normalize`. `progress(n)` is called as each `n`
    /// inputs finish. `precision` (`int8`, `uint8`, `binary`, `ubinary`) asks for compressed
    /// codes (see `openembed_pipeline::quantize`). Returns (bytes, rows, dim, numpy dtype).
    #[pyo3(signature = (inputs, prompt = None, prompt_name = None, task = None, dimensions = None, normalize = false, truncate = true, progress = None, precision = None))]
    #[allow(clippy::too_many_arguments)]
    fn encode_raw<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PyInput>,
        prompt: Option<String>,
        prompt_name: Option<String>,
        task: Option<String>,
        dimensions: Option<usize>,
        normalize: bool,
        truncate: bool,
        progress: Option<Py<PyAny>>,
        precision: Option<String>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize, &'static str)> {
        let ty = match precision.as_deref() {
            None | Some("float32") => EmbeddingType::Float,
            Some(name) => EmbeddingType::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "precision '{name}': expected float32, int8, uint8, binary or ubinary"
                ))
            })?,
        };
        let served = Arc::clone(&self.served);
        let inputs: Vec<Input> = inputs
            .into_iter()
            .map(|i| match i {
                PyInput::Text(t) => Input::Text(t),
                PyInput::Tokens(ids) => Input::Tokens(ids),
            })
            .collect();
        let request = EmbedRequest {
            model: served.name.clone(),
            prompt_name,
            prompt,
            task,
            truncate: Some(truncate),
            dimensions,
            normalize: Some(normalize),
            token_ids: None,
            ..EmbedRequest::default()
        };
        let result = py.detach(move || -> Result<(Vec<u8>, usize, usize), Stop> {
            let defaults = Defaults {
                truncate_hint: "Pass truncate=True to cut over-long inputs at the limit instead.",
                ..Defaults::default()
            };
            let plan = served.plan(&request, &defaults)?;
            let mut dim = plan.output_dimension(served.model.info().dimension);
            let mut bytes = Vec::with_capacity(inputs.len() * dim * 4);
            served.embed_chunked(&plan, &inputs, CHUNK, |_, vectors, _| -> Result<(), Stop> {
                let n = vectors.len();
                match served.codes(ty, &request, vectors)? {
                    Codes::Float(rows) => bytes.extend(rows.iter().flatten().flat_map(|x| x.to_le_bytes())),
                    Codes::Signed(rows) => {
                        dim = rows.first().map_or(dim, Vec::len);
                        bytes.extend(rows.iter().flatten().map(|&x| x as u8));
                    }
                    Codes::Unsigned(rows) => {
                        dim = rows.first().map_or(dim, Vec::len);
                        bytes.extend(rows.iter().flatten());
                    }
                }
                if let Some(callback) = &progress {
                    Python::attach(|py| callback.call1(py, (n,)).map(drop)).map_err(Stop::Python)?;
                }
                Ok(())
            })?;
            Ok((bytes, inputs.len(), dim))
        });
        match result {
            Ok((bytes, rows, dim)) => {
                let dtype = match ty {
                    EmbeddingType::Float => "<f4",
                    EmbeddingType::Int8 | EmbeddingType::Binary => "i1",
                    EmbeddingType::Uint8 | EmbeddingType::Ubinary => "u1",
                };
                Ok((PyBytes::new(py, &bytes), rows, dim, dtype))
            }
            Err(Stop::Request(e)) => Err(request_error(e)),
            Err(Stop::Python(e)) => Err(e),
        }
    }

    /// Every label with its score for each input (a text, or a pair with `second`), best
    /// first, as one classification request of the pipeline; `function` (softmax, sigmoid,
    /// none) replaces the model's; over-long inputs are refused unless `truncate`.
    #[pyo3(signature = (texts, pairs = None, function = None, truncate = false))]
    fn classify(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        pairs: Option<Vec<String>>,
        function: Option<String>,
        truncate: bool,
    ) -> PyResult<Vec<Vec<(String, f32)>>> {
        let function = match function.as_deref() {
            None => None,
            Some(name) => Some(LabelFunction::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!("function_to_apply '{name}': expected softmax, sigmoid or none"))
            })?),
        };
        let inputs: Vec<ClassifyInput> = match pairs {
            None => texts.into_iter().map(ClassifyInput::Text).collect(),
            Some(pairs) if pairs.len() == texts.len() => texts
                .into_iter()
                .zip(pairs)
                .map(|(a, b)| ClassifyInput::Pair(a, b))
                .collect(),
            Some(pairs) => {
                return Err(PyValueError::new_err(format!(
                    "{} texts but {} text pairs",
                    texts.len(),
                    pairs.len()
                )))
            }
        };
        let served = Arc::clone(&self.served);
        let truncation = if truncate { Truncation::End } else { Truncation::None };
        py.detach(move || -> Result<_, RequestError> {
            let mut labels = Vec::with_capacity(inputs.len());
            for chunk in inputs.chunks(openembed_pipeline::classify::MAX_INPUTS) {
                let job = ClassifyJob::new(
                    chunk.to_vec(),
                    truncation,
                    "Pass truncate=True to cut it at the limit instead.",
                )?;
                labels.extend(served.classify_blocking(&job, function, usize::MAX)?);
            }
            Ok(labels)
        })
        .map_err(request_error)
    }

    /// A sparse model's non-zero vocabulary weights of each text, as (indices, values): one
    /// request of the pipeline (documents through the model; with `is_query`, an
    /// inference-free model's query table). Over-long texts are cut unless `truncate` is false.
    #[pyo3(signature = (texts, is_query = false, truncate = true, max_active_dims = None, min_weight = None))]
    fn encode_sparse(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        is_query: bool,
        truncate: bool,
        max_active_dims: Option<usize>,
        min_weight: Option<f32>,
    ) -> PyResult<Vec<SparseWeights>> {
        let served = Arc::clone(&self.served);
        let nonzero = |row: Vec<f32>| -> SparseWeights { openembed_engine::sparse_pairs(&row).unzip() };
        py.detach(move || -> Result<Vec<SparseWeights>, RequestError> {
            let request = EmbedRequest {
                sparse: true,
                max_active_dims,
                min_weight,
                ..EmbedRequest::default()
            };
            let plan = plan_of(&served, request, truncate)?;
            if is_query {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let queries = served
                    .model
                    .sparse_queries(&refs)
                    .map_err(|e| RequestError::invalid(format!("The input could not be tokenized: {e}"), None))?;
                if let Some(queries) = queries {
                    return Ok(queries
                        .into_iter()
                        .map(|row| nonzero(plan.sparse_limits(row)))
                        .collect());
                }
            }
            Ok(outputs_of(&served, &plan, texts)?.into_iter().map(nonzero).collect())
        })
        .map_err(request_error)
    }

    /// Token vectors of each text: a ColBERT or bge-m3 model's multi-vector output (its query
    /// form with `is_query`), otherwise the last hidden states; per text the flat float32 bytes
    /// and the row count (rows are [`Self::multi_vector_dimension`] wide).
    #[pyo3(signature = (texts, is_query = false, truncate = true))]
    fn encode_multi(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        is_query: bool,
        truncate: bool,
    ) -> PyResult<Vec<(Vec<u8>, usize)>> {
        let served = Arc::clone(&self.served);
        py.detach(move || -> Result<Vec<(Vec<u8>, usize)>, RequestError> {
            let info = served.model.info();
            let width = info.multi_vector.unwrap_or(info.hidden_size).max(1);
            let request = EmbedRequest {
                token_vectors: true,
                side: if is_query { Side::Query } else { Side::Document },
                ..EmbedRequest::default()
            };
            let rows = outputs_of(&served, &plan_of(&served, request, truncate)?, texts)?;
            Ok(rows
                .into_iter()
                .map(|v| (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len() / width))
                .collect())
        })
        .map_err(request_error)
    }

    /// Width of the token vectors `encode_multi` gives.
    #[getter]
    fn multi_vector_dimension(&self) -> usize {
        let info = self.served.model.info();
        info.multi_vector.unwrap_or(info.hidden_size)
    }

    /// The model's outputs: `dense`, `sparse`, `multi_vector`, `scores`, `labels`.
    #[getter]
    fn outputs(&self) -> Vec<&'static str> {
        self.served.model.info().outputs()
    }

    /// Token ids of each text (special tokens included, `prompt` in front, cut at the limit).
    #[pyo3(signature = (texts, prompt = None))]
    fn tokenize(&self, py: Python<'_>, texts: Vec<String>, prompt: Option<String>) -> PyResult<Vec<Vec<u32>>> {
        let model = Arc::clone(&self.inner);
        py.detach(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let toks = model.tokenize(&refs, prompt.as_deref(), Truncation::End)?;
            Ok(toks.into_iter().map(|t| t.ids).collect())
        })
        .map_err(py_error)
    }

    /// Length of the vectors.
    #[getter]
    fn dimension(&self) -> usize {
        self.inner.info().dimension
    }

    /// Most tokens per input, special tokens included.
    #[getter]
    fn max_seq_length(&self) -> usize {
        self.inner.info().max_input_tokens
    }

    /// Pooling modes, in sentence-transformers' order.
    #[getter]
    fn pooling(&self) -> Vec<&'static str> {
        self.inner.info().pooling.iter().map(|p| p.name()).collect()
    }

    /// Whether the model's pipeline L2-normalizes.
    #[getter]
    fn normalize(&self) -> bool {
        self.inner.info().normalize
    }

    /// Named prompts of the model.
    #[getter]
    fn prompts(&self) -> BTreeMap<String, String> {
        self.inner.info().prompts.clone()
    }

    /// The prompt used when none is named.
    #[getter]
    fn default_prompt_name(&self) -> Option<String> {
        self.inner.info().default_prompt_name.clone()
    }

    /// Task adapters (jina-embeddings-v3), empty for other models.
    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.inner.info().tasks.clone()
    }

    /// `model_type` of the folder.
    #[getter]
    fn architecture(&self) -> String {
        self.inner.info().architecture.clone()
    }

    /// Precision of the dense layers.
    #[getter]
    fn dtype(&self) -> String {
        self.inner.info().dtype.to_string()
    }

    /// Compute threads.
    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads()
    }
}

/// The native module.
#[pymodule]
fn _openembed(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    Ok(())
}
