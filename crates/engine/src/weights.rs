//! Memory-mapped safetensors weights: single file or sharded, any model-name prefix, f32/f16/bf16.
//!
//! Large f32 tensors whose data is 4-byte aligned in the file are used straight from the
//! mapping (no copy: only the pages read become resident); small ones and f16/bf16 ones are
//! converted to owned f32 once.

use crate::dtype::DType;
use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// f32 tensors at least this large are used from the file mapping; smaller ones (biases, norm
/// parameters) are copied, so that once the model is built (the [`Weights`] dropped) every
/// page can go back to the OS, and the large tensors still read at run time (embedding tables) fault in
/// alone rather than with a small neighbour's file pages.
const MAPPED_MIN_BYTES: usize = 1 << 20;

/// An f32 matrix or vector, either borrowed from the file mapping or owned.
pub struct Tensor {
    data: TensorData,
    shape: Vec<usize>,
}

enum TensorData {
    Mapped { map: Arc<Mmap>, offset: usize, len: usize },
    Owned(Vec<f32>),
}

impl Tensor {
    /// Builds an owned tensor.
    pub fn from_vec(data: Vec<f32>, shape: Vec<usize>) -> Self {
        Self {
            data: TensorData::Owned(data),
            shape,
        }
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        match &self.data {
            TensorData::Owned(v) => v,
            // SAFETY: offset/len were checked against the mapping and 4-byte alignment at load;
            // the Arc keeps the mapping alive as long as self.
            TensorData::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f32, *len)
            },
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Drops the tensor and, when it is mapped from the file, tells the OS its pages are not
    /// needed any more (for weights that were copied into a packed layout): they leave
    /// resident memory and would be read again from the file if touched. Owned tensors are
    /// simply freed.
    pub fn release(self) {
        if let TensorData::Mapped { map, offset, len } = &self.data {
            const PAGE: usize = 4096;
            let base = map.as_ptr() as usize;
            let start = (base + offset).div_ceil(PAGE) * PAGE - base;
            let end = (base + offset + len * 4) / PAGE * PAGE - base;
            if end > start {
                // SAFETY: the mapping is private and read-only, so dropping its pages loses
                // nothing: a later read of this range (a neighbouring tensor sharing an edge
                // page is never cut, whole pages inside this tensor only) refaults from the
                // file. No reference into the range outlives `self`, which is consumed here.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }

    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.shape.last().copied().unwrap_or(0);
        &self.data()[i * w..(i + 1) * w]
    }
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of one model, indexed by name without model prefix.
pub struct Weights {
    shards: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
    architecture: String,
    dtype: DType,
    /// Random weights ([`Weights::random`]): the generator's seed, mixed with each tensor's name.
    random: Option<u64>,
}

impl Weights {
    /// Opens `model.safetensors` or the shards listed in `model.safetensors.index.json` in `dir`.
    /// Names starting with one of `prefixes` (a model class's, e.g. `bert.`) are indexed without it.
    pub fn open(dir: &Path, architecture: &str, prefixes: &[&str]) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::InvalidFile {
                path: index.clone(),
                message: e.to_string(),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::InvalidFile {
                    path: index.clone(),
                    message: "expected an object `weight_map`".into(),
                })?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_owned)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("pytorch_model.bin").exists() {
            return Self::open_torch(&dir.join("pytorch_model.bin"), architecture, prefixes);
        } else {
            return Err(Error::MissingFile {
                path: single,
                expected: "the model weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
                    .into(),
            });
        };
        Self::open_files(&files, architecture, prefixes)
    }

    /// Opens a PyTorch checkpoint (`pytorch_model.bin` as `torch.save` writes it, a zip
    /// archive): its pickle is read by [`crate::torch_pickle`]'s interpreter, which runs no
    /// pickle code and accepts only a plain state dict, and the tensors are read in place from
    /// a memory map like a safetensors file's.
    pub fn open_torch(path: &Path, architecture: &str, prefixes: &[&str]) -> Result<Self> {
        let tensors = crate::torch_pickle::index_state_dict(path)?;
        let map = map_file(path)?;
        let mut entries = HashMap::new();
        for t in tensors {
            if t.end > map.len() {
                return Err(Error::InvalidFile {
                    path: path.to_owned(),
                    message: format!("`{}` lies past the end of the file", t.name),
                });
            }
            let key = legacy_norm_name(strip_prefix(&t.name, prefixes));
            entries.insert(
                key,
                Entry {
                    shard: 0,
                    dtype: t.dtype,
                    shape: t.shape,
                    start: t.start,
                    end: t.end,
                },
            );
        }
        Ok(Self {
            shards: vec![(path.to_owned(), Arc::new(map))],
            entries,
            architecture: architecture.to_owned(),
            dtype: DType::Float32,
            random: None,
        })
    }

    /// Opens the given safetensors files as one set of weights.
    pub fn open_files(files: &[PathBuf], architecture: &str, prefixes: &[&str]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for path in files {
            let map = map_file(path)?;
            let st = SafeTensors::deserialize(&map).map_err(|e| Error::InvalidFile {
                path: path.clone(),
                message: format!("not a safetensors file: {e}"),
            })?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let data = view.data();
                let start = data.as_ptr() as usize - base;
                let key = legacy_norm_name(strip_prefix(&name, prefixes));
                entries.insert(
                    key,
                    Entry {
                        shard: shards.len(),
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        start,
                        end: start + data.len(),
                    },
                );
            }
            shards.push((path.clone(), Arc::new(map)));
        }
        Ok(Self {
            shards,
            entries,
            architecture: architecture.to_owned(),
            dtype: DType::Float32,
            random: None,
        })
    }

