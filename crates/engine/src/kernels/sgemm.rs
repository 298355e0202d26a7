//! Our SGEMM for dense layers: `Y = X · Wᵀ + b` with `W` packed once at load time.
//!
//! Weights are re-laid out into panels of `nr` output columns (`[K × nr]` contiguous, zero
//! padded), so the micro-kernel streams them with unit stride and never packs at run time. Three
//! micro-kernels exist: AVX-512 keeps a 14×32 block of `Y` in 28 registers, AVX2+FMA a 6×16
//! block in twelve, and a portable 4×16 one that LLVM vectorizes for any CPU; all read `X` in
//! place. `K` is blocked by [`KC`] and `N` by [`NC`] so the working set stays in L1/L2; threads
//! split the rows (or, for a few rows, the columns) and never synchronize inside one call
//! ([`for_each_block`], shared with the int8 and bf16 GEMMs, whose micro-kernels plug into
//! [`drive`]).

use super::activation::Activation;
use super::buffer;

/// Depth of one K block.
const KC: usize = 384;
/// Columns of one N block.
pub(crate) const NC: usize = 128;
/// Rows of one M block (rounded up to whole micro-tiles).
pub(crate) const MC: usize = 120;

/// The instruction set a packed weight is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust: 16-column panels.
    Portable,
    /// AVX2 + FMA: 16-column panels.
    Avx2,
    /// AVX-512F: 32-column panels.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU runs (after [`super::ISA_ENV`]).
    pub fn detect() -> Isa {
        if super::has_avx512() {
            Isa::Avx512
        } else if super::has_avx2_fma() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// True when this CPU runs the kernel (the portable one always).
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => super::has_avx2_fma(),
            Isa::Avx512 => super::has_avx512(),
        }
    }

    fn nr(self) -> usize {
        match self {
            Isa::Portable => Portable::NR,
            Isa::Avx2 => Avx2::NR,
            Isa::Avx512 => Avx512::NR,
        }
    }
}

/// Splits an `m × n` output into blocks `(r0, r1, c0, c1)` for `threads` threads: whole
/// `mr`-row strips when there are plenty of rows (as even as strips allow, a multiple of the
/// thread count, up to four per thread while each keeps at least eight strips, so no thread
/// is left with one task more than another), else `nr`-aligned column ranges.
fn split_work(m: usize, n: usize, mr: usize, nr: usize, threads: usize) -> Vec<(usize, usize, usize, usize)> {
    let threads = threads.max(1);
    if splits_rows(m, n, mr, nr, threads) {
        let strips = m.div_ceil(mr);
        let parts = threads * (strips / (8 * threads)).clamp(1, 4);
        let parts = if threads > 1 { parts.min(strips) } else { 1 };
        (0..parts)
            .map(|i| (i * strips / parts * mr, ((i + 1) * strips / parts * mr).min(m), 0, n))
            .filter(|t| t.0 < t.1)
            .collect()
    } else {
        split_columns(m, n, nr, threads)
    }
}

/// Whether [`split_work`] gives each task whole rows (else column ranges).
pub(crate) fn splits_rows(m: usize, n: usize, mr: usize, nr: usize, threads: usize) -> bool {
    m >= mr * 4 * threads.max(1) || n <= nr
}

/// `nr`-aligned column ranges of all `m` rows, one per thread: the split when tasks must not
/// share columns (a [`Fold`](super::Fold) output).
fn split_columns(m: usize, n: usize, nr: usize, threads: usize) -> Vec<(usize, usize, usize, usize)> {
    let cols = n.div_ceil(threads.max(1)).div_ceil(nr) * nr;
    (0..n).step_by(cols).map(|c| (0, m, c, (c + cols).min(n))).collect()
}

/// Splits an `m × n` output for `threads` threads ([`split_work`]) and runs `task(block)` on
/// every block in parallel (see [`crate::parallel`]): the outer loop of every GEMM, fp32
/// ([`sgemm`], which blocks `K` inside a task) and int8 / bf16 ([`drive`]).
pub(crate) fn for_each_block(
    m: usize,
    n: usize,
    mr: usize,
    nr: usize,
    threads: usize,
    task: impl Fn((usize, usize, usize, usize)) + Sync + Send,
) {
    let tasks = split_work(m, n, mr, nr, threads);
    crate::parallel::for_each_index(tasks.len(), |i| task(tasks[i]));
}

