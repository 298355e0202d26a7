//! The transformer stack shared by every architecture: embeddings, layers, final norm.
//!
//! Architecture files (`models/*.rs`) only translate a config and tensor names into these
//! building blocks; the forward pass exists once, for packed batches. Post-norm (BERT) and
//! pre-norm (ModernBERT, Qwen3) layers, LayerNorm and RMSNorm, plain and gated MLPs, fused QKV
//! with grouped-query heads, and mask kinds are all expressed here.

use crate::attention::{attention, HeadLayout, Mask, Products, RelativeBias};
use crate::dtype::DType;
use crate::error::Result;
use crate::kernels::activation::Activation;
use crate::kernels::bf16::{gemm_bf16, gemm_bf16_chained, gemm_bf16_fold, Bf16Isa, Bf16Rows, Bf16Weight};
use crate::kernels::int8::{gemm_int8, gemm_int8_chained, gemm_int8_fold, Int8Isa, Int8Weight};
use crate::kernels::norm::{layer_norm, residual_layer_norm, rms_norm, rms_norm_in_place};
use crate::kernels::sgemm::{sgemm, sgemm_fold, Isa, PackedWeight};
use crate::kernels::{buffer, par_rows, par_rows_mut, Fold, ROWS_PER_TASK};
use crate::packed::PackedBatch;
use crate::rotary::Rotary;
use crate::weights::{Tensor, Weights};

/// A dense layer `y = x·Wᵀ + b` with `W` of shape `[out × in]`, computed in the [`DType`]
/// it was built with.
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    lora: Option<Box<LoraAdapters>>,
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
}

/// Weights of a [`Linear`], packed once for the GEMM of its dtype and this CPU.
enum LinearWeight {
    Float32(PackedWeight),
    Bfloat16(Bf16Weight),
    Int8(Int8Weight),
}

impl Linear {
    /// Whether the weights are bf16 or int8 (not float32).
    pub fn reduced_precision(&self) -> bool {
        !matches!(self.weight, LinearWeight::Float32(_))
    }

