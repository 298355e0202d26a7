//! SGEMM throughput on the shapes of a BERT layer: the `gemm` crate (portable path) against our
//! packed kernels (best of 21 runs). `cargo run --release -p openembed-engine --example gemm_speed -- [threads] [gelu]`
use openembed_engine::kernels::activation::Activation;
use openembed_engine::kernels::matmul::linear;
use openembed_engine::kernels::sgemm::{sgemm, Isa, PackedWeight};
use std::time::Instant;

fn best_secs(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[0]
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let act = match std::env::args().nth(2).as_deref() {
        Some("gelu") => Activation::Gelu,
        _ => Activation::Identity,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let shapes = [
        (2048, 2048, 2048),
        (4096, 384, 1152),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (800, 384, 1152),
        (64, 384, 1152),
    ];
    for (m, k, n) in shapes {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let b = vec![0.1f32; n];
        let mut out = vec![0.0f32; m * n];
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        let crate_gemm = best_secs(|| pool.install(|| linear(&x, m, k, &w, n, Some(&b), &mut out, n, threads)));
        let mut line = format!("m={m} k={k} n={n}: gemm crate {:.1} GFLOPS", gflop / crate_gemm);
        for isa in [Isa::Avx2, Isa::Avx512] {
            if isa == Isa::Avx512 && !openembed_engine::kernels::has_avx512() {
                continue;
            }
            let packed = PackedWeight::pack(&w, n, k, isa);
            let ours = best_secs(|| pool.install(|| sgemm(&x, m, &packed, Some(&b), act, &mut out, n, threads)));
            line += &format!(", {isa:?} {:.1}", gflop / ours);
        }
        println!("{line}");
    }
}
