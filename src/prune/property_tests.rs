//! Properties of the kernels that hold for any input (proptest).

use half::f16;
use proptest::prelude::*;

use super::element::{Element, MapValue};
use super::{block, decode_dense, magnitude, n_m, threshold, Outcome, SparseTensor};

fn f16_from(bits: Vec<u16>) -> Vec<f16> {
    bits.into_iter().map(f16::from_bits).collect()
}

fn pruned(o: Outcome<f16>) -> SparseTensor<f16> {
    match o {
        Outcome::Pruned(s) => s,
        Outcome::Skipped(msg) => panic!("unexpected skip: {msg}"),
    }
}

/// Checks the sparse invariants and returns the decoded dense tensor.
fn checked_decode<T: Element>(s: &SparseTensor<T>, n: usize) -> Vec<T> {
    let popcount: u64 = s.mask.iter().map(|b| u64::from(b.count_ones())).sum();
    assert_eq!(popcount, s.nonzero.len() as u64);
    assert_eq!(s.kept, s.nonzero.len() as u64);
    assert!(s.nonzero.iter().all(|v| !v.is_zero()));
    decode_dense(s, n).expect("consistent sparse tensor")
}

proptest! {
    /// Decoding gives `np.where(pruned, 0, w)`: each element is either its original bits or zero,
    /// and exactly the non-zero originals above the cut survive.
    #[test]
    fn threshold_round_trips(bits in prop::collection::vec(any::<u16>(), 1..400), t in 0.0f64..70000.0) {
        let w = f16_from(bits);
        let s = pruned(threshold(&w, t, 0.0));
        let dense = checked_decode(&s, w.len());
        // The threshold rounded to fp16, compared as exact values.
        let thr = f16::from_bits(super::float::f16_bits_from_f64(t)).to_f64();
        for (x, d) in w.iter().zip(&dense) {
            let keep = x.is_nan() || (!x.is_zero() && x.to_f64().abs() > thr);
            if keep {
                prop_assert_eq!(d.to_bits(), x.to_bits());
            } else {
                prop_assert!(d.is_zero());
            }
        }
    }

    #[test]
    fn threshold_is_monotone(vals in prop::collection::vec(-50.0f32..50.0, 1..300), a in 0.0f64..60.0, b in 0.0f64..60.0) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let kept = |t| match threshold(&vals, t, 0.0) { Outcome::Pruned(s) => s.kept, Outcome::Skipped(_) => u64::MAX };
        prop_assert!(kept(lo) >= kept(hi));
    }

    /// For distinct magnitudes the zero count is floor((N-1)*s') + 1 (spec §5.6), except where the
    /// interpolated threshold rounds up to the next magnitude in f32 (spec: "may round up to B"),
    /// which zeroes one more. The expectation is computed exactly from a sort-based restatement of
    /// numpy's formula, independent of the kernel's radix selection.
    #[test]
    fn magnitude_zero_count_for_distinct_values(n in 2usize..3000, s in 0.001f64..0.999, seed in any::<u64>()) {
        // Distinct positive fp32 magnitudes with random signs.
        let w: Vec<f32> = (0..n).map(|i| {
            let sign = if (seed >> (i % 64)) & 1 == 1 { -1.0 } else { 1.0 };
            sign * (1.0 + i as f32 * 0.5)
        }).collect();
        let out = magnitude(&w, s).map(pruned32);
        let mut sorted: Vec<f32> = w.iter().map(|x| x.abs()).collect();
        sorted.sort_by(f32::total_cmp);
        let thr = numpy_percentile_f32(&sorted, s);
        let expected = sorted.iter().filter(|&&m| m <= thr).count() as u64;
        let closed_form = ((n - 1) as f64 * ((s * 100.0) / 100.0)).floor() as u64 + 1;
        prop_assert!(expected == closed_form || (expected == closed_form + 1 && thr == sorted[closed_form as usize]));
        prop_assert_eq!(out.map(|t| n as u64 - t.kept).ok(), Some(expected));
    }

    #[test]
    fn structural_modes_round_trip(bits in prop::collection::vec(any::<u16>(), 48), dim in 0usize..2, b in 2usize..4, nm in (0usize..5).prop_flat_map(|n| (Just(n), n.max(1)..5))) {
        let w = f16_from(bits);
        let shape = [4, 6, 2];
        if let Ok(Outcome::Pruned(s)) = block(&w, &shape, 0.5, b, dim) {
            let dense = checked_decode(&s, w.len());
            for (x, d) in w.iter().zip(&dense) {
                prop_assert!(d.is_zero() || d.to_bits() == x.to_bits());
            }
        }
        let (n, m) = nm;
        if let Ok(Outcome::Pruned(s)) = n_m(&w, &shape, n, m, dim) {
            let dense = checked_decode(&s, w.len());
            for (x, d) in w.iter().zip(&dense) {
                // w * 1 or w * 0: the same bits, a zero, or (for NaN/inf) a NaN.
                prop_assert!(d.is_zero() || d.to_bits() == x.to_bits() || d.is_nan());
            }
        }
    }

    /// n:m with distinct finite magnitudes prunes exactly n of every full group.
    #[test]
    fn n_m_prunes_n_per_full_group(perm_seed in any::<u64>(), rows in 1usize..5, groups in 1usize..5, nm in (1usize..9).prop_flat_map(|m| (0..=m, Just(m)))) {
        let (n, m) = nm;
        let c = groups * m * 2;
        let len = rows * c;
        let w: Vec<f32> = (0..len).map(|i| ((i as u64).wrapping_mul(perm_seed | 1) % 1_000_003) as f32 + 1.0).collect();
        let out = n_m(&w, &[rows, c], n, m, 1).map(pruned32);
        let s = out.expect("valid");
        prop_assert_eq!(s.kept, (len - len / m * n) as u64);
    }
}