    /// `out = act2(act1(x·W1ᵀ + b1)·W2ᵀ + b2)` with `self` as the first layer and `next` as
    /// the second, the intermediate handed over without a pass of its own where both layers
    /// run on AMX without task adapters (identical results): in bf16 (`mid`) for bf16 layers
    /// ([`gemm_bf16_chained`]), quantized strip by strip for int8 ones whose first fits
    /// ([`gemm_int8_chained`]). Returns false, having computed nothing, otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_chained(
        &self,
        next: &Linear,
        x: &[f32],
        rows: usize,
        acts: (Activation, Activation),
        mid: &mut Bf16Rows,
        out: &mut [f32],
        threads: usize,
    ) -> bool {
        if self.lora.is_some() || next.lora.is_some() {
            return false;
        }
        let (b1, b2) = (
            self.bias.as_ref().map(|b| b.data()),
            next.bias.as_ref().map(|b| b.data()),
        );
        match (&self.weight, &next.weight) {
            (LinearWeight::Bfloat16(w1), LinearWeight::Bfloat16(w2)) if w1.chains_into(w2) => {
                let (first, second) = ((w1, b1, acts.0), (w2, b2, acts.1));
                gemm_bf16_chained(x, rows, first, second, mid, out, next.out_features, threads);
                true
            }
            (LinearWeight::Int8(w1), LinearWeight::Int8(w2)) if w1.chains_into(w2, rows, threads) => {
                let (first, second) = ((w1, b1, acts.0), (w2, b2, acts.1));
                gemm_int8_chained(x, rows, first, second, out, next.out_features, threads);
                true
            }
            _ => false,
        }
    }

    /// Loads `{prefix}.weight` (`[out × in]`) and, when `with_bias`, `{prefix}.bias`, in the
    /// weights' dtype ([`Weights::dtype`]).
    pub fn load(w: &Weights, prefix: &str, in_features: usize, out_features: usize, with_bias: bool) -> Result<Self> {
        let (weight, bias) = Self::load_parts(w, prefix, in_features, out_features, with_bias)?;
        Ok(Self::new(weight, bias, w.dtype()))
    }

    /// Builds a layer from a `[out × in]` weight and optional bias, packing the weight for
    /// `dtype` on this CPU. The source's pages are handed back to the OS when it is mapped
    /// from the file: only the packed copy stays resident.
    pub fn new(weight: Tensor, bias: Option<Tensor>, dtype: DType) -> Self {
        let (out_features, in_features) = (weight.shape()[0], weight.shape()[1]);
        let data = weight.data();
        let packed = match dtype {
            DType::Float32 => LinearWeight::Float32(PackedWeight::pack(data, out_features, in_features, Isa::detect())),
            DType::Bfloat16 => {
                LinearWeight::Bfloat16(Bf16Weight::from_f32(data, out_features, in_features, Bf16Isa::detect()))
            }
            DType::Int8 => LinearWeight::Int8(Int8Weight::quantize(data, out_features, in_features, Int8Isa::detect())),
        };
        weight.release();
        Self {
            weight: packed,
            bias,
            lora: None,
            in_features,
            out_features,
        }
    }

    /// The same layer with low-rank task adapters (see [`LoraAdapters`]).
    pub fn with_lora(mut self, lora: LoraAdapters) -> Self {
        self.lora = Some(Box::new(lora));
        self
    }

    /// `out = act(x · W_tᵀ + b)` for the rows of a packed batch, `W_t` being the weight with
    /// the task adapter of each row's sequence added (the plain weight for sequences without
    /// one).
    pub fn forward_batch(&self, x: &[f32], batch: &PackedBatch, out: &mut [f32], act: Activation, threads: usize) {
        let rows = batch.total_tokens();
        let spans = match &self.lora {
            Some(_) => batch.task_spans(),
            None => Vec::new(),
        };
        match (&self.lora, spans.is_empty()) {
            (Some(lora), false) => {
                self.forward_act(x, rows, out, Activation::Identity, threads);
                lora.add(x, &spans, out, self.in_features, self.out_features, threads);
                if act != Activation::Identity {
                    par_rows_mut(&mut out[..rows * self.out_features], self.out_features, |c| {
                        act.apply(c)
                    });
                }
            }
            _ => self.forward_act(x, rows, out, act, threads),
        }
    }

    /// Loads a layer whose bias may or may not be stored.
    pub fn load_opt_bias(w: &Weights, prefix: &str, in_features: usize, out_features: usize) -> Result<Self> {
        let has_bias = w.contains(&format!("{prefix}.bias"));
        Self::load(w, prefix, in_features, out_features, has_bias)
    }

    /// Stacks layers with the same input width into one (fused Q|K|V): one GEMM instead of three.
    pub fn concat(parts: Vec<(Tensor, Option<Tensor>)>, dtype: DType) -> Self {
        let in_features = parts.first().map(|p| p.0.shape()[1]).unwrap_or(0);
        let out_features = parts.iter().map(|p| p.0.shape()[0]).sum();
        let mut weight = Vec::with_capacity(in_features * out_features);
        let with_bias = parts.iter().any(|p| p.1.is_some());
        let mut bias = Vec::with_capacity(if with_bias { out_features } else { 0 });
        for (w, b) in &parts {
            weight.extend_from_slice(w.data());
            if with_bias {
                match b {
                    Some(b) => bias.extend_from_slice(b.data()),
                    None => bias.extend(std::iter::repeat_n(0.0, w.shape()[0])),
                }
            }
        }
        for (w, _) in parts {
            w.release();
        }
        Self::new(
            Tensor::from_vec(weight, vec![out_features, in_features]),
            with_bias.then(|| Tensor::from_vec(bias, vec![out_features])),
            dtype,
        )
    }

    /// Loads `{prefix}.weight` / `{prefix}.bias` without packing, for [`Linear::concat`].
    pub fn load_parts(
        w: &Weights,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let weight = w.get(&format!("{prefix}.weight"), &[out_features, in_features])?;
        let bias = if with_bias {
            Some(w.get(&format!("{prefix}.bias"), &[out_features])?)
        } else {
            None
        };
        Ok((weight, bias))
    }

    /// `out[rows × out_features] = x[rows × in_features] · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        self.forward_act(x, rows, out, Activation::Identity, threads)
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|b| b.data())
    }

    /// The products `x · Wᵀ` (without the bias, see [`Self::bias`]) handed tile by tile to
    /// `fold` ([`Fold`]) instead of written out, by every dtype's GEMM: the output is never
    /// stored whole.
    pub fn forward_fold(&self, x: &[f32], rows: usize, fold: Fold, threads: usize) {
        match &self.weight {
            LinearWeight::Float32(w) => sgemm_fold(x, rows, w, fold, threads),
            LinearWeight::Bfloat16(w) => gemm_bf16_fold(x, rows, w, fold, threads),
            LinearWeight::Int8(w) => gemm_int8_fold(x, rows, w, fold, threads),
        }
    }

    /// `out = act(x · Wᵀ + b)`, the activation fused into the GEMM's store where possible.
    pub fn forward_act(&self, x: &[f32], rows: usize, out: &mut [f32], act: Activation, threads: usize) {
        let bias = self.bias.as_ref().map(|b| b.data());
        let n = self.out_features;
        match &self.weight {
            LinearWeight::Float32(w) => sgemm(x, rows, w, bias, act, out, n, threads),
            LinearWeight::Bfloat16(w) => gemm_bf16(x, rows, w, bias, act, out, n, threads),
            LinearWeight::Int8(w) => gemm_int8(x, rows, w, bias, act, out, n, threads),
        }
    }
}

