//! Scaled dot-product attention over a packed batch, one task per (sequence, head), its two
//! products run on the SGEMM micro-kernels.
//!
//! Queries, keys and values come from one fused projection `[tokens × (q + k + v)]`. Supports
//! grouped-query attention (fewer key/value heads), causal masks, sliding windows and an additive
//! relative-position bias.

use crate::kernels::activation::Activation;
use crate::kernels::amx::{block, Amx, Dot, TileUnit, Tiles};
use crate::kernels::bf16::{round_row_bits_fastest, round_rows};
use crate::kernels::math::{softmax_bf16, softmax_in_place, SOFTMAX_LANES};
use crate::kernels::sgemm::{Avx2, Avx512, Isa, MicroKernel, Portable, Tile};
use crate::kernels::{buffer, Aligned};
use std::cell::RefCell;

/// Which keys a query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every token of the same sequence.
    Bidirectional,
    /// Tokens at or before the query (decoders).
    Causal,
    /// Tokens within `window / 2` positions on either side (ModernBERT local layers).
    SlidingWindow(usize),
}

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (equal to `heads` without grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl HeadLayout {
    /// Width of the fused q|k|v row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of the attention output row.
    pub fn out_width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// An additive bias per head and relative distance `key - query`, for distances
/// `-(span-1) ..= span-1`.
pub struct RelativeBias {
    /// `values[h * (2 * span - 1) + (rel + span - 1)]`.
    pub values: Vec<f32>,
    /// Longest sequence the table covers.
    pub span: usize,
}

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, head) blocks of the output; see `attention`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Per-thread packed copies of one head's keys and values, plus a block of score rows.
#[derive(Default)]
struct HeadScratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static HEAD_SCRATCH: RefCell<HeadScratch> = RefCell::new(HeadScratch::default());
}

/// How attention's two products are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    /// fp32 operands on the SGEMM micro-kernels.
    #[default]
    Float32,
    /// bf16 operands with fp32 sums on AMX tiles where the CPU has them (fp32 elsewhere): the
    /// products of a model whose dense layers run in reduced precision. Softmax stays fp32.
    Bf16,
}

/// Computes attention for every sequence of a packed batch: reads `qkv` (`tokens × qkv_width`),
/// writes `out` (`tokens × out_width`). `attended`, when given, limits each sequence's keys to
/// its first `attended[s]` tokens (on top of `mask`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    out: &mut [f32],
    offsets: &[usize],
    attended: Option<&[usize]>,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
    products: Products,
) {
    if products == Products::Bf16 && crate::kernels::bf16::amx_usable() {
        return attention_tiles::<Amx>(qkv, out, offsets, attended, layout, mask, bias);
    }
    match Isa::detect() {
        Isa::Avx512 => attention_with::<Avx512>(qkv, out, offsets, attended, layout, mask, bias),
        Isa::Avx2 => attention_with::<Avx2>(qkv, out, offsets, attended, layout, mask, bias),
        Isa::Portable => attention_with::<Portable>(qkv, out, offsets, attended, layout, mask, bias),
    }
}

fn attention_with<K: MicroKernel>(
    qkv: &[f32],
    out: &mut [f32],
    offsets: &[usize],
    attended: Option<&[usize]>,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
) {
    let (_, seqs) = checked(qkv, out, offsets, attended, layout, bias);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    crate::parallel::for_each_index(seqs * layout.heads, |task| {
        let (s, h) = (task / layout.heads, task % layout.heads);
        let (start, end) = (offsets[s], offsets[s + 1]);
        let keys = attended.map_or(end - start, |a| a[s].clamp(1, (end - start).max(1)));
        HEAD_SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            // SAFETY: this task alone writes columns h*d..(h+1)*d of rows start..end; the
            // asserts above bound them (and every row of `qkv` read) within the slices, and
            // `Isa::detect` chose a kernel this CPU runs.
            unsafe {
                let block = out_ptr.0.add(start * layout.out_width() + h * layout.head_dim);
                attend_one::<K>(qkv, start, end, keys, h, layout, mask, bias, &mut guard, block)
            }
        });
    });
}

