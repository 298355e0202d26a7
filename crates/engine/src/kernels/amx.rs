//! Intel AMX: the tile registers and matrix unit of Xeon 4th generation and later, and a
//! software model of the instructions our kernels use.
//!
//! The int8 and bf16 GEMMs' AMX micro-kernels are written once, generic over [`TileUnit`]:
//! [`Amx`] runs them on the real instructions (thin inline-assembly wrappers), [`TileModel`]
//! runs the same schedule — packing, tile shapes, K blocking, epilogue — in plain Rust on any
//! CPU, so the tests check the AMX path everywhere and the real instructions where present.
//!
//! Every kernel uses one tile configuration ([`CONFIG`]): palette 1, all eight tiles 16 rows of
//! 64 bytes. That is a 16×16 i32 or f32 accumulator, 16 rows × 64 u8 or 32 bf16 of
//! activations, and 16 groups of four u8 (or pairs of bf16) × 16 columns of weights, the layout
//! the AVX-512 VNNI and BF16 kernels already read (with 32-column panels the two 16-column
//! halves of a panel row are 64 bytes apart, so a B tile is loaded with a 128-byte stride).
//!
//! Using AMX needs the CPU (CPUID leaf 7: AMX-TILE, AMX-INT8, AMX-BF16) and, on Linux, the
//! kernel's permission for the tile data state, asked once per process with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; a denial is reported in one line and
//! the AVX-512 kernels are used. [`super::ISA_ENV`]`=avx512-vnni` (or narrower) keeps AMX off.

/// Rows of every tile.
pub const TILE_ROWS: usize = 16;
/// Bytes per row of every tile.
pub const TILE_BYTES: usize = 64;

/// The 64-byte `LDTILECFG` operand: palette 1, tiles 0–7 each [`TILE_ROWS`] × [`TILE_BYTES`].
pub const CONFIG: [u8; 64] = {
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    let mut t = 0;
    while t < 8 {
        cfg[16 + 2 * t] = TILE_BYTES as u8;
        cfg[48 + t] = TILE_ROWS as u8;
        t += 1;
    }
    cfg
};

/// The tile instructions the AMX kernels use. Tile registers are named by const generics
/// (0–7) so the hardware wrappers can encode them.
///
/// # Safety
/// Every method is unsafe: the caller must have called [`TileUnit::configure`] on this unit
/// (on this thread, for the hardware) since the last [`TileUnit::release`]; `load` reads and
/// `store` writes [`TILE_ROWS`] rows of [`TILE_BYTES`] bytes, row `r` at `ptr + r·stride`, so
/// all of them must be valid for that access.
pub trait TileUnit {
    /// True for the real instructions, false for the software model.
    const HARDWARE: bool;
    /// `LDTILECFG` with [`CONFIG`].
    ///
    /// # Safety
    /// On the hardware: the process has permission for the tile state ([`has_amx`]).
    unsafe fn configure(&mut self);
    /// `TILERELEASE`: tiles back to their initial state.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn release(&mut self);
    /// `TILEZERO tmm{T}`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn zero<const T: u8>(&mut self);
    /// `TILELOADD tmm{T}, [ptr + stride]`.
    ///
    /// # Safety
    /// See the trait: reads 16 rows of 64 bytes, `stride` apart.
    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize);
    /// `TILESTORED [ptr + stride], tmm{T}`.
    ///
    /// # Safety
    /// See the trait: writes 16 rows of 64 bytes, `stride` apart.
    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize);
    /// `TDPBUSD tmm{C}, tmm{A}, tmm{B}`: `C[m][n] += Σ u8(A[m][4k+i]) · s8(B[k][4n+i])`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `TDPBF16PS tmm{C}, tmm{A}, tmm{B}`: `C[m][n] += Σ A[m][2k+i] · B[k][2n+i]` in fp32.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self);
}

/// The real instructions (x86-64 only; chosen only when [`has_amx`] is true).
#[derive(Default)]
pub struct Amx;

