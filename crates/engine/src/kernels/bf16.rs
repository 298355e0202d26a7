//! bfloat16 dense layers: `Y = act(X · Wᵀ + b)` with `W` stored as bf16 (half the memory of
//! fp32) and `X` rounded to bf16 per call; every product of two bf16 values is exact in fp32
//! and accumulates in fp32.
//!
//! Weights are packed in column panels of pairs of consecutive `k` values (the operand layout
//! of AVX512-BF16's `vdpbf16ps`). CPUs without it widen the pairs to fp32 in registers (a
//! shift or a mask) and use FMA, so every CPU computes the same products. `K` is not blocked;
//! threads split the output as the fp32 SGEMM does ([`super::sgemm::for_each_block`]).

use super::activation::Activation;
use super::amx::{Amx, Dot, TileUnit, Tiles};
use super::sgemm::{drive, SendPtr, TileOrder};
use super::{buffer, Aligned, Fold};
use crate::parallel;
use rayon::prelude::*;

/// The instruction set a [`Bf16Weight`] is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Isa {
    /// Plain Rust, 4×16 tiles.
    Portable,
    /// AVX2 + FMA on widened pairs, 4×16 tiles.
    Avx2,
    /// AVX-512F FMA on widened pairs, 12×32 tiles.
    Avx512,
    /// AVX512-BF16 `vdpbf16ps`, 14×32 tiles.
    Avx512Bf16,
    /// AMX `tdpbf16ps`: 32×32 blocks of four 16×16 tiles, `K` in steps of 32; the AVX512-BF16
    /// panel layout (with `k` padded to 32).
    Amx,
}

impl Bf16Isa {
    /// The best kernel this CPU runs (after [`super::ISA_ENV`]).
    pub fn detect() -> Self {
        if amx_usable() {
            Bf16Isa::Amx
        } else if super::has_avx512_bf16() && !intel() {
            Bf16Isa::Avx512Bf16
        } else if super::has_avx512() {
            Bf16Isa::Avx512
        } else if super::has_avx2_fma() {
            Bf16Isa::Avx2
        } else {
            Bf16Isa::Portable
        }
    }

    /// True when this CPU runs the kernel.
    pub fn supported(self) -> bool {
        match self {
            Bf16Isa::Portable => true,
            Bf16Isa::Avx2 => super::has_avx2_fma(),
            Bf16Isa::Avx512 => super::has_avx512(),
            Bf16Isa::Avx512Bf16 => super::has_avx512_bf16(),
            Bf16Isa::Amx => super::amx::has_amx(),
        }
    }

    fn nr(self) -> usize {
        match self {
            Bf16Isa::Portable | Bf16Isa::Avx2 => 16,
            Bf16Isa::Avx512 | Bf16Isa::Avx512Bf16 | Bf16Isa::Amx => 32,
        }
    }

    fn mr(self) -> usize {
        match self {
            Bf16Isa::Portable | Bf16Isa::Avx2 => 4,
            Bf16Isa::Avx512 => 12,
            Bf16Isa::Avx512Bf16 => 14,
            Bf16Isa::Amx => 2 * super::amx::TILE_ROWS,
        }
    }

    /// `k` is padded to a multiple of this (zero in the padding).
    fn k_align(self) -> usize {
        match self {
            Bf16Isa::Amx => super::amx::TILE_BYTES / 2,
            _ => 2,
        }
    }

    /// Whether the kernel reads the activations as bf16 bits (else as rounded fp32 values).
    fn reads_bits(self) -> bool {
        matches!(self, Bf16Isa::Avx512Bf16 | Bf16Isa::Amx)
    }
}

/// True on Intel CPUs, whose cores issue `vdpbf16ps` on one port where FMA has two: there the
/// widening AVX-512 kernel beats the AVX512-BF16 one (measured on a Xeon with AMX turned off:
/// 370 vs 220 GFLOPS), while AMD Zen 4 runs `vdpbf16ps` at 1.4–1.6× its fp32 speed.
fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 exists on every x86-64 CPU.
        let id = std::arch::x86_64::__cpuid(0);
        let vendor = [id.ebx.to_le_bytes(), id.edx.to_le_bytes(), id.ecx.to_le_bytes()].concat();
        vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds an fp32 value to the nearest bf16 (ties to even; NaN stays NaN).
