//! int8 dense layers: `Y = act(X · Wᵀ + b)` with `W` quantized once at load and `X` per call.
//!
//! - Weights: symmetric, one scale per output channel (`q = round(w / s)`, `|q| ≤ 127`), laid
//!   out in column panels whose consecutive `k` values are grouped the way the kernel's
//!   multiply instruction reads them (4 for `vpdpbusd` and the portable kernel, 2 for AVX2's
//!   `vpmaddwd`). The per-channel sums of the quantized weights are kept for the zero point.
//! - Activations: asymmetric, one scale and zero point per row (token), over `[min(x, 0),
//!   max(x, 0)]` mapped to `0..=255`. Rows are quantized independently, so one outlier token
//!   does not coarsen the others (ONNX Runtime's dynamic quantization uses one scale per
//!   tensor), and the heavy-tailed, one-sided input of a GELU MLP's down projection keeps all
//!   256 levels.
//! - Outliers: in each row, a value more than [`OUTLIER_RATIO`] times the row's mean
//!   magnitude (at most [`MAX_OUTLIERS`] of them, the largest) is left out of the codes and
//!   multiplied in fp32 against its dequantized weight column, so the few huge channels of
//!   transformer activations do not coarsen the row's scale. Everything about a row's
//!   quantization depends on that row alone, so a text's vector does not depend on the other
//!   texts of its batch.
//! - Products accumulate exactly in i32; the epilogue subtracts `zp·Σq_w`, scales by
//!   `s_x · s_w`, adds the outlier channels' fp32 products and the bias and applies the
//!   activation before the one store of fp32.
//!
//! `K` is never blocked (the i32 sums cover the whole depth); threads split the output as the
//! fp32 SGEMM does ([`super::sgemm::for_each_block`]).

use super::activation::Activation;
use super::amx::{Amx, Dot, TileUnit, Tiles};
use super::sgemm::{drive, SendPtr, TileOrder};
use super::{buffer, Aligned, Fold};
use crate::parallel;
use rayon::prelude::*;

/// The instruction set an [`Int8Weight`] is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// Plain Rust, 4×16 tiles.
    Portable,
    /// AVX2 `vpmaddwd` on sign-extended weights, 6×16 tiles.
    Avx2,
    /// 256-bit `vpdpbusd`, 6×16 tiles: AVX-VNNI, or the same instruction's AVX512-VL encoding
    /// on a CPU with AVX-512 VNNI (which is how it is tested there).
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd`, 14×32 tiles.
    Avx512Vnni,
    /// AMX `tdpbusd`: 32×32 blocks of four 16×16 tiles, `K` in steps of 64; the AVX-512 VNNI
    /// panel layout (with `k` padded to 64) and its epilogue.
    Amx,
}

impl Int8Isa {
    /// The best kernel this CPU runs (after [`super::ISA_ENV`]).
    pub fn detect() -> Self {
        if amx_usable() {
            Int8Isa::Amx
        } else if super::has_avx512_vnni() {
            Int8Isa::Avx512Vnni
        } else if super::has_avx_vnni() {
            Int8Isa::AvxVnni
        } else if super::has_avx2_fma() {
            Int8Isa::Avx2
        } else {
            Int8Isa::Portable
        }
    }

    /// True when this CPU runs the kernel.
    pub fn supported(self) -> bool {
        match self {
            Int8Isa::Portable => true,
            Int8Isa::Avx2 => super::has_avx2_fma(),
            Int8Isa::AvxVnni => super::has_avx_vnni() || super::has_avx512_vnni(),
            Int8Isa::Avx512Vnni => super::has_avx512_vnni(),
            Int8Isa::Amx => super::amx::has_amx(),
        }
    }

    /// Output columns per panel.
    fn nr(self) -> usize {
        match self {
            Int8Isa::Portable | Int8Isa::Avx2 | Int8Isa::AvxVnni => 16,
            Int8Isa::Avx512Vnni | Int8Isa::Amx => 32,
        }
    }

    /// Rows per micro-tile.
    fn mr(self) -> usize {
        match self {
            Int8Isa::Portable => 4,
            Int8Isa::Avx2 => AVX2_MR,
            Int8Isa::AvxVnni => 6,
            Int8Isa::Avx512Vnni => 14,
            Int8Isa::Amx => 2 * super::amx::TILE_ROWS,
        }
    }

    /// `k` is padded to a multiple of this (zero weights and codes in the padding).
    fn k_align(self) -> usize {
        match self {
            Int8Isa::Amx => super::amx::TILE_BYTES,
            _ => 4,
        }
    }

    /// Whether the kernel reads activation codes widened to u16 (AVX2's `vpmaddwd`).
    fn wide_codes(self) -> bool {
        self == Int8Isa::Avx2
    }

    /// Consecutive `k` values of one column stored together.
    fn group(self) -> usize {
        match self {
            Int8Isa::Avx2 => 2,
            Int8Isa::Portable | Int8Isa::AvxVnni | Int8Isa::Avx512Vnni | Int8Isa::Amx => 4,
        }
    }
}

/// Rows per AVX2 micro-tile, and per interleaved strip of its activation codes.
const AVX2_MR: usize = 6;

/// A `[n × k]` weight (PyTorch layout) quantized to int8 per output channel and packed.
pub struct Int8Weight {
    panels: Aligned<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of [`Int8Isa::k_align`] (zero weights in the padding).
    kp: usize,
    isa: Int8Isa,
}

impl Int8Weight {
    /// Quantizes and packs a row-major `[n × k]` weight for `isa`'s kernel.
    pub fn quantize(w: &[f32], n: usize, k: usize, isa: Int8Isa) -> Self {
        assert!(w.len() >= n * k, "int8: weight too short");
        let (nr, g) = (isa.nr(), isa.group());
        let kp = k.next_multiple_of(isa.k_align());
        let count = n.div_ceil(nr);
        let mut panels = Aligned::<i8>::zeroed(count * kp * nr);
        let mut scales = vec![0.0f32; count * nr];
        let mut sums = vec![0i32; count * nr];
        panels
            .par_chunks_mut(kp * nr)
            .zip(scales.par_chunks_mut(nr).zip(sums.par_chunks_mut(nr)))
            .enumerate()
            .for_each(|(p, (panel, (scales, sums)))| {
                for c in 0..nr.min(n - p * nr) {
                    let row = &w[(p * nr + c) * k..(p * nr + c + 1) * k];
                    let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
                    scales[c] = if amax > 0.0 { scale } else { 0.0 };
                    let mut sum = 0i32;
                    for (kk, &v) in row.iter().enumerate() {
                        let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
                        sum += q as i32;
                        panel[(kk / g) * nr * g + c * g + kk % g] = q;
                    }
                    sums[c] = sum;
                }
            });
        Self {
            panels,
            scales,
            sums,
            n,
            k,
            kp,
            isa,
        }
    }

    /// Column `c` of the weight (input channel `c`) dequantized: `n` values into `out`.
    fn dequantized_column(&self, c: usize, out: &mut [f32]) {
        let (nr, g) = (self.isa.nr(), self.isa.group());
        let first = (c / g) * nr * g + c % g;
        for ((panel, out), scales) in self
            .panels
            .chunks_exact(self.kp * nr)
            .zip(out[..self.n].chunks_mut(nr))
            .zip(self.scales.chunks_exact(nr))
        {
            let codes = panel[first..].iter().step_by(g);
            for ((o, &q), &s) in out.iter_mut().zip(codes).zip(scales) {
                *o = q as f32 * s;
            }
        }
    }
}

/// Per-row quantization of `x` (rows `k` apart): codes with row stride `kp` (zero padded),
/// scales and zero points, and each row's outliers, left out of the codes.
#[derive(Default)]
struct QuantizedRows {
    codes: Aligned<u8>,
    wide: Vec<u16>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    /// Per row: how many of its values are outliers (at most [`MAX_OUTLIERS`]).
    outlier_count: Vec<u8>,
    /// `[m × MAX_OUTLIERS]`: each row's outlier values, in fp32.
    outlier_x: Vec<f32>,
    /// `[m × MAX_OUTLIERS]`: their channels while rows are quantized, then each one's slot in
    /// `outlier_w`.
    outlier_slot: Vec<u32>,
    /// Per input channel: its slot in `outlier_w`, or `u32::MAX` when no row left it out.
    slot_of: Vec<u32>,
    /// `[slots × outlier_stride(n)]`: the weight columns of the channels some row left out,
    /// dequantized and zero padded.
    outlier_w: Vec<f32>,
}

/// Row stride of the outlier weight table for `n` outputs: padded to a multiple of every
/// kernel's panel width, so whole panels can be read.
fn outlier_stride(n: usize) -> usize {
    n.next_multiple_of(32)
}

/// A value whose magnitude exceeds this many times its row's mean magnitude is an outlier
/// (transformer activations have a few huge channels, and one scale per row would spend most
/// of its 256 levels on them). On all-MiniLM-L6-v2 this finds 2–5 channels at the attention
/// and MLP inputs and 0–3 values per row at the down projection's; a ratio of 6 found eight
/// in almost every row there, with the same fidelity and a slower fp32 side product.
const OUTLIER_RATIO: f32 = 16.0;

/// The most bytes of dequantized weight columns one call keeps for outliers (see
/// [`QuantizedRows::fill`]): a column is a whole output row of fp32 (122 KB for a 30,522-entry
/// vocabulary projection), and trained models need a few (none at SPLADE's head input), but
/// an input could bring a different channel in every row.
#[cfg(not(test))]
const OUTLIER_TABLE_BYTES: usize = 4 << 20;
/// Small for the unit tests, so that their shapes reach the bound.
#[cfg(test)]
const OUTLIER_TABLE_BYTES: usize = 64 << 10;

/// At most this many outliers per row (the largest), so their fp32 side product stays a few
/// percent of the int8 one.
const MAX_OUTLIERS: usize = 8;

thread_local! {
    /// The caller's quantized activations, reused between calls.
    static ROWS: std::cell::Cell<QuantizedRows> = std::cell::Cell::new(QuantizedRows::default());
    /// The intermediate of two chained layers ([`gemm_int8_chained`]), reused between calls.
    static CHAINED: std::cell::Cell<QuantizedRows> = std::cell::Cell::new(QuantizedRows::default());
}

/// What one pass over a row tells: `Σ |x|`, `min(x, 0)` and `max(x, 0)` (NaNs skipped by the
/// range).
#[derive(Clone, Copy, Debug, PartialEq)]
struct RowStats {
    abs_sum: f32,
    lo: f32,
    hi: f32,
}

/// [`RowStats`] of `x`, in [`LANES`] interleaved lanes (lane `i` takes the values at
/// `i mod LANES`, in order; then the lanes and the remainder are folded in order): every
/// implementation gives the same bits.
fn row_stats(x: &[f32]) -> RowStats {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { row_stats_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2.
        return unsafe { row_stats_avx2(x) };
    }
    row_stats_portable(x)
}

/// Lanes of [`row_stats`]: four AVX-512 (eight AVX2) registers, so that many independent
/// chains of additions (with 32 lanes the AVX-512 loop waited on its adds' latency).
const LANES: usize = 64;

fn row_stats_portable(x: &[f32]) -> RowStats {
    let (mut sum, mut lo, mut hi) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            sum[i] += c[i].abs();
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let lo = lo.iter().fold(0.0f32, |m, &v| if v < m { v } else { m });
    let hi = hi.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    fold_row_stats(sum_tree(&sum), lo, hi, chunks.remainder())
}

/// Folds the lanes of [`row_stats`] and the values past the last whole chunk: the extremes
/// in any order (exact), the sums as a fixed tree that the SIMD versions follow register by
/// register ([`sum_tree`]), then the rest in order.
#[inline(always)]
fn fold_row_stats(sum: f32, lo: f32, hi: f32, rest: &[f32]) -> RowStats {
    RowStats {
        abs_sum: sum + rest.iter().map(|v| v.abs()).sum::<f32>(),
        lo: rest.iter().fold(lo, |m, &v| if v < m { v } else { m }),
        hi: rest.iter().fold(hi, |m, &v| if v > m { v } else { m }),
    }
}

/// The lanes' sums added as a tree: lane `j` of 16 gets `(s[j] + s[16 + j]) + (s[32 + j] +
/// s[48 + j])`, then halves are added (`t[j] + t[j + 8]`, then 4, 2, 1).
fn sum_tree(s: &[f32; LANES]) -> f32 {
    let mut t: [f32; 16] = std::array::from_fn(|j| (s[j] + s[16 + j]) + (s[32 + j] + s[48 + j]));
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for j in 0..w {
            t[j] += t[j + w];
        }
    }
    t[0]
}

