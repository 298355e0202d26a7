//! Branch-free scalar math (exp, erf) written to vectorize, plus dot products and softmax.

use super::simd_dispatch;

/// `a · b + c`, as one fused multiply-add when `FUSED` (code compiled with FMA: the AVX2 and
/// AVX-512 builds), else a multiply and an add (without FMA hardware a fused one is a slow
/// library call). [`simd_dispatch!`] bodies pass their `FMA` parameter.
#[inline(always)]
pub fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// exp(x) for f32, accurate to about 2 ulp, branch-free so loops over it vectorize. Below
/// the smallest normal result (x < -87.34, −∞ included) it returns exactly 0. `F`: see [`madd`].
#[inline(always)]
pub fn exp<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round x·log2(e) to the nearest integer n with the 1.5·2^23 trick: n lands in the low
    // mantissa bits of `t`, so 2^n is built with integer ops only (float→int casts would add
    // scalar NaN checks and stop vectorization).
    const MAGIC: f32 = 12_582_912.0;
    const LOWEST: f32 = -87.336_55;
    let underflow = x < LOWEST;
    let x = x.clamp(LOWEST, 88.0);
    let t = madd::<F>(x, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = madd::<F>(n, -LN2_LO, madd::<F>(n, -LN2_HI, x));
    // Cephes expf polynomial on [-ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4_f32;
    p = madd::<F>(p, r, 1.398_199_9e-3);
    p = madd::<F>(p, r, 8.333_452e-3);
    p = madd::<F>(p, r, 4.166_579_6e-2);
    p = madd::<F>(p, r, 1.666_666_5e-1);
    p = madd::<F>(p, r, 5e-1);
    let y = madd::<F>(p * r, r, r + 1.0);
    let scale = f32::from_bits(((t.to_bits() as i32).wrapping_sub(0x4B40_0000).wrapping_add(127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y * scale
    }
}

/// erf(x) for f32 as a rational approximation (the one used by Eigen and XLA), about 1e-7 absolute
/// error, branch-free. `F`: see [`madd`].
#[inline(always)]
pub fn erf<const F: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_P[0];
    for &c in &ERF_P[1..] {
        p = madd::<F>(p, x2, c);
    }
    p *= x;
    let mut q = ERF_Q[0];
    for &c in &ERF_Q[1..] {
        q = madd::<F>(q, x2, c);
    }
    p / q
}

/// [`erf`]'s numerator, highest power of x² first (then times x).
pub(crate) const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_600_6e-3,
    -1.609_603_3e-2,
];

/// [`erf`]'s denominator, highest power of x² first.
pub(crate) const ERF_Q: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329_5e-3,
    -1.426_474e-2,
];

/// Dot product with eight independent accumulators (vectorizes to one AVX register).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    let s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    s + tail
}

/// Lanes of the softmax accumulators: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;
/// Rows whose length is a multiple of this run [`softmax_in_place`] on whole vectors only.
pub const SOFTMAX_LANES: usize = LANES;

/// Maximum with independent lanes.
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if v > *a { v } else { *a };
    }
    reduce(acc, |a, b| if a > b { a } else { b })
}

/// Folds the lanes pairwise (a tree, not a chain), which compiles to a few shuffles.
#[inline(always)]
fn reduce(mut acc: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] = f(acc[l], acc[l + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// `c[l] = exp(c[l] - shift)` on one chunk of lanes, adding the results to `acc`.
#[inline(always)]
fn exp_lanes<const F: bool>(c: &mut [f32; LANES], shift: f32, acc: &mut [f32; LANES]) {
    for l in 0..LANES {
        c[l] = exp::<F>(c[l] - shift);
        acc[l] += c[l];
    }
}

/// `x[i] = exp(x[i] - shift)` in place, returning the sum of the results. A short tail runs
/// through one padded chunk, so every exp is computed on whole vectors.
#[inline(always)]
fn exp_shifted_sum<const F: bool>(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        if let Ok(c) = <&mut [f32; LANES]>::try_from(c) {
            exp_lanes::<F>(c, shift, &mut acc);
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        // −∞ padding comes out as exactly 0 and adds nothing to the sum.
        let mut pad = [f32::NEG_INFINITY; LANES];
        pad[..tail.len()].copy_from_slice(tail);
        exp_lanes::<F>(&mut pad, shift, &mut acc);
        tail.copy_from_slice(&pad[..tail.len()]);
    }
    reduce(acc, |a, b| a + b)
}

simd_dispatch! {
    /// In-place softmax of one row. Entries of −∞ (masked keys) come out as exactly 0; at
    /// least one entry must be finite.
    pub fn softmax_in_place(row: &mut [f32]) {
        let m = max(row);
        let inv = 1.0 / exp_shifted_sum::<FMA>(row, m);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// [`exp`]`::<true>` on 16 lanes: the same operations in the same order, so the same bits.
///
/// # Safety
/// The CPU has AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.336_55));
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.336_55)), _mm512_set1_ps(88.0));
    let magic = _mm512_set1_ps(12_582_912.0);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
    let n = _mm512_sub_ps(t, magic);
    let r = _mm512_fmadd_ps(
        n,
        _mm512_set1_ps(2.121_944_4e-4),
        _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), x),
    );
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let bits = _mm512_add_epi32(
        _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000)),
        _mm512_set1_epi32(127),
    );
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits));
    _mm512_maskz_mul_ps(!underflow, y, scale)
}

