//! The fuzz targets' entry points, shared with `tests/hostile.rs` (which replays the saved corpus
//! through them without a fuzzer). Each takes arbitrary bytes and must return normally: a reader
//! may refuse the input with an `mlprune::Error`, but never panic, hang or allocate what the input
//! merely claims. The asserts below are the properties a clean refusal or success must have; a
//! failing one is a finding just like a panic inside mlprune.
//!
//! `unwrap` here is only ever on the harness's own file operations, never on the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlprune::blob::BlobReader;
use mlprune::config::{from_shortcuts, Shortcuts};
use mlprune::dtype::ScalarType;
use mlprune::engine::{self, DevicePolicy, PruneJob};
use mlprune::inspect::{inspect, render_json, render_table, Inspection};
use mlprune::mil::access::op_at;
use mlprune::mil::graph::GraphView;
use mlprune::mil::{decode_model, OperationExt, ValueExt};
use mlprune::package::{Manifest, Package};
use mlprune::proto::spec::model::Type;
use mlprune::weights::TensorMeta;
use mlprune::Error;

/// What the CLI prints for an error must be one line (stderr is `mlprune: error: <this>`).
pub fn assert_one_line(e: &Error) {
    let text = e.one_line();
    assert!(
        !text.is_empty() && !text.contains(['\n', '\r']),
        "error is not one line: {text:?}"
    );
}

/// `weight.bin` target: the header, every record the walk finds, every blob read back as the tensor
/// its record describes, and one probe at an offset, dtype and count taken from the input's tail.
pub fn blob_reader(data: &[u8]) {
    let reader = match BlobReader::new(data, PathBuf::from("weight.bin")) {
        Ok(reader) => reader,
        Err(e) => return assert_one_line(&e),
    };
    match reader.records() {
        Ok(records) => {
            for record in records {
                // A record the walk validated must read back as exactly what it describes.
                let read = reader.read_tensor(record.offset, record.dtype, record.element_count());
                let tensor =
                    read.unwrap_or_else(|e| panic!("validated record {record:?} does not read: {e}"));
                assert_eq!(tensor.len() as u64, record.element_count());
            }
        }
        Err(e) => assert_one_line(&e),
    }
    if let Some(tail) = data.len().checked_sub(16).and_then(|at| data.get(at..)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&tail[..8]);
        // Small offsets, where records are, most of the time; the raw value otherwise.
        let raw = u64::from_le_bytes(word);
        let offset = if raw >> 63 == 0 {
            raw % (data.len() as u64 + 64)
        } else {
            raw
        };
        let dtype = ScalarType::ALL[usize::from(tail[8]) % ScalarType::ALL.len()];
        let count = u64::from(u32::from_le_bytes([tail[12], tail[13], tail[14], tail[15]]));
        if let Err(e) = reader.record(offset) {
            assert_one_line(&e);
        }
        if let Err(e) = reader.read_tensor(offset, dtype, count) {
            assert_one_line(&e);
        }
    }
}

/// `Manifest.json` target: parse; a manifest that parses must write JSON that parses back to a
/// manifest naming the same items, before and after adding the weights item (what `prune` writes).
pub fn manifest(data: &[u8]) {
    let path = Path::new("Manifest.json");
    let mut parsed = match Manifest::parse(data, path) {
        Ok(m) => m,
        Err(e) => return assert_one_line(&e),
    };
    for _ in 0..2 {
        let json = parsed.to_json();
        let again = Manifest::parse(&json, path)
            .unwrap_or_else(|e| panic!("mlprune wrote a manifest it cannot read back: {e}"));
        assert_eq!(again.root_model_path(), parsed.root_model_path());
        assert_eq!(again.weights_dir_path(), parsed.weights_dir_path());
        // Not asserted: byte-identical rewrites. serde_json (without `float_roundtrip`) may parse a
        // float in an unknown key one ulp off, so such a value can drift by an ulp per rewrite.
        parsed.ensure_weights_item();
    }
}

/// A coremltools manifest naming the model and the weights folder.
pub const MANIFEST: &str = r#"{
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {
        "A": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel"
        },
        "B": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        }
    },
    "rootModelIdentifier": "A"
}
"#;

/// Splits a model-target input: a little-endian u32 model length, the model, then `weight.bin`
/// (none when nothing follows the model).
pub fn split_model_input(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return (data, None);
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (model, weights) = rest.split_at(len);
    (model, (!weights.is_empty()).then_some(weights))
}

