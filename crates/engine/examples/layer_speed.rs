//! SGEMM throughput on the four dense products of an all-MiniLM-L6-v2 layer as the model runs
//! them: six layers' distinct weights in turn, so panels come from L3 as in a real batch, not
//! from a warm cache as in `gemm_speed`. Prints the median and best of 15 passes per shape.
//! `cargo run --release -p openembed-engine --example layer_speed -- [threads] [rows] [avx2]`
use openembed_engine::kernels::activation::Activation;
use openembed_engine::kernels::sgemm::{sgemm, Isa, PackedWeight};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let m: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1300);
    let isa = match args.next().as_deref() {
        Some("avx2") => Isa::Avx2,
        _ => Isa::detect(),
    };
    if !openembed_engine::kernels::has_avx2_fma() {
        eprintln!("this example needs AVX2 and FMA");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    // (k, n, activation): fused q|k|v, attention output, up-projection with GELU, down-projection.
    let shapes = [
        (384usize, 1152usize, Activation::Identity),
        (384, 384, Activation::Identity),
        (384, 1536, Activation::Gelu),
        (1536, 384, Activation::Identity),
    ];
    let layers: Vec<Vec<PackedWeight>> = (0..6)
        .map(|l| {
            shapes
                .iter()
                .map(|&(k, n, _)| {
                    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7 + l) % 13) as f32 * 0.01).collect();
                    PackedWeight::pack(&w, n, k, isa)
                })
                .collect()
        })
        .collect();
    let x: Vec<f32> = (0..m * 1536).map(|i| (i % 17) as f32 * 0.01).collect();
    let bias = vec![0.1f32; 1536];
    let mut out = vec![0.0f32; m * 1536];
    let mut times = vec![Vec::new(); shapes.len()];
    for _ in 0..15 {
        for layer in &layers {
            for (s, (&(k, n, act), w)) in shapes.iter().zip(layer).enumerate() {
                let t = Instant::now();
                pool.install(|| sgemm(&x[..m * k], m, w, Some(&bias[..n]), act, &mut out[..m * n], n, threads));
                times[s].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let (mut total_secs, mut total_gflop) = (0.0, 0.0);
    for (&(k, n, _), t) in shapes.iter().zip(&mut times) {
        t.sort_by(|a, b| a.total_cmp(b));
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        let median = t[t.len() / 2];
        total_secs += median;
        total_gflop += gflop;
        println!(
            "m={m} k={k} n={n}: median {:.1} GFLOPS, best {:.1}",
            gflop / median,
            gflop / t[0]
        );
    }
    println!(
        "{isa:?}, {threads} threads, whole layer: {:.1} GFLOPS (medians)",
        total_gflop / total_secs
    );
}
