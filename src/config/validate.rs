//! The validators of coremltools 9.0's pruner configs, in the order attrs runs them, with
//! coremltools' messages.
//!
//! Field values first go through cattrs' coercion in [`super::parse`] (`float(v)` / `int(v)`), then
//! attrs runs each field's validators in field order; the first failure is reported.
//!
//! What was verified against coremltools 9.0 (`OptimizationConfig.from_dict` followed by
//! constructing the `prune_weights` pass; the cases are in `tests/python/config_cases.py`, their
//! results in `tests/golden/config_cases.json`, checked by this module's tests):
//!
//! | input | coremltools 9.0 | mlprune |
//! |---|---|---|
//! | `config_type` missing / null / not a string | ValueError `config_type must be provided with type of string.` | same |
//! | top-level key other than the four | ValueError `Invalid key … Supported keys are (…).` | same |
//! | `config_type` OpLinearQuantizerConfig / OpPalettizerConfig | accepted by from_dict, pass: `prune_weights only accept OpMagnitudePrunerConfig, OpThresholdPrunerConfig type config. Got …` | same message (that class' own field checks are not mirrored) |
//! | unknown `config_type` (`Foo`) | AttributeError | rejected, clear message |
//! | entry `config_type` override | accepted, per entry | same |
//! | `global_config: null`, entry `null` | no global / explicit skip | same |
//! | `op_type_configs` not a dict | ValueError `op_type_configs must be type of dict. Got <class 'list'>` | same |
//! | entry not a mapping (list, number, string, bool) | AttributeError / TypeError | rejected |
//! | unknown entry key | `Extra fields in constructor for OpThresholdPrunerConfig: a, b` (sorted) | same |
//! | int for a float field (`threshold: 0`) | **accepted**, cattrs `float(0)` (only the Python constructor raises TypeError) | same |
//! | bool for a number (`threshold: true`, `dim: true`) | accepted as 1.0 / 1 | same |
//! | numeric string (`"0.5"`, `" 12 "`, `"1_000"`) | accepted via `float()` / `int()` | same |
//! | float for an int field (`weight_threshold: 2.7`, `block_size: 2.5`, `n_m_ratio: [1.5, 4]`) | truncated toward zero | same |
//! | `weight_threshold: -0.5` | `int()` → 0, accepted | same |
//! | `weight_threshold: "1e3"` | ValueError `invalid literal for int() with base 10: '1e3'` | same |
//! | NaN / inf for an int field | ValueError / OverflowError | rejected |
//! | `weight_threshold: null` | accepted; the pass raises `weight_threshold cannot be None` for a const that resolves to it | same, lazily |
//! | `weight_threshold: -1` | `"weight_threshold" must be a non-negative integer. Got -1.` | same |
//! | `weight_threshold: 10**30` | accepted | accepted, saturated to u64::MAX (same effect) |
//! | `threshold: -1` / `-1e-300` | `Invalid value of "threshold": -1.0. Needs to be in [0, inf)` | same |
//! | `threshold: -0.0`, `.inf` | accepted (`.inf` zeroes every value) | same |
//! | `threshold: .nan`, `minimum_sparsity_percentile: .nan` | accepted; the pass then fails with `compression config conflict detected` for every const whose consumers resolve to it (attrs compares fields with `==`, and a config holding nan is not equal to itself) | **rejected** (divergence) |
//! | `minimum_sparsity_percentile: .inf`, `target_sparsity: .inf`, `threshold: -.inf` | `Invalid value of …: inf. Needs to be in …` | same |
//! | `minimum_sparsity_percentile` outside [0, 1] | `Invalid value of "minimum_sparsity_percentile": …` | same |
//! | magnitude with neither / both of `target_sparsity`, `n_m_ratio` | `Either "target_sparsity" or "n_m_ratio" need to be set. …` | same |
//! | `target_sparsity` outside [0, 1] (`1.0000001`, `2`) | `Invalid value of "target_sparsity": 2.0. Needs to be in [0, 1].` | same |
//! | `target_sparsity: .nan` | accepted; the pass then fails (config conflict as above, or in `numpy.percentile` for a const named in `op_name_configs`) | **rejected** (divergence) |
//! | `block_size` with `n_m_ratio` | `"block_size" and "n_m_ratio" cannot be set at the same time.` | same |
//! | `block_size <= 1` (incl. `true`, -3) | `"block_size" must be an integer > 1. Got 1.` | same |
//! | `n_m_ratio` as list, tuple, or 2-char string `"34"` | accepted as (3, 4) | same |
//! | `n_m_ratio` of length ≠ 2 | ValueError `Too many/Not enough values in [3, 4, 5] to structure as typing.Tuple[int, int]` | same |
//! | `n_m_ratio: 3` (not iterable) | TypeError | rejected |
//! | `n > m` | `"n_m_ratio" must be a tuple of two integers (n, m). n <= m. Got (5, 4)` | same |
//! | `n = 0`, `n = m` | accepted | same |
//! | `m = 0` (`[0, 0]`), negative `n` (`[-1, 0]`, `[-1, 4]`) | accepted (pass: ZeroDivisionError; Python slicing for n < 0) | **rejected** (divergence) |
//! | `dim` without block_size / n_m_ratio | `"dim" can only be set along with "block_size" or "n_m_ratio".` | same |
//! | `dim` not 0/1 | `"dim" must be 1 or 0. Got 2.` | same |
//! | `dim` default | 0 with block_size, 1 with n_m_ratio | same |
//! | structural op-type config for a type other than conv/linear | `block sparsity or n:m pruning does not support op type matmul.` | same |
//! | structural op-name config for any name | accepted | same |
//! | `"const"` key in op_type_configs | accepted by from_dict; pass raises `const ops cannot be set by the \`set_op_type\` function. …` for a const not named in op_name_configs | same, in [`super::resolve()`] |
//! | non-string key in op_type/op_name configs (YAML `5:`) | accepted, entry checked, never matches | same |
//!
//! YAML is read as PyYAML reads it (YAML 1.1 scalars, merge keys, the last of a repeated key; see
//! `config::yaml11` and README "Config files: how they are read", which lists what still differs).
//! JSON has no coremltools reader; it is read as Python's `json.load` would, except that
//! `NaN`/`Infinity` literals and lone surrogates are rejected and integers beyond u64 become floats.