/// Checks what both attention paths rely on (every buffer long enough for the batch, the
/// head grouping, ordered offsets, a bias table and key limits that cover every sequence);
/// returns (tokens, sequences).
fn checked(
    qkv: &[f32],
    out: &[f32],
    offsets: &[usize],
    attended: Option<&[usize]>,
    layout: HeadLayout,
    bias: Option<&RelativeBias>,
) -> (usize, usize) {
    let tokens = offsets.last().copied().unwrap_or(0);
    assert!(qkv.len() >= tokens * layout.qkv_width() && out.len() >= tokens * layout.out_width());
    assert!(layout.kv_heads > 0 && layout.heads.is_multiple_of(layout.kv_heads));
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    if let Some(b) = bias {
        let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(b.span >= longest && b.values.len() >= layout.heads * (2 * b.span - 1));
    }
    let seqs = offsets.len().saturating_sub(1);
    assert!(attended.is_none_or(|a| a.len() >= seqs));
    (tokens, seqs)
}

/// The keys query `i` of a `len`-token sequence may attend to, of its first `keys` tokens
/// (`1 ≤ keys ≤ len`).
fn key_range(mask: Mask, i: usize, len: usize, keys: usize) -> (usize, usize) {
    let (lo, hi) = match mask {
        Mask::Bidirectional => (0, len),
        Mask::Causal => (0, i + 1),
        Mask::SlidingWindow(w) => (i.saturating_sub(w / 2), (i + w / 2 + 1).min(len)),
    };
    let hi = hi.min(keys);
    (lo.min(hi.saturating_sub(1)), hi)
}

/// One (sequence, head): `softmax(q·kᵀ/√d + bias) · v` as two products on the SGEMM
/// micro-kernel, `K::MR` queries at a time, each over the keys its mask allows among the first
/// `keys`.
///
/// # Safety
/// `out` must address this head's `d` columns of rows `start..end` (row stride `out_width`),
/// and the CPU must run `K`.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one<K: MicroKernel>(
    qkv: &[f32],
    start: usize,
    end: usize,
    keys_attended: usize,
    h: usize,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
    scratch: &mut HeadScratch,
    out: *mut f32,
) {
    let (nr, mr) = (K::NR, K::MR);
    let d = layout.head_dim;
    let stride = layout.qkv_width();
    let kvh = h / (layout.heads / layout.kv_heads);
    let k_off = layout.heads * d + kvh * d;
    let v_off = (layout.heads + layout.kv_heads) * d + kvh * d;
    let scale = 1.0 / (d as f32).sqrt();
    let len = end - start;
    if len == 0 {
        return; // an empty sequence has no queries (and no panels to size)
    }
    let ow = layout.out_width();
    let (lp, dp) = (len.div_ceil(nr) * nr, d.div_ceil(nr) * nr);

    // Scaled keys as panels of `nr` keys (`[d × nr]` each), the layout the micro-kernel
    // streams. Panel padding is left as it is: those scores become −∞ before softmax.
    let keys = buffer(&mut scratch.keys, lp * d);
    for (pc, panel) in keys.chunks_exact_mut(d * nr).enumerate() {
        let j0 = pc * nr;
        let src = qkv.as_ptr().add((start + j0) * stride + k_off);
        pack_keys(src, stride, nr.min(len - j0), d, scale, panel.as_mut_ptr(), nr);
    }
    // Values are read in place when a head is whole panels wide; otherwise they are copied
    // into zero-padded panels of `nr` columns (`[lp × nr]` each).
    let values_in_place = d.is_multiple_of(nr);
    let values = buffer(&mut scratch.values, if values_in_place { 0 } else { dp * lp });
    for (vb, panel) in values.chunks_exact_mut(lp * nr).enumerate() {
        let (x0, width) = (vb * nr, nr.min(d - vb * nr));
        for (j, row) in panel.chunks_exact_mut(nr).enumerate().take(len) {
            row[..width].copy_from_slice(&qkv[(start + j) * stride + v_off + x0..][..width]);
            row[width..].fill(0.0);
        }
    }
    let scores = buffer(&mut scratch.scores, mr * lp);

    for r0 in (0..len).step_by(mr) {
        let rows = mr.min(len - r0);
        // Ranges only grow with the query index, so the block needs keys from the first
        // row's start to the last row's end (whole panels).
        let klo = key_range(mask, r0, len, keys_attended).0 / nr * nr;
        let khi = key_range(mask, r0 + rows - 1, len, keys_attended).1.div_ceil(nr) * nr;
        let q = qkv.as_ptr().add((start + r0) * stride + h * d);
        for c in (klo..khi).step_by(nr) {
            K::tile(Tile {
                rows,
                kc: d,
                a: q,
                ars: stride,
                acs: 1,
                b: keys.as_ptr().add((c / nr) * d * nr),
                brs: nr,
                c: scores.as_mut_ptr().add(c),
                ldc: lp,
                cols: nr,
                overwrite: true,
                bias: None,
                act: Activation::Identity,
            });
        }
        // Padding keys weigh 0: the value product stops at the last real key.
        let kend = khi.min(len);
        for i in 0..rows {
            let keys = key_range(mask, r0 + i, len, keys_attended);
            probabilities(
                &mut scores[i * lp..(i + 1) * lp],
                bias,
                h,
                r0 + i,
                keys,
                (klo, khi, kend),
            );
        }
        for vb in 0..dp / nr {
            let (b, brs) = if values_in_place {
                (qkv.as_ptr().add((start + klo) * stride + v_off + vb * nr), stride)
            } else {
                (values.as_ptr().add(vb * lp * nr + klo * nr), nr)
            };
            K::tile(Tile {
                rows,
                kc: kend - klo,
                a: scores.as_ptr().add(klo),
                ars: lp,
                acs: 1,
                b,
                brs,
                c: out.add(r0 * ow + vb * nr),
                ldc: ow,
                cols: nr.min(d - vb * nr),
                overwrite: true,
                bias: None,
                act: Activation::Identity,
            });
        }
    }
}