/// The inverse of [`split_model_input`], to build seeds.
pub fn join_model_input(model: &[u8], weights: Option<&[u8]>) -> Vec<u8> {
    let mut out = (model.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(model);
    out.extend_from_slice(weights.unwrap_or_default());
    out
}

/// Writes a package folder holding `model` and `weights` at `dir/in.mlpackage`.
pub fn write_package(dir: &Path, model: &[u8], weights: Option<&[u8]>) -> PathBuf {
    let root = dir.join("in.mlpackage");
    let core_ml = root.join("Data/com.apple.CoreML");
    std::fs::create_dir_all(core_ml.join("weights")).unwrap();
    std::fs::write(root.join("Manifest.json"), MANIFEST).unwrap();
    std::fs::write(core_ml.join("model.mlmodel"), model).unwrap();
    if let Some(weights) = weights {
        std::fs::write(core_ml.join("weights/weight.bin"), weights).unwrap();
    }
    root
}

/// Every file under `dir`, by path.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Model target: the decoder and graph walk in memory, every const's declared type, then (for
/// inputs that get that far) the real `inspect` and `prune`, plain and joint, on a package on disk.
/// A failed prune must leave no output and no temporary sibling; a successful one must write a
/// package `inspect` reads; the input is never changed.
pub fn model(data: &[u8]) {
    let (model_bytes, weights) = split_model_input(data);
    let model = match decode_model(model_bytes.to_vec().into(), Path::new("model.mlmodel")) {
        Ok(m) => m,
        Err(e) => return assert_one_line(&e),
    };
    let Some(Type::MlProgram(program)) = &model.r#type else {
        panic!("decode_model returned a model that is not an ML Program");
    };
    let graph = match GraphView::build(program) {
        Ok(g) => g,
        Err(e) => return assert_one_line(&e),
    };
    for (index, info) in graph.infos() {
        let op = op_at(program, &info.path).expect("every indexed op is reachable by its path");
        let _ = graph.consumers(index);
        if let Some(value) = op.const_value() {
            let _ = (
                TensorMeta::of(value),
                value.blob_offset(),
                value.immediate_tensor(),
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let input = write_package(dir.path(), model_bytes, weights);
    let before = snapshot(&input);
    match Inspection::open(&input) {
        Ok(inspection) => {
            // Rows the first pass made are made again for each output.
            let table = render_table(&inspection).expect("the table of a package read");
            assert!(table.starts_with("NAME"));
            render_json(&inspection).expect("the JSON of a package read");
            let rows = inspection.row_count();
            let report = inspection.into_report().expect("the rows of a package read");
            assert_eq!(report.weights.len(), rows);
        }
        Err(e) => assert_one_line(&e),
    }
    let config = from_shortcuts(&Shortcuts {
        sparsity: Some(0.5),
        weight_threshold: Some(0),
        ..Default::default()
    })
    .expect("a valid built-in config");
    for joint_compression in [false, true] {
        let output = dir.path().join("out.mlpackage");
        let job = PruneJob {
            input: input.clone(),
            output: output.clone(),
            config: config.clone(),
            joint_compression,
            device: DevicePolicy::Cpu,
            gpu_min_elements: u64::MAX,
            force: false,
            report: None,
            keep_entries: false,
            config_file: None,
            progress: false,
            cancel: Default::default(),
        };
        match engine::prune(&job) {
            Ok(_) => {
                if let Err(e) = inspect(&output) {
                    panic!("prune (joint: {joint_compression}) wrote a package inspect refuses: {e}");
                }
                std::fs::remove_dir_all(&output).unwrap();
            }
            Err(e) => {
                assert_one_line(&e);
                assert!(!output.exists(), "a failed prune left its output");
            }
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("in.mlpackage")],
            "temporary files left behind"
        );
    }
    assert!(snapshot(&input) == before, "the input package changed");
}

/// Zip target: arbitrary bytes as a zipped package. Whatever the archive holds, the input file is
/// not changed and an opened package lies inside its private extraction folder.
pub fn zip_package(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.zip");
    std::fs::write(&path, data).unwrap();
    match Package::open(&path) {
        Ok(package) => {
            assert!(package.is_zip());
            let root = package.root().to_path_buf();
            assert!(package.model_path().starts_with(&root));
            if let Some(weight) = package.weight_file() {
                assert!(weight.starts_with(&root));
            }
            drop(package);
            assert!(!root.exists(), "the extracted copy outlived the package");
        }
        Err(e) => assert_one_line(&e),
    }
    assert_eq!(std::fs::read(&path).unwrap(), data, "the archive changed");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("in.zip")],
        "files appeared beside the archive"
    );
}