/// Low-rank task adapters of a dense layer (LoRA, jina-embeddings-v3): for task `t` the
/// weight is `W + scale · B_t·A_t`, applied as `x·A_tᵀ` (rank wide) then `·(scale·B_t)ᵀ`
/// added to the output, only on the rows whose sequence asks for task `t`.
pub struct LoraAdapters {
    /// Per task, `A_t` (`[rank × in]`).
    down: Vec<Linear>,
    /// Per task, `scale · B_t` (`[out × rank]`).
    up: Vec<Linear>,
}

impl LoraAdapters {
    /// Builds adapters from per-task `A_t` (`[rank × in]`) and `B_t` (`[out × rank]`) with
    /// the factor `alpha / rank`; they stay in float32 (they are small).
    pub fn new(a: Vec<Tensor>, b: Vec<Tensor>, scale: f32) -> Self {
        let down = a.into_iter().map(|a| Linear::new(a, None, DType::Float32)).collect();
        let up = b
            .into_iter()
            .map(|b| {
                let shape = b.shape().to_vec();
                let scaled = b.data().iter().map(|v| v * scale).collect();
                Linear::new(Tensor::from_vec(scaled, shape), None, DType::Float32)
            })
            .collect();
        Self { down, up }
    }

    /// Number of tasks.
    pub fn tasks(&self) -> usize {
        self.down.len()
    }

    fn add(
        &self,
        x: &[f32],
        spans: &[(std::ops::Range<usize>, usize)],
        out: &mut [f32],
        inf: usize,
        outf: usize,
        threads: usize,
    ) {
        let mut low = Vec::new();
        let mut delta = Vec::new();
        for (rows, task) in spans {
            let (Some(down), Some(up)) = (self.down.get(*task), self.up.get(*task)) else {
                continue; // tasks are checked against the model before a batch is built
            };
            let n = rows.len();
            let rank = down.out_features;
            low.resize(n * rank, 0.0);
            delta.resize(n * outf, 0.0);
            down.forward(&x[rows.start * inf..rows.end * inf], n, &mut low, threads);
            up.forward(&low, n, &mut delta, threads);
            out[rows.start * outf..rows.end * outf]
                .iter_mut()
                .zip(&delta)
                .for_each(|(o, d)| *o += d);
        }
    }
}

/// A normalization layer.
pub enum Norm {
    /// LayerNorm with optional bias.
    Layer {
        /// Scale.
        weight: Tensor,
        /// Shift (zeros when absent).
        bias: Vec<f32>,
        /// Epsilon.
        eps: f32,
    },
    /// RMSNorm.
    Rms {
        /// Scale.
        weight: Tensor,
        /// Epsilon.
        eps: f32,
    },
}

impl Norm {
    /// Loads a LayerNorm `{prefix}.weight` / `{prefix}.bias` (bias optional).
    pub fn layer(w: &Weights, prefix: &str, width: usize, eps: f64) -> Result<Self> {
        let weight = w.get(&format!("{prefix}.weight"), &[width])?;
        let bias = match w.get_opt(&format!("{prefix}.bias"), &[width])? {
            Some(b) => b.data().to_vec(),
            None => vec![0.0; width],
        };
        Ok(Norm::Layer {
            weight,
            bias,
            eps: eps as f32,
        })
    }