/// The order in which [`for_each_tile`] visits a block's micro-tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TileOrder {
    /// Rows of one M block (rounded up to whole micro-tiles).
    pub mc: usize,
    /// Columns of one N block (rounded up to whole panels).
    pub nc: usize,
    /// Within an M × N block: each row strip across all panels (the strip stays in L1 while
    /// the block's panels come from L2), rather than each panel down all strips.
    pub strips_outer: bool,
}

impl TileOrder {
    /// Panel-stationary within [`MC`] × [`NC`] blocks: the order of the VNNI, AVX and
    /// portable kernels.
    pub const PANELS: TileOrder = TileOrder {
        mc: MC,
        nc: NC,
        strips_outer: false,
    };

    /// For AMX: a strip of activations stays in L1 while it meets every panel of an N block
    /// sized to fill about half of L2 (`depth_bytes` per panel column). Measured on a Xeon
    /// (one thread, int8 1024 × 768 × 3072): 1.2× the panel-stationary order; blocks of 512
    /// or 1,024 columns at depth 768 beat 128 and the whole width.
    pub fn strips_for_depth(depth_bytes: usize, nr: usize) -> TileOrder {
        const L2_SHARE: usize = 512 << 10;
        TileOrder {
            mc: MC,
            nc: (L2_SHARE / depth_bytes.max(1)).max(nr) / nr * nr,
            strips_outer: true,
        }
    }
}

/// Calls `tile(r, rows, c)` for every micro-tile (`rows ≤ mr` rows from `r`, an `nr`-column
/// panel from `c`) of the block `r0..r1 × c0..c1`, in `order`'s M × N blocks: the order the
/// int8 and bf16 GEMMs use (the fp32 one also blocks `K`).
pub(crate) fn for_each_tile(
    (r0, r1, c0, c1): (usize, usize, usize, usize),
    mr: usize,
    nr: usize,
    order: TileOrder,
    mut tile: impl FnMut(usize, usize, usize),
) {
    let mcb = order.mc.div_ceil(mr) * mr;
    let ncb = order.nc.div_ceil(nr) * nr;
    for n0 in (c0..c1).step_by(ncb) {
        for m0 in (r0..r1).step_by(mcb) {
            let m1 = (m0 + mcb).min(r1);
            let panels = (n0..(n0 + ncb).min(c1)).step_by(nr);
            if order.strips_outer {
                for r in (m0..m1).step_by(mr) {
                    for c in panels.clone() {
                        tile(r, mr.min(m1 - r), c);
                    }
                }
            } else {
                for c in panels {
                    for r in (m0..m1).step_by(mr) {
                        tile(r, mr.min(m1 - r), c);
                    }
                }
            }
        }
    }
}

/// A raw output pointer that parallel tasks share; each task writes its own block only.
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: tasks write disjoint blocks of the output (see `split_work`).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// The driver of the int8 and bf16 GEMMs: splits an `m × n` output for `threads` threads
/// ([`split_work`], or by columns for a fold), and in each task makes its state with `begin` (a
/// configured tile unit and its accumulator block, for AMX) and calls
/// `tile(state, r, rows, c, target)` for every micro-tile in [`for_each_tile`]'s `order`.
/// Without a fold `target` is `None` and the kernel writes the GEMM's output; with one it is the
/// task's own `mr × nr` scratch block `(pointer, row stride)`, and `tile` returns where its
/// values are (that block, or a block of its own) for `fold`.
///
/// # Safety
/// The micro-kernel contract, for every kernel `tile` calls: it writes only rows
/// `r..r + rows` and the columns of the `nr`-wide panel at `c` (fewer at the right edge) of the
/// output (or the target block); it may read whole `mr`-row strips of its (padded) activations
/// and whole panels of its (padded) weights, which the caller must have laid out so; tasks run
/// in parallel on disjoint blocks, so nothing else may be written. A returned block holds the
/// tile's `rows` rows of its columns at the returned stride.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn drive<S>(
    m: usize,
    n: usize,
    mr: usize,
    nr: usize,
    order: TileOrder,
    threads: usize,
    fold: Option<super::Fold>,
    begin: impl Fn() -> S + Sync + Send,
    tile: impl Fn(&mut S, usize, usize, usize, Option<(*mut f32, usize)>) -> Option<(*const f32, usize)> + Sync + Send,
) {
    let tasks = if fold.is_some() {
        split_columns(m, n, nr, threads)
    } else {
        split_work(m, n, mr, nr, threads)
    };
    crate::parallel::for_each_index(tasks.len(), |i| {
        let mut state = begin();
        let mut scratch = vec![0.0f32; if fold.is_some() { mr * nr } else { 0 }];
        for_each_tile(tasks[i], mr, nr, order, |r, rows, c| {
            let target = fold.map(|_| (scratch.as_mut_ptr(), nr));
            let at = tile(&mut state, r, rows, c, target);
            if let (Some(fold), Some((values, ld))) = (fold, at) {
                let cols = nr.min(n - c);
                fold(super::FoldTile {
                    row: r,
                    rows,
                    col: c,
                    cols,
                    values: std::slice::from_raw_parts(values, (rows - 1) * ld + cols),
                    ld,
                });
            }
        });
    });
}