/// Per-thread bf16 operands of one head on AMX tiles, and a block of score rows.
#[derive(Default)]
struct TileScratch {
    /// Queries as 32-row strips of `dp` values (when a head is not whole tile rows wide).
    queries: Aligned<u16>,
    /// Keys as 32-key panels of pairs along the head dimension.
    keys: Aligned<u16>,
    /// Values as 32-column panels of pairs along the keys.
    values: Aligned<u16>,
    /// Softmax rows in bf16.
    probs: Aligned<u16>,
    scores: Vec<f32>,
}

thread_local! {
    static TILE_SCRATCH: RefCell<TileScratch> = RefCell::new(TileScratch::default());
    /// The batch's q|k|v rows rounded to bf16 (the calling thread's, read by every task).
    static QKV_BITS: RefCell<Aligned<u16>> = RefCell::new(Aligned::default());
}

/// Rows and columns of an AMX block ([`crate::kernels::amx::block`]).
const BLOCK: usize = 32;

struct BitsPtr(*const u16);
// SAFETY: tasks only read the rounded rows, which outlive them (see `attention_tiles`).
unsafe impl Send for BitsPtr {}
unsafe impl Sync for BitsPtr {}

/// [`attention`] with bf16 products on the tile instructions of `U` (the hardware, or the
/// software model in tests): q|k|v rounded to bf16 once, then per (sequence, head) the two
/// products as [`crate::kernels::amx::block`]s with fp32 sums, the softmax in fp32 between them.
pub(crate) fn attention_tiles<U: TileUnit + Default>(
    qkv: &[f32],
    out: &mut [f32],
    offsets: &[usize],
    attended: Option<&[usize]>,
    layout: HeadLayout,
    mask: Mask,
    bias: Option<&RelativeBias>,
) {
    let (tokens, seqs) = checked(qkv, out, offsets, attended, layout, bias);
    let w = layout.qkv_width();
    QKV_BITS.with(|cell| {
        let mut bits = cell.borrow_mut();
        // A block of rows past the last token, zero: query tiles read whole 32-row strips.
        let rounded = bits.resize((tokens + BLOCK) * w);
        rounded[tokens * w..].fill(0);
        round_rows(
            &qkv[..tokens * w],
            w,
            &mut rounded[..tokens * w],
            w,
            round_row_bits_fastest(),
        );
        let rounded = BitsPtr(rounded.as_ptr());
        let rounded = &rounded;
        let out_ptr = OutPtr(out.as_mut_ptr());
        let out_ptr = &out_ptr;
        // Tasks in groups, so that a thread configures its tiles once per group (LDTILECFG
        // and TILERELEASE are not free) while the groups still balance the threads.
        let tasks = seqs * layout.heads;
        let groups = tasks.min(16 * rayon::current_num_threads().max(1));
        crate::parallel::for_each_index(groups, |g| {
            TILE_SCRATCH.with(|cell| {
                let mut scratch = cell.borrow_mut();
                // SAFETY: configured on this thread for this group; the hardware's use was
                // checked by the caller (`amx_usable`), the model needs nothing.
                let mut tiles = unsafe { Tiles::<U>::configured() };
                for task in g * tasks / groups..(g + 1) * tasks / groups {
                    let (s, h) = (task / layout.heads, task % layout.heads);
                    let (start, end) = (offsets[s], offsets[s + 1]);
                    let keys = attended.map_or(end - start, |a| a[s].clamp(1, (end - start).max(1)));
                    // SAFETY: the rounded rows hold `tokens + BLOCK` rows of `w` values and live
                    // until every task is done; this task alone writes columns h*d..(h+1)*d of
                    // rows start..end of `out` (bounded by the asserts above).
                    unsafe {
                        let block = out_ptr.0.add(start * layout.out_width() + h * layout.head_dim);
                        attend_one_tiles(
                            rounded.0,
                            bias,
                            (start, end, keys, h),
                            layout,
                            mask,
                            &mut scratch,
                            &mut tiles,
                            block,
                        )
                    }
                }
            });
        });
    });
}

