//! The backend layer: a tensor's order (coremltools' config or the global cut) becomes one
//! [`WorkOrder`], and a [`Backend`] executes it, returning typed data the encoder can write. The
//! CPU reference kernels live in `crate::prune`, the GPU's in `crate::gpu`.

use serde::Serialize;

use half::f16;

use crate::config::OpConfig;
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::global_sparsity::{CutKey, GlobalCut};
use crate::prune::keys::Key;
use crate::prune::mask::Dense;
use crate::prune::order::unprunable;
use crate::prune::{self, Element, KernelError, Outcome, WorkOrder};
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

/// What one tensor gets: the kernel coremltools' config selects, or `--global-sparsity`'s cut,
/// decided beforehand for the whole model.
#[derive(Debug, Clone, Copy)]
pub enum Order<'a> {
    Config(&'a OpConfig),
    Cut(GlobalCut),
}

impl Order<'_> {
    /// The work order for a tensor of `dtype`, `shape` and `len` elements: the one decision of
    /// coremltools' rules ([`WorkOrder`]) that every backend then executes. `tensor` names errors.
    pub fn decide(self, dtype: ScalarType, shape: &[u64], len: usize, tensor: &str) -> Result<WorkOrder> {
        match self {
            Order::Config(config) => {
                WorkOrder::for_config(config, dtype, shape, len).map_err(|e| e.for_tensor(tensor))
            }
            Order::Cut(cut) => match dtype {
                ScalarType::Float16 => Ok(WorkOrder::global_cut(f16::cut_key(cut).map(Key::to_u64))),
                ScalarType::Float32 => Ok(WorkOrder::global_cut(f32::cut_key(cut).map(Key::to_u64))),
                other => Err(Error::tensor(
                    tensor,
                    format!("{other} weights cannot take a global magnitude cut (fp16 and fp32 only)"),
                )),
            },
        }
    }
}

/// A tensor's values as a backend receives them.
#[derive(Debug)]
pub enum TensorInput<'a> {
    /// Owned values: the CPU kernels put the kept values in their allocation.
    Owned(TensorData),
    /// Borrowed values (a mapped weight file), read where they lie; the kept values go into
    /// `out`'s allocation (a buffer the writer has finished with) where it has their dtype.
    View {
        view: TensorView<'a>,
        out: Option<TensorData>,
    },
}

impl<'a> TensorInput<'a> {
    /// `data` borrowed where a backend can read it in place (fp16, fp32), else a copy.
    pub fn borrowing(data: &'a TensorData) -> Self {
        match data.as_view() {
            Some(view) => TensorInput::View { view, out: None },
            None => TensorInput::Owned(data.clone()),
        }
    }

    pub fn dtype(&self) -> ScalarType {
        match self {
            TensorInput::Owned(data) => data.dtype(),
            TensorInput::View { view, .. } => view.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorInput::Owned(data) => data.len(),
            TensorInput::View { view, .. } => view.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same values lent without an output buffer (a second device's run of them).
    pub fn lend(&self) -> TensorInput<'_> {
        match self {
            TensorInput::Owned(data) => TensorInput::borrowing(data),
            TensorInput::View { view, .. } => TensorInput::View {
                view: *view,
                out: None,
            },
        }
    }

    /// The values as a borrowed view, where they have a dtype views hold.
    pub fn view(&self) -> Option<TensorView<'_>> {
        match self {
            TensorInput::Owned(data) => data.as_view(),
            TensorInput::View { view, .. } => Some(*view),
        }
    }
}

/// Where pruning kernels run. The CPU backend is the reference; every other backend must return
/// byte-identical results for every work order and dtype (the tests run each case on every
/// backend, through this interface, as the engine does).
pub trait Backend {
    /// `"cpu"` or `"gpu"`, as reports name it.
    fn name(&self) -> &'static str;

    /// Whether this backend executes `work` on `input` with its own kernels (otherwise
    /// [`Backend::execute`] hands it to the CPU reference).
    fn covers(&self, work: &WorkOrder, input: &TensorInput<'_>) -> bool;

    /// Executes a decided work order on one tensor's values. `tensor` names errors.
    fn execute(&self, work: &WorkOrder, input: TensorInput<'_>, tensor: &str) -> Result<KernelResult>;

    /// Decides `config`'s work order for `data` of `shape` and executes it.
    fn run(&self, config: &OpConfig, data: &TensorData, shape: &[u64], tensor: &str) -> Result<KernelResult> {
        let work = Order::Config(config).decide(data.dtype(), shape, data.len(), tensor)?;
        self.execute(&work, TensorInput::borrowing(data), tensor)
    }
}

/// The reference backend: the kernels of `crate::prune`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn covers(&self, _: &WorkOrder, _: &TensorInput<'_>) -> bool {
        true
    }

    fn execute(&self, work: &WorkOrder, input: TensorInput<'_>, tensor: &str) -> Result<KernelResult> {
        execute_on_cpu(work, input, tensor)
    }
}

/// Executes `work` with the CPU reference kernels: owned values give their allocation to the kept
/// values; borrowed ones are read where they lie, the kept values written into `out` where it fits.
pub fn execute_on_cpu(work: &WorkOrder, input: TensorInput<'_>, tensor: &str) -> Result<KernelResult> {
    let result = match input {
        TensorInput::Owned(TensorData::F16(w)) => typed(work, w.into(), TensorData::F16),
        TensorInput::Owned(TensorData::F32(w)) => typed(work, w.into(), TensorData::F32),
        TensorInput::Owned(TensorData::I8(w)) => typed(work, w.into(), TensorData::I8),
        TensorInput::Owned(TensorData::U8(w)) => typed(work, w.into(), TensorData::U8),
        // `Order::decide` refuses these dtypes; a hand-made order gets the same error.
        TensorInput::Owned(other) => Err(unprunable(other.dtype())),
        TensorInput::View { view, out } => match view.with_spare(out) {
            ViewWithSpare::F16(values, out) => typed(work, Dense::Borrowed { values, out }, TensorData::F16),
            ViewWithSpare::F32(values, out) => typed(work, Dense::Borrowed { values, out }, TensorData::F32),
        },
    };
    result.map_err(|e| e.for_tensor(tensor))
}

/// Decides `config`'s work order for `data` and executes it on the CPU (the reference result).
pub fn run_kernel(config: &OpConfig, data: &TensorData, shape: &[u64], tensor: &str) -> Result<KernelResult> {
    CpuBackend.run(config, data, shape, tensor)
}

fn typed<T: Element>(
    work: &WorkOrder,
    w: Dense<'_, T>,
    wrap: fn(Vec<T>) -> TensorData,
) -> std::result::Result<KernelResult, KernelError> {
    Ok(match prune::execute(work, w)? {
        Outcome::Pruned(s) => KernelResult::Pruned(Pruned {
            nonzero: wrap(s.nonzero),
            mask: s.mask,
            kept: s.kept,
        }),
        Outcome::Skipped(reason) => KernelResult::Skipped(reason),
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
