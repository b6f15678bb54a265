//! LSB-first bit packing of sub-byte element types (spec §3.4).
//!
//! Element `i` of width `b` occupies bits `[i*b, (i+1)*b)` of a little-endian bit stream: stream bit
//! `k` is bit `k % 8` of byte `k / 8`, and each element's own bits go in LSB first. Widths that do not
//! divide 8 (3, 6) let an element straddle two bytes, low bits in the earlier byte. Unused high bits of
//! the last byte are zero. This is numpy's `packbits(..., bitorder="little")` of each element's bits,
//! the layout Core ML uses both in `weight.bin` and in immediate `TensorValue.bytes`.
//!
//! The functions accept any width from 1 to 8 (wider widths are treated as 8, 0 yields nothing): they
//! take plain integers, so they must not panic whatever a caller passes.

/// Clamps a width to what a `u8` element can hold; 0 stays 0 (nothing to pack).
fn effective_bits(bits: u32) -> u32 {
    bits.min(8)
}

/// Packs the low `bits` bits of each value, element `i` at stream bits `[i*bits, (i+1)*bits)`.
/// Higher bits of each value are ignored; the unused high bits of the last byte are zero.
pub fn pack(values: &[u8], bits: u32) -> Vec<u8> {
    let bits = effective_bits(bits);
    if bits == 0 {
        return Vec::new();
    }
    if bits == 8 {
        return values.to_vec();
    }
    let mask = (1u16 << bits) - 1;
    let total_bits = values.len() as u64 * u64::from(bits);
    let mut out = vec![0u8; total_bits.div_ceil(8) as usize];
    let mut bit_pos: u64 = 0;
    for &value in values {
        // Spread the value over at most two bytes: `shifted` holds it at its position within a u16
        // window that starts at the byte containing its first bit.
        let byte = (bit_pos / 8) as usize;
        let shifted = (u16::from(value) & mask) << (bit_pos % 8);
        out[byte] |= shifted as u8;
        let high = (shifted >> 8) as u8;
        if high != 0 {
            // Exists: the element's last bit lies within `total_bits`.
            if let Some(next) = out.get_mut(byte + 1) {
                *next |= high;
            }
        }
        bit_pos += u64::from(bits);
    }
    out
}

/// Unpacks `count` elements of width `bits`, one per output byte. Elements whose bits lie past the end
/// of `bytes` read as zero bits there (callers validate lengths first; this only keeps it panic-free).
pub fn unpack(bytes: &[u8], bits: u32, count: usize) -> Vec<u8> {
    let bits = effective_bits(bits);
    if bits == 0 {
        return vec![0; count];
    }
    if bits == 8 {
        let mut out = bytes[..count.min(bytes.len())].to_vec();
        out.resize(count, 0);
        return out;
    }
    let mask = (1u16 << bits) - 1;
    let mut out = Vec::with_capacity(count.min(bytes.len().saturating_mul(8)));
    let mut bit_pos: u64 = 0;
    for _ in 0..count {
        let byte = (bit_pos / 8) as usize;
        let low = bytes.get(byte).copied().unwrap_or(0);
        let high = bytes.get(byte + 1).copied().unwrap_or(0);
        let window = u16::from_le_bytes([low, high]);
        out.push(((window >> (bit_pos % 8)) & mask) as u8);
        bit_pos += u64::from(bits);
    }
    out
}

/// How many of the `count` elements of width `bits` packed in `bytes` are zero, counted on the
/// packed bytes: unpacking first took a byte per element, 8 times a uint1 blob (red team, session
/// 22). Elements past the end of `bytes` count as zero, as [`unpack`] reads them.
pub fn count_zero_elements(bytes: &[u8], bits: u32, count: usize) -> u64 {
    let bits = effective_bits(bits);
    if bits == 0 {
        return count as u64;
    }
    if 8 % bits != 0 {
        // Widths 3, 5, 6, 7 straddle bytes: element by element, as `unpack` reads them.
        let mask = (1u16 << bits) - 1;
        return (0..count as u64)
            .filter(|i| {
                let bit_pos = i * u64::from(bits);
                let byte = (bit_pos / 8) as usize;
                let low = bytes.get(byte).copied().unwrap_or(0);
                let high = bytes.get(byte + 1).copied().unwrap_or(0);
                (u16::from_le_bytes([low, high]) >> (bit_pos % 8)) & mask == 0
            })
            .count() as u64;
    }
    // Widths 1, 2, 4, 8: whole bytes hold `per_byte` elements each. Or-ing a byte's shifts puts
    // "any bit set" in each field's lowest bit, so a byte's nonzero fields are a popcount.
    let per_byte = (8 / bits) as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    let lowest_bits = match bits {
        1 => 0xff,
        2 => 0x55,
        4 => 0x11,
        _ => 0x01,
    };
    let nonzero_fields = |byte: u8| {
        let any = (1..bits).fold(byte, |any, shift| any | byte >> shift);
        u64::from((any & lowest_bits).count_ones())
    };
    let zero_fields = |byte: u8, fields: usize| {
        (0..fields)
            .filter(|f| (byte >> (f * bits as usize)) & mask == 0)
            .count() as u64
    };
    let full = (count / per_byte).min(bytes.len());
    let counted = (full * per_byte) as u64 - bytes[..full].iter().map(|b| nonzero_fields(*b)).sum::<u64>();
    let rest = count - full * per_byte;
    match bytes.get(full) {
        Some(&last) => {
            let in_last = rest.min(per_byte);
            counted + zero_fields(last, in_last) + (rest - in_last) as u64
        }
        None => counted + rest as u64,
    }
}

