//! The CPU reference executing a [`WorkOrder`]: the kernel each order names, on a tensor's values.
//! Every other device is tested against this byte for byte.

use super::block::block_decided;
use super::element::Element;
use super::keep_mask::MagKey;
use super::keys::Key;
use super::magnitude::percentile_in_place;
use super::mask::{encode_kept, encode_sparse_in_place, Dense};
use super::nm::n_m_decided;
use super::order::{minimum_sparsity_skip, WorkOrder};
use super::{Apply, KernelError, Outcome};

/// Executes `order` on `w`, the kept values in `w`'s own allocation or its output buffer.
pub fn execute<'a, T: Element>(
    order: &WorkOrder,
    w: impl Into<Dense<'a, T>>,
) -> Result<Outcome<T>, KernelError> {
    let w = w.into();
    Ok(match *order {
        WorkOrder::Skip(ref reason) => Outcome::Skipped(reason.clone()),
        WorkOrder::ZeroAll => Outcome::Pruned(encode_sparse_in_place(w, Apply::Multiply, |_, _, flags| {
            flags.fill(true)
        })),
        WorkOrder::Cut {
            cut,
            minimum_sparsity,
        } => cut_in_place(w, cut, minimum_sparsity),
        WorkOrder::Percentile { sparsity } => Outcome::Pruned(percentile_in_place(w, sparsity)?),
        WorkOrder::Block {
            layout,
            block_size,
            sparsity,
        } => Outcome::Pruned(block_decided(w, layout, block_size, sparsity)?),
        WorkOrder::NM { layout, n, m } => Outcome::Pruned(n_m_decided(w, layout, n, m)),
    })
}

/// [`WorkOrder::Cut`]: every element whose magnitude key is at or below `cut` becomes 0, and the
/// minimum-sparsity check where one is given.
pub(super) fn cut_in_place<T: Element>(
    w: Dense<'_, T>,
    cut: Option<u64>,
    minimum_sparsity: Option<f64>,
) -> Outcome<T> {
    let cut = cut.map(MagKey::<T>::from_u64);
    let len = w.values().len() as u64;
    let sparse = encode_kept(w, |_, values, bytes| T::keep_mask(values, cut, bytes));
    match minimum_sparsity.and_then(|m| minimum_sparsity_skip(sparse.kept, len, m)) {
        Some(reason) => Outcome::Skipped(reason),
        None => Outcome::Pruned(sparse),
    }
}