#[inline(always)]
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The fp32 value of a bf16.
#[inline(always)]
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// A `[n × k]` weight (PyTorch layout) stored as bf16 and packed.
pub struct Bf16Weight {
    panels: Aligned<u16>,
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of [`Bf16Isa::k_align`] (zero in the padding).
    kp: usize,
    isa: Bf16Isa,
}

impl Bf16Weight {
    /// Rounds a row-major fp32 `[n × k]` weight to bf16 and packs it.
    pub fn from_f32(w: &[f32], n: usize, k: usize, isa: Bf16Isa) -> Self {
        let nr = isa.nr();
        let kp = k.next_multiple_of(isa.k_align());
        let count = n.div_ceil(nr);
        let mut panels = Aligned::<u16>::zeroed(count * kp * nr);
        panels.par_chunks_mut(kp * nr).enumerate().for_each(|(p, panel)| {
            for c in 0..nr.min(n - p * nr) {
                let row = (p * nr + c) * k;
                for kk in 0..k {
                    panel[(kk / 2) * nr * 2 + c * 2 + kk % 2] = to_bf16(w[row + kk]);
                }
            }
        });
        Self { panels, n, k, kp, isa }
    }
}

/// Activations rounded to bf16 with row stride `kp`: as bits for `vdpbf16ps`, as fp32 values
/// for the widening kernels.
#[derive(Default)]
struct RoundedRows {
    bits: Aligned<u16>,
    values: Vec<f32>,
}

thread_local! {
    static ROWS: std::cell::Cell<RoundedRows> = std::cell::Cell::new(RoundedRows::default());
}

/// Rounds every `k`-wide row of `x` into a `kp`-wide row of `out` with `round`, in parallel.
pub(crate) fn round_rows<T: Send>(x: &[f32], k: usize, out: &mut [T], kp: usize, round: fn(&[f32], &mut [T])) {
    let blocks = out.chunks_mut(ROUND_ROWS * kp).zip(x.chunks(ROUND_ROWS * k)).collect();
    parallel::for_each(blocks, |(o, x): (&mut [T], &[f32])| {
        for (i, (o, row)) in o.chunks_exact_mut(kp).zip(x.chunks_exact(k)).enumerate() {
            if let Some(next) = x.get((i + 1) * k..(i + 2) * k) {
                super::prefetch(next);
            }
            round(row, o);
        }
    });
}

super::simd_dispatch! {
    /// Rounds one row to bf16 bits, zero padding the tail.
    fn round_row_bits(x: &[f32], out: &mut [u16]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = to_bf16(v);
        }
        out[x.len()..].iter_mut().for_each(|o| *o = 0);
    }
}

super::simd_dispatch! {
    /// Rounds one row to bf16 values kept as fp32, zero padding the tail.
    fn round_row_values(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = from_bf16(to_bf16(v));
        }
        out[x.len()..].iter_mut().for_each(|o| *o = 0.0);
    }
}

/// The fastest rounding to bf16 bits this CPU has: AVX512-BF16's `vcvtne2ps2bf16` (32 values
/// per instruction), else [`round_row_bits`]. The instruction differs only in taking fp32
/// denormals as zero, which the kernels reading bits (`vdpbf16ps`, `tdpbf16ps`) do anyway.
pub(crate) fn round_row_bits_fastest() -> fn(&[f32], &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512_bf16() {
        // SAFETY (of the call inside): the CPU has AVX512-BF16 (checked here).
        return |x, out| unsafe { round_row_bits_avx512bf16(x, out) };
    }
    round_row_bits
}

/// [`round_row_bits`] with `vcvtne2ps2bf16`.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `out` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
unsafe fn round_row_bits_avx512bf16(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = x.len();
    assert!(out.len() >= n);
    for i in (0..n).step_by(32) {
        let (m0, m1) = (super::mask16(n - i), super::mask16((n - i).saturating_sub(16)));
        let lo = _mm512_maskz_loadu_ps(m0, x.as_ptr().add(i));
        let hi = _mm512_maskz_loadu_ps(m1, x.as_ptr().wrapping_add(i + 16));
        let bits: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        let mask = (m0 as u32) | ((m1 as u32) << 16);
        _mm512_mask_storeu_epi16(out.as_mut_ptr().add(i) as *mut i16, mask, bits);
    }
    out[n..].fill(0);
}

/// Rows per parallel rounding task.
const ROUND_ROWS: usize = 16;

