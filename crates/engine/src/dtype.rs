//! The precision a model's dense layers compute in.

use std::fmt;
use std::str::FromStr;

/// Number format of the dense layers' weights and products. Norms, softmax, pooling and the
/// residual stream stay fp32 in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum DType {
    /// fp32 weights and products: the reference results.
    #[default]
    Float32,
    /// bf16 weights (half the memory) and bf16 products accumulated in fp32.
    Bfloat16,
    /// int8 weights (per output channel) and activations (per token), i32 accumulation.
    Int8,
}

impl DType {
    /// Every dtype, in the order of the accepted names.
    pub const ALL: [DType; 3] = [DType::Float32, DType::Bfloat16, DType::Int8];

    /// The canonical name: `float32`, `bfloat16` or `int8`.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Bfloat16 => "bfloat16",
            DType::Int8 => "int8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = String;

    /// Accepts the canonical names and the usual short forms (`fp32`, `f32`, `bf16`, `i8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "float32" | "fp32" | "f32" => Ok(DType::Float32),
            "bfloat16" | "bf16" => Ok(DType::Bfloat16),
            "int8" | "i8" | "qint8" => Ok(DType::Int8),
            other => Err(format!("unknown dtype `{other}` (expected float32, bfloat16 or int8)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.as_str().parse::<DType>(), Ok(d));
        }
        assert_eq!("BF16".parse::<DType>(), Ok(DType::Bfloat16));
        assert!("float16"
            .parse::<DType>()
            .unwrap_err()
            .contains("float32, bfloat16 or int8"));
    }
}
