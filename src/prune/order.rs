//! The work order: what coremltools' rules make of one tensor, decided from its config, dtype and
//! shape before any value is read. This is the one place those rules are decided (the check order,
//! the errors, the skip warnings, the special sparsities 0 and 1); every device executes the
//! order it is given — the CPU reference through [`super::execute`], the GPU through its own
//! kernels — and never decides again. The rules per mode are written down in the mode's module.

use half::f16;

use super::axes::{check_structural_rank, ChannelLayout};
use super::element::{Element, MapValue};
use super::keys::Key;
use super::KernelError;
use crate::config::OpConfig;
use crate::dtype::ScalarType;

/// One tensor's work order. Data-dependent steps (a percentile, block norms, n:m ranks, the
/// threshold's minimum-sparsity check) are named here and carried out by the device.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkOrder {
    /// coremltools leaves the tensor dense and logs this warning.
    Skip(String),
    /// `target_sparsity == 1.0`: the result is `0 * w` (NaN and ±inf survive as NaN).
    ZeroAll,
    /// Every element whose magnitude key (in the weight dtype's key space, as `u64`) is at or
    /// below `cut` becomes 0; `None` drops only the zeros. With `minimum_sparsity`, a result less
    /// sparse than that is skipped with coremltools' warning ([`minimum_sparsity_skip`]).
    Cut {
        cut: Option<u64>,
        minimum_sparsity: Option<f64>,
    },
    /// `|w| <= np.percentile(|w|, sparsity * 100)` becomes 0, for `0 < sparsity * 100 < 100`.
    Percentile { sparsity: f64 },
    /// Block sparsity for `0 < sparsity * 100 < 100`: blocks whose norm is at or below the
    /// percentile of the norms become 0.
    Block {
        layout: ChannelLayout,
        block_size: usize,
        sparsity: f64,
    },
    /// The `n` smallest magnitudes of every group of `m` along the channel axis are multiplied by 0.
    NM {
        layout: ChannelLayout,
        n: usize,
        m: usize,
    },
}

impl WorkOrder {
    /// The order coremltools' `config` gives a tensor of `dtype`, `shape` and `len` elements.
    pub fn for_config(
        config: &OpConfig,
        dtype: ScalarType,
        shape: &[u64],
        len: usize,
    ) -> Result<Self, KernelError> {
        let shape = dims(shape)?;
        if !prunable(dtype) {
            return Err(unprunable(dtype));
        }
        // Sizes beyond usize can never fit a channel, so the "> channel / 2" rule skips them.
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        match *config {
            OpConfig::Threshold {
                threshold,
                minimum_sparsity_percentile,
                ..
            } => Ok(Self::threshold(dtype, threshold, minimum_sparsity_percentile)),
            OpConfig::Magnitude {
                n_m_ratio: Some((n, m)),
                dim,
                ..
            } => Self::n_m(&shape, len, size(n), size(m), dim.unwrap_or(1) as usize),
            OpConfig::Magnitude {
                target_sparsity: Some(sparsity),
                block_size: Some(b),
                dim,
                ..
            } => Self::block(&shape, len, sparsity, size(b), dim.unwrap_or(0) as usize),
            OpConfig::Magnitude {
                target_sparsity: Some(sparsity),
                ..
            } => Ok(Self::magnitude(sparsity)),
            OpConfig::Magnitude {
                target_sparsity: None,
                n_m_ratio: None,
                ..
            } => Err(KernelError(
                "Either \"target_sparsity\" or \"n_m_ratio\" need to be set. They cannot be set at the same time.".into(),
            )),
        }
    }

    /// Threshold pruning (spec §5.5): the threshold rounded to the weight dtype's key space.
    pub fn threshold(dtype: ScalarType, threshold: f64, minimum_sparsity: f64) -> Self {
        let cut = match dtype {
            ScalarType::Float16 => threshold_key::<f16>(threshold),
            ScalarType::Float32 => threshold_key::<f32>(threshold),
            ScalarType::Int8 => threshold_key::<i8>(threshold),
            ScalarType::UInt8 => threshold_key::<u8>(threshold),
            // Refused by `for_config`; no element compares below a cut that is not there.
            _ => None,
        };
        WorkOrder::Cut {
            cut,
            minimum_sparsity: Some(minimum_sparsity),
        }
    }