fn pruned32(o: Outcome<f32>) -> SparseTensor<f32> {
    match o {
        Outcome::Pruned(s) => s,
        Outcome::Skipped(msg) => panic!("unexpected skip: {msg}"),
    }
}

#[test]
fn magnitude_extremes() {
    let w = [f32::NAN, f32::INFINITY, -1.0, -0.0, 2.0, 0.0, 3.0, 4.0, 5.0, 6.0];
    // q == 100: 0 * w keeps NaN (quieted) and turns inf into the default NaN.
    let s = pruned32(magnitude(&w, 1.0).expect("valid"));
    assert_eq!(s.kept, 2);
    assert_eq!(s.mask, vec![0b0000_0011, 0]);
    assert_eq!(s.nonzero[1].to_bits(), 0xffc0_0000);
    // q == 0: only zeros go.
    assert_eq!(pruned32(magnitude(&w, 0.0).expect("valid")).kept, 8);
    // Any NaN: percentile is NaN, nothing but the zeros goes.
    assert_eq!(pruned32(magnitude(&w, 0.5).expect("valid")).kept, 8);
    assert!(magnitude(&w, 1.5).is_err());
    assert!(magnitude::<f32>(&[], 0.5).is_err());
}

#[test]
fn skips_carry_coremltools_messages() {
    let w = vec![1.0f32; 24];
    assert_eq!(
        block(&w, &[6, 4], 0.5, 4, 0),
        Ok(Outcome::Skipped(
            "block_size > channel / 2 is not applicable for block sparsity. Got block_size = 4, channel = 6. Skipped."
                .into()
        ))
    );
    assert_eq!(
        n_m(&w, &[4, 6], 2, 4, 1),
        Ok(Outcome::Skipped(
            "m > channel / 2 is not applicable for n:m pruning. Got m = 4, channel = 6. Skipped.".into()
        ))
    );
    assert_eq!(
        threshold(&w, 0.5, 0.5),
        Outcome::Skipped(
            "weight value has sparsity of 0.0 < minimum_sparsity_percentile 0.5. Skipped.".into()
        )
    );
    assert!(n_m(&w, &[24], 1, 2, 0).is_err());
    assert!(n_m(&w, &[4, 6], 3, 2, 0).is_err());
    assert!(block(&w, &[4, 5], 0.5, 2, 0).is_err());
    assert!(block(&w, &[2, 2, 2, 1, 1, 3], 0.5, 1, 0).is_err());
}

#[test]
fn int8_minus_128_is_the_smallest_magnitude() {
    let w: Vec<i8> = vec![-128, 5, 3, 100, -100, 7, 8, 9, 10, 11, 12];
    // threshold 0: only -128 (abs -128 <= 0) and zeros are pruned.
    match threshold(&w, 0.0, 0.0) {
        Outcome::Pruned(s) => assert_eq!((s.kept, s.mask[0] & 1), (10, 0)),
        Outcome::Skipped(m) => panic!("{m}"),
    }
    // A negative threshold still prunes -128 (its np.abs is -128 <= -1), and nothing else.
    let cut = <i8 as Element>::Mag::threshold_cut(-1.0);
    let pruned: Vec<i8> = w
        .iter()
        .copied()
        .filter(|x| super::percentile::at_or_below(x.magnitude().key(), cut))
        .collect();
    assert_eq!(pruned, vec![-128]);
    assert_eq!(<i8 as Element>::Mag::threshold_cut(-128.5), None);
}

/// Linear-time sanity check on a tensor large enough that a quadratic step would stall.
#[test]
fn large_tensors_finish_quickly() {
    let n = 1 << 20;
    let w: Vec<f16> = (0..n)
        .map(|i| f16::from_bits((i as u16).wrapping_mul(40503) & 0x7bff))
        .collect();
    let start = std::time::Instant::now();
    let s = pruned(magnitude(&w, 0.5).expect("valid"));
    let b = pruned(block(&w, &[1024, 1024], 0.5, 4, 1).expect("valid"));
    let m = pruned(n_m(&w, &[1024, 1024], 2, 4, 0).expect("valid"));
    assert!(s.kept > 0 && b.kept > 0 && m.kept > 0);
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

/// numpy 2's `percentile(sorted, s * 100)` (method "linear") for fp32, as spec §5.6 writes it.
fn numpy_percentile_f32(sorted: &[f32], s: f64) -> f32 {
    let n = sorted.len();
    let quantile = (s * 100.0) / 100.0;
    let vi = (n - 1) as f64 * quantile;
    let prev = (vi.floor() as usize).min(n - 1);
    let next = (prev + 1).min(n - 1);
    let g = vi - prev as f64;
    let (a, b) = (sorted[prev], sorted[next]);
    let diff = b - a;
    if g >= 0.5 {
        b - diff * ((1.0 - g) as f32)
    } else {
        a + diff * (g as f32)
    }
}
