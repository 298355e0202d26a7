//! `openembed._openembed`: the Python binding of the engine, kept thin — loading (with the
//! server's folder / hub-id resolution), tokenization and packed batches are the engine's own.
//! The pure-Python package `openembed` (python/openembed) wraps it with numpy, tqdm and
//! sentence-transformers' `encode` signature.

use openembed_engine::{budget_batches, DType, Error, LoadOptions, Truncation};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Tokens per engine batch when grouping inputs by length.
const BATCH_TOKENS: usize = 8192;

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

/// A loaded embedding model (see `openembed.Model`).
#[pyclass(frozen, module = "openembed._openembed")]
struct Model {
    inner: Arc<openembed_engine::Model>,
}

#[pymethods]
impl Model {
    /// Loads a model folder or Hugging Face hub id (`HF_HUB_OFFLINE` respected).
    #[new]
    #[pyo3(signature = (path, dtype = "float32", threads = None))]
    fn new(py: Python<'_>, path: &str, dtype: &str, threads: Option<usize>) -> PyResult<Self> {
        let dtype: DType = dtype.parse().map_err(|e: String| PyValueError::new_err(e))?;
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        let path = path.to_owned();
        let model = py.detach(move || {
            let local = std::path::Path::new(&path);
            let looks_local = local.is_absolute() || path.starts_with('.') || local.exists();
            let dir = if looks_local && !local.is_dir() {
                return Err(PyFileNotFoundError::new_err(format!("model folder not found: {path}")));
            } else {
                openembed_server::hub::resolve(&path).map_err(PyOSError::new_err)?
            };
            let options = LoadOptions {
                threads,
                dtype,
                ..LoadOptions::default()
            };
            openembed_engine::Model::load(&dir, &options).map_err(py_error)
        })?;
        Ok(Self { inner: Arc::new(model) })
    }

    /// Embeds texts (each with `prompt` in front, over-long ones cut at the model limit) in
    /// length-grouped batches of at most `batch_size` inputs. Returns (float32 bytes, rows, dim).
    #[pyo3(signature = (texts, batch_size = 32, prompt = None, task = None))]
    fn encode_raw<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
        prompt: Option<String>,
        task: Option<String>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let model = Arc::clone(&self.inner);
        let (bytes, rows, dim) = py
            .detach(move || -> Result<(Vec<u8>, usize, usize), Error> {
                let info = model.info();
                let task = task.as_deref().map(|t| model.task_index(t)).transpose()?;
                let prefix = info.prefix(task, prompt.as_deref());
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let toks = model.tokenize(&refs, prefix.as_deref(), Truncation::End)?;
                let mut order: Vec<usize> = (0..toks.len()).collect();
                order.sort_by_key(|&i| toks[i].tokens());
                let lengths: Vec<usize> = order.iter().map(|&i| toks[i].tokens()).collect();
                let dim = info.dimension;
                let mut out = vec![0f32; toks.len() * dim];
                for range in budget_batches(&lengths, BATCH_TOKENS) {
                    for chunk in order[range].chunks(batch_size) {
                        let ids: Vec<&[u32]> = chunk.iter().map(|&i| toks[i].ids.as_slice()).collect();
                        let tasks = task.map(|t| vec![Some(t); ids.len()]);
                        let vectors = model.embed_ids_with_tasks(&ids, tasks.as_deref())?;
                        for (&i, v) in chunk.iter().zip(vectors) {
                            out[i * dim..(i + 1) * dim].copy_from_slice(&v);
                        }
                    }
                }
                let bytes = out.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok((bytes, toks.len(), dim))
            })
            .map_err(py_error)?;
        Ok((PyBytes::new(py, &bytes), rows, dim))
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