/// One micro-kernel call: rows `..rows` × columns `..cols` of one panel over the whole depth.
#[derive(Clone, Copy)]
struct BTile {
    rows: usize,
    /// Row `r` starts at `a + r·kp` elements (u16 bits or f32 values).
    a: *const u8,
    kp: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<*const f32>,
    act: Activation,
    /// Instead of fp32 at `c`: the results rounded to bf16, row `r` at `bits + r·ld` (the AMX
    /// kernel only, see [`gemm_bf16_chained`]).
    bits: Option<(*mut u16, usize)>,
}

/// Activations already rounded to bf16 in the input layout of a [`Bf16Weight`]'s AMX kernel
/// (rows `kp` apart, whole 32-row strips, zero padded): the output of the first of two
/// chained layers ([`gemm_bf16_chained`]) and the input of the second, so the intermediate is
/// written once at half the bytes and never rounded in a pass of its own.
#[derive(Default)]
pub struct Bf16Rows {
    bits: Aligned<u16>,
    rows: usize,
    kp: usize,
}

/// Where a bf16 GEMM reads its input.
enum Input<'a> {
    /// fp32 rows, `k` apart: rounded per call.
    Float(&'a [f32]),
    /// Rows already rounded ([`Bf16Rows`]).
    Rounded(&'a Bf16Rows),
}

/// Where a bf16 GEMM writes its output.
enum Output<'a> {
    /// fp32 rows `stride` apart.
    Float(&'a mut [f32], usize),
    /// Rounded to bf16 in the input layout of the next layer, whose `kp` is given.
    Rounded(&'a mut Bf16Rows, usize),
    /// Tile by tile to a fold (each task's tiles pass through an L1 scratch block).
    Fold(Fold<'a>),
}

impl Bf16Weight {
    /// True when this layer's output can go straight, as bf16, into `next`'s input
    /// ([`gemm_bf16_chained`]): both run the AMX kernel and `next` reads this one's outputs.
    pub fn chains_into(&self, next: &Bf16Weight) -> bool {
        self.isa == Bf16Isa::Amx && next.isa == Bf16Isa::Amx && next.k == self.n
    }
}

/// Two dense layers in a row, `out = act2(act1(x·W1ᵀ + b1)·W2ᵀ + b2)`, with the intermediate
/// handed over in bf16 (`mid`, reused scratch): what the second layer would have computed from
/// the fp32 intermediate, bit for bit, without writing it in fp32 and rounding it again. Needs
/// [`Bf16Weight::chains_into`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_chained(
    x: &[f32],
    m: usize,
    first: (&Bf16Weight, Option<&[f32]>, Activation),
    second: (&Bf16Weight, Option<&[f32]>, Activation),
    mid: &mut Bf16Rows,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    gemm_bf16_chained_on::<Amx>(x, m, first, second, mid, out, out_stride, threads)
}

/// [`gemm_bf16_chained`] with the tile instructions run by `U`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16_chained_on<U: TileUnit + Default>(
    x: &[f32],
    m: usize,
    (w1, b1, act1): (&Bf16Weight, Option<&[f32]>, Activation),
    (w2, b2, act2): (&Bf16Weight, Option<&[f32]>, Activation),
    mid: &mut Bf16Rows,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    assert!(w1.chains_into(w2), "bf16: these layers do not chain");
    run::<U>(Input::Float(x), m, w1, b1, act1, Output::Rounded(mid, w2.kp), threads);
    run::<U>(
        Input::Rounded(mid),
        m,
        w2,
        b2,
        act2,
        Output::Float(out, out_stride),
        threads,
    );
}

/// `out[m × n] = act(x[m × k] · Wᵀ + bias)` with `W` and `x` in bf16, rows of `out`
/// `out_stride` apart, on up to `threads` threads of the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    x: &[f32],
    m: usize,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    gemm_bf16_on::<Amx>(x, m, w, bias, act, out, out_stride, threads)
}

/// [`gemm_bf16`] with AMX's tile instructions run by `U`: the hardware ([`Amx`]), or the
/// software model ([`super::amx::TileModel`]) that lets every CPU test the AMX schedule.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16_on<U: TileUnit + Default>(
    x: &[f32],
    m: usize,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    run::<U>(
        Input::Float(x),
        m,
        w,
        bias,
        act,
        Output::Float(out, out_stride),
        threads,
    )
}

