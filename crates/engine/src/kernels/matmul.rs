//! Dense layers on top of the `gemm` crate's SGEMM.

use gemm::Parallelism;

/// Computes `out[m×n] = x[m×k] · wᵀ (+ bias)` where `w` is a row-major `[n × k]` matrix as stored
/// by PyTorch. `out` rows have stride `out_stride` (≥ n) so results can land in a column block of
/// a wider matrix. `threads` bounds the compute threads (run inside the engine's rayon pool).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    assert!(x.len() >= m * k, "linear: input too short");
    assert!(w.len() >= n * k, "linear: weight too short");
    assert!(
        out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n),
        "linear: output too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if let Some(b) = bias {
        assert!(b.len() >= n, "linear: bias too short");
        let rows = &mut out[..(m - 1) * out_stride + n];
        super::par_rows_mut(rows, out_stride, |block| {
            for row in block.chunks_mut(out_stride) {
                let w = row.len().min(n);
                row[..w].copy_from_slice(&b[..w]);
            }
        });
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index gemm touches: dst m×n with row stride
    // out_stride, lhs m×k row-major, rhs k×n read as the transpose of the n×k row-major weight.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).cos()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).sin()).collect();
        let b = vec![0.5, -1.0, 2.0];
        let stride = 4;
        let mut out = vec![9.0; m * stride];
        linear(&x, m, k, &w, n, Some(&b), &mut out, stride, 1);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                assert!((out[i * stride + j] - want).abs() < 1e-5);
            }
            assert_eq!(out[i * stride + 3], 9.0, "column outside n untouched");
        }
        let mut out2 = vec![0.0; m * n];
        linear(&x, m, k, &w, n, None, &mut out2, n, 2);
        assert!((out2[n + 1] + b[1] - out[stride + 1]).abs() < 1e-5);
    }
}
