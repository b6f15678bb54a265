//! Picks the CPU kernel for a config and a tensor's dtype, and returns the result as typed data the
//! encoder can write. The kernels themselves live in `crate::prune`.

use serde::Serialize;

use crate::config::OpConfig;
use crate::error::{Error, Result};
use crate::global_sparsity::{CutKey, GlobalCut};
use crate::prune::mask::Dense;
use crate::prune::{self, Element, KernelError, Outcome};
use crate::tensor::{TensorData, TensorView, ViewWithSpare};

/// A pruned tensor in sparse form: kept values plus the packed LSB-first keep-mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub nonzero: TensorData,
    pub mask: Vec<u8>,
    pub kept: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KernelResult {
    Pruned(Pruned),
    /// coremltools leaves the tensor alone, with this warning.
    Skipped(String),
}

/// Where pruning kernels run. The CPU backend is the reference; every other backend must return
/// byte-identical results for every config and dtype (tests run each case on every backend).
pub trait Backend {
    /// `"cpu"` or `"gpu"`, as reports name it.
    fn name(&self) -> &'static str;
    /// Runs the kernel `config` selects on `data` of `shape`. `tensor` names errors.
    fn run(&self, config: &OpConfig, data: &TensorData, shape: &[u64], tensor: &str) -> Result<KernelResult>;
}

/// The reference backend: the kernels of `crate::prune`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&self, config: &OpConfig, data: &TensorData, shape: &[u64], tensor: &str) -> Result<KernelResult> {
        run_kernel(config, data, shape, tensor)
    }
}

/// What one tensor gets: the kernel coremltools' config selects, or `--global-sparsity`'s cut,
/// decided beforehand for the whole model. Every device executes either.
#[derive(Debug, Clone, Copy)]
pub enum Order<'a> {
    Config(&'a OpConfig),
    Cut(GlobalCut),
}

/// Runs `order` on `data` of `shape` on the CPU, reusing `data`'s allocation for the kept values.
pub fn run_order_in_place(
    order: Order<'_>,
    data: TensorData,
    shape: &[u64],
    tensor: &str,
) -> Result<KernelResult> {
    match order {
        Order::Config(config) => run_kernel_in_place(config, data, shape, tensor),
        Order::Cut(cut) => run_cut_in_place(cut, data, tensor),
    }
}

/// Runs `order` on borrowed values on the CPU, the kept values written into `out`'s allocation
/// where it fits.
pub fn run_order_on_view(
    order: Order<'_>,
    view: TensorView<'_>,
    out: Option<TensorData>,
    shape: &[u64],
    tensor: &str,
) -> Result<KernelResult> {
    match order {
        Order::Config(config) => run_kernel_on_view(config, view, out, shape, tensor),
        Order::Cut(cut) => Ok(run_cut_on_view(cut, view, out)),
    }
}

/// Runs the kernel `config` selects on `data` of `shape` on the CPU. `tensor` names errors.
pub fn run_kernel(config: &OpConfig, data: &TensorData, shape: &[u64], tensor: &str) -> Result<KernelResult> {
    run_kernel_in_place(config, data.clone(), shape, tensor)
}

/// [`run_kernel`], reusing `data`'s allocation for the kept values: a large tensor then costs one
/// buffer, not two.
pub fn run_kernel_in_place(
    config: &OpConfig,
    data: TensorData,
    shape: &[u64],
    tensor: &str,
) -> Result<KernelResult> {
    let shape = dims(shape, tensor)?;
    let result = match data {
        TensorData::F16(w) => typed(config, w.into(), &shape, TensorData::F16),
        TensorData::F32(w) => typed(config, w.into(), &shape, TensorData::F32),
        TensorData::I8(w) => typed(config, w.into(), &shape, TensorData::I8),
        TensorData::U8(w) => typed(config, w.into(), &shape, TensorData::U8),
        other => {
            return Err(Error::tensor(
                tensor,
                format!("{} weights cannot be pruned", other.dtype()),
            ));
        }
    };
    result.map_err(|e| e.for_tensor(tensor))
}

/// [`run_kernel`] on borrowed values (a mapped weight file), with the kept values written into
/// `out`'s allocation when it is of the same type and large enough (else a fresh one): the input
/// is read where it lies, never copied whole.
pub fn run_kernel_on_view(
    config: &OpConfig,
    view: TensorView<'_>,
    out: Option<TensorData>,
    shape: &[u64],
    tensor: &str,
) -> Result<KernelResult> {
    let shape = dims(shape, tensor)?;
    let result = match dense_of_view(view, out) {
        DenseView::F16(w) => typed(config, w, &shape, TensorData::F16),
        DenseView::F32(w) => typed(config, w, &shape, TensorData::F32),
    };
    result.map_err(|e| e.for_tensor(tensor))
}

/// The shape as `usize`s, or an error naming `tensor`.
fn dims(shape: &[u64], tensor: &str) -> Result<Vec<usize>> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::tensor(tensor, format!("dimension {d} does not fit in memory")))
        })
        .collect()
}