/// A weight matrix `[n × k]` (PyTorch layout) re-laid out in column panels.
pub struct PackedWeight {
    panels: Vec<f32>,
    n: usize,
    k: usize,
    isa: Isa,
}

impl PackedWeight {
    /// Packs a row-major `[n × k]` weight for `isa`'s micro-kernel.
    pub fn pack(w: &[f32], n: usize, k: usize, isa: Isa) -> Self {
        let nr = isa.nr();
        let count = n.div_ceil(nr);
        let mut panels = vec![0.0f32; count * k * nr];
        for p in 0..count {
            let panel = &mut panels[p * k * nr..(p + 1) * k * nr];
            for c in 0..nr.min(n - p * nr) {
                let row = &w[(p * nr + c) * k..(p * nr + c + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * nr + c] = v;
                }
            }
        }
        Self { panels, n, k, isa }
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// `out[m × n] = act(x[m × k] · Wᵀ + bias)`, rows of `out` `out_stride` apart, on up to
/// `threads` threads of the current rayon pool. The CPU must support the weight's [`Isa`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    match w.isa {
        Isa::Portable => run::<Portable>(x, m, w, bias, act, out, out_stride, threads),
        Isa::Avx2 => {
            assert!(super::has_avx2_fma(), "sgemm needs AVX2 and FMA");
            run::<Avx2>(x, m, w, bias, act, out, out_stride, threads)
        }
        Isa::Avx512 => {
            assert!(super::has_avx512(), "sgemm needs AVX-512F");
            run::<Avx512>(x, m, w, bias, act, out, out_stride, threads)
        }
    }
}

/// The products `x[m × k] · Wᵀ` (no bias) handed to `fold` (see [`super::Fold`]) instead of
/// written out: threads split the columns, and each computes [`FOLD_COLS`] columns of all `m`
/// rows at a time into its own scratch block (which stays in L2) and hands that over.
pub fn sgemm_fold(x: &[f32], m: usize, w: &PackedWeight, fold: super::Fold, threads: usize) {
    match w.isa {
        Isa::Portable => run_fold::<Portable>(x, m, w, fold, threads),
        Isa::Avx2 => {
            assert!(super::has_avx2_fma(), "sgemm needs AVX2 and FMA");
            run_fold::<Avx2>(x, m, w, fold, threads)
        }
        Isa::Avx512 => {
            assert!(super::has_avx512(), "sgemm needs AVX-512F");
            run_fold::<Avx512>(x, m, w, fold, threads)
        }
    }
}

/// Columns of one [`sgemm_fold`] step: its scratch block holds them for every row (1 MB at
/// 512 rows), and the rows are read once per step.
const FOLD_COLS: usize = 4 * NC;