/// One (sequence, head) of [`attention_tiles`]: `seq` is (start, end, keys attended, head).
///
/// # Safety
/// `bits` holds the rounded q|k|v rows of the batch plus [`BLOCK`] zero rows; `out` addresses
/// this head's `d` columns of rows `start..end` (row stride `out_width`); `tiles` is configured.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one_tiles<U: TileUnit>(
    bits: *const u16,
    bias: Option<&RelativeBias>,
    (start, end, keys_attended, h): (usize, usize, usize, usize),
    layout: HeadLayout,
    mask: Mask,
    scratch: &mut TileScratch,
    tiles: &mut Tiles<U>,
    out: *mut f32,
) {
    let len = end - start;
    if len == 0 {
        return;
    }
    let d = layout.head_dim;
    let w = layout.qkv_width();
    let ow = layout.out_width();
    let kvh = h / (layout.heads / layout.kv_heads);
    let (k_off, v_off) = (
        layout.heads * d + kvh * d,
        (layout.heads + layout.kv_heads) * d + kvh * d,
    );
    let scale = 1.0 / (d as f32).sqrt();
    // Head width in whole tile rows (32 bf16), keys in whole blocks.
    let dp = d.next_multiple_of(BLOCK);
    let lp = len.next_multiple_of(BLOCK);
    let row = |t: usize| bits.add((start + t) * w);
    // Queries: read in place when a head is whole tile rows wide, else copied zero padded.
    let (q, lda) = if d == dp {
        (row(0).add(h * d), 2 * w)
    } else {
        let q = scratch.queries.resize(lp * dp);
        for (t, dst) in q.chunks_exact_mut(dp).enumerate() {
            if t < len {
                dst[..d].copy_from_slice(std::slice::from_raw_parts(row(t).add(h * d), d));
                dst[d..].fill(0);
            } else {
                dst.fill(0);
            }
        }
        (q.as_ptr(), 2 * dp)
    };
    // Keys: panels of 32 keys, row `p` of a panel holding elements 2p, 2p+1 of each key (one
    // 32-bit pair per key); values: panels of 32 columns, row `p` holding keys 2p, 2p+1 of each
    // column. Padding keys and elements are zero.
    let pair_rows = dp / 2;
    let vpanels = d.div_ceil(BLOCK);
    let keys = scratch.keys.resize(lp * dp);
    let values = scratch.values.resize(vpanels * lp * BLOCK);
    let (k_src, v_src) = (row(0).add(k_off), row(0).add(v_off));
    #[cfg(target_arch = "x86_64")]
    let packed = crate::kernels::has_avx512() && {
        pack_avx512(k_src, v_src, w, len, d, keys, values);
        true
    };
    #[cfg(not(target_arch = "x86_64"))]
    let packed = false;
    if !packed {
        pack_portable(k_src, v_src, w, len, d, keys, values);
    }
    let scores = buffer(&mut scratch.scores, BLOCK * lp);
    let probs = scratch.probs.resize(BLOCK * lp);
    let round = round_row_bits_fastest();
    let acc = tiles.acc.as_ptr() as *const f32;
    for r0 in (0..len).step_by(BLOCK) {
        let rows = BLOCK.min(len - r0);
        let klo = key_range(mask, r0, len, keys_attended).0 / BLOCK * BLOCK;
        let khi = key_range(mask, r0 + rows - 1, len, keys_attended)
            .1
            .next_multiple_of(BLOCK);
        // The products go straight into the score rows, unscaled (the softmax scales them as it
        // loads them; the other path below scales them first).
        for c in (klo..khi).step_by(BLOCK) {
            let b = keys.as_ptr().add((c / BLOCK) * pair_rows * 2 * BLOCK);
            block(
                tiles,
                Dot::Bf16,
                q.add(r0 * lda / 2) as *const u8,
                lda,
                b as *const u8,
                dp / BLOCK,
                rows,
                BLOCK,
                Some((scores.as_mut_ptr().add(c) as *mut u8, 4 * lp)),
            );
        }
        let kend = khi.min(len);
        for i in 0..rows {
            let keys = key_range(mask, r0 + i, len, keys_attended);
            let srow = &mut scores[i * lp..(i + 1) * lp];
            // Without a bias, in one pass over the row in L1 where the CPU can (the same bits).
            if bias.is_none()
                && keys.0 < keys.1
                && softmax_bf16(
                    &mut srow[klo..khi],
                    (keys.0 - klo, keys.1 - klo),
                    scale,
                    &mut probs[i * lp + klo..i * lp + khi],
                )
                .is_some()
            {
                continue;
            }
            srow[klo..khi].iter_mut().for_each(|s| *s *= scale);
            probabilities(srow, bias, h, r0 + i, keys, (klo, khi, kend));
            // In bf16; the block's padding keys past `kend` are zero.
            round(&srow[klo..kend.max(klo)], &mut probs[i * lp + klo..i * lp + khi]);
        }
        let steps = (khi - klo) / BLOCK;
        for vp in 0..vpanels {
            let cols = BLOCK.min(d - vp * BLOCK);
            let b = values.as_ptr().add(vp * lp * BLOCK + (klo / 2) * 2 * BLOCK);
            let a = probs.as_ptr().add(klo);
            block(
                tiles,
                Dot::Bf16,
                a as *const u8,
                2 * lp,
                b as *const u8,
                steps,
                rows,
                cols,
                None,
            );
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(acc.add(i * BLOCK), out.add((r0 + i) * ow + vp * BLOCK), cols);
            }
        }
    }
}

