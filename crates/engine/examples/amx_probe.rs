use openembed_engine::kernels::activation::Activation;
use openembed_engine::kernels::int8::{gemm_int8, Int8Isa, Int8Weight};
use openembed_engine::kernels::bf16::{gemm_bf16, Bf16Isa, Bf16Weight};
use std::time::Instant;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (m, k, n, threads, bf) = (a[0], a[1], a[2], a[3], a[4] == 1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
    let mut out = vec![0.0f32; m * n];
    let qi = Int8Weight::quantize(&w, n, k, Int8Isa::Amx);
    let qb = Bf16Weight::from_f32(&w, n, k, Bf16Isa::Amx);
    let t = Instant::now();
    let reps = 200;
    for _ in 0..reps { pool.install(|| if bf { gemm_bf16(&x, m, &qb, None, Activation::Identity, &mut out, n, threads) } else { gemm_int8(&x, m, &qi, None, Activation::Identity, &mut out, n, threads) }); }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("{} GOPS", 2.0 * (m * k * n) as f64 / s / 1e9);
}
