//! Dense-layer throughput per dtype at the shapes of all-MiniLM-L6-v2 and BERT-base, in
//! billions of multiply-adds per second, median and best of the repetitions (on a shared
//! virtual machine the best is the steadier figure for comparing kernel changes), so kernels
//! are measured apart from attention, norms and tokenization.
//!
//! `cargo bench -p openembed-engine --bench gemm [-- --threads N --tokens M --reps R]`
//! (`OPENEMBED_ISA` caps the instruction set as it does for the engine).

use openembed_engine::kernels::activation::Activation;
use openembed_engine::kernels::bf16::{gemm_bf16, Bf16Isa, Bf16Weight};
use openembed_engine::kernels::int8::{gemm_int8, Int8Isa, Int8Weight};
use openembed_engine::kernels::sgemm::{sgemm, Isa, PackedWeight};
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic values in [-1, 1) with a few large channels, as transformer activations have.
fn values(len: usize, seed: usize, width: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v = ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 2000) as f32 / 1000.0 - 1.0;
            if (i % width) % 97 == 3 {
                v * 12.0
            } else {
                v
            }
        })
        .collect()
}

/// (median, smallest) of `v`.
fn median_and_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn main() {
    let threads = arg("--threads", 2);
    let m = arg("--tokens", 1024);
    let reps = arg("--reps", 25).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    println!(
        "{m} tokens, {threads} threads, {} kernels; GMAC/s, median/best of {reps}",
        openembed_engine::kernels::isa_name()
    );
    // (name, n, k, activation): one layer's dense products.
    let shapes: [(&str, usize, usize, Activation); 6] = [
        ("minilm qkv", 1152, 384, Activation::Identity),
        ("minilm ffn up", 1536, 384, Activation::Gelu),
        ("minilm ffn down", 384, 1536, Activation::Identity),
        ("bert-base qkv", 2304, 768, Activation::Identity),
        ("bert-base ffn up", 3072, 768, Activation::Gelu),
        ("bert-base ffn down", 768, 3072, Activation::Identity),
    ];
    for (name, n, k, act) in shapes {
        let x = values(m * k, 1, k);
        let w: Vec<f32> = values(n * k, 2, usize::MAX).iter().map(|v| v * 0.05).collect();
        let bias = values(n, 3, usize::MAX);
        let mut out = vec![0.0f32; m * n];
        let f32w = PackedWeight::pack(&w, n, k, Isa::detect());
        let bf16w = Bf16Weight::from_f32(&w, n, k, Bf16Isa::detect());
        let int8w = Int8Weight::quantize(&w, n, k, Int8Isa::detect());
        let macs = (m * n * k) as f64;
        let mut line = format!("{name:<20}");
        for dtype in ["float32", "bfloat16", "int8"] {
            let mut times = Vec::with_capacity(reps);
            pool.install(|| {
                for rep in 0..reps + 2 {
                    let t = Instant::now();
                    match dtype {
                        "float32" => sgemm(&x, m, &f32w, Some(&bias), act, &mut out, n, threads),
                        "bfloat16" => gemm_bf16(&x, m, &bf16w, Some(&bias), act, &mut out, n, threads),
                        _ => gemm_int8(&x, m, &int8w, Some(&bias), act, &mut out, n, threads),
                    }
                    if rep >= 2 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
            });
            let (med, best) = median_and_min(times);
            line.push_str(&format!(
                "  {dtype} {:>5.1}/{:<5.1}",
                macs / med / 1e9,
                macs / best / 1e9
            ));
        }
        println!("{line}");
    }
}