fn run_fold<K: MicroKernel>(x: &[f32], m: usize, w: &PackedWeight, fold: super::Fold, threads: usize) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k);
    assert_eq!(w.panels.len(), n.div_ceil(K::NR) * k * K::NR);
    if m == 0 || n == 0 {
        return;
    }
    let step = FOLD_COLS.div_ceil(K::NR) * K::NR;
    let tasks = split_columns(m, n, K::NR, threads);
    crate::parallel::for_each_index(tasks.len(), |i| {
        let (_, _, c0, c1) = tasks[i];
        let mut scratch = vec![0.0f32; m * step];
        for n0 in (c0..c1).step_by(step) {
            let n1 = (n0 + step).min(c1);
            // SAFETY: the scratch holds `m` rows of `step ≥ n1 - n0` columns (column `c` of
            // the block at `c - n0`) and is this task's own; `x` and the weight were checked.
            unsafe {
                block::<K>(
                    x,
                    k,
                    w,
                    None,
                    Activation::Identity,
                    (scratch.as_mut_ptr(), step, n0),
                    (0, m, n0, n1),
                )
            };
            fold(super::FoldTile {
                row: 0,
                rows: m,
                col: n0,
                cols: n1 - n0,
                values: &scratch[..(m - 1) * step + n1 - n0],
                ld: step,
            });
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn run<K: MicroKernel>(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
    out_stride: usize,
    threads: usize,
) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() >= m * k && out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    assert!(bias.is_none_or(|b| b.len() >= n));
    assert_eq!(w.panels.len(), n.div_ceil(K::NR) * k * K::NR);
    if m == 0 || n == 0 {
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    for_each_block(m, n, K::MR, K::NR, threads, |(r0, r1, c0, c1)| {
        // SAFETY: each task writes rows r0..r1 × columns c0..c1 only; tasks do not overlap and
        // the asserts above bound all of them inside `out`, `x` and the packed weight.
        unsafe { block::<K>(x, k, w, bias, act, (out_ptr.0, out_stride, 0), (r0, r1, c0, c1)) }
    });
}

/// Runs the micro-kernel `K` over output rows `r0..r1` and columns `c0..c1`, output element
/// `(r, c)` at `out + r·ldc + c - col0` (`col0 ≤ c0`: the column `out` starts at).
///
/// # Safety
/// `out` is valid for rows `r0..r1` at `ldc` floats apart and columns `c0 - col0..c1 - col0`, written by no other task; `K`'s CPU features are present.
unsafe fn block<K: MicroKernel>(
    x: &[f32],
    k: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    act: Activation,
    (out, ldc, col0): (*mut f32, usize, usize),
    (r0, r1, c0, c1): (usize, usize, usize, usize),
) {
    let xp = x.as_ptr();
    let (nr, mr) = (K::NR, K::MR);
    let pack = rows_alias_in_l1(k);
    let mut strips = A_STRIPS.with(|cell| cell.take());
    // Whole micro-tiles per block.
    let mcb = MC.div_ceil(mr) * mr;
    let ncb = NC.div_ceil(nr) * nr;
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        let last = k0 + kc == k;
        let act = if last { act } else { Activation::Identity };
        // One MC × NC block: every weight panel of the block against every row strip.
        let run =
            |m0: usize, m1: usize, n0: usize, n1: usize, a_base: *const f32, ars: usize, acs: usize, strip: usize| {
                for c in (n0..n1).step_by(nr) {
                    let cols = nr.min(n1 - c);
                    let panel = w.panels.as_ptr().add((c / nr) * k * nr + k0 * nr);
                    let b = if first { bias.map(|b| b.as_ptr().add(c)) } else { None };
                    for (s, r) in (m0..m1).step_by(mr).enumerate() {
                        let rows = mr.min(m1 - r);
                        let a = a_base.add(s * strip);
                        let dst = out.add(r * ldc + c - col0);
                        K::tile(Tile {
                            rows,
                            kc,
                            a,
                            ars,
                            acs,
                            b: panel,
                            brs: nr,
                            c: dst,
                            ldc,
                            cols,
                            overwrite: first,
                            bias: b,
                            act,
                        });
                    }
                }
            };
        if pack {
            // Rows that alias in L1: copy each MC block's strips as [kc × mr] once, then run
            // every column block against them.
            for m0 in (r0..r1).step_by(mcb) {
                let m1 = (m0 + mcb).min(r1);
                let packed = buffer(&mut strips, (m1 - m0).div_ceil(mr) * mr * kc);
                for (s, r) in (m0..m1).step_by(mr).enumerate() {
                    let dst = &mut packed[s * kc * mr..(s + 1) * kc * mr];
                    for i in 0..mr.min(m1 - r) {
                        let src = &x[(r + i) * k + k0..(r + i) * k + k0 + kc];
                        for (p, &v) in src.iter().enumerate() {
                            dst[p * mr + i] = v;
                        }
                    }
                }
                for n0 in (c0..c1).step_by(ncb) {
                    run(m0, m1, n0, (n0 + ncb).min(c1), packed.as_ptr(), 1, mr, kc * mr);
                }
            }
            continue;
        }
        // Panel-stationary order: one weight panel (KC × NR: 24 KiB for AVX2, 48 KiB for
        // AVX-512) stays in or near L1 while the row strips of an MC block stream past it.
        for n0 in (c0..c1).step_by(ncb) {
            for m0 in (r0..r1).step_by(mcb) {
                let m1 = (m0 + mcb).min(r1);
                run(m0, m1, n0, (n0 + ncb).min(c1), xp.add(m0 * k + k0), k, 1, mr * k);
            }
        }
    }
    A_STRIPS.with(|cell| cell.replace(strips));
}

thread_local! {
    /// Per-thread space for packed row strips of X (see [`rows_alias_in_l1`]).
    static A_STRIPS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// True when rows `k` floats apart all fall into the same L1 sets (a multiple of 4 KiB apart,
/// e.g. widths 1,024 or 3,072): a tile's 14 rows would then evict each other from an 8-way
/// cache, so they are copied into contiguous strips first. Other widths are read in place
/// (packing measured 5% slower where rows only fall into two set groups, width 1,536).
fn rows_alias_in_l1(k: usize) -> bool {
    const LINE: usize = 64;
    const SETS: usize = 64;
    let bytes = k * std::mem::size_of::<f32>();
    if !bytes.is_multiple_of(LINE) {
        return false;
    }
    let step = (bytes / LINE) % SETS;
    let distinct = if step == 0 { 1 } else { SETS / gcd(step, SETS) };
    distinct < 2
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One micro-kernel call: `C[rows × cols] (=|+=) A[rows × kc] · B[kc × NR] (+ bias)`, then
/// `act`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    /// Rows of `A` and `C` (at most the kernel's `MR`).
    pub rows: usize,
    /// The shared (inner) dimension.
    pub kc: usize,
    /// `A`'s element `(r, p)` is at `a + r·ars + p·acs`.
    pub a: *const f32,
    /// Distance between rows of `A`.
    pub ars: usize,
    /// Distance between columns of `A`.
    pub acs: usize,
    /// `B`: `kc` rows of `NR` floats, `brs` apart (`NR` for a packed panel).
    pub b: *const f32,
    /// Distance between rows of `B`.
    pub brs: usize,
    /// `C`'s first element; its rows are `ldc` apart.
    pub c: *mut f32,
    /// Distance between rows of `C`.
    pub ldc: usize,
    /// Columns of `C` written (at most `NR`).
    pub cols: usize,
    /// Store (adding `bias`) when true, else add to what `C` holds.
    pub overwrite: bool,
    /// Added per column when overwriting.
    pub bias: Option<*const f32>,
    /// Applied to the result before it is stored.
    pub act: Activation,
}

/// One register-blocked micro-kernel: `rows ≤ MR` rows × `cols ≤ NR` columns of the output.
/// Also used directly by attention for its two small products per head.
pub(crate) trait MicroKernel {
    /// Output columns per packed panel.
    const NR: usize;
    /// Rows per call.
    const MR: usize;
    /// Computes one [`Tile`].
    ///
    /// # Safety
    /// Every address the tile names must be valid (`NR` floats of each `B` row are read,
    /// whatever `cols` is), `rows ≤ MR`, `cols ≤ NR`, and the CPU must support the kernel's
    /// instruction set.
    unsafe fn tile(t: Tile);
}

/// The AVX2+FMA micro-kernel (6×16).
pub(crate) struct Avx2;
/// The AVX-512F micro-kernel (14×32).
pub(crate) struct Avx512;
/// Plain Rust (4×16) for CPUs without AVX2; LLVM vectorizes it for the baseline target.
pub(crate) struct Portable;

macro_rules! dispatch_rows {
    ($rows:expr, $f:ident, [$($r:literal),*], $args:tt) => {
        match $rows {
            $($r => dispatch_rows!(@call $f, $r, $args),)*
            _ => dispatch_rows!(@call $f, 1, $args),
        }
    };
    (@call $f:ident, $r:literal, ($($a:expr),*)) => { $f::<$r>($($a),*) };
}

impl MicroKernel for Portable {
    const NR: usize = 16;
    const MR: usize = 4;
    unsafe fn tile(t: Tile) {
        dispatch_rows!(t.rows, portable_kernel, [4, 3, 2], (t))
    }
}

/// Fixed-size rows and columns, so LLVM keeps the accumulators in registers and vectorizes
/// for the baseline target.
///
/// # Safety
/// `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
unsafe fn portable_kernel<const R: usize>(t: Tile) {
    const NR: usize = Portable::NR;
    let mut acc = [[0.0f32; NR]; R];
    for p in 0..t.kc {
        let panel = &*(t.b.add(p * t.brs) as *const [f32; NR]);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *t.a.add(r * t.ars + p * t.acs);
            for (o, &w) in row.iter_mut().zip(panel) {
                *o += av * w;
            }
        }
    }
    for (r, row) in acc.iter_mut().enumerate() {
        finish_row::<false>(row, t.c.add(r * t.ldc), t.cols, t.overwrite, t.bias, t.act);
    }
}

impl MicroKernel for Avx2 {
    const NR: usize = 16;
    const MR: usize = 6;
    unsafe fn tile(t: Tile) {
        dispatch_rows!(t.rows, avx2_kernel, [6, 5, 4, 3, 2], (t))
    }
}

impl MicroKernel for Avx512 {
    const NR: usize = 32;
    const MR: usize = 14;
    unsafe fn tile(t: Tile) {
        dispatch_rows!(t.rows, avx512_kernel, [14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2], (t))
    }
}

/// Finishes `rows` rows of a 32×32 block of fp32 sums held in memory (row `r` at `acc + 32·r`):
/// bias, activation and the store of `cols` values to `c + r·ldc`, with the AVX-512 epilogue
/// where the CPU has it. For kernels whose accumulators end in memory (AMX's tiles). Each row
/// is read before it is written, so `c` may be `acc` itself (with `ldc` 32).
///
/// # Safety
/// `acc` holds `rows` rows of 32 values; `c` has room for `rows` rows of `cols ≤ 32` values
/// `ldc` apart; `bias`, when given, holds `cols` values.
pub(crate) unsafe fn finish_rows_from(
    acc: *const f32,
    rows: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<*const f32>,
    act: Activation,
) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        return finish_rows_from_avx512(acc, rows, c, ldc, cols, bias, act);
    }
    for r in 0..rows {
        let mut tmp = [0.0f32; 32];
        std::ptr::copy_nonoverlapping(acc.add(32 * r), tmp.as_mut_ptr(), 32);
        finish_row::<false>(&mut tmp, c.add(r * ldc), cols, true, bias, act);
    }
}

