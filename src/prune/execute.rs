//! The CPU reference executing a [`WorkOrder`]: the kernel each order names, on a tensor's values.
//! Every other device is tested against this byte for byte. Also the kernels by mode
//! ([`threshold()`], [`magnitude()`], [`block()`], [`n_m()`]): the order decided, then executed.

use super::block::block_decided;
use super::element::Element;
use super::magnitude::percentile_in_place;
use super::mask::{encode_sparse_in_place, Dense};
use super::nm::n_m_decided;
use super::order::{threshold_key, WorkOrder};
use super::threshold::cut_in_place;
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

/// Prunes `w` by magnitude threshold. See the module doc for the exact rules; the device path
/// takes the same cut through [`super::order::WorkOrder::threshold`].
pub fn threshold<T: Element>(w: &[T], threshold: f64, minimum_sparsity_percentile: f64) -> Outcome<T> {
    let w = Dense::Borrowed {
        values: w,
        out: Vec::new(),
    };
    cut_in_place(
        w,
        threshold_key::<T>(threshold),
        Some(minimum_sparsity_percentile),
    )
}

/// Prunes the `target_sparsity` fraction of smallest magnitudes of `w`. Errors for an empty tensor
/// or a `target_sparsity` numpy's percentile rejects (outside [0, 1], NaN).
pub fn magnitude<T: Element>(w: &[T], target_sparsity: f64) -> Result<Outcome<T>, KernelError> {
    let w = Dense::Borrowed {
        values: w,
        out: Vec::new(),
    };
    execute(&WorkOrder::magnitude(target_sparsity), w)
}

/// Prunes whole blocks of `block_size` elements along `dim` by their L2 norm.
pub fn block<T: Element>(
    w: &[T],
    shape: &[usize],
    target_sparsity: f64,
    block_size: usize,
    dim: usize,
) -> Result<Outcome<T>, KernelError> {
    let order = WorkOrder::block(shape, w.len(), target_sparsity, block_size, dim)?;
    let w = Dense::Borrowed {
        values: w,
        out: Vec::new(),
    };
    execute(&order, w)
}

/// Prunes the `n` smallest magnitudes in every group of `m` consecutive elements along `dim`.
pub fn n_m<T: Element>(
    w: &[T],
    shape: &[usize],
    n: usize,
    m: usize,
    dim: usize,
) -> Result<Outcome<T>, KernelError> {
    n_m_in_place(
        Dense::Borrowed {
            values: w,
            out: Vec::new(),
        },
        shape,
        n,
        m,
        dim,
    )
}

/// [`n_m`], with the kept values in `w`'s own allocation or its output buffer.
pub fn n_m_in_place<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    shape: &[usize],
    n: usize,
    m: usize,
    dim: usize,
) -> Result<Outcome<T>, KernelError> {
    let w = w.into();
    execute(&WorkOrder::n_m(shape, w.values().len(), n, m, dim)?, w)
}