/// The SIMD versions' last steps from 8 lanes: [`sum_tree`]'s halves added down to one, the
/// extremes folded, then [`fold_row_stats`] with the values past the last whole chunk.
///
/// # Safety
/// the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_row_stats8(
    sum: std::arch::x86_64::__m256,
    lo: std::arch::x86_64::__m256,
    hi: std::arch::x86_64::__m256,
    rest: &[f32],
) -> RowStats {
    use std::arch::x86_64::*;
    let v = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let sum = _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
    let (mut l, mut h) = ([0.0f32; 8], [0.0f32; 8]);
    _mm256_storeu_ps(l.as_mut_ptr(), lo);
    _mm256_storeu_ps(h.as_mut_ptr(), hi);
    let lo = l.iter().fold(0.0f32, |m, &v| if v < m { v } else { m });
    let hi = h.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    fold_row_stats(sum, lo, hi, rest)
}

/// [`row_stats`] on AVX2 (LLVM's vectorization of the portable loop shuffles the accumulators
/// through one register and ran 10× slower). `vminps(v, lo)` is `v < lo ? v : lo`, so a NaN
/// keeps the old extreme, as in the portable loop.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_stats_avx2(x: &[f32]) -> RowStats {
    use std::arch::x86_64::*;
    // Eight chains of sums; the extremes, exact in any order, fold lanes `i` and `i + 32`
    // into four registers each (24 registers would not fit in AVX2's 16).
    let sign = _mm256_set1_ps(-0.0);
    let mut sum = [_mm256_setzero_ps(); 8];
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..8 {
            let v = _mm256_loadu_ps(c.as_ptr().add(8 * i));
            sum[i] = _mm256_add_ps(sum[i], _mm256_andnot_ps(sign, v));
            lo[i % 4] = _mm256_min_ps(v, lo[i % 4]);
            hi[i % 4] = _mm256_max_ps(v, hi[i % 4]);
        }
    }
    let lo = (_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3]));
    let hi = (_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3]));
    let (lo, hi) = (_mm256_min_ps(lo.0, lo.1), _mm256_max_ps(hi.0, hi.1));
    // `sum_tree`: registers 0–7 hold lanes 8i..8i + 8.
    let t0 = _mm256_add_ps(_mm256_add_ps(sum[0], sum[2]), _mm256_add_ps(sum[4], sum[6]));
    let t1 = _mm256_add_ps(_mm256_add_ps(sum[1], sum[3]), _mm256_add_ps(sum[5], sum[7]));
    finish_row_stats8(_mm256_add_ps(t0, t1), lo, hi, chunks.remainder())
}

/// [`row_stats`] on AVX-512: four chains of 16 lanes each. `vminps(v, lo)` keeps `lo` for a
/// NaN `v`, as in the portable loop.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_stats_avx512(x: &[f32]) -> RowStats {
    use std::arch::x86_64::*;
    let mut sum = [_mm512_setzero_ps(); 4];
    let (mut lo, mut hi) = (sum, sum);
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..4 {
            let v = _mm512_loadu_ps(c.as_ptr().add(16 * i));
            sum[i] = _mm512_add_ps(sum[i], _mm512_abs_ps(v));
            lo[i] = _mm512_min_ps(v, lo[i]);
            hi[i] = _mm512_max_ps(v, hi[i]);
        }
    }
    let lo = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
    let hi = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
    // `sum_tree`: registers 0–3 hold lanes 16i..16i + 16; then the 8-lane halves.
    let t = _mm512_add_ps(_mm512_add_ps(sum[0], sum[1]), _mm512_add_ps(sum[2], sum[3]));
    let half = |v: __m512| {
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        (_mm512_castps512_ps256(v), upper)
    };
    let ((s0, s1), (l0, l1), (h0, h1)) = (half(t), half(lo), half(hi));
    finish_row_stats8(
        _mm256_add_ps(s0, s1),
        _mm256_min_ps(l0, l1),
        _mm256_max_ps(h0, h1),
        chunks.remainder(),
    )
}

/// Quantizes one row to `0..=255` over `[min(x, 0), max(x, 0)]` (codes past `x.len()` are
/// zero); returns (scale, zero point). Rounds to nearest, ties to even.
fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    let s = row_stats(x);
    quantize_row_in(x, s.lo, s.hi, out)
}

/// [`quantize_row`] with the row's range already known (`lo = min(x, 0)`, `hi = max(x, 0)`).
fn quantize_row_in(x: &[f32], lo: f32, hi: f32, out: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        // SAFETY: the CPU has AVX-512F/BW.
        return unsafe { quantize_row_avx512(x, lo, hi, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { quantize_row_avx2(x, lo, hi, out) };
    }
    quantize_row_portable(x, lo, hi, out)
}

/// [`quantize_row_in`] in plain Rust.
fn quantize_row_portable(x: &[f32], lo: f32, hi: f32, out: &mut [u8]) -> (f32, i32) {
    let Some((inv, zp)) = row_scale(lo, hi) else {
        out.fill(0);
        return (0.0, 0);
    };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * inv + zp).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    out[x.len()..].fill(0);
    (1.0 / inv, zp as i32)
}

/// (1 / scale, zero point) for a row spanning `[lo, hi]` (lo ≤ 0 ≤ hi); `None` when all zero.
#[inline(always)]
fn row_scale(lo: f32, hi: f32) -> Option<(f32, f32)> {
    if hi <= lo || hi.is_nan() || lo.is_nan() {
        return None;
    }
    let inv = 255.0 / (hi - lo);
    Some((inv, (-lo * inv).round_ties_even().clamp(0.0, 255.0)))
}

/// [`quantize_row_in`] on AVX-512.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `out` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn quantize_row_avx512(x: &[f32], lo: f32, hi: f32, out: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let n = x.len();
    assert!(out.len() >= n);
    let mask = |i: usize| -> __mmask16 {
        let left = n - i;
        if left >= 16 {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    };
    let Some((inv, zp)) = row_scale(lo, hi) else {
        out.fill(0);
        return (0.0, 0);
    };
    let (vinv, vzp) = (_mm512_set1_ps(inv), _mm512_set1_ps(zp));
    let zero = _mm512_setzero_si512();
    for i in (0..n).step_by(16) {
        let m = mask(i);
        let v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), vinv, vzp);
        let q = _mm512_max_epi32(
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
            zero,
        );
        _mm_mask_storeu_epi8(out.as_mut_ptr().add(i) as *mut i8, m, _mm512_cvtusepi32_epi8(q));
    }
    out[n..].fill(0);
    (1.0 / inv, zp as i32)
}

/// [`quantize_row_in`] on AVX2: 32 values per step (the last step on a zero-padded copy),
/// codes rounded to nearest even by `vcvtps2dq` and narrowed with unsigned saturation.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `out` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], lo: f32, hi: f32, out: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    const STEP: usize = 32;
    let n = x.len();
    assert!(out.len() >= n);
    let whole = n - n % STEP;
    // The last partial step, zero padded (zeros change neither the range nor the codes kept).
    let mut tail = [0.0f32; STEP];
    tail[..n - whole].copy_from_slice(&x[whole..]);
    let step = |i: usize| -> *const f32 {
        if i < whole {
            x.as_ptr().add(i)
        } else {
            tail.as_ptr()
        }
    };
    let Some((inv, zp)) = row_scale(lo, hi) else {
        out.fill(0);
        return (0.0, 0);
    };
    let (vinv, vzp) = (_mm256_set1_ps(inv), _mm256_set1_ps(zp));
    let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
    // packus interleaves 128-bit lanes; this gathers the four quarters back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for i in (0..n).step_by(STEP) {
        let p = step(i);
        let code = |j: usize| {
            let v = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8 * j)), vinv, vzp);
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), zero), top)
        };
        let words = (
            _mm256_packus_epi32(code(0), code(1)),
            _mm256_packus_epi32(code(2), code(3)),
        );
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words.0, words.1), order);
        if i < whole {
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, bytes);
        } else {
            let mut last = [0u8; STEP];
            _mm256_storeu_si256(last.as_mut_ptr() as *mut __m256i, bytes);
            out[i..n].copy_from_slice(&last[..n - i]);
        }
    }
    out[n..].fill(0);
    (1.0 / inv, zp as i32)
}