/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth); `acc` is valid for a 32×32 block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn finish_rows_from_avx512(
    acc: *const f32,
    rows: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: Option<*const f32>,
    act: Activation,
) {
    use std::arch::x86_64::*;
    for r in 0..rows {
        let row = acc.add(32 * r);
        finish_avx512(
            _mm512_loadu_ps(row),
            _mm512_loadu_ps(row.add(16)),
            c.add(r * ldc),
            cols,
            true,
            bias,
            act,
        );
    }
}

/// Finishes one output row of a tile held in `tmp[..NR]`: adds the bias (first K block) or the
/// partial sum already in `dst` (later blocks), applies `act`, stores `cols` values.
///
/// # Safety
/// `dst` is valid for `cols` floats (and `bias`, when given, for as many); with `FMA`, the CPU has FMA.
#[inline(always)]
pub(crate) unsafe fn finish_row<const FMA: bool>(
    tmp: &mut [f32],
    dst: *mut f32,
    cols: usize,
    overwrite: bool,
    bias: Option<*const f32>,
    act: Activation,
) {
    for (j, v) in tmp.iter_mut().enumerate().take(cols) {
        *v += if overwrite {
            bias.map(|bp| *bp.add(j)).unwrap_or(0.0)
        } else {
            *dst.add(j)
        };
    }
    if act != Activation::Identity {
        for half in tmp.chunks_exact_mut(16) {
            if let Ok(block) = <&mut [f32; 16]>::try_from(half) {
                act.apply_block::<FMA>(block);
            }
        }
    }
    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
}