/// `kernels` target: every `prune` kernel that has a SIMD path or writes through raw pointers
/// (keep mask, compaction, bracket count, n:m ranking, block norms), run on both paths — the
/// portable code (`None`) and the SIMD code (its token, where this CPU has the features) — on
/// vectors sized exactly to the input, so that AddressSanitizer sees any access past them. The
/// results must be the same bytes, and the portable ones what the rule says.
///
/// Input: 12 parameter bytes (missing ones are zero), then the payload, read as u8, u16, u32 and
/// u64 elements (little endian; a ragged end is dropped) and as mask bytes.
pub fn kernels(data: &[u8]) {
    use mlprune::prune::kernel_paths::*;

    let mut p = [0u8; 12];
    let split = data.len().min(p.len());
    p[..split].copy_from_slice(&data[..split]);
    let payload = &data[split..];
    let u16s: Vec<u16> = payload
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let u32s: Vec<u32> = payload
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let u64s: Vec<u64> = payload
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let f16s: Vec<half::f16> = u16s.iter().map(|&b| half::f16::from_bits(b)).collect();
    let f32s: Vec<f32> = u32s.iter().map(|&b| f32::from_bits(b)).collect();
    // The mask: the payload backwards, so that mask and values differ.
    let mask: Vec<u8> = payload.iter().rev().copied().collect();

    // Keep mask: any cut for the paths, cuts up to infinity's key for the rule.
    let cut16 = u16::from_le_bytes([p[0], p[1]]) & 0x7fff;
    let portable = keep_mask_u16(None, &u16s, cut16);
    if cut16 <= 0x7c00 {
        let mut rule = vec![0u8; u16s.len().div_ceil(8)];
        let kept = keep_mask_generic(&f16s, Some(cut16), &mut rule);
        assert_eq!(
            portable,
            (rule, kept),
            "fp16 keep mask against the rule, cut {cut16:#x}"
        );
    }
    if let Some(token) = Avx2Popcnt::detect() {
        assert_eq!(
            keep_mask_u16(Some(token), &u16s, cut16),
            portable,
            "fp16 keep mask, cut {cut16:#x}"
        );
    }
    let cut32 = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
    let portable = keep_mask_u32(None, &u32s, cut32);
    if cut32 <= 0x7f80_0000 {
        let mut rule = vec![0u8; u32s.len().div_ceil(8)];
        let kept = keep_mask_generic(&f32s, Some(cut32), &mut rule);
        assert_eq!(
            portable,
            (rule, kept),
            "fp32 keep mask against the rule, cut {cut32:#x}"
        );
    }
    if let Some(token) = Avx2Popcnt::detect() {
        assert_eq!(
            keep_mask_u32(Some(token), &u32s, cut32),
            portable,
            "fp32 keep mask, cut {cut32:#x}"
        );
    }

    // Compaction, every element width, both paths.
    for simd in [None, Ssse3Popcnt::detect()] {
        compaction(simd, payload, &mask);
        compaction(simd, &u16s, &mask);
        compaction(simd, &u32s, &mask);
        compaction(simd, &u64s, &mask);
    }

    // Bracket count: 16-bit keys (the AVX2 mask tally) and 8-bit keys; a bracket of up to 256
    // keys from the parameters.
    let lo = u16::from_le_bytes([p[4], p[5]]);
    let hi = lo.saturating_add(u16::from(p[6]));
    let portable = bracket_tally(None, &u16s, lo, hi);
    assert_eq!(portable.below, u16s.iter().filter(|&&k| k < lo).count() as u64);
    assert_eq!(portable.above, u16s.iter().filter(|&&k| k > hi).count() as u64);
    assert_eq!(portable.max, u16s.iter().copied().max());
    if let Some(token) = Avx2PopcntBmi1::detect() {
        assert_eq!(
            bracket_tally(Some(token), &u16s, lo, hi),
            portable,
            "u16 bracket {lo}..={hi}"
        );
    }
    let (lo, hi) = (p[4], p[4].saturating_add(p[6]));
    let portable = bracket_tally(None, payload, lo, hi);
    assert_eq!(portable.below, payload.iter().filter(|&&k| k < lo).count() as u64);
    if let Some(token) = Avx2PopcntBmi1::detect() {
        assert_eq!(
            bracket_tally(Some(token), payload, lo, hi),
            portable,
            "u8 bracket {lo}..={hi}"
        );
    }

    // n:m ranking of consecutive groups: m = 2 and 4 (the AVX2 build) most of the time.
    let m = [2, 4, 2, 4, 3, 8, 16, 1][usize::from(p[7] % 8)];
    let n = usize::from(p[7] / 8) % (m + 1);
    let portable = nm_flags(None, &f16s, n, m);
    for group in portable.chunks_exact(m) {
        assert_eq!(
            group.iter().filter(|&&f| f).count(),
            n,
            "{n}:{m} prunes n per group"
        );
    }
    if let Some(token) = Avx2::detect() {
        assert_eq!(nm_flags(Some(token), &f16s, n, m), portable, "fp16 {n}:{m}");
        assert_eq!(
            nm_flags(Some(token), &f32s, n, m),
            nm_flags(None, &f32s, n, m),
            "fp32 {n}:{m}"
        );
    }

    // fp16 block norms: pairwise sums per block, sequential sums down rows, and the row step.
    // A NaN norm's sign and payload depend on which NaN operand an addition passes on, which the
    // two builds need not agree on; every NaN is one key to the decisions, so NaNs compare equal.
    let bits = |v: &[half::f16]| {
        v.iter()
            .map(|x| if x.is_nan() { 0x7e00 } else { x.to_bits() })
            .collect::<Vec<_>>()
    };
    let block_size = 1 + usize::from(p[8] % 64);
    let portable = pairwise_norms_f16(None, &f16s, block_size);
    assert_eq!(portable.len(), f16s.len().div_ceil(block_size));
    if let Some(token) = Avx2::detect() {
        assert_eq!(
            bits(&pairwise_norms_f16(Some(token), &f16s, block_size)),
            bits(&portable),
            "pairwise {block_size}"
        );
    }
    let inner = (1 + usize::from(p[9] % 64)).min(f16s.len());
    if inner > 0 {
        if let Some(token) = Avx2F16c::detect() {
            let simd = sequential_norms_f16(Some(token), &f16s, inner);
            assert_eq!(
                bits(&simd),
                bits(&sequential_norms_f16(None, &f16s, inner)),
                "sequential {inner}"
            );
        }
    }
    if let Some(token) = Avx2F16c::detect() {
        // The accumulators: fp16 sums of squares (non-negative), from the payload's first half.
        let len = f16s.len() / 2;
        let acc: Vec<f32> = f16s[..len]
            .iter()
            .map(|x| half::f16::from_bits(x.to_bits() & 0x7fff).to_f32())
            .collect();
        let row = &f16s[len..];
        let (mut simd, mut portable) = (acc.clone(), acc);
        let first = p[10] & 1 != 0;
        accumulate_squares(Some(token), &mut simd, row, first);
        accumulate_squares(None, &mut portable, row, first);
        for (s, q) in simd.iter().zip(&portable) {
            // Exactly the same, or NaN on both (sign and payload as above).
            let same = s.to_bits() == q.to_bits() || (s.is_nan() && q.is_nan());
            assert!(same, "row step: {:#010x} vs {:#010x}", s.to_bits(), q.to_bits());
        }
    }
}

