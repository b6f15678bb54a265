//! Which config applies to one `const` op: coremltools 9.0's `_get_const_op_config` (spec §5.3).
//!
//! The caller (the pruning plan) calls [`resolve`] only for consts coremltools would consider at
//! all: values storable in the weight file (fp16/fp32/int8/uint8 with at least 10 elements).
//! coremltools resolves those before any other eligibility check, so errors raised here (a
//! `"const"` op-type key, a conflict) abort the run even for consts that would later be skipped.

use std::fmt;

use super::{OpConfig, OptimizationConfig};
use crate::{Error, Result};

/// An op that reads the const's output: its `name` attribute and its op type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer<'a> {
    pub op_name: std::borrow::Cow<'a, str>,
    pub op_type: &'a str,
}

impl Consumer<'_> {
    fn is_constexpr(&self) -> bool {
        self.op_type.starts_with("constexpr_")
    }
}

/// Outcome of resolving a const.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution<'a> {
    /// Prune with this config (further eligibility checks still apply, §5.4).
    Config(&'a OpConfig),
    /// Do not prune; the reason is for the report.
    Skip(SkipReason),
    /// Every consumer is a `constexpr_*` op. coremltools then resolves the **first** consumer
    /// (`consumer`) recursively with the same rules: call [`resolve_op`] with that op's name, type
    /// and consumers. Joint compression prunes along that chain; in plain mode the const is skipped
    /// afterwards ("feeds constexpr op"), but the recursion can still raise errors, so run it.
    FollowConstexpr { consumer: String, op_type: String },
}

/// Why a const is not pruned, worded for the per-tensor report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Nothing reads the const except a block output (coremltools never compresses those).
    NoConsumers,
    /// A config level set to `None`; `by` says which, e.g. `op_name_configs['w']`.
    ExplicitNone { by: String },
    /// No entry matches and there is no global config.
    NoConfig,
    /// A consumer is a `constexpr_*` op and joint compression is off.
    FeedsConstexpr,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NoConsumers => f.write_str("only used as a block output"),
            SkipReason::ExplicitNone { by } => write!(f, "excluded by {by} = None"),
            SkipReason::NoConfig => f.write_str("no config applies"),
            SkipReason::FeedsConstexpr => f.write_str("feeds constexpr op"),
        }
    }
}

/// Resolve the config of the `const` op named `const_name` (§5.3).
pub fn resolve<'a>(
    cfg: &'a OptimizationConfig,
    const_name: &str,
    consumers: &[Consumer],
) -> Result<Resolution<'a>> {
    resolve_op(cfg, const_name, "const", consumers)
}

/// Resolve for a `const` or, when following a constexpr chain, a `constexpr_*` op.
pub fn resolve_op<'a>(
    cfg: &'a OptimizationConfig,
    op_name: &str,
    op_type: &str,
    consumers: &[Consumer],
) -> Result<Resolution<'a>> {
    // 1. The const's own name wins over everything, including the checks below.
    if let Some(entry) = cfg.op_name.get(op_name) {
        return Ok(by_level(
            entry.as_ref(),
            Some(format!("op_name_configs['{op_name}']")),
        ));
    }
    // 2. coremltools compares the const's own op type ("const" or the constexpr type) with the
    //    op-type keys; the message says "const ops" in both cases.
    if cfg.op_type.contains_key(op_type) {
        return Err(Error::Config(
            "const ops cannot be set by the `set_op_type` function. Please use `set_global`".into(),
        ));
    }
    // 3. Only a block output reads it.
    let Some(first) = consumers.first() else {
        return Ok(Resolution::Skip(SkipReason::NoConsumers));
    };
    // 4. A chain of constexpr ops: coremltools follows the first one.
    if consumers.iter().all(Consumer::is_constexpr) {
        return Ok(Resolution::FollowConstexpr {
            consumer: first.op_name.to_string(),
            op_type: first.op_type.to_string(),
        });
    }
    // 5. Every consumer must resolve to the same config (or to the same None). coremltools prints
    //    each op's full multi-line MIL text where we print its name, to keep the message one line.
    //    As in coremltools the first is compared with itself too: a config holding NaN is not.
    let (first_cfg, first_by) = consumer_config(cfg, first);
    for c in consumers {
        let (other_cfg, _) = consumer_config(cfg, c);
        if !same_config(first_cfg, other_cfg) {
            return Err(Error::Config(format!(
                "compression config conflict detected between ops {} and {}. {} has config {} while {} has {}.",
                first.op_name,
                c.op_name,
                first.op_name,
                describe(first_cfg),
                c.op_name,
                describe(other_cfg)
            )));
        }
    }
    Ok(by_level(first_cfg, first_by))
}

