//! Global configs from the CLI shortcut flags, validated exactly like coremltools' configs:
//!
//! * `--threshold T [--min-sparsity P]` → `OpThresholdPrunerConfig(threshold=T, minimum_sparsity_percentile=P)`
//! * `--sparsity S [--block-size B] [--dim D]` → `OpMagnitudePrunerConfig(target_sparsity=S, block_size=B, dim=D)`
//! * `--n-m N:M [--dim D]` → `OpMagnitudePrunerConfig(n_m_ratio=(N, M), dim=D)`
//! * `--weight-threshold W` sets `weight_threshold` of whichever config is built (default 2048).

use super::validate::{PyInt, RawMagnitude, RawThreshold};
use super::{OpConfig, OptimizationConfig};
use crate::{Error, Result};

/// The CLI's pruning flags; `None` = flag not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shortcuts {
    pub threshold: Option<f64>,
    pub min_sparsity: Option<f64>,
    pub sparsity: Option<f64>,
    pub block_size: Option<u64>,
    pub n_m: Option<(u64, u64)>,
    pub dim: Option<u32>,
    pub weight_threshold: Option<u64>,
}

/// Build the global config the flags describe.
///
/// `--weight-threshold` alone (no mode flag) means threshold pruning with coremltools' defaults
/// (`threshold = 1e-12`, `minimum_sparsity_percentile = 0.5`), i.e. only values that are already
/// (almost) zero are dropped, and only from tensors with more than W elements; coremltools itself
/// has no mode-less pruner config, this is the mildest one. Mixing threshold flags with magnitude
/// flags is an error, as is giving no flag at all. Field checks and their messages are coremltools'.
pub fn from_shortcuts(s: &Shortcuts) -> Result<OptimizationConfig> {
    let weight_threshold = Some(PyInt::from(
        s.weight_threshold.unwrap_or(super::DEFAULT_WEIGHT_THRESHOLD),
    ));
    let threshold_mode = s.threshold.is_some() || s.min_sparsity.is_some();
    let magnitude_mode = s.sparsity.is_some() || s.n_m.is_some() || s.block_size.is_some() || s.dim.is_some();

    let op: OpConfig = match (threshold_mode, magnitude_mode) {
        (true, true) => {
            return Err(Error::Config(
                "--threshold/--min-sparsity (threshold pruning) cannot be combined with \
                 --sparsity/--n-m/--block-size/--dim (magnitude pruning)"
                    .into(),
            ))
        }
        (true, false) => {
            if s.threshold.is_none() {
                return Err(Error::Config("--min-sparsity needs --threshold".into()));
            }
            RawThreshold {
                threshold: s.threshold.unwrap_or(super::DEFAULT_THRESHOLD),
                minimum_sparsity_percentile: s.min_sparsity.unwrap_or(super::DEFAULT_MIN_SPARSITY),
                weight_threshold,
            }
            .into_config()?
        }
        (false, true) => RawMagnitude {
            target_sparsity: s.sparsity,
            block_size: s.block_size.map(PyInt::from),
            n_m_ratio: s.n_m.map(|(n, m)| (PyInt::from(n), PyInt::from(m))),
            dim: s.dim.map(PyInt::from),
            weight_threshold,
        }
        .into_config()?,
        (false, false) if s.weight_threshold.is_some() => RawThreshold {
            weight_threshold,
            ..Default::default()
        }
        .into_config()?,
        (false, false) => {
            return Err(Error::Config(
                "no pruning mode: give --threshold, --sparsity or --n-m, or a config file".into(),
            ))
        }
    };
    Ok(OptimizationConfig::global(op))
}