/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_kernel<const R: usize>(t: Tile) {
    let Tile {
        kc,
        a,
        ars,
        acs,
        b,
        brs,
        c,
        ldc,
        cols,
        overwrite,
        bias,
        act,
        ..
    } = t;
    use std::arch::x86_64::*;
    /// Panel rows (k steps) to prefetch ahead.
    const PREFETCH: usize = 32;
    // The first step initializes the accumulators (no zeroed array to set up in memory).
    let mut acc: [[__m256; 2]; R] = std::array::from_fn(|r| {
        if kc == 0 {
            return [_mm256_setzero_ps(); 2];
        }
        let av = _mm256_broadcast_ss(&*a.add(r * ars));
        [
            _mm256_mul_ps(av, _mm256_loadu_ps(b)),
            _mm256_mul_ps(av, _mm256_loadu_ps(b.add(8))),
        ]
    });
    for p in 1..kc {
        let b0 = _mm256_loadu_ps(b.add(p * brs));
        let b1 = _mm256_loadu_ps(b.add(p * brs + 8));
        // One 64-byte line per step, 2 KiB ahead (see `avx512_kernel`).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + PREFETCH) * brs) as *const i8);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r * ars + p * acs));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        finish_avx2(row[0], row[1], c.add(r * ldc), cols, overwrite, bias, act);
    }
}

