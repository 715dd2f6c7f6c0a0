//! How the two passes of Pillow's resampler ([`super::resample`]) are evaluated fast without
//! changing a byte: rows split over scoped threads ([`run_rows`]); the horizontal pass on blocks
//! of [`BLOCK_ROWS`] rows, transposed (word swaps, SSE2 unpacks) so that one tap multiplies 8
//! rows × 3 channels at once, in a tile kernel with explicit AVX2 where the CPU has it; the
//! vertical pass as multiply-adds over whole rows. The sums are integer sums, so any order and
//! any split gives the bytes the plain loops give. The tables, the fixed-point arithmetic and
//! [`ResizePlan`](super::ResizePlan), which chooses and runs the passes, are in `resample.rs`.

#[cfg(target_arch = "x86_64")]
use super::resample::PRECISION_BITS;
use super::resample::{clip8, ResampleCoeffs, ROUNDING_HALF};
use super::RgbFrame;

/// Where a pass reads its input rows from.
pub(super) enum RowSource<'a, 'f> {
    /// Rows of a frame (with its stride), starting at the given source row.
    Frame(&'a RgbFrame<'f>, usize),
    /// Rows of a packed buffer with the given row length in bytes.
    Packed(&'a [u8], usize),
}

impl RowSource<'_, '_> {
    #[inline(always)]
    fn row(&self, y: usize) -> &[u8] {
        match self {
            RowSource::Frame(frame, offset) => frame.row(y + offset),
            RowSource::Packed(buf, len) => &buf[y * len..(y + 1) * len],
        }
    }
}

/// Splits `out` into whole rows (in multiples of [`BLOCK_ROWS`]) and runs
/// `pass(first_row, rows, work)` on up to `threads` threads, each with its own equal share of
/// `work`.
pub(super) fn run_rows<F>(out: &mut [u8], row_len: usize, threads: usize, work: &mut [u8], pass: F)
where
    F: Fn(usize, &mut [u8], &mut [u8]) + Sync,
{
    let rows = out.len() / row_len.max(1);
    if threads <= 1 || rows < 2 * BLOCK_ROWS {
        pass(0, out, work);
        return;
    }
    let per = rows.div_ceil(threads).next_multiple_of(BLOCK_ROWS);
    let work_per = work.len() / threads;
    // Passes without work space get empty slices.
    let works = work
        .chunks_mut(work_per.max(1))
        .chain(std::iter::repeat_with(<&mut [u8]>::default));
    std::thread::scope(|scope| {
        let pass = &pass;
        let mut parts = out.chunks_mut(per * row_len).zip(works).enumerate();
        // The calling thread takes the first part instead of idling.
        let first = parts.next();
        for (i, (chunk, work)) in parts {
            scope.spawn(move || pass(i * per, chunk, work));
        }
        if let Some((_, (chunk, work))) = first {
            pass(0, chunk, work);
        }
    });
}

/// Rows the horizontal pass filters together. Eight rows are transposed so that one source
/// byte column becomes 8 contiguous bytes; a tap then multiplies 8 rows × 3 channels at once
/// (24 lanes, three AVX2 vectors) instead of one pixel's 3 bytes.
pub(super) const BLOCK_ROWS: usize = 8;

/// Output pixels filtered per tile of a block: the tile's transposed input (about
/// `64 * scale + ksize` pixels × 24 bytes) is written and read back while still in L1, whatever
/// the source width.
const TILE_PIXELS: usize = 64;

/// Horizontal pass over output rows `y0..` (each `out_size * 3` bytes). `work` must hold
/// `BLOCK_ROWS * in_size * 3` bytes.
pub(super) fn horizontal_pass(
    h: &ResampleCoeffs,
    input: &RowSource<'_, '_>,
    y0: usize,
    out: &mut [u8],
    work: &mut [u8],
) {
    let out_w = h.out_size as usize;
    let out_row = out_w * 3;
    let in_row = h.in_size as usize * 3;
    let columns = &mut work[..in_row * BLOCK_ROWS];
    let mut block_out = [0u8; TILE_PIXELS * BLOCK_PIXEL];
    let rows = out.len() / out_row;
    for b0 in (0..rows).step_by(BLOCK_ROWS) {
        let n = (rows - b0).min(BLOCK_ROWS);
        // A short last block repeats its last row; those lanes are computed and dropped.
        let src_rows: [&[u8]; BLOCK_ROWS] =
            std::array::from_fn(|r| input.row(y0 + b0 + r.min(n - 1)));
        let out_rows = &mut out[b0 * out_row..(b0 + n) * out_row];
        for x0 in (0..out_w).step_by(TILE_PIXELS) {
            let x1 = (x0 + TILE_PIXELS).min(out_w);
            // Windows only move right as x grows, so the tile's input is one byte range.
            let first = h.bounds[x0].0 as usize;
            let (last_first, last_count) = h.bounds[x1 - 1];
            let end = (last_first + last_count) as usize;
            let in_start = (first * 3) & !7;
            let in_end = (end * 3).next_multiple_of(8).min(in_row).max(in_start);
            let tile_in = &mut columns[..(in_end - in_start) * BLOCK_ROWS];
            transpose_rows_to_columns(&src_rows, in_start, tile_in);
            let tile_out = &mut block_out[..(x1 - x0) * BLOCK_PIXEL];
            horizontal_block(h, x0, in_start, tile_in, tile_out);
            transpose_columns_to_rows(tile_out, out_rows, out_row, x0 * 3);
        }
    }
}

/// Swaps the byte matrix held in 8 little-endian words (word = row, byte = column) so that
/// word j holds column j. Three rounds of block swaps (4×4, 2×2, 1×1 bytes).
#[inline(always)]
fn transpose8x8(w: &mut [u64; 8]) {
    for i in 0..4 {
        let t = ((w[i] >> 32) ^ w[i + 4]) & 0x0000_0000_FFFF_FFFF;
        w[i] ^= t << 32;
        w[i + 4] ^= t;
    }
    for i in [0, 1, 4, 5] {
        let t = ((w[i] >> 16) ^ w[i + 2]) & 0x0000_FFFF_0000_FFFF;
        w[i] ^= t << 16;
        w[i + 2] ^= t;
    }
    for i in [0, 2, 4, 6] {
        let t = ((w[i] >> 8) ^ w[i + 1]) & 0x00FF_00FF_00FF_00FF;
        w[i] ^= t << 8;
        w[i + 1] ^= t;
    }
}

fn word(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// `columns[j * 8 + r] = rows[r][start + j]` for every byte column j the buffer holds.
fn transpose_rows_to_columns(rows: &[&[u8]; BLOCK_ROWS], start: usize, columns: &mut [u8]) {
    let len = columns.len() / BLOCK_ROWS;
    #[cfg(target_arch = "x86_64")]
    let done = {
        let done = len - len % 16;
        for j0 in (0..done).step_by(16) {
            let src: [&[u8]; BLOCK_ROWS] = std::array::from_fn(|r| &rows[r][start + j0..][..16]);
            // SAFETY: SSE2 is part of every x86_64 CPU; every row slice holds 16 bytes and the
            // output slice 128 (both checked by the slicing above and here).
            unsafe { transpose_8x16_sse2(&src, &mut columns[j0 * 8..j0 * 8 + 128]) };
        }
        done
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let full = len - len % 8;
    for j0 in (done..full).step_by(8) {
        let mut w: [u64; 8] = std::array::from_fn(|r| word(&rows[r][start + j0..]));
        transpose8x8(&mut w);
        for (c, w) in w.iter().enumerate() {
            columns[(j0 + c) * 8..(j0 + c + 1) * 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    for j in full..len {
        for (r, row) in rows.iter().enumerate() {
            columns[j * 8 + r] = row[start + j];
        }
    }
}

/// Transposes 8 rows of 16 bytes into 16 columns of 8 bytes with three rounds of SSE2 unpacks
/// (bytes, then 16-bit pairs, then 32-bit quads): a quarter of the work of the word swaps.
///
/// # Safety
/// Each `rows[r]` must hold at least 16 bytes and `out` at least 128.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
unsafe fn transpose_8x16_sse2(rows: &[&[u8]; BLOCK_ROWS], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let r: [__m128i; 8] = std::array::from_fn(|i| _mm_loadu_si128(rows[i].as_ptr().cast()));
    // (r0 c_j, r1 c_j) byte pairs: t[2k] holds columns 0..8 of rows 2k, 2k+1; t[2k+1] 8..16.
    let t = [
        _mm_unpacklo_epi8(r[0], r[1]),
        _mm_unpackhi_epi8(r[0], r[1]),
        _mm_unpacklo_epi8(r[2], r[3]),
        _mm_unpackhi_epi8(r[2], r[3]),
        _mm_unpacklo_epi8(r[4], r[5]),
        _mm_unpackhi_epi8(r[4], r[5]),
        _mm_unpacklo_epi8(r[6], r[7]),
        _mm_unpackhi_epi8(r[6], r[7]),
    ];
    // Rows 0..4 of columns 0..4, 4..8, 8..12, 12..16; then the same for rows 4..8.
    let u = [
        _mm_unpacklo_epi16(t[0], t[2]),
        _mm_unpackhi_epi16(t[0], t[2]),
        _mm_unpacklo_epi16(t[1], t[3]),
        _mm_unpackhi_epi16(t[1], t[3]),
        _mm_unpacklo_epi16(t[4], t[6]),
        _mm_unpackhi_epi16(t[4], t[6]),
        _mm_unpacklo_epi16(t[5], t[7]),
        _mm_unpackhi_epi16(t[5], t[7]),
    ];
    // Two whole columns (8 rows each) per vector, in column order.
    let v = [
        _mm_unpacklo_epi32(u[0], u[4]),
        _mm_unpackhi_epi32(u[0], u[4]),
        _mm_unpacklo_epi32(u[1], u[5]),
        _mm_unpackhi_epi32(u[1], u[5]),
        _mm_unpacklo_epi32(u[2], u[6]),
        _mm_unpackhi_epi32(u[2], u[6]),
        _mm_unpacklo_epi32(u[3], u[7]),
        _mm_unpackhi_epi32(u[3], u[7]),
    ];
    for (k, v) in v.iter().enumerate() {
        _mm_storeu_si128(out[k * 16..].as_mut_ptr().cast(), *v);
    }
}

/// The inverse of [`transpose_8x16_sse2`]: 16 columns of 8 bytes into 8 rows of 16 bytes. Four
/// rounds of the same byte unpack, pairing vectors `i` and `i + 4`: each round moves one bit of
/// the column index from the vector number into the byte position, so after four the vector
/// number is the row and the byte position the column.
///
/// # Safety
/// `columns` and `rows` must each hold at least 128 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
unsafe fn transpose_16x8_sse2(columns: &[u8], rows: &mut [u8]) {
    use std::arch::x86_64::*;
    let mut v: [__m128i; 8] =
        std::array::from_fn(|k| _mm_loadu_si128(columns[k * 16..].as_ptr().cast()));
    for _ in 0..4 {
        v = [
            _mm_unpacklo_epi8(v[0], v[4]),
            _mm_unpackhi_epi8(v[0], v[4]),
            _mm_unpacklo_epi8(v[1], v[5]),
            _mm_unpackhi_epi8(v[1], v[5]),
            _mm_unpacklo_epi8(v[2], v[6]),
            _mm_unpackhi_epi8(v[2], v[6]),
            _mm_unpacklo_epi8(v[3], v[7]),
            _mm_unpackhi_epi8(v[3], v[7]),
        ];
    }
    for (r, v) in v.iter().enumerate() {
        _mm_storeu_si128(rows[r * 16..].as_mut_ptr().cast(), *v);
    }
}

/// The inverse, into columns `offset..` of the rows `out` holds:
/// `out[r * row_len + offset + j] = columns[j * 8 + r]`.
fn transpose_columns_to_rows(columns: &[u8], out: &mut [u8], row_len: usize, offset: usize) {
    let rows = out.len() / row_len;
    let len = columns.len() / BLOCK_ROWS;
    #[cfg(target_arch = "x86_64")]
    let done = {
        let done = len - len % 16;
        let mut block = [0u8; 128];
        for j0 in (0..done).step_by(16) {
            // SAFETY: SSE2 is part of every x86_64 CPU; both slices hold 128 bytes.
            unsafe { transpose_16x8_sse2(&columns[j0 * 8..j0 * 8 + 128], &mut block) };
            for (r, row) in block.chunks_exact(16).enumerate().take(rows) {
                let at = r * row_len + offset + j0;
                out[at..at + 16].copy_from_slice(row);
            }
        }
        done
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let full = len - len % 8;
    for j0 in (done..full).step_by(8) {
        let mut w: [u64; 8] = std::array::from_fn(|c| word(&columns[(j0 + c) * 8..]));
        transpose8x8(&mut w);
        for (r, w) in w.iter().enumerate().take(rows) {
            let at = r * row_len + offset + j0;
            out[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    for j in full..len {
        for r in 0..rows {
            out[r * row_len + offset + j] = columns[j * 8 + r];
        }
    }
}

/// Pixel stride in the transposed block: 3 channels × 8 rows.
const BLOCK_PIXEL: usize = 3 * BLOCK_ROWS;

/// One tile of the horizontal pass: for output pixels `x0..`, the weighted sum of their taps
/// over 8 rows × 3 channels, clipped to bytes, in the transposed layout. `columns` starts at
/// source byte column `in_start`.
#[inline(always)]
fn horizontal_block_generic(
    h: &ResampleCoeffs,
    x0: usize,
    in_start: usize,
    columns: &[u8],
    out: &mut [u8],
) {
    for (i, out_px) in out.chunks_exact_mut(BLOCK_PIXEL).enumerate() {
        let (first, taps) = h.taps(x0 + i);
        let at = (first * 3 - in_start) * BLOCK_ROWS;
        let src = &columns[at..at + taps.len() * BLOCK_PIXEL];
        let mut acc = [ROUNDING_HALF; BLOCK_PIXEL];
        for (px, &k) in src.chunks_exact(BLOCK_PIXEL).zip(taps) {
            for (a, &p) in acc.iter_mut().zip(px) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(k));
            }
        }
        for (o, &a) in out_px.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// Columns of the vertical pass handled at once: the accumulators stay in L1 while every tap's
/// input row segment streams through, and no heap buffer is needed per call.
const VERTICAL_CHUNK: usize = 1024;

/// Vertical pass over output rows `y0..` (each `row_len` bytes): each output row is a weighted
/// sum of whole input rows, which the compiler turns into wide integer multiply-adds.
pub(super) fn vertical_pass(
    v: &ResampleCoeffs,
    input: &RowSource<'_, '_>,
    row_len: usize,
    y0: usize,
    out: &mut [u8],
) {
    let mut acc = [0i32; VERTICAL_CHUNK];
    for (i, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (first, taps) = v.taps(y0 + i);
        for start in (0..row_len).step_by(VERTICAL_CHUNK) {
            let end = (start + VERTICAL_CHUNK).min(row_len);
            let acc = &mut acc[..end - start];
            acc.fill(ROUNDING_HALF);
            for (t, &k) in taps.iter().enumerate() {
                accumulate_row(acc, &input.row(first + t)[start..end], k);
            }
            store_row(acc, &mut out_row[start..end]);
        }
    }
}

#[inline(always)]
fn accumulate_row_generic(acc: &mut [i32], row: &[u8], k: i32) {
    for (a, &p) in acc.iter_mut().zip(row) {
        *a = a.wrapping_add(i32::from(p).wrapping_mul(k));
    }
}

#[inline(always)]
fn store_row_generic(acc: &[i32], out: &mut [u8]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = clip8(a);
    }
}

/// The horizontal tile kernel, with explicit AVX2 where the CPU has it: left to itself the
/// compiler vectorizes across taps with byte gathers (several times slower) instead of across
/// the 24 lanes of a tap.
#[inline(always)]
fn horizontal_block(
    h: &ResampleCoeffs,
    x0: usize,
    in_start: usize,
    columns: &[u8],
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { horizontal_block_avx2(h, x0, in_start, columns, out) };
        }
    }
    horizontal_block_generic(h, x0, in_start, columns, out)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_block_avx2(
    h: &ResampleCoeffs,
    x0: usize,
    in_start: usize,
    columns: &[u8],
    out: &mut [u8],
) {
    use std::arch::x86_64::*;
    for (i, out_px) in out.chunks_exact_mut(BLOCK_PIXEL).enumerate() {
        let (first, taps) = h.taps(x0 + i);
        let at = (first * 3 - in_start) * BLOCK_ROWS;
        let pixels = columns[at..at + taps.len() * BLOCK_PIXEL].chunks_exact(BLOCK_PIXEL);
        let half = _mm256_set1_epi32(ROUNDING_HALF);
        let (mut r, mut g, mut b) = (half, half, half);
        for (px, &k) in pixels.zip(taps) {
            let k = _mm256_set1_epi32(k);
            // SAFETY: `px` is 24 bytes; the three loads read bytes 0..8, 8..16 and 16..24.
            let (pr, pg, pb) = unsafe {
                (
                    _mm_loadl_epi64(px.as_ptr().cast()),
                    _mm_loadl_epi64(px.as_ptr().add(8).cast()),
                    _mm_loadl_epi64(px.as_ptr().add(16).cast()),
                )
            };
            r = _mm256_add_epi32(r, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(pr), k));
            g = _mm256_add_epi32(g, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(pg), k));
            b = _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(pb), k));
        }
        // clip8: arithmetic shift, then saturating packs (i32 -> i16 -> u8) clamp to 0..=255.
        let words = |v: __m256i| {
            let v = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(v);
            _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
        };
        let rg = _mm_packus_epi16(words(r), words(g));
        let bb = _mm_packus_epi16(words(b), words(b));
        // SAFETY: `out_px` is 24 bytes; the stores write bytes 0..16 and 16..24.
        unsafe {
            _mm_storeu_si128(out_px.as_mut_ptr().cast(), rg);
            _mm_storel_epi64(out_px.as_mut_ptr().add(16).cast(), bb);
        }
    }
}

dispatch!(
    accumulate_row,
    accumulate_row_generic,
    accumulate_row_avx2,
    (acc: &mut [i32], row: &[u8], k: i32)
);
dispatch!(
    store_row,
    store_row_generic,
    store_row_avx2,
    (acc: &[i32], out: &mut [u8])
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_transposes_are_inverse_and_correct() {
        let rows: Vec<Vec<u8>> = (0..8)
            .map(|r| (0..45).map(|j| (r * 31 + j * 7) as u8).collect())
            .collect();
        let refs: [&[u8]; 8] = std::array::from_fn(|r| rows[r].as_slice());
        // 45 columns: two 16-column SSE2 chunks (on x86_64), one 8-column word swap, a tail.
        let mut columns = vec![0u8; 45 * 8];
        transpose_rows_to_columns(&refs, 0, &mut columns);
        for j in 0..45 {
            for r in 0..8 {
                assert_eq!(columns[j * 8 + r], rows[r][j], "column {j} row {r}");
            }
        }
        let mut back = vec![0u8; 5 * 47];
        transpose_columns_to_rows(&columns, &mut back, 47, 2);
        for r in 0..5 {
            assert_eq!(&back[r * 47 + 2..(r + 1) * 47], rows[r].as_slice());
        }
        let mut shifted = vec![0u8; 29 * 8];
        transpose_rows_to_columns(&refs, 13, &mut shifted);
        assert!((0..29).all(|j| (0..8).all(|r| shifted[j * 8 + r] == rows[r][13 + j])));
    }

    #[test]
    fn tile_kernel_matches_scalar_twin() {
        // Extreme bytes drive the sums to both clamps; the dispatched kernel (AVX2 where the
        // CPU has it) must agree with the portable one byte for byte.
        for (in_size, out_size) in [(40u32, 97u32), (200, 37)] {
            let h = ResampleCoeffs::bicubic(in_size, out_size);
            // Half the lanes hold hard edges (bicubic rings past 0 and 255 there), half noise.
            let columns: Vec<u8> = (0..in_size as usize * BLOCK_PIXEL)
                .map(
                    |i| match (i % BLOCK_PIXEL < 12, (i / BLOCK_PIXEL / 2) % 2) {
                        (true, 0) => 0,
                        (true, _) => 255,
                        (false, _) => (i * 7919 % 256) as u8,
                    },
                )
                .collect();
            let out_len = out_size as usize * BLOCK_PIXEL;
            let mut fast = vec![0u8; out_len];
            let mut scalar = vec![1u8; out_len];
            horizontal_block(&h, 0, 0, &columns, &mut fast);
            horizontal_block_generic(&h, 0, 0, &columns, &mut scalar);
            assert_eq!(fast, scalar, "{in_size} -> {out_size}");
            if in_size < out_size {
                assert!(fast.contains(&0) && fast.contains(&255));
            }
        }
    }
}
