//! Activation functions applied in place over rows, with the layer's bias already added by GEMM.

use super::math::{erf, exp};
use super::simd_dispatch;

/// Element-wise activation of a feed-forward layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the exact erf form (`gelu` in transformers).
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// ReLU.
    Relu,
    /// SiLU / swish.
    Silu,
    /// tanh (used by some Dense heads).
    Tanh,
    /// No activation.
    Identity,
}

impl Activation {
    /// Parses a transformers `hidden_act` name or a torch module path.
    pub fn from_name(name: &str) -> Option<Self> {
        let short = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
        Some(match short.as_str() {
            "gelu" | "gelu_python" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "tanh" => Self::Tanh,
            "identity" | "linear" => Self::Identity,
            _ => return None,
        })
    }

    /// Applies the activation to every element of `x` in place.
    pub fn apply(self, x: &mut [f32]) {
        match self {
            Self::Gelu => gelu_erf(x),
            Self::GeluTanh => gelu_tanh(x),
            Self::Relu => relu(x),
            Self::Silu => silu(x),
            Self::Tanh => tanh(x),
            Self::Identity => {}
        }
    }

    /// Applies the activation to a small block in place; inlined into the caller so it is
    /// compiled with the caller's target features (used in the SGEMM epilogue). `FMA`: the
    /// caller is compiled with FMA (see [`madd`](super::math::madd)).
    #[inline(always)]
    pub fn apply_block<const FMA: bool>(self, x: &mut [f32; 16]) {
        match self {
            Self::Gelu => x.iter_mut().for_each(|v| *v = gelu_one::<FMA>(*v)),
            Self::GeluTanh => x.iter_mut().for_each(|v| *v = gelu_tanh_one::<FMA>(*v)),
            Self::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Self::Silu => x.iter_mut().for_each(|v| *v = silu_one::<FMA>(*v)),
            Self::Tanh => x.iter_mut().for_each(|v| *v = tanh_fast::<FMA>(*v)),
            Self::Identity => {}
        }
    }

    /// Gated form: `out[i] = act(gate[i]) * up[i]` (SwiGLU / GeGLU), written into `up`.
    pub fn apply_gated(self, gate: &[f32], up: &mut [f32]) {
        gated(self, gate, up)
    }
}

#[inline(always)]
fn tanh_fast<const F: bool>(x: f32) -> f32 {
    // tanh(x) = 1 - 2 / (exp(2x) + 1), accurate to ~1e-7 away from 0; near 0 use x directly.
    let e = exp::<F>(2.0 * x);
    let t = 1.0 - 2.0 / (e + 1.0);
    if x.abs() < 1e-4 {
        x
    } else {
        t
    }
}

#[inline(always)]
fn gelu_one<const F: bool>(v: f32) -> f32 {
    0.5 * v * (1.0 + erf::<F>(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU (erf form) of 16 lanes: [`super::math::erf`]'s rational approximation, its division
/// as a reciprocal estimate refined by one Newton step (within an ulp or two of the division,
/// at a fraction of its cost: `vdivps` was most of the epilogue of an up-projection).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn gelu_avx512(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(4.0)), _mm512_set1_ps(-4.0));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_set1_ps(super::math::ERF_P[0]);
    for &c in &super::math::ERF_P[1..] {
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(c));
    }
    let p = _mm512_mul_ps(p, x);
    let mut q = _mm512_set1_ps(super::math::ERF_Q[0]);
    for &c in &super::math::ERF_Q[1..] {
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(c));
    }
    let r = _mm512_rcp14_ps(q);
    let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
    let erf = _mm512_mul_ps(p, r);
    let half = _mm512_mul_ps(_mm512_set1_ps(0.5), v);
    _mm512_fmadd_ps(half, erf, half)
}

#[inline(always)]
fn gelu_tanh_one<const F: bool>(v: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * v * (1.0 + tanh_fast::<F>(C * (v + 0.044_715 * v * v * v)))
}

