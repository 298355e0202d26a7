//! Compressed outputs, for every front end that has a field for them (Cohere's
//! `embedding_types`, the `embedding_type` extension on `/v1/embeddings` and TEI's `/embed`,
//! `openembed embed --embedding-type`, Python's `precision`): vector databases store these at
//! 4× (`int8`, `uint8`) to 32× (`binary`, `ubinary`) less memory.
//!
//! - `binary` / `ubinary`: one bit per dimension, set when the value is > 0, packed 8 per byte,
//!   first dimension in the highest bit (numpy's `packbits`); `ubinary` is the byte, `binary` the
//!   byte − 128 as a signed integer — exactly sentence-transformers' `quantize_embeddings`.
//!   A vector of `d` dimensions gives `⌈d / 8⌉` numbers.
//! - `int8` / `uint8`: `int8 = round(x · 127 / scale)` clamped to ±127 and `uint8 = int8 + 128`,
//!   with one `scale` per model: the largest |value| over a fixed calibration set (150 built-in
//!   texts of many kinds and languages, shipped with openembed) embedded by the same model with
//!   the same `dimensions` and normalization. One scale for every dimension keeps the dot
//!   product of two `int8` vectors proportional to the float one (up to rounding), so vector
//!   databases can search the codes directly. The scale never depends on the other texts of a
//!   request: a text gets the same codes alone or in any batch. It is computed on first use and
//!   kept while the model is served (`scale` is reported with the codes where the protocol has
//!   room for it: `x ≈ int8 · scale / 127`).

use crate::error::RequestError;
use crate::plan::{Defaults, EmbedRequest, Input};
use crate::registry::ServedModel;
use std::sync::Arc;

/// The calibration texts of `int8` / `uint8` codes.
const CALIBRATION: &str = include_str!("../data/calibration.txt");

/// How vectors are handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EmbeddingType {
    /// float32, as computed.
    Float,
    /// Signed bytes on the model's calibrated per-dimension ranges.
    Int8,
    /// Unsigned bytes on the same ranges.
    Uint8,
    /// Sign bits packed 8 per byte, as signed bytes (byte − 128).
    Binary,
    /// Sign bits packed 8 per byte.
    Ubinary,
}

impl EmbeddingType {
    /// Every type, in Cohere's order.
    pub const ALL: [Self; 5] = [Self::Float, Self::Int8, Self::Uint8, Self::Binary, Self::Ubinary];

    /// `float`, `int8`, `uint8`, `binary` or `ubinary`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Binary => "binary",
            Self::Ubinary => "ubinary",
        }
    }

    /// The type called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The error for a name that is none of the types.
    pub fn unknown(name: &str, param: &str) -> RequestError {
        RequestError::invalid(
            format!(
                "'{name}' is not an embedding type; use one of {}.",
                Self::ALL.map(Self::name).join(", ")
            ),
            Some(param),
        )
    }

    /// Whether the codes need the model's calibrated ranges.
    pub fn needs_ranges(self) -> bool {
        matches!(self, Self::Int8 | Self::Uint8)
    }
}

/// The scale of `int8` / `uint8` codes: `x ≈ int8 · scale / 127`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranges {
    /// The largest |value| of the calibration vectors (1 when they are all zero).
    pub scale: f32,
}

impl Ranges {
    /// The scale of a set of vectors.
    pub fn from_vectors(vectors: &[Vec<f32>]) -> Self {
        let max = vectors.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
        Self {
            scale: if max > 0.0 && max.is_finite() { max } else { 1.0 },
        }
    }

    /// The signed code of each value.
    fn int8<'a>(&'a self, v: &'a [f32]) -> impl Iterator<Item = i8> + 'a {
        let k = 127.0 / self.scale;
        v.iter().map(move |&x| (x * k).round().clamp(-127.0, 127.0) as i8)
    }
}

/// Vectors in one of the [`EmbeddingType`]s (serialized as a list of number lists).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Codes {
    /// float32 values.
    Float(Vec<Vec<f32>>),
    /// Signed bytes (`int8`, `binary`).
    Signed(Vec<Vec<i8>>),
    /// Unsigned bytes (`uint8`, `ubinary`).
    Unsigned(Vec<Vec<u8>>),
}

impl Codes {
    /// Bytes the codes take in memory while a response is built (for budgets).
    pub fn len_values(&self) -> usize {
        match self {
            Self::Float(v) => v.iter().map(Vec::len).sum(),
            Self::Signed(v) => v.iter().map(Vec::len).sum(),
            Self::Unsigned(v) => v.iter().map(Vec::len).sum(),
        }
    }
}

/// Sign bits of `v` packed 8 per byte, first value in the highest bit.
fn pack_bits(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &x)| if x > 0.0 { byte | (0x80 >> i) } else { byte })
        })
        .collect()
}

