//! The streaming selection of the k-th smallest magnitude over fp16 and fp32 tensors, and the cut
//! in each dtype's key space (see the parent module for the rule and the passes).

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::prune::keep_mask::MagKey;
use crate::prune::Element;
use crate::tensor::TensorView;

/// The key every NaN shares: the largest.
pub const NAN_KEY: u32 = 0x7fff_ffff;
const F32_INF: u32 = 0x7f80_0000;

/// The order key of `|x|` for an f32: its bits without the sign, every NaN the largest.
pub fn common_key(x: f32) -> u32 {
    let k = x.to_bits() & 0x7fff_ffff;
    if k > F32_INF {
        NAN_KEY
    } else {
        k
    }
}

/// [`common_key`] of an fp16 magnitude key (`bits & 0x7fff`): the fp16 → f32 conversion is exact.
fn common_key_of_f16_key(k16: u16) -> u32 {
    common_key(f16::from_bits(k16 & 0x7fff).to_f32())
}

/// The decided cut: every eligible element whose [`common_key`] is `<=` it is pruned; `None` (k = 0)
/// prunes nothing (zeros are never stored either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalCut {
    pub key: Option<u32>,
}

impl GlobalCut {
    /// The cut value v (`None` for k = 0): an exact f32, NaN when every non-NaN value is below it.
    pub fn value(&self) -> Option<f32> {
        self.key.map(f32::from_bits)
    }
}

/// The cut in a weight dtype's own key space, for the existing "key <= cut" kernels.
pub trait CutKey: Element {
    fn cut_key(cut: GlobalCut) -> Option<MagKey<Self>>;
}

impl CutKey for f32 {
    fn cut_key(cut: GlobalCut) -> Option<u32> {
        // The fp32 magnitude key is the common key itself.
        cut.key
    }
}