use super::{pyfmt, OpConfig, OptimizationConfig, STRUCTURAL_OP_TYPES};
use crate::{Error, Result};

/// Python integers after cattrs' `int()`, of any size.
pub(crate) use super::pyint::PyInt;

/// `OpThresholdPrunerConfig` fields after coercion, before attrs validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawThreshold {
    pub threshold: f64,
    pub minimum_sparsity_percentile: f64,
    pub weight_threshold: Option<PyInt>,
}

impl Default for RawThreshold {
    fn default() -> Self {
        RawThreshold {
            threshold: super::DEFAULT_THRESHOLD,
            minimum_sparsity_percentile: super::DEFAULT_MIN_SPARSITY,
            weight_threshold: Some(PyInt::from(super::DEFAULT_WEIGHT_THRESHOLD)),
        }
    }
}

/// `OpMagnitudePrunerConfig` fields after coercion, before attrs validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawMagnitude {
    pub target_sparsity: Option<f64>,
    pub block_size: Option<PyInt>,
    pub n_m_ratio: Option<(PyInt, PyInt)>,
    pub dim: Option<PyInt>,
    pub weight_threshold: Option<PyInt>,
}

impl Default for RawMagnitude {
    fn default() -> Self {
        RawMagnitude {
            target_sparsity: None,
            block_size: None,
            n_m_ratio: None,
            dim: None,
            weight_threshold: Some(PyInt::from(super::DEFAULT_WEIGHT_THRESHOLD)),
        }
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// `_check_weight_threshold`, shared by both classes.
fn check_weight_threshold(v: Option<PyInt>) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(v) if v < 0 => Err(err(format!(
            "\"weight_threshold\" must be a non-negative integer. Got {v}."
        ))),
        // Larger than any tensor can be: saturating keeps "never pruned".
        Some(v) => Ok(Some(v.to_u64_saturating().unwrap_or(u64::MAX))),
    }
}

/// Divergence: coremltools 9.0 accepts nan for its float fields (its range checks are comparisons,
/// false for nan) but cannot prune with such a config: attrs' `__eq__` compares fields with `==`,
/// so the config is not equal to itself and the pass raises `compression config conflict detected`
/// for every const it applies to (a magnitude config named for the const itself fails in
/// `numpy.percentile` instead). mlprune refuses nan up front, from config files and flags alike.
fn reject_nan(name: &str, v: f64, range: &str) -> Result<()> {
    if v.is_nan() {
        return Err(err(format!(
            "Invalid value of \"{name}\": nan. Needs to be in {range} \
             (coremltools 9.0 accepts nan here but then fails while pruning)"
        )));
    }
    Ok(())
}