/// The key and value panels of [`attend_one_tiles`] from one head's bf16 keys and values
/// (`len` rows of `d`, `w` apart, at `k` and `v`), in plain Rust.
///
/// # Safety
/// `k` and `v` address `len` rows of `d` values `w` apart; `keys` holds `lp·dp` and `values`
/// `⌈d/32⌉·lp·32` values (`lp`, `dp`: `len` and `d` rounded up to 32).
unsafe fn pack_portable(
    k: *const u16,
    v: *const u16,
    w: usize,
    len: usize,
    d: usize,
    keys: &mut [u16],
    values: &mut [u16],
) {
    let (lp, pair_rows) = (len.next_multiple_of(BLOCK), d.next_multiple_of(BLOCK) / 2);
    keys.fill(0);
    values.fill(0);
    for j in 0..len {
        let src = std::slice::from_raw_parts(k.add(j * w), d);
        let panel = &mut keys[(j / BLOCK) * pair_rows * 2 * BLOCK..];
        for (x, &e) in src.iter().enumerate() {
            panel[(x / 2) * 2 * BLOCK + 2 * (j % BLOCK) + x % 2] = e;
        }
        let src = std::slice::from_raw_parts(v.add(j * w), d);
        for (x, &e) in src.iter().enumerate() {
            values[(x / BLOCK) * lp * BLOCK + (j / 2) * 2 * BLOCK + 2 * (x % BLOCK) + j % 2] = e;
        }
    }
}

