//! Scaled dot-product attention over a packed batch, one task per (sequence, head), its two
//! products run on the SGEMM micro-kernels.
//!
//! Queries, keys and values come from one fused projection `[tokens × (q + k + v)]`. Supports
//! grouped-query attention (fewer key/value heads), causal masks, sliding windows and an additive
//! relative-position bias.

use crate::kernels::activation::Activation;
use crate::kernels::buffer;
use crate::kernels::math::{softmax_in_place, SOFTMAX_LANES};
use crate::kernels::sgemm::{Avx2, Avx512, Isa, MicroKernel, Portable, Tile};
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

/// Per-thread packed copies of one head's keys and values, plus a block of score rows.
#[derive(Default)]
struct HeadScratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static HEAD_SCRATCH: RefCell<HeadScratch> = RefCell::new(HeadScratch::default());
}

/// Computes attention for every sequence of a packed batch: reads `qkv` (`tokens × qkv_width`),
/// writes `out` (`tokens × out_width`). `attended`, when given, limits each sequence's keys to
/// its first `attended[s]` tokens (on top of `mask`).
pub fn attention(
    qkv: &[f32],
    out: &mut [f32],
    offsets: &[usize],
    attended: Option<&[usize]>,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
) {
    match Isa::detect() {
        Isa::Avx512 => attention_with::<Avx512>(qkv, out, offsets, attended, layout, mask, bias),
        Isa::Avx2 => attention_with::<Avx2>(qkv, out, offsets, attended, layout, mask, bias),
        Isa::Portable => attention_with::<Portable>(qkv, out, offsets, attended, layout, mask, bias),
    }
}

fn attention_with<K: MicroKernel>(
    qkv: &[f32],
    out: &mut [f32],
    offsets: &[usize],
    attended: Option<&[usize]>,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
) {
    let tokens = offsets.last().copied().unwrap_or(0);
    assert!(qkv.len() >= tokens * layout.qkv_width() && out.len() >= tokens * layout.out_width());
    assert!(layout.kv_heads > 0 && layout.heads.is_multiple_of(layout.kv_heads));
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    if let Some(b) = bias {
        let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(b.span >= longest && b.values.len() >= layout.heads * (2 * b.span - 1));
    }
    let seqs = offsets.len().saturating_sub(1);
    assert!(attended.is_none_or(|a| a.len() >= seqs));
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    crate::parallel::for_each_index(seqs * layout.heads, |task| {
        let (s, h) = (task / layout.heads, task % layout.heads);
        let (start, end) = (offsets[s], offsets[s + 1]);
        let keys = attended.map_or(end - start, |a| a[s].clamp(1, (end - start).max(1)));
        HEAD_SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            // SAFETY: this task alone writes columns h*d..(h+1)*d of rows start..end; the
            // asserts above bound them (and every row of `qkv` read) within the slices, and
            // `Isa::detect` chose a kernel this CPU runs.
            unsafe {
                let block = out_ptr.0.add(start * layout.out_width() + h * layout.head_dim);
                attend_one::<K>(qkv, start, end, keys, h, layout, mask, bias, &mut guard, block)
            }
        });
    });
}

/// The keys query `i` of a `len`-token sequence may attend to, of its first `keys` tokens
/// (`1 ≤ keys ≤ len`).
fn key_range(mask: Mask, i: usize, len: usize, keys: usize) -> (usize, usize) {
    let (lo, hi) = match mask {
        Mask::Bidirectional => (0, len),
        Mask::Causal => (0, i + 1),
        Mask::SlidingWindow(w) => (i.saturating_sub(w / 2), (i + w / 2 + 1).min(len)),
    };
    let hi = hi.min(keys);
    (lo.min(hi.saturating_sub(1)), hi)
}