/// The products `x[m × k] · Wᵀ` (no bias) handed tile by tile to `fold` (see [`Fold`])
/// instead of written out; threads split the columns.
pub fn gemm_bf16_fold(x: &[f32], m: usize, w: &Bf16Weight, fold: Fold, threads: usize) {
    gemm_bf16_fold_on::<Amx>(x, m, w, fold, threads)
}

/// [`gemm_bf16_fold`] with the tile instructions run by `U`.
pub(crate) fn gemm_bf16_fold_on<U: TileUnit + Default>(
    x: &[f32],
    m: usize,
    w: &Bf16Weight,
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

/// The one bf16 GEMM driver: rounds (or takes) the input, runs the kernel of `w`'s layout over
/// every micro-tile, and writes fp32 or bf16 output.
fn run<U: TileUnit + Default>(
    input: Input,
    m: usize,
    w: &Bf16Weight,
    bias: Option<&[f32]>,
    act: Activation,
    output: Output,
    threads: usize,
) {
    let (n, k, kp) = (w.n, w.k, w.kp);
    let (nr, mr) = (w.isa.nr(), w.isa.mr());
    match &input {
        Input::Float(x) => assert!(x.len() >= m * k),
        Input::Rounded(r) => assert!(r.rows == m && r.kp == kp && r.bits.len() >= m.next_multiple_of(mr) * kp),
    }
    match &output {
        Output::Float(out, stride) => assert!(*stride >= n && (m == 0 || out.len() >= (m - 1) * stride + n)),
        Output::Rounded(_, next_kp) => assert!(w.isa == Bf16Isa::Amx && *next_kp >= n),
        Output::Fold(_) => {}
    }
    assert!(bias.is_none_or(|b| b.len() >= n));
    let modelled = !U::HARDWARE;
    assert!(
        w.isa.supported() || (w.isa == Bf16Isa::Amx && modelled),
        "bf16 kernel {:?} not supported by this CPU",
        w.isa
    );
    if m == 0 || n == 0 {
        return;
    }
    let mut rows = ROWS.with(|cell| cell.take());
    // Whole `mr`-row strips (AMX loads 16-row tiles); the rows past `m` are zero.
    let padded = m.next_multiple_of(mr) * kp;
    let (a_base, elem) = match input {
        Input::Rounded(r) => (r.bits.as_ptr() as *const u8, 2),
        Input::Float(x) if w.isa.reads_bits() => {
            let bits = rows.bits.resize(padded);
            bits[m * kp..].fill(0);
            round_rows(&x[..m * k], k, bits, kp, round_row_bits_fastest());
            (rows.bits.as_ptr() as *const u8, 2)
        }
        Input::Float(x) => {
            let values = buffer(&mut rows.values, padded);
            values[m * kp..].fill(0.0);
            round_rows(&x[..m * k], k, values, kp, round_row_values);
            (rows.values.as_ptr() as *const u8, 4)
        }
    };
    let a_base = SendPtr(a_base as *mut u8);
    let a_base = &a_base;
    let mut fold = None;
    let (out_ptr, out_stride, bits_out) = match output {
        Output::Float(out, stride) => (out.as_mut_ptr(), stride, None),
        Output::Fold(f) => {
            fold = Some(f);
            (std::ptr::null_mut(), 0, None)
        }
        Output::Rounded(next, next_kp) => {
            let bits = next
                .bits
                .resize(m.next_multiple_of(2 * super::amx::TILE_ROWS) * next_kp);
            // The padding rows and columns are zero (the next layer reads whole tiles); the
            // kernel writes the rest.
            bits[m * next_kp..].fill(0);
            if next_kp > n {
                bits[..m * next_kp]
                    .chunks_exact_mut(next_kp)
                    .for_each(|row| row[n..].fill(0));
            }
            next.rows = m;
            next.kp = next_kp;
            (std::ptr::null_mut(), 0, Some((SendPtr(bits.as_mut_ptr()), next_kp)))
        }
    };
    let out_ptr = SendPtr(out_ptr);
    let out_ptr = &out_ptr;
    let bits_out = &bits_out;
    let amx = w.isa == Bf16Isa::Amx;
    let order = if amx {
        TileOrder::strips_for_depth(2 * kp, nr)
    } else {
        TileOrder::PANELS
    };
    // SAFETY (the kernel contract of `drive`): the rows are rounded into whole `mr`-row strips
    // of `kp` values (zero padded) and the panels hold `kp·nr` values each; a tile unit is
    // configured only for the AMX kernel, whose hardware was checked above (or is the model);
    // a bf16 output holds `m` rows of `next_kp ≥ n` values; a fold's tiles are written to the
    // task's own `mr × nr` scratch block, and tasks split the columns.
    unsafe {
        drive(
            m,
            n,
            mr,
            nr,
            order,
            threads,
            fold,
            || amx.then(|| Tiles::<U>::configured()),
            |tiles, r, rows, c, target| {
                // Rows r..r+rows and columns c..c+cols lie inside this task's block (tasks are
                // disjoint) and inside every buffer checked above.
                let (dst, ldc) = target.unwrap_or((out_ptr.0.wrapping_add(r * out_stride + c), out_stride));
                let cols = nr.min(n - c);
                let t = BTile {
                    rows,
                    a: a_base.0.add(r * kp * elem),
                    kp,
                    b: w.panels.as_ptr().add((c / nr) * kp * nr),
                    c: dst,
                    ldc,
                    cols,
                    bias: bias.map(|b| b.as_ptr().add(c)),
                    act,
                    bits: bits_out.as_ref().map(|(p, ld)| (p.0.add(r * ld + c), *ld)),
                };
                match w.isa {
                    Bf16Isa::Portable => portable_tile(t),
                    Bf16Isa::Amx => match tiles {
                        // A fold takes the sums straight from the accumulator block.
                        Some(tiles) if target.is_some() => {
                            amx_products(tiles, &t);
                            return Some((tiles.acc.as_ptr() as *const f32, 32));
                        }
                        Some(tiles) => amx_tile(tiles, &t),
                        None => unreachable!("the AMX kernel's tasks configure tiles"),
                    },
                    #[cfg(target_arch = "x86_64")]
                    Bf16Isa::Avx2 => super::rows_dispatch!(t.rows, avx2_kernel, [4, 3, 2], t),
                    #[cfg(target_arch = "x86_64")]
                    Bf16Isa::Avx512 => {
                        super::rows_dispatch!(t.rows, avx512_kernel, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2], t)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Bf16Isa::Avx512Bf16 => {
                        super::rows_dispatch!(t.rows, dpbf16_kernel, [14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2], t)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("only the portable kernel is chosen off x86-64"),
                }
                target.map(|(p, ld)| (p as *const f32, ld))
            },
        );
    }
    ROWS.with(|cell| cell.replace(rows));
}

/// AMX: [`super::amx::block`] over the bf16 activations (`2·kp` bytes a row, 32 values a
/// step), then the fp32 GEMM's epilogue (bias, activation) from the stored sums.
///
/// # Safety
/// The kernel contract of [`drive`]; the activations hold whole 32-row strips of `kp` bf16
/// values and `kp` is a multiple of 32.
unsafe fn amx_tile<U: TileUnit>(tiles: &mut Tiles<U>, t: &BTile) {
    amx_products(tiles, t);
    let acc = tiles.acc.as_mut_ptr() as *mut f32;
    match t.bits {
        None => super::sgemm::finish_rows_from(acc, t.rows, t.c, t.ldc, t.cols, t.bias, t.act),
        Some((dst, ld)) => {
            // The same fp32 epilogue, in place in the accumulator block, then rounded as the
            // next layer would round it.
            super::sgemm::finish_rows_from(acc, t.rows, acc, 32, t.cols, t.bias, t.act);
            let round = round_row_bits_fastest();
            for r in 0..t.rows {
                let row = std::slice::from_raw_parts(acc.add(32 * r), t.cols);
                round(row, std::slice::from_raw_parts_mut(dst.add(r * ld), t.cols));
            }
        }
    }
}

/// AMX: the tile's sums into the accumulator block (row `r` at `32·r`), without epilogue.
///
/// # Safety
/// As [`amx_tile`].
unsafe fn amx_products<U: TileUnit>(tiles: &mut Tiles<U>, t: &BTile) {
    let steps = 2 * t.kp / super::amx::TILE_BYTES;
    super::amx::block(
        tiles,
        Dot::Bf16,
        t.a,
        2 * t.kp,
        t.b as *const u8,
        steps,
        t.rows,
        t.cols,
        None,
    );
}

/// True when the AMX bf16 kernel may serve: the CPU and OS allow AMX ([`super::amx::has_amx`])
/// and, checked once per process, a small GEMM through it agrees with the exact sums of the
/// bf16 products within fp32 rounding (a mismatch is reported and keeps AMX off for bf16).
pub fn amx_usable() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !super::amx::has_amx() {
            return false;
        }
        let (m, k, n) = (37, 200, 45);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let packed = Bf16Weight::from_f32(&w, n, k, Bf16Isa::Amx);
        let mut got = vec![0.0f32; m * n];
        gemm_bf16(&x, m, &packed, None, Activation::Identity, &mut got, n, 1);
        let ok = (0..m * n).all(|e| {
            let (i, j) = (e / n, e % n);
            let (mut want, mut mass) = (0.0f64, 0.0f64);
            for t in 0..k {
                let p = from_bf16(to_bf16(x[i * k + t])) as f64 * from_bf16(to_bf16(w[j * k + t])) as f64;
                want += p;
                mass += p.abs();
            }
            (got[e] as f64 - want).abs() <= 1e-5 * (1.0 + mass)
        });
        if !ok {
            eprintln!("openembed: the AMX bf16 kernel disagrees with the exact products; AMX stays off for bf16");
        }
        ok
    })
}

