//! Moving a chunk's kept values to its front, eight elements per mask byte.
//!
//! This is the innermost loop of every pruning mode, run once per element of every tensor. The
//! portable version moves the eight elements of a group one by one through a table of set-bit
//! positions. On x86-64 with SSSE3 and POPCNT (every x86-64 CPU of the last fifteen years), 2- and
//! 4-byte elements are moved with one byte shuffle per 16 bytes instead, about three times faster;
//! the result is the same, which the tests below check on random masks.

use super::cpu::Ssse3Popcnt;

/// Moves the elements of `values` whose bit is set in `bytes` (LSB first, one byte per group of 8)
/// to the front, in order, for the `bytes.len()` whole groups; returns how many were kept. The
/// slots after the kept ones hold leftovers. `values.len() >= 8 * bytes.len()`.
pub fn compact_groups<T: bytemuck::Pod>(values: &mut [T], bytes: &[u8]) -> usize {
    compact_groups_with(Ssse3Popcnt::detect(), values, bytes)
}

/// [`compact_groups`] by the byte shuffle when given the token, else portably: the same result.
pub(crate) fn compact_groups_with<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    values: &mut [T],
    bytes: &[u8],
) -> usize {
    assert!(values.len() >= bytes.len() * 8);
    let p = values.as_mut_ptr();
    // SAFETY: source and destination are the same pointer into `values`, which holds the
    // `8 * bytes.len()` elements read and written (just asserted); no other reference to it is
    // used meanwhile.
    unsafe { compact_raw(simd, p, p, bytes, usize::MAX).1 }
}

/// [`compact_groups`] from `src` into the front of `dst` (`src` is left as it is). Both hold at
/// least `8 * bytes.len()` elements; `dst`'s slots after the kept ones hold leftovers.
// Only the AVX2 bracket tally (and the tests) use it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub fn compact_groups_into<T: bytemuck::Pod>(src: &[T], dst: &mut [T], bytes: &[u8]) -> usize {
    compact_groups_into_with(Ssse3Popcnt::detect(), src, dst, bytes)
}

/// [`compact_groups_into`] by the byte shuffle when given the token, else portably.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn compact_groups_into_with<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    src: &[T],
    dst: &mut [T],
    bytes: &[u8],
) -> usize {
    assert!(src.len() >= bytes.len() * 8 && dst.len() >= bytes.len() * 8);
    // SAFETY: both hold the `8 * bytes.len()` elements read or written (just asserted), and a
    // shared and a mutable borrow never overlap.
    unsafe { compact_raw(simd, src.as_ptr(), dst.as_mut_ptr(), bytes, usize::MAX).1 }
}

