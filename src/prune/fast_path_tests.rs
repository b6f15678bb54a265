//! The fast structural paths ([`super::nm_rank`], [`super::block_norms`]) against the generic
//! reference paths, on random data full of the awkward cases: ties, ±0, NaN payloads, ±inf, fp16
//! values whose square overflows, odd shapes (channel not a multiple of m or the block size,
//! inner > 1, outer > 1), both dims, and tensors larger than one tile.

use half::f16;
use proptest::prelude::*;

use super::axes::ChannelLayout;
use super::block::reference_flags;
use super::block_norms::{fast_block_decisions, fast_block_flags};
use super::compact::flags_to_bytes;
use super::element::Element;
use super::nm::argsort_flags;
use super::nm_rank::stable_rank_flags;

/// fp16 bit patterns: mostly a few repeated magnitudes (ties), plus the special values.
fn f16_bits() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(vec![0x3c00u16, 0xbc00, 0x3c01, 0x4000, 0x2e66, 0x0001, 0x8001]),
        3 => any::<u16>(),
        2 => prop::sample::select(vec![
            0x0000u16, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0x7dff, 0x7bff, 0x5bff, 0x5c00,
            0x5bfe, 0xfbff,
        ]),
    ]
}

/// A rank 2–4 shape of at most a few thousand elements, the pruned dim, and a divisor-free size
/// parameter (m or block size) in 1..=max.
fn shape_dim(max_size: usize) -> impl Strategy<Value = (Vec<usize>, usize, usize)> {
    (prop::collection::vec(1usize..40, 2..5), 0usize..2, 1..=max_size)
        .prop_filter("at most 6000 elements", |(s, _, _)| {
            s.iter().product::<usize>() <= 6000
        })
}

fn nm_agrees<T: Element>(
    w: &[T],
    shape: &[usize],
    dim: usize,
    n: usize,
    m: usize,
) -> Result<(), TestCaseError> {
    let layout = ChannelLayout::new(shape, w.len(), dim).map_err(|e| TestCaseError::fail(e.0))?;
    let fast = stable_rank_flags(w, layout, n, m);
    let reference = argsort_flags(w, layout, n, m);
    prop_assert_eq!(fast, reference, "shape {:?} dim {} {}:{}", shape, dim, n, m);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn nm_stable_rank_matches_argsort_f16(
        (shape, dim, m) in shape_dim(16),
        n_frac in 0.0f64..=1.0,
        bits in prop::collection::vec(f16_bits(), 6000),
    ) {
        let len: usize = shape.iter().product();
        let w: Vec<f16> = bits[..len].iter().map(|&b| f16::from_bits(b)).collect();
        let n = ((m as f64) * n_frac).round() as usize;
        nm_agrees(&w, &shape, dim, n, m)?;
    }

    #[test]
    fn nm_stable_rank_matches_argsort_other_types(
        (shape, dim, m) in shape_dim(16),
        n_frac in 0.0f64..=1.0,
        bytes in prop::collection::vec(prop_oneof![any::<u8>(), prop::sample::select(vec![0u8, 1, 128, 255, 127])], 6000),
        wide in prop::collection::vec(prop_oneof![any::<u32>(), prop::sample::select(vec![0u32, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0x3f80_0000, 0xbf80_0000])], 6000),
    ) {
        let len: usize = shape.iter().product();
        let n = ((m as f64) * n_frac).round() as usize;
        let w8: Vec<i8> = bytes[..len].iter().map(|&b| b as i8).collect();
        nm_agrees(&w8, &shape, dim, n, m)?;
        nm_agrees(&bytes[..len], &shape, dim, n, m)?;
        let w32: Vec<f32> = wide[..len].iter().map(|&b| f32::from_bits(b)).collect();
        nm_agrees(&w32, &shape, dim, n, m)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// m = 2 and 4 along the innermost axis rank each group without transposing: rows whose
    /// length is not a multiple of m (a zero-padded last group), ties, NaN and inf.
    #[test]
    fn nm_small_m_on_contiguous_groups_matches_argsort(
        rows in 1usize..6,
        channel in 1usize..70,
        four in any::<bool>(),
        n_frac in 0.0f64..=1.0,
        bits in prop::collection::vec(prop_oneof![f16_bits(), prop::sample::select(vec![0u16, 0x8000, 0x3c00, 0xbc00, 0x7c00, 0x7e00])], 420),
    ) {
        let m = if four { 4 } else { 2 };
        let n = ((m as f64) * n_frac).round() as usize;
        let w: Vec<f16> = bits[..rows * channel].iter().map(|&b| f16::from_bits(b)).collect();
        nm_agrees(&w, &[rows, channel], 1, n, m)?;
    }
}

/// Tensors wider than one tile in each layout: many groups in a row (inner == 1) and long rows
/// per group member (inner > 1), with outer > 1.
#[test]
fn nm_stable_rank_spans_tiles() -> Result<(), TestCaseError> {
    let mut x: u32 = 12345;
    let w: Vec<f16> = (0..3 * 5003 * 2)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Few distinct magnitudes: plenty of ties, some NaN and inf.
            f16::from_bits(((x >> 16) as u16 & 0x8007) | (0x7c00 * u16::from((x >> 8).is_multiple_of(97))))
        })
        .collect();
    for (shape, dim) in [
        (vec![6, 5003], 1),
        (vec![6, 5003], 0),
        (vec![5003, 6], 0),
        (vec![3, 5003, 2], 1),
    ] {
        for (n, m) in [(2, 4), (1, 3), (5, 16), (7, 7)] {
            nm_agrees(&w, &shape, dim, n, m)?;
        }
    }
    Ok(())
}

