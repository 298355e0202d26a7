//! Dense-layer throughput on the shapes of MiniLM and BERT-base layers, for every kernel this
//! CPU runs: fp32, bf16 and int8 (best of 21 runs, in GOPS: two operations per multiply-add).
//! `cargo run --release -p openembed-engine --example gemm_speed -- [threads] [gelu]`
use openembed_engine::kernels::activation::Activation;
use openembed_engine::kernels::bf16::{gemm_bf16, Bf16Isa, Bf16Weight};
use openembed_engine::kernels::int8::{gemm_int8, Int8Isa, Int8Weight};
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
    println!("instruction sets: {}", openembed_engine::kernels::isa_name());
    let shapes = [
        (4096, 384, 1152),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (2048, 768, 2304),
        (2048, 768, 3072),
        (2048, 3072, 768),
        (64, 384, 1152),
        (640, 384, 1152),
        (640, 1536, 384),
    ];
    for (m, k, n) in shapes {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let b = vec![0.1f32; n];
        let mut out = vec![0.0f32; m * n];
        let gop = 2.0 * (m * k * n) as f64 / 1e9;
        let mut line = format!("m={m} k={k} n={n}:");
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if !isa.supported() || (isa == Isa::Portable && m > 64) {
                continue;
            }
            let packed = PackedWeight::pack(&w, n, k, isa);
            let s = best_secs(|| pool.install(|| sgemm(&x, m, &packed, Some(&b), act, &mut out, n, threads)));
            line += &format!(" f32-{isa:?} {:.0}", gop / s);
        }
        for isa in [Bf16Isa::Avx2, Bf16Isa::Avx512, Bf16Isa::Avx512Bf16, Bf16Isa::Amx] {
            if !isa.supported() {
                continue;
            }
            let packed = Bf16Weight::from_f32(&w, n, k, isa);
            let s = best_secs(|| pool.install(|| gemm_bf16(&x, m, &packed, Some(&b), act, &mut out, n, threads)));
            line += &format!(" bf16-{isa:?} {:.0}", gop / s);
        }
        for isa in [Int8Isa::Avx2, Int8Isa::AvxVnni, Int8Isa::Avx512Vnni, Int8Isa::Amx] {
            if !isa.supported() {
                continue;
            }
            let packed = Int8Weight::quantize(&w, n, k, isa);
            let s = best_secs(|| pool.install(|| gemm_int8(&x, m, &packed, Some(&b), act, &mut out, n, threads)));
            line += &format!(" int8-{isa:?} {:.0}", gop / s);
        }
        println!("{line}");
    }
}