/// Any CPU: the plain-Rust kernel.
///
/// # Safety
/// `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
unsafe fn portable_tile(t: BTile) {
    const NR: usize = 16;
    let a = t.a as *const f32;
    let mut acc = [[0.0f32; NR]; 4];
    for p in 0..t.kp / 2 {
        let panel = std::slice::from_raw_parts(t.b.add(p * NR * 2), NR * 2);
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let (a0, a1) = (*a.add(r * t.kp + 2 * p), *a.add(r * t.kp + 2 * p + 1));
            for (j, o) in row.iter_mut().enumerate() {
                *o += a0 * from_bf16(panel[2 * j]) + a1 * from_bf16(panel[2 * j + 1]);
            }
        }
    }
    for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
        super::sgemm::finish_row::<false>(row, t.c.add(r * t.ldc), t.cols, true, t.bias, t.act);
    }
}

/// AVX2: each 32-bit lane holds a column's (even, odd) pair; `<< 16` and `& 0xFFFF0000` widen
/// them to fp32 for two FMAs. The sum per lane is `even + odd` products, as `vdpbf16ps` does.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_kernel<const R: usize>(t: BTile) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    let a = t.a as *const f32;
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..t.kp / 2 {
        let bp = t.b.add(p * NR * 2);
        let l0 = _mm256_loadu_si256(bp as *const __m256i);
        let l1 = _mm256_loadu_si256(bp.add(16) as *const __m256i);
        let (e0, o0) = (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(l0)),
            _mm256_castsi256_ps(_mm256_and_si256(l0, high)),
        );
        let (e1, o1) = (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(l1)),
            _mm256_castsi256_ps(_mm256_and_si256(l1, high)),
        );
        for (r, row) in acc.iter_mut().enumerate() {
            let a0 = _mm256_broadcast_ss(&*a.add(r * t.kp + 2 * p));
            let a1 = _mm256_broadcast_ss(&*a.add(r * t.kp + 2 * p + 1));
            row[0] = _mm256_fmadd_ps(a1, o0, _mm256_fmadd_ps(a0, e0, row[0]));
            row[1] = _mm256_fmadd_ps(a1, o1, _mm256_fmadd_ps(a0, e1, row[1]));
        }
    }
    for (r, row) in acc.iter().enumerate() {
        super::sgemm::finish_avx2(row[0], row[1], t.c.add(r * t.ldc), t.cols, true, t.bias, t.act);
    }
}

