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
//! - Outlier channels: a channel whose largest value in the batch is more than
//!   [`OUTLIER_RATIO`] times the median channel's (at most [`MAX_OUTLIERS`] of them) is left
//!   out of the codes and multiplied in fp32 against its dequantized weight column, so the
//!   few huge channels of transformer activations do not coarsen every row's scale.
//! - Products accumulate exactly in i32; the epilogue subtracts `zp·Σq_w`, scales by
//!   `s_x · s_w`, adds the outlier channels' fp32 products and the bias and applies the
//!   activation before the one store of fp32.
//!
//! `K` is never blocked (the i32 sums cover the whole depth); threads split the output as the
//! fp32 SGEMM does ([`split_work`]).

use super::activation::Activation;
use super::buffer;
use super::sgemm::{for_each_tile, run_tasks, split_work, SendPtr};
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
}

impl Int8Isa {
    /// The best kernel this CPU runs (after [`super::ISA_ENV`]).
    pub fn detect() -> Self {
        if super::has_avx512_vnni() {
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
        }
    }

    /// Output columns per panel.
    fn nr(self) -> usize {
        match self {
            Int8Isa::Portable | Int8Isa::Avx2 | Int8Isa::AvxVnni => 16,
            Int8Isa::Avx512Vnni => 32,
        }
    }

    /// Rows per micro-tile.
    fn mr(self) -> usize {
        match self {
            Int8Isa::Portable => 4,
            Int8Isa::Avx2 => AVX2_MR,
            Int8Isa::AvxVnni => 6,
            Int8Isa::Avx512Vnni => 14,
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
            Int8Isa::Portable | Int8Isa::AvxVnni | Int8Isa::Avx512Vnni => 4,
        }
    }
}

/// Rows per AVX2 micro-tile, and per interleaved strip of its activation codes.
const AVX2_MR: usize = 6;

/// A `[n × k]` weight (PyTorch layout) quantized to int8 per output channel and packed.
pub struct Int8Weight {
    panels: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of 4 (zero weights in the padding).
    kp: usize,
    isa: Int8Isa,
}

impl Int8Weight {
    /// Quantizes and packs a row-major `[n × k]` weight for `isa`'s kernel.
    pub fn quantize(w: &[f32], n: usize, k: usize, isa: Int8Isa) -> Self {
        assert!(w.len() >= n * k, "int8: weight too short");
        let (nr, g) = (isa.nr(), isa.group());
        let kp = k.div_ceil(4) * 4;
        let count = n.div_ceil(nr);
        let mut panels = vec![0i8; count * kp * nr];
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
        for (j, o) in out.iter_mut().enumerate().take(self.n) {
            let (p, col) = (j / nr, j % nr);
            let q = self.panels[p * self.kp * nr + (c / g) * nr * g + col * g + c % g];
            *o = q as f32 * self.scales[j];
        }
    }
}

/// Per-row quantization of `x` (rows `k` apart): codes with row stride `kp` (zero padded),
/// scales and zero points, and the outlier channels left out of the codes.
#[derive(Default)]
struct QuantizedRows {
    codes: Vec<u8>,
    wide: Vec<u16>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    channel_max: Vec<f32>,
    outliers: Vec<usize>,
    /// `[m × outliers]`: each row's values in the outlier channels, in fp32.
    outlier_x: Vec<f32>,
    /// `[outliers × n]`: the weight's outlier columns, dequantized.
    outlier_w: Vec<f32>,
}

/// A channel whose largest magnitude in the batch exceeds this many times the median
/// channel's is an outlier (transformer activations have a few such channels, e.g. 16× the
/// median at the MLP input of all-MiniLM-L6-v2, and one scale per row would spend most of
/// its 256 levels on them).
const OUTLIER_RATIO: f32 = 4.0;

/// At most this many outlier channels per call (the largest ones), so their fp32 side
/// product stays a few percent of the int8 one (all-MiniLM-L6-v2 has 3–8 per layer input;
/// 4, 8 and 16 give the same fidelity there).
const MAX_OUTLIERS: usize = 8;

thread_local! {
    /// The caller's quantized activations, reused between calls.
    static ROWS: std::cell::Cell<QuantizedRows> = std::cell::Cell::new(QuantizedRows::default());
}

/// Quantizes one row to `0..=255` over `[min(x, 0), max(x, 0)]` (codes past `x.len()` are
/// zero); returns (scale, zero point). Rounds to nearest, ties to even.
fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        // SAFETY: the CPU has AVX-512F/BW.
        return unsafe { quantize_row_avx512(x, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { quantize_row_avx2(x, out) };
    }
    quantize_row_portable(x, out)
}