/// Finishes one 16-column output row held in two AVX registers: adds the bias (when
/// overwriting) or the partial sum already in `dst`, applies `act`, stores `cols` values.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `dst` (and `bias`) are valid for `cols` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn finish_avx2(
    mut lo: std::arch::x86_64::__m256,
    mut hi: std::arch::x86_64::__m256,
    dst: *mut f32,
    cols: usize,
    overwrite: bool,
    bias: Option<*const f32>,
    act: Activation,
) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    if cols < NR {
        let mut tmp = [0.0f32; NR];
        _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
        finish_row::<true>(&mut tmp, dst, cols, overwrite, bias, act);
        return;
    }
    if overwrite {
        if let Some(bp) = bias {
            lo = _mm256_add_ps(lo, _mm256_loadu_ps(bp));
            hi = _mm256_add_ps(hi, _mm256_loadu_ps(bp.add(8)));
        }
    } else {
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(dst));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(dst.add(8)));
    }
    if act != Activation::Identity {
        let mut tmp = [0.0f32; NR];
        _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
        act.apply_block::<true>(&mut tmp);
        lo = _mm256_loadu_ps(tmp.as_ptr());
        hi = _mm256_loadu_ps(tmp.as_ptr().add(8));
    }
    _mm256_storeu_ps(dst, lo);
    _mm256_storeu_ps(dst.add(8), hi);
}

/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `t` meets the micro-kernel contract written on [`super::sgemm::drive`] (every address it names valid for its rows, columns and padded depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512_kernel<const R: usize>(t: Tile) {
    let Tile {
        kc,
        a,
        ars,
        acs,
        b,
        brs,
        c,
        ldc,
        cols,
        overwrite,
        bias,
        act,
        ..
    } = t;
    use std::arch::x86_64::*;
    /// Panel rows (k steps) to prefetch ahead.
    const PREFETCH: usize = 16;
    // The first step initializes the accumulators (no zeroed array to set up in memory).
    let mut acc: [[__m512; 2]; R] = std::array::from_fn(|r| {
        if kc == 0 {
            return [_mm512_setzero_ps(); 2];
        }
        let av = _mm512_set1_ps(*a.add(r * ars));
        [
            _mm512_mul_ps(av, _mm512_loadu_ps(b)),
            _mm512_mul_ps(av, _mm512_loadu_ps(b.add(16))),
        ]
    });
    for p in 1..kc {
        let b0 = _mm512_loadu_ps(b.add(p * brs));
        let b1 = _mm512_loadu_ps(b.add(p * brs + 16));
        // Weight panels arrive from L3 and the hardware prefetchers stop at 4 KiB pages:
        // ask for the panel's lines 2 KiB ahead (a hint; past the panel's end it is harmless).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + PREFETCH) * brs) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + PREFETCH) * brs + 16) as *const i8);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * ars + p * acs));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        finish_avx512(row[0], row[1], c.add(r * ldc), cols, overwrite, bias, act);
    }
}

/// Finishes one 32-column output row held in two AVX-512 registers: adds the bias (when
/// overwriting) or the partial sum already in `dst`, applies `act`, stores `cols` values.
/// Columns past `cols` are masked off: never read (bias, partial sums) nor written.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen); `dst` (and `bias`) are valid for `cols` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
pub(crate) unsafe fn finish_avx512(
    mut lo: std::arch::x86_64::__m512,
    mut hi: std::arch::x86_64::__m512,
    dst: *mut f32,
    cols: usize,
    overwrite: bool,
    bias: Option<*const f32>,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let (m_lo, m_hi) = (super::mask16(cols), super::mask16(cols.saturating_sub(16)));
    if overwrite {
        if let Some(bp) = bias {
            lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(m_lo, bp));
            hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(m_hi, bp.wrapping_add(16)));
        }
    } else {
        lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(m_lo, dst));
        hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(m_hi, dst.wrapping_add(16)));
    }
    if act == Activation::Gelu {
        // In registers: the up-projection of every BERT-family layer ends here.
        lo = super::activation::gelu_avx512(lo);
        hi = super::activation::gelu_avx512(hi);
    } else if act != Activation::Identity {
        let mut tmp = [0.0f32; 16];
        for v in [&mut lo, &mut hi] {
            _mm512_storeu_ps(tmp.as_mut_ptr(), *v);
            act.apply_block::<true>(&mut tmp);
            *v = _mm512_loadu_ps(tmp.as_ptr());
        }
    }
    _mm512_mask_storeu_ps(dst, m_lo, lo);
    _mm512_mask_storeu_ps(dst.wrapping_add(16), m_hi, hi);
}