/// `vectors` as `ty` (`ranges` are needed for `int8` and `uint8`).
pub fn encode(ty: EmbeddingType, vectors: &[Vec<f32>], ranges: Option<&Ranges>) -> Result<Codes, RequestError> {
    let ranges = || ranges.ok_or_else(|| RequestError::internal("int8 codes without calibrated ranges"));
    Ok(match ty {
        EmbeddingType::Float => Codes::Float(vectors.to_vec()),
        EmbeddingType::Int8 => {
            let r = ranges()?;
            Codes::Signed(vectors.iter().map(|v| r.int8(v).collect()).collect())
        }
        EmbeddingType::Uint8 => {
            let r = ranges()?;
            Codes::Unsigned(
                vectors
                    .iter()
                    .map(|v| r.int8(v).map(|c| (i16::from(c) + 128) as u8).collect())
                    .collect(),
            )
        }
        EmbeddingType::Binary => Codes::Signed(
            vectors
                .iter()
                .map(|v| pack_bits(v).into_iter().map(|b| (i16::from(b) - 128) as i8).collect())
                .collect(),
        ),
        EmbeddingType::Ubinary => Codes::Unsigned(vectors.iter().map(|v| pack_bits(v)).collect()),
    })
}

/// Which calibrated ranges a request needs: its vectors' `dimensions` and normalization.
pub type RangesKey = (Option<usize>, bool);

impl ServedModel {
    /// The vectors of a finished `request` as `ty` (its `int8` / `uint8` scale calibrated for the
    /// request's `dimensions` and normalization; blocking the first time).
    pub fn codes(
        &self,
        ty: EmbeddingType,
        request: &EmbedRequest,
        vectors: Vec<Vec<f32>>,
    ) -> Result<Codes, RequestError> {
        if ty == EmbeddingType::Float {
            return Ok(Codes::Float(vectors));
        }
        let ranges = if ty.needs_ranges() {
            let normalize = request.normalize.unwrap_or(self.model.info().normalize);
            Some(self.ranges(request.dimensions, normalize)?)
        } else {
            None
        };
        encode(ty, &vectors, ranges.as_deref())
    }

    /// The `int8` / `uint8` ranges of vectors cut to `dimensions` and normalized or not, from
    /// the built-in calibration texts embedded by this model (computed once per key, blocking:
    /// the texts run on the model's scheduler like any request).
    pub fn ranges(&self, dimensions: Option<usize>, normalize: bool) -> Result<Arc<Ranges>, RequestError> {
        let key: RangesKey = (dimensions, normalize);
        let mut cache = self.ranges.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ranges) = cache.get(&key) {
            return Ok(Arc::clone(ranges));
        }
        let request = EmbedRequest {
            model: self.name.clone(),
            truncate: Some(true),
            dimensions,
            normalize: Some(normalize),
            ..EmbedRequest::default()
        };
        let inputs: Vec<Input> = CALIBRATION
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Input::Text(l.to_string()))
            .collect();
        let vectors = self
            .submit(&request, &inputs, &Defaults::default(), usize::MAX)?
            .wait_blocking()?;
        let ranges = Arc::new(Ranges::from_vectors(&vectors.vectors));
        cache.insert(key, Arc::clone(&ranges));
        Ok(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_codes_are_numpys_packbits() {
        // 10 dimensions: 2 bytes, the second padded with zero bits.
        let v = vec![0.5, -1.0, 0.0, 2.0, 0.1, -0.1, 0.3, 0.3, -2.0, 1.0];
        assert_eq!(pack_bits(&v), vec![0b1001_1011, 0b0100_0000]);
        let Codes::Unsigned(u) = encode(EmbeddingType::Ubinary, std::slice::from_ref(&v), None).unwrap() else {
            panic!("ubinary is unsigned")
        };
        let Codes::Signed(s) = encode(EmbeddingType::Binary, &[v], None).unwrap() else {
            panic!("binary is signed")
        };
        assert_eq!(u[0], vec![155, 64]);
        assert_eq!(s[0], vec![27, -64]);
    }

    #[test]
    fn int8_codes_share_one_scale_and_clamp() {
        let r = Ranges::from_vectors(&[vec![-0.5, 0.1], vec![0.25, 0.0]]);
        assert_eq!(r.scale, 0.5);
        assert_eq!(Ranges::from_vectors(&[vec![0.0]]).scale, 1.0, "all-zero calibration");
        let Codes::Signed(s) = encode(EmbeddingType::Int8, &[vec![-0.5, 0.25, 0.001, 9.0]], Some(&r)).unwrap() else {
            panic!("int8 is signed")
        };
        assert_eq!(s, vec![vec![-127, 64, 0, 127]]);
        let Codes::Unsigned(u) = encode(EmbeddingType::Uint8, &[vec![-0.5, 0.25, -9.0]], Some(&r)).unwrap() else {
            panic!("uint8 is unsigned")
        };
        assert_eq!(u, vec![vec![1, 192, 1]]);
        assert!(encode(EmbeddingType::Int8, &[vec![0.0]], None).is_err());
    }
}
