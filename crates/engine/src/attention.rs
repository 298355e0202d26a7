//! Scaled dot-product attention over a packed batch, one task per (sequence, head).
//!
//! Queries, keys and values come from one fused projection `[tokens × (q + k + v)]`. Supports
//! grouped-query attention (fewer key/value heads), causal masks, sliding windows and an additive
//! relative-position bias.

use crate::kernels::math::softmax_in_place;
use crate::kernels::simd_dispatch;
use rayon::prelude::*;
use std::cell::RefCell;

/// Which keys a query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every token of the same sequence.
    Bidirectional,
    /// Tokens at or before the query (decoders).
    Causal,
    /// Tokens within `window / 2` positions on either side (ModernBERT local layers).
    SlidingWindow(usize),
}

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (equal to `heads` without grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl HeadLayout {
    /// Width of the fused q|k|v row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of the attention output row.
    pub fn out_width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// An additive bias per head and relative distance `key - query`, for distances
/// `-(span-1) ..= span-1`.
pub struct RelativeBias {
    /// `values[h * (2 * span - 1) + (rel + span - 1)]`.
    pub values: Vec<f32>,
    /// Longest sequence the table covers.
    pub span: usize,
}

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, head) blocks of the output; see `attention`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Per-thread packed copies of one head's keys (transposed) and values, plus the score row.
#[derive(Default)]
struct HeadScratch {
    keys_t: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static HEAD_SCRATCH: RefCell<HeadScratch> = RefCell::new(HeadScratch::default());
}

/// Register-block width of the attention micro-kernels (four AVX registers).
const BLOCK: usize = 32;

fn round_up(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Computes attention for every sequence of a packed batch: reads `qkv` (`tokens × qkv_width`),
/// writes `out` (`tokens × out_width`).
pub fn attention(
    qkv: &[f32],
    out: &mut [f32],
    offsets: &[usize],
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
) {
    let tokens = offsets.last().copied().unwrap_or(0);
    assert!(qkv.len() >= tokens * layout.qkv_width() && out.len() >= tokens * layout.out_width());
    assert!(layout.kv_heads > 0 && layout.heads.is_multiple_of(layout.kv_heads));
    if let Some(b) = bias {
        let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(b.span >= longest && b.values.len() >= layout.heads * (2 * b.span - 1));
    }
    let seqs = offsets.len().saturating_sub(1);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    (0..seqs * layout.heads).into_par_iter().for_each(|task| {
        let (s, h) = (task / layout.heads, task % layout.heads);
        let (start, end) = (offsets[s], offsets[s + 1]);
        HEAD_SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let scratch = &mut *guard;
            // SAFETY: this task alone writes columns h*d..(h+1)*d of rows start..end; the
            // assert above bounds them within `out`.
            let block = unsafe { out_ptr.0.add(start * layout.out_width() + h * layout.head_dim) };
            attend_one(qkv, start, end, h, layout, mask, bias, scratch, OutPtr(block));
        });
    });
}

fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