/// Every compaction of `values` by `mask` on one path, each into a vector of exactly the size
/// it may touch, against the kept elements in order.
fn compaction<T: bytemuck::Pod + PartialEq + std::fmt::Debug>(
    simd: Option<mlprune::prune::kernel_paths::Ssse3Popcnt>,
    values: &[T],
    mask: &[u8],
) {
    use mlprune::prune::kernel_paths::*;

    let n = values.len();
    let kept_of = |len: usize| -> Vec<T> {
        (0..len)
            .filter(|&i| mask[i / 8] & (1 << (i % 8)) != 0)
            .map(|i| values[i])
            .collect()
    };
    let groups = &mask[..n / 8];
    let want = kept_of(groups.len() * 8);
    let mut in_place = values.to_vec();
    let kept = compact_in_place(simd, &mut in_place, groups);
    assert_eq!(&in_place[..kept], &want[..], "in place, {simd:?}");
    assert_eq!(
        &in_place[groups.len() * 8..],
        &values[groups.len() * 8..],
        "the tail was touched"
    );
    let mut into = vec![T::zeroed(); groups.len() * 8];
    assert_eq!(compact_into(simd, values, &mut into, groups), kept);
    assert_eq!(&into[..kept], &want[..], "into, {simd:?}");
    assert_eq!(
        compact_exact_vec(simd, values, &mask[..n.div_ceil(8)]),
        kept_of(n),
        "exact, {simd:?}"
    );
}