    /// Random weights: every tensor a loader asks for exists, with the shape it asks for
    /// (norm scales 1, biases 0, other values uniform in ±1/sqrt(last dimension)); none has a
    /// shape to look up. Models of real size for speed measurements, without files: the tensor
    /// names come from the architecture's own loader.
    pub fn random(architecture: &str) -> Self {
        Self {
            shards: Vec::new(),
            entries: HashMap::new(),
            architecture: architecture.to_owned(),
            dtype: DType::Float32,
            random: Some(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// A random tensor of `shape` for `name` (see [`Self::random`]).
    fn random_tensor(&self, seed: u64, name: &str, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let is_norm = name.contains("norm") || name.contains("LayerNorm") || name.contains("emb_ln");
        if is_norm || name.ends_with(".bias") {
            let v = if is_norm && name.ends_with(".weight") { 1.0 } else { 0.0 };
            return Tensor::from_vec(vec![v; n], shape.to_vec());
        }
        let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
        // Each tensor's stream starts from its name (FNV-1a): tensors are independent of each
        // other and of the order a loader asks for them. (One stream shared in asking order
        // repeated the encoder's first tensors in a head loaded from a second `Weights::random`,
        // which gave every token of the SPLADE benchmark's head input one huge channel, as no
        // trained model has.)
        let name_hash = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
        });
        let mut state = (seed ^ name_hash) | 1;
        let data = (0..n)
            .map(|_| {
                // xorshift64*: fast and good enough for weights nobody reads.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let r = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                (r * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(data, shape.to_vec())
    }

    /// The same weights, with dense layers to be built in `dtype` (see [`Self::dtype`]).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The dtype the dense layers built from these weights compute in (float32 unless set
    /// with [`Self::with_dtype`]). Other tensors (norms, embeddings, biases) stay fp32.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn path_of(&self, e: Option<&Entry>) -> PathBuf {
        let i = e.map(|e| e.shard).unwrap_or(0);
        self.shards.get(i).map(|s| s.0.clone()).unwrap_or_default()
    }

    /// True when a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some() || self.entries.contains_key(name)
    }

    /// Loads tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(seed) = self.random {
            return Ok(self.random_tensor(seed, name, shape));
        }
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path_of(None),
            name: name.to_owned(),
            architecture: self.architecture.clone(),
        })?;
        if e.shape != shape {
            return Err(Error::BadTensor {
                path: self.path_of(Some(e)),
                name: name.to_owned(),
                expected: format!("shape {shape:?}"),
                found: format!("shape {:?}", e.shape),
            });
        }
        self.load(name, e)
    }

    /// Loads tensor `name` when present.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Loads integer tensor `name` (I64, I32, U32 …) of exactly `shape` as non-negative `u32`s.
    pub fn get_ints(&self, name: &str, shape: &[usize]) -> Result<Vec<u32>> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path_of(None),
            name: name.to_owned(),
            architecture: self.architecture.clone(),
        })?;
        let bad = |expected: String| Error::BadTensor {
            path: self.path_of(Some(e)),
            name: name.to_owned(),
            expected,
            found: format!("{:?} of shape {:?}", e.dtype, e.shape),
        };
        if e.shape != shape {
            return Err(bad(format!("shape {shape:?}")));
        }
        let bytes = &self.shards[e.shard].1[e.start..e.end];
        let width = match e.dtype {
            Dtype::I64 | Dtype::U64 => 8,
            Dtype::I32 | Dtype::U32 => 4,
            Dtype::I16 | Dtype::U16 => 2,
            _ => return Err(bad("an integer dtype".into())),
        };
        let numel: usize = shape.iter().product();
        if bytes.len() != numel * width {
            return Err(bad("data matching the shape".into()));
        }
        bytes
            .chunks_exact(width)
            .map(|b| {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(b);
                let signed = matches!(e.dtype, Dtype::I64 | Dtype::I32 | Dtype::I16);
                let v = if signed && b[width - 1] & 0x80 != 0 {
                    -1
                } else {
                    i64::from_le_bytes(le)
                };
                u32::try_from(v).map_err(|_| bad("values in 0..2^32".into()))
            })
            .collect()
    }

    /// The shape of tensor `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn load(&self, name: &str, e: &Entry) -> Result<Tensor> {
        let (_, map) = &self.shards[e.shard];
        let bytes = &map[e.start..e.end];
        let numel: usize = e.shape.iter().product();
        let bad = |expected: &str| Error::BadTensor {
            path: self.path_of(Some(e)),
            name: name.to_owned(),
            expected: expected.to_owned(),
            found: format!("{:?} with {} bytes", e.dtype, bytes.len()),
        };
        let data = match e.dtype {
            Dtype::F32 => {
                if bytes.len() != numel * 4 {
                    return Err(bad("f32 data matching the shape"));
                }
                if (map.as_ptr() as usize + e.start).is_multiple_of(4) && bytes.len() >= MAPPED_MIN_BYTES {
                    TensorData::Mapped {
                        map: map.clone(),
                        offset: e.start,
                        len: numel,
                    }
                } else {
                    TensorData::Owned(
                        bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    )
                }
            }
            Dtype::F16 | Dtype::BF16 => {
                if bytes.len() != numel * 2 {
                    return Err(bad("16-bit data matching the shape"));
                }
                let half = e.dtype == Dtype::F16;
                TensorData::Owned(
                    bytes
                        .chunks_exact(2)
                        .map(|b| {
                            let bits = u16::from_le_bytes([b[0], b[1]]);
                            if half {
                                half::f16::from_bits(bits).to_f32()
                            } else {
                                half::bf16::from_bits(bits).to_f32()
                            }
                        })
                        .collect(),
                )
            }
            _ => return Err(bad("dtype F32, F16 or BF16")),
        };
        Ok(Tensor {
            data,
            shape: e.shape.clone(),
        })
    }
}

