//! Synthetic ML Program packages of any size, written straight from Rust: a chain of `linear`
//! layers whose weights are deterministic pseudo-random values. It exists so that 1B- and
//! 7B-parameter models can be made for benchmarks without coremltools (which would need the whole
//! model in memory). Weights are generated and written one tensor at a time.

use std::collections::BTreeMap;
use std::path::Path;

use crate::dtype::ScalarType;
use crate::error::{Error, IoContext, Result};
use crate::mil::build::{bind_name, const_op, op};
use crate::mil::value::{blob_value, tensor_value_type};
use crate::package::{Manifest, OutputPackage};
use crate::proto::mil::{Block, Function, NamedValueType, Program};
use crate::proto::spec::{
    array_feature_type, feature_type, model, ArrayFeatureType, FeatureDescription, FeatureType, Model,
    ModelDescription,
};
use crate::weights::WeightFileBuilder;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub layers: u32,
    /// Weight shape `[rows, cols]` of even layers; odd layers are `[cols, rows]` so the chain connects.
    pub rows: u64,
    pub cols: u64,
    /// `Float16` or `Float32`.
    pub dtype: ScalarType,
    pub spec_version: i32,
    pub seed: u64,
}

/// The opset name coremltools uses for a specification version (spec §2.2).
pub fn opset_for_spec(spec_version: i32) -> Option<&'static str> {
    Some(match spec_version {
        6 => "CoreML5",
        7 => "CoreML6",
        8 => "CoreML7",
        9 => "CoreML8",
        10 => "CoreML9",
        _ => return None,
    })
}

/// Writes the package and returns the number of weight parameters.
pub fn generate(spec: &SynthSpec, output: &Path, force: bool) -> Result<u64> {
    if !matches!(spec.dtype, ScalarType::Float16 | ScalarType::Float32) {
        return Err(Error::Usage(format!(
            "--dtype must be fp16 or fp32, not {}",
            spec.dtype
        )));
    }
    let opset = opset_for_spec(spec.spec_version)
        .ok_or_else(|| Error::Usage(format!("--spec must be 6 to 10, not {}", spec.spec_version)))?;
    if spec.dtype == ScalarType::Float16 && spec.spec_version < 7 {
        return Err(Error::Usage("fp16 model inputs need --spec 7 or later".into()));
    }
    if spec.layers == 0 || spec.rows == 0 || spec.cols == 0 {
        return Err(Error::Usage(
            "--layers and both --shape dimensions must be positive".into(),
        ));
    }
    let out = OutputPackage::create_new(output, Manifest::new_ml_program(), force)?;
    let weight_path = out.weight_path();
    let mut weights = WeightFileBuilder::create(&weight_path)?;
    let mut rng = SplitMix64(spec.seed);
    let mut operations = Vec::new();
    let mut input = "x".to_owned();
    let mut params = 0u64;
    for layer in 0..spec.layers {
        let (o, i) = if layer % 2 == 0 {
            (spec.rows, spec.cols)
        } else {
            (spec.cols, spec.rows)
        };
        let count = o
            .checked_mul(i)
            .ok_or_else(|| Error::Usage("--shape is too large".into()))?;
        let bytes = random_tensor(&mut rng, spec.dtype, count, (i as f64).sqrt().recip())?;
        let w_name = format!("layer{layer}_weight");
        let w_offset = weights.append_raw(spec.dtype, &bytes, count)?;
        drop(bytes);
        operations.push(const_op(&w_name, blob_value(spec.dtype, &[o, i], w_offset)));
        let b_name = format!("layer{layer}_bias");
        let bias = random_tensor(&mut rng, spec.dtype, o, 0.01)?;
        let b_offset = weights.append_raw(spec.dtype, &bias, o)?;
        operations.push(const_op(&b_name, blob_value(spec.dtype, &[o], b_offset)));
        let y = format!("layer{layer}_out");
        operations.push(op(
            "linear",
            &format!("layer{layer}"),
            BTreeMap::from([
                ("x".to_owned(), bind_name(&input)),
                ("weight".to_owned(), bind_name(&w_name)),
                ("bias".to_owned(), bind_name(&b_name)),
            ]),
            BTreeMap::new(),
            vec![(y.clone(), tensor_value_type(spec.dtype, &[1, o]))],
        ));
        params += count + o;
        input = y;
    }
    weights.finish()?;
    let last_dim = if spec.layers % 2 == 1 {
        spec.rows
    } else {
        spec.cols
    };
    let block = Block {
        outputs: vec![input.clone()],
        operations: crate::mil::ops::encode_ops(operations),
        ..Default::default()
    };
    let function = Function {
        inputs: vec![NamedValueType {
            name: "x".into(),
            r#type: Some(tensor_value_type(spec.dtype, &[1, spec.cols])),
        }],
        opset: opset.into(),
        block_specializations: BTreeMap::from([(opset.to_owned(), block)]),
        ..Default::default()
    };
    let program = Program {
        version: 1,
        functions: BTreeMap::from([("main".into(), function)]),
        ..Default::default()
    };
    let model = Model {
        specification_version: spec.spec_version,
        description: Some(ModelDescription {
            input: vec![array_feature("x", spec.dtype, spec.cols)],
            output: vec![array_feature(&input, spec.dtype, last_dim)],
            ..Default::default()
        }),
        r#type: Some(model::Type::MlProgram(program)),
        ..Default::default()
    };
    let model_path = out.model_path();
    std::fs::write(&model_path, crate::mil::encode_model(&model)).at(&model_path)?;
    for notice in out.commit()? {
        crate::error::write_stderr(&format!("mlprune: {}\n", crate::error::escape_control(&notice)));
    }
    Ok(params)
}