impl RawThreshold {
    /// attrs validation in field order, then the typed config.
    pub(crate) fn into_config(self) -> Result<OpConfig> {
        let RawThreshold {
            threshold,
            minimum_sparsity_percentile: min,
            weight_threshold,
        } = self;
        // `threshold < 0` is false for NaN, so NaN passes here, as in coremltools (see below).
        if threshold < 0.0 {
            return Err(err(format!(
                "Invalid value of \"threshold\": {}. Needs to be in [0, inf)",
                pyfmt::float(threshold)
            )));
        }
        // Written as two comparisons on purpose: NaN passes them, as in Python (`contains` would not).
        #[allow(clippy::manual_range_contains)]
        if min < 0.0 || min > 1.0 {
            return Err(err(format!(
                "Invalid value of \"minimum_sparsity_percentile\": {}. Needs to be in [0, 1]",
                pyfmt::float(min)
            )));
        }
        let weight_threshold = check_weight_threshold(weight_threshold)?;
        // Divergences, after every check coremltools makes so its messages come first.
        reject_nan("threshold", threshold, "[0, inf)")?;
        reject_nan("minimum_sparsity_percentile", min, "[0, 1]")?;
        Ok(OpConfig::Threshold {
            threshold,
            minimum_sparsity_percentile: min,
            weight_threshold,
        })
    }
}

impl RawMagnitude {
    /// attrs validation in field order (`target_sparsity`, `block_size`, `n_m_ratio`, `dim`,
    /// `weight_threshold`), then `__attrs_post_init__`'s `dim` defaults, then the typed config.
    pub(crate) fn into_config(self) -> Result<OpConfig> {
        let RawMagnitude {
            target_sparsity,
            block_size,
            n_m_ratio,
            dim,
            weight_threshold,
        } = self;

        if target_sparsity.is_some() == n_m_ratio.is_some() {
            return Err(err(
                "Either \"target_sparsity\" or \"n_m_ratio\" need to be set. They cannot be set at the same time.",
            ));
        }
        if let Some(ts) = target_sparsity {
            // Two comparisons, as in Python: NaN passes here and is refused at the end.
            #[allow(clippy::manual_range_contains)]
            if ts < 0.0 || ts > 1.0 {
                return Err(err(format!(
                    "Invalid value of \"target_sparsity\": {}. Needs to be in [0, 1].",
                    pyfmt::float(ts)
                )));
            }
        }

        if block_size.is_some() && n_m_ratio.is_some() {
            return Err(err(
                "\"block_size\" and \"n_m_ratio\" cannot be set at the same time.",
            ));
        }
        if let Some(b) = &block_size {
            if *b <= 1 {
                return Err(err(format!("\"block_size\" must be an integer > 1. Got {b}.")));
            }
        }

        if let Some((n, m)) = &n_m_ratio {
            if n > m {
                return Err(err(format!(
                    "\"n_m_ratio\" must be a tuple of two integers (n, m). n <= m. Got ({n}, {m})"
                )));
            }
            // Divergence: coremltools accepts these; m = 0 then divides by zero while pruning and a
            // negative n prunes `m + n` values through Python's negative slicing.
            if *n < 0 || *m == 0 {
                return Err(err(format!(
                    "\"n_m_ratio\" must be a tuple of two integers (n, m). n <= m. Got ({n}, {m}) \
                     (mlprune also requires n >= 0 and m >= 1; coremltools 9.0 accepts this but cannot prune with it)"
                )));
            }
        }

        if let Some(d) = &dim {
            if block_size.is_none() && n_m_ratio.is_none() {
                return Err(err(
                    "\"dim\" can only be set along with \"block_size\" or \"n_m_ratio\".",
                ));
            }
            if *d != 0 && *d != 1 {
                return Err(err(format!("\"dim\" must be 1 or 0. Got {d}.")));
            }
        }

        let weight_threshold = check_weight_threshold(weight_threshold)?;
        if let Some(ts) = target_sparsity {
            reject_nan("target_sparsity", ts, "[0, 1]")?;
        }

        // __attrs_post_init__: block sparsity runs along output channels, n:m along input channels.
        let dim = match (&dim, &block_size, &n_m_ratio) {
            (Some(d), _, _) => Some(if *d == 0 { 0 } else { 1 }),
            (None, Some(_), _) => Some(0),
            (None, None, Some(_)) => Some(1),
            (None, None, None) => None,
        };
        // Values are validated positive above; beyond u64 they behave like u64::MAX (always larger
        // than channel / 2, so the op is skipped either way).
        let to_u64 = |v: PyInt| v.to_u64_saturating().unwrap_or(u64::MAX);
        Ok(OpConfig::Magnitude {
            target_sparsity,
            block_size: block_size.map(to_u64),
            n_m_ratio: n_m_ratio.map(|(n, m)| (to_u64(n), to_u64(m))),
            dim,
            weight_threshold,
        })
    }
}