/// The outliers of one row ([`OUTLIER_RATIO`], at most [`MAX_OUTLIERS`], the largest),
/// as (magnitude, channel) in `found`, ordered by channel; `stats` are the row's.
fn row_outliers(x: &[f32], stats: RowStats, found: &mut Vec<(f32, u32)>) {
    found.clear();
    if x.len() < 32 {
        return;
    }
    let limit = stats.abs_sum / x.len() as f32 * OUTLIER_RATIO;
    // Nothing to look for when even the row's extremes are within the limit (most rows of a
    // down projection's input).
    if limit.is_nan() || limit <= 0.0 || (-stats.lo <= limit && stats.hi <= limit) {
        return;
    }
    above(x, limit, found);
    if found.len() > MAX_OUTLIERS {
        found.select_nth_unstable_by(MAX_OUTLIERS - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        found.truncate(MAX_OUTLIERS);
        found.sort_unstable_by_key(|&(_, c)| c);
    }
}

/// Appends `(|x[c]|, c)` for every `|x[c]| > limit` to `found`, in channel order.
fn above(x: &[f32], limit: f32, found: &mut Vec<(f32, u32)>) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2.
        return unsafe { above_avx2(x, limit, found) };
    }
    above_portable(x, 0, limit, found)
}

fn above_portable(x: &[f32], first: usize, limit: f32, found: &mut Vec<(f32, u32)>) {
    for (c, v) in x.iter().enumerate() {
        if v.abs() > limit {
            found.push((v.abs(), (first + c) as u32));
        }
    }
}

/// [`above`] eight values at a time: a compare and a bit mask, the rare hits then one by one.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn above_avx2(x: &[f32], limit: f32, found: &mut Vec<(f32, u32)>) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let lim = _mm256_set1_ps(limit);
    let mut chunks = x.chunks_exact(8);
    for (i, c) in (&mut chunks).enumerate() {
        let v = _mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr()));
        let mut bits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, lim)) as u32;
        while bits != 0 {
            let j = bits.trailing_zeros() as usize;
            found.push((c[j].abs(), (i * 8 + j) as u32));
            bits &= bits - 1;
        }
    }
    above_portable(chunks.remainder(), x.len() / 8 * 8, limit, found);
}

/// The per-row tables of a [`QuantizedRows`] as raw pointers, for tasks that each quantize
/// rows of their own ([`QuantizedRows::fill`], and a chained GEMM's epilogue).
#[derive(Clone, Copy)]
struct RowTables {
    codes: *mut u8,
    kp: usize,
    scales: *mut f32,
    zero_points: *mut i32,
    counts: *mut u8,
    values: *mut f32,
    channels: *mut u32,
}

// SAFETY: tasks write disjoint rows (the contract of `RowTables::quantize`).
unsafe impl Send for RowTables {}
unsafe impl Sync for RowTables {}

impl RowTables {
    /// Quantizes `row` (the input's `k` values) as row `i`: its codes (zero padded to `kp`),
    /// scale, zero point and outliers (by channel; [`QuantizedRows::finish`] makes them slots).
    ///
    /// # Safety
    /// `i` is below the rows the tables were prepared for, `row.len() ≤ kp`, and no other
    /// thread reads or writes row `i` meanwhile.
    unsafe fn quantize(&self, i: usize, row: &[f32], found: &mut Vec<(f32, u32)>, masked: &mut Vec<f32>) {
        const MO: usize = MAX_OUTLIERS;
        let stats = row_stats(row);
        row_outliers(row, stats, found);
        *self.counts.add(i) = found.len() as u8;
        let out = std::slice::from_raw_parts_mut(self.codes.add(i * self.kp), self.kp);
        let (s, z) = if found.is_empty() {
            quantize_row_in(row, stats.lo, stats.hi, out)
        } else {
            // Outliers are computed apart in fp32: kept aside, zero here.
            masked.clear();
            masked.extend_from_slice(row);
            for (o, &(_, c)) in found.iter().enumerate() {
                *self.values.add(i * MO + o) = row[c as usize];
                *self.channels.add(i * MO + o) = c;
                masked[c as usize] = 0.0;
            }
            quantize_row(masked, out)
        };
        *self.scales.add(i) = s;
        *self.zero_points.add(i) = z;
    }
}

impl QuantizedRows {
    /// Quantizes `x` for `w`'s kernel: the codes (widened to u16 for AVX2), and each row's
    /// outliers with the weight columns they need for the kernels' epilogue.
    fn fill(&mut self, x: &[f32], m: usize, w: &Int8Weight) {
        const ROWS: usize = 16;
        let k = w.k;
        let tables = self.prepare(m, w);
        parallel::for_each_index(m.div_ceil(ROWS), |b| {
            let (mut found, mut masked) = (Vec::new(), Vec::new());
            for i in b * ROWS..((b + 1) * ROWS).min(m) {
                // The next row is read cold (written by the last layer, out of L2 by now):
                // asked for while this one is quantized from L1.
                if let Some(next) = x.get((i + 1) * k..(i + 2) * k) {
                    super::prefetch(next);
                }
                // SAFETY: `prepare` made the tables for `m` rows of `kp ≥ k` codes, and each
                // task quantizes its own rows.
                unsafe { tables.quantize(i, &x[i * k..(i + 1) * k], &mut found, &mut masked) };
            }
        });
        self.finish(m, w);
    }

    /// Sizes the tables for `m` rows of `w`'s input (codes in whole strips of `w`'s kernel,
    /// the rows past `m` zero) and returns them for [`RowTables::quantize`].
    fn prepare(&mut self, m: usize, w: &Int8Weight) -> RowTables {
        const MO: usize = MAX_OUTLIERS;
        let kp = w.kp;
        let codes = self.codes.resize(m.next_multiple_of(w.isa.mr()) * kp);
        codes[m * kp..].fill(0);
        RowTables {
            codes: codes.as_mut_ptr(),
            kp,
            scales: buffer(&mut self.scales, m).as_mut_ptr(),
            zero_points: buffer(&mut self.zero_points, m).as_mut_ptr(),
            counts: buffer(&mut self.outlier_count, m).as_mut_ptr(),
            values: buffer(&mut self.outlier_x, m * MO).as_mut_ptr(),
            channels: buffer(&mut self.outlier_slot, m * MO).as_mut_ptr(),
        }
    }

    /// After every row is quantized: the outliers' weight columns, and for AVX2 the widened
    /// codes.
    fn finish(&mut self, m: usize, w: &Int8Weight) {
        const ROWS: usize = 16;
        const MO: usize = MAX_OUTLIERS;
        let (k, kp) = (w.k, w.kp);
        // One dequantized weight column per channel that any row left out, while the table has
        // room (`table_slots`); each row's channels become slots in that table. A row whose
        // channel finds no room is quantized again with only its outliers that have one left
        // out (from its codes and outlier values, so only the quantized row is needed): a
        // coarser scale for that row, never a table past the bound.
        let ldw = outlier_stride(w.n);
        let table_slots = (OUTLIER_TABLE_BYTES / (4 * ldw)).max(MO);
        let slot_of = buffer(&mut self.slot_of, k);
        slot_of.fill(u32::MAX);
        let mut slots = Vec::new();
        let mut row = Vec::new();
        for r in 0..m {
            let count = self.outlier_count[r] as usize;
            let at = r * MO..r * MO + count;
            let mut kept = true;
            for &c in &self.outlier_slot[at.clone()] {
                let c = c as usize;
                if slot_of[c] == u32::MAX && slots.len() < table_slots {
                    slot_of[c] = slots.len() as u32;
                    slots.push(c);
                }
                kept &= slot_of[c] != u32::MAX;
            }
            if !kept {
                let (s, zp) = (self.scales[r], self.zero_points[r]);
                let codes = &mut self.codes[r * kp..(r + 1) * kp];
                row.clear();
                row.extend(codes[..k].iter().map(|&q| (q as i32 - zp) as f32 * s));
                let mut left = 0;
                for o in 0..count {
                    let (v, c) = (self.outlier_x[r * MO + o], self.outlier_slot[r * MO + o]);
                    if slot_of[c as usize] == u32::MAX {
                        row[c as usize] = v;
                    } else {
                        self.outlier_x[r * MO + left] = v;
                        self.outlier_slot[r * MO + left] = c;
                        left += 1;
                    }
                }
                let (s, z) = quantize_row(&row, codes);
                (self.scales[r], self.zero_points[r], self.outlier_count[r]) = (s, z, left as u8);
            }
            for slot in &mut self.outlier_slot[r * MO..r * MO + self.outlier_count[r] as usize] {
                *slot = slot_of[*slot as usize];
            }
        }
        let columns = buffer(&mut self.outlier_w, slots.len() * ldw);
        let jobs: Vec<_> = columns.chunks_mut(64 * ldw).zip(slots.chunks(64)).collect();
        parallel::for_each(jobs, |(columns, slots)| {
            for (&c, col) in slots.iter().zip(columns.chunks_exact_mut(ldw)) {
                w.dequantized_column(c, col);
                col[w.n..].fill(0.0);
            }
        });
        if w.isa.wide_codes() {
            // Widened to u16 for AVX2's `vpmaddwd`, and each strip of `AVX2_MR` rows (one
            // micro-tile's rows) interleaved pair by pair: a tile then reads one stream of
            // codes, not one per row. Rows past `m` in the last strip are zero.
            const MR: usize = AVX2_MR;
            let codes = &self.codes[..m * kp];
            let zero_row = vec![0u8; if m.is_multiple_of(MR) { 0 } else { kp }];
            let blocks: Vec<_> = buffer(&mut self.wide, m.div_ceil(MR) * MR * kp)
                .chunks_mut(ROWS * MR * kp)
                .enumerate()
                .collect();
            parallel::for_each(blocks, |(b, out): (usize, &mut [u16])| {
                for (s, strip) in out.chunks_exact_mut(MR * kp).enumerate() {
                    let first = (b * ROWS + s) * MR;
                    let rows: [&[u8]; MR] =
                        std::array::from_fn(|r| codes.get((first + r) * kp..(first + r + 1) * kp).unwrap_or(&zero_row));
                    interleave_strip(&rows, strip);
                }
            });
        }
    }
}