/// Moves the kept elements of the groups of `src` (a set bit in `bytes`, LSB first, one byte per
/// group of 8) to `dst`, in order, and stops before a group whose 8-element store would reach past
/// `dst + room`; returns how many groups it did, and how many elements they kept. Group j is read
/// before anything is stored at or past `dst + 8j` (at most eight are kept per group), so
/// `src == dst` is compaction in place. With the token, 2- and 4-byte elements move by byte
/// shuffles; the result is the same.
///
/// # Safety
/// `src` must be valid for reads of `8 * bytes.len()` elements and `dst` for writes of
/// `min(8 * bytes.len(), room)`, and they must be the same pointer or not overlap at all.
unsafe fn compact_raw<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    src: *const T,
    dst: *mut T,
    bytes: &[u8],
    room: usize,
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = simd {
        match std::mem::size_of::<T>() {
            // SAFETY: the token exists only on a CPU with SSSE3 and POPCNT, all the shuffle
            // enables; `T` is 2 bytes like `u16` (any bits are a value of both: Pod); the pointer
            // contract is ours.
            2 => return unsafe { x86::compact_u16_ssse3(token, src.cast(), dst.cast(), bytes, room) },
            // SAFETY: as above, with `T` 4 bytes like `u32`.
            4 => return unsafe { x86::compact_u32_ssse3(token, src.cast(), dst.cast(), bytes, room) },
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    // SAFETY: the caller's contract, which is `compact_portable`'s.
    unsafe { compact_portable(src, dst, bytes, room) }
}

/// Moves the elements of `src` whose mask bit is set (`bytes`, LSB first, the last byte possibly
/// partial with zero padding bits) into `dst`, in order, writing exactly `dst.len()` slots and
/// nothing past them: `dst.len()` must be the number of set bits. Several of these can fill
/// neighbouring parts of one output at the same time, which the 8-slot stores of
/// [`compact_groups_into`] (leftovers past the kept ones) would not allow.
pub fn compact_exact_into<T: bytemuck::Pod>(src: &[T], bytes: &[u8], dst: &mut [std::mem::MaybeUninit<T>]) {
    compact_exact_into_with(Ssse3Popcnt::detect(), src, bytes, dst)
}

/// [`compact_exact_into`] by the byte shuffle when given the token, else portably. Panics (having
/// written only slots of `dst`) if the set bits and `dst.len()` disagree.
pub(crate) fn compact_exact_into_with<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    src: &[T],
    bytes: &[u8],
    dst: &mut [std::mem::MaybeUninit<T>],
) {
    let full = src.len() / 8;
    assert!(bytes.len() >= src.len().div_ceil(8));
    // SAFETY: `src` holds every full group; `dst` is written only below `dst.len()` (the room),
    // and a mutable borrow never overlaps a shared one.
    let (done, mut kept) = unsafe {
        compact_raw(
            simd,
            src.as_ptr(),
            dst.as_mut_ptr().cast::<T>(),
            &bytes[..full],
            dst.len(),
        )
    };
    // The last few groups, within 8 slots of the end, one kept element at a time.
    for (i, x) in src.iter().enumerate().skip(done * 8) {
        if bytes[i / 8] & (1 << (i % 8)) != 0 {
            dst[kept].write(*x);
            kept += 1;
        }
    }
    assert_eq!(
        kept,
        dst.len(),
        "the mask's set bits and the output length disagree"
    );
}

/// Writes the mask bytes of `flags` (see [`flags_to_bytes`]) and moves the elements of `values`
/// whose flag is set to the front, in order; returns how many. `flags.len() == values.len()` and
/// `bytes.len() >= values.len().div_ceil(8)`.
pub fn compact_flagged<T: bytemuck::Pod>(values: &mut [T], flags: &[bool], bytes: &mut [u8]) -> usize {
    assert_eq!(values.len(), flags.len());
    flags_to_bytes(flags, bytes);
    compact_masked(values, bytes)
}

/// Moves the elements of `values` whose bit is set in `bytes` (LSB first, the last byte possibly
/// partial) to the front, in order; returns how many. `bytes.len() >= values.len().div_ceil(8)`.
pub fn compact_masked<T: bytemuck::Pod>(values: &mut [T], bytes: &[u8]) -> usize {
    let full = values.len() / 8;
    let mut kept = compact_groups(values, &bytes[..full]);
    for i in full * 8..values.len() {
        values[kept] = values[i];
        kept += usize::from(bytes[i / 8] & (1 << (i % 8)) != 0);
    }
    kept
}

