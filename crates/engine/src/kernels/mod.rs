//! Numeric kernels on plain slices: matrix multiply, normalization, activations, softmax.
//!
//! Every element-wise kernel is written so LLVM vectorizes it, and is compiled three times by
//! [`simd_dispatch!`]: for AVX-512, for AVX2+FMA and for the baseline target, the widest the CPU
//! has chosen at run time. The binary therefore runs on any x86-64 CPU and is fast on modern ones.

pub mod activation;
pub mod amx;
pub mod bf16;
pub mod int8;
pub mod math;
pub mod norm;
pub mod sgemm;

/// Environment variable that caps the instruction set the kernels use: `portable`, `avx2`,
/// `avx512` (AVX-512F/BW/DQ/VL without VNNI or BF16), `avx512-vnni` (with VNNI and BF16 but
/// not AMX's tiles) or `native` (everything the CPU has, AMX included; the default). Read
/// once per process; lets tests and benchmarks run the narrower kernels on a
/// wider CPU. An unknown value is reported on stderr and treated as `native`.
pub const ISA_ENV: &str = "OPENEMBED_ISA";

/// The cap from [`ISA_ENV`]: 0 plain Rust, 1 AVX2+FMA, 2 AVX-512, 3 AVX-512 with VNNI/BF16,
/// 4 everything (AMX).
fn isa_cap() -> u8 {
    static CAP: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let value = std::env::var(ISA_ENV).unwrap_or_default().to_ascii_lowercase();
        match value.as_str() {
            "portable" => 0,
            "avx2" => 1,
            "avx512" => 2,
            "avx512-vnni" => 3,
            "" | "native" => 4,
            other => {
                eprintln!("{ISA_ENV}={other} is not one of portable, avx2, avx512, avx512-vnni, native; using native");
                4
            }
        }
    })
}

/// The widest instruction set the kernels use on this CPU (after [`ISA_ENV`]), for messages
/// and benchmark reports: e.g. `avx512-vnni-bf16`, `avx2`, `portable`.
pub fn isa_name() -> String {
    let mut name = if has_avx512() {
        "avx512".to_owned()
    } else if has_avx2_fma() {
        "avx2".to_owned()
    } else {
        return "portable".to_owned();
    };
    if !has_avx512() && has_avx_vnni() {
        name.push_str("-avxvnni");
    }
    if has_avx512_vnni() {
        name.push_str("-vnni");
    }
    if has_avx512_bf16() {
        name.push_str("-bf16");
    }
    if amx::has_amx() {
        name.push_str("-amx");
    }
    name
}

/// The dense-layer kernel a model of `dtype` runs on this CPU (after [`ISA_ENV`], the AMX
/// self-checks and the OS's permission): e.g. `amx-int8`, `amx-bf16`, `avx512-vnni`,
/// `avx512`, `avx2`, `portable`. For `GET /v1/models/{id}` and benchmark reports.
pub fn gemm_kernel(dtype: crate::DType) -> &'static str {
    use crate::DType;
    match dtype {
        DType::Float32 => match sgemm::Isa::detect() {
            sgemm::Isa::Avx512 => "avx512",
            sgemm::Isa::Avx2 => "avx2",
            sgemm::Isa::Portable => "portable",
        },
        DType::Bfloat16 => match bf16::Bf16Isa::detect() {
            bf16::Bf16Isa::Amx => "amx-bf16",
            bf16::Bf16Isa::Avx512Bf16 => "avx512-bf16",
            bf16::Bf16Isa::Avx512 => "avx512",
            bf16::Bf16Isa::Avx2 => "avx2",
            bf16::Bf16Isa::Portable => "portable",
        },
        DType::Int8 => match int8::Int8Isa::detect() {
            int8::Int8Isa::Amx => "amx-int8",
            int8::Int8Isa::Avx512Vnni => "avx512-vnni",
            int8::Int8Isa::AvxVnni => "avx-vnni",
            int8::Int8Isa::Avx2 => "avx2",
            int8::Int8Isa::Portable => "portable",
        },
    }
}