simd_dispatch! {
    #[allow(clippy::too_many_arguments)]
    fn attend_one(qkv: &[f32], start: usize, end: usize, h: usize, layout: HeadLayout, mask: Mask, bias: Option<&RelativeBias>, scratch: &mut HeadScratch, out: OutPtr) {
        let d = layout.head_dim;
        let stride = layout.qkv_width();
        let kvh = h / (layout.heads / layout.kv_heads);
        let k_off = layout.heads * d + kvh * d;
        let v_off = (layout.heads + layout.kv_heads) * d + kvh * d;
        let scale = 1.0 / (d as f32).sqrt();
        let len = end - start;
        let ow = layout.out_width();
        let (lp, dp) = (round_up(len), round_up(d));

        // Keys transposed to [d × lp] and values to [len × dp], zero-padded to whole blocks.
        let keys_t = grow(&mut scratch.keys_t, d * lp);
        keys_t.fill(0.0);
        let values = grow(&mut scratch.values, len * dp);
        for j in 0..len {
            let row = (start + j) * stride;
            let k = &qkv[row + k_off..][..d];
            for (x, &kv) in k.iter().enumerate() {
                keys_t[x * lp + j] = kv * scale;
            }
            let vrow = &mut values[j * dp..(j + 1) * dp];
            vrow[..d].copy_from_slice(&qkv[row + v_off..][..d]);
            vrow[d..].fill(0.0);
        }
        let scores = grow(&mut scratch.scores, lp);

        for i in 0..len {
            let (lo, hi) = match mask {
                Mask::Bidirectional => (0, len),
                Mask::Causal => (0, i + 1),
                Mask::SlidingWindow(w) => (i.saturating_sub(w / 2), (i + w / 2 + 1).min(len)),
            };
            let q = &qkv[(start + i) * stride + h * d..][..d];
            // scores[j] = q · k_j, BLOCK keys at a time held in registers.
            for jb in (lo / BLOCK * BLOCK..hi).step_by(BLOCK) {
                let mut acc = [0.0f32; BLOCK];
                for (x, &qx) in q.iter().enumerate() {
                    let kt = &keys_t[x * lp + jb..][..BLOCK];
                    for t in 0..BLOCK {
                        acc[t] = qx.mul_add(kt[t], acc[t]);
                    }
                }
                scores[jb..jb + BLOCK].copy_from_slice(&acc);
            }
            let row = &mut scores[lo..hi];
            if let Some(b) = bias {
                let width = 2 * b.span - 1;
                let table = &b.values[h * width..(h + 1) * width];
                // rel = j - i sits at index j - i + span - 1.
                let base = b.span - 1 - i;
                for (r, &t) in row.iter_mut().zip(&table[base + lo..base + hi]) {
                    *r += t;
                }
            }
            softmax_in_place(row);
            // out_i = Σ_j p_j v_j, BLOCK output columns at a time held in registers.
            for db in (0..dp).step_by(BLOCK) {
                let mut acc = [0.0f32; BLOCK];
                for (j, &p) in (lo..hi).zip(row.iter()) {
                    let v = &values[j * dp + db..][..BLOCK];
                    for t in 0..BLOCK {
                        acc[t] = p.mul_add(v[t], acc[t]);
                    }
                }
                let n = BLOCK.min(d - db);
                // SAFETY: row i of this task's block lies inside `out` (checked by the caller).
                let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(i * ow + db), n) };
                o.copy_from_slice(&acc[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(qkv: &[f32], len: usize, l: HeadLayout, causal: bool) -> Vec<f32> {
        let (d, w) = (l.head_dim, l.qkv_width());
        let mut out = vec![0.0; len * l.out_width()];
        for h in 0..l.heads {
            let kvh = h / (l.heads / l.kv_heads);
            for i in 0..len {
                let n = if causal { i + 1 } else { len };
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d)
                            .map(|x| qkv[i * w + h * d + x] as f64 * qkv[j * w + (l.heads + kvh) * d + x] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for x in 0..d {
                    out[i * l.out_width() + h * d + x] = (0..n)
                        .map(|j| (s[j] - m).exp() / z * qkv[j * w + (l.heads + l.kv_heads + kvh) * d + x] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn packed_attention_equals_per_sequence() {
        for (layout, causal) in [
            (
                HeadLayout {
                    heads: 2,
                    kv_heads: 2,
                    head_dim: 12,
                },
                false,
            ),
            (
                HeadLayout {
                    heads: 4,
                    kv_heads: 2,
                    head_dim: 8,
                },
                true,
            ),
        ] {
            let lens = [3usize, 1, 9];
            let w = layout.qkv_width();
            let total: usize = lens.iter().sum();
            let qkv: Vec<f32> = (0..total * w)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let mut offsets = vec![0];
            for l in lens {
                offsets.push(offsets.last().unwrap() + l);
            }
            let mut out = vec![0.0; total * layout.out_width()];
            let mask = if causal { Mask::Causal } else { Mask::Bidirectional };
            attention(&qkv, &mut out, &offsets, layout, mask, None);
            for s in 0..lens.len() {
                let (a, b) = (offsets[s], offsets[s + 1]);
                let want = naive(&qkv[a * w..b * w], b - a, layout, causal);
                let got = &out[a * layout.out_width()..b * layout.out_width()];
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{x} vs {y}");
                }
            }
        }
    }
}