/// The size threshold of a resolved config. coremltools raises this lazily, when a const that
/// resolved to the config reaches the size check (after the "feeds a constexpr op" check and
/// before the rank and size checks).
pub fn weight_threshold_of(cfg: &OpConfig) -> Result<u64> {
    cfg.weight_threshold()
        .ok_or_else(|| Error::Config("weight_threshold cannot be None".into()))
}

/// `by` names the level the entry came from; `None` means the global level.
fn by_level(entry: Option<&OpConfig>, by: Option<String>) -> Resolution<'_> {
    match (entry, by) {
        (Some(c), _) => Resolution::Config(c),
        (None, Some(by)) => Resolution::Skip(SkipReason::ExplicitNone { by }),
        (None, None) => Resolution::Skip(SkipReason::NoConfig),
    }
}

/// `_get_op_config` for a non-const consumer: op name, then op type, then global.
/// Returns the config and the level it came from (`None` = global), for the skip reason.
fn consumer_config<'a>(cfg: &'a OptimizationConfig, c: &Consumer) -> (Option<&'a OpConfig>, Option<String>) {
    if let Some(e) = cfg.op_name.get(&*c.op_name) {
        return (e.as_ref(), Some(format!("op_name_configs['{}']", c.op_name)));
    }
    if let Some(e) = cfg.op_type.get(c.op_type) {
        return (e.as_ref(), Some(format!("op_type_configs['{}']", c.op_type)));
    }
    (cfg.global.as_ref(), None)
}