/// [`quantize_row`] in plain Rust.
fn quantize_row_portable(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = x.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [u8]) -> (f32, i32) {
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
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..n).step_by(16) {
        let v = _mm512_maskz_loadu_ps(mask(i), x.as_ptr().add(i));
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    let Some((inv, zp)) = row_scale(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi)) else {
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

/// [`quantize_row`] on AVX2: 32 values per step (the last step on a zero-padded copy), codes
/// rounded to nearest even by `vcvtps2dq` and narrowed with unsigned saturation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [u8]) -> (f32, i32) {
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
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..n).step_by(STEP) {
        let p = step(i);
        for j in 0..STEP / 8 {
            let v = _mm256_loadu_ps(p.add(8 * j));
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
        }
    }
    let lanes = |v: __m256| -> [f32; 8] { std::mem::transmute(v) };
    let lo = lanes(lo).into_iter().fold(0.0f32, f32::min);
    let hi = lanes(hi).into_iter().fold(0.0f32, f32::max);
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

impl QuantizedRows {
    /// Finds the outlier channels of `x` ([`OUTLIER_RATIO`], [`MAX_OUTLIERS`]).
    fn find_outliers(&mut self, x: &[f32], m: usize, k: usize) {
        self.outliers.clear();
        if k < 32 {
            return;
        }
        let blocks: Vec<&[f32]> = x[..m * k].chunks(64 * k).collect();
        let mut maxima = vec![0.0f32; blocks.len() * k];
        parallel::for_each(maxima.chunks_mut(k).zip(blocks).collect(), |(max, rows)| {
            channel_abs_max(rows, max)
        });
        let mut chunks = maxima.chunks_exact(k);
        let mut max = chunks.next().map(<[f32]>::to_vec).unwrap_or_default();
        for other in chunks {
            max.iter_mut().zip(other).for_each(|(a, b)| *a = a.max(*b));
        }
        self.channel_max.clear();
        self.channel_max.extend_from_slice(&max);
        let mid = k / 2;
        let (_, median, _) = self.channel_max.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
        let limit = *median * OUTLIER_RATIO;
        if limit.is_nan() || limit <= 0.0 {
            return;
        }
        self.outliers.extend((0..k).filter(|&c| max[c] > limit));
        if self.outliers.len() > MAX_OUTLIERS {
            self.outliers.sort_by(|&a, &b| max[b].total_cmp(&max[a]));
            self.outliers.truncate(MAX_OUTLIERS);
        }
        self.outliers.sort_unstable();
    }

    /// Quantizes `x` for `w`'s kernel: the codes (widened to u16 for AVX2), and the outlier
    /// channels' values and weight columns for the kernels' epilogue.
    fn fill(&mut self, x: &[f32], m: usize, w: &Int8Weight) {
        const ROWS: usize = 16;
        let (k, kp) = (w.k, w.kp);
        self.find_outliers(x, m, k);
        let outliers = &self.outliers;
        let no = outliers.len();
        let codes = buffer(&mut self.codes, m * kp);
        let blocks: Vec<_> = codes
            .chunks_mut(ROWS * kp)
            .zip(buffer(&mut self.scales, m).chunks_mut(ROWS))
            .zip(buffer(&mut self.zero_points, m).chunks_mut(ROWS))
            // (One value per row even without outliers, so the chunks line up with the rows'.)
            .zip(buffer(&mut self.outlier_x, m * no.max(1)).chunks_mut(ROWS * no.max(1)))
            .zip(x[..m * k].chunks(ROWS * k))
            .collect();
        parallel::for_each(blocks, |((((codes, scales), zps), kept), x)| {
            let mut masked = Vec::new();
            for (i, row) in x.chunks_exact(k).enumerate() {
                let row = if no == 0 {
                    row
                } else {
                    // Outlier channels are computed apart in fp32: kept aside, zero here.
                    masked.clear();
                    masked.extend_from_slice(row);
                    for (o, &c) in outliers.iter().enumerate() {
                        kept[i * no + o] = masked[c];
                        masked[c] = 0.0;
                    }
                    &masked[..]
                };
                let (s, z) = quantize_row(row, &mut codes[i * kp..(i + 1) * kp]);
                scales[i] = s;
                zps[i] = z;
            }
        });
        let columns = buffer(&mut self.outlier_w, no * w.n);
        for (&c, col) in outliers.iter().zip(columns.chunks_exact_mut(w.n.max(1))) {
            w.dequantized_column(c, col);
        }
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
                    for (p, group) in strip.chunks_exact_mut(2 * MR).enumerate() {
                        for (r, row) in rows.iter().enumerate() {
                            group[2 * r] = row[2 * p] as u16;
                            group[2 * r + 1] = row[2 * p + 1] as u16;
                        }
                    }
                }
            });
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
    /// Outlier channels: row `r`'s values at `outlier_x + r·outliers`; outlier `o`'s weight
    /// for this tile's column `j` at `outlier_w + o·n + j`.
    outliers: usize,
    outlier_x: *const f32,
    outlier_w: *const f32,
    n: usize,
    bias: Option<*const f32>,
    act: Activation,
}