/// Where every encoding chunk holds whole groups, n:m ranks chunk by chunk inside the encoding
/// (no tensor-sized flags): the sparse result must be the reference's, for groups of one element
/// per row (dim 1) and of whole rows (dim 0), chunk boundaries inside rows, and outer > 1.
#[test]
fn nm_ranked_per_chunk_matches_the_reference_encoding() {
    use super::execute::n_m_in_place;
    use super::mask::{encode_sparse, ENCODE_CHUNK};
    use super::{Apply, Outcome};
    let mut x: u32 = 777;
    let w: Vec<f16> = (0..(3 * ENCODE_CHUNK + 4 * 4100))
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            f16::from_bits(((x >> 16) as u16 & 0x800f) | (0x7c00 * u16::from((x >> 8).is_multiple_of(89))))
        })
        .collect();
    for (shape, dim, n, m) in [
        (vec![48, 4096], 1, 2, 4),
        (vec![37, 4100], 1, 2, 4),
        (vec![37, 4100], 1, 1, 2),
        (vec![37, 4100], 1, 3, 4),
        (vec![9475, 16], 1, 5, 8),
        (vec![64, 2048], 0, 2, 4),
        (vec![3, 16, 4096], 1, 2, 4),
    ] {
        let len: usize = shape.iter().product();
        let w = &w[..len];
        let layout = ChannelLayout::new(&shape, len, dim).unwrap();
        let reference_flags = argsort_flags(w, layout, n, m);
        let want = encode_sparse(w, Apply::Multiply, |i| reference_flags[i]);
        let Ok(Outcome::Pruned(got)) = n_m_in_place(w.to_vec(), &shape, n, m, dim) else {
            panic!("{shape:?} {n}:{m} was not pruned");
        };
        assert_eq!(got.mask, want.mask, "{shape:?} dim {dim} {n}:{m}");
        assert_eq!(got.kept, want.kept);
        let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.nonzero), bits(&want.nonzero));
    }
}

fn block_agrees<T: Element>(
    w: &[T],
    shape: &[usize],
    dim: usize,
    bs: usize,
    s: f64,
) -> Result<(), TestCaseError> {
    let layout = ChannelLayout::new(shape, w.len(), dim).map_err(|e| TestCaseError::fail(e.0))?;
    let fast = fast_block_flags(w, layout, bs, s).ok_or_else(|| TestCaseError::fail("no fast path"))?;
    let reference = reference_flags(w, layout, bs, s);
    // The encoder asks for the flags chunk by chunk: any window must match the whole.
    if let (Some(Ok(decisions)), Ok(all)) = (fast_block_decisions(w, layout, bs, s), &reference) {
        for (start, len) in [
            (0, w.len()),
            (1, w.len() - 1),
            (w.len() / 3, w.len() / 2),
            (w.len() - 1, 1),
        ] {
            let mut window = vec![true; len];
            decisions.fill(start, &mut window);
            prop_assert_eq!(
                &window[..],
                &all[start..start + len],
                "window at {} of {}",
                start,
                len
            );
        }
        // The GPU's block flags: element (o, c, i) reads bit (o * blocks + c / bs) * inner + i.
        let words = decisions.pruned_words();
        let blocks = layout.channel.div_ceil(bs);
        prop_assert_eq!(words.len(), (layout.outer * blocks * layout.inner).div_ceil(32));
        for (f, &want) in all.iter().enumerate() {
            let (row, i) = (f / layout.inner, f % layout.inner);
            let (o, c) = (row / layout.channel, row % layout.channel);
            let b = (o * blocks + c / bs) * layout.inner + i;
            prop_assert_eq!(words[b / 32] >> (b % 32) & 1 == 1, want, "element {}", f);
        }
        // The keep mask the encoder asks for, chunk by chunk from a whole byte on: not pruned and
        // not zero.
        for start in [0, w.len() / 3 / 8 * 8, w.len() / 8 * 8] {
            let values = &w[start..];
            let keep: Vec<bool> = values
                .iter()
                .zip(&all[start..])
                .map(|(x, &p)| !p && !x.is_zero())
                .collect();
            let mut want = vec![0u8; values.len().div_ceil(8)];
            flags_to_bytes(&keep, &mut want);
            let mut got = vec![0xa5u8; want.len()];
            let kept = decisions.mask_into(start, values, &mut got);
            prop_assert_eq!(&got, &want, "mask from {}", start);
            prop_assert_eq!(kept, keep.iter().filter(|&&k| k).count());
        }
    }
    prop_assert_eq!(
        fast,
        reference,
        "shape {:?} dim {} block {} s {}",
        shape,
        dim,
        bs,
        s
    );
    Ok(())
}