/// One (sequence, head): `softmax(q·kᵀ/√d + bias) · v` as two products on the SGEMM
/// micro-kernel, `K::MR` queries at a time, each over the keys its mask allows among the first
/// `keys`.
///
/// # Safety
/// `out` must address this head's `d` columns of rows `start..end` (row stride `out_width`),
/// and the CPU must run `K`.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one<K: MicroKernel>(
    qkv: &[f32],
    start: usize,
    end: usize,
    keys_attended: usize,
    h: usize,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
    scratch: &mut HeadScratch,
    out: *mut f32,
) {
    let (nr, mr) = (K::NR, K::MR);
    let d = layout.head_dim;
    let stride = layout.qkv_width();
    let kvh = h / (layout.heads / layout.kv_heads);
    let k_off = layout.heads * d + kvh * d;
    let v_off = (layout.heads + layout.kv_heads) * d + kvh * d;
    let scale = 1.0 / (d as f32).sqrt();
    let len = end - start;
    if len == 0 {
        return; // an empty sequence has no queries (and no panels to size)
    }
    let ow = layout.out_width();
    let (lp, dp) = (len.div_ceil(nr) * nr, d.div_ceil(nr) * nr);

    // Scaled keys as panels of `nr` keys (`[d × nr]` each), the layout the micro-kernel
    // streams. Panel padding is left as it is: those scores become −∞ before softmax.
    let keys = buffer(&mut scratch.keys, lp * d);
    for (pc, panel) in keys.chunks_exact_mut(d * nr).enumerate() {
        let j0 = pc * nr;
        let src = qkv.as_ptr().add((start + j0) * stride + k_off);
        pack_keys(src, stride, nr.min(len - j0), d, scale, panel.as_mut_ptr(), nr);
    }
    // Values are read in place when a head is whole panels wide; otherwise they are copied
    // into zero-padded panels of `nr` columns (`[lp × nr]` each).
    let values_in_place = d.is_multiple_of(nr);
    let values = buffer(&mut scratch.values, if values_in_place { 0 } else { dp * lp });
    for (vb, panel) in values.chunks_exact_mut(lp * nr).enumerate() {
        let (x0, width) = (vb * nr, nr.min(d - vb * nr));
        for (j, row) in panel.chunks_exact_mut(nr).enumerate().take(len) {
            row[..width].copy_from_slice(&qkv[(start + j) * stride + v_off + x0..][..width]);
            row[width..].fill(0.0);
        }
    }
    let scores = buffer(&mut scratch.scores, mr * lp);

    for r0 in (0..len).step_by(mr) {
        let rows = mr.min(len - r0);
        // Ranges only grow with the query index, so the block needs keys from the first
        // row's start to the last row's end (whole panels).
        let klo = key_range(mask, r0, len, keys_attended).0 / nr * nr;
        let khi = key_range(mask, r0 + rows - 1, len, keys_attended).1.div_ceil(nr) * nr;
        let q = qkv.as_ptr().add((start + r0) * stride + h * d);
        for c in (klo..khi).step_by(nr) {
            K::tile(Tile {
                rows,
                kc: d,
                a: q,
                ars: stride,
                acs: 1,
                b: keys.as_ptr().add((c / nr) * d * nr),
                brs: nr,
                c: scores.as_mut_ptr().add(c),
                ldc: lp,
                cols: nr,
                overwrite: true,
                bias: None,
                act: Activation::Identity,
            });
        }
        // Padding keys weigh 0: the value product stops at the last real key.
        let kend = khi.min(len);
        for i in 0..rows {
            let (lo, hi) = key_range(mask, r0 + i, len, keys_attended);
            let row = &mut scores[i * lp..(i + 1) * lp];
            if let Some(b) = bias {
                let width = 2 * b.span - 1;
                let table = &b.values[h * width..(h + 1) * width];
                // rel = j - i sits at index j - i + span - 1.
                let base = b.span - 1 - (r0 + i);
                for (r, &t) in row[lo..hi].iter_mut().zip(&table[base + lo..base + hi]) {
                    *r += t;
                }
            }
            // Keys outside the mask get −∞, which softmax turns into exactly 0, so it runs
            // over whole vectors: from the block's first key to the row's last, rounded up.
            let e = hi.next_multiple_of(SOFTMAX_LANES).min(khi);
            row[klo..lo].fill(f32::NEG_INFINITY);
            row[hi..e].fill(f32::NEG_INFINITY);
            softmax_in_place(&mut row[klo..e]);
            if e < kend {
                row[e..kend].fill(0.0);
            }
        }
        for vb in 0..dp / nr {
            let (b, brs) = if values_in_place {
                (qkv.as_ptr().add((start + klo) * stride + v_off + vb * nr), stride)
            } else {
                (values.as_ptr().add(vb * lp * nr + klo * nr), nr)
            };
            K::tile(Tile {
                rows,
                kc: kend - klo,
                a: scores.as_ptr().add(klo),
                ars: lp,
                acs: 1,
                b,
                brs,
                c: out.add(r0 * ow + vb * nr),
                ldc: ow,
                cols: nr.min(d - vb * nr),
                overwrite: true,
                bias: None,
                act: Activation::Identity,
            });
        }
    }
}

/// Writes `count` keys (`d` floats each, rows `stride` apart from `src`) times `scale` as the
/// first `count` columns of a `[d × nr]` panel; 8×8 blocks go through registers on AVX CPUs.
///
/// # Safety
/// `src` must address `count` rows of `d` floats, `panel` `d · nr` floats, `count ≤ nr`.
unsafe fn pack_keys(src: *const f32, stride: usize, count: usize, d: usize, scale: f32, panel: *mut f32, nr: usize) {
    let (mut full_rows, mut full_cols) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::has_avx2_fma() {
        (full_rows, full_cols) = (count / 8 * 8, d / 8 * 8);
        transpose_8x8_blocks(src, stride, full_rows, full_cols, scale, panel, nr);
    }
    for j in 0..count {
        let from = if j < full_rows { full_cols } else { 0 };
        for x in from..d {
            *panel.add(x * nr + j) = *src.add(j * stride + x) * scale;
        }
    }
}