/// [`pack_portable`] on AVX-512: keys gathered 16 pairs at a time, values interleaved two rows
/// at a time.
///
/// # Safety
/// As [`pack_portable`]; the CPU has AVX-512F/BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn pack_avx512(
    k: *const u16,
    v: *const u16,
    w: usize,
    len: usize,
    d: usize,
    keys: &mut [u16],
    values: &mut [u16],
) {
    use std::arch::x86_64::*;
    let (lp, pair_rows) = (len.next_multiple_of(BLOCK), d.next_multiple_of(BLOCK) / 2);
    // Keys: pair `p` of 16 keys is one gather (rows `w` values apart, indexed in 2-byte units);
    // pairs past `d/2` and keys past `len` are zero.
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(w as i32));
    let odd = d % 2 == 1;
    for j0 in (0..lp).step_by(16) {
        let valid = crate::kernels::mask16(len.saturating_sub(j0));
        let panel = keys
            .as_mut_ptr()
            .add((j0 / BLOCK) * pair_rows * 2 * BLOCK + 2 * (j0 % BLOCK));
        let base = k.add(j0.min(len.saturating_sub(1)) * w);
        for p in 0..pair_rows {
            let pairs = if p < d / 2 && valid != 0 {
                _mm512_mask_i32gather_epi32::<2>(_mm512_setzero_si512(), valid, index, base.add(2 * p) as *const _)
            } else {
                _mm512_setzero_si512()
            };
            _mm512_storeu_si512(panel.add(p * 2 * BLOCK) as *mut _, pairs);
        }
        if odd {
            // The last element alone (its pair's second half is zero).
            for j in j0..(j0 + 16).min(len) {
                *panel.add((d / 2) * 2 * BLOCK + 2 * (j - j0)) = *k.add(j * w + d - 1);
            }
        }
    }
    // Values: keys 2p and 2p+1 interleaved, 32 columns (one panel row) at a time.
    let first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    let second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for p in 0..lp / 2 {
        for panel in 0..d.div_ceil(BLOCK) {
            let cols = crate::kernels::mask16(d - panel * BLOCK) as u32
                | (crate::kernels::mask16((d - panel * BLOCK).saturating_sub(16)) as u32) << 16;
            let load = |j: usize| {
                if j < len {
                    _mm512_maskz_loadu_epi16(cols, v.add(j * w + panel * BLOCK) as *const _)
                } else {
                    _mm512_setzero_si512()
                }
            };
            let (a, b) = (load(2 * p), load(2 * p + 1));
            let (lo, hi) = (_mm512_unpacklo_epi16(a, b), _mm512_unpackhi_epi16(a, b));
            let dst = values.as_mut_ptr().add(panel * lp * BLOCK + p * 2 * BLOCK);
            _mm512_storeu_si512(dst as *mut _, _mm512_permutex2var_epi64(lo, first, hi));
            _mm512_storeu_si512(dst.add(BLOCK) as *mut _, _mm512_permutex2var_epi64(lo, second, hi));
        }
    }
}

/// One query's scores (keys `klo..khi` of `row`) to probabilities: the relative bias of head
/// `h` added, the keys outside its range `lo..hi` at −∞ (which softmax turns into exactly 0, so
/// it runs over whole vectors, from the block's first key to the row's last rounded up), and
/// the keys from there to `kend` (the last real key) 0.
fn probabilities(
    row: &mut [f32],
    bias: Option<&RelativeBias>,
    h: usize,
    query: usize,
    (lo, hi): (usize, usize),
    (klo, khi, kend): (usize, usize, usize),
) {
    if let Some(b) = bias {
        let width = 2 * b.span - 1;
        let table = &b.values[h * width..(h + 1) * width];
        // rel = j - i sits at index j - i + span - 1.
        let base = b.span - 1 - query;
        for (r, &t) in row[lo..hi].iter_mut().zip(&table[base + lo..base + hi]) {
            *r += t;
        }
    }
    let e = hi.next_multiple_of(SOFTMAX_LANES).min(khi);
    row[klo..lo].fill(f32::NEG_INFINITY);
    row[hi..e].fill(f32::NEG_INFINITY);
    softmax_in_place(&mut row[klo..e]);
    if e < kend {
        row[e..kend].fill(0.0);
    }
}

/// Writes `count` keys (`d` floats each, rows `stride` apart from `src`) times `scale` as the
/// first `count` columns of a `[d × nr]` panel; 8×8 blocks go through registers on AVX CPUs.
///
/// # Safety
/// `src` must address `count` rows of `d` floats, `panel` `d · nr` floats, `count ≤ nr`.
unsafe fn pack_keys(src: *const f32, stride: usize, count: usize, d: usize, scale: f32, panel: *mut f32, nr: usize) {
    let (mut full_rows, mut full_cols) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::has_avx2_fma() {
        (full_rows, full_cols) = (count / 8 * 8, d / 8 * 8);
        transpose_8x8_blocks(src, stride, full_rows, full_cols, scale, panel, nr);
    }
    for j in 0..count {
        let from = if j < full_rows { full_cols } else { 0 };
        for x in from..d {
            *panel.add(x * nr + j) = *src.add(j * stride + x) * scale;
        }
    }
}