impl QTile {
    /// Row `r`'s outlier channels' product for column `j`.
    #[inline(always)]
    unsafe fn outlier_sum(&self, r: usize, j: usize) -> f32 {
        let mut sum = 0.0;
        for o in 0..self.outliers {
            sum += *self.outlier_x.add(r * self.outliers + o) * *self.outlier_w.add(o * self.n + j);
        }
        sum
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
    let (n, k, kp) = (w.n, w.k, w.kp);
    assert!(x.len() >= m * k && out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    assert!(bias.is_none_or(|b| b.len() >= n));
    assert!(w.isa.supported(), "int8 kernel {:?} not supported by this CPU", w.isa);
    if m == 0 || n == 0 {
        return;
    }
    let mut rows = ROWS.with(|cell| cell.take());
    rows.fill(x, m, w);
    let wide = w.isa.wide_codes();
    // The 256-bit VNNI kernel's encoding, chosen once per call rather than per tile.
    let vex_vnni = super::has_avx_vnni();
    let (nr, mr) = (w.isa.nr(), w.isa.mr());
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    let a_base: *const u8 = if wide {
        rows.wide.as_ptr() as *const u8
    } else {
        rows.codes.as_ptr()
    };
    let a_base = SendPtr(a_base as *mut u8);
    let a_base = &a_base;
    let elem = if wide { 2 } else { 1 };
    let quant = &rows;
    let no = quant.outliers.len();
    let tasks = split_work(m, n, mr, nr, threads);
    run_tasks(&tasks, |&block| {
        for_each_tile(block, mr, nr, |r, tile_rows, c| {
            // Tiles start on whole `mr`-row strips (`split_work` and `for_each_tile` step by
            // `mr`), which AVX2's interleaved codes rely on.
            debug_assert_eq!(r % mr, 0);
            // SAFETY: rows r..r+rows and columns c..c+cols lie inside this task's
            // block (tasks are disjoint) and inside every buffer checked above; the
            // panel holds kp·nr codes and nr scales/sums; the outlier values hold
            // `no` per row and the outlier columns `n` per outlier.
            unsafe {
                let t = QTile {
                    rows: tile_rows,
                    a: a_base.0.add(r * kp * elem),
                    kp,
                    b: w.panels.as_ptr().add((c / nr) * kp * nr),
                    c: out_ptr.0.add(r * out_stride + c),
                    ldc: out_stride,
                    cols: nr.min(n - c),
                    row_scale: quant.scales.as_ptr().add(r),
                    row_zp: quant.zero_points.as_ptr().add(r),
                    col_scale: w.scales.as_ptr().add(c),
                    col_sum: w.sums.as_ptr().add(c),
                    outliers: no,
                    outlier_x: quant.outlier_x.as_ptr().add(r * no),
                    outlier_w: quant.outlier_w.as_ptr().add(c),
                    n,
                    bias: bias.map(|b| b.as_ptr().add(c)),
                    act,
                };
                match w.isa {
                    Int8Isa::Portable => portable_tile(t),
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
            }
        });
    });
    ROWS.with(|cell| cell.replace(rows));
}

super::simd_dispatch! {
    /// `max[c] = max(max[c], |row[c]|)` over the rows of `x` (rows `max.len()` apart).
    fn channel_abs_max(x: &[f32], max: &mut [f32]) {
        for row in x.chunks_exact(max.len().max(1)) {
            max.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(v.abs()));
        }
    }
}

/// The fp32 value of one accumulated dot product.
#[inline(always)]
unsafe fn dequantize(t: &QTile, r: usize, j: usize, acc: i32) -> f32 {
    let v = acc - *t.row_zp.add(r) * *t.col_sum.add(j);
    v as f32 * (*t.row_scale.add(r) * *t.col_scale.add(j))
}

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
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        let mut tmp = [0.0f32; NR];
        for j in 0..t.cols {
            tmp[j] = dequantize(&t, r, j, row[j]) + t.outlier_sum(r, j);
        }
        super::sgemm::finish_row::<false>(&mut tmp, t.c.add(r * t.ldc), t.cols, true, t.bias, t.act);
    }
}

