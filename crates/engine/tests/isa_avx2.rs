//! The reference checks again with the instruction set capped at `avx2` (`OPENEMBED_ISA`), so
//! a CPU with wider vectors also proves the AVX2+FMA micro-kernels (6×16) and element-wise builds
//! numerically right. The cap is read once per process: this file is its own test binary with a
//! single test that sets it first.

mod common;

use common::*;

#[test]
fn reference_models_on_avx2_kernels() {
    std::env::set_var(openembed_engine::kernels::ISA_ENV, "avx2");
    assert!(!openembed_engine::kernels::has_avx512());
    if !openembed_engine::kernels::has_avx2_fma() {
        openembed_engine::kernels::report_skipped("this CPU has no AVX2+FMA (isa_portable covers it)");
        return;
    }
    check_default_model_and_tiny_architectures();
}