#[cfg(target_arch = "x86_64")]
impl TileUnit for Amx {
    const HARDWARE: bool = true;
    #[inline(always)]
    unsafe fn configure(&mut self) {
        std::arch::asm!("ldtilecfg [{}]", in(reg) CONFIG.as_ptr(), options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem));
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize) {
        std::arch::asm!(
            "tileloadd tmm{t}, [{p} + {s}*1]",
            t = const T, p = in(reg) ptr, s = in(reg) stride,
            options(nostack, readonly)
        );
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize) {
        std::arch::asm!(
            "tilestored [{p} + {s}*1], tmm{t}",
            t = const T, p = in(reg) ptr, s = in(reg) stride,
            options(nostack)
        );
    }
    #[inline(always)]
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {
        std::arch::asm!(
            "tdpbusd tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, nomem)
        );
    }
    #[inline(always)]
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        std::arch::asm!(
            "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, nomem)
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for Amx {
    const HARDWARE: bool = true;
    unsafe fn configure(&mut self) {
        unreachable!("AMX is never chosen off x86-64")
    }
    unsafe fn release(&mut self) {}
    unsafe fn zero<const T: u8>(&mut self) {}
    unsafe fn load<const T: u8>(&mut self, _: *const u8, _: usize) {}
    unsafe fn store<const T: u8>(&mut self, _: *mut u8, _: usize) {}
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {}
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {}
}

/// A software model of the tile registers and the instructions of [`TileUnit`], after Intel's
/// description (SDM vol. 2, "TDPBUSD", "TDPBF16PS"): eight tiles of up to 16 rows × 64 bytes,
/// shaped by the palette-1 configuration. The shapes are those of the loaded configuration,
/// as on the hardware.
pub struct TileModel {
    /// Per tile: (rows, bytes per row); zero until configured.
    shape: [(usize, usize); 8],
    tiles: Box<[[u8; TILE_ROWS * TILE_BYTES]; 8]>,
}

impl Default for TileModel {
    fn default() -> Self {
        Self {
            shape: [(0, 0); 8],
            tiles: Box::new([[0u8; TILE_ROWS * TILE_BYTES]; 8]),
        }
    }
}

impl TileModel {
    /// `LDTILECFG` of any 64-byte configuration (palette 1; palette 0 releases).
    pub fn load_config(&mut self, cfg: &[u8; 64]) {
        self.tiles.iter_mut().for_each(|t| t.fill(0));
        if cfg[0] == 0 {
            self.shape = [(0, 0); 8];
            return;
        }
        assert_eq!(cfg[0], 1, "tile model: only palette 1 exists");
        for t in 0..8 {
            let colsb = u16::from_le_bytes([cfg[16 + 2 * t], cfg[17 + 2 * t]]) as usize;
            let rows = cfg[48 + t] as usize;
            assert!(
                rows <= TILE_ROWS && colsb <= TILE_BYTES,
                "tile model: tile {t} too large"
            );
            self.shape[t] = (rows, colsb);
        }
    }

    fn shape(&self, t: u8) -> (usize, usize) {
        let s = self.shape[t as usize];
        assert!(s.0 > 0 && s.1 > 0, "tile model: tmm{t} used without a configuration");
        s
    }

    /// Row `r`, byte `b` of tile `t`, as a 32-bit element `e` (little endian).
    fn dword(&self, t: u8, r: usize, e: usize) -> [u8; 4] {
        let at = r * TILE_BYTES + 4 * e;
        self.tiles[t as usize][at..at + 4].try_into().unwrap_or([0; 4])
    }

    fn set_dword(&mut self, t: u8, r: usize, e: usize, v: [u8; 4]) {
        let at = r * TILE_BYTES + 4 * e;
        self.tiles[t as usize][at..at + 4].copy_from_slice(&v);
    }

    /// Checks the shapes of a dot-product instruction: `C` is M × N dwords, `A` M × K dwords,
    /// `B` K × N dwords; returns (M, N, K).
    fn dot_shape(&self, c: u8, a: u8, b: u8) -> (usize, usize, usize) {
        let ((mc, nc), (ma, ka), (kb, nb)) = (self.shape(c), self.shape(a), self.shape(b));
        assert!(
            c != a && c != b && a != b,
            "tile model: operands must be distinct tiles"
        );
        assert!(mc == ma && nc == nb && ka / 4 == kb, "tile model: shapes do not agree");
        (mc, nc / 4, ka / 4)
    }

    /// The TDPBUSD of given tiles and register numbers at run time (the model's core).
    pub fn dpbusd_at(&mut self, c: u8, a: u8, b: u8) {
        let (m, n, k) = self.dot_shape(c, a, b);
        for i in 0..m {
            for j in 0..n {
                let mut acc = i32::from_le_bytes(self.dword(c, i, j));
                for kk in 0..k {
                    let (x, w) = (self.dword(a, i, kk), self.dword(b, kk, j));
                    for q in 0..4 {
                        acc = acc.wrapping_add(x[q] as i32 * (w[q] as i8) as i32);
                    }
                }
                self.set_dword(c, i, j, acc.to_le_bytes());
            }
        }
    }

    /// The TDPBF16PS of given tiles: for each pair, the two products (exact in fp32) are added
    /// to the accumulator in order, rounding to nearest even; bf16 denormal inputs count as
    /// zero and denormal results are flushed to zero (the instruction works with DAZ and FTZ
    /// whatever MXCSR says). The hardware sums in an order of its own, so results agree with
    /// it within a few units of fp32 rounding of `|C| + Σ |products|`, not bit for bit.
    pub fn dpbf16ps_at(&mut self, c: u8, a: u8, b: u8) {
        let (m, n, k) = self.dot_shape(c, a, b);
        let bf16 = |lo: u8, hi: u8| -> f32 {
            let v = f32::from_bits((u16::from_le_bytes([lo, hi]) as u32) << 16);
            if v.is_subnormal() {
                0.0 * v.signum()
            } else {
                v
            }
        };
        let ftz = |v: f32| if v.is_subnormal() { 0.0 * v.signum() } else { v };
        for i in 0..m {
            for j in 0..n {
                let mut acc = ftz(f32::from_le_bytes(self.dword(c, i, j)));
                for kk in 0..k {
                    let (x, w) = (self.dword(a, i, kk), self.dword(b, kk, j));
                    for q in 0..2 {
                        let p = bf16(x[2 * q], x[2 * q + 1]) * bf16(w[2 * q], w[2 * q + 1]);
                        acc = ftz(acc + p);
                    }
                }
                self.set_dword(c, i, j, acc.to_le_bytes());
            }
        }
    }
}

impl TileUnit for TileModel {
    const HARDWARE: bool = false;
    unsafe fn configure(&mut self) {
        self.load_config(&CONFIG);
    }
    unsafe fn release(&mut self) {
        self.load_config(&[0; 64]);
    }
    unsafe fn zero<const T: u8>(&mut self) {
        self.shape(T);
        self.tiles[T as usize].fill(0);
    }
    unsafe fn load<const T: u8>(&mut self, ptr: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        let tile = &mut self.tiles[T as usize];
        tile.fill(0);
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(ptr.add(r * stride), tile[r * TILE_BYTES..].as_mut_ptr(), colsb);
        }
    }
    unsafe fn store<const T: u8>(&mut self, ptr: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        let tile = &self.tiles[T as usize];
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(tile[r * TILE_BYTES..].as_ptr(), ptr.add(r * stride), colsb);
        }
    }
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {
        self.dpbusd_at(C, A, B);
    }
    unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        self.dpbf16ps_at(C, A, B);
    }
}