impl CutKey for f16 {
    /// The largest fp16 key whose value is `<=` the cut: fp16 → f32 is monotone on magnitudes, so a
    /// binary search over the non-NaN keys finds it; only a NaN cut takes the NaN key.
    fn cut_key(cut: GlobalCut) -> Option<u16> {
        let c = cut.key?;
        if c == NAN_KEY {
            return Some(0x7fff);
        }
        // Invariant: common(lo) <= c (key 0 is +0), common(hi) > c or hi is past infinity.
        let (mut lo, mut hi) = (0u16, 0x7c01u16);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if common_key_of_f16_key(mid) <= c {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}

/// Which tensors a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Pass 1: every eligible tensor.
    All,
    /// Pass 2: the fp32 tensors only (fp16 ones may be skipped; they are ignored if given).
    Fp32Only,
}

const F16_BINS: usize = 1 << 15;
const BINS: usize = 1 << 16;
/// Elements per parallel histogram task: large enough that a task's private histogram is cheap.
const PAR_CHUNK: usize = 1 << 18;

/// Adds the counts of `bin_of(x)` over `values` to `hist`: a small tensor straight into it, a large
/// one in parallel chunks with private histograms summed at the end.
fn count_into<T: Sync>(hist: &mut [u64], values: &[T], bin_of: impl Fn(&T) -> Option<usize> + Sync) {
    let bins = hist.len();
    let count = |chunk: &[T], hist: &mut [u64]| {
        for x in chunk {
            if let Some(b) = bin_of(x) {
                hist[b] += 1;
            }
        }
    };
    if values.len() <= PAR_CHUNK {
        count(values, hist);
        return;
    }
    let part = values
        .par_chunks(PAR_CHUNK)
        .fold(
            || vec![0u64; bins],
            |mut hist, chunk| {
                count(chunk, &mut hist);
                hist
            },
        )
        .reduce(
            || vec![0u64; bins],
            |mut a, b| {
                add_into(&mut a, &b);
                a
            },
        );
    add_into(hist, &part);
}

fn changed() -> Error {
    Error::Unsupported(
        "--global-sparsity: the eligible weights changed between the selection passes (was weight.bin modified during the run?)".into(),
    )
}

fn add_into(total: &mut [u64], part: &[u64]) {
    total.iter_mut().zip(part).for_each(|(x, y)| *x += y);
}

/// The bin holding 0-based `rank` in a histogram, and the rank within that bin.
fn locate(counts: impl IntoIterator<Item = u64>, mut rank: u64) -> Option<(usize, u64)> {
    for (bin, count) in counts.into_iter().enumerate() {
        if rank < count {
            return Some((bin, rank));
        }
        rank -= count;
    }
    None
}

/// Finds the cut for k (see the module doc) and returns it with N, the element count seen.
/// `read(pass, sink)` must hand every eligible tensor of `pass` to `sink`, one at a time, the same
/// values on every call; if the second pass disagrees with the first (the weights changed on disk
/// between them), that is an error rather than a wrong cut. Errors from `read` are passed through.
/// `k > N` is clamped to N.
pub fn select(
    k: u64,
    mut read: impl FnMut(Pass, &mut dyn FnMut(TensorView<'_>)) -> Result<()>,
) -> Result<(GlobalCut, u64)> {
    // Pass 1.
    let mut f16_hist = vec![0u64; F16_BINS];
    let mut f32_high = vec![0u64; BINS];
    read(Pass::All, &mut |view| match view {
        TensorView::F16(w) => count_into(&mut f16_hist, w, |x| Some((x.to_bits() & 0x7fff) as usize)),
        TensorView::F32(w) => count_into(&mut f32_high, w, |x| Some((common_key(*x) >> 16) as usize)),
    })?;
    let total: u64 = f16_hist.iter().sum::<u64>() + f32_high.iter().sum::<u64>();
    let k = k.min(total);
    if k == 0 {
        return Ok((GlobalCut { key: None }, total));
    }
    // The fp16 keys in common-key order, with their counts (fp16 → f32 keeps the order).
    let f16_common = |k16: usize| common_key_of_f16_key(k16 as u16);
    let mut high = f32_high.clone();
    for (k16, &c) in f16_hist.iter().enumerate() {
        high[(f16_common(k16) >> 16) as usize] += c;
    }
    // k <= total, so the rank lies inside the histogram.
    let (bin, rank) = locate(high.iter().copied(), k - 1).ok_or_else(changed)?;
    // The low 16 bits of the keys inside that bin: the fp16 ones from pass 1's exact histogram.
    let mut low = vec![0u64; BINS];
    for (k16, &c) in f16_hist.iter().enumerate() {
        let key = f16_common(k16);
        if (key >> 16) as usize == bin {
            low[(key & 0xffff) as usize] += c;
        }
    }
    if f32_high[bin] > 0 {
        // Pass 2: the fp32 keys inside the boundary bin.
        read(Pass::Fp32Only, &mut |view| {
            if let TensorView::F32(w) = view {
                count_into(&mut low, w, |x| {
                    let key = common_key(*x);
                    ((key >> 16) as usize == bin).then_some((key & 0xffff) as usize)
                });
            }
        })?;
    }
    if low.iter().sum::<u64>() != high[bin] {
        return Err(changed());
    }
    let (lo, _) = locate(low.iter().copied(), rank).ok_or_else(changed)?;
    Ok((
        GlobalCut {
            key: Some(((bin as u32) << 16) | lo as u32),
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule by sorting: the k-th smallest common key.
    fn by_sorting(tensors: &[Tensor], k: u64) -> GlobalCut {
        let mut keys: Vec<u32> = tensors
            .iter()
            .flat_map(|t| match t {
                Tensor::F16(w) => w.iter().map(|x| common_key(x.to_f32())).collect::<Vec<_>>(),
                Tensor::F32(w) => w.iter().map(|x| common_key(*x)).collect(),
            })
            .collect();
        keys.sort_unstable();
        GlobalCut {
            key: (k > 0).then(|| keys[k as usize - 1]),
        }
    }

    #[derive(Debug, Clone)]
    enum Tensor {
        F16(Vec<f16>),
        F32(Vec<f32>),
    }

    /// Runs [`select`] over in-memory tensors and counts how often each pass read.
    fn run(tensors: &[Tensor], k: u64) -> (GlobalCut, u64, [usize; 2]) {
        let mut reads = [0usize; 2];
        let (cut, total) = select(k, |pass, sink| {
            reads[usize::from(pass == Pass::Fp32Only)] += 1;
            for t in tensors {
                match (t, pass) {
                    (Tensor::F16(w), Pass::All) => sink(TensorView::F16(w)),
                    (Tensor::F16(_), Pass::Fp32Only) => {}
                    (Tensor::F32(w), _) => sink(TensorView::F32(w)),
                }
            }
            Ok(())
        })
        .unwrap();
        (cut, total, reads)
    }

    fn f16s(v: &[f32]) -> Tensor {
        Tensor::F16(v.iter().map(|&x| f16::from_f32(x)).collect())
    }

    #[test]
    fn f16_cut_is_the_largest_fp16_not_above_the_cut() {
        let cut = |x: f32| GlobalCut {
            key: Some(common_key(x)),
        };
        // 0.1f32 lies between two fp16 values; the lower one is kept as the cut.
        let below = f16::from_f32(0.1);
        let k = <f16 as CutKey>::cut_key(cut(0.1)).unwrap();
        assert!(f16::from_bits(k).to_f32() <= 0.1);
        assert!(f16::from_bits(k + 1).to_f32() > 0.1);
        assert!(k == below.to_bits() || k + 1 == below.to_bits());
        assert_eq!(<f16 as CutKey>::cut_key(cut(1.0)), Some(f16::ONE.to_bits()));
        assert_eq!(<f16 as CutKey>::cut_key(cut(0.0)), Some(0));
        assert_eq!(<f16 as CutKey>::cut_key(cut(1e9)), Some(0x7bff)); // 65504: inf is above
        assert_eq!(<f16 as CutKey>::cut_key(cut(f32::INFINITY)), Some(0x7c00));
        assert_eq!(<f16 as CutKey>::cut_key(cut(f32::NAN)), Some(0x7fff));
        assert_eq!(<f16 as CutKey>::cut_key(GlobalCut { key: None }), None);
        // Exhaustively: every fp16 key is pruned iff its value is <= the cut.
        for c in [1e-8f32, 6e-8, 0.1, 0.33333334, 65504.0, 65519.0, 65520.0] {
            let k = <f16 as CutKey>::cut_key(cut(c)).unwrap();
            for k16 in 0..0x7c01u16 {
                assert_eq!(
                    k16 <= k,
                    f16::from_bits(k16).to_f32() <= c,
                    "cut {c} key {k16:#x}"
                );
            }
        }
    }

    #[test]
    fn selection_matches_sorting_on_mixed_models() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..40 {
            let mut tensors = Vec::new();
            for t in 0..(1 + next() % 4) {
                let n = 1 + (next() % 300) as usize;
                // Few distinct values in some rounds, to make ties at the cut.
                let distinct = if round % 3 == 0 { 5 } else { u64::MAX };
                // Any bits (NaN and infinities included), with either sign.
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        let r = next();
                        let bits = ((r % distinct) as u32).wrapping_mul(0x0010_1357) ^ 0x3c00_0000;
                        f32::from_bits(bits ^ ((r >> 40) as u32 & 0x8000_0000))
                    })
                    .collect();
                tensors.push(if (t + round) % 2 == 0 {
                    f16s(&values)
                } else {
                    Tensor::F32(values)
                });
            }
            let total: u64 = tensors
                .iter()
                .map(|t| match t {
                    Tensor::F16(w) => w.len() as u64,
                    Tensor::F32(w) => w.len() as u64,
                })
                .sum();
            for k in [0, 1, total / 3, total / 2, total - 1, total] {
                let (cut, n, _) = run(&tensors, k);
                assert_eq!(n, total);
                assert_eq!(cut, by_sorting(&tensors, k), "round {round} k {k}");
            }
        }
    }

    #[test]
    fn fp16_only_models_take_one_histogram_pass() {
        let tensors = vec![f16s(&[0.5, -0.25, 0.125, 3.0]), f16s(&[0.25, 1.0])];
        let (cut, total, reads) = run(&tensors, 3);
        assert_eq!(total, 6);
        assert_eq!(cut.value(), Some(0.25)); // 0.125, 0.25, 0.25: the tie is at the cut
        assert_eq!(reads, [1, 0]);
    }

    #[test]
    fn the_refinement_pass_runs_only_when_the_boundary_bin_holds_fp32_values() {
        // fp32 values far above the cut: the boundary bin is fp16 only.
        let tensors = vec![f16s(&[0.5, 0.25, 0.125]), Tensor::F32(vec![1000.0, 2000.0])];
        let (cut, _, reads) = run(&tensors, 2);
        assert_eq!((cut.value(), reads), (Some(0.25), [1, 0]));
        // The cut falls between fp32 values that share their high 16 bits.
        let a = f32::from_bits(0x3e80_0001);
        let b = f32::from_bits(0x3e80_0002);
        let tensors = vec![f16s(&[0.25, 8.0]), Tensor::F32(vec![b, a, -a])];
        let (cut, _, reads) = run(&tensors, 3);
        assert_eq!((cut.value(), reads), (Some(a), [1, 1]));
        let (cut, _, _) = run(&tensors, 1);
        assert_eq!(cut.value(), Some(0.25));
    }

    #[test]
    fn nan_is_the_largest_magnitude_and_signed_zeros_are_equal() {
        let tensors = vec![
            f16s(&[f32::NAN, -0.0, 1.0]),
            Tensor::F32(vec![0.0, f32::NAN, f32::NEG_INFINITY, -2.0]),
        ];
        let (cut, _, _) = run(&tensors, 2);
        assert_eq!(cut.key, Some(0)); // -0 and +0 tie
        let (cut, _, _) = run(&tensors, 5);
        assert_eq!(cut.value(), Some(f32::INFINITY));
        let (cut, _, _) = run(&tensors, 6);
        assert_eq!(cut.key, Some(NAN_KEY));
        let (cut, _, _) = run(&tensors, 7);
        assert_eq!(cut.key, Some(NAN_KEY));
        // f32 NaN payloads all share the one key.
        assert_eq!(common_key(f32::from_bits(0xffc0_0001)), NAN_KEY);
        assert_eq!(common_key_of_f16_key(0x7e01), NAN_KEY);
    }

    #[test]
    fn weights_that_change_between_passes_are_an_error_not_a_wrong_cut() {
        let first = [1.0f32, 2.0, 3.0];
        let second = [1.0f32, 5.0, 3.0];
        let result = select(2, |pass, sink| {
            sink(TensorView::F32(if pass == Pass::All { &first } else { &second }));
            Ok(())
        });
        let err = result.unwrap_err().to_string();
        assert!(err.contains("changed between the selection passes"), "{err}");
    }

    #[test]
    fn k_zero_and_empty_models_cut_nothing() {
        let (cut, total, _) = run(&[f16s(&[1.0, 2.0])], 0);
        assert_eq!((cut.key, total), (None, 2));
        let (cut, total, _) = run(&[], 5);
        assert_eq!((cut.key, total), (None, 0));
    }

    #[test]
    fn parallel_histograms_match_a_sequential_count() {
        let values: Vec<f32> = (0..(3 * PAR_CHUNK + 17))
            .map(|i| (i % 1000) as f32 * 0.37)
            .collect();
        let mut hist = vec![1u64; BINS]; // counts are added to what is there
        count_into(&mut hist, &values, |x| Some((common_key(*x) >> 16) as usize));
        let mut expected = vec![1u64; BINS];
        for x in &values {
            expected[(common_key(*x) >> 16) as usize] += 1;
        }
        assert_eq!(hist, expected);
        let tensors = vec![Tensor::F32(values.clone())];
        let k = values.len() as u64 / 2;
        assert_eq!(run(&tensors, k).0, by_sorting(&tensors, k));
    }
}