/// AVX2: weights sign-extended to i16 pairs, activations as u16 pairs (six rows interleaved),
/// `vpmaddwd`.
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
/// shared epilogue.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_epilogue<const R: usize>(t: &QTile, acc: &[[std::arch::x86_64::__m256i; 2]; R]) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    let mut cs = [0i32; NR];
    let mut sw = [0.0f32; NR];
    std::ptr::copy_nonoverlapping(t.col_sum, cs.as_mut_ptr(), t.cols);
    std::ptr::copy_nonoverlapping(t.col_scale, sw.as_mut_ptr(), t.cols);
    let (cs0, cs1) = (
        _mm256_loadu_si256(cs.as_ptr() as *const __m256i),
        _mm256_loadu_si256(cs.as_ptr().add(8) as *const __m256i),
    );
    let (sw0, sw1) = (_mm256_loadu_ps(sw.as_ptr()), _mm256_loadu_ps(sw.as_ptr().add(8)));
    // The outlier columns of this tile, zero past `cols`.
    let mut ow = [[0.0f32; NR]; MAX_OUTLIERS];
    for (o, col) in ow.iter_mut().enumerate().take(t.outliers) {
        std::ptr::copy_nonoverlapping(t.outlier_w.add(o * t.n), col.as_mut_ptr(), t.cols);
    }
    for (r, row) in acc.iter().enumerate() {
        let zp = _mm256_set1_epi32(*t.row_zp.add(r));
        let sa = _mm256_set1_ps(*t.row_scale.add(r));
        let lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(row[0], _mm256_mullo_epi32(zp, cs0)));
        let hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(row[1], _mm256_mullo_epi32(zp, cs1)));
        let mut lo = _mm256_mul_ps(lo, _mm256_mul_ps(sa, sw0));
        let mut hi = _mm256_mul_ps(hi, _mm256_mul_ps(sa, sw1));
        for (o, col) in ow.iter().enumerate().take(t.outliers) {
            let xv = _mm256_set1_ps(*t.outlier_x.add(r * t.outliers + o));
            lo = _mm256_fmadd_ps(xv, _mm256_loadu_ps(col.as_ptr()), lo);
            hi = _mm256_fmadd_ps(xv, _mm256_loadu_ps(col.as_ptr().add(8)), hi);
        }
        super::sgemm::finish_avx2(lo, hi, t.c.add(r * t.ldc), t.cols, true, t.bias, t.act);
    }
}

/// 256-bit `vpdpbusd` (AVX-VNNI): four u8 activations against four i8 weights per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn avx_vnni_kernel<const R: usize>(t: QTile) {
    vnni256::<R, false>(t)
}

/// The same kernel with the AVX512-VL encoding of the instruction, for CPUs with AVX-512 VNNI
/// (the 512-bit kernel is chosen there; this one lets those CPUs test the 256-bit kernel).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn avx512vl_vnni_kernel<const R: usize>(t: QTile) {
    vnni256::<R, true>(t)
}