    /// Loads an RMSNorm `{prefix}.weight`.
    pub fn rms(w: &Weights, prefix: &str, width: usize, eps: f64) -> Result<Self> {
        Ok(Norm::Rms {
            weight: w.get(&format!("{prefix}.weight"), &[width])?,
            eps: eps as f32,
        })
    }

    /// `out = norm(x)` row by row.
    pub fn apply(&self, x: &[f32], out: &mut [f32], width: usize) {
        match self {
            Norm::Layer { weight, bias, eps } => {
                par_rows(x, out, width, |x, o| layer_norm(x, o, width, weight.data(), bias, *eps))
            }
            Norm::Rms { weight, eps } => par_rows(x, out, width, |x, o| rms_norm(x, o, width, weight.data(), *eps)),
        }
    }

    /// `x = norm(x)` row by row.
    pub fn apply_in_place(&self, x: &mut [f32], width: usize) {
        match self {
            Norm::Layer { weight, bias, eps } => par_rows_mut(x, width, |rows| {
                let mut input = vec![0.0; width];
                for row in rows.chunks_exact_mut(width) {
                    input.copy_from_slice(row);
                    layer_norm(&input, row, width, weight.data(), bias, *eps)
                }
            }),
            Norm::Rms { weight, eps } => par_rows_mut(x, width, |rows| {
                rows.chunks_exact_mut(width)
                    .for_each(|row| rms_norm_in_place(row, width, weight.data(), *eps))
            }),
        }
    }

    /// `hidden = norm(x + hidden)` row by row (post-norm residual).
    pub fn apply_residual(&self, x: &[f32], hidden: &mut [f32], width: usize) {
        match self {
            Norm::Layer { weight, bias, eps } => par_rows(x, hidden, width, |x, h| {
                residual_layer_norm(x, h, width, weight.data(), bias, *eps)
            }),
            Norm::Rms { weight, eps } => par_rows(x, hidden, width, |x, h| {
                for row in 0..h.len() / width {
                    let r = row * width..(row + 1) * width;
                    h[r.clone()].iter_mut().zip(&x[r.clone()]).for_each(|(a, b)| *a += b);
                    rms_norm_in_place(&mut h[r], width, weight.data(), *eps);
                }
            }),
        }
    }
}

/// Where each block's normalization sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// `h = norm(h + f(h))` (BERT family).
    Post,
    /// `h = h + f(norm(h))` (ModernBERT, Qwen3).
    Pre,
}

/// Self-attention block with a fused q|k|v projection.
pub struct SelfAttention {
    /// Fused projection to `[q | k | v]`.
    pub qkv: Linear,
    /// Output projection.
    pub out: Linear,
    /// Head layout.
    pub layout: HeadLayout,
    /// Mask kind.
    pub mask: Mask,
    /// Rotary positions applied to q and k (NomicBERT, ModernBERT, Qwen3).
    pub rotary: Option<Rotary>,
    /// Per-head RMSNorm of q and k before the rotation (Qwen3).
    pub qk_norm: Option<QkNorm>,
}

/// Per-head RMSNorm weights for queries and keys (`[head_dim]` each).
pub struct QkNorm {
    /// Query scale.
    pub q: Tensor,
    /// Key scale.
    pub k: Tensor,
    /// Epsilon.
    pub eps: f32,
}

impl QkNorm {
    /// Loads `{prefix}.q_norm.weight` and `{prefix}.k_norm.weight`.
    pub fn rms(w: &Weights, prefix: &str, head_dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            q: w.get(&format!("{prefix}.q_norm.weight"), &[head_dim])?,
            k: w.get(&format!("{prefix}.k_norm.weight"), &[head_dim])?,
            eps: eps as f32,
        })
    }
}