#[inline(always)]
fn silu_one<const F: bool>(v: f32) -> f32 {
    v / (1.0 + exp::<F>(-v))
}

simd_dispatch! {
    fn gelu_erf(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_one::<FMA>(*v);
        }
    }
}

simd_dispatch! {
    fn gelu_tanh(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_tanh_one::<FMA>(*v);
        }
    }
}

simd_dispatch! {
    fn relu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

simd_dispatch! {
    fn silu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = silu_one::<FMA>(*v);
        }
    }
}

simd_dispatch! {
    fn tanh(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = tanh_fast::<FMA>(*v);
        }
    }
}

simd_dispatch! {
    fn gated(act: Activation, gate: &[f32], up: &mut [f32]) {
        let n = gate.len().min(up.len());
        let (gate, up) = (&gate[..n], &mut up[..n]);
        match act {
            Activation::Gelu => up.iter_mut().zip(gate).for_each(|(u, &g)| *u *= gelu_one::<FMA>(g)),
            Activation::GeluTanh => up.iter_mut().zip(gate).for_each(|(u, &g)| *u *= gelu_tanh_one::<FMA>(g)),
            Activation::Silu => up.iter_mut().zip(gate).for_each(|(u, &g)| *u *= silu_one::<FMA>(g)),
            Activation::Relu => up.iter_mut().zip(gate).for_each(|(u, &g)| *u *= g.max(0.0)),
            Activation::Tanh => up.iter_mut().zip(gate).for_each(|(u, &g)| *u *= tanh_fast::<FMA>(g)),
            Activation::Identity => up.iter_mut().zip(gate).for_each(|(u, &g)| *u *= g),
        }
    }
}

#[cfg(test)]
mod tests {

    /// The AVX-512 GELU of the GEMM epilogues is the erf form to float precision.
    #[test]
    fn gelu_in_registers_matches_the_erf_form() {
        if !crate::kernels::has_avx512() {
            crate::kernels::report_skipped("AVX-512 GELU (this CPU lacks AVX-512)");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let xs: Vec<f32> = (0..16 * 1000).map(|i| (i as f32 - 8000.0) / 800.0).collect();
            for chunk in xs.chunks_exact(16) {
                let mut out = [0.0f32; 16];
                // SAFETY: the CPU has AVX-512 (checked); both arrays hold 16 floats.
                unsafe {
                    use std::arch::x86_64::*;
                    let v = gelu_avx512(_mm512_loadu_ps(chunk.as_ptr()));
                    _mm512_storeu_ps(out.as_mut_ptr(), v);
                }
                for (&x, &got) in chunk.iter().zip(&out) {
                    let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "gelu({x}) = {got}, want {want}"
                    );
                }
            }
        }
    }

    use super::*;

    #[test]
    fn activations_match_reference_formulas() {
        let xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.025).collect();
        for (act, f) in [
            (
                Activation::Gelu,
                Box::new(|v: f64| 0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt()))) as Box<dyn Fn(f64) -> f64>,
            ),
            (
                Activation::GeluTanh,
                Box::new(|v: f64| {
                    0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
                }),
            ),
            (Activation::Silu, Box::new(|v: f64| v / (1.0 + (-v).exp()))),
            (Activation::Tanh, Box::new(|v: f64| v.tanh())),
            (Activation::Relu, Box::new(|v: f64| v.max(0.0))),
        ] {
            let mut y = xs.clone();
            act.apply(&mut y);
            for (x, y) in xs.iter().zip(&y) {
                let want = f(*x as f64);
                assert!((*y as f64 - want).abs() < 2e-6, "{act:?}({x}) = {y}, want {want}");
            }
        }
        assert_eq!(
            Activation::from_name("torch.nn.modules.activation.Tanh"),
            Some(Activation::Tanh)
        );
        assert_eq!(Activation::from_name("gelu"), Some(Activation::Gelu));
        assert_eq!(Activation::from_name("mystery"), None);
    }
}