/// The number of set bits in `bytes` (a mask's kept count), a 64-bit word at a time: per byte,
/// a CPU without a popcount instruction spends a dozen instructions on each.
pub fn count_ones(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|b| u64::from(b.count_ones())).sum();
    words
        .map(|w| u64::from(u64::from_le_bytes(w.try_into().expect("chunks of 8")).count_ones()))
        .sum::<u64>()
        + tail
}

/// Unused bits in the last byte when `count` elements of width `bits` are packed:
/// `(8 - (count*bits) % 8) % 8`, the value of a blob record's `padding_size_in_bits`.
pub fn padding_bits(count: u64, bits: u32) -> u64 {
    // Only the residue mod 8 matters, so reduce first and never overflow.
    let used = (count % 8) * u64::from(bits % 8);
    (8 - used % 8) % 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Counting zeros on the packed bytes agrees with unpacking first, for every width, any
        /// count (past the bytes given too) and any bytes.
        #[test]
        fn zero_elements_counted_packed_agree_with_unpacking(
            bits in 0u32..=9,
            bytes in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..40),
            extra in 0usize..20,
        ) {
            let count = (bytes.len() * 8 / bits.clamp(1, 8) as usize).saturating_sub(extra % 9) + extra / 9 * 3;
            let unpacked = unpack(&bytes, bits, count);
            let want = unpacked.iter().filter(|v| **v == 0).count() as u64;
            prop_assert_eq!(count_zero_elements(&bytes, bits, count), want);
        }
    }

    #[test]
    fn count_ones_counts_words_and_the_tail() {
        for len in [0, 1, 7, 8, 9, 63, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let want: u64 = bytes.iter().map(|b| u64::from(b.count_ones())).sum();
            assert_eq!(count_ones(&bytes), want, "{len} bytes");
        }
    }

    #[test]
    fn uint1_index_one_sets_bit_one_of_byte_zero() {
        let mut mask = vec![0u8; 9];
        mask[1] = 1;
        assert_eq!(pack(&mask, 1), vec![0x02, 0x00]);
        let mut mask = vec![0u8; 9];
        mask[8] = 1;
        assert_eq!(pack(&mask, 1), vec![0x00, 0x01]);
    }

    #[test]
    fn uint3_elements_straddle_bytes_low_bits_first() {
        // 0b101 at bits 0..3, 0b110 at 3..6, 0b011 at 6..9 (low two bits in byte 0, top bit in byte 1).
        let packed = pack(&[0b101, 0b110, 0b011], 3);
        assert_eq!(packed, vec![0b1111_0101, 0b0000_0000]);
        assert_eq!(unpack(&packed, 3, 3), vec![0b101, 0b110, 0b011]);
    }

    #[test]
    fn int4_nibbles_low_first() {
        // -1 → 0xF, 2 → 0x2: first element in the low nibble.
        assert_eq!(pack(&[0xFF, 0x02, 0x07], 4), vec![0x2F, 0x07]);
    }

    #[test]
    fn uint6_straddles_and_values_are_masked() {
        let packed = pack(&[0xFF, 0x01], 6);
        // 0x3F in bits 0..6, 1 at bit 6.
        assert_eq!(packed, vec![0x7F, 0x00]);
        assert_eq!(unpack(&packed, 6, 2), vec![0x3F, 0x01]);
    }

    #[test]
    fn spec_padding_examples() {
        assert_eq!(padding_bits(2193, 1), 7);
        assert_eq!(padding_bits(1535, 4), 4);
        assert_eq!(padding_bits(1104, 3), 0);
        assert_eq!(padding_bits(1, 6), 2);
        // u64::MAX % 8 == 7 elements of 3 bits in the last partial group: 21 bits → 3 unused.
        assert_eq!(padding_bits(u64::MAX, 3), 3);
        assert_eq!(padding_bits(5, 8), 0);
        assert_eq!(padding_bits(5, 16), 0);
    }

    #[test]
    fn unpack_short_input_does_not_panic() {
        assert_eq!(unpack(&[0xFF], 4, 4), vec![0xF, 0xF, 0, 0]);
        assert_eq!(unpack(&[], 3, 2), vec![0, 0]);
        assert_eq!(unpack(&[7], 8, 2), vec![7, 0]);
        assert_eq!(unpack(&[7], 0, 2), vec![0, 0]);
        assert!(pack(&[1, 2], 0).is_empty());
    }

    #[test]
    fn widths_above_eight_act_as_bytes() {
        assert_eq!(pack(&[1, 2, 3], 32), vec![1, 2, 3]);
        assert_eq!(unpack(&[1, 2, 3], 16, 3), vec![1, 2, 3]);
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(
            bits in prop::sample::select(vec![1u32, 2, 3, 4, 6, 8]),
            raw in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mask = ((1u16 << bits) - 1) as u8;
            let values: Vec<u8> = raw.iter().map(|v| v & mask).collect();
            let packed = pack(&values, bits);
            prop_assert_eq!(packed.len() as u64, (values.len() as u64 * u64::from(bits)).div_ceil(8));
            // Unused high bits of the last byte are zero, matching padding_bits.
            let pad = padding_bits(values.len() as u64, bits);
            if let Some(last) = packed.last() {
                prop_assert_eq!(u32::from(*last) >> (8 - pad), 0);
            }
            prop_assert_eq!(unpack(&packed, bits, values.len()), values);
        }
    }
}