    /// Magnitude pruning (spec §5.6): sparsity 1 multiplies by 0, 0 drops only the zeros.
    pub fn magnitude(sparsity: f64) -> Self {
        match sparsity * 100.0 {
            100.0 => WorkOrder::ZeroAll,
            // Float patterns compare with `==`: -0.0 too.
            0.0 => keep_nonzero(),
            _ => WorkOrder::Percentile { sparsity },
        }
    }

    /// Block sparsity (spec §5.7). The half-channel rule comes before the rank check and before the
    /// special sparsities, as in coremltools.
    pub fn block(
        shape: &[usize],
        len: usize,
        sparsity: f64,
        block_size: usize,
        dim: usize,
    ) -> Result<Self, KernelError> {
        if block_size == 0 {
            return Err(KernelError("block_size must be positive".into()));
        }
        let layout = ChannelLayout::new(shape, len, dim)?;
        if layout.exceeds_half_channel(block_size) {
            return Ok(WorkOrder::Skip(format!(
                "block_size > channel / 2 is not applicable for block sparsity. Got block_size = {block_size}, channel = {}. Skipped.",
                layout.channel
            )));
        }
        check_structural_rank(shape, "block sparsity")?;
        Ok(match WorkOrder::magnitude(sparsity) {
            WorkOrder::Percentile { sparsity } => WorkOrder::Block {
                layout,
                block_size,
                sparsity,
            },
            special => special,
        })
    }

    /// n:m sparsity (spec §5.8).
    pub fn n_m(shape: &[usize], len: usize, n: usize, m: usize, dim: usize) -> Result<Self, KernelError> {
        if n > m {
            return Err(KernelError(format!("n:m ratio needs n <= m, got {n}:{m}")));
        }
        let layout = ChannelLayout::new(shape, len, dim)?;
        check_structural_rank(shape, "m:m pruning")?;
        if layout.exceeds_half_channel(m) {
            return Ok(WorkOrder::Skip(format!(
                "m > channel / 2 is not applicable for n:m pruning. Got m = {m}, channel = {}. Skipped.",
                layout.channel
            )));
        }
        if m == 0 {
            // coremltools divides by m here (ZeroDivisionError).
            return Err(KernelError("n:m ratio needs m > 0".into()));
        }
        Ok(WorkOrder::NM { layout, n, m })
    }

    /// `--global-sparsity`'s cut, already in the weight dtype's key space: no minimum sparsity.
    pub fn global_cut(cut: Option<u64>) -> Self {
        WorkOrder::Cut {
            cut,
            minimum_sparsity: None,
        }
    }
}

/// The order that keeps every non-zero element.
fn keep_nonzero() -> WorkOrder {
    WorkOrder::Cut {
        cut: None,
        minimum_sparsity: None,
    }
}

/// The dtypes the kernels prune.
fn prunable(dtype: ScalarType) -> bool {
    matches!(
        dtype,
        ScalarType::Float16 | ScalarType::Float32 | ScalarType::Int8 | ScalarType::UInt8
    )
}

/// The refusal of a dtype the kernels do not prune.
pub fn unprunable(dtype: ScalarType) -> KernelError {
    KernelError(format!("{dtype} weights cannot be pruned"))
}

/// The shape as `usize`s.
fn dims(shape: &[u64]) -> Result<Vec<usize>, KernelError> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| KernelError(format!("dimension {d} does not fit in memory")))
        })
        .collect()
}

/// The threshold rounded to `T` (float64 for int8/uint8), as a magnitude key.
pub(super) fn threshold_key<T: Element>(threshold: f64) -> Option<u64> {
    <T::Mag as MapValue>::threshold_cut(threshold).map(Key::to_u64)
}