/// True when the CPU has AMX-TILE, AMX-INT8 and AMX-BF16, [`super::ISA_ENV`] allows them
/// (`native`), AVX-512 is there for the epilogues, and the OS granted the tile state. Asked
/// once per process; a denial is reported on stderr in one line.
pub fn has_amx() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = super::isa_cap() >= 4 && super::has_avx512_vnni() && super::has_avx512_bf16() && cpu_has_amx();
            if !cpu {
                return false;
            }
            match request_tile_permission() {
                Ok(()) => true,
                Err(code) => {
                    eprintln!(
                        "openembed: the CPU has AMX but the OS refused the tile state (arch_prctl error {code}); \
                         using the AVX-512 kernels"
                    );
                    false
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22), AMX-TILE (24) and AMX-INT8 (25), and the OS enabling
/// the tile state in XCR0 (bits 17 and 18). (`is_x86_feature_detected!` has no stable AMX
/// names yet.)
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID exists on every x86-64 CPU; leaf 7 is read only when leaf 0 lists it.
    let max_leaf = __cpuid(0).eax;
    let edx7 = if max_leaf >= 7 { __cpuid_count(7, 0).edx } else { 0 };
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    let bits = (1 << 22) | (1 << 24) | (1 << 25);
    if max_leaf < 7 || edx7 & bits != bits || !osxsave {
        return false;
    }
    // SAFETY: XGETBV is available when CPUID reports OSXSAVE (checked above).
    let xcr0 = unsafe { xgetbv0() };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

/// XCR0 (`xgetbv` with ecx = 0).
///
/// # Safety
/// The CPU reports OSXSAVE.
#[cfg(target_arch = "x86_64")]
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nostack, nomem));
    ((hi as u64) << 32) | lo as u64
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux (5.16+) lets a process use
/// the 8 KiB of tile data only after asking. Other systems are taken to allow it when the CPU
/// reports it (CPUID's OSXSAVE state already says the OS saves it).
#[cfg(target_arch = "x86_64")]
fn request_tile_permission() -> Result<(), i64> {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call; it touches no memory of ours, and `syscall` clobbers
        // only rcx and r11 besides rax.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret == 0 {
            Ok(())
        } else {
            Err(-ret)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(())
    }
}

