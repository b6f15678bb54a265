//! The pruning configuration, exactly as coremltools 9.0 defines it (spec §5.2–§5.4).
//!
//! * [`OpConfig`] is one `OpThresholdPrunerConfig` or `OpMagnitudePrunerConfig`, already validated
//!   (see [`validate`] for the rules and the table of what coremltools accepts).
//! * [`OptimizationConfig`] holds the three lookup levels: global, per op type, per op name. A `None`
//!   value at a level means "explicitly skip".
//! * [`parse`] reads coremltools' `OptimizationConfig.from_dict` layout from JSON or YAML.
//! * [`resolve()`] picks the config for one `const` op from its consumers (§5.3).
//! * [`from_shortcuts`] builds a global config from the CLI flags.
//!
//! Every failure is `Error::Config` carrying coremltools' own message where coremltools has one.

pub mod bounded_yaml;
pub mod depth;
pub mod limits;
pub mod parse;
pub(crate) mod py;
pub(crate) mod pyfmt;
pub(crate) mod pyint;
pub mod resolve;
pub mod shortcuts;
pub mod source;
pub mod validate;
pub(crate) mod yaml11;

use std::collections::BTreeMap;
use std::path::Path;

use crate::Result;

pub use py::Py as ConfigValue;
pub use resolve::{resolve, resolve_op, weight_threshold_of, Consumer, Resolution, SkipReason};
pub use shortcuts::{from_shortcuts, parse_n_m, Shortcuts};

/// coremltools' class name for threshold pruning.
pub const THRESHOLD_CLASS: &str = "OpThresholdPrunerConfig";
/// coremltools' class name for magnitude pruning (target sparsity, block sparsity, n:m).
pub const MAGNITUDE_CLASS: &str = "OpMagnitudePrunerConfig";
/// Default `weight_threshold` of both pruner configs: consts with more elements than this are pruned.
pub const DEFAULT_WEIGHT_THRESHOLD: u64 = 2048;
/// Default `threshold` of `OpThresholdPrunerConfig`.
pub const DEFAULT_THRESHOLD: f64 = 1e-12;
/// Default `minimum_sparsity_percentile` of `OpThresholdPrunerConfig`.
pub const DEFAULT_MIN_SPARSITY: f64 = 0.5;
/// Op types a structural (block or n:m) config may target, with the input it must feed.
pub const STRUCTURAL_OP_TYPES: [&str; 2] = ["conv", "linear"];

/// One pruner config. Values are as coremltools stores them after construction: `dim` already
/// defaulted (0 with `block_size`, 1 with `n_m_ratio`), `weight_threshold = None` kept as is (the
/// pass rejects it lazily, see [`resolve::weight_threshold_of`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OpConfig {
    /// `OpThresholdPrunerConfig`: zero `|w| <= threshold`; keep dense if the sparsity stays below
    /// `minimum_sparsity_percentile`. NaN is refused (coremltools accepts it but cannot prune with
    /// it, see [`validate`]); a threshold of +inf zeroes every value.
    Threshold {
        threshold: f64,
        minimum_sparsity_percentile: f64,
        weight_threshold: Option<u64>,
    },
    /// `OpMagnitudePrunerConfig`: exactly one of `target_sparsity` / `n_m_ratio`; `block_size` only
    /// with `target_sparsity`; `dim` is `Some` exactly when `block_size` or `n_m_ratio` is.
    Magnitude {
        target_sparsity: Option<f64>,
        block_size: Option<u64>,
        n_m_ratio: Option<(u64, u64)>,
        dim: Option<u32>,
        weight_threshold: Option<u64>,
    },
}

impl OpConfig {
    /// Block sparsity or n:m: only applies to `conv`/`linear` weights (§5.4).
    pub fn is_structural(&self) -> bool {
        matches!(self, OpConfig::Magnitude { block_size, n_m_ratio, .. } if block_size.is_some() || n_m_ratio.is_some())
    }

    /// Size threshold: a const is pruned only if it has strictly more elements. `None` is legal in a
    /// config but an error once a const resolves to it.
    pub fn weight_threshold(&self) -> Option<u64> {
        match self {
            OpConfig::Threshold { weight_threshold, .. } | OpConfig::Magnitude { weight_threshold, .. } => {
                *weight_threshold
            }
        }
    }

