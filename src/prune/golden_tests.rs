//! Runs every committed golden case (`tests/golden/kernels/*.json`, produced by
//! `tests/python/make_kernel_goldens.py` from coremltools 9.0 itself) through the kernels and
//! requires byte-identical masks and nonzero values, identical skip messages, and errors where
//! coremltools raised.

use serde_json::Value;

use super::element::Element;
use super::{block, magnitude, n_m, threshold, KernelError, Outcome};

const GOLDEN_FILES: [(&str, &str); 5] = [
    (
        "threshold",
        include_str!("../../tests/golden/kernels/threshold.json"),
    ),
    (
        "magnitude",
        include_str!("../../tests/golden/kernels/magnitude.json"),
    ),
    ("block", include_str!("../../tests/golden/kernels/block.json")),
    ("n_m", include_str!("../../tests/golden/kernels/n_m.json")),
    ("model", include_str!("../../tests/golden/kernels/model.json")),
];

fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("missing field {key}"))
}

/// A float parameter; non-finite values are stored as strings ("inf").
fn num(params: &Value, key: &str) -> Result<f64, String> {
    let v = field(params, key)?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("{key} is not a number"))
}

fn int(params: &Value, key: &str) -> Result<usize, String> {
    field(params, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("{key} is not an integer"))
}

/// Runs one case with element type T; `Err` describes the mismatch.
fn run_case<T: Element>(case: &Value) -> Result<(), String> {
    let bytes = hex_bytes(field(case, "weights")?.as_str().ok_or("weights")?)?;
    let size = std::mem::size_of::<T>();
    if bytes.len() % size != 0 {
        return Err("weights are not a whole number of elements".into());
    }
    // Copy into a properly aligned buffer (the host is little-endian, like the golden bytes).
    let mut w = vec![T::zeroed(); bytes.len() / size];
    bytemuck::cast_slice_mut::<T, u8>(&mut w).copy_from_slice(&bytes);
    let shape: Vec<usize> = field(case, "shape")?
        .as_array()
        .ok_or("shape")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("shape entry"))
        .collect::<Result<_, _>>()?;
    let p = field(case, "params")?;
    let got: Result<Outcome<T>, KernelError> = match field(case, "mode")?.as_str().ok_or("mode")? {
        "threshold" => Ok(threshold(
            &w,
            num(p, "threshold")?,
            num(p, "minimum_sparsity_percentile")?,
        )),
        "magnitude" => magnitude(&w, num(p, "target_sparsity")?),
        "block" => block(
            &w,
            &shape,
            num(p, "target_sparsity")?,
            int(p, "block_size")?,
            int(p, "dim")?,
        ),
        "n_m" => n_m(&w, &shape, int(p, "n")?, int(p, "m")?, int(p, "dim")?),
        other => return Err(format!("unknown mode {other}")),
    };
    let expected = field(case, "expected")?;
    if let Some(err) = expected.get("error") {
        // The kernel must fail for coremltools' reason: its message starts with coremltools'
        // (after the exception type), not merely fail somehow.
        let err = err.as_str().ok_or("error is not a string")?;
        let reason = err.split_once(": ").map_or(err, |(_, reason)| reason);
        return match got {
            Err(e) if e.to_string().starts_with(reason) => Ok(()),
            Err(e) => Err(format!(
                "coremltools raised {err} but the kernel failed for another reason: {e}"
            )),
            Ok(o) => Err(format!("coremltools raised {err} but the kernel returned {o:?}")),
        };
    }
    let got = got.map_err(|e| format!("kernel error: {e}"))?;
    if let Some(msg) = expected.get("skipped") {
        return match got {
            Outcome::Skipped(m) if Some(m.as_str()) == msg.as_str() => Ok(()),
            other => Err(format!("expected skip {msg}, got {other:?}")),
        };
    }
    let sparse = match got {
        Outcome::Pruned(s) => s,
        Outcome::Skipped(m) => return Err(format!("unexpected skip: {m}")),
    };
    let want_mask = hex_bytes(field(expected, "mask")?.as_str().ok_or("mask")?)?;
    let want_nonzero = hex_bytes(field(expected, "nonzero")?.as_str().ok_or("nonzero")?)?;
    let want_kept = field(expected, "kept")?.as_u64().ok_or("kept")?;
    let got_nonzero: &[u8] = bytemuck::cast_slice(&sparse.nonzero);
    if sparse.kept != want_kept {
        return Err(format!("kept {} != {want_kept}", sparse.kept));
    }
    if sparse.mask != want_mask {
        let first = sparse.mask.iter().zip(&want_mask).position(|(a, b)| a != b);
        return Err(format!("mask differs (first differing byte {first:?})"));
    }
    if got_nonzero != want_nonzero.as_slice() {
        return Err("nonzero values differ".into());
    }
    Ok(())
}

#[test]
fn kernels_match_coremltools_goldens() {
    let mut failures = Vec::new();
    let mut ran = 0usize;
    for (file, text) in GOLDEN_FILES {
        let doc: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}.json: {e}"));
        let cases = doc
            .get("cases")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{file}.json: no cases"));
        assert!(!cases.is_empty(), "{file}.json has no cases");
        for case in cases {
            let name = case.get("name").and_then(Value::as_str).unwrap_or("?");
            let result = match case.get("dtype").and_then(Value::as_str) {
                Some("fp16") => run_case::<half::f16>(case),
                Some("fp32") => run_case::<f32>(case),
                Some("int8") => run_case::<i8>(case),
                Some("uint8") => run_case::<u8>(case),
                other => Err(format!("unknown dtype {other:?}")),
            };
            ran += 1;
            if let Err(e) = result {
                failures.push(format!("{file}/{name}: {e}"));
            }
        }
    }
    assert!(ran > 500, "only {ran} golden cases ran");
    assert!(
        failures.is_empty(),
        "{} of {ran} golden cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