/// Which dot-product instruction a block runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dot {
    /// `TDPBUSD`: u8 activations × s8 weights, 64 per row and step.
    Int8,
    /// `TDPBF16PS`: bf16 × bf16, 32 per row and step.
    Bf16,
}

/// The AMX micro-kernel schedule shared by the int8 and bf16 GEMMs and attention: a block of
/// up to 32 rows × one 32-column panel as 2 × 2 accumulator tiles (tmm0–3), two activation
/// tiles (tmm4, 5: 16 rows × 64 bytes, `lda` bytes apart) and two weight tiles (tmm6, 7: 16
/// groups × 16 columns, the panel's halves 64 bytes apart in its 128-byte rows), `steps` steps
/// of 64 bytes of depth; halves past `rows` or `cols` are skipped. The sums end in `tiles.acc`
/// (32×32, rows 128 bytes apart), or at `out` (32-bit values, rows `stride` bytes apart).
///
/// # Safety
/// `tiles` is configured; `a` holds 32 rows of `64·steps` bytes `lda` apart, `b` a panel of
/// `16·steps` rows of 128 bytes; `out` is valid for the whole 16-row tiles stored (16 rows, or
/// 32 past 16 `rows`, of 16 or 32 values).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block<U: TileUnit>(
    tiles: &mut Tiles<U>,
    dot: Dot,
    a: *const u8,
    lda: usize,
    b: *const u8,
    steps: usize,
    rows: usize,
    cols: usize,
    out: Option<(*mut u8, usize)>,
) {
    let (acc, stride) = out.unwrap_or((tiles.acc.0.as_mut_ptr() as *mut u8, 128));
    let u = &mut tiles.unit;
    const ROW: usize = 128;
    let (two_rows, two_cols) = (rows > 16, cols > 16);
    let a1 = a.add(16 * lda);
    u.zero::<0>();
    u.zero::<1>();
    u.zero::<2>();
    u.zero::<3>();
    for s in 0..steps {
        let b = b.add(s * 16 * ROW);
        u.load::<4>(a.add(s * TILE_BYTES), lda);
        u.load::<6>(b, ROW);
        dot_product::<U, 0, 4, 6>(u, dot);
        if two_cols {
            u.load::<7>(b.add(64), ROW);
            dot_product::<U, 1, 4, 7>(u, dot);
        }
        if two_rows {
            u.load::<5>(a1.add(s * TILE_BYTES), lda);
            dot_product::<U, 2, 5, 6>(u, dot);
            if two_cols {
                dot_product::<U, 3, 5, 7>(u, dot);
            }
        }
    }
    u.store::<0>(acc, stride);
    if two_cols {
        u.store::<1>(acc.add(64), stride);
    }
    if two_rows {
        u.store::<2>(acc.add(16 * stride), stride);
        if two_cols {
            u.store::<3>(acc.add(16 * stride + 64), stride);
        }
    }
}