impl SelfAttention {
    /// Per-head q/k norm and rotary positions on the projected `[t × (q|k|v)]` rows; a
    /// token's position is its index in its own sequence.
    fn position_qk(&self, qkv: &mut [f32], batch: &PackedBatch) {
        if self.rotary.is_none() && self.qk_norm.is_none() {
            return;
        }
        let l = self.layout;
        let (hd, width) = (l.head_dim, l.qkv_width());
        let mut positions = Vec::with_capacity(batch.total_tokens());
        for s in 0..batch.len() {
            positions.extend(0..batch.range(s).len());
        }
        let blocks = qkv[..positions.len() * width]
            .chunks_mut(ROWS_PER_TASK * width)
            .zip(positions.chunks(ROWS_PER_TASK))
            .collect();
        let norms = self.qk_norm.as_ref().map(|n| (n.q.data(), n.k.data(), n.eps));
        crate::parallel::for_each(blocks, |(rows, positions): (&mut [f32], &[usize])| {
            for (row, &p) in rows.chunks_exact_mut(width).zip(positions) {
                let (q, rest) = row.split_at_mut(l.heads * hd);
                let k = &mut rest[..l.kv_heads * hd];
                for (heads, is_q) in [(q, true), (k, false)] {
                    for head in heads.chunks_exact_mut(hd) {
                        if let Some((qw, kw, eps)) = norms {
                            rms_norm_in_place(head, hd, if is_q { qw } else { kw }, eps);
                        }
                        if let Some(r) = &self.rotary {
                            r.rotate(head, p);
                        }
                    }
                }
            }
        });
    }
}

/// Feed-forward block: `down(act(up(x)))`, or gated `down(act(gate(x)) * up(x))` where `up`
/// holds `[up | gate]`... see [`Mlp::gated`].
pub struct Mlp {
    /// Input projection (`[inter]`, or `[2·inter]` for gated MLPs).
    pub up: Linear,
    /// Output projection.
    pub down: Linear,
    /// Activation.
    pub activation: Activation,
    /// For gated MLPs, whether the gate is the first half of `up`'s output (else the second).
    pub gated: Option<GateOrder>,
}

/// Which half of a gated MLP's input projection is the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOrder {
    /// `[gate | up]`.
    GateFirst,
    /// `[up | gate]`.
    UpFirst,
}

/// One transformer layer.
pub struct Layer {
    /// Attention block.
    pub attention: SelfAttention,
    /// Norm around attention (`None` = identity, e.g. ModernBERT's first layer).
    pub attention_norm: Option<Norm>,
    /// Feed-forward block.
    pub mlp: Mlp,
    /// Norm around the MLP.
    pub mlp_norm: Norm,
    /// Norms of the attention and MLP outputs before their residual add in pre-norm layers
    /// (Gemma's "sandwich" norms).
    pub post_norms: Option<PostNorms>,
}

/// Norms applied to a pre-norm block's output before it is added to the residual stream.
pub struct PostNorms {
    /// After attention.
    pub attention: Norm,
    /// After the MLP.
    pub mlp: Norm,
}

/// Token embeddings: word (+ absolute position) (+ token type 0), then an optional norm.
pub struct Embeddings {
    /// `[vocab × hidden]`.
    pub word: Tensor,
    /// `[positions × hidden]`, absent for rotary models.
    pub position: Option<Tensor>,
    /// First position id (RoBERTa family: `pad_token_id + 1`).
    pub position_offset: usize,
    /// The token-type table (`types × hidden`, flattened): row 0 is added to every token
    /// unless the batch gives types (the second segment of a cross-encoder pair).
    pub token_type: Option<Vec<f32>>,
    /// Factor on the word embedding (Gemma: √hidden).
    pub scale: Option<f32>,
    /// Task adapters of the word and token-type tables (jina-embeddings-v3).
    pub lora: Option<EmbeddingLora>,
    /// Norm after the sum.
    pub norm: Option<Norm>,
}

/// An additive attention bias by relative position, shared by all layers.
pub enum PositionBias {
    /// MPNet's learned table over T5-style buckets.
    Bucketed(BucketedPositionBias),
    /// Symmetric ALiBi (JinaBERT): `-slope[h] · |key - query|`.
    Alibi(Vec<f32>),
}

impl PositionBias {
    fn table_for(&self, span: usize, heads: usize, out: &mut RelativeBias) {
        match self {
            PositionBias::Bucketed(b) => b.table_for(span, heads, out),
            PositionBias::Alibi(slopes) => {
                let width = 2 * span - 1;
                out.span = span;
                out.values.clear();
                for h in 0..heads {
                    let slope = slopes.get(h).copied().unwrap_or(0.0);
                    out.values
                        .extend((0..width).map(|r| -slope * (r as isize - (span as isize - 1)).unsigned_abs() as f32));
                }
            }
        }
    }
}

