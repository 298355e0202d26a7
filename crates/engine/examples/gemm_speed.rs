//! Measures the SGEMM throughput of `linear` on the shapes of a BERT layer.
//! `cargo run --release -p openembed-engine --example gemm_speed -- [threads]`
use openembed_engine::kernels::matmul::linear;
use rayon::prelude::*;
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[4]
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    for (m, k, n) in [
        (2048, 2048, 2048),
        (4096, 384, 1152),
        (4096, 384, 384),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (800, 384, 1152),
        (800, 1536, 384),
        (64, 384, 1152),
    ] {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let b = vec![0.1f32; n];
        let mut out = vec![0.0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64 / 1e9;
        let whole =
            time(|| pool.install(|| linear(&x, m, k, &w, n, Some(&b), &mut out, n, threads)));
        let mut line = format!("m={m} k={k} n={n}: W[n,k] {:.1}", flop / whole);
        let packed = openembed_engine::kernels::sgemm::PackedWeight::pack(&w, n, k);
        let t = time(|| {
            pool.install(|| {
                openembed_engine::kernels::sgemm::sgemm(
                    &x,
                    m,
                    &packed,
                    Some(&b),
                    &mut out,
                    n,
                    threads,
                )
            })
        });
        line += &format!(" | packed sgemm {:.1}", flop / t);
        println!("{line} GFLOPS");
    }
}