/// Loading is done when the weights are dropped: every page of the files' mappings goes back
/// to the OS. Packed weights were copied out, small tensors are owned, and what is still read
/// from the mapping (embedding rows) faults back in from the page cache when touched. Reading
/// a tensor pulls in its file's neighbouring pages with it (fault-around, large page-cache
/// folios), which per-tensor [`Tensor::release`] cannot all catch.
impl Drop for Weights {
    fn drop(&mut self) {
        for (_, map) in &self.shards {
            // SAFETY: the mapping is private and read-only, so no data lives only in its pages:
            // dropping them loses nothing, and any later read refaults from the file. Tensors
            // borrowing the mapping hold its Arc, so the range stays mapped.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

/// A norm's legacy tensor names as transformers reads them: `….gamma` is `….weight` and
/// `….beta` is `….bias` (old checkpoints, and what some `save_pretrained` versions write for
/// modules named `LayerNorm`).
/// A read-only memory map of a weights file.
fn map_file(path: &Path) -> Result<Mmap> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we rely on the model
    // files not being modified while the server runs.
    unsafe { Mmap::map(&file) }.map_err(io)
}

fn legacy_norm_name(name: &str) -> String {
    match (name.strip_suffix(".gamma"), name.strip_suffix(".beta")) {
        (Some(stem), _) => format!("{stem}.weight"),
        (_, Some(stem)) => format!("{stem}.bias"),
        _ => name.to_owned(),
    }
}

fn strip_prefix<'a>(name: &'a str, prefixes: &[&str]) -> &'a str {
    for p in prefixes {
        if let Some(rest) = name.strip_prefix(p) {
            return rest;
        }
    }
    name
}

/// Reads a UTF-8 file, mapping errors to [`Error::Io`].
pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}