impl Embeddings {
    /// The token-type table `name` (`[types × hidden]`, flattened), when the weights have one.
    pub fn token_type_table(w: &Weights, name: &str, hidden: usize) -> Result<Option<Vec<f32>>> {
        match w.shape_of(name).and_then(|s| s.first().copied()) {
            Some(rows) => Ok(Some(w.get(name, &[rows, hidden])?.data().to_vec())),
            None => Ok(None),
        }
    }
}

/// Low-rank task adapters of an embedding table: for task `t`, token `id` gets
/// `A_t[id] · (scale · B_t)` added, and every token the task's token-type row delta.
pub struct EmbeddingLora {
    /// Per task, `A_t` (`[vocab × rank]`).
    pub a: Vec<Tensor>,
    /// Per task, `scale · B_t` (`[rank × hidden]`).
    pub b: Vec<Vec<f32>>,
    /// Per task, the change of token-type row 0 (`[hidden]`), if the model has token types.
    pub token_type: Vec<Vec<f32>>,
}

impl EmbeddingLora {
    fn add(&self, task: usize, id: usize, row: &mut [f32]) {
        let (Some(a), Some(b)) = (self.a.get(task), self.b.get(task)) else {
            return;
        };
        let h = row.len();
        for (r, &coef) in a.row(id).iter().enumerate() {
            row.iter_mut()
                .zip(&b[r * h..(r + 1) * h])
                .for_each(|(o, v)| *o += coef * v);
        }
        if let Some(tt) = self.token_type.get(task) {
            row.iter_mut().zip(tt).for_each(|(o, v)| *o += v);
        }
    }
}

/// MPNet-style bucketed relative position bias shared by all layers.
pub struct BucketedPositionBias {
    /// `[buckets × heads]`.
    pub table: Tensor,
    /// Number of buckets.
    pub buckets: usize,
    /// Distance beyond which buckets saturate.
    pub max_distance: usize,
}

impl BucketedPositionBias {
    /// The bucket of relative distance `rel = key - query` (T5/MPNet bidirectional scheme).
    pub fn bucket(&self, rel: isize) -> usize {
        let half = self.buckets / 2;
        let n = -rel;
        let mut ret = if n < 0 { half } else { 0 };
        let n = n.unsigned_abs();
        let max_exact = half / 2;
        if n < max_exact {
            ret += n;
        } else {
            let ratio = (n as f32 / max_exact as f32).ln() / (self.max_distance as f32 / max_exact as f32).ln();
            let large = max_exact + (ratio * (half - max_exact) as f32) as usize;
            ret += large.min(half - 1);
        }
        ret
    }

    fn table_for(&self, span: usize, heads: usize, out: &mut RelativeBias) {
        let width = 2 * span - 1;
        out.span = span;
        out.values.clear();
        out.values.resize(heads * width, 0.0);
        let t = self.table.data();
        for r in 0..width {
            let b = self.bucket(r as isize - (span as isize - 1));
            for h in 0..heads {
                out.values[h * width + r] = t[b * heads + h];
            }
        }
    }
}

/// A complete encoder (or decoder used as encoder) ready to run packed batches.
pub struct Transformer {
    /// Architecture name, for messages.
    pub architecture: String,
    /// Hidden width.
    pub hidden: usize,
    /// Rows of the word-embedding table: every token id must be below it.
    pub vocab_size: usize,
    /// Longest sequence the position scheme allows.
    pub max_positions: usize,
    /// Embedding stage.
    pub embeddings: Embeddings,
    /// Layers, in order.
    pub layers: Vec<Layer>,
    /// Norm placement for every layer.
    pub placement: NormPlacement,
    /// Final norm (pre-norm models).
    pub final_norm: Option<Norm>,
    /// Relative position bias (MPNet, JinaBERT).
    pub position_bias: Option<PositionBias>,
}

/// Reusable buffers for a forward pass; they grow to the largest batch seen and are kept.
#[derive(Default)]
pub struct Scratch {
    /// `[tokens × hidden]`: the output of the last forward.
    pub hidden: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    intermediate: Vec<f32>,
    /// The MLP's intermediate in bf16 when its two layers chain ([`Linear::forward_chained`]).
    rounded: Bf16Rows,
    gate: Vec<f32>,
    bias: Option<RelativeBias>,
}