fn array_feature(name: &str, dtype: ScalarType, width: u64) -> FeatureDescription {
    let data_type = match dtype {
        ScalarType::Float16 => array_feature_type::ArrayDataType::Float16,
        _ => array_feature_type::ArrayDataType::Float32,
    };
    FeatureDescription {
        name: name.into(),
        r#type: Some(FeatureType {
            r#type: Some(feature_type::Type::MultiArrayType(ArrayFeatureType {
                shape: vec![1, width as i64],
                data_type: data_type as i32,
                ..Default::default()
            })),
            is_optional: false,
        }),
        ..Default::default()
    }
}

/// Little-endian bytes of `count` values, roughly normal with standard deviation `scale`.
fn random_tensor(rng: &mut SplitMix64, dtype: ScalarType, count: u64, scale: f64) -> Result<Vec<u8>> {
    let elem = (dtype.bits() / 8) as u64;
    let too_large = || Error::Usage(format!("a tensor of {count} elements does not fit in memory"));
    let len = count
        .checked_mul(elem)
        .and_then(|len| usize::try_from(len).ok())
        .ok_or_else(too_large)?;
    // Asked, not assumed: a failed allocation would abort the process and leave the staged
    // package behind.
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| too_large())?;
    for _ in 0..count {
        // Irwin–Hall with 4 uniforms: cheap, bell-shaped, and distinct values almost everywhere.
        let u: f64 = (0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0;
        let v = u * scale * 1.732;
        match dtype {
            ScalarType::Float16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            _ => out.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    Ok(out)
}

/// A small, fast, deterministic generator (Steele, Lea and Flood's SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::inspect;

    #[test]
    fn generated_package_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s.mlpackage");
        let spec = SynthSpec {
            layers: 3,
            rows: 48,
            cols: 32,
            dtype: ScalarType::Float16,
            spec_version: 7,
            seed: 1,
        };
        assert_eq!(generate(&spec, &out, false).unwrap(), 3 * 48 * 32 + 48 + 32 + 48);
        let report = inspect(&out).unwrap();
        let shapes: Vec<_> = report.weights.iter().map(|w| w.shape.clone()).collect();
        assert_eq!(
            shapes,
            [
                vec![48, 32],
                vec![48],
                vec![32, 48],
                vec![32],
                vec![48, 32],
                vec![48]
            ]
        );
        assert!(report
            .weights
            .iter()
            .all(|w| w.sparsity == Some(0.0) || w.elements < 100));
        assert_eq!(report.opsets, ["CoreML6"]);
        // Same seed, same bytes.
        let again = dir.path().join("t.mlpackage");
        generate(&spec, &again, false).unwrap();
        let wb = |p: &Path| std::fs::read(p.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
        assert_eq!(wb(&out), wb(&again));
        assert!(
            generate(&spec, &out, false).is_err(),
            "existing output needs force"
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s.mlpackage");
        let base = SynthSpec {
            layers: 1,
            rows: 4,
            cols: 4,
            dtype: ScalarType::Float32,
            spec_version: 7,
            seed: 0,
        };
        for bad in [
            SynthSpec {
                dtype: ScalarType::Int8,
                ..base.clone()
            },
            SynthSpec {
                spec_version: 11,
                ..base.clone()
            },
            SynthSpec {
                layers: 0,
                ..base.clone()
            },
            SynthSpec {
                dtype: ScalarType::Float16,
                spec_version: 6,
                ..base.clone()
            },
        ] {
            assert!(generate(&bad, &out, false).is_err(), "{bad:?}");
            assert!(!out.exists());
        }
    }
}