/// The `rows × cols` corner (both multiples of 8) of [`pack_keys`], 8×8 blocks at a time.
///
/// # Safety
/// the CPU has the features this function is compiled for (checked where it is chosen).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_8x8_blocks(
    src: *const f32,
    stride: usize,
    rows: usize,
    cols: usize,
    scale: f32,
    panel: *mut f32,
    nr: usize,
) {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps(scale);
    for j in (0..rows).step_by(8) {
        for x in (0..cols).step_by(8) {
            let r: [__m256; 8] =
                std::array::from_fn(|i| _mm256_mul_ps(s, _mm256_loadu_ps(src.add((j + i) * stride + x))));
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let u = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            // u[i] holds columns i and i + 4 of rows 0..4, u[i + 4] the same of rows 4..8.
            for i in 0..4 {
                let low = _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]);
                let high = _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]);
                _mm256_storeu_ps(panel.add((x + i) * nr + j), low);
                _mm256_storeu_ps(panel.add((x + i + 4) * nr + j), high);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(qkv: &[f32], len: usize, keys: usize, l: HeadLayout, mask: Mask, bias: Option<&RelativeBias>) -> Vec<f32> {
        let (d, w) = (l.head_dim, l.qkv_width());
        let mut out = vec![0.0; len * l.out_width()];
        for h in 0..l.heads {
            let kvh = h / (l.heads / l.kv_heads);
            for i in 0..len {
                let (lo, hi) = key_range(mask, i, len, keys);
                let s: Vec<f64> = (lo..hi)
                    .map(|j| {
                        let dot = (0..d)
                            .map(|x| qkv[i * w + h * d + x] as f64 * qkv[j * w + (l.heads + kvh) * d + x] as f64)
                            .sum::<f64>();
                        let rel = bias.map_or(0.0, |b| b.values[h * (2 * b.span - 1) + j + b.span - 1 - i] as f64);
                        dot / (d as f64).sqrt() + rel
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for x in 0..d {
                    out[i * l.out_width() + h * d + x] = (lo..hi)
                        .map(|j| (s[j - lo] - m).exp() / z * qkv[j * w + (l.heads + l.kv_heads + kvh) * d + x] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    /// The signature of [`attention_with`] and [`attention_tiles`].
    type Attend<'a> =
        &'a dyn Fn(&[f32], &mut [f32], &[usize], Option<&[usize]>, HeadLayout, Mask, Option<&RelativeBias>);

    /// Runs `attend` on every head layout (head widths that are and are not whole panels or
    /// tile rows, grouped queries), mask, relative bias and key limit, on lengths below, at and
    /// across the kernels' row and column blocks, and compares each sequence with [`naive`]
    /// on the operands as `operand` gives them, within `tolerance`.
    fn check_all(name: &str, tolerance: f32, operand: fn(f32) -> f32, attend: Attend<'_>) {
        let layouts = [
            HeadLayout {
                heads: 2,
                kv_heads: 2,
                head_dim: 12,
            },
            HeadLayout {
                heads: 4,
                kv_heads: 2,
                head_dim: 40,
            },
            // Whole panels wide for every kernel: values are read in place.
            HeadLayout {
                heads: 3,
                kv_heads: 3,
                head_dim: 32,
            },
            HeadLayout {
                heads: 2,
                kv_heads: 1,
                head_dim: 64,
            },
        ];
        let masks = [Mask::Bidirectional, Mask::Causal, Mask::SlidingWindow(6)];
        let lens = [3usize, 1, 17, 40, 33, 70];
        let longest = *lens.iter().max().unwrap_or(&1);
        // Each sequence's keys cut to its first few (ColBERT's unattended query expansion).
        let cut = [2usize, 1, 9, 40, 20, 50];
        for (layout, attended) in layouts.into_iter().flat_map(|l| [(l, None), (l, Some(&cut[..]))]) {
            for mask in masks {
                for with_bias in [false, true] {
                    let w = layout.qkv_width();
                    let total: usize = lens.iter().sum();
                    let qkv: Vec<f32> = (0..total * w)
                        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                        .collect();
                    let operands: Vec<f32> = qkv.iter().map(|&v| operand(v)).collect();
                    let bias = with_bias.then(|| RelativeBias {
                        values: (0..layout.heads * (2 * longest - 1))
                            .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1)
                            .collect(),
                        span: longest,
                    });
                    let mut offsets = vec![0];
                    for l in lens {
                        offsets.push(offsets.last().unwrap() + l);
                    }
                    let mut out = vec![f32::NAN; total * layout.out_width()];
                    attend(&qkv, &mut out, &offsets, attended, layout, mask, bias.as_ref());
                    for s in 0..lens.len() {
                        let (a, b) = (offsets[s], offsets[s + 1]);
                        let keys = attended.map_or(b - a, |c| c[s].min(b - a));
                        let want = naive(&operands[a * w..b * w], b - a, keys, layout, mask, bias.as_ref());
                        let got = &out[a * layout.out_width()..b * layout.out_width()];
                        for (x, y) in got.iter().zip(&want) {
                            assert!(
                                (x - y).abs() < tolerance,
                                "{name} d {} {mask:?} bias {with_bias} keys {attended:?}: {x} vs {y}",
                                layout.head_dim
                            );
                        }
                    }
                }
            }
        }
    }

    fn check<K: MicroKernel>(name: &str) {
        check_all(name, 1e-5, |v| v, &|q, o, off, a, l, m, b| {
            attention_with::<K>(q, o, off, a, l, m, b)
        });
    }

    #[test]
    fn packed_attention_equals_per_sequence_on_every_kernel() {
        check::<Portable>("portable");
        if crate::kernels::has_avx2_fma() {
            check::<Avx2>("avx2");
        }
        if crate::kernels::has_avx512() {
            check::<Avx512>("avx512");
        }
    }

    /// The bf16 tile path against attention computed in f64 from the same bf16-rounded q, k
    /// and v: what is left is the rounding of the probabilities to bf16 (2⁻⁹ relative) and fp32
    /// sums.
    fn check_tiles<U: TileUnit + Default>(name: &str) {
        let bf = |v: f32| crate::kernels::bf16::from_bf16(crate::kernels::bf16::to_bf16(v));
        check_all(name, 1e-2, bf, &|q, o, off, a, l, m, b| {
            attention_tiles::<U>(q, o, off, a, l, m, b)
        });
    }

    /// The AVX-512 packing of keys and values equals the plain one (which CPUs without AVX-512
    /// use), for head widths and lengths around the 16- and 32-wide blocks.
    #[test]
    fn key_and_value_panels_are_the_same_on_every_cpu() {
        if !crate::kernels::has_avx512() {
            crate::kernels::report_skipped("AVX-512 key/value packing (this CPU lacks AVX-512)");
            return;
        }
        for d in [12usize, 31, 32, 40, 64, 80] {
            for len in [1usize, 15, 16, 17, 33, 70] {
                let w = 3 * d + 6;
                let src: Vec<u16> = (0..(len + 1) * w).map(|i| (i * 7919 % 65521) as u16).collect();
                let (lp, dp) = (len.next_multiple_of(BLOCK), d.next_multiple_of(BLOCK));
                let sizes = (lp * dp, d.div_ceil(BLOCK) * lp * BLOCK);
                let mut plain = (vec![1u16; sizes.0], vec![1u16; sizes.1]);
                let mut wide = (vec![2u16; sizes.0], vec![2u16; sizes.1]);
                // SAFETY: `src` holds `len` rows of `w ≥ 2d` values from each start; the outputs
                // have the sizes the packers need; the CPU has AVX-512 (checked).
                unsafe {
                    pack_portable(src.as_ptr(), src.as_ptr().add(d), w, len, d, &mut plain.0, &mut plain.1);
                    #[cfg(target_arch = "x86_64")]
                    pack_avx512(src.as_ptr(), src.as_ptr().add(d), w, len, d, &mut wide.0, &mut wide.1);
                }
                assert_eq!(plain, wide, "d {d} len {len}");
            }
        }
    }

    #[test]
    fn bf16_attention_on_tiles_is_attention_of_the_rounded_operands() {
        check_tiles::<crate::kernels::amx::TileModel>("tile model");
        if crate::kernels::amx::has_amx() {
            check_tiles::<Amx>("AMX");
        } else {
            crate::kernels::report_skipped("AMX attention (this CPU or OS lacks AMX)");
        }
    }
}