/// `dot`'s instruction on tiles `C`, `A`, `B`.
///
/// # Safety
/// The [`TileUnit`] contract: `u` is configured and tiles `A`, `B` hold loaded data.
#[inline(always)]
unsafe fn dot_product<U: TileUnit, const C: u8, const A: u8, const B: u8>(u: &mut U, dot: Dot) {
    match dot {
        Dot::Int8 => u.dpbusd::<C, A, B>(),
        Dot::Bf16 => u.dpbf16ps::<C, A, B>(),
    }
}

/// One task's tile unit, configured on creation and released on drop (also when unwinding),
/// with room for a 32×32 block of accumulators that the epilogues read.
pub(crate) struct Tiles<U: TileUnit> {
    pub unit: U,
    /// Four 16×16 accumulator tiles stored as one 32×32 block of 32-bit values (i32 or f32),
    /// rows 128 bytes apart.
    pub acc: Box<AccBlock>,
}

/// A 32×32 block of 32-bit accumulators, cache-line aligned (an unaligned `TILESTORED` is
/// several times slower).
#[repr(C, align(64))]
pub(crate) struct AccBlock(pub [u32; 32 * 32]);

impl AccBlock {
    pub fn as_ptr(&self) -> *const u32 {
        self.0.as_ptr()
    }
    pub fn as_mut_ptr(&mut self) -> *mut u32 {
        self.0.as_mut_ptr()
    }
}

impl<U: TileUnit + Default> Tiles<U> {
    /// A configured unit.
    ///
    /// # Safety
    /// For the hardware unit, [`has_amx`] must be true (the OS granted the tile state).
    pub unsafe fn configured() -> Self {
        let mut unit = U::default();
        unit.configure();
        Self {
            unit,
            acc: Box::new(AccBlock([0; 32 * 32])),
        }
    }
}