impl OpConfig {
    /// Run coremltools' attrs validators on this config (useful for configs built in code).
    pub fn validate(&self) -> Result<()> {
        match self {
            OpConfig::Threshold {
                threshold,
                minimum_sparsity_percentile,
                weight_threshold,
            } => RawThreshold {
                threshold: *threshold,
                minimum_sparsity_percentile: *minimum_sparsity_percentile,
                weight_threshold: weight_threshold.map(PyInt::from),
            }
            .into_config()
            .map(drop),
            OpConfig::Magnitude {
                target_sparsity,
                block_size,
                n_m_ratio,
                dim,
                weight_threshold,
            } => {
                RawMagnitude {
                    target_sparsity: *target_sparsity,
                    block_size: block_size.map(PyInt::from),
                    n_m_ratio: n_m_ratio.map(|(n, m)| (PyInt::from(n), PyInt::from(m))),
                    dim: dim.map(PyInt::from),
                    weight_threshold: weight_threshold.map(PyInt::from),
                }
                .into_config()?;
                // coremltools always fills in `dim` for structural configs; a hand-built config
                // without it would describe (and compare) differently from coremltools'.
                if self.is_structural() && dim.is_none() {
                    return Err(err(format!(
                        "config {} has no \"dim\"; coremltools sets 0 with \"block_size\" and 1 with \"n_m_ratio\"",
                        self.describe()
                    )));
                }
                Ok(())
            }
        }
    }

    /// `OpMagnitudePrunerConfig._validate_op_type`: structural configs only for conv / linear.
    pub fn validate_op_type(&self, op_type: &str) -> Result<()> {
        if self.is_structural() && !STRUCTURAL_OP_TYPES.contains(&op_type) {
            return Err(err(format!(
                "block sparsity or n:m pruning does not support op type {}.",
                super::pyfmt::clip(op_type)
            )));
        }
        Ok(())
    }
}

