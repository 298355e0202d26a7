//! Rotary position embeddings (RoPE): each query/key head vector is rotated by angles that
//! grow with the token's position in its own sequence, so packed batches need no extra care.
//! Both layouts are supported: "rotate half" (pairs `i` and `i + d/2`, as transformers'
//! Qwen3/ModernBERT/NomicBERT) and interleaved (pairs `2i`, `2i+1`), and partial rotation
//! (only the first `fraction` of each head).

/// Cos/sin tables for one rotary configuration.
pub struct Rotary {
    rot_dim: usize,
    interleaved: bool,
    inv_freq: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    positions: usize,
}

/// Positions whose angles are tabulated at load; longer sequences compute them on the fly.
const TABLE_POSITIONS: usize = 8192;

impl Rotary {
    /// RoPE over the first `fraction` of `head_dim` with base `theta`, tabulated for
    /// `max_positions` positions (at most 8,192).
    pub fn new(head_dim: usize, fraction: f64, theta: f64, interleaved: bool, max_positions: usize) -> Self {
        Self::from_inv_freq(Self::inv_freq(head_dim, fraction, theta), interleaved, max_positions)
    }

    /// The frequencies `1 / theta^(2i/d)` over the first `fraction` of `head_dim` (rounded down
    /// to an even width), computed in f32 as transformers does; scaled variants adjust them
    /// before [`Self::from_inv_freq`].
    pub fn inv_freq(head_dim: usize, fraction: f64, theta: f64) -> Vec<f32> {
        let rot_dim = (((head_dim as f64) * fraction).round() as usize).min(head_dim) & !1;
        (0..rot_dim / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / rot_dim as f32))
            .collect()
    }

    /// RoPE with the given frequencies (one per rotated pair), tabulated for `max_positions`
    /// positions (at most 8,192).
    pub fn from_inv_freq(inv_freq: Vec<f32>, interleaved: bool, max_positions: usize) -> Self {
        let half = inv_freq.len();
        let positions = max_positions.clamp(1, TABLE_POSITIONS);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            rot_dim: 2 * half,
            interleaved,
            inv_freq,
            cos,
            sin,
            positions,
        }
    }

    /// Rotates one head vector of the token at `position` in place.
    #[inline]
    pub fn rotate(&self, x: &mut [f32], position: usize) {
        let half = self.rot_dim / 2;
        if half == 0 {
            return;
        }
        let computed;
        let (cos, sin): (&[f32], &[f32]) = if position < self.positions {
            let r = position * half..(position + 1) * half;
            (&self.cos[r.clone()], &self.sin[r])
        } else {
            computed = self.angles(position);
            (&computed.0, &computed.1)
        };
        if self.interleaved {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = b * cos[i] + a * sin[i];
            }
        } else {
            let (lo, hi) = x[..self.rot_dim].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }

    fn angles(&self, position: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|f| {
                let angle = (position as f32 * f) as f64;
                (angle.cos() as f32, angle.sin() as f32)
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norms_are_kept() {
        let r = Rotary::new(8, 1.0, 10_000.0, false, 64);
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let orig = x;
        r.rotate(&mut x, 0);
        assert_eq!(x, orig);
        r.rotate(&mut x, 37);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
        // Beyond the table gives the same as inside it would.
        let small = Rotary::new(8, 1.0, 10_000.0, false, 4);
        let (mut a, mut b) = (orig, orig);
        small.rotate(&mut a, 37);
        r.rotate(&mut b, 37);
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-6));
    }

    #[test]
    fn partial_rotation_leaves_the_tail() {
        let r = Rotary::new(8, 0.5, 10_000.0, true, 64);
        let mut x = [1.0; 8];
        r.rotate(&mut x, 5);
        assert_eq!(&x[4..], &[1.0; 4]);
        assert_ne!(&x[..4], &[1.0; 4]);
    }
}