/// Widens a strip of [`AVX2_MR`] rows of codes to u16 and interleaves them pair by pair: row
/// `r`'s codes `2p, 2p + 1` go to `strip[2(p·MR + r)..][..2]`.
fn interleave_strip(rows: &[&[u8]; AVX2_MR], strip: &mut [u16]) {
    const MR: usize = AVX2_MR;
    let kp = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == kp) && strip.len() == MR * kp && kp.is_multiple_of(2));
    let mut p0 = 0;
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2; every row holds kp codes and the strip MR·kp (checked).
        unsafe { interleave_strip_avx2(rows, strip) };
        p0 = kp / 16 * 8;
    }
    for p in p0..kp / 2 {
        for (r, row) in rows.iter().enumerate() {
            strip[2 * (p * MR + r)] = row[2 * p] as u16;
            strip[2 * (p * MR + r) + 1] = row[2 * p + 1] as u16;
        }
    }
}

/// [`interleave_strip`] for the first `kp / 16 · 8` pairs: sixteen codes of a row widened at
/// once, then stored pair by pair.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); each row holds at least `strip.len() / AVX2_MR · 2` codes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn interleave_strip_avx2(rows: &[&[u8]; AVX2_MR], strip: &mut [u16]) {
    use std::arch::x86_64::*;
    const MR: usize = AVX2_MR;
    let kp = rows[0].len();
    let out = strip.as_mut_ptr() as *mut u32;
    for block in 0..kp / 16 {
        for (r, row) in rows.iter().enumerate() {
            let wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(row.as_ptr().add(16 * block) as *const __m128i));
            let mut pairs = [0u32; 8];
            _mm256_storeu_si256(pairs.as_mut_ptr() as *mut __m256i, wide);
            for (i, &pair) in pairs.iter().enumerate() {
                out.add((8 * block + i) * MR + r).write_unaligned(pair);
            }
        }
    }
}

/// One micro-kernel call: rows `..rows` × columns `..cols` of one panel over the whole depth.
#[derive(Clone, Copy)]
struct QTile {
    rows: usize,
    /// Row `r`'s codes start at `a + r·kp` (u8); for AVX2 the tile's strip of u16 codes,
    /// its rows interleaved pair by pair.
    a: *const u8,
    kp: usize,
    /// The panel.
    b: *const i8,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    row_scale: *const f32,
    row_zp: *const i32,
    col_scale: *const f32,
    col_sum: *const i32,
    /// Row `r`'s outliers: their count at `outlier_count + r`; value `o` at
    /// `outlier_x + r·MAX_OUTLIERS + o`, its weight column's slot at the same place of
    /// `outlier_slot`.
    outlier_count: *const u8,
    outlier_x: *const f32,
    outlier_slot: *const u32,
    /// Slot `s`'s weight for this tile's column `j` at `outlier_w + s·ldw + j` (zero past the
    /// last column of the weight, so whole panels can be read).
    outlier_w: *const f32,
    ldw: usize,
    bias: Option<*const f32>,
    act: Activation,
}

impl QTile {
    /// How many outliers row `r` has.
    ///
    /// # Safety
    /// `r` is below the tile's row count (the outlier tables are per row).
    #[inline(always)]
    unsafe fn outliers(&self, r: usize) -> usize {
        *self.outlier_count.add(r) as usize
    }

    /// Row `r`'s outlier `o`: its value, and its weight column from this tile's first column.
    ///
    /// # Safety
    /// `r` is below the tile's row count and `o` below [`Self::outliers`] of `r`.
    #[inline(always)]
    unsafe fn outlier(&self, r: usize, o: usize) -> (f32, *const f32) {
        let i = r * MAX_OUTLIERS + o;
        let slot = *self.outlier_slot.add(i) as usize;
        (*self.outlier_x.add(i), self.outlier_w.add(slot * self.ldw))
    }
}

/// `out[m × n] = act(x[m × k] · Wᵀ + bias)` with `W` in int8, rows of `out` `out_stride` apart,
/// on up to `threads` threads of the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn gemm_int8(
    x: &[f32],
    m: usize,
    w: &Int8Weight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    gemm_int8_on::<Amx>(x, m, w, bias, act, out, out_stride, threads)
}

/// [`gemm_int8`] with AMX's tile instructions run by `U`: the hardware ([`Amx`]), or the
/// software model ([`super::amx::TileModel`]) that lets every CPU test the AMX schedule.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_int8_on<U: TileUnit + Default>(
    x: &[f32],
    m: usize,
    w: &Int8Weight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    assert!(out_stride >= w.n && (m == 0 || out.len() >= (m - 1) * out_stride + w.n));
    run::<U>(
        Input::Float(x),
        m,
        w,
        bias,
        act,
        Output::Float(out.as_mut_ptr(), out_stride),
        threads,
    )
}

/// The products `x[m × k] · Wᵀ` (no bias) handed tile by tile to `fold` (see [`Fold`])
/// instead of written out; threads split the columns.
pub fn gemm_int8_fold(x: &[f32], m: usize, w: &Int8Weight, fold: Fold, threads: usize) {
    gemm_int8_fold_on::<Amx>(x, m, w, fold, threads)
}

/// [`gemm_int8_fold`] with the tile instructions run by `U`.
pub(crate) fn gemm_int8_fold_on<U: TileUnit + Default>(
    x: &[f32],
    m: usize,
    w: &Int8Weight,
    fold: Fold,
    threads: usize,
) {
    run::<U>(
        Input::Float(x),
        m,
        w,
        None,
        Activation::Identity,
        Output::Fold(fold),
        threads,
    )
}

/// The most bytes of weights a chained first layer ([`gemm_int8_chained`]) may have: each strip
/// of rows meets all its panels in turn, which then stay in L2 (all-MiniLM-L6-v2's up
/// projection: 576 KB; BERT-base's 2.25 MB would come from L3 for every strip).
const CHAIN_WEIGHT_BYTES: usize = 1 << 20;

impl Int8Weight {
    /// True when this layer's output can go straight, quantized, into `next`'s input
    /// ([`gemm_int8_chained`]) for `m` rows on `threads` threads: both run the AMX kernel,
    /// `next` reads this one's outputs, this one's weights fit [`CHAIN_WEIGHT_BYTES`], and
    /// threads split the rows (each task finishes whole rows).
    pub fn chains_into(&self, next: &Int8Weight, m: usize, threads: usize) -> bool {
        self.isa == Int8Isa::Amx
            && next.isa == Int8Isa::Amx
            && next.k == self.n
            && self.n.next_multiple_of(self.isa.nr()) * self.kp <= CHAIN_WEIGHT_BYTES
            && super::sgemm::splits_rows(m, self.n, self.isa.mr(), self.isa.nr(), threads)
    }
}

/// Two dense layers in a row, `out = act2(act1(x·W1ᵀ + b1)·W2ᵀ + b2)`, the intermediate
/// quantized for the second layer strip by strip as the first computes it (32 rows of fp32 in
/// L2, never the whole intermediate in memory and read back): the same codes as quantizing
/// the fp32 intermediate, so the same output bit for bit. Needs [`Int8Weight::chains_into`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_int8_chained(
    x: &[f32],
    m: usize,
    first: (&Int8Weight, Option<&[f32]>, Activation),
    second: (&Int8Weight, Option<&[f32]>, Activation),
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    gemm_int8_chained_on::<Amx>(x, m, first, second, out, out_stride, threads)
}

/// [`gemm_int8_chained`] with the tile instructions run by `U`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_int8_chained_on<U: TileUnit + Default>(
    x: &[f32],
    m: usize,
    (w1, b1, act1): (&Int8Weight, Option<&[f32]>, Activation),
    (w2, b2, act2): (&Int8Weight, Option<&[f32]>, Activation),
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    assert!(w1.chains_into(w2, m, threads), "int8: these layers do not chain");
    assert!(out_stride >= w2.n && (m == 0 || out.len() >= (m - 1) * out_stride + w2.n));
    let mut mid = CHAINED.with(|cell| cell.take());
    let tables = mid.prepare(m, w2);
    run::<U>(
        Input::Float(x),
        m,
        w1,
        b1,
        act1,
        Output::Quantized(tables, w2.k),
        threads,
    );
    mid.finish(m, w2);
    run::<U>(
        Input::Quantized(&mid),
        m,
        w2,
        b2,
        act2,
        Output::Float(out.as_mut_ptr(), out_stride),
        threads,
    );
    CHAINED.with(|cell| cell.replace(mid));
}

/// Where an int8 GEMM writes its output.
enum Output<'a> {
    /// fp32 rows `stride` apart (checked by the caller).
    Float(*mut f32, usize),
    /// Tile by tile to a fold (each task's tiles pass through an L1 scratch block).
    Fold(Fold<'a>),
    /// Quantized for the next layer (whose input width is given) into these tables, strip by
    /// strip ([`gemm_int8_chained`]).
    Quantized(RowTables, usize),
}