/// True when the CPU has AVX-512 VNNI (`vpdpbusd`) on top of [`has_avx512`] and [`ISA_ENV`]
/// allows it.
#[inline]
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| isa_cap() >= 3 && has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the CPU has AVX512-BF16 (`vdpbf16ps`) on top of [`has_avx512`] and [`ISA_ENV`]
/// allows it.
#[inline]
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| isa_cap() >= 3 && has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the CPU has AVX-VNNI (the 256-bit VEX-encoded `vpdpbusd` of Intel's client cores
/// and later Xeons) on top of [`has_avx2_fma`], and [`ISA_ENV`] allows everything (`native`).
#[inline]
pub fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| isa_cap() >= 3 && has_avx2_fma() && std::arch::is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the CPU supports AVX2 and FMA and [`ISA_ENV`] allows them (checked once).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            isa_cap() >= 1 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the CPU supports AVX-512 F/BW/DQ/VL (and AVX2+FMA, which every such CPU has) and
/// [`ISA_ENV`] allows them.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // One cached answer: this is asked per softmax row and per element-wise call.
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            isa_cap() >= 2
                && has_avx2_fma()
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a function whose body is compiled for AVX-512, for AVX2+FMA and for the baseline
/// target, picking the widest the CPU runs at run time. The body must be safe code; it sees a
/// `const FMA: bool` (true in the two FMA builds) to pass to [`math::madd`] and its users.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp<const FMA: bool>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU has AVX-512 (checked below).
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { imp::<true>($($arg),*) }
                /// # Safety
                /// The CPU has AVX2 and FMA (checked below).
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? { imp::<true>($($arg),*) }
                if $crate::kernels::has_avx512() {
                    // SAFETY: the CPU supports the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if $crate::kernels::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `fast` was compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            imp::<false>($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// For tests: tells the person running them that a case was skipped (this machine cannot run
/// it), whether the test then passes or not: written to stderr directly, because the test
/// harness swallows `eprintln!` output of passing tests. Public for the integration tests.
#[doc(hidden)]
pub fn report_skipped(what: &str) {
    use std::io::Write;
    // The harness names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let _ = writeln!(std::io::stderr().lock(), "skipped in {test}: {what}");
}

/// Calls `$f::<R>($t)` with the const row count `R` equal to `$rows` (one of the listed
/// literals, else 1): micro-kernels keep their rows as a const so accumulators stay in
/// registers.
macro_rules! rows_dispatch {
    ($rows:expr, $f:ident, [$($r:literal),*], $t:expr) => {
        match $rows {
            $($r => $f::<$r>($t),)*
            _ => $f::<1>($t),
        }
    };
}
pub(crate) use rows_dispatch;

/// The first `len` elements of a reusable scratch buffer, growing it when short. Growth leaves
/// half again as much headroom, so batches that grow a little at a time (length-sorted input)
/// do not reallocate on every call. The contents are scratch: a grown buffer is fresh zeroed
/// memory, not a copy (the old one is freed first, and the allocator's zeroed pages are
/// touched once, by their first write, instead of three times by copy, fill and use).
pub fn buffer<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        *buf = Vec::new();
        *buf = vec![T::default(); len + len / 2];
    }
    &mut buf[..len]
}

/// The AVX-512 mask of the first `n` of 16 lanes (all 16 from `n ≥ 16` on).
#[inline(always)]
pub(crate) fn mask16(n: usize) -> u16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// Plain integer element types that [`Aligned`] can hold (every bit pattern is a value).
pub trait Plain: Copy + Default + Send + Sync + 'static {}
impl Plain for u8 {}
impl Plain for i8 {}
impl Plain for u16 {}

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A growable buffer of integers whose start is 64-byte aligned: AMX's `TILELOADD` reads a
/// tile row per cache line only from aligned rows (a row that straddles two lines made the
/// loads 6× slower, measured on a Xeon), and the AVX-512 kernels' full-width loads gain too.
#[derive(Default)]
pub struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Plain> Aligned<T> {
    /// `len` zeros, in exactly the lines they need (no headroom: packed weights never grow).
    pub fn zeroed(len: usize) -> Self {
        Self {
            lines: zeroed_lines((len * std::mem::size_of::<T>()).div_ceil(64)),
            len,
            _t: std::marker::PhantomData,
        }
    }

    /// The first `len` elements, growing (with half again as headroom, zeroed fresh memory, as
    /// [`buffer`]) when short; the contents are kept only when no growth was needed.
    pub fn resize(&mut self, len: usize) -> &mut [T] {
        let bytes = len * std::mem::size_of::<T>();
        if self.lines.len() * 64 < bytes {
            self.lines = Vec::new();
            self.lines = zeroed_lines((bytes + bytes / 2).div_ceil(64));
        }
        self.len = len;
        &mut self[..]
    }
}