/// The softmax of `scale · row[lo..hi]`, the other entries counting as −∞, rounded to bf16
/// into `out` (`row.len()`, a multiple of 16, values): bit for bit what multiplying the row by
/// `scale`, writing −∞ outside `lo..hi` up to `hi` rounded up to 16, [`softmax_in_place`] over
/// that span and rounding it to nearest even (zeros after) give, in one call with the row in
/// L1 (attention's tile path runs it per query on its unscaled products). `None` (nothing
/// written) where the CPU lacks AVX-512 with BF16.
pub fn softmax_bf16(row: &mut [f32], (lo, hi): (usize, usize), scale: f32, out: &mut [u16]) -> Option<()> {
    assert!(row.len().is_multiple_of(LANES) && out.len() == row.len() && lo < hi && hi <= row.len());
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512_bf16() {
        // SAFETY: the CPU has the features; the spans were checked above.
        unsafe { softmax_bf16_avx512(row, (lo, hi), scale, out) };
        return Some(());
    }
    None
}

/// [`softmax_bf16`] on AVX-512 with BF16.
///
/// # Safety
/// The CPU has AVX-512F/BW/DQ/VL, BF16 and FMA; `row.len() == out.len()` is a multiple of 16
/// and `lo < hi ≤ row.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
unsafe fn softmax_bf16_avx512(row: &mut [f32], (lo, hi): (usize, usize), scale: f32, out: &mut [u16]) {
    use std::arch::x86_64::*;
    let e = hi.next_multiple_of(LANES).min(row.len());
    let p = row.as_mut_ptr();
    let neg = _mm512_set1_ps(f32::NEG_INFINITY);
    let scale = _mm512_set1_ps(scale);
    // Lanes of chunk `c` inside `lo..hi`.
    let valid = |c: usize| super::mask16(hi.saturating_sub(c)) & !super::mask16(lo.saturating_sub(c));
    let mut m = neg;
    // Scaled as loaded (−∞ lanes stay −∞: the scale is positive).
    for c in (0..e).step_by(LANES) {
        let x = _mm512_mul_ps(_mm512_mask_loadu_ps(neg, valid(c), p.add(c)), scale);
        m = _mm512_max_ps(x, m);
    }
    // The lanes folded by `$f` as `reduce` folds them: halves, then quarters, …
    macro_rules! fold {
        ($v:expr, $f:ident) => {{
            let v = _mm512_castps_si512($v);
            let a = _mm256_castsi256_ps(_mm512_castsi512_si256(v));
            let b = _mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(v));
            let lo = $f(_mm256_castps256_ps128(a), _mm256_castps256_ps128(b));
            let hi = $f(_mm256_extractf128_ps::<1>(a), _mm256_extractf128_ps::<1>(b));
            let q = $f(lo, hi);
            let d = $f(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32($f(d, _mm_movehdup_ps(d)))
        }};
    }
    let shift = fold!(m, _mm_max_ps);
    let shift_v = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    for c in (0..e).step_by(LANES) {
        let x = _mm512_mul_ps(_mm512_mask_loadu_ps(neg, valid(c), p.add(c)), scale);
        let v = exp_avx512(_mm512_sub_ps(x, shift_v));
        _mm512_storeu_ps(p.add(c), v);
        acc = _mm512_add_ps(acc, v);
    }
    let inv = _mm512_set1_ps(1.0 / fold!(acc, _mm_add_ps));
    let o = out.as_mut_ptr();
    for c in (0..e).step_by(LANES) {
        let v = _mm512_mul_ps(_mm512_loadu_ps(p.add(c)), inv);
        _mm256_storeu_si256(
            o.add(c) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)),
        );
    }
    out[e..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_exp<const F: bool>() {
        let mut worst = 0.0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp::<F>(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "fused {F}: worst relative error {worst}");
        assert!(exp::<F>(-87.33) > 0.0);
        assert_eq!(exp::<F>(-87.34), 0.0);
        assert_eq!(exp::<F>(-1000.0), 0.0);
        assert_eq!(exp::<F>(f32::NEG_INFINITY), 0.0);
    }

    fn check_erf<const F: bool>() {
        let mut worst = 0.0f64;
        let mut x = -6.0f64;
        while x < 6.0 {
            let err = (erf::<F>(x as f32) as f64 - libm::erf(x)).abs();
            worst = worst.max(err);
            x += 0.001;
        }
        assert!(worst < 5e-7, "fused {F}: worst absolute error {worst}");
    }

    #[test]
    fn softmax_to_bf16_is_softmax_then_rounding_bit_for_bit() {
        if !crate::kernels::has_avx512_bf16() {
            crate::kernels::report_skipped("the AVX-512 BF16 softmax (this CPU lacks AVX512-BF16)");
            let mut row = [0.0f32; 16];
            assert!(softmax_bf16(&mut row, (0, 16), 1.0, &mut [0u16; 16]).is_none());
            return;
        }
        let round = crate::kernels::bf16::round_row_bits_fastest();
        for len in [16usize, 32, 48, 64, 96, 160] {
            for spread in [0.9f32, 9.0, 40.0] {
                let row: Vec<f32> = (0..len)
                    .map(|i| ((i * 37 % 23) as f32 - 11.0) * spread + (i as f32 * 0.37).sin())
                    .collect();
                for ((lo, hi), scale) in [(0, len), (0, 1), (3, len - 5), (len / 2, len / 2 + 1), (5, 17.min(len))]
                    .into_iter()
                    .zip([1.0, 0.125, 0.176_776_7, 1.0, 0.35])
                {
                    let e = hi.next_multiple_of(16).min(len);
                    let mut r: Vec<f32> = row.iter().map(|v| v * scale).collect();
                    r[..lo].fill(f32::NEG_INFINITY);
                    r[hi..e].fill(f32::NEG_INFINITY);
                    softmax_in_place(&mut r[..e]);
                    let mut want = vec![1u16; len];
                    round(&r[..e], &mut want);
                    let mut got = vec![1u16; len];
                    let mut scratch = row.clone();
                    assert!(softmax_bf16(&mut scratch, (lo, hi), scale, &mut got).is_some());
                    assert_eq!(got, want, "len {len}, spread {spread}, keys {lo}..{hi}, scale {scale}");
                }
            }
        }
    }

    #[test]
    fn exp_matches_std() {
        check_exp::<false>();
        check_exp::<true>();
    }

    #[test]
    fn erf_matches_libm() {
        check_erf::<false>();
        check_erf::<true>();
    }

    #[test]
    fn dot_and_softmax() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3);
        let mut row = vec![1.0, 2.0, 3.0, -1e30];
        softmax_in_place(&mut row);
        let z = 1f32.exp() + 2f32.exp() + 3f32.exp();
        assert!((row[2] - 3f32.exp() / z).abs() < 1e-6);
        assert!(row[3] < 1e-30);
        // Rows longer than a vector, with a tail and masked (−∞) entries.
        for len in [2usize, 15, 16, 17, 33, 70] {
            let mut row: Vec<f32> = (0..len).map(|i| (i * 37 % 11) as f32 * 0.7 - 3.0).collect();
            row[len / 2] = f32::NEG_INFINITY;
            row[0] = 2.5;
            let mx = row.iter().cloned().fold(f64::MIN, |m, v| m.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
            let want: Vec<f64> = row.iter().map(|&v| (v as f64 - mx).exp() / z).collect();
            softmax_in_place(&mut row);
            for (g, w) in row.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-6, "len {len}: {g} vs {w}");
            }
            assert_eq!(row[len / 2], 0.0);
        }
    }
}