/// The one int8 GEMM driver: quantizes the input, runs the kernel of `w`'s layout over every
/// micro-tile with the dequantizing epilogue, and writes fp32 output or folds it.
fn run<U: TileUnit + Default>(
    input: Input,
    m: usize,
    w: &Int8Weight,
    bias: Option<&[f32]>,
    act: Activation,
    output: Output,
    threads: usize,
) {
    let (n, k, kp) = (w.n, w.k, w.kp);
    match &input {
        Input::Float(x) => assert!(x.len() >= m * k),
        Input::Quantized(q) => assert!(q.codes.len() >= m.next_multiple_of(w.isa.mr()) * kp && q.scales.len() >= m),
    }
    assert!(bias.is_none_or(|b| b.len() >= n));
    let modelled = !U::HARDWARE;
    assert!(
        w.isa.supported() || (w.isa == Int8Isa::Amx && modelled),
        "int8 kernel {:?} not supported by this CPU",
        w.isa
    );
    if let Output::Quantized(_, next_k) = &output {
        assert!(w.isa == Int8Isa::Amx && *next_k == n, "int8: only AMX layers chain");
    }
    if m == 0 || n == 0 {
        return;
    }
    let mut own = None;
    let rows: &QuantizedRows = match input {
        Input::Float(x) => {
            let mut rows = ROWS.with(|cell| cell.take());
            rows.fill(x, m, w);
            own.insert(rows)
        }
        Input::Quantized(q) => q,
    };
    let wide = w.isa.wide_codes();
    // The 256-bit VNNI kernel's encoding, chosen once per call rather than per tile.
    let vex_vnni = super::has_avx_vnni();
    let (nr, mr) = (w.isa.nr(), w.isa.mr());
    let (out_ptr, out_stride, fold, chain) = match output {
        Output::Float(p, stride) => (p, stride, None, None),
        Output::Fold(f) => (std::ptr::null_mut(), 0, Some(f), None),
        Output::Quantized(tables, _) => (std::ptr::null_mut(), 0, None, Some(tables)),
    };
    let out_ptr = SendPtr(out_ptr);
    let out_ptr = &out_ptr;
    let a_base: *const u8 = if wide {
        rows.wide.as_ptr() as *const u8
    } else {
        rows.codes.as_ptr()
    };
    let a_base = SendPtr(a_base as *mut u8);
    let a_base = &a_base;
    let elem = if wide { 2 } else { 1 };
    let quant = rows;
    let amx = w.isa == Int8Isa::Amx;
    let order = if chain.is_some() {
        // Each strip across every panel before the next strip (`Int8Weight::chains_into`
        // bounds the panels' bytes), so a strip's rows are whole at its last panel.
        TileOrder {
            nc: n.next_multiple_of(nr),
            ..TileOrder::strips_for_depth(kp, nr)
        }
    } else if amx {
        TileOrder::strips_for_depth(kp, nr)
    } else {
        TileOrder::PANELS
    };
    // SAFETY (the kernel contract of `drive`): `fill` (or the chained layer before) laid the
    // codes out in whole `mr`-row strips of `kp` codes (zero padded), the panels hold `kp·nr`
    // codes and `nr` scales and sums each; a tile unit is configured only for the AMX kernel,
    // whose hardware was checked above (or is the model); a fold's tiles are written to the
    // task's own `mr × nr` scratch block, and tasks split the columns; a chained layer's tiles
    // go to the task's own strip block, and tasks split the rows (`Int8Weight::chains_into`).
    unsafe {
        drive(
            m,
            n,
            mr,
            nr,
            order,
            threads,
            fold,
            || Task {
                tiles: amx.then(|| Tiles::<U>::configured()),
                strip: vec![0.0; if chain.is_some() { mr * n } else { 0 }],
                found: Vec::new(),
                masked: Vec::new(),
            },
            |task, r, tile_rows, c, target| {
                let (dst, ldc) = match (target, chain) {
                    (Some(target), _) => target,
                    (None, Some(_)) => (task.strip.as_mut_ptr().add(c), n),
                    (None, None) => (out_ptr.0.add(r * out_stride + c), out_stride),
                };
                let cols = nr.min(n - c);
                // Tiles start on whole `mr`-row strips (`split_work` and `for_each_tile` step by
                // `mr`), which AVX2's interleaved codes rely on.
                debug_assert_eq!(r % mr, 0);
                // Rows r..r+rows and columns c..c+cols lie inside this task's block (tasks are
                // disjoint) and inside every buffer checked above; the outlier values and slots
                // hold MAX_OUTLIERS per row and the outlier columns `ldw ≥ c + nr` each.
                let t = QTile {
                    rows: tile_rows,
                    a: a_base.0.add(r * kp * elem),
                    kp,
                    b: w.panels.as_ptr().add((c / nr) * kp * nr),
                    c: dst,
                    ldc,
                    cols,
                    row_scale: quant.scales.as_ptr().add(r),
                    row_zp: quant.zero_points.as_ptr().add(r),
                    col_scale: w.scales.as_ptr().add(c),
                    col_sum: w.sums.as_ptr().add(c),
                    outlier_count: quant.outlier_count.as_ptr().add(r),
                    outlier_x: quant.outlier_x.as_ptr().add(r * MAX_OUTLIERS),
                    outlier_slot: quant.outlier_slot.as_ptr().add(r * MAX_OUTLIERS),
                    outlier_w: quant.outlier_w.as_ptr().wrapping_add(c),
                    ldw: outlier_stride(n),
                    bias: bias.map(|b| b.as_ptr().add(c)),
                    act,
                };
                match w.isa {
                    Int8Isa::Portable => portable_tile(t),
                    Int8Isa::Amx => match &mut task.tiles {
                        Some(tiles) => amx_tile(tiles, &t),
                        None => unreachable!("the AMX kernel's tasks configure tiles"),
                    },
                    #[cfg(target_arch = "x86_64")]
                    Int8Isa::Avx2 => super::rows_dispatch!(t.rows, avx2_kernel, [6, 5, 4, 3, 2], t),
                    #[cfg(target_arch = "x86_64")]
                    Int8Isa::AvxVnni if vex_vnni => {
                        super::rows_dispatch!(t.rows, avx_vnni_kernel, [6, 5, 4, 3, 2], t)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Int8Isa::AvxVnni => super::rows_dispatch!(t.rows, avx512vl_vnni_kernel, [6, 5, 4, 3, 2], t),
                    #[cfg(target_arch = "x86_64")]
                    Int8Isa::Avx512Vnni => {
                        super::rows_dispatch!(t.rows, vnni_kernel, [14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2], t)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("only the portable kernel is chosen off x86-64"),
                }
                if let (Some(tables), true) = (chain, c + nr >= n) {
                    // The strip's last panel: its rows are whole, quantized for the next layer
                    // while in L2 (the strip's rows are this task's alone).
                    let (found, masked) = (&mut task.found, &mut task.masked);
                    for (i, row) in task.strip.chunks_exact(n).take(tile_rows).enumerate() {
                        tables.quantize(r + i, row, found, masked);
                    }
                }
                target.map(|(p, ld)| (p as *const f32, ld))
            },
        );
    }
    if let Some(rows) = own {
        ROWS.with(|cell| cell.replace(rows));
    }
}

/// One task's state in [`run`]: its tile unit (AMX), and for a chained layer the block of its
/// current strip's outputs (`mr` rows of all `n` columns) and the quantizer's lists.
struct Task<U: TileUnit> {
    tiles: Option<Tiles<U>>,
    strip: Vec<f32>,
    found: Vec<(f32, u32)>,
    masked: Vec<f32>,
}

/// Where an int8 GEMM reads its input.
enum Input<'a> {
    /// fp32 rows, `k` apart: quantized per call.
    Float(&'a [f32]),
    /// Rows already quantized for this weight (by the chained layer before).
    Quantized(&'a QuantizedRows),
}

/// AMX: [`super::amx::block`] over the codes (`kp` bytes a row, 64 a step), then the VNNI
/// kernel's epilogue from the stored sums.
///
/// # Safety
/// The kernel contract of [`drive`]; the codes hold whole 32-row strips of `kp` bytes and
/// `kp` is a multiple of 64.
unsafe fn amx_tile<U: TileUnit>(tiles: &mut Tiles<U>, t: &QTile) {
    let steps = t.kp / super::amx::TILE_BYTES;
    super::amx::block(
        tiles,
        Dot::Int8,
        t.a,
        t.kp,
        t.b as *const u8,
        steps,
        t.rows,
        t.cols,
        None,
    );
    epilogue_from(t, tiles.acc.as_ptr() as *const i32);
}

/// Finishes a tile whose i32 sums are a 32×32 block in memory (row `r`'s at `acc + 32·r`):
/// with the AVX-512 VNNI kernel's epilogue where the CPU has AVX-512 (so the vectors are
/// bit-identical to that kernel's), else the portable one (the same operations in the same
/// order).
///
/// # Safety
/// `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth); `acc` is valid for a 32×32 block of i32.
unsafe fn epilogue_from(t: &QTile, acc: *const i32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        return avx512_epilogue_from(t, acc);
    }
    portable_epilogue(t, |r, j| *acc.add(32 * r + j));
}

/// Any CPU: the plain-Rust kernel.
///
/// # Safety
/// `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
unsafe fn portable_tile(t: QTile) {
    const NR: usize = 16;
    const MR: usize = 4;
    let mut acc = [[0i32; NR]; MR];
    for g in 0..t.kp / 4 {
        let panel = std::slice::from_raw_parts(t.b.add(g * NR * 4), NR * 4);
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let a = std::slice::from_raw_parts(t.a.add(r * t.kp + g * 4), 4);
            for (j, o) in row.iter_mut().enumerate() {
                let w = &panel[j * 4..j * 4 + 4];
                *o += (0..4).map(|i| a[i] as i32 * w[i] as i32).sum::<i32>();
            }
        }
    }
    portable_epilogue(&t, |r, j| acc[r][j]);
}

/// The epilogue in plain Rust, the same operations in the same order as the SIMD ones (fused
/// multiply-adds; the same integer wrap-around): `(acc − zp·Σq_w)·(s_x·s_w) + bias`, then each
/// outlier's `x·w` added, then the activation.
///
/// # Safety
/// `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth); `acc(r, c)` is defined for the tile's rows and columns.
#[inline(always)]
unsafe fn portable_epilogue(t: &QTile, acc: impl Fn(usize, usize) -> i32) {
    const NR: usize = 32;
    for r in 0..t.rows {
        let (zp, sa) = (*t.row_zp.add(r), *t.row_scale.add(r));
        let mut tmp = [0.0f32; NR];
        for (j, v) in tmp.iter_mut().enumerate().take(t.cols) {
            let sum = acc(r, j).wrapping_sub(zp.wrapping_mul(*t.col_sum.add(j)));
            let bias = t.bias.map_or(0.0, |b| *b.add(j));
            *v = (sum as f32).mul_add(sa * *t.col_scale.add(j), bias);
            for o in 0..t.outliers(r) {
                let (x, col) = t.outlier(r, o);
                *v = x.mul_add(*col.add(j), *v);
            }
        }
        super::sgemm::finish_row::<false>(&mut tmp, t.c.add(r * t.ldc), t.cols, true, None, t.act);
    }
}

/// AVX2: weights sign-extended to i16 pairs, activations as u16 pairs (six rows interleaved),
/// `vpmaddwd`.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_kernel<const R: usize>(t: QTile) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    const MR: usize = AVX2_MR;
    let a = t.a as *const u16;
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    // Pairs of k: 16 columns × 2 bytes per pair.
    for p in 0..t.kp / 2 {
        let bp = t.b.add(p * NR * 2);
        let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp as *const __m128i));
        let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(16) as *const __m128i));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32((a.add((p * MR + r) * 2) as *const i32).read_unaligned());
            row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(av, b0));
            row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(av, b1));
        }
    }
    avx2_epilogue(&t, &acc);
}

