//! The reference checks again with the instruction set capped at `portable` (`OPENEMBED_ISA`),
//! so a CPU with wider vectors also proves the plain-Rust micro-kernel, the `gemm` crate for dense
//! layers and the baseline element-wise builds numerically right. The cap is read once per
//! process: this file is its own test binary with a single test that sets it first.

mod common;

use common::*;

#[test]
fn reference_models_on_portable_kernels() {
    std::env::set_var(openembed_engine::kernels::ISA_ENV, "portable");
    assert!(!openembed_engine::kernels::has_avx512());
    assert!(!openembed_engine::kernels::has_avx2_fma());
    check_default_model_and_tiny_architectures();
}