/// attrs `__eq__` as coremltools 9.0 installs it (attrs 26): field by field with `==`, so a config
/// holding NaN equals nothing, not even itself. Validation refuses NaN, so only a config built in
/// code without [`OptimizationConfig::validate`] gets here with one.
fn same_config(a: Option<&OpConfig>, b: Option<&OpConfig>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn describe(c: Option<&OpConfig>) -> String {
    c.map_or_else(|| "None".to_string(), OpConfig::describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(t: f64) -> OpConfig {
        OpConfig::Threshold {
            threshold: t,
            minimum_sparsity_percentile: 0.5,
            weight_threshold: Some(2048),
        }
    }

    fn nm(n: u64, m: u64) -> OpConfig {
        OpConfig::Magnitude {
            target_sparsity: None,
            block_size: None,
            n_m_ratio: Some((n, m)),
            dim: Some(1),
            weight_threshold: Some(2048),
        }
    }

    fn c<'a>(op_name: &'a str, op_type: &'a str) -> Consumer<'a> {
        Consumer {
            op_name: op_name.into(),
            op_type,
        }
    }

    fn message<T: fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn precedence_const_name_then_consumer_name_then_type_then_global() {
        let mut cfg = OptimizationConfig::global(threshold(0.1));
        cfg.op_type.insert("linear".into(), Some(threshold(0.2)));
        cfg.op_name.insert("linear_0".into(), Some(threshold(0.3)));
        cfg.op_name.insert("w".into(), Some(threshold(0.4)));

        let lin0 = [c("linear_0", "linear")];
        let lin1 = [c("linear_1", "linear")];
        let conv = [c("conv_0", "conv")];
        assert_eq!(
            resolve(&cfg, "w", &lin0).unwrap(),
            Resolution::Config(&threshold(0.4))
        );
        assert_eq!(
            resolve(&cfg, "v", &lin0).unwrap(),
            Resolution::Config(&threshold(0.3))
        );
        assert_eq!(
            resolve(&cfg, "v", &lin1).unwrap(),
            Resolution::Config(&threshold(0.2))
        );
        assert_eq!(
            resolve(&cfg, "v", &conv).unwrap(),
            Resolution::Config(&threshold(0.1))
        );
        assert_eq!(
            resolve(&OptimizationConfig::default(), "v", &conv).unwrap(),
            Resolution::Skip(SkipReason::NoConfig)
        );
    }

    #[test]
    fn none_skips_at_every_level() {
        let mut cfg = OptimizationConfig::global(threshold(0.1));
        cfg.op_name.insert("w".into(), None);
        cfg.op_name.insert("matmul_0".into(), None);
        cfg.op_type.insert("linear".into(), None);
        let skip = |by: &str| Resolution::Skip(SkipReason::ExplicitNone { by: by.into() });

        // By the const's own name: even a "const" op-type key is not looked at.
        assert_eq!(
            resolve(&cfg, "w", &[c("conv_0", "conv")]).unwrap(),
            skip("op_name_configs['w']")
        );
        assert_eq!(
            resolve(&cfg, "v", &[c("matmul_0", "matmul")]).unwrap(),
            skip("op_name_configs['matmul_0']")
        );
        assert_eq!(
            resolve(&cfg, "v", &[c("linear_3", "linear")]).unwrap(),
            skip("op_type_configs['linear']")
        );
        cfg.global = None;
        assert_eq!(
            resolve(&cfg, "v", &[c("conv_0", "conv")]).unwrap(),
            Resolution::Skip(SkipReason::NoConfig)
        );
        assert_eq!(
            SkipReason::ExplicitNone {
                by: "op_type_configs['linear']".into()
            }
            .to_string(),
            "excluded by op_type_configs['linear'] = None"
        );
    }

    #[test]
    fn consumers_resolving_to_none_and_a_config_conflict() {
        let mut cfg = OptimizationConfig::global(threshold(0.1));
        cfg.op_type.insert("linear".into(), None);
        let m = message(resolve(&cfg, "w", &[c("linear_0", "linear"), c("add_0", "add")]));
        assert_eq!(
            m,
            "compression config conflict detected between ops linear_0 and add_0. linear_0 has config None \
             while add_0 has OpThresholdPrunerConfig(threshold=0.1, minimum_sparsity_percentile=0.5, weight_threshold=2048)."
        );
    }

    #[test]
    fn conflicting_configs_name_both_ops() {
        let mut cfg = OptimizationConfig::global(threshold(0.1));
        cfg.op_type.insert("conv".into(), Some(nm(2, 4)));
        let m = message(resolve(&cfg, "w", &[c("conv_0", "conv"), c("mul_1", "mul")]));
        assert!(
            m.starts_with("compression config conflict detected between ops conv_0 and mul_1. "),
            "{m}"
        );
        assert!(m.contains("conv_0 has config OpMagnitudePrunerConfig(target_sparsity=None, block_size=None, n_m_ratio=(2, 4), dim=1, weight_threshold=2048)"), "{m}");
        assert!(
            m.contains("while mul_1 has OpThresholdPrunerConfig(threshold=0.1,"),
            "{m}"
        );
    }

    #[test]
    fn equal_configs_from_different_levels_do_not_conflict() {
        let mut cfg = OptimizationConfig::global(threshold(0.1));
        cfg.op_name.insert("add_0".into(), Some(threshold(0.1)));
        let r = resolve(&cfg, "w", &[c("conv_0", "conv"), c("add_0", "add")]).unwrap();
        assert_eq!(r, Resolution::Config(&threshold(0.1)));
        // A NaN entry does not even equal itself (coremltools 9.0 with attrs 26 raises this
        // conflict for `OpThresholdPrunerConfig(threshold=nan)` on any const with two consumers).
        let nan = OptimizationConfig::global(threshold(f64::NAN));
        let m = message(resolve(&nan, "w", &[c("a", "add")]));
        assert!(
            m.starts_with("compression config conflict detected between ops a and a."),
            "{m}"
        );
        assert!(nan.validate().is_err(), "validation refuses it first");
    }

    #[test]
    fn const_op_type_key_is_an_error_unless_named() {
        let mut cfg = OptimizationConfig::global(threshold(0.1));
        cfg.op_type.insert("const".into(), Some(threshold(0.2)));
        let m = message(resolve(&cfg, "w", &[c("conv_0", "conv")]));
        assert_eq!(
            m,
            "const ops cannot be set by the `set_op_type` function. Please use `set_global`"
        );
        // Raised before the consumer checks: even a const read by nothing.
        assert!(resolve(&cfg, "w", &[]).is_err());
        cfg.op_name.insert("w".into(), Some(threshold(0.3)));
        assert_eq!(
            resolve(&cfg, "w", &[c("conv_0", "conv")]).unwrap(),
            Resolution::Config(&threshold(0.3))
        );
    }

    #[test]
    fn no_consumers_and_constexpr_chains() {
        let cfg = OptimizationConfig::global(threshold(0.1));
        assert_eq!(
            resolve(&cfg, "w", &[]).unwrap(),
            Resolution::Skip(SkipReason::NoConsumers)
        );
        let chain = [
            c("lut_0", "constexpr_lut_to_dense"),
            c("lut_1", "constexpr_lut_to_dense"),
        ];
        assert_eq!(
            resolve(&cfg, "w", &chain).unwrap(),
            Resolution::FollowConstexpr {
                consumer: "lut_0".into(),
                op_type: "constexpr_lut_to_dense".into()
            }
        );
        // Following the chain applies the same rules to the constexpr op, including the op-type key.
        let mut keyed = cfg.clone();
        keyed
            .op_type
            .insert("constexpr_lut_to_dense".into(), Some(threshold(0.2)));
        assert!(resolve_op(&keyed, "lut_0", "constexpr_lut_to_dense", &[c("conv_0", "conv")]).is_err());
        assert_eq!(
            resolve_op(&cfg, "lut_0", "constexpr_lut_to_dense", &[c("conv_0", "conv")]).unwrap(),
            Resolution::Config(&threshold(0.1))
        );
        // Mixed consumers are resolved normally (the constexpr one by its type, then global).
        let mixed = [c("lut_0", "constexpr_lut_to_dense"), c("conv_0", "conv")];
        assert_eq!(
            resolve(&cfg, "w", &mixed).unwrap(),
            Resolution::Config(&threshold(0.1))
        );
        assert_eq!(SkipReason::FeedsConstexpr.to_string(), "feeds constexpr op");
    }

    #[test]
    fn weight_threshold_none_fails_lazily() {
        let none = OpConfig::Threshold {
            threshold: 0.1,
            minimum_sparsity_percentile: 0.5,
            weight_threshold: None,
        };
        assert_eq!(
            message(weight_threshold_of(&none)),
            "weight_threshold cannot be None"
        );
        assert_eq!(weight_threshold_of(&threshold(0.1)).unwrap(), 2048);
    }

    #[test]
    fn structural_config_on_other_op_type_is_rejected_at_construction() {
        let mut cfg = OptimizationConfig::default();
        cfg.op_type.insert("matmul".into(), Some(nm(2, 4)));
        assert_eq!(
            message(cfg.validate()),
            "block sparsity or n:m pruning does not support op type matmul."
        );
    }
}