/// coremltools' warning when threshold pruning leaves a tensor less sparse than
/// `minimum_sparsity`: `sparsity = zeros / size` in float64 (NaN for an empty tensor, which never
/// compares below), equality passes.
pub fn minimum_sparsity_skip(kept: u64, len: u64, minimum_sparsity: f64) -> Option<String> {
    // numpy: int64 / int -> float64.
    let sparsity = (len - kept) as f64 / len as f64;
    (sparsity < minimum_sparsity).then(|| {
        format!(
            "weight value has sparsity of {} < minimum_sparsity_percentile {}. Skipped.",
            super::python_float_repr(sparsity),
            super::python_float_repr(minimum_sparsity)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magnitude_config(
        sparsity: Option<f64>,
        block: Option<u64>,
        n_m: Option<(u64, u64)>,
        dim: Option<u32>,
    ) -> OpConfig {
        OpConfig::Magnitude {
            target_sparsity: sparsity,
            block_size: block,
            n_m_ratio: n_m,
            dim,
            weight_threshold: Some(2048),
        }
    }

    #[test]
    fn the_half_channel_rule_comes_before_the_special_sparsities() {
        let config = magnitude_config(Some(1.0), Some(3), None, Some(0));
        let order = WorkOrder::for_config(&config, ScalarType::Float16, &[4, 8], 32).unwrap();
        assert!(matches!(order, WorkOrder::Skip(ref s) if s.contains("block_size = 3, channel = 4")));
        let config = magnitude_config(Some(1.0), Some(2), None, Some(0));
        assert_eq!(
            WorkOrder::for_config(&config, ScalarType::Float16, &[4, 8], 32).unwrap(),
            WorkOrder::ZeroAll
        );
    }

    #[test]
    fn sparsity_zero_keeps_every_non_zero_in_every_mode() {
        for config in [
            magnitude_config(Some(0.0), None, None, None),
            magnitude_config(Some(-0.0), Some(2), None, Some(1)),
        ] {
            let order = WorkOrder::for_config(&config, ScalarType::Float32, &[4, 8], 32).unwrap();
            assert_eq!(order, keep_nonzero());
        }
    }

    #[test]
    fn threshold_cuts_in_the_weight_dtype() {
        // 0.09997 rounds to the fp16 value 0.0999755859375 (key 0x2e66).
        let order = WorkOrder::threshold(ScalarType::Float16, 0.09997, 0.5);
        assert_eq!(
            order,
            WorkOrder::Cut {
                cut: Some(0x2e66),
                minimum_sparsity: Some(0.5)
            }
        );
    }

    #[test]
    fn errors_and_skips_keep_coremltools_order() {
        // n > m is refused before the shape is looked at.
        let config = magnitude_config(None, None, Some((3, 2)), None);
        let err = WorkOrder::for_config(&config, ScalarType::Float16, &[2], 2).unwrap_err();
        assert!(err.0.contains("n <= m"), "{err:?}");
        // m > channel / 2 skips before m = 0 would divide by zero... and m = 0 never exceeds it.
        let config = magnitude_config(None, None, Some((0, 0)), Some(0));
        let err = WorkOrder::for_config(&config, ScalarType::Float16, &[4, 2], 8).unwrap_err();
        assert!(err.0.contains("m > 0"), "{err:?}");
        let config = magnitude_config(Some(0.5), None, None, None);
        let err = WorkOrder::for_config(&config, ScalarType::Int32, &[4], 4).unwrap_err();
        assert_eq!(err.0, "int32 weights cannot be pruned");
    }

    #[test]
    fn minimum_sparsity_is_inclusive() {
        assert_eq!(minimum_sparsity_skip(2, 4, 0.5), None);
        let skip = minimum_sparsity_skip(3, 4, 0.5).unwrap();
        assert_eq!(
            skip,
            "weight value has sparsity of 0.25 < minimum_sparsity_percentile 0.5. Skipped."
        );
        assert_eq!(minimum_sparsity_skip(0, 0, 0.5), None);
    }
}