/// Dequantizes a 256-bit kernel's `R × 16` i32 sums (two registers per row), adds the outlier
/// channels and the bias, applies the activation and stores: the AVX2 and AVX-VNNI kernels'
/// shared epilogue. A partial panel (`cols < 16`) runs the same code on padded copies of its
/// column data and a stack tile, then copies its columns out.
///
/// # Safety
/// AVX2 is present (called from the AVX2 kernel); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_epilogue<const R: usize>(t: &QTile, acc: &[[std::arch::x86_64::__m256i; 2]; R]) {
    const NR: usize = 16;
    if t.cols == NR {
        return avx2_epilogue_full(t, acc);
    }
    let cols = t.cols;
    let mut cs = [0i32; NR];
    let mut sw = [0.0f32; NR];
    let mut bias = [0.0f32; NR];
    let mut out = [[0.0f32; NR]; R];
    std::ptr::copy_nonoverlapping(t.col_sum, cs.as_mut_ptr(), cols);
    std::ptr::copy_nonoverlapping(t.col_scale, sw.as_mut_ptr(), cols);
    if let Some(b) = t.bias {
        std::ptr::copy_nonoverlapping(b, bias.as_mut_ptr(), cols);
    }
    let padded = QTile {
        col_sum: cs.as_ptr(),
        col_scale: sw.as_ptr(),
        bias: t.bias.map(|_| bias.as_ptr()),
        c: out.as_mut_ptr() as *mut f32,
        ldc: NR,
        cols: NR,
        ..*t
    };
    avx2_epilogue_full(&padded, acc);
    for (r, row) in out.iter().enumerate() {
        std::ptr::copy_nonoverlapping(row.as_ptr(), t.c.add(r * t.ldc), cols);
    }
}

/// [`avx2_epilogue`] of a whole 16-column panel: column data read in place.
///
/// # Safety
/// AVX2 is present; `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth), with 16 columns.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_epilogue_full<const R: usize>(t: &QTile, acc: &[[std::arch::x86_64::__m256i; 2]; R]) {
    use std::arch::x86_64::*;
    let (cs0, cs1) = (
        _mm256_loadu_si256(t.col_sum as *const __m256i),
        _mm256_loadu_si256(t.col_sum.add(8) as *const __m256i),
    );
    let (sw0, sw1) = (_mm256_loadu_ps(t.col_scale), _mm256_loadu_ps(t.col_scale.add(8)));
    let (bias0, bias1) = match t.bias {
        Some(b) => (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))),
        None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
    };
    for (r, row) in acc.iter().enumerate() {
        let zp = _mm256_set1_epi32(*t.row_zp.add(r));
        let sa = _mm256_set1_ps(*t.row_scale.add(r));
        let lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(row[0], _mm256_mullo_epi32(zp, cs0)));
        let hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(row[1], _mm256_mullo_epi32(zp, cs1)));
        let mut lo = _mm256_fmadd_ps(lo, _mm256_mul_ps(sa, sw0), bias0);
        let mut hi = _mm256_fmadd_ps(hi, _mm256_mul_ps(sa, sw1), bias1);
        for o in 0..t.outliers(r) {
            let (x, col) = t.outlier(r, o);
            let xv = _mm256_set1_ps(x);
            lo = _mm256_fmadd_ps(xv, _mm256_loadu_ps(col), lo);
            hi = _mm256_fmadd_ps(xv, _mm256_loadu_ps(col.add(8)), hi);
        }
        let dst = t.c.add(r * t.ldc);
        if t.act == Activation::Identity {
            // Stored here rather than through `finish_avx2`, which is not inlined: most layers
            // have no activation, and this spares them a call per row.
            _mm256_storeu_ps(dst, lo);
            _mm256_storeu_ps(dst.add(8), hi);
        } else {
            super::sgemm::finish_avx2(lo, hi, dst, 16, true, None, t.act);
        }
    }
}

/// 256-bit `vpdpbusd` (AVX-VNNI): four u8 activations against four i8 weights per lane.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn avx_vnni_kernel<const R: usize>(t: QTile) {
    vnni256::<R, false>(t)
}

/// The same kernel with the AVX512-VL encoding of the instruction, for CPUs with AVX-512 VNNI
/// (the 512-bit kernel is chosen there; this one lets those CPUs test the 256-bit kernel).
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn avx512vl_vnni_kernel<const R: usize>(t: QTile) {
    vnni256::<R, true>(t)
}

/// Body of the 256-bit VNNI kernels; `EVEX` picks the instruction's encoding.
///
/// # Safety
/// The calling kernel's features are present; `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vnni256<const R: usize, const EVEX: bool>(t: QTile) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..t.kp / 4 {
        let bp = t.b.add(g * NR * 4);
        let b0 = _mm256_loadu_si256(bp as *const __m256i);
        let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32((t.a.add(r * t.kp + 4 * g) as *const i32).read_unaligned());
            if EVEX {
                row[0] = _mm256_dpbusd_epi32(row[0], av, b0);
                row[1] = _mm256_dpbusd_epi32(row[1], av, b1);
            } else {
                row[0] = _mm256_dpbusd_avx_epi32(row[0], av, b0);
                row[1] = _mm256_dpbusd_avx_epi32(row[1], av, b1);
            }
        }
    }
    avx2_epilogue(&t, &acc);
}

/// AVX-512 VNNI: `vpdpbusd` of four u8 activations against four i8 weights per lane.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn vnni_kernel<const R: usize>(t: QTile) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    /// Groups to prefetch ahead (2 KiB of panel).
    const PREFETCH: usize = 16;
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for g in 0..t.kp / 4 {
        let bp = t.b.add(g * NR * 4);
        let b0 = _mm512_loadu_si512(bp as *const __m512i);
        let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH * NR * 4));
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH * NR * 4 + 64));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((t.a.add(r * t.kp + 4 * g) as *const i32).read_unaligned());
            row[0] = _mm512_dpbusd_epi32(row[0], av, b0);
            row[1] = _mm512_dpbusd_epi32(row[1], av, b1);
        }
    }
    let cols = Avx512Columns::of(&t);
    for (r, row) in acc.iter().enumerate() {
        avx512_row(&t, &cols, r, row[0], row[1]);
    }
}

/// What the AVX-512 epilogue reads per column of a 32-column panel (masked past `cols`).
#[cfg(target_arch = "x86_64")]
struct Avx512Columns {
    masks: (u16, u16),
    col_sum: [std::arch::x86_64::__m512i; 2],
    col_scale: [std::arch::x86_64::__m512; 2],
    bias: [std::arch::x86_64::__m512; 2],
}

#[cfg(target_arch = "x86_64")]
impl Avx512Columns {
    /// The column data of a tile (weight sums, scales, bias) in AVX-512 registers.
    ///
    /// # Safety
    /// AVX-512 is present; `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
    #[inline(always)]
    unsafe fn of(t: &QTile) -> Self {
        use std::arch::x86_64::*;
        let (m0, m1) = (super::mask16(t.cols), super::mask16(t.cols.saturating_sub(16)));
        let zero = _mm512_setzero_ps();
        Self {
            masks: (m0, m1),
            col_sum: [
                _mm512_maskz_loadu_epi32(m0, t.col_sum),
                _mm512_maskz_loadu_epi32(m1, t.col_sum.wrapping_add(16)),
            ],
            col_scale: [
                _mm512_maskz_loadu_ps(m0, t.col_scale),
                _mm512_maskz_loadu_ps(m1, t.col_scale.wrapping_add(16)),
            ],
            bias: match t.bias {
                Some(b) => [
                    _mm512_maskz_loadu_ps(m0, b),
                    _mm512_maskz_loadu_ps(m1, b.wrapping_add(16)),
                ],
                None => [zero, zero],
            },
        }
    }
}

/// Dequantizes row `r`'s 32 sums (`lo`, `hi`), adds the outlier channels and the bias,
/// applies the activation and stores the row: the AVX-512 VNNI and AMX kernels' epilogue.
///
/// # Safety
/// AVX-512 is present; `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth), and `r` is one of its rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx512_row(
    t: &QTile,
    cols: &Avx512Columns,
    r: usize,
    lo: std::arch::x86_64::__m512i,
    hi: std::arch::x86_64::__m512i,
) {
    use std::arch::x86_64::*;
    let (m0, m1) = cols.masks;
    let zp = _mm512_set1_epi32(*t.row_zp.add(r));
    let sa = _mm512_set1_ps(*t.row_scale.add(r));
    let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, _mm512_mullo_epi32(zp, cols.col_sum[0])));
    let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, _mm512_mullo_epi32(zp, cols.col_sum[1])));
    let mut lo = _mm512_fmadd_ps(lo, _mm512_mul_ps(sa, cols.col_scale[0]), cols.bias[0]);
    let mut hi = _mm512_fmadd_ps(hi, _mm512_mul_ps(sa, cols.col_scale[1]), cols.bias[1]);
    for o in 0..t.outliers(r) {
        let (x, col) = t.outlier(r, o);
        let xv = _mm512_set1_ps(x);
        lo = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m0, col), lo);
        hi = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m1, col.wrapping_add(16)), hi);
    }
    let dst = t.c.add(r * t.ldc);
    if t.act == Activation::Identity {
        // Stored here rather than through `finish_avx512`, which is not inlined: most layers
        // have no activation, and this spares them a call per row.
        _mm512_mask_storeu_ps(dst, m0, lo);
        _mm512_mask_storeu_ps(dst.wrapping_add(16), m1, hi);
    } else {
        super::sgemm::finish_avx512(lo, hi, dst, t.cols, true, None, t.act);
    }
}