impl<U: TileUnit> Drop for Tiles<U> {
    fn drop(&mut self) {
        // SAFETY: configured in `configured`; releasing is always allowed then.
        unsafe { self.unit.release() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record of `../shared/fixtures/amx/*.bin` (see its README).
    struct Record {
        m: usize,
        n: usize,
        kb: usize,
        c_in: Vec<u8>,
        a: Vec<u8>,
        b: Vec<u8>,
        c_out: Vec<u8>,
    }

    fn records(name: &str) -> Vec<Record> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/amx")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut out = Vec::new();
        let mut at = 0;
        let mut take = |len: usize| {
            let s = bytes[at..at + len].to_vec();
            at += len;
            (s, at < bytes.len())
        };
        let mut more = !bytes.is_empty();
        while more {
            // One byte each: M, N, KB, 0.
            let (head, _) = take(4);
            let (m, n, kb) = (head[0] as usize, head[1] as usize, head[2] as usize);
            let (c_in, _) = take(m * n * 4);
            let (a, _) = take(m * kb);
            let (b, _) = take(kb / 4 * n * 4);
            let (c_out, rest) = take(m * n * 4);
            more = rest;
            out.push(Record {
                m,
                n,
                kb,
                c_in,
                a,
                b,
                c_out,
            });
        }
        out
    }

    /// Loads a record's tiles into tiles 0 (C), 1 (A), 2 (B) of a model shaped for it.
    fn model_for(r: &Record) -> TileModel {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for (t, (rows, colsb)) in [(r.m, r.n * 4), (r.m, r.kb), (r.kb / 4, r.n * 4)]
            .into_iter()
            .enumerate()
        {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            cfg[48 + t] = rows as u8;
        }
        let mut model = TileModel::default();
        model.load_config(&cfg);
        unsafe {
            model.load::<0>(r.c_in.as_ptr(), r.n * 4);
            model.load::<1>(r.a.as_ptr(), r.kb);
            model.load::<2>(r.b.as_ptr(), r.n * 4);
        }
        model
    }

    fn stored_c(model: &mut TileModel, r: &Record) -> Vec<u8> {
        let mut out = vec![0u8; r.m * r.n * 4];
        unsafe { model.store::<0>(out.as_mut_ptr(), r.n * 4) };
        out
    }

    #[test]
    fn the_model_of_tdpbusd_matches_the_recorded_instruction_exactly() {
        let records = records("tdpbusd.bin");
        assert_eq!(records.len(), 48);
        for (i, r) in records.iter().enumerate() {
            let mut model = model_for(r);
            model.dpbusd_at(0, 1, 2);
            assert_eq!(
                stored_c(&mut model, r),
                r.c_out,
                "record {i} ({}×{}, K bytes {})",
                r.m,
                r.n,
                r.kb
            );
        }
    }

    #[test]
    fn the_model_of_tdpbf16ps_matches_the_recorded_instruction_within_fp32_rounding() {
        let records = records("tdpbf16ps.bin");
        assert_eq!(records.len(), 48);
        let f = |b: &[u8], i: usize| f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
        let bf = |b: &[u8], i: usize| f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16);
        for (i, r) in records.iter().enumerate() {
            let mut model = model_for(r);
            model.dpbf16ps_at(0, 1, 2);
            let got = stored_c(&mut model, r);
            let k = r.kb / 2;
            for m in 0..r.m {
                for n in 0..r.n {
                    let e = m * r.n + n;
                    let mass = f(&r.c_in, e).abs() as f64
                        + (0..k)
                            .map(|kk| {
                                (bf(&r.a, m * k + kk) as f64 * bf(&r.b, (kk / 2) * r.n * 2 + 2 * n + kk % 2) as f64)
                                    .abs()
                            })
                            .sum::<f64>();
                    let (g, want) = (f(&got, e) as f64, f(&r.c_out, e) as f64);
                    assert!(
                        (g - want).abs() <= 2f64.powi(-21) * mass,
                        "record {i} [{m},{n}]: model {g} vs hardware {want} (mass {mass})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_real_instructions_match_the_model_where_the_cpu_has_them() {
        if !has_amx() {
            crate::kernels::report_skipped("AMX instructions (this CPU or OS lacks them)");
            return;
        }
        for name in ["tdpbusd.bin", "tdpbf16ps.bin"] {
            let records = records(name);
            for r in records.iter().filter(|r| r.m == 16 && r.n == 16 && r.kb == 64) {
                let mut model = model_for(r);
                let got = unsafe {
                    let mut tiles = Tiles::<Amx>::configured();
                    let u = &mut tiles.unit;
                    let mut out = vec![0u8; 1024];
                    u.load::<0>(r.c_in.as_ptr(), 64);
                    u.load::<1>(r.a.as_ptr(), 64);
                    u.load::<2>(r.b.as_ptr(), 64);
                    if name == "tdpbusd.bin" {
                        u.dpbusd::<0, 1, 2>();
                    } else {
                        u.dpbf16ps::<0, 1, 2>();
                    }
                    u.store::<0>(out.as_mut_ptr(), 64);
                    out
                };
                assert_eq!(got, r.c_out, "{name}: the instruction is not what was recorded");
                if name == "tdpbusd.bin" {
                    model.dpbusd_at(0, 1, 2);
                    assert_eq!(stored_c(&mut model, r), got);
                }
            }
        }
    }
}