impl Transformer {
    /// Runs the stack on a packed batch; the hidden states end in `scratch.hidden[..tokens*hidden]`.
    /// Ids must have been checked against [`Self::vocab_size`] and lengths against
    /// [`Self::max_positions`]. Runs as one [`crate::parallel::session`].
    pub fn forward(&self, batch: &PackedBatch, scratch: &mut Scratch, threads: usize) {
        self.forward_yielding(batch, scratch, threads, &mut || {})
    }

    /// [`Self::forward`], calling `between_layers` after every layer but the last, on the
    /// thread that runs the pass and inside its session: a caller can run another, small
    /// forward pass there (with its own [`Scratch`]), so a short request need not wait for a
    /// whole large batch.
    pub fn forward_yielding(
        &self,
        batch: &PackedBatch,
        scratch: &mut Scratch,
        threads: usize,
        between_layers: &mut (dyn FnMut() + Send),
    ) {
        crate::parallel::session(|| self.forward_in_session(batch, scratch, threads, between_layers))
    }

    fn forward_in_session(
        &self,
        batch: &PackedBatch,
        scratch: &mut Scratch,
        threads: usize,
        between_layers: &mut (dyn FnMut() + Send),
    ) {
        let t = batch.total_tokens();
        let hsz = self.hidden;
        self.embed(
            batch,
            buffer(&mut scratch.hidden, t * hsz),
            buffer(&mut scratch.normed, t * hsz),
        );
        if let Some(pb) = &self.position_bias {
            let heads = self.layers.first().map(|l| l.attention.layout.heads).unwrap_or(1);
            let span = batch.max_len().max(1);
            let table = scratch.bias.get_or_insert_with(|| RelativeBias {
                values: Vec::new(),
                span: 1,
            });
            pb.table_for(span, heads, table);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                between_layers();
            }
            self.run_layer(layer, batch, scratch, threads);
        }
        if let Some(norm) = &self.final_norm {
            let normed = buffer(&mut scratch.normed, t * hsz);
            norm.apply(&scratch.hidden[..t * hsz], normed, hsz);
            std::mem::swap(&mut scratch.hidden, &mut scratch.normed);
        }
    }

    fn embed(&self, batch: &PackedBatch, out: &mut [f32], tmp: &mut [f32]) {
        let e = &self.embeddings;
        let h = self.hidden;
        for s in 0..batch.len() {
            let r = batch.range(s);
            for (p, tok) in r.clone().enumerate() {
                let row = &mut out[tok * h..(tok + 1) * h];
                row.copy_from_slice(e.word.row(batch.ids()[tok] as usize));
                if let Some(f) = e.scale {
                    row.iter_mut().for_each(|v| *v *= f);
                }
                if let Some(pos) = &e.position {
                    for (a, b) in row.iter_mut().zip(pos.row(p + e.position_offset)) {
                        *a += b;
                    }
                }
                if let Some(tt) = &e.token_type {
                    let t = batch.token_type(tok) as usize;
                    let start = if (t + 1) * h <= tt.len() { t * h } else { 0 };
                    for (a, b) in row.iter_mut().zip(&tt[start..start + h]) {
                        *a += b;
                    }
                }
                if let (Some(lora), Some(task)) = (&e.lora, batch.task(s)) {
                    lora.add(task, batch.ids()[tok] as usize, row);
                }
            }
        }
        if let Some(norm) = &e.norm {
            tmp.copy_from_slice(out);
            norm.apply(tmp, out, h);
        }
    }

    fn run_layer(&self, layer: &Layer, batch: &PackedBatch, s: &mut Scratch, threads: usize) {
        let t = batch.total_tokens();
        let h = self.hidden;
        let att = &layer.attention;
        let pre = self.placement == NormPlacement::Pre;

        // Attention block.
        let input: &[f32] = match (&layer.attention_norm, pre) {
            (Some(norm), true) => {
                norm.apply(&s.hidden[..t * h], buffer(&mut s.normed, t * h), h);
                &s.normed[..t * h]
            }
            _ => &s.hidden[..t * h],
        };
        let qkv = buffer(&mut s.qkv, t * att.layout.qkv_width());
        att.qkv.forward_batch(input, batch, qkv, Activation::Identity, threads);
        att.position_qk(qkv, batch);
        let ctx = buffer(&mut s.context, t * att.layout.out_width());
        attention(
            qkv,
            ctx,
            batch.offsets(),
            batch.attended(),
            att.layout,
            att.mask,
            s.bias.as_ref(),
            // The products in bf16 where the layer's own weights are reduced.
            if att.qkv.reduced_precision() {
                Products::Bf16
            } else {
                Products::Float32
            },
        );
        let proj = buffer(&mut s.projected, t * h);
        att.out.forward_batch(ctx, batch, proj, Activation::Identity, threads);
        if let Some(post) = &layer.post_norms {
            post.attention.apply_in_place(proj, h);
        }
        self.residual(layer.attention_norm.as_ref(), proj, &mut s.hidden[..t * h], pre);

        // Feed-forward block.
        let input: &[f32] = if pre {
            layer
                .mlp_norm
                .apply(&s.hidden[..t * h], buffer(&mut s.normed, t * h), h);
            &s.normed[..t * h]
        } else {
            &s.hidden[..t * h]
        };
        let mlp = &layer.mlp;
        let proj = buffer(&mut s.projected, t * h);
        let acts = (mlp.activation, Activation::Identity);
        let chained = mlp.gated.is_none()
            && mlp
                .up
                .forward_chained(&mlp.down, input, t, acts, &mut s.rounded, proj, threads);
        if !chained {
            self.mlp_unchained(mlp, pre, batch, s, threads);
        }
        let proj = &mut s.projected[..t * h];
        if let Some(post) = &layer.post_norms {
            post.mlp.apply_in_place(proj, h);
        }
        self.residual(Some(&layer.mlp_norm), proj, &mut s.hidden[..t * h], pre);
    }

    /// The MLP as two (or, gated, three) separate GEMMs, the intermediate in fp32.
    /// Its input is the normed hidden state for pre-norm layers, the hidden state otherwise.
    fn mlp_unchained(&self, mlp: &Mlp, pre: bool, batch: &PackedBatch, s: &mut Scratch, threads: usize) {
        let (t, h) = (batch.total_tokens(), self.hidden);
        let input = if pre { &s.normed[..t * h] } else { &s.hidden[..t * h] };
        let up = buffer(&mut s.intermediate, t * mlp.up.out_features);
        let inter_width = match mlp.gated {
            None => {
                mlp.up.forward_batch(input, batch, up, mlp.activation, threads);
                mlp.up.out_features
            }
            Some(order) => {
                mlp.up.forward_batch(input, batch, up, Activation::Identity, threads);
                let half = mlp.up.out_features / 2;
                let gate = buffer(&mut s.gate, t * half);
                split_gated(up, gate, half, order, mlp.activation);
                half
            }
        };
        let proj = buffer(&mut s.projected, t * h);
        mlp.down.forward_batch(
            &s.intermediate[..t * inter_width],
            batch,
            proj,
            Activation::Identity,
            threads,
        );
    }

    fn residual(&self, norm: Option<&Norm>, x: &[f32], hidden: &mut [f32], pre: bool) {
        match (norm, pre) {
            (Some(norm), false) => norm.apply_residual(x, hidden, self.hidden),
            _ => hidden.iter_mut().zip(x).for_each(|(h, v)| *h += v),
        }
    }
}

/// Turns `[t × 2·half]` rows of `[a | b]` into `act(gate) * up` packed as `[t × half]` at the
/// start of `both`, using `gate` as temporary space.
fn split_gated(both: &mut [f32], gate: &mut [f32], half: usize, order: GateOrder, act: Activation) {
    let rows = gate.len() / half;
    let (gate_at, up_at) = match order {
        GateOrder::GateFirst => (0, half),
        GateOrder::UpFirst => (half, 0),
    };
    for r in 0..rows {
        let base = r * 2 * half;
        gate[r * half..(r + 1) * half].copy_from_slice(&both[base + gate_at..base + gate_at + half]);
        // Row r's destination ends at (r+1)·half ≤ base for r ≥ 1, so no unread data is overwritten.
        both.copy_within(base + up_at..base + up_at + half, r * half);
    }
    act.apply_gated(gate, &mut both[..rows * half]);
}