/// The `rows × cols` corner (both multiples of 8) of [`pack_keys`], 8×8 blocks at a time.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_8x8_blocks(
    src: *const f32,
    stride: usize,
    rows: usize,
    cols: usize,
    scale: f32,
    panel: *mut f32,
    nr: usize,
) {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps(scale);
    for j in (0..rows).step_by(8) {
        for x in (0..cols).step_by(8) {
            let r: [__m256; 8] =
                std::array::from_fn(|i| _mm256_mul_ps(s, _mm256_loadu_ps(src.add((j + i) * stride + x))));
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let u = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            // u[i] holds columns i and i + 4 of rows 0..4, u[i + 4] the same of rows 4..8.
            for i in 0..4 {
                let low = _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]);
                let high = _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]);
                _mm256_storeu_ps(panel.add((x + i) * nr + j), low);
                _mm256_storeu_ps(panel.add((x + i + 4) * nr + j), high);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(qkv: &[f32], len: usize, keys: usize, l: HeadLayout, mask: Mask, bias: Option<&RelativeBias>) -> Vec<f32> {
        let (d, w) = (l.head_dim, l.qkv_width());
        let mut out = vec![0.0; len * l.out_width()];
        for h in 0..l.heads {
            let kvh = h / (l.heads / l.kv_heads);
            for i in 0..len {
                let (lo, hi) = key_range(mask, i, len, keys);
                let s: Vec<f64> = (lo..hi)
                    .map(|j| {
                        let dot = (0..d)
                            .map(|x| qkv[i * w + h * d + x] as f64 * qkv[j * w + (l.heads + kvh) * d + x] as f64)
                            .sum::<f64>();
                        let rel = bias.map_or(0.0, |b| b.values[h * (2 * b.span - 1) + j + b.span - 1 - i] as f64);
                        dot / (d as f64).sqrt() + rel
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for x in 0..d {
                    out[i * l.out_width() + h * d + x] = (lo..hi)
                        .map(|j| (s[j - lo] - m).exp() / z * qkv[j * w + (l.heads + l.kv_heads + kvh) * d + x] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    fn check<K: MicroKernel>(name: &str) {
        let layouts = [
            HeadLayout {
                heads: 2,
                kv_heads: 2,
                head_dim: 12,
            },
            HeadLayout {
                heads: 4,
                kv_heads: 2,
                head_dim: 40,
            },
            // Whole panels wide for every kernel: values are read in place.
            HeadLayout {
                heads: 3,
                kv_heads: 3,
                head_dim: 32,
            },
            HeadLayout {
                heads: 2,
                kv_heads: 1,
                head_dim: 64,
            },
        ];
        let masks = [Mask::Bidirectional, Mask::Causal, Mask::SlidingWindow(6)];
        // Lengths below, at and across the kernels' 4/6/14-row and 16/32-column tiles.
        let lens = [3usize, 1, 17, 40, 33];
        let longest = *lens.iter().max().unwrap_or(&1);
        // Each sequence's keys cut to its first few (ColBERT's unattended query expansion).
        let cut = [2usize, 1, 9, 40, 20];
        for (layout, attended) in layouts.into_iter().flat_map(|l| [(l, None), (l, Some(&cut[..]))]) {
            for mask in masks {
                for with_bias in [false, true] {
                    let w = layout.qkv_width();
                    let total: usize = lens.iter().sum();
                    let qkv: Vec<f32> = (0..total * w)
                        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                        .collect();
                    let bias = with_bias.then(|| RelativeBias {
                        values: (0..layout.heads * (2 * longest - 1))
                            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1)
                            .collect(),
                        span: longest,
                    });
                    let mut offsets = vec![0];
                    for l in lens {
                        offsets.push(offsets.last().unwrap() + l);
                    }
                    let mut out = vec![0.0; total * layout.out_width()];
                    attention_with::<K>(&qkv, &mut out, &offsets, attended, layout, mask, bias.as_ref());
                    for s in 0..lens.len() {
                        let (a, b) = (offsets[s], offsets[s + 1]);
                        let keys = attended.map_or(b - a, |c| c[s].min(b - a));
                        let want = naive(&qkv[a * w..b * w], b - a, keys, layout, mask, bias.as_ref());
                        let got = &out[a * layout.out_width()..b * layout.out_width()];
                        for (x, y) in got.iter().zip(&want) {
                            assert!(
                                (x - y).abs() < 1e-5,
                                "{name} {mask:?} bias {with_bias} keys {attended:?}: {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packed_attention_equals_per_sequence_on_every_kernel() {
        check::<Portable>("portable");
        if crate::kernels::has_avx2_fma() {
            check::<Avx2>("avx2");
        }
        if crate::kernels::has_avx512() {
            check::<Avx512>("avx512");
        }
    }
}