/// Parse `--n-m N:M` (whole numbers, e.g. `2:4`). Whether `N <= M` is checked when the config is
/// built, with coremltools' message.
pub fn parse_n_m(s: &str) -> Result<(u64, u64)> {
    let bad = || {
        Error::Config(format!(
            "invalid n:m ratio '{}': expected N:M with whole numbers, e.g. 2:4",
            super::pyfmt::clip(s)
        ))
    };
    let (n, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let num = |t: &str| -> Result<u64> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<u64>().map_err(|_| bad())
    };
    Ok((num(n)?, num(m)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<OptimizationConfig>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn each_mode_builds_the_matching_global_config() {
        let t = from_shortcuts(&Shortcuts {
            threshold: Some(0.01),
            min_sparsity: Some(0.3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            t.global,
            Some(OpConfig::Threshold {
                threshold: 0.01,
                minimum_sparsity_percentile: 0.3,
                weight_threshold: Some(2048)
            })
        );
        let b = from_shortcuts(&Shortcuts {
            sparsity: Some(0.5),
            block_size: Some(4),
            weight_threshold: Some(100),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            b.global,
            Some(OpConfig::Magnitude {
                target_sparsity: Some(0.5),
                block_size: Some(4),
                n_m_ratio: None,
                dim: Some(0),
                weight_threshold: Some(100)
            })
        );
        let nm = from_shortcuts(&Shortcuts {
            n_m: Some((2, 4)),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            nm.global,
            Some(OpConfig::Magnitude {
                n_m_ratio: Some((2, 4)),
                dim: Some(1),
                ..
            })
        ));
        assert!(nm.op_type.is_empty() && nm.op_name.is_empty());
    }

    #[test]
    fn weight_threshold_alone_is_default_threshold_pruning() {
        let c = from_shortcuts(&Shortcuts {
            weight_threshold: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.global,
            Some(OpConfig::Threshold {
                threshold: 1e-12,
                minimum_sparsity_percentile: 0.5,
                weight_threshold: Some(0)
            })
        );
    }

    #[test]
    fn invalid_combinations_use_coremltools_messages() {
        let both = Shortcuts {
            sparsity: Some(0.5),
            n_m: Some((2, 4)),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&both)),
            "Either \"target_sparsity\" or \"n_m_ratio\" need to be set. They cannot be set at the same time."
        );
        let nm_block = Shortcuts {
            n_m: Some((2, 4)),
            block_size: Some(2),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&nm_block)),
            "\"block_size\" and \"n_m_ratio\" cannot be set at the same time."
        );
        let dim_only = Shortcuts {
            sparsity: Some(0.5),
            dim: Some(1),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&dim_only)),
            "\"dim\" can only be set along with \"block_size\" or \"n_m_ratio\"."
        );
        let n_gt_m = Shortcuts {
            n_m: Some((5, 4)),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&n_gt_m)),
            "\"n_m_ratio\" must be a tuple of two integers (n, m). n <= m. Got (5, 4)"
        );
        let block1 = Shortcuts {
            sparsity: Some(0.5),
            block_size: Some(1),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&block1)),
            "\"block_size\" must be an integer > 1. Got 1."
        );
        let neg = Shortcuts {
            threshold: Some(-0.5),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&neg)),
            "Invalid value of \"threshold\": -0.5. Needs to be in [0, inf)"
        );
        let s = Shortcuts {
            sparsity: Some(1.5),
            ..Default::default()
        };
        assert_eq!(
            message(from_shortcuts(&s)),
            "Invalid value of \"target_sparsity\": 1.5. Needs to be in [0, 1]."
        );
        let mixed = Shortcuts {
            threshold: Some(0.1),
            sparsity: Some(0.5),
            ..Default::default()
        };
        assert!(message(from_shortcuts(&mixed)).contains("cannot be combined"));
        assert!(message(from_shortcuts(&Shortcuts {
            min_sparsity: Some(0.5),
            ..Default::default()
        }))
        .contains("needs --threshold"));
        assert!(message(from_shortcuts(&Shortcuts::default())).starts_with("no pruning mode"));
    }

    #[test]
    fn n_m_parsing() {
        assert_eq!(parse_n_m("2:4").unwrap(), (2, 4));
        assert_eq!(parse_n_m(" 0 : 8 ").unwrap(), (0, 8));
        for bad in ["2", "2:", ":4", "2:4:8", "-1:4", "a:b", "2.0:4", "2/4", ""] {
            assert!(parse_n_m(bad).is_err(), "{bad}");
        }
        assert!(parse_n_m("99999999999999999999999:1").is_err());
    }
}
