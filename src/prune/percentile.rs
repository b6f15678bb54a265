//! `np.percentile(map, q)` with numpy 2.x semantics, method "linear", evaluated as a pruning cut in
//! key space (spec §5.6).
//!
//! coremltools calls `np.percentile(map, q)` with the Python float `q = target_sparsity * 100`.
//! numpy then computes, all in float64: `quantile = q / 100`, the virtual index
//! `vi = (N - 1) * quantile`, `prev = floor(vi)`, `next = prev + 1`, except that when
//! `vi >= N - 1` both indices become −1 (the last element) — and gamma is computed against that −1,
//! `gamma = vi - prev` (so `gamma = vi + 1` there). The two order statistics `sorted[prev]`,
//! `sorted[next]` are found by radix select on keys (never a full sort), then interpolated by the
//! map type's `_lerp` ([`MapValue::percentile_cut`]). If the map holds a NaN, numpy's result is NaN
//! and nothing satisfies `map <= thr`.

use super::element::MapValue;
use super::keys::{order_stats, order_stats_of, Key};
use super::KernelError;

/// numpy's virtual index for method "linear": ranks of the two neighbours and gamma.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VirtualIndex {
    pub prev: u64,
    pub next: u64,
    pub gamma: f64,
}

/// The virtual index of `quantile` (in [0, 1]) among `n >= 1` sorted values, as
/// `numpy.lib._function_base_impl._get_indexes` / `_get_gamma` compute it.
pub fn virtual_index(n: u64, quantile: f64) -> VirtualIndex {
    let last = n.saturating_sub(1);
    let vi = last as f64 * quantile;
    if vi >= last as f64 {
        // Above bounds: both indices are -1 and gamma is measured from -1.
        return VirtualIndex {
            prev: last,
            next: last,
            gamma: vi + 1.0,
        };
    }
    let prev = vi.floor();
    VirtualIndex {
        prev: prev as u64,
        next: prev as u64 + 1,
        gamma: vi - prev,
    }
}

/// The cut `Some(k)` such that `map <= np.percentile(map, target_sparsity * 100)` holds exactly for
/// keys ≤ k (`None`: for no element). `items` yields (key, multiplicity) of the map and is called
/// once per selection pass; `n` is the map's element count.
///
/// Errors like numpy when `n == 0` or the quantile is outside [0, 1] (including NaN). The callers
/// handle `q == 100` and `q == 0` before calling this, as coremltools does.
pub fn percentile_cut<M, I, F>(items: F, n: u64, target_sparsity: f64) -> Result<Option<M::Key>, KernelError>
where
    M: MapValue,
    I: Iterator<Item = (M::Key, u64)>,
    F: Fn() -> I,
{
    cut_from_stats::<M>(n, target_sparsity, |prev, next| order_stats(items, n, prev, next))
}

/// [`percentile_cut`] over the keys of every element of `w` (multiplicity 1), selected in
/// parallel by [`order_stats_of`]; the same result for any thread count.
pub fn percentile_cut_of<M, T, F>(
    w: &[T],
    key: F,
    target_sparsity: f64,
) -> Result<Option<M::Key>, KernelError>
where
    M: MapValue,
    T: Sync,
    F: Fn(&T) -> M::Key + Sync,
{
    cut_from_stats::<M>(w.len() as u64, target_sparsity, |prev, next| {
        order_stats_of(w, key, prev, next)
    })
}

/// The cut from the two order statistics `stats(prev, next)` returns for the virtual index of
/// `target_sparsity` among `n` map values, validated like [`percentile_cut`].
pub(crate) fn cut_from_stats<M: MapValue>(
    n: u64,
    target_sparsity: f64,
    stats: impl FnOnce(u64, u64) -> Option<super::keys::OrderStats<M::Key>>,
) -> Result<Option<M::Key>, KernelError> {
    let quantile = quantile_of(target_sparsity)?;
    if n == 0 {
        return Err(KernelError("cannot take a percentile of an empty tensor".into()));
    }
    let vi = virtual_index(n, quantile);
    let stats = stats(vi.prev, vi.next)
        .ok_or_else(|| KernelError("percentile selection: element counts disagree".into()))?;
    if M::is_nan_key(stats.max) {
        return Ok(None);
    }
    Ok(M::percentile_cut(
        M::from_key(stats.prev),
        M::from_key(stats.next),
        vi.gamma,
    ))
}

/// `np.true_divide(target_sparsity * 100, 100)`, validated like `np.percentile` does.
fn quantile_of(target_sparsity: f64) -> Result<f64, KernelError> {
    let q = target_sparsity * 100.0;
    let quantile = q / 100.0;
    if (0.0..=1.0).contains(&quantile) {
        Ok(quantile)
    } else {
        Err(KernelError(format!("percentile {q} is outside [0, 100]")))
    }
}

/// Whether `key <= cut` (the pruning comparison in key space).
#[inline]
pub fn at_or_below<K: Key>(key: K, cut: Option<K>) -> bool {
    cut.is_some_and(|c| key <= c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_index_matches_numpy() {
        // N = 3072, s = 0.1: vi = 307.1 -> prev 307, next 308.
        let v = virtual_index(3072, 10.0 / 100.0);
        assert_eq!((v.prev, v.next), (307, 308));
        assert!((v.gamma - 0.1).abs() < 1e-9);
        // N = 1: vi = 0 >= 0 -> both -1 (the only element), gamma = 0 + 1.
        assert_eq!(
            virtual_index(1, 0.5),
            VirtualIndex {
                prev: 0,
                next: 0,
                gamma: 1.0
            }
        );
    }

    #[test]
    fn distinct_magnitudes_give_floor_plus_one_zeros() {
        // 2049 distinct fp16 magnitudes at s = 0.5 -> 1025 values at or below the cut (spec §5.6).
        let vals: Vec<half::f16> = (1..=2049u16).map(half::f16::from_bits).collect();
        let cut = percentile_cut::<half::f16, _, _>(|| vals.iter().map(|v| (v.key(), 1)), 2049, 0.5)
            .unwrap_or(None);
        let pruned = vals.iter().filter(|v| at_or_below(v.key(), cut)).count();
        assert_eq!(pruned, 1025);
    }

    #[test]
    fn nan_disables_and_bad_quantiles_error() {
        let vals = [1.0f32, f32::NAN, 3.0];
        let cut = percentile_cut::<f32, _, _>(|| vals.iter().map(|v| (v.key(), 1)), 3, 0.5);
        assert_eq!(cut.ok(), Some(None));
        let bad = percentile_cut::<f32, _, _>(|| vals.iter().map(|v| (v.key(), 1)), 3, 1.5);
        assert!(bad.is_err());
        let empty = percentile_cut::<f32, _, _>(std::iter::empty, 0, 0.5);
        assert!(empty.is_err());
    }
}