    /// The pruning mode, as reports name it: `threshold`, `magnitude`, `block` or `n:m`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            OpConfig::Threshold { .. } => "threshold",
            OpConfig::Magnitude {
                block_size: Some(_), ..
            } => "block",
            OpConfig::Magnitude {
                n_m_ratio: Some(_), ..
            } => "n:m",
            OpConfig::Magnitude { .. } => "magnitude",
        }
    }

    /// coremltools' class name for this config.
    pub fn class_name(&self) -> &'static str {
        match self {
            OpConfig::Threshold { .. } => THRESHOLD_CLASS,
            OpConfig::Magnitude { .. } => MAGNITUDE_CLASS,
        }
    }

    /// The attrs `repr` coremltools prints in its messages, e.g.
    /// `OpMagnitudePrunerConfig(target_sparsity=None, block_size=None, n_m_ratio=(2, 4), dim=1, weight_threshold=2048)`.
    pub fn describe(&self) -> String {
        match self {
            OpConfig::Threshold { threshold, minimum_sparsity_percentile, weight_threshold } => format!(
                "{THRESHOLD_CLASS}(threshold={}, minimum_sparsity_percentile={}, weight_threshold={})",
                pyfmt::float(*threshold),
                pyfmt::float(*minimum_sparsity_percentile),
                pyfmt::opt_int(*weight_threshold),
            ),
            OpConfig::Magnitude { target_sparsity, block_size, n_m_ratio, dim, weight_threshold } => format!(
                "{MAGNITUDE_CLASS}(target_sparsity={}, block_size={}, n_m_ratio={}, dim={}, weight_threshold={})",
                pyfmt::opt_float(*target_sparsity),
                pyfmt::opt_int(*block_size),
                n_m_ratio.map_or_else(|| "None".to_string(), |(n, m)| format!("({n}, {m})")),
                pyfmt::opt_int(*dim),
                pyfmt::opt_int(*weight_threshold),
            ),
        }
    }
}

impl std::fmt::Display for OpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The three lookup levels of coremltools' `OptimizationConfig`. In the maps, `None` means the op
/// type / op name is explicitly excluded from pruning. Ordered maps keep output deterministic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizationConfig {
    pub global: Option<OpConfig>,
    pub op_type: BTreeMap<String, Option<OpConfig>>,
    pub op_name: BTreeMap<String, Option<OpConfig>>,
}

impl OptimizationConfig {
    /// Read a config file in coremltools' `from_dict` layout (keys `config_type`, `global_config`,
    /// `op_type_configs`, `op_name_configs`; an entry may override `config_type`). `.json` is read as
    /// JSON, `.yaml`/`.yml` as YAML; any other name is tried as JSON, then as YAML. Messages name
    /// the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        parse::from_file(path)
    }

    /// Parse the `from_dict` layout from JSON text.
    pub fn from_json_str(s: &str) -> Result<Self> {
        parse::from_json_str(s)
    }

    /// Parse the `from_dict` layout from YAML text (what `OptimizationConfig.from_yaml` reads).
    pub fn from_yaml_str(s: &str) -> Result<Self> {
        parse::from_yaml_str(s)
    }

    /// `OptimizationConfig.from_dict(d)` for `d` given as values (the Python bindings' dict). The
    /// caller bounds its size and depth as the readers of text do
    /// ([`limits::MAX_CONFIG_NODES`], [`depth::MAX_CONFIG_DEPTH`]).
    pub fn from_value(value: &ConfigValue) -> Result<Self> {
        parse::from_dict(value)
    }

    /// The checks coremltools makes when the `OptimizationConfig` is constructed: every entry is a
    /// valid pruner config, and structural configs at the op-type level only name `conv`/`linear`.
    /// Checks coremltools makes lazily, per const, live in [`resolve()`] (a `"const"` op-type key,
    /// config conflicts) and [`resolve::weight_threshold_of`] (`weight_threshold = None`), because a
    /// config that never reaches them is accepted by coremltools.
    pub fn validate(&self) -> Result<()> {
        validate::validate_optimization_config(self)
    }

    /// A config that applies `op` to every op (coremltools' `set_global`).
    pub fn global(op: OpConfig) -> Self {
        OptimizationConfig {
            global: Some(op),
            ..Default::default()
        }
    }
}