/// [`epilogue_from`] on AVX-512: each row's 32 sums loaded from memory.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth); `acc` is valid for a 32×32 block of i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512_epilogue_from(t: &QTile, acc: *const i32) {
    use std::arch::x86_64::*;
    let cols = Avx512Columns::of(t);
    for r in 0..t.rows {
        let row = acc.add(32 * r);
        let lo = _mm512_loadu_si512(row as *const __m512i);
        let hi = _mm512_loadu_si512(row.add(16) as *const __m512i);
        avx512_row(t, &cols, r, lo, hi);
    }
}

/// True when the AMX int8 kernel may serve: the CPU and OS allow AMX ([`super::amx::has_amx`])
/// and, checked once per process, a small GEMM through it equals the AVX-512 VNNI kernel's
/// bit for bit (a mismatch is reported and keeps AMX off, rather than serving wrong vectors).
pub fn amx_usable() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !super::amx::has_amx() {
            return false;
        }
        let (m, k, n) = (37, 200, 45);
        let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
        x[3 * k + 17] = 60.0; // an outlier channel
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let mut got = vec![0.0f32; m * n];
        let mut want = vec![0.0f32; m * n];
        for (isa, out) in [(Int8Isa::Amx, &mut got), (Int8Isa::Avx512Vnni, &mut want)] {
            let packed = Int8Weight::quantize(&w, n, k, isa);
            gemm_int8(&x, m, &packed, Some(&b), Activation::Identity, out, n, 1);
        }
        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            eprintln!("openembed: the AMX int8 kernel disagrees with the AVX-512 VNNI kernel; AMX stays off for int8");
        }
        same
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every kernel must compute: the quantized product in exact integer arithmetic.
    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let q = Int8Weight::quantize(w, n, k, Int8Isa::Portable);
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            let mut codes = vec![0u8; k.div_ceil(4) * 4];
            let (sa, zp) = quantize_row(&x[i * k..(i + 1) * k], &mut codes);
            for j in 0..n {
                let (p, c) = (j / 16, j % 16);
                let mut acc = 0i64;
                for (kk, &code) in codes.iter().enumerate().take(k) {
                    let wq = q.panels[p * q.kp * 16 + (kk / 4) * 64 + c * 4 + kk % 4] as i64;
                    acc += (code as i64 - zp as i64) * wq;
                }
                out[i * n + j] = acc as f32 * sa * q.scales[j] + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    /// A kernel to test: an instruction set, and for AMX whether its tile instructions run on
    /// the hardware or through the software model.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Kernel {
        isa: Int8Isa,
        model: bool,
    }

    /// The int8 kernels this CPU runs, and the AMX schedule through the tile model on every
    /// CPU; the others are reported as skipped.
    fn runnable_kernels() -> Vec<Kernel> {
        let all = [
            Int8Isa::Portable,
            Int8Isa::Avx2,
            Int8Isa::AvxVnni,
            Int8Isa::Avx512Vnni,
            Int8Isa::Amx,
        ];
        for isa in all.iter().filter(|isa| !isa.supported()) {
            crate::kernels::report_skipped(&format!("int8 {isa:?} kernel (this CPU lacks it)"));
        }
        let hardware = all.into_iter().filter(|isa| isa.supported());
        let hardware = hardware.map(|isa| Kernel { isa, model: false });
        hardware
            .chain([Kernel {
                isa: Int8Isa::Amx,
                model: true,
            }])
            .collect()
    }

    /// [`gemm_int8`] through `kernel`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        kernel: Kernel,
        x: &[f32],
        m: usize,
        w: &Int8Weight,
        bias: Option<&[f32]>,
        act: Activation,
        out: &mut [f32],
        out_stride: usize,
        threads: usize,
    ) {
        assert_eq!(w.isa, kernel.isa);
        if kernel.model {
            gemm_int8_on::<crate::kernels::amx::TileModel>(x, m, w, bias, act, out, out_stride, threads)
        } else {
            gemm_int8(x, m, w, bias, act, out, out_stride, threads)
        }
    }

    /// A smooth `[n × k]` weight and an `n` bias.
    /// One row through `kernel` on its own (one thread).
    fn row_alone(kernel: Kernel, x: &[f32], w: &Int8Weight, b: &[f32], act: Activation) -> Vec<f32> {
        let mut out = vec![0.0f32; w.n];
        gemm(kernel, x, 1, w, Some(b), act, &mut out, w.n, 1);
        out
    }

    fn weight_and_bias(n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..n * k).map(|i| (i as f32 * 0.11).cos() * 0.05).collect();
        (w, (0..n).map(|j| j as f32 * 0.01).collect())
    }

    #[test]
    fn every_row_quantizer_matches_the_portable_one() {
        type Quantizer = fn(&[f32], f32, f32, &mut [u8]) -> (f32, i32);
        let mut quantizers: Vec<(&str, Quantizer)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if crate::kernels::has_avx2_fma() {
                quantizers.push(("avx2", |x, lo, hi, o| unsafe { quantize_row_avx2(x, lo, hi, o) }));
            } else {
                crate::kernels::report_skipped("AVX2 row quantizer (this CPU lacks it)");
            }
            if crate::kernels::has_avx512() {
                quantizers.push(("avx512", |x, lo, hi, o| unsafe { quantize_row_avx512(x, lo, hi, o) }));
            } else {
                crate::kernels::report_skipped("AVX-512 row quantizer (this CPU lacks it)");
            }
        }
        for n in [1, 7, 8, 31, 32, 33, 63, 64, 65, 95, 129, 384, 1536, 1537] {
            let rows: [Vec<f32>; 4] = [
                (0..n).map(|i| ((i * 37 % 101) as f32 / 13.0) - 3.1).collect(),
                (0..n).map(|i| -((i * 53 % 97) as f32) / 7.0 - 0.5).collect(),
                (0..n).map(|i| (i % 5) as f32 * 1e-3).collect(),
                vec![0.0; n],
            ];
            for x in &rows {
                let padded = n.div_ceil(4) * 4 + 4;
                let mut want = vec![7u8; padded];
                let (lo, hi) = x.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let stats = row_stats(x);
                assert_eq!(
                    stats,
                    row_stats_portable(x),
                    "every row_stats gives the same bits, n = {n}"
                );
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::kernels::has_avx2_fma() {
                        assert_eq!(unsafe { row_stats_avx2(x) }, stats, "AVX2 row_stats, n = {n}");
                    }
                    if crate::kernels::has_avx512() {
                        assert_eq!(unsafe { row_stats_avx512(x) }, stats, "AVX-512 row_stats, n = {n}");
                    }
                }
                assert_eq!((stats.lo, stats.hi), (lo, hi), "range, n = {n}");
                let sum: f32 = x.iter().map(|v| v.abs()).sum();
                assert!(
                    (stats.abs_sum - sum).abs() <= 1e-5 * sum,
                    "Σ|x| {} vs {sum}, n = {n}",
                    stats.abs_sum
                );
                let (ws, wz) = quantize_row_portable(x, lo, hi, &mut want);
                for (name, quantize) in &quantizers {
                    let mut got = vec![7u8; padded];
                    let (s, z) = quantize(x, lo, hi, &mut got);
                    assert_eq!((s, z), (ws, wz), "{name}: scale and zero point, n = {n}");
                    // Fused and unfused multiply-add may round a tie the other way.
                    let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
                    assert!(worst <= Some(1), "{name}: codes differ by {worst:?}, n = {n}");
                    assert!(got[n..].iter().all(|&c| c == 0), "{name}: padding not zero, n = {n}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_exact_integer_arithmetic_on_odd_shapes() {
        for kernel in runnable_kernels() {
            let isa = kernel.isa;
            if isa == Int8Isa::AvxVnni && !crate::kernels::has_avx_vnni() {
                eprintln!("int8 AvxVnni kernel runs with the AVX512-VL encoding (this CPU lacks AVX-VNNI)");
            }
            for &(m, k, n) in &[
                (1, 1, 1),
                (7, 5, 3),
                (13, 401, 37),
                (50, 800, 130),
                (15, 64, 33),
                (100, 33, 17),
                (29, 1536, 48),
            ] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
                let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
                let packed = Int8Weight::quantize(&w, n, k, isa);
                let want = reference(&x, m, &w, n, k, Some(&b));
                let stride = n + 3;
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut out = vec![7.0f32; m * stride];
                    pool.install(|| {
                        gemm(
                            kernel,
                            &x,
                            m,
                            &packed,
                            Some(&b),
                            Activation::Identity,
                            &mut out,
                            stride,
                            threads,
                        )
                    });
                    for i in 0..m {
                        for j in 0..n {
                            let (got, want) = (out[i * stride + j], want[i * n + j]);
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{kernel:?} {m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        for j in n..stride {
                            assert_eq!(out[i * stride + j], 7.0, "padding column written");
                        }
                    }
                    let mut gelu = vec![0.0f32; m * stride];
                    pool.install(|| {
                        gemm(
                            kernel,
                            &x,
                            m,
                            &packed,
                            Some(&b),
                            Activation::Gelu,
                            &mut gelu,
                            stride,
                            threads,
                        )
                    });
                    for i in 0..m {
                        let mut expect: Vec<f32> = (0..n).map(|j| out[i * stride + j]).collect();
                        Activation::Gelu.apply(&mut expect);
                        for j in 0..n {
                            assert!(
                                (gelu[i * stride + j] - expect[j]).abs() < 1e-5,
                                "{kernel:?}: fused activation {} vs {}",
                                gelu[i * stride + j],
                                expect[j]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn outlier_channels_do_not_coarsen_the_rest() {
        let (m, k, n) = (20, 384, 48);
        let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for i in 0..m {
            x[i * k + 99] = 40.0 * if i % 2 == 0 { 1.0 } else { -0.5 };
            x[i * k + 7] = -25.0;
        }
        let (w, b) = weight_and_bias(n, k);
        for kernel in runnable_kernels() {
            let packed = Int8Weight::quantize(&w, n, k, kernel.isa);
            let mut out = vec![0.0f32; m * n];
            gemm(kernel, &x, m, &packed, Some(&b), Activation::Identity, &mut out, n, 2);
            let mut worst = 0.0f32;
            for i in 0..m {
                for j in 0..n {
                    let exact: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                    let scale: f32 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]).abs()).sum();
                    worst = worst.max((out[i * n + j] - exact).abs() / scale);
                }
            }
            // One scale spanning ±40 would give steps of 0.31 for values of size 1: errors of
            // several percent of the row's mass. Without the two channels, well under 1%.
            assert!(worst < 0.005, "{kernel:?}: relative error {worst}");
        }
    }

    #[test]
    fn outlier_channels_past_the_table_bound_stay_in_the_codes() {
        // A wide output (1,024 columns: the test bound holds 16 dequantized weight columns)
        // and 40 rows, each with its own outlier channel: the first 16 rows keep theirs apart
        // (as when run alone), the rest are quantized with them (coarser, still close).
        let (m, k, n) = (40, 64, 1024);
        let table_slots = OUTLIER_TABLE_BYTES / (4 * outlier_stride(n));
        assert_eq!(table_slots, 16);
        let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for i in 0..m {
            x[i * k + i] = 60.0;
        }
        let (w, b) = weight_and_bias(n, k);
        let mut results: Vec<(Kernel, Vec<f32>)> = Vec::new();
        for kernel in runnable_kernels() {
            let packed = Int8Weight::quantize(&w, n, k, kernel.isa);
            let mut out = vec![0.0f32; m * n];
            gemm(kernel, &x, m, &packed, Some(&b), Activation::Identity, &mut out, n, 2);
            for i in 0..m {
                let alone = row_alone(kernel, &x[i * k..(i + 1) * k], &packed, &b, Activation::Identity);
                let same = out[i * n..(i + 1) * n]
                    .iter()
                    .zip(&alone)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert_eq!(same, i < table_slots, "{kernel:?}: row {i} equal to itself alone");
                let mut worst = 0.0f32;
                for j in 0..n {
                    let exact: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                    let scale: f32 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]).abs()).sum();
                    worst = worst.max((out[i * n + j] - exact).abs() / scale);
                }
                let bound = if i < table_slots { 0.015 } else { 0.05 };
                assert!(worst < bound, "{kernel:?}: row {i}, relative error {worst}");
            }
            results.push((kernel, out));
        }
        let (first, want) = &results[0];
        for (kernel, got) in &results[1..] {
            let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kernel:?} differs from {first:?}");
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_other_rows() {
        // Rows with outliers in channels of their own, in a batch and alone, bit for bit: a
        // text's vector must not depend on what else was in its batch.
        let (m, k, n) = (23, 384, 37);
        let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for i in 0..m {
            for o in 0..(i % 11) {
                x[i * k + (i * 31 + o * 57) % k] = (20.0 + o as f32) * if o % 2 == 0 { 1.0 } else { -1.0 };
            }
        }
        let (w, b) = weight_and_bias(n, k);
        for kernel in runnable_kernels() {
            let packed = Int8Weight::quantize(&w, n, k, kernel.isa);
            let mut batch = vec![0.0f32; m * n];
            gemm(kernel, &x, m, &packed, Some(&b), Activation::Gelu, &mut batch, n, 2);
            for i in 0..m {
                let alone = row_alone(kernel, &x[i * k..(i + 1) * k], &packed, &b, Activation::Gelu);
                assert_eq!(
                    alone[..],
                    batch[i * n..(i + 1) * n],
                    "{kernel:?}: row {i} alone differs"
                );
            }
        }
    }

    #[test]
    fn close_to_fp32_and_zero_rows_stay_zero() {
        let (m, k, n) = (9, 384, 40);
        let x: Vec<f32> = (0..m * k)
            .map(|i| (i as f32 * 0.37).sin() * if i < k { 0.0 } else { 1.0 })
            .collect();
        let (w, _) = weight_and_bias(n, k);
        let packed = Int8Weight::quantize(&w, n, k, Int8Isa::detect());
        let mut out = vec![0.0f32; m * n];
        gemm_int8(&x, m, &packed, None, Activation::Identity, &mut out, n, 1);
        assert!(out[..n].iter().all(|&v| v == 0.0), "an all-zero row gives zeros");
        for i in 1..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                let scale: f32 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]).abs()).sum();
                assert!(
                    (out[i * n + j] - exact).abs() < 0.02 * scale,
                    "[{i},{j}] {} vs {exact}",
                    out[i * n + j]
                );
            }
        }
    }

    #[test]
    fn every_kernel_gives_the_same_vectors_bit_for_bit() {
        // The integer sums are exact and every epilogue runs the same operations in the same
        // order, so all kernels — the AMX schedule through the tile model and, where the CPU
        // has them, the real tile instructions — give identical outputs.
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 63, 17),
            (17, 65, 33),
            (33, 130, 31),
            (70, 384, 96),
            (40, 1536, 40),
        ] {
            let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
            for i in 0..m {
                if k >= 32 {
                    x[i * k + (i * 7) % k] = 50.0 + i as f32; // outliers in some channels
                }
            }
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let mut results: Vec<(Kernel, Vec<f32>)> = Vec::new();
            for kernel in runnable_kernels() {
                let packed = Int8Weight::quantize(&w, n, k, kernel.isa);
                let mut out = vec![0.0f32; m * n];
                gemm(kernel, &x, m, &packed, Some(&b), Activation::Identity, &mut out, n, 2);
                results.push((kernel, out));
            }
            let (first, want) = &results[0];
            for (kernel, got) in &results[1..] {
                let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kernel:?} differs from {first:?} at {m}x{k}x{n}");
            }
        }
    }

    #[test]
    fn chained_layers_equal_two_separate_ones_bit_for_bit() {
        // The AMX schedule through the tile model on every CPU, and the real tiles where
        // present: the intermediate quantized strip by strip as the first layer computes it
        // gives what the second layer computes from the fp32 intermediate. Shapes with rows
        // past whole strips, outliers in the input and in the intermediate, and (the last) more
        // intermediate outlier channels than the second layer's table holds.
        let hardware = Int8Isa::Amx.supported();
        if !hardware {
            crate::kernels::report_skipped("int8 chained layers on the real AMX tiles (this CPU lacks them)");
        }
        for &(m, k, n1, n2, threads) in &[
            (1, 5, 7, 3, 2),
            (130, 64, 96, 40, 1),
            (300, 100, 33, 65, 2),
            (259, 384, 1536, 384, 2),
            (300, 64, 96, 1024, 2),
        ] {
            let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
            let mut w1: Vec<f32> = (0..n1 * k).map(|i| ((i * 53 % 97) as f32 / 480.0) - 0.1).collect();
            if k >= 32 {
                for i in 0..m {
                    x[i * k + i % k] = 50.0;
                }
                for j in 0..n1.min(k) {
                    w1[j * k + j] = 8.0;
                }
            }
            let w2: Vec<f32> = (0..n2 * n1).map(|i| ((i * 29 % 89) as f32 / 440.0) - 0.1).collect();
            let (b1, b2): (Vec<f32>, Vec<f32>) = (
                (0..n1).map(|i| i as f32 * 0.01).collect(),
                (0..n2).map(|i| i as f32 * -0.02).collect(),
            );
            let (p1, p2) = (
                Int8Weight::quantize(&w1, n1, k, Int8Isa::Amx),
                Int8Weight::quantize(&w2, n2, n1, Int8Isa::Amx),
            );
            assert!(p1.chains_into(&p2, m, threads), "{m}x{k}x{n1}x{n2} chains");
            let what = format!("{m}x{k}x{n1}x{n2}");
            let model = gemm_int8_on::<crate::kernels::amx::TileModel>;
            let mut mid = vec![0.0f32; m * n1];
            let mut want = vec![0.0f32; m * n2];
            model(&x, m, &p1, Some(&b1), Activation::Gelu, &mut mid, n1, threads);
            model(&mid, m, &p2, Some(&b2), Activation::Identity, &mut want, n2, threads);
            let first = (&p1, Some(&b1[..]), Activation::Gelu);
            let second = (&p2, Some(&b2[..]), Activation::Identity);
            let mut got = vec![0.0f32; m * n2];
            gemm_int8_chained_on::<crate::kernels::amx::TileModel>(&x, m, first, second, &mut got, n2, threads);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same(&got, &want), "model, {what}");
            if hardware {
                let mut real = vec![0.0f32; m * n2];
                gemm_int8_chained(&x, m, first, second, &mut real, n2, threads);
                assert!(same(&real, &want), "hardware, {what}");
            }
        }
        // Too few rows for threads to split them: the layers do not chain.
        let p = Int8Weight::quantize(&[0.5; 64 * 64], 64, 64, Int8Isa::Amx);
        assert!(!p.chains_into(&p, 40, 2) && p.chains_into(&p, 40, 1) == (40 >= 128));
    }

    #[test]
    fn a_fold_sees_every_product_once_as_the_gemm_writes_it() {
        // Every kernel (the AMX schedule through the tile model too): the fold gets the plain
        // GEMM's output without bias, bit for bit, outliers included.
        for &(m, k, n) in &[(1, 5, 7), (33, 64, 100), (70, 200, 1030)] {
            let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
            for i in 0..m {
                x[i * k + (i * 7) % k] = 50.0 + i as f32;
            }
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
            for kernel in runnable_kernels() {
                let packed = Int8Weight::quantize(&w, n, k, kernel.isa);
                let mut want = vec![0.0f32; m * n];
                gemm(kernel, &x, m, &packed, None, Activation::Identity, &mut want, n, 2);
                let what = format!("{kernel:?} {m}x{k}x{n}");
                crate::kernels::check_fold(m, n, &want, &what, |fold| match kernel.model {
                    true => gemm_int8_fold_on::<crate::kernels::amx::TileModel>(&x, m, &packed, fold, 2),
                    false => gemm_int8_fold(&x, m, &packed, fold, 2),
                });
            }
        }
    }
}