fn typed<T: Element>(
    config: &OpConfig,
    w: Dense<'_, T>,
    shape: &[usize],
    wrap: fn(Vec<T>) -> TensorData,
) -> std::result::Result<KernelResult, KernelError> {
    // Sizes beyond usize can never fit a channel, so the kernels' "> channel / 2" rule skips them.
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let outcome = match *config {
        OpConfig::Threshold { threshold, minimum_sparsity_percentile, .. } => {
            prune::threshold::threshold_in_place(w, threshold, minimum_sparsity_percentile)
        }
        OpConfig::Magnitude { n_m_ratio: Some((n, m)), dim, .. } => {
            prune::nm::n_m_in_place(w, shape, size(n), size(m), dim.unwrap_or(1) as usize)?
        }
        OpConfig::Magnitude { target_sparsity: Some(s), block_size: Some(b), dim, .. } => {
            prune::block::block_in_place(w, shape, s, size(b), dim.unwrap_or(0) as usize)?
        }
        OpConfig::Magnitude { target_sparsity: Some(s), .. } => prune::magnitude::magnitude_in_place(w, s)?,
        OpConfig::Magnitude { target_sparsity: None, n_m_ratio: None, .. } => {
            return Err(KernelError(
                "Either \"target_sparsity\" or \"n_m_ratio\" need to be set. They cannot be set at the same time.".into(),
            ))
        }
    };
    Ok(match outcome {
        Outcome::Pruned(s) => KernelResult::Pruned(Pruned {
            nonzero: wrap(s.nonzero),
            mask: s.mask,
            kept: s.kept,
        }),
        Outcome::Skipped(reason) => KernelResult::Skipped(reason),
    })
}

/// The `--global-sparsity` work order on the CPU: every element whose magnitude key is `<=` the
/// cut (in the tensor's dtype, see [`crate::global_sparsity::CutKey`]) becomes 0, the tensor is
/// stored sparse. The same keep mask as threshold pruning, without its minimum-sparsity check.
pub fn run_cut_in_place(cut: GlobalCut, data: TensorData, tensor: &str) -> Result<KernelResult> {
    match data {
        TensorData::F16(w) => Ok(cut_typed(cut, Dense::from(w), TensorData::F16)),
        TensorData::F32(w) => Ok(cut_typed(cut, Dense::from(w), TensorData::F32)),
        other => Err(Error::tensor(
            tensor,
            format!(
                "{} weights cannot take a global magnitude cut (fp16 and fp32 only)",
                other.dtype()
            ),
        )),
    }
}

/// [`run_cut_in_place`] on borrowed values, kept values written into `out` where it fits.
pub fn run_cut_on_view(cut: GlobalCut, view: TensorView<'_>, out: Option<TensorData>) -> KernelResult {
    match dense_of_view(view, out) {
        DenseView::F16(w) => cut_typed(cut, w, TensorData::F16),
        DenseView::F32(w) => cut_typed(cut, w, TensorData::F32),
    }
}

/// A view's values as the kernels' input.
enum DenseView<'a> {
    F16(Dense<'a, half::f16>),
    F32(Dense<'a, f32>),
}

/// The kernels' input for borrowed values: the kept values go into `out`'s allocation when it has
/// the view's type, else into a fresh one.
fn dense_of_view(view: TensorView<'_>, out: Option<TensorData>) -> DenseView<'_> {
    match view.with_spare(out) {
        ViewWithSpare::F16(values, out) => DenseView::F16(Dense::Borrowed { values, out }),
        ViewWithSpare::F32(values, out) => DenseView::F32(Dense::Borrowed { values, out }),
    }
}

fn cut_typed<T: CutKey>(cut: GlobalCut, w: Dense<'_, T>, wrap: fn(Vec<T>) -> TensorData) -> KernelResult {
    let key = T::cut_key(cut);
    let s = prune::mask::encode_kept(w, |_, values, bytes| T::keep_mask(values, key, bytes));
    KernelResult::Pruned(Pruned {
        nonzero: wrap(s.nonzero),
        mask: s.mask,
        kept: s.kept,
    })
}

/// Where tensors are pruned: the user's choice, which `crate::devices` carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePolicy {
    Auto,
    Cpu,
    Gpu,
}

/// Whether two kernel results are the same bytes: skip messages, or dtype, mask, count and the
/// kept values' bits (`==` on the typed values would call two NaNs different).
pub fn same_bytes(a: &KernelResult, b: &KernelResult) -> bool {
    match (a, b) {
        (KernelResult::Skipped(x), KernelResult::Skipped(y)) => x == y,
        (KernelResult::Pruned(x), KernelResult::Pruned(y)) => {
            x.kept == y.kept
                && x.mask == y.mask
                && x.nonzero.dtype() == y.nonzero.dtype()
                && x.nonzero.to_le_bytes() == y.nonzero.to_le_bytes()
        }
        _ => false,
    }
}