/// Body of the 256-bit VNNI kernels; `EVEX` picks the instruction's encoding.
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
    let lanes = |n: usize| {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    };
    let (m0, m1) = (lanes(t.cols), lanes(t.cols.saturating_sub(16)));
    let cs0 = _mm512_maskz_loadu_epi32(m0, t.col_sum);
    let cs1 = _mm512_maskz_loadu_epi32(m1, t.col_sum.wrapping_add(16));
    let sw0 = _mm512_maskz_loadu_ps(m0, t.col_scale);
    let sw1 = _mm512_maskz_loadu_ps(m1, t.col_scale.wrapping_add(16));
    // The outlier columns of this tile, zero past `cols`.
    let mut ow = [[_mm512_setzero_ps(); 2]; MAX_OUTLIERS];
    for (o, col) in ow.iter_mut().enumerate().take(t.outliers) {
        let w = t.outlier_w.add(o * t.n);
        *col = [
            _mm512_maskz_loadu_ps(m0, w),
            _mm512_maskz_loadu_ps(m1, w.wrapping_add(16)),
        ];
    }
    let zero = _mm512_setzero_ps();
    let (bias0, bias1) = match t.bias {
        Some(b) => (
            _mm512_maskz_loadu_ps(m0, b),
            _mm512_maskz_loadu_ps(m1, b.wrapping_add(16)),
        ),
        None => (zero, zero),
    };
    for (r, row) in acc.iter().enumerate() {
        let zp = _mm512_set1_epi32(*t.row_zp.add(r));
        let sa = _mm512_set1_ps(*t.row_scale.add(r));
        let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(row[0], _mm512_mullo_epi32(zp, cs0)));
        let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(row[1], _mm512_mullo_epi32(zp, cs1)));
        let mut lo = _mm512_fmadd_ps(lo, _mm512_mul_ps(sa, sw0), bias0);
        let mut hi = _mm512_fmadd_ps(hi, _mm512_mul_ps(sa, sw1), bias1);
        for (o, col) in ow.iter().enumerate().take(t.outliers) {
            let xv = _mm512_set1_ps(*t.outlier_x.add(r * t.outliers + o));
            lo = _mm512_fmadd_ps(xv, col[0], lo);
            hi = _mm512_fmadd_ps(xv, col[1], hi);
        }
        let dst = t.c.add(r * t.ldc);
        if t.act == Activation::Identity {
            // Stored here rather than through `finish_avx512`, which is not inlined: most
            // layers have no activation, and this spares them a call per row.
            _mm512_mask_storeu_ps(dst, m0, lo);
            _mm512_mask_storeu_ps(dst.wrapping_add(16), m1, hi);
        } else {
            super::sgemm::finish_avx512(lo, hi, dst, t.cols, true, None, t.act);
        }
    }
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

    #[test]
    fn every_row_quantizer_matches_the_portable_one() {
        type Quantizer = fn(&[f32], &mut [u8]) -> (f32, i32);
        let mut quantizers: Vec<(&str, Quantizer)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if crate::kernels::has_avx2_fma() {
                quantizers.push(("avx2", |x, o| unsafe { quantize_row_avx2(x, o) }));
            } else {
                eprintln!("skipped: AVX2 row quantizer (this CPU lacks it)");
            }
            if crate::kernels::has_avx512() {
                quantizers.push(("avx512", |x, o| unsafe { quantize_row_avx512(x, o) }));
            } else {
                eprintln!("skipped: AVX-512 row quantizer (this CPU lacks it)");
            }
        }
        for n in [1, 7, 8, 31, 32, 33, 95, 384, 1537] {
            let rows: [Vec<f32>; 4] = [
                (0..n).map(|i| ((i * 37 % 101) as f32 / 13.0) - 3.1).collect(),
                (0..n).map(|i| -((i * 53 % 97) as f32) / 7.0 - 0.5).collect(),
                (0..n).map(|i| (i % 5) as f32 * 1e-3).collect(),
                vec![0.0; n],
            ];
            for x in &rows {
                let padded = n.div_ceil(4) * 4 + 4;
                let mut want = vec![7u8; padded];
                let (ws, wz) = quantize_row_portable(x, &mut want);
                for (name, quantize) in &quantizers {
                    let mut got = vec![7u8; padded];
                    let (s, z) = quantize(x, &mut got);
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
        for isa in [Int8Isa::Portable, Int8Isa::Avx2, Int8Isa::AvxVnni, Int8Isa::Avx512Vnni] {
            if !isa.supported() {
                eprintln!("skipped: int8 {isa:?} kernel (this CPU lacks it)");
                continue;
            }
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
                        gemm_int8(
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
                                "{isa:?} {m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        for j in n..stride {
                            assert_eq!(out[i * stride + j], 7.0, "padding column written");
                        }
                    }
                    let mut gelu = vec![0.0f32; m * stride];
                    pool.install(|| gemm_int8(&x, m, &packed, Some(&b), Activation::Gelu, &mut gelu, stride, threads));
                    for i in 0..m {
                        let mut expect: Vec<f32> = (0..n).map(|j| out[i * stride + j]).collect();
                        Activation::Gelu.apply(&mut expect);
                        for j in 0..n {
                            assert!((gelu[i * stride + j] - expect[j]).abs() < 1e-5, "fused activation");
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
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos() * 0.05).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
        for isa in [Int8Isa::Portable, Int8Isa::Avx2, Int8Isa::AvxVnni, Int8Isa::Avx512Vnni] {
            if !isa.supported() {
                eprintln!("skipped: int8 {isa:?} kernel (this CPU lacks it)");
                continue;
            }
            let packed = Int8Weight::quantize(&w, n, k, isa);
            let mut out = vec![0.0f32; m * n];
            gemm_int8(&x, m, &packed, Some(&b), Activation::Identity, &mut out, n, 2);
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
            assert!(worst < 0.005, "{isa:?}: relative error {worst}");
        }
    }

    #[test]
    fn close_to_fp32_and_zero_rows_stay_zero() {
        let (m, k, n) = (9, 384, 40);
        let x: Vec<f32> = (0..m * k)
            .map(|i| (i as f32 * 0.37).sin() * if i < k { 0.0 } else { 1.0 })
            .collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos() * 0.05).collect();
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
}