/// Packs 0/1 flags into mask bytes, LSB first: `bytes[j]` gets `flags[8j..8j + 8]` (the last
/// byte may be partial). `bytes.len() >= flags.len().div_ceil(8)`.
pub fn flags_to_bytes(flags: &[bool], bytes: &mut [u8]) {
    let flags: &[u8] = bytemuck::cast_slice(flags);
    let mut groups = flags.chunks_exact(8);
    for (byte, group) in bytes.iter_mut().zip(&mut groups) {
        // Eight 0/1 bytes become one bit each: the multiply adds byte k's low bit at bit 56 + k
        // (all 64 partial products land on distinct bits, so nothing carries), and the top byte
        // is the mask byte.
        let group = u64::from_le_bytes(group.try_into().expect("chunks of 8"));
        *byte = (group.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        bytes[flags.len() / 8] = rest.iter().enumerate().fold(0u8, |bits, (k, &f)| bits | (f << k));
    }
}

/// [`compact_raw`] one element at a time: copies the group out, then writes all eight slots
/// `kept..kept + 8` from it in the order the byte's set bits give; only the first popcount slots
/// matter, the rest are overwritten by the next group. `kept <= 8j` for group j, so the writes
/// never reach a later group's values.
///
/// # Safety
/// As for [`compact_raw`].
unsafe fn compact_portable<T: bytemuck::Pod>(
    src: *const T,
    dst: *mut T,
    bytes: &[u8],
    room: usize,
) -> (usize, usize) {
    let mut kept = 0usize;
    for (j, &byte) in bytes.iter().enumerate() {
        if room.saturating_sub(kept) < 8 {
            return (j, kept);
        }
        // SAFETY: group j is src[8j..8j+8], in bounds by the contract (`read_unaligned`: `T` is
        // Pod, any bits are a value); it is copied out before the writes below.
        let group: [T; 8] = unsafe { std::ptr::read_unaligned(src.add(j * 8).cast::<[T; 8]>()) };
        let order = &SET_BITS[usize::from(byte)];
        for (slot, &k) in order.iter().enumerate() {
            // SAFETY: kept + slot < kept + 8 <= min(8 * bytes.len(), room): `kept <= 8j` (at most
            // eight kept per earlier group) and the room check above; in place, only slots of
            // groups 0..=j, all read already, are written.
            unsafe { dst.add(kept + slot).write(group[usize::from(k)]) };
        }
        kept += byte.count_ones() as usize;
    }
    (bytes.len(), kept)
}

/// For every byte, the positions of its set bits in ascending order, padded with 0.
static SET_BITS: [[u8; 8]; 256] = {
    let mut table = [[0u8; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let (mut k, mut n) = (0, 0);
        while k < 8 {
            if byte & (1 << k) != 0 {
                table[byte][n] = k as u8;
                n += 1;
            }
            k += 1;
        }
        byte += 1;
    }
    table
};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_shuffle_epi8, _mm_storeu_si128};

    use super::{Ssse3Popcnt, SET_BITS};

    /// `pshufb` controls that gather the elements of `width` bytes named by `SET_BITS[byte]` (for
    /// the first `16 / width` of them) to the front of a 16-byte register.
    const fn shuffles(width: usize) -> [[u8; 16]; 256] {
        let mut table = [[0u8; 16]; 256];
        let mut byte = 0;
        while byte < 256 {
            let mut slot = 0;
            while slot < 16 / width {
                let mut b = 0;
                while b < width {
                    table[byte][slot * width + b] = (SET_BITS[byte][slot] as usize * width + b) as u8;
                    b += 1;
                }
                slot += 1;
            }
            byte += 1;
        }
        table
    }

    /// Indexed by a whole mask byte: eight 2-byte elements fill one register.
    static SHUFFLE_U16: [[u8; 16]; 256] = shuffles(2);
    /// Indexed by a mask nibble (entries 0..16 used): four 4-byte elements fill one register.
    static SHUFFLE_U32: [[u8; 16]; 256] = shuffles(4);

    /// [`super::compact_raw`] for 2-byte elements, one `pshufb` per group.
    ///
    /// # Safety
    /// The pointers as for [`super::compact_raw`] (the token proves SSSE3 and POPCNT).
    #[target_feature(enable = "ssse3,popcnt")]
    pub unsafe fn compact_u16_ssse3(
        _: Ssse3Popcnt,
        src: *const u16,
        dst: *mut u16,
        bytes: &[u8],
        room: usize,
    ) -> (usize, usize) {
        let mut kept = 0usize;
        for (j, &byte) in bytes.iter().enumerate() {
            if room.saturating_sub(kept) < 8 {
                return (j, kept);
            }
            // SAFETY: group j is src[8j..8j+8], in bounds by the contract. The store covers
            // dst[kept..kept+8] with kept <= 8j (at most eight kept per earlier group), so it
            // stays in bounds and, in place, only overwrites groups already read.
            unsafe {
                let group = _mm_loadu_si128(src.add(j * 8).cast::<__m128i>());
                let control = _mm_loadu_si128(SHUFFLE_U16[usize::from(byte)].as_ptr().cast::<__m128i>());
                _mm_storeu_si128(dst.add(kept).cast::<__m128i>(), _mm_shuffle_epi8(group, control));
            }
            kept += byte.count_ones() as usize;
        }
        (bytes.len(), kept)
    }

    /// [`super::compact_raw`] for 4-byte elements, one `pshufb` per half group.
    ///
    /// # Safety
    /// As for [`compact_u16_ssse3`].
    #[target_feature(enable = "ssse3,popcnt")]
    pub unsafe fn compact_u32_ssse3(
        _: Ssse3Popcnt,
        src: *const u32,
        dst: *mut u32,
        bytes: &[u8],
        room: usize,
    ) -> (usize, usize) {
        let mut kept = 0usize;
        for (j, &byte) in bytes.iter().enumerate() {
            if room.saturating_sub(kept) < 8 {
                return (j, kept);
            }
            for (half, nibble) in [(0, byte & 0x0f), (4, byte >> 4)] {
                // SAFETY: the half group is src[8j+half..][..4], in bounds by the contract; the
                // store covers dst[kept..kept+4] with kept <= 8j+half, in bounds and, in place,
                // over elements already read.
                unsafe {
                    let group = _mm_loadu_si128(src.add(j * 8 + half).cast::<__m128i>());
                    let control =
                        _mm_loadu_si128(SHUFFLE_U32[usize::from(nibble)].as_ptr().cast::<__m128i>());
                    _mm_storeu_si128(dst.add(kept).cast::<__m128i>(), _mm_shuffle_epi8(group, control));
                }
                kept += nibble.count_ones() as usize;
            }
        }
        (bytes.len(), kept)
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use proptest::prelude::*;

    use super::*;
    use crate::prune::element::Element;

    /// What compaction must produce: the kept elements in order.
    fn kept_in_order<T: Copy>(values: &[T], bytes: &[u8]) -> Vec<T> {
        (0..bytes.len() * 8)
            .filter(|&i| bytes[i / 8] & (1 << (i % 8)) != 0)
            .map(|i| values[i])
            .collect()
    }

    /// Compared as bytes: NaN payloads must survive too.
    fn bytes_of<T: Element>(values: &[T]) -> &[u8] {
        bytemuck::cast_slice(values)
    }

    /// Both paths, each called explicitly (`None`: portable; the token: byte shuffles where the
    /// CPU has them), in place and into another buffer.
    fn paths() -> [Option<Ssse3Popcnt>; 2] {
        [None, Ssse3Popcnt::detect()]
    }

    fn check<T: Element>(values: Vec<T>, bytes: &[u8]) -> Result<(), TestCaseError> {
        let want = kept_in_order(&values, bytes);
        for simd in paths() {
            let mut fast = values.clone();
            let kept = compact_groups_with(simd, &mut fast, bytes);
            prop_assert_eq!(kept, want.len());
            prop_assert_eq!(bytes_of(&fast[..kept]), bytes_of(&want), "{:?}", simd);
            prop_assert_eq!(
                bytes_of(&fast[bytes.len() * 8..]),
                bytes_of(&values[bytes.len() * 8..])
            );
            let mut into = vec![T::zero(); values.len()];
            prop_assert_eq!(compact_groups_into_with(simd, &values, &mut into, bytes), kept);
            prop_assert_eq!(bytes_of(&into[..kept]), bytes_of(&want), "{:?}", simd);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Every mask byte, every element width the weights come in, and a ragged tail after the
        /// whole groups that must be left alone.
        #[test]
        fn compaction_keeps_the_set_bits_in_order(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            seed in any::<u64>(),
            tail in 0usize..8,
        ) {
            let n = bytes.len() * 8 + tail;
            let bits = |i: usize| seed.wrapping_mul(i as u64 + 1).rotate_left((i % 63) as u32);
            check((0..n).map(|i| f16::from_bits(bits(i) as u16)).collect::<Vec<_>>(), &bytes)?;
            check((0..n).map(|i| bits(i) as u32 as f32).collect::<Vec<_>>(), &bytes)?;
            check((0..n).map(|i| bits(i) as i8).collect::<Vec<_>>(), &bytes)?;
        }
    }

    /// Exact compaction into a part of a larger buffer: every slot of the part is written with the
    /// kept values in order, and nothing around it is touched (the SIMD stores must stop short).
    fn check_exact<T: Element>(values: Vec<T>, bytes: &[u8], sentinel: T) -> Result<(), TestCaseError> {
        let n = values.len();
        let mut bytes = bytes[..n.div_ceil(8)].to_vec();
        if !n.is_multiple_of(8) {
            // The mask's padding bits are zero.
            *bytes.last_mut().unwrap() &= (1u8 << (n % 8)) - 1;
        }
        let want: Vec<T> = (0..n)
            .filter(|&i| bytes[i / 8] & (1 << (i % 8)) != 0)
            .map(|i| values[i])
            .collect();
        for simd in paths() {
            let mut buffer = vec![std::mem::MaybeUninit::new(sentinel); want.len() + 16];
            compact_exact_into_with(simd, &values, &bytes, &mut buffer[8..8 + want.len()]);
            // SAFETY: every slot was initialized with the sentinel, and written with a T since.
            let got: Vec<T> = buffer.iter().map(|x| unsafe { x.assume_init() }).collect();
            prop_assert_eq!(bytes_of(&got[8..8 + want.len()]), bytes_of(&want), "{:?}", simd);
            prop_assert!(got[..8]
                .iter()
                .chain(&got[8 + want.len()..])
                .all(|x| bytes_of(&[*x]) == bytes_of(&[sentinel])));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn exact_compaction_writes_the_kept_values_and_nothing_else(
            bytes in prop::collection::vec(any::<u8>(), 1..200),
            seed in any::<u64>(),
            cut in 0usize..8,
        ) {
            let n = bytes.len() * 8 - cut;
            let bits = |i: usize| seed.wrapping_mul(i as u64 + 1).rotate_left((i % 63) as u32);
            check_exact((0..n).map(|i| f16::from_bits(bits(i) as u16 | 1)).collect::<Vec<_>>(), &bytes, f16::from_bits(0))?;
            check_exact((0..n).map(|i| (bits(i) as u32 | 1) as f32).collect::<Vec<_>>(), &bytes, 0.0)?;
            check_exact((0..n).map(|i| bits(i) as i8 | 1).collect::<Vec<_>>(), &bytes, 0)?;
        }
    }

    #[test]
    fn all_256_bytes_in_one_run() {
        let bytes: Vec<u8> = (0..=255).collect();
        let n = bytes.len() * 8;
        let f16s: Vec<f16> = (0..n as u16).map(f16::from_bits).collect();
        let f32s: Vec<f32> = (0..n).map(|i| i as f32).collect();
        for simd in paths() {
            let want = kept_in_order(&f16s, &bytes);
            let mut got = f16s.clone();
            let kept = compact_groups_with(simd, &mut got, &bytes);
            assert_eq!(bytes_of(&got[..kept]), bytes_of(&want));
            let want = kept_in_order(&f32s, &bytes);
            let mut got = f32s.clone();
            let kept = compact_groups_with(simd, &mut got, &bytes);
            assert_eq!(&got[..kept], &want[..]);
        }
    }
}