/// Sparsities between 0 and 1 (exclusive, as the kernel's callers guarantee), with the round ones
/// that coremltools configs use.
fn sparsity() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0001f64..0.9999,
        prop::sample::select(vec![0.5, 0.3, 0.75, 0.9, 0.01])
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn block_fast_matches_reference_f16(
        (shape, dim, bs) in shape_dim(20),
        s in sparsity(),
        bits in prop::collection::vec(f16_bits(), 6000),
        calm in any::<bool>(),
    ) {
        let len: usize = shape.iter().product();
        // Half the cases without NaN, so the percentile is not always disabled.
        let w: Vec<f16> = bits[..len]
            .iter()
            .map(|&b| if calm && (b & 0x7fff) > 0x7c00 { b & 0x3fff } else { b })
            .map(f16::from_bits)
            .collect();
        block_agrees(&w, &shape, dim, bs, s)?;
    }

    #[test]
    fn block_fast_matches_reference_f32(
        (shape, dim, bs) in shape_dim(20),
        s in sparsity(),
        bits in prop::collection::vec(prop_oneof![
            3 => prop::sample::select(vec![0x3f80_0000u32, 0xbf80_0000, 0x3f80_0001, 0x4000_0000, 0x0000_0001, 0x5f00_0000, 0x6000_0000]),
            3 => any::<u32>().prop_map(|b| b & 0xbfff_ffff),
            1 => prop::sample::select(vec![0u32, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0x7f7f_ffff]),
        ], 6000),
        calm in any::<bool>(),
    ) {
        let len: usize = shape.iter().product();
        let w: Vec<f32> = bits[..len]
            .iter()
            .map(|&b| if calm && (b & 0x7fff_ffff) > 0x7f80_0000 { b & 0x3fff_ffff } else { b })
            .map(f32::from_bits)
            .collect();
        block_agrees(&w, &shape, dim, bs, s)?;
    }
}

/// Shapes wider than one tile, block sizes that take numpy's 8-way and recursive pairwise sums,
/// and fp16 magnitudes around the square-overflow edge (255.9).
#[test]
fn block_fast_spans_tiles_and_pairwise_cases() -> Result<(), TestCaseError> {
    let mut x: u32 = 777;
    let w: Vec<f16> = (0..6 * 5003)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let r = x >> 16;
            let b = match r % 5 {
                0 => 0x5bf0 + (r as u16 >> 4 & 0x1f),
                1 => 0x3c00,
                _ => r as u16 & 0x47ff,
            };
            f16::from_bits(b | (r as u16 & 0x8000))
        })
        .collect();
    let w32: Vec<f32> = w.iter().map(|h| h.to_f32() * 1e17).collect();
    for (shape, dim) in [
        (vec![6, 5003], 1),
        (vec![6, 5003], 0),
        (vec![5003, 6], 0),
        (vec![3, 5003, 2], 1),
        // Rows of decisions a whole number of bytes long.
        (vec![600, 48], 0),
        (vec![2, 600, 24], 1),
    ] {
        let len: usize = shape.iter().product();
        for bs in [1, 2, 4, 7, 8, 9, 16, 150, 1500] {
            for s in [0.5, 0.37, 0.9] {
                block_agrees(&w[..len], &shape, dim, bs, s)?;
                block_agrees(&w32[..len], &shape, dim, bs, s)?;
            }
        }
    }
    Ok(())
}

/// The flags are the same whatever the number of threads (work is split by rows, groups and
/// tiles; the histogram merges integer counts).
#[test]
fn fast_paths_ignore_thread_count() {
    let w: Vec<f16> = (0..257 * 1031u32)
        .map(|i| f16::from_bits((i.wrapping_mul(2_654_435_761) >> 19) as u16 & 0x5fff))
        .collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        pool.install(|| {
            [(vec![257, 1031], 0), (vec![257, 1031], 1)]
                .into_iter()
                .map(|(shape, dim)| {
                    let layout = ChannelLayout::new(&shape, w.len(), dim).expect("valid shape");
                    let nm = stable_rank_flags(&w, layout, 2, 4);
                    let blk = fast_block_flags(&w, layout, 4, 0.5).and_then(|r| r.ok());
                    (nm, blk)
                })
                .collect::<Vec<_>>()
        })
    };
    let one = run(1);
    assert!(one
        .iter()
        .all(|(nm, blk)| nm.contains(&true) && blk.as_ref().is_some_and(|b| b.contains(&true))));
    assert_eq!(one, run(3));
}