/// AVX-512F without BF16: the AVX2 scheme on 16-lane registers.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512_kernel<const R: usize>(t: BTile) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    let a = t.a as *const f32;
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..t.kp / 2 {
        let bp = t.b.add(p * NR * 2);
        let l0 = _mm512_loadu_si512(bp as *const __m512i);
        let l1 = _mm512_loadu_si512(bp.add(32) as *const __m512i);
        let (e0, o0) = (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(l0)),
            _mm512_castsi512_ps(_mm512_and_si512(l0, high)),
        );
        let (e1, o1) = (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(l1)),
            _mm512_castsi512_ps(_mm512_and_si512(l1, high)),
        );
        for (r, row) in acc.iter_mut().enumerate() {
            let a0 = _mm512_set1_ps(*a.add(r * t.kp + 2 * p));
            let a1 = _mm512_set1_ps(*a.add(r * t.kp + 2 * p + 1));
            row[0] = _mm512_fmadd_ps(a1, o0, _mm512_fmadd_ps(a0, e0, row[0]));
            row[1] = _mm512_fmadd_ps(a1, o1, _mm512_fmadd_ps(a0, e1, row[1]));
        }
    }
    for (r, row) in acc.iter().enumerate() {
        super::sgemm::finish_avx512(row[0], row[1], t.c.add(r * t.ldc), t.cols, true, t.bias, t.act);
    }
}

