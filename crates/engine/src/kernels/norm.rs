//! Row-wise LayerNorm and RMSNorm, fused with the residual add where the layer needs it.

use super::simd_dispatch;

simd_dispatch! {
    /// `hidden[r] = LayerNorm(x[r] + hidden[r])` for every row (post-norm residual block).
    pub fn residual_layer_norm(x: &[f32], hidden: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
        for (xr, hr) in x.chunks_exact(width).zip(hidden.chunks_exact_mut(width)) {
            for (h, &v) in hr.iter_mut().zip(xr) {
                *h += v;
            }
            normalize_row(hr, gamma, beta, eps);
        }
    }
}

simd_dispatch! {
    /// `out[r] = LayerNorm(x[r])` for every row.
    pub fn layer_norm(x: &[f32], out: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
        for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            or.copy_from_slice(xr);
            normalize_row(or, gamma, beta, eps);
        }
    }
}

simd_dispatch! {
    /// RMSNorm in place on every `width`-wide row: `x / sqrt(mean(x^2) + eps) * gamma`. The
    /// one RMSNorm of the engine (hidden states, and Qwen3's per-head q/k norm).
    pub fn rms_norm_in_place(rows: &mut [f32], width: usize, gamma: &[f32], eps: f32) {
        for row in rows.chunks_exact_mut(width) {
            let ss = super::math::dot(row, row);
            let inv = 1.0 / (ss / width as f32 + eps).sqrt();
            for (v, &g) in row.iter_mut().zip(gamma) {
                *v = *v * inv * g;
            }
        }
    }
}

/// `out[r] = RMSNorm(x[r])` for every row (see [`rms_norm_in_place`]).
pub fn rms_norm(x: &[f32], out: &mut [f32], width: usize, gamma: &[f32], eps: f32) {
    out.copy_from_slice(&x[..out.len()]);
    rms_norm_in_place(out, width, gamma, eps);
}

#[inline(always)]
fn normalize_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    sum += chunks.remainder().iter().sum::<f32>();
    let mean = sum / n;
    let mut acc = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let d = c[l] - mean;
            acc[l] += d * d;
        }
    }
    let mut var: f32 = acc.iter().sum();
    var += chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>();
    let inv = 1.0 / (var / n + eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_of_rows() {
        let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let gamma: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..12).map(|i| i as f32 * -0.05).collect();
        let mut out = vec![0.0; 24];
        layer_norm(&x, &mut out, 12, &gamma, &beta, 1e-12);
        for r in 0..2 {
            let row = &x[r * 12..r * 12 + 12];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / 12.0;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 12.0;
            for i in 0..12 {
                let want = (row[i] as f64 - mean) / (var + 1e-12).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!((out[r * 12 + i] as f64 - want).abs() < 1e-5);
            }
        }
        let mut hidden = vec![0.0; 24];
        residual_layer_norm(&x, &mut hidden, 12, &gamma, &beta, 1e-12);
        assert_eq!(hidden, out);
        let mut rms = vec![0.0; 24];
        rms_norm(&x, &mut rms, 12, &gamma, 1e-6);
        let ms = x[..12].iter().map(|v| v * v).sum::<f32>() / 12.0;
        assert!((rms[3] - x[3] / (ms + 1e-6).sqrt() * gamma[3]).abs() < 1e-5);
    }
}