/// `OptimizationConfig.__init__` validators: every entry valid, op-type entries fit their type.
pub(crate) fn validate_optimization_config(cfg: &OptimizationConfig) -> Result<()> {
    let all = cfg
        .global
        .iter()
        .chain(cfg.op_type.values().flatten())
        .chain(cfg.op_name.values().flatten());
    for op in all {
        op.validate()?;
    }
    for (op_type, op) in &cfg.op_type {
        if let Some(op) = op {
            op.validate_op_type(op_type)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magnitude(f: impl FnOnce(&mut RawMagnitude)) -> Result<OpConfig> {
        let mut raw = RawMagnitude::default();
        f(&mut raw);
        raw.into_config()
    }

    fn message(r: Result<OpConfig>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn dim_defaults_follow_the_mode() {
        let block = magnitude(|r| {
            r.target_sparsity = Some(0.5);
            r.block_size = Some(PyInt::from(4i64));
        })
        .unwrap();
        assert!(matches!(
            block,
            OpConfig::Magnitude {
                dim: Some(0),
                block_size: Some(4),
                ..
            }
        ));
        let nm = magnitude(|r| r.n_m_ratio = Some((PyInt::from(2i64), PyInt::from(4i64)))).unwrap();
        assert!(matches!(
            nm,
            OpConfig::Magnitude {
                dim: Some(1),
                n_m_ratio: Some((2, 4)),
                ..
            }
        ));
        let plain = magnitude(|r| r.target_sparsity = Some(0.5)).unwrap();
        assert!(matches!(plain, OpConfig::Magnitude { dim: None, .. }));
        assert!(!plain.is_structural() && block.is_structural() && nm.is_structural());
    }

    #[test]
    fn first_failing_field_wins_like_attrs() {
        // target_sparsity is validated before block_size and dim.
        let m = message(magnitude(|r| {
            r.target_sparsity = Some(2.0);
            r.block_size = Some(PyInt::from(1i64));
            r.dim = Some(PyInt::from(5i64));
        }));
        assert_eq!(
            m,
            "Invalid value of \"target_sparsity\": 2.0. Needs to be in [0, 1]."
        );
        let m = message(magnitude(|r| {
            r.n_m_ratio = Some((PyInt::from(5i64), PyInt::from(4i64)));
            r.block_size = Some(PyInt::from(1i64));
        }));
        assert_eq!(
            m,
            "\"block_size\" and \"n_m_ratio\" cannot be set at the same time."
        );
    }

    #[test]
    fn boundary_values() {
        assert!(magnitude(|r| r.n_m_ratio = Some((PyInt::from(0i64), PyInt::from(1i64)))).is_ok());
        assert!(magnitude(|r| r.n_m_ratio = Some((PyInt::from(4i64), PyInt::from(4i64)))).is_ok());
        assert!(message(magnitude(
            |r| r.n_m_ratio = Some((PyInt::from(0i64), PyInt::from(0i64)))
        ))
        .contains("m >= 1"));
        assert!(message(magnitude(
            |r| r.n_m_ratio = Some((PyInt::from(-1i64), PyInt::from(4i64)))
        ))
        .contains("n >= 0"));
        assert!(magnitude(|r| r.target_sparsity = Some(1.0)).is_ok());
        assert_eq!(
            message(magnitude(|r| r.target_sparsity = Some(f64::NAN))),
            "Invalid value of \"target_sparsity\": nan. Needs to be in [0, 1] \
             (coremltools 9.0 accepts nan here but then fails while pruning)"
        );
        // NaN is refused for every float field; coremltools' own checks are reported first.
        let nan_threshold = RawThreshold {
            threshold: f64::NAN,
            ..Default::default()
        };
        assert_eq!(
            message(nan_threshold.clone().into_config()),
            "Invalid value of \"threshold\": nan. Needs to be in [0, inf) \
             (coremltools 9.0 accepts nan here but then fails while pruning)"
        );
        let m = message(
            RawThreshold {
                minimum_sparsity_percentile: f64::NAN,
                ..Default::default()
            }
            .into_config(),
        );
        assert!(
            m.starts_with("Invalid value of \"minimum_sparsity_percentile\": nan. Needs to be in [0, 1]"),
            "{m}"
        );
        let m = message(
            RawThreshold {
                minimum_sparsity_percentile: 2.0,
                ..nan_threshold
            }
            .into_config(),
        );
        assert!(
            m.starts_with("Invalid value of \"minimum_sparsity_percentile\": 2.0."),
            "{m}"
        );
        // Infinity: a threshold of inf is valid (every value is zeroed), the fractions are not.
        let inf = RawThreshold {
            threshold: f64::INFINITY,
            ..Default::default()
        };
        assert!(inf.into_config().is_ok());
        let m = message(
            RawThreshold {
                minimum_sparsity_percentile: f64::INFINITY,
                ..Default::default()
            }
            .into_config(),
        );
        assert_eq!(
            m,
            "Invalid value of \"minimum_sparsity_percentile\": inf. Needs to be in [0, 1]"
        );
        let m = message(magnitude(|r| r.target_sparsity = Some(f64::INFINITY)));
        assert_eq!(
            m,
            "Invalid value of \"target_sparsity\": inf. Needs to be in [0, 1]."
        );
        let m = message(
            RawThreshold {
                threshold: f64::NEG_INFINITY,
                ..Default::default()
            }
            .into_config(),
        );
        assert_eq!(m, "Invalid value of \"threshold\": -inf. Needs to be in [0, inf)");
        let m = message(
            RawThreshold {
                weight_threshold: Some(PyInt::from(-1i64)),
                ..Default::default()
            }
            .into_config(),
        );
        assert_eq!(m, "\"weight_threshold\" must be a non-negative integer. Got -1.");
        let big = RawThreshold {
            weight_threshold: Some(PyInt::from_decimal("1267650600228229401496703205376").unwrap()),
            ..Default::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(big.weight_threshold(), Some(u64::MAX));
    }

    #[test]
    fn validate_rejects_unnormalised_hand_built_config() {
        let no_dim = OpConfig::Magnitude {
            target_sparsity: Some(0.5),
            block_size: Some(2),
            n_m_ratio: None,
            dim: None,
            weight_threshold: Some(2048),
        };
        assert!(no_dim.validate().is_err());
        let ok = OpConfig::Magnitude {
            target_sparsity: Some(0.5),
            block_size: Some(2),
            n_m_ratio: None,
            dim: Some(0),
            weight_threshold: Some(2048),
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn structural_op_type_configs_only_for_conv_and_linear() {
        let nm = magnitude(|r| r.n_m_ratio = Some((PyInt::from(2i64), PyInt::from(4i64)))).unwrap();
        let mut cfg = OptimizationConfig::default();
        cfg.op_type.insert("conv".into(), Some(nm.clone()));
        cfg.op_type.insert("linear".into(), Some(nm.clone()));
        cfg.op_name.insert("matmul_0".into(), Some(nm.clone()));
        assert!(cfg.validate().is_ok());
        cfg.op_type.insert("matmul".into(), Some(nm));
        match cfg.validate() {
            Err(Error::Config(m)) => assert_eq!(
                m,
                "block sparsity or n:m pruning does not support op type matmul."
            ),
            other => panic!("{other:?}"),
        }
    }
}