/// AVX512-BF16: one `vdpbf16ps` per 16 columns and pair of `k`.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
unsafe fn dpbf16_kernel<const R: usize>(t: BTile) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    /// Pairs to prefetch ahead (2 KiB of panel).
    const PREFETCH: usize = 16;
    let a = t.a as *const u16;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..t.kp / 2 {
        let bp = t.b.add(p * NR * 2);
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const __m512i));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const __m512i));
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH * NR * 2) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH * NR * 2 + 32) as *const i8);
        for (r, row) in acc.iter_mut().enumerate() {
            let pair = (a.add(r * t.kp + 2 * p) as *const i32).read_unaligned();
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        super::sgemm::finish_avx512(row[0], row[1], t.c.add(r * t.ldc), t.cols, true, t.bias, t.act);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_rounding_agrees_with_to_bf16_outside_denormals() {
        for n in [1, 15, 16, 17, 31, 32, 33, 100, 384] {
            let x: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    0 => f32::NAN,
                    1 => -0.0,
                    2 => f32::INFINITY,
                    3 => 1.0 + (i as f32) / 256.0,
                    _ => ((i * 37 % 101) as f32 - 50.0) * 1.37e-3,
                })
                .collect();
            let (mut want, mut got) = (vec![9u16; n + 5], vec![9u16; n + 5]);
            round_row_bits(&x, &mut want);
            round_row_bits_fastest()(&x, &mut got);
            for i in 0..n + 5 {
                let same = want[i] == got[i] || (from_bf16(want[i]).is_nan() && from_bf16(got[i]).is_nan());
                assert!(same, "n = {n}, [{i}]: {:#06x} vs {:#06x}", got[i], want[i]);
            }
        }
    }

    #[test]
    fn chained_layers_equal_two_separate_ones_bit_for_bit() {
        // The AMX schedule through the tile model on every CPU, and on the hardware where
        // present: the intermediate handed over in bf16 gives what the second layer computes
        // from the fp32 intermediate.
        let hardware = Bf16Isa::Amx.supported();
        if !hardware {
            crate::kernels::report_skipped("bf16 chained layers on the real AMX tiles (this CPU lacks them)");
        }
        for &(m, k, n1, n2) in &[(1, 5, 7, 3), (17, 64, 96, 40), (40, 100, 33, 65), (70, 384, 1536, 384)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
            let w1: Vec<f32> = (0..n1 * k).map(|i| ((i * 53 % 97) as f32 / 480.0) - 0.1).collect();
            let w2: Vec<f32> = (0..n2 * n1).map(|i| ((i * 29 % 89) as f32 / 440.0) - 0.1).collect();
            let (b1, b2): (Vec<f32>, Vec<f32>) = (
                (0..n1).map(|i| i as f32 * 0.01).collect(),
                (0..n2).map(|i| i as f32 * -0.02).collect(),
            );
            let (p1, p2) = (
                Bf16Weight::from_f32(&w1, n1, k, Bf16Isa::Amx),
                Bf16Weight::from_f32(&w2, n2, n1, Bf16Isa::Amx),
            );
            assert!(p1.chains_into(&p2));
            let model = gemm_bf16_on::<crate::kernels::amx::TileModel>;
            let mut mid = vec![0.0f32; m * n1];
            let mut want = vec![0.0f32; m * n2];
            model(&x, m, &p1, Some(&b1), Activation::Gelu, &mut mid, n1, 2);
            model(&mid, m, &p2, Some(&b2), Activation::Identity, &mut want, n2, 2);
            let mut rows = Bf16Rows::default();
            let mut got = vec![0.0f32; m * n2];
            gemm_bf16_chained_on::<crate::kernels::amx::TileModel>(
                &x,
                m,
                (&p1, Some(&b1), Activation::Gelu),
                (&p2, Some(&b2), Activation::Identity),
                &mut rows,
                &mut got,
                n2,
                2,
            );
            assert!(
                got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "model, {m}x{k}x{n1}x{n2}"
            );
            if hardware {
                let mut real = vec![0.0f32; m * n2];
                let (first, second) = (
                    (&p1, Some(&b1[..]), Activation::Gelu),
                    (&p2, Some(&b2[..]), Activation::Identity),
                );
                gemm_bf16_chained(&x, m, first, second, &mut rows, &mut real, n2, 2);
                gemm_bf16(&x, m, &p1, Some(&b1), Activation::Gelu, &mut mid, n1, 2);
                gemm_bf16(&mid, m, &p2, Some(&b2), Activation::Identity, &mut want, n2, 2);
                assert!(
                    real.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "hardware, {m}x{k}x{n1}x{n2}"
                );
            }
        }
    }

    #[test]
    fn a_fold_sees_every_product_once_as_the_gemm_writes_it() {
        // Every kernel this CPU runs, and the AMX schedule through the tile model on every CPU
        // (and on the hardware where present): the fold gets the plain GEMM's output without
        // bias, bit for bit.
        let mut isas: Vec<Bf16Isa> = [
            Bf16Isa::Portable,
            Bf16Isa::Avx2,
            Bf16Isa::Avx512,
            Bf16Isa::Avx512Bf16,
            Bf16Isa::Amx,
        ]
        .into_iter()
        .filter(|isa| isa.supported())
        .collect();
        if !Bf16Isa::Amx.supported() {
            crate::kernels::report_skipped("a bf16 fold on the real AMX tiles (this CPU lacks them)");
        }
        isas.push(Bf16Isa::Amx); // through the model below
        for (i, &isa) in isas.iter().enumerate() {
            let modelled = i + 1 == isas.len();
            for &(m, k, n) in &[(1, 5, 7), (33, 64, 100), (70, 200, 1030)] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 480.0) - 0.1).collect();
                let packed = Bf16Weight::from_f32(&w, n, k, isa);
                let mut want = vec![0.0f32; m * n];
                let what = format!("{isa:?} (model: {modelled}) {m}x{k}x{n}");
                if modelled {
                    let model = gemm_bf16_on::<crate::kernels::amx::TileModel>;
                    model(&x, m, &packed, None, Activation::Identity, &mut want, n, 2);
                    crate::kernels::check_fold(m, n, &want, &what, |fold| {
                        gemm_bf16_fold_on::<crate::kernels::amx::TileModel>(&x, m, &packed, fold, 2)
                    });
                } else {
                    gemm_bf16(&x, m, &packed, None, Activation::Identity, &mut want, n, 2);
                    crate::kernels::check_fold(m, n, &want, &what, |fold| gemm_bf16_fold(&x, m, &packed, fold, 2));
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn every_kernel_matches_exact_products_on_odd_shapes() {
        // (kernel, AMX's tile instructions through the software model)
        let kernels = [
            (Bf16Isa::Portable, false),
            (Bf16Isa::Avx2, false),
            (Bf16Isa::Avx512, false),
            (Bf16Isa::Avx512Bf16, false),
            (Bf16Isa::Amx, false),
            (Bf16Isa::Amx, true),
        ];
        for (isa, model) in kernels {
            if !model && !isa.supported() {
                crate::kernels::report_skipped(&format!("bf16 {isa:?} kernel (this CPU lacks it)"));
                continue;
            }
            let gemm = if model {
                gemm_bf16_on::<crate::kernels::amx::TileModel>
            } else {
                gemm_bf16
            };
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
                let packed = Bf16Weight::from_f32(&w, n, k, isa);
                let stride = n + 3;
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut out = vec![7.0f32; m * stride];
                    pool.install(|| {
                        gemm(
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
                            let want: f64 = b[j] as f64
                                + (0..k)
                                    .map(|t| {
                                        from_bf16(to_bf16(x[i * k + t])) as f64
                                            * from_bf16(to_bf16(w[j * k + t])) as f64
                                    })
                                    .sum::<f64>();
                            let scale: f64 = (0..k).map(|t| (x[i * k + t] as f64 * w[j * k + t] as f64).abs()).sum();
                            let got = out[i * stride + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + scale),
                                "{isa:?} (model: {model}) {m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        for j in n..stride {
                            assert_eq!(out[i * stride + j], 7.0, "padding column written");
                        }
                    }
                    let mut gelu = vec![0.0f32; m * stride];
                    pool.install(|| gemm(&x, m, &packed, Some(&b), Activation::Gelu, &mut gelu, stride, threads));
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
}
