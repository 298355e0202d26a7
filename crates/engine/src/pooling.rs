//! From token hidden states to one vector: pooling modes, the optional Dense head, L2
//! normalization and Matryoshka truncation.

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::transformer::Linear;
use crate::weights::Weights;
use serde_json::Value;
use std::path::Path;

/// A pooling mode of sentence-transformers' `Pooling` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// First token (`[CLS]`).
    Cls,
    /// Mean over tokens.
    Mean,
    /// Element-wise max over tokens.
    Max,
    /// Sum divided by sqrt(token count).
    MeanSqrtLen,
    /// Last token (decoder embedding models).
    LastToken,
}

impl Pooling {
    /// Parses a name as used in configs and on the command line.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cls" | "cls_token" => Self::Cls,
            "mean" | "mean_tokens" => Self::Mean,
            "max" | "max_tokens" => Self::Max,
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Self::MeanSqrtLen,
            "lasttoken" | "last" | "last_token" => Self::LastToken,
            _ => return None,
        })
    }

    /// The config name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Mean => "mean",
            Self::Max => "max",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::LastToken => "lasttoken",
        }
    }

    /// Reads `dir/config.json` of a Pooling module; modes come out in sentence-transformers'
    /// concatenation order (cls, max, mean, mean_sqrt_len, lasttoken). Absent file = mean.
    pub fn from_config_dir(dir: &Path) -> Result<Vec<Self>> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Err(Error::MissingFile {
                path,
                expected: "the Pooling module's configuration named by modules.json".into(),
            });
        }
        let v = read_json(&path)?;
        let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        if on("pooling_mode_weightedmean_tokens") {
            return Err(Error::Unsupported(format!(
                "{}: pooling_mode_weightedmean_tokens",
                path.display()
            )));
        }
        if v.get("include_prompt").and_then(Value::as_bool) == Some(false) {
            return Err(Error::Unsupported(format!(
                "{}: include_prompt = false",
                path.display()
            )));
        }
        let mut modes = Vec::new();
        for (key, mode) in [
            ("pooling_mode_cls_token", Self::Cls),
            ("pooling_mode_max_tokens", Self::Max),
            ("pooling_mode_mean_tokens", Self::Mean),
            ("pooling_mode_mean_sqrt_len_tokens", Self::MeanSqrtLen),
            ("pooling_mode_lasttoken", Self::LastToken),
        ] {
            if on(key) {
                modes.push(mode);
            }
        }
        if modes.is_empty() {
            if let Some(name) = v.get("pooling_mode").and_then(Value::as_str) {
                modes.push(
                    Self::from_name(name)
                        .ok_or_else(|| Error::Unsupported(format!("{}: pooling_mode `{name}`", path.display())))?,
                );
            } else {
                return Err(Error::InvalidFile {
                    path,
                    message: "no pooling mode is enabled".into(),
                });
            }
        }
        Ok(modes)
    }

    /// Pools the rows of one sequence (`rows.len() = tokens × width`) into `out` (`width` long).
    pub fn pool(self, rows: &[f32], width: usize, out: &mut [f32]) {
        let n = rows.len() / width;
        if n == 0 {
            out.fill(0.0);
            return;
        }
        match self {
            Self::Cls => out.copy_from_slice(&rows[..width]),
            Self::LastToken => out.copy_from_slice(&rows[(n - 1) * width..]),
            Self::Max => {
                out.copy_from_slice(&rows[..width]);
                for r in rows.chunks_exact(width).skip(1) {
                    out.iter_mut().zip(r).for_each(|(o, &v)| *o = o.max(v));
                }
            }
            Self::Mean | Self::MeanSqrtLen => {
                out.fill(0.0);
                for r in rows.chunks_exact(width) {
                    out.iter_mut().zip(r).for_each(|(o, &v)| *o += v);
                }
                let d = if self == Self::Mean {
                    n as f32
                } else {
                    (n as f32).sqrt()
                };
                out.iter_mut().for_each(|o| *o /= d);
            }
        }
    }
}

/// sentence-transformers' `Dense` module: a linear layer with an activation.
pub struct Dense {
    linear: Linear,
    activation: Activation,
}

impl Dense {
    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::MissingFile {
                path: cfg_path,
                expected: "the Dense module configuration".into(),
            });
        }
        let cfg = read_json(&cfg_path)?;
        let get = |k: &str| {
            cfg.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::InvalidFile {
                    path: cfg_path.clone(),
                    message: format!("missing integer `{k}`"),
                })
        };
        let (inf, outf) = (get("in_features")?, get("out_features")?);
        let bias = cfg.get("bias").and_then(Value::as_bool).unwrap_or(true);
        let act_name = cfg
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("torch.nn.modules.activation.Tanh");
        let activation = Activation::from_name(act_name)
            .ok_or_else(|| Error::Unsupported(format!("{}: activation_function `{act_name}`", cfg_path.display())))?;
        let weights = Weights::open(dir, "Dense", &[])?;
        Ok(Self {
            linear: Linear::load(&weights, "linear", inf, outf, bias)?,
            activation,
        })
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.linear.in_features
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.linear.out_features
    }

    /// Applies the layer to `rows` vectors.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * self.linear.out_features];
        self.linear.forward(x, rows, &mut out, 1);
        self.activation.apply(&mut out);
        out
    }
}

/// Scales `v` to unit L2 norm (left as is when its norm is 0).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Keeps the first `dims` values of `v` (Matryoshka truncation), L2-normalized again when
/// `renormalize` is set: a model whose pipeline normalizes keeps giving unit vectors, one that
/// does not gives the plain cut, as sentence-transformers' `truncate_dim` does.
pub fn truncate_dimensions(v: &[f32], dims: usize, renormalize: bool) -> Result<Vec<f32>> {
    if dims == 0 || dims > v.len() {
        return Err(Error::BadDimensions {
            requested: dims,
            max: v.len(),
        });
    }
    let mut out = v[..dims].to_vec();
    if renormalize {
        normalize(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let rows = [1.0, -2.0, 3.0, 4.0, 5.0, 0.0];
        let mut out = [0.0; 2];
        Pooling::Mean.pool(&rows, 2, &mut out);
        assert_eq!(out, [3.0, 2.0 / 3.0]);
        Pooling::Max.pool(&rows, 2, &mut out);
        assert_eq!(out, [5.0, 4.0]);
        Pooling::Cls.pool(&rows, 2, &mut out);
        assert_eq!(out, [1.0, -2.0]);
        Pooling::LastToken.pool(&rows, 2, &mut out);
        assert_eq!(out, [5.0, 0.0]);
        Pooling::MeanSqrtLen.pool(&rows, 2, &mut out);
        assert!((out[0] - 9.0 / 3f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn matryoshka_cut_renormalizes_only_normalized_models() {
        let v = [3.0, 4.0, 12.0];
        let cut = truncate_dimensions(&v, 2, true).unwrap();
        assert!((cut[0] - 0.6).abs() < 1e-6 && (cut[1] - 0.8).abs() < 1e-6);
        assert_eq!(truncate_dimensions(&v, 2, false).unwrap(), [3.0, 4.0]);
        assert!(truncate_dimensions(&v, 0, true).is_err());
        assert!(truncate_dimensions(&v, 4, true).is_err());
    }
}
