//! Our SGEMM for dense layers: `Y = X · Wᵀ + b` with `W` packed once at load time.
//!
//! Weights are re-laid out into panels of [`NR`] output columns (`[K × NR]` contiguous, zero
//! padded), so the micro-kernel streams them with unit stride and never packs at run time. The
//! AVX2+FMA micro-kernel keeps a 6×16 block of `Y` in twelve registers and reads `X` in place.
//! `K` is blocked by [`KC`] and `N` by [`NC`] so the working set stays in L1/L2; threads split
//! the rows (or, for a few rows, the columns) and never synchronize inside one call. CPUs without
//! AVX2+FMA use the `gemm` crate on the unpacked weights.

use super::activation::Activation;
use rayon::prelude::*;

/// Output columns per packed panel (two AVX registers).
pub const NR: usize = 16;
/// Rows per micro-kernel call.
pub const MR: usize = 6;
/// Depth of one K block.
const KC: usize = 384;
/// Columns of one N block (a `KC × NC` slice of weights is 192 KiB: fits L2).
const NC: usize = 128;
/// Rows of one M block (`MC × KC` of the input is 180 KiB: fits L2 beside the weights).
const MC: usize = 120;

/// A weight matrix `[n × k]` (PyTorch layout) re-laid out in `NR`-column panels.
pub struct PackedWeight {
    panels: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedWeight {
    /// Packs a row-major `[n × k]` weight.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        let count = n.div_ceil(NR);
        let mut panels = vec![0.0f32; count * k * NR];
        for p in 0..count {
            let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
            for c in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + c) * k..(p * NR + c + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + c] = v;
                }
            }
        }
        Self { panels, n, k }
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint blocks of the output (see `sgemm`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `out[m × n] = act(x[m × k] · Wᵀ + bias)`, rows of `out` `out_stride` apart, on up to
/// `threads` threads of the current rayon pool. Requires AVX2+FMA ([`super::has_avx2_fma`]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    let (n, k) = (w.n, w.k);
    assert!(super::has_avx2_fma(), "sgemm needs AVX2 and FMA");
    assert!(x.len() >= m * k && out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    assert!(bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    let threads = threads.max(1);
    // Split rows when there are plenty (a few tasks per thread, so a thread slowed by the
    // machine does not hold the others back), else split column panels.
    let tasks: Vec<(usize, usize, usize, usize)> = if m >= MR * 4 * threads || n <= NR {
        let parts = if threads > 1 {
            (threads * 4).min(m / (MR * 8)).max(threads)
        } else {
            1
        };
        let rows = m.div_ceil(parts).div_ceil(MR) * MR;
        (0..m).step_by(rows).map(|r| (r, (r + rows).min(m), 0, n)).collect()
    } else {
        let cols = n.div_ceil(threads).div_ceil(NR) * NR;
        (0..n).step_by(cols).map(|c| (0, m, c, (c + cols).min(n))).collect()
    };
    let run = |&(r0, r1, c0, c1): &(usize, usize, usize, usize)| {
        // SAFETY: each task writes rows r0..r1 × columns c0..c1 only; tasks do not overlap and
        // the asserts above bound all of them inside `out`, `x` and the packed weight.
        unsafe { block(x, k, w, bias, act, out_ptr.0, out_stride, r0, r1, c0, c1) }
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn block(
    x: &[f32],
    k: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Activation,
    out: *mut f32,
    ldc: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
) {
    let xp = x.as_ptr();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        let last = k0 + kc == k;
        let act = if last { act } else { Activation::Identity };
        for n0 in (c0..c1).step_by(NC) {
            let n1 = (n0 + NC).min(c1);
            // Panel-stationary order: one weight panel (KC × NR) stays in L1 while the row
            // strips of an MC block stream past it from L2.
            for m0 in (r0..r1).step_by(MC) {
                let m1 = (m0 + MC).min(r1);
                let mut c = n0;
                while c < n1 {
                    let cols = NR.min(n1 - c);
                    let panel = w.panels.as_ptr().add((c / NR) * k * NR + k0 * NR);
                    let b = if first { bias.map(|b| b.as_ptr().add(c)) } else { None };
                    let mut r = m0;
                    while r < m1 {
                        let rows = MR.min(m1 - r);
                        let a = xp.add(r * k + k0);
                        let dst = out.add(r * ldc + c);
                        match rows {
                            6 => kernel::<6>(kc, a, k, panel, dst, ldc, cols, first, b, act),
                            5 => kernel::<5>(kc, a, k, panel, dst, ldc, cols, first, b, act),
                            4 => kernel::<4>(kc, a, k, panel, dst, ldc, cols, first, b, act),
                            3 => kernel::<3>(kc, a, k, panel, dst, ldc, cols, first, b, act),
                            2 => kernel::<2>(kc, a, k, panel, dst, ldc, cols, first, b, act),
                            _ => kernel::<1>(kc, a, k, panel, dst, ldc, cols, first, b, act),
                        }
                        r += MR;
                    }
                    c += NR;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    overwrite: bool,
    bias: Option<*const f32>,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(p * NR));
        let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    let mut tmp = [0.0f32; NR];
    for (r, row) in acc.iter().enumerate() {
        let dst = c.add(r * ldc);
        let (mut lo, mut hi) = (row[0], row[1]);
        if cols == NR {
            if overwrite {
                if let Some(bp) = bias {
                    lo = _mm256_add_ps(lo, _mm256_loadu_ps(bp));
                    hi = _mm256_add_ps(hi, _mm256_loadu_ps(bp.add(8)));
                }
            } else {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(dst));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(dst.add(8)));
            }
            if act == Activation::Identity {
                _mm256_storeu_ps(dst, lo);
                _mm256_storeu_ps(dst.add(8), hi);
                continue;
            }
            _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
            act.apply_block(&mut tmp);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, NR);
        } else {
            _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
            for (j, v) in tmp.iter_mut().enumerate().take(cols) {
                *v += if overwrite {
                    bias.map(|bp| *bp.add(j)).unwrap_or(0.0)
                } else {
                    *dst.add(j)
                };
            }
            act.apply_block(&mut tmp);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: usize,
    _: bool,
    _: Option<*const f32>,
) {
    unreachable!("sgemm is only called when AVX2+FMA is present")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_on_odd_shapes() {
        if !super::super::has_avx2_fma() {
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 5, 3),
            (13, 400, 37),
            (50, 800, 130),
            (6, 16, 16),
            (100, 33, 17),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let packed = PackedWeight::pack(&w, n, k);
            let stride = n + 3;
            for threads in [1, 2] {
                for bias in [None, Some(b.as_slice())] {
                    let mut out = vec![7.0f32; m * stride];
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| sgemm(&x, m, &packed, bias, Activation::Identity, &mut out, stride, threads));
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = bias.map(|b| b[j] as f64).unwrap_or(0.0)
                                + (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>();
                            let got = out[i * stride + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                                "{m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        let mut gelu = vec![0.0f32; m * stride];
                        pool.install(|| sgemm(&x, m, &packed, bias, Activation::Gelu, &mut gelu, stride, threads));
                        let mut expect: Vec<f32> = (0..n).map(|j| out[i * stride + j]).collect();
                        Activation::Gelu.apply(&mut expect);
                        for j in 0..n {
                            assert!((gelu[i * stride + j] - expect[j]).abs() < 1e-5, "fused activation");
                        }
                        for j in n..stride {
                            assert_eq!(out[i * stride + j], 7.0, "padding column written");
                        }
                    }
                }
            }
        }
    }
}