/// `n` zeroed lines from the allocator's zeroed memory (fresh pages are then touched once, by
/// their first write, as `vec![0; n]` does for integers).
fn zeroed_lines(n: usize) -> Vec<Line> {
    if n == 0 {
        return Vec::new();
    }
    let Ok(layout) = std::alloc::Layout::array::<Line>(n) else {
        panic!("capacity overflow");
    };
    // SAFETY: the layout is non-zero-sized; a null result is handed to `handle_alloc_error`;
    // all-zero bytes are a valid `Line`; the block was allocated by the global allocator with
    // the layout of a `Vec<Line>` of capacity `n`.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut Line;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values of `T` (checked in `resize`), are
        // initialized, any bit pattern is a `T` (`Plain`), and 64-byte alignment satisfies `T`'s.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

/// One tile of a GEMM's output handed to a [`Fold`]: rows `row..row + rows` and columns
/// `col..col + cols`, output row `row + i` at `values[i * ld..][..cols]`.
pub struct FoldTile<'a> {
    pub row: usize,
    pub rows: usize,
    pub col: usize,
    pub cols: usize,
    pub values: &'a [f32],
    pub ld: usize,
}

/// Takes a GEMM's products `x · Wᵀ` (no bias: the fold adds it where it needs it) tile by
/// tile instead of an output matrix (SPLADE's pooling over each input's tokens: the logits are
/// folded while in L1 and never stored). Called from several threads at once, but never for
/// the same columns at once; each output element is handed over exactly once, in no set order.
pub type Fold<'a> = &'a (dyn Fn(FoldTile<'_>) + Sync);

/// For the GEMMs' tests: runs `gemm` with a fold that checks every element of the `m × n`
/// output reaches it exactly once, bit-equal to `want`, and that no two threads fold the same
/// columns at once.
#[cfg(test)]
pub(crate) fn check_fold(m: usize, n: usize, want: &[f32], what: &str, gemm: impl FnOnce(Fold)) {
    use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
    let got: Vec<AtomicU32> = (0..m * n).map(|_| AtomicU32::new(0)).collect();
    let seen: Vec<AtomicU8> = (0..m * n).map(|_| AtomicU8::new(0)).collect();
    let busy: Vec<AtomicU8> = (0..n).map(|_| AtomicU8::new(0)).collect();
    let fold = |t: FoldTile| {
        for b in &busy[t.col..t.col + t.cols] {
            assert_eq!(
                b.fetch_add(1, Ordering::SeqCst),
                0,
                "{what}: a column folded twice at once"
            );
        }
        for r in 0..t.rows {
            for j in 0..t.cols {
                let e = (t.row + r) * n + t.col + j;
                got[e].store(t.values[r * t.ld + j].to_bits(), Ordering::Relaxed);
                seen[e].fetch_add(1, Ordering::Relaxed);
            }
        }
        for b in &busy[t.col..t.col + t.cols] {
            b.fetch_sub(1, Ordering::SeqCst);
        }
    };
    gemm(&fold);
    assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "{what}: coverage");
    assert!(
        got.iter()
            .zip(want)
            .all(|(g, w)| g.load(Ordering::Relaxed) == w.to_bits()),
        "{what}: values"
    );
}

/// Asks for `x` to be brought into L1 ahead of its use: the row-wise passes over a GEMM's
/// input (quantization, rounding) read each row cold, and ask for the next one while they work
/// on this one from L1 (measured on an AMX Xeon, BERT-base int8: +6% texts/s).
#[inline]
pub(crate) fn prefetch<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..std::mem::size_of_val(x)).step_by(64) {
        // SAFETY: a prefetch is only a hint, and the address is inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((x.as_ptr() as *const i8).add(line))
        };
    }
}

/// Rows handed to one parallel task by the row-wise helpers.
pub(crate) const ROWS_PER_TASK: usize = 32;

/// Runs `f(x_rows, out_rows)` over blocks of rows in parallel (see [`crate::parallel`]).
pub fn par_rows(x: &[f32], out: &mut [f32], width: usize, f: impl Fn(&[f32], &mut [f32]) + Sync + Send) {
    let block = ROWS_PER_TASK * width.max(1);
    crate::parallel::for_each(out.chunks_mut(block).zip(x.chunks(block)).collect(), |(o, x)| f(x, o));
}

/// Runs `f` over blocks of rows of `out` in parallel (see [`crate::parallel`]).
pub fn par_rows_mut(out: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    crate::parallel::for_each(out.chunks_mut(ROWS_PER_TASK * width.max(1)).collect(), f);
}