/// Never chosen off x86-64.
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx2_kernel<const R: usize>(_: Tile) {
    unreachable!("sgemm is only called when AVX2+FMA is present")
}

/// Never chosen off x86-64.
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512_kernel<const R: usize>(_: Tile) {
    unreachable!("sgemm is only called when AVX-512F is present")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rows_do_no_work() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if !isa.supported() {
                continue;
            }
            let w = PackedWeight::pack(&[1.0; 6], 2, 3, isa);
            let mut out: Vec<f32> = Vec::new();
            sgemm(&[], 0, &w, Some(&[1.0, 2.0]), Activation::Identity, &mut out, 2, 2);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_fold_sees_every_product_once_as_the_gemm_writes_it() {
        // Widths past one fold step and past the K block, on every kernel this CPU runs.
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if !isa.supported() {
                crate::kernels::report_skipped(&format!("a fold on the fp32 {isa:?} kernel (this CPU lacks it)"));
                continue;
            }
            for &(m, k, n) in &[(1, 5, 7), (33, 64, 100), (70, 500, 1030)] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 0.7).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 480.0) - 0.1).collect();
                let packed = PackedWeight::pack(&w, n, k, isa);
                let mut want = vec![0.0f32; m * n];
                sgemm(&x, m, &packed, None, Activation::Identity, &mut want, n, 2);
                let what = format!("{isa:?} {m}x{k}x{n}");
                crate::kernels::check_fold(m, n, &want, &what, |fold| sgemm_fold(&x, m, &packed, fold, 2));
            }
        }
    }

    #[test]
    fn matches_naive_on_odd_shapes() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if !isa.supported() {
                crate::kernels::report_skipped(&format!("fp32 {isa:?} kernel (this CPU lacks it)"));
                continue;
            }
            for &(m, k, n) in &[
                (1, 1, 1),
                (7, 5, 3),
                (13, 400, 37),
                (50, 800, 130),
                (6, 16, 16),
                (100, 33, 17),
                (31, 70, 96),
                (40, 1024, 40),
            ] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
                let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
                let packed = PackedWeight::pack(&w, n, k, isa);
                let stride = n + 3;
                for threads in [1, 2] {
                    for bias in [None, Some(b.as_slice())] {
                        let mut out = vec![7.0f32; m * stride];
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        pool.install(|| sgemm(&x, m, &packed, bias, Activation::Identity, &mut out, stride, threads));
                        for i in 0..m {
                            for j in 0..n {
                                let want: f64 = bias.map(|b| b[j] as f64).unwrap_or(0.0)
                                    + (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>();
                                let got = out[i * stride + j] as f64;
                                assert!(
                                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                                    "{m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                                );
                            }
                            let mut gelu = vec![0.0f32; m * stride];
                            pool.install(|| sgemm(&x, m, &packed, bias, Activation::Gelu, &mut gelu, stride, threads));
                            let mut expect: Vec<f32> = (0..n).map(|j| out[i * stride + j]).collect();
                            Activation::Gelu.apply(&mut expect);
                            for j in 0..n {
                                assert!((gelu[i * stride + j] - expect[j]).abs() < 1e-5, "fused activation");
                            }
                            for j in n..stride {
                                assert_eq!(out[i * stride + j], 7.0, "padding column written");
                            }
                        }
                    }
                }
            }
        }
    }
}
