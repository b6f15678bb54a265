//! One test, two devices: every case is written once and run on every available backend — the CPU
//! reference always, the GPU when an adapter exists (software adapters such as lavapipe included),
//! once with the adapter's chunk size and once with a tiny one that forces chunking. Results must
//! be the same bytes.
//!
//! Without an adapter the GPU half prints "SKIPPING GPU tests: no GPU adapter" to the test run's
//! visible stderr and passes, unless `MLPRUNE_REQUIRE_GPU=1` is set (CI), where it fails.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use half::f16;
use mlprune::config::OpConfig;
use mlprune::dispatch::same_bytes;
use mlprune::dispatch::{Backend, CpuBackend, KernelResult, Order, TensorInput};
use mlprune::engine::DevicePolicy;
use mlprune::gpu::{GpuBackend, GpuContext, MAX_CHUNK_BYTES};
use mlprune::tensor::TensorData;

/// Chunk size of the chunking backend: 1 KiB = 256 fp32 / 512 fp16 elements.
const TINY_CHUNK_BYTES: u64 = 1024;

struct Gpus {
    normal: GpuBackend,
    chunked: GpuBackend,
}

fn gpus() -> Option<&'static Gpus> {
    static GPUS: OnceLock<Option<Gpus>> = OnceLock::new();
    GPUS.get_or_init(|| {
        // Mesa's Vulkan drivers probe for a Wayland display and print "error: XDG_RUNTIME_DIR is
        // invalid or not set" into the test log when it is unset (CI, containers). The CLI gives
        // the probe a folder; so does this, before the first driver loads in this process (every
        // GPU test comes through here first).
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
        }
        let open = || GpuContext::new(DevicePolicy::Gpu).expect("opening the GPU adapter failed");
        let normal = open()?;
        let mut chunked = open()?;
        chunked.set_max_chunk_bytes(TINY_CHUNK_BYTES);
        visible(&format!("GPU tests run on {}", normal.describe()));
        Some(Gpus {
            normal: GpuBackend::new(normal),
            chunked: GpuBackend::new(chunked),
        })
    })
    .as_ref()
}

/// The GPU backends, or `None` after the skip notice (a failure under MLPRUNE_REQUIRE_GPU=1).
fn gpu_or_skip() -> Option<&'static Gpus> {
    let gpus = gpus();
    if gpus.is_none() {
        assert!(
            std::env::var("MLPRUNE_REQUIRE_GPU").as_deref() != Ok("1"),
            "MLPRUNE_REQUIRE_GPU=1 but no GPU adapter was found (install mesa-vulkan-drivers for lavapipe)"
        );
        visible("SKIPPING GPU tests: no GPU adapter (install mesa-vulkan-drivers for lavapipe, or set MLPRUNE_REQUIRE_GPU=1 to make this a failure)");
    }
    gpus
}

/// Prints a line once per test binary where people look: straight to the process's stderr, which
/// libtest does not capture (`eprintln!` output of a passing test is swallowed).
fn visible(line: &str) {
    use std::io::Write;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    });
}

/// Whether `backend` runs `config` on `data` with its own kernels, asked as the engine asks: the
/// work order decided once, then [`Backend::covers`].
fn covers(backend: &GpuBackend, config: &OpConfig, data: &TensorData, shape: &[u64]) -> bool {
    Order::Config(config)
        .decide(data.dtype(), shape, data.len(), "t")
        .is_ok_and(|work| backend.covers(&work, &TensorInput::borrowing(data)))
}

/// Runs one case on every backend and compares with the CPU byte for byte. Returns the CPU result.
///
/// `GpuBackend::run` quietly runs the CPU kernel for cases outside the GPU's scope, so a case could
/// compare the CPU with itself. The full-size GPU backend must therefore run every case on the GPU,
/// except those `cpu_by_design` lists, and must not run those (the list is exactly its scope). The
/// chunking backend (1 KiB chunks) may also decline a case whose n:m group band or block flags do
/// not fit one chunk; `tensors_larger_than_one_chunk_match` checks it does run its cases.
fn check(config: &OpConfig, data: &TensorData, shape: &[u64], label: &str) -> KernelResult {
    let reference = CpuBackend.run(config, data, shape, label);
    if let Some(g) = gpu_or_skip() {
        let on_gpu = covers(&g.normal, config, data, shape);
        match cpu_by_design(config, data, shape) {
            Some(reason) => assert!(
                !on_gpu,
                "{label}: listed as CPU by design ({reason}) but the GPU runs it"
            ),
            None => assert!(
                on_gpu,
                "{label}: {config:?} fell back to the CPU kernel on the GPU backend"
            ),
        }
        if covers(&g.chunked, config, data, shape) {
            assert!(
                on_gpu,
                "{label}: the chunking backend runs a case the full-size one declines"
            );
        }
        // Both ways the engine hands values over: borrowed (a mapped tensor; `Backend::run`) and
        // owned (a tensor read into memory), each through the one decided work order.
        let owned = |backend: &GpuBackend| {
            let work = Order::Config(config).decide(data.dtype(), shape, data.len(), label)?;
            backend.execute(&work, TensorInput::Owned(data.clone()), label)
        };
        for (name, backend) in [("gpu", &g.normal), ("gpu-chunked", &g.chunked)] {
            for got in [backend.run(config, data, shape, label), owned(backend)] {
                match (&reference, &got) {
                    (Ok(want), Ok(got)) => {
                        assert!(
                            same_bytes(want, got),
                            "{label} on {name}: {config:?}\n cpu: {want:?}\n gpu: {got:?}"
                        )
                    }
                    (Err(want), Err(got)) => {
                        assert_eq!(want.to_string(), got.to_string(), "{label} on {name}")
                    }
                    _ => panic!("{label} on {name}: cpu {reference:?} vs {got:?}"),
                }
            }
        }
    }
    reference.unwrap_or_else(|e| KernelResult::Skipped(format!("error: {e}")))
}

/// Why the GPU backend leaves a case to the CPU kernel (see `src/gpu/backend.rs`, `chunk_for`), or
/// `None` when the case must run on the GPU.
fn cpu_by_design(config: &OpConfig, data: &TensorData, shape: &[u64]) -> Option<&'static str> {
    let len = match data {
        TensorData::F16(w) => w.len(),
        TensorData::F32(w) => w.len(),
        _ => return Some("integer weights: the GPU kernels take fp16 and fp32"),
    };
    if len == 0 {
        return Some("empty tensor");
    }
    let structural = |size: u64, dim: Option<u32>, default_dim: u32| {
        let channel = shape
            .get(dim.unwrap_or(default_dim) as usize)
            .copied()
            .unwrap_or(0);
        if !(2..=5).contains(&shape.len()) {
            Some("rank outside 2..=5: coremltools raises, the CPU kernel reports it")
        } else if size * 2 > channel {
            Some("group or block larger than half the channels: the CPU kernel skips the tensor")
        } else {
            None
        }
    };
    match *config {
        OpConfig::Magnitude {
            n_m_ratio: Some((n, m)),
            dim,
            ..
        } => {
            if m == 0 || n > m {
                Some("invalid n:m: the CPU kernel reports it")
            } else if m > 16 {
                Some("m > 16: the GPU ranks groups of at most 16")
            } else {
                structural(m, dim, 1)
            }
        }
        OpConfig::Magnitude {
            block_size: Some(b),
            dim,
            ..
        } => {
            if b == 0 {
                Some("block size 0: the CPU kernel reports it")
            } else {
                structural(b, dim, 0)
            }
        }
        _ => None,
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Roughly normal values of scale 1 (sum of uniforms).
    fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }
}

#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    /// Few distinct magnitudes: many ties.
    Ties,
    /// Random values sprinkled with NaN (several payloads), ±inf, −0.0, +0.0 and subnormals.
    Specials,
}

fn values_f32(n: usize, fill: Fill, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..n)
        .map(|_| match fill {
            Fill::Random => rng.normal(),
            Fill::Ties => [0.0, 0.5, -0.5, 1.0, -1.0, 0.25][(rng.next() % 6) as usize],
            Fill::Specials => match rng.next() % 12 {
                0 => f32::from_bits(0x7fc0_0000),
                1 => f32::from_bits(0xff80_0001),
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                4 => -0.0,
                5 => 0.0,
                6 => f32::from_bits(1 + (rng.next() % 1000) as u32),
                _ => rng.normal(),
            },
        })
        .collect()
}

fn values_f16(n: usize, fill: Fill, seed: u64) -> Vec<f16> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    values_f32(n, fill, seed)
        .into_iter()
        .map(|v| match fill {
            Fill::Specials if rng.next().is_multiple_of(9) => {
                f16::from_bits([0x7c01, 0xfe00, 0x0001, 0x8001][(rng.next() % 4) as usize])
            }
            // Large magnitudes make fp16 block norms overflow to inf, as numpy's do.
            Fill::Specials if rng.next().is_multiple_of(13) => f16::from_f32(v * 400.0),
            _ => f16::from_f32(v),
        })
        .collect()
}

fn both_dtypes(n: usize, fill: Fill, seed: u64) -> [TensorData; 2] {
    [
        TensorData::F16(values_f16(n, fill, seed)),
        TensorData::F32(values_f32(n, fill, seed)),
    ]
}

fn threshold(threshold: f64, minimum: f64) -> OpConfig {
    OpConfig::Threshold {
        threshold,
        minimum_sparsity_percentile: minimum,
        weight_threshold: None,
    }
}

fn magnitude(s: f64) -> OpConfig {
    OpConfig::Magnitude {
        target_sparsity: Some(s),
        block_size: None,
        n_m_ratio: None,
        dim: None,
        weight_threshold: None,
    }
}

fn block(s: f64, b: u64, dim: u32) -> OpConfig {
    OpConfig::Magnitude {
        target_sparsity: Some(s),
        block_size: Some(b),
        n_m_ratio: None,
        dim: Some(dim),
        weight_threshold: None,
    }
}

fn n_m(n: u64, m: u64, dim: u32) -> OpConfig {
    OpConfig::Magnitude {
        target_sparsity: None,
        block_size: None,
        n_m_ratio: Some((n, m)),
        dim: Some(dim),
        weight_threshold: None,
    }
}

const SHAPES: &[&[u64]] = &[
    &[37, 3],
    &[64, 64],
    &[5, 7, 3, 3],
    &[33, 130],
    &[300, 17],
    &[6, 2],
    &[12, 10, 1, 1],
];
const FILLS: [Fill; 3] = [Fill::Random, Fill::Ties, Fill::Specials];

fn for_each_tensor(mut f: impl FnMut(&TensorData, &[u64], String)) {
    for (si, shape) in SHAPES.iter().enumerate() {
        let n = shape.iter().product::<u64>() as usize;
        for (fi, fill) in FILLS.iter().enumerate() {
            for data in both_dtypes(n, *fill, (si * 10 + fi) as u64) {
                let label = format!("{:?} {shape:?} {fill:?}", data.dtype());
                f(&data, shape, label);
            }
        }
    }
}

#[test]
fn threshold_matches_on_every_device() {
    for_each_tensor(|data, shape, label| {
        for (t, min) in [
            (0.3, 0.0),
            (0.09997, 0.0),
            (1.0, 0.99),
            (0.0, 0.0),
            (f64::INFINITY, 0.5),
            (-1.0, 0.0),
            (f64::NAN, 0.0),
        ] {
            check(
                &threshold(t, min),
                data,
                shape,
                &format!("{label} threshold {t} min {min}"),
            );
        }
    });
}

#[test]
fn magnitude_matches_on_every_device() {
    for_each_tensor(|data, shape, label| {
        for s in [0.0, 0.1, 0.3, 0.5, 0.75, 0.999, 1.0, 1.5] {
            check(&magnitude(s), data, shape, &format!("{label} magnitude {s}"));
        }
    });
}

#[test]
fn block_sparsity_matches_on_every_device() {
    for_each_tensor(|data, shape, label| {
        for (s, b, dim) in [
            (0.5, 2, 0),
            (0.3, 3, 1),
            (0.75, 1, 0),
            (0.5, 4, 1),
            (1.0, 2, 0),
            (0.0, 2, 1),
            (0.5, 0, 0),
            (0.5, 64, 0),
        ] {
            check(
                &block(s, b, dim),
                data,
                shape,
                &format!("{label} block {s} b{b} dim{dim}"),
            );
        }
    });
}

#[test]
fn n_m_matches_on_every_device() {
    for_each_tensor(|data, shape, label| {
        for (n, m, dim) in [
            (1, 2, 1),
            (2, 4, 0),
            (3, 8, 1),
            (0, 4, 0),
            (4, 4, 1),
            (5, 16, 0),
            (3, 5, 0),
            (2, 17, 0),
            (5, 3, 1),
        ] {
            check(
                &n_m(n, m, dim),
                data,
                shape,
                &format!("{label} n:m {n}:{m} dim{dim}"),
            );
        }
    });
}

#[test]
fn integer_weights_and_empty_tensors_fall_back_to_the_cpu_kernels() {
    let ints: Vec<i8> = (0..200).map(|i| (i * 37 % 256) as u8 as i8).collect();
    let cases = [
        (TensorData::I8(ints.clone()), vec![20u64, 10]),
        (TensorData::F32(Vec::new()), vec![0, 4]),
    ];
    for (data, shape) in &cases {
        for config in [magnitude(0.5), threshold(0.5, 0.0), n_m(1, 2, 1)] {
            check(&config, data, shape, &format!("{:?} {shape:?}", data.dtype()));
        }
    }
    if let Some(g) = gpus() {
        assert!(!covers(&g.normal, &magnitude(0.5), &cases[0].0, &cases[0].1));
        assert!(!covers(
            &g.normal,
            &n_m(2, 17, 0),
            &TensorData::F32(vec![1.0; 68]),
            &[34, 2]
        ));
        assert!(covers(
            &g.normal,
            &n_m(2, 16, 0),
            &TensorData::F32(vec![1.0; 68]),
            &[34, 2]
        ));
    }
}

/// Tensors many chunks long (the chunked backend sees 1 KiB at a time), with odd sizes so the last
/// chunk is partial, and fp32 percentiles whose two order statistics fall in different bins.
#[test]
fn tensors_larger_than_one_chunk_match() {
    // [1000, 3]: 8 divides the 1000 channels, so 3:8 groups on dim 0 chunk in bands of 8 rows.
    let shapes: &[&[u64]] = &[&[1001, 7], &[96, 64, 3], &[4099, 2], &[1000, 3]];
    // Per config of the list below: whether some shape, fill and dtype ran in chunks on the GPU.
    let mut chunked = [false; 8];
    for shape in shapes {
        let n = shape.iter().product::<u64>() as usize;
        for fill in FILLS {
            for data in both_dtypes(n, fill, n as u64) {
                let label = format!("{:?} {shape:?} {fill:?}", data.dtype());
                for (ci, config) in [
                    magnitude(0.5),
                    magnitude(0.37),
                    threshold(0.4, 0.0),
                    block(0.5, 2, 0),
                    block(0.4, 3, 1),
                    n_m(2, 4, 1),
                    n_m(3, 8, 0),
                    n_m(1, 3, 1),
                ]
                .into_iter()
                .enumerate()
                {
                    if let Some(g) = gpus().filter(|_| cpu_by_design(&config, &data, shape).is_none()) {
                        let fits = group_band_fits_tiny_chunk(&config, &data, shape);
                        assert_eq!(
                            covers(&g.chunked, &config, &data, shape),
                            fits,
                            "{label} {config:?}: the chunking backend runs exactly the cases whose group band fits a chunk"
                        );
                        chunked[ci] |= fits;
                    }
                    check(&config, &data, shape, &format!("{label} {config:?}"));
                }
            }
        }
    }
    if gpus().is_some() {
        assert!(
            chunked.iter().all(|&c| c),
            "configs that never ran in chunks: {chunked:?}"
        );
    }
}

/// Whatever the adapter's binding limit, the default backend sees at most `MAX_CHUNK_BYTES` of a
/// tensor at a time (its buffers, and on lavapipe its memory, stay bounded); a tensor of two full
/// chunks and a partial third, in every mode, comes out byte for byte as on the CPU.
#[test]
fn tensors_larger_than_the_default_chunk_match() {
    let Some(g) = gpu_or_skip() else { return };
    let chunk = g.normal.context().chunk_bytes();
    assert!(chunk <= MAX_CHUNK_BYTES, "default chunk {chunk} bytes");
    let cols = 1024u64;
    let rows = (2 * chunk / 2).div_ceil(cols) + 8; // fp16: past two whole chunks
    let shape = [rows, cols];
    let n = (rows * cols) as usize;
    assert!(n as u64 * 2 > 2 * chunk);
    for fill in [Fill::Random, Fill::Ties] {
        let data = TensorData::F16(values_f16(n, fill, 11));
        for config in [
            magnitude(0.5),
            threshold(0.4, 0.0),
            n_m(2, 4, 1),
            block(0.5, 2, 0),
        ] {
            let label = format!("fp16 {shape:?} {fill:?} {config:?}");
            assert!(
                covers(&g.normal, &config, &data, &shape),
                "{label}: runs on the GPU"
            );
            let want = CpuBackend.run(&config, &data, &shape, &label).unwrap();
            let got = g.normal.run(&config, &data, &shape, &label).unwrap();
            assert!(same_bytes(&want, &got), "{label}: GPU differs from CPU");
        }
    }
}

/// A tensor is uploaded once, whatever the number of passes over it: a magnitude cut reads it in
/// one (fp16) or two (fp32) histogram passes and then the mask pass, in many chunks on the
/// chunking backend, where the whole tensor stays on the device between the passes.
#[test]
fn every_tensor_is_uploaded_once() {
    if gpu_or_skip().is_none() {
        return;
    }
    // Backends of its own: the shared ones count other tests' uploads too.
    let open = || GpuContext::new(DevicePolicy::Gpu).unwrap().unwrap();
    let mut chunked = open();
    chunked.set_max_chunk_bytes(TINY_CHUNK_BYTES);
    let (normal, chunked) = (GpuBackend::new(open()), GpuBackend::new(chunked));
    let shape = [1001u64, 7];
    let n = 1001 * 7;
    for data in both_dtypes(n, Fill::Random, 5) {
        let configs = [
            magnitude(0.5),
            magnitude(0.37),
            threshold(0.4, 0.0),
            n_m(2, 4, 1),
            // Norm histograms (fp32: two), flags and mask, all on the device.
            block(0.5, 2, 1),
        ];
        for config in configs {
            for (name, backend) in [("gpu", &normal), ("gpu-chunked", &chunked)] {
                let label = format!("{:?} {config:?} on {name}", data.dtype());
                if !covers(backend, &config, &data, &shape) {
                    continue;
                }
                let before = backend.context().uploaded_bytes();
                backend.run(&config, &data, &shape, &label).unwrap();
                let uploaded = backend.context().uploaded_bytes() - before;
                let tensor = data.to_le_bytes().len() as u64;
                assert_eq!(uploaded, tensor.next_multiple_of(4), "{label}: bytes uploaded");
            }
        }
    }
}

/// Whether a case fits the chunking backend's `TINY_CHUNK_BYTES`. n:m: chunks hold whole group
/// bands, m channels (or, when m does not divide the channel count, a whole channel run) times the
/// inner size, and a chunk is a multiple of both the band and 32 elements. Block: the one-bit-per-
/// block flags must fit one chunk. Other modes always fit.
fn group_band_fits_tiny_chunk(config: &OpConfig, data: &TensorData, shape: &[u64]) -> bool {
    let (m, dim) = match *config {
        OpConfig::Magnitude {
            n_m_ratio: Some((_, m)),
            dim,
            ..
        } => (m, dim.unwrap_or(1) as usize),
        OpConfig::Magnitude {
            block_size: Some(b),
            dim,
            ..
        } => {
            let dim = dim.unwrap_or(0) as usize;
            let outer = shape[..dim].iter().product::<u64>();
            let inner = shape[dim + 1..].iter().product::<u64>();
            let blocks = outer * shape[dim].div_ceil(b) * inner;
            return blocks.div_ceil(32) * 4 <= TINY_CHUNK_BYTES;
        }
        _ => return true,
    };
    let (channel, inner) = (shape[dim], shape[dim + 1..].iter().product::<u64>());
    let band = if channel % m == 0 {
        m * inner
    } else {
        channel * inner
    };
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let unit = 32 / gcd(32, band) * band;
    let elem_bytes = if matches!(data, TensorData::F16(_)) { 2 } else { 4 };
    unit * elem_bytes <= TINY_CHUNK_BYTES
}

#[test]
fn fp16_with_all_ties_and_every_nan_rule() {
    // Every element equal: the percentile lands on the tie; n:m prunes the first n of each group.
    let ties = TensorData::F16(vec![f16::from_f32(0.5); 24 * 8]);
    check(&magnitude(0.5), &ties, &[24, 8], "all ties magnitude");
    check(&n_m(2, 4, 1), &ties, &[24, 8], "all ties n:m");
    // NaN with payloads, ±inf and −0.0 in every position of an n:m group.
    let specials: Vec<f16> = [0x7c01u16, 0xfc00, 0x7c00, 0x8000, 0x0000, 0x3c00, 0xbc00, 0x7e00]
        .iter()
        .cycle()
        .take(64)
        .map(|&b| f16::from_bits(b))
        .collect();
    let data = TensorData::F16(specials);
    for config in [
        n_m(2, 4, 1),
        n_m(4, 4, 1),
        magnitude(1.0),
        magnitude(0.5),
        threshold(f64::INFINITY, 0.0),
        block(0.5, 2, 1),
    ] {
        let result = check(&config, &data, &[8, 8], &format!("specials {config:?}"));
        assert!(matches!(result, KernelResult::Pruned(_)), "{config:?}");
    }
}

// ----- end to end ----------------------------------------------------------------------------------

fn mlprune(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlprune"))
        .args(args)
        .output()
        .expect("running mlprune")
}

/// Every file of a package folder, by relative path.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading the output package") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("inside the package")
                    .display()
                    .to_string();
                out.push((rel, std::fs::read(&path).expect("reading an output file")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn prune_on_the_gpu_writes_the_same_package_as_on_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = [
        "tests/fixtures/linear_fp16_ios16.mlpackage",
        "tests/fixtures/linear_fp32_ios17.mlpackage",
        "tests/fixtures/conv_fp16_ios18.mlpackage",
        "tests/fixtures/conv_fp32_ios16.mlpackage",
        "examples/sample/sample.mlpackage",
    ];
    let modes: [&[&str]; 4] = [
        &["--sparsity", "0.5"],
        &["--threshold", "0.02", "--min-sparsity", "0.0"],
        &["--sparsity", "0.5", "--block-size", "2"],
        &["--n-m", "2:4"],
    ];
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut gpu_tensors = 0;
    for model in models {
        for mode in modes {
            gpu_tensors += prune_on_both_devices(&root.join(model), mode, tmp.path(), |t, device| {
                assert_eq!(t["device"], device, "{model} {mode:?}: {t}");
            });
        }
    }
    assert!(gpu_tensors > 0, "no tensor was pruned on the GPU");
}

#[test]
fn sample_config_prunes_identically_on_gpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let input = root.join("examples/sample/sample.mlpackage");
    let config = root.join("examples/sample/config.yaml");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut outputs = Vec::new();
    for device in ["cpu", "gpu"] {
        let out = tmp.path().join(format!("{device}.mlpackage"));
        let report = tmp.path().join(format!("{device}.json"));
        let args = [
            "prune",
            input.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
            "--device",
            device,
            "--gpu-min-elements",
            "0",
            "--report",
            report.to_str().expect("utf-8"),
        ];
        let run = mlprune(&args);
        assert!(
            run.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
        let ran_on = |d: &str| {
            report
                .as_array()
                .expect("array")
                .iter()
                .filter(|t| t["device"] == d)
                .count()
        };
        if device == "gpu" {
            assert!(
                ran_on("gpu") > 0,
                "no tensor of the sample ran on the GPU: {report}"
            );
        } else {
            assert_eq!(ran_on("gpu"), 0);
        }
        outputs.push(files(&out));
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// `--device auto` races the first tensor both devices can run, keeps the CPU's bytes, and sends
/// every later tensor to the winner; the notice names the tensor and both times. Run on any adapter
/// through the software hook (on lavapipe the CPU normally wins, but either outcome is checked).
#[test]
fn auto_races_the_first_large_tensor_and_keeps_the_winner() {
    if gpu_or_skip().is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let input = root.join("examples/sample/sample.mlpackage");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut outputs = Vec::new();
    let mut race_notice = String::new();
    for device in ["cpu", "auto"] {
        let out = tmp.path().join(format!("{device}.mlpackage"));
        let report = tmp.path().join(format!("{device}.json"));
        let run = Command::new(env!("CARGO_BIN_EXE_mlprune"))
            .args([
                "prune",
                input.to_str().expect("utf-8"),
                out.to_str().expect("utf-8"),
            ])
            .args(["--sparsity", "0.5", "--weight-threshold", "0", "--device", device])
            .args([
                "--gpu-min-elements",
                "0",
                "--report",
                report.to_str().expect("utf-8"),
            ])
            .env(mlprune::gpu::AUTO_SOFTWARE_ENV, "1")
            .output()
            .expect("running mlprune");
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{device}: {stderr}");
        outputs.push(files(&out));
        if device == "cpu" {
            assert!(!stderr.contains("raced"), "{stderr}");
            continue;
        }
        let races: Vec<&str> = stderr.lines().filter(|l| l.contains("raced tensor")).collect();
        assert_eq!(races.len(), 1, "exactly one race: {stderr}");
        race_notice = races[0].to_string();
        let winner = if race_notice.ends_with("the gpu prunes the rest") {
            "gpu"
        } else {
            "cpu"
        };
        assert!(
            race_notice.ends_with(&format!("the {winner} prunes the rest")),
            "{race_notice}"
        );
        assert!(
            race_notice.contains(" ms, gpu "),
            "both times are given: {race_notice}"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
        let pruned: Vec<&serde_json::Value> = report
            .as_array()
            .expect("array")
            .iter()
            .filter(|t| t["pruned"] == true)
            .collect();
        assert!(pruned.len() >= 2, "the sample has several tensors to prune");
        let raced = pruned
            .iter()
            .position(|t| race_notice.contains(&format!("'{}'", t["name"].as_str().unwrap())));
        let raced = raced.expect("the raced tensor is in the report");
        assert_eq!(pruned[raced]["device"], "cpu", "the race keeps the CPU's result");
        // The report says why each device was chosen.
        let reason = |t: &serde_json::Value| t["device_reason"].as_str().unwrap_or_default().to_string();
        assert!(
            reason(pruned[raced]).starts_with("--device auto: raced here on both devices (cpu "),
            "{}",
            pruned[raced]
        );
        for t in &pruned[raced + 1..] {
            assert_eq!(
                t["device"], winner,
                "after the race every tensor goes to the winner: {t}"
            );
            let why = reason(t);
            assert!(
                why.starts_with(&format!("--device auto: the {winner} won the race (on tensor '"))
                    || why == "--device auto: the GPU kernels do not cover this case",
                "{t}"
            );
        }
    }
    assert_eq!(
        outputs[0], outputs[1],
        "auto writes the same package as cpu ({race_notice})"
    );
}

// ----- --global-sparsity ---------------------------------------------------------------------------

/// The global cut's work order ("every magnitude key <= the cut becomes 0"), in each dtype's key
/// space, on both GPU backends against the CPU kernel: cuts between fp16 values, at ±0, inf and
/// NaN, and none (k = 0).
#[test]
fn global_cut_matches_on_every_device() {
    use mlprune::dispatch::execute_on_cpu;
    use mlprune::global_sparsity::{common_key, GlobalCut, NAN_KEY};
    let Some(g) = gpu_or_skip() else {
        return;
    };
    let cuts = [
        None,
        Some(0),
        Some(common_key(0.1)), // between two fp16 values
        Some(common_key(0.5)), // a tie in the Ties fill
        Some(common_key(1.7)),
        Some(common_key(f32::INFINITY)),
        Some(NAN_KEY),
    ];
    for_each_tensor(|data, shape, label| {
        for key in cuts {
            let work = Order::Cut(GlobalCut { key })
                .decide(data.dtype(), shape, data.len(), &label)
                .expect("fp16 and fp32 take a cut");
            let view = data.as_view().expect("the tensors are fp16 and fp32");
            let input = || TensorInput::View { view, out: None };
            assert!(g.normal.covers(&work, &input()), "{label}: not on the GPU");
            let cpu = execute_on_cpu(&work, TensorInput::Owned(data.clone()), &label).expect("cpu");
            for (which, gpu) in [("gpu", &g.normal), ("chunked gpu", &g.chunked)] {
                let on_gpu = gpu.execute(&work, input(), &label).expect("gpu");
                assert!(
                    same_bytes(&on_gpu, &cpu),
                    "{label} {shape:?} cut {key:?}: {which} differs"
                );
            }
        }
    });
}

#[test]
fn global_sparsity_prunes_identically_on_gpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = [
        "tests/fixtures/linear_fp16_ios16.mlpackage",
        "tests/fixtures/linear_fp32_ios17.mlpackage",
        "tests/fixtures/conv_fp16_ios18.mlpackage",
        "examples/sample/sample.mlpackage",
    ];
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut gpu_tensors = 0;
    for model in models {
        for s in ["0", "0.37", "0.9", "1"] {
            let options = ["--global-sparsity", s];
            gpu_tensors += prune_on_both_devices(&root.join(model), &options, tmp.path(), |t, device| {
                assert_eq!(t["mode"], "global", "{model}: {t}");
                assert_eq!(t["device"], device, "{model} {s}: {t}");
            });
        }
    }
    assert!(gpu_tensors > 0, "no tensor was pruned on the GPU");
}

/// Prunes `input` with `options` (plus `--weight-threshold 0`, every tensor eligible for the GPU)
/// on `--device cpu` and on `--device gpu`, asserts that both succeed and write identical
/// packages, shows every pruned report entry to `check` with its device, and returns how many
/// tensors the GPU pruned.
fn prune_on_both_devices(
    input: &Path,
    options: &[&str],
    work: &Path,
    check: impl Fn(&serde_json::Value, &str),
) -> usize {
    let label = format!("{} {options:?}", input.display());
    let mut gpu_tensors = 0;
    let mut outputs = Vec::new();
    for device in ["cpu", "gpu"] {
        let run_dir = tempfile::tempdir_in(work).expect("temp dir");
        let out = run_dir.path().join("out.mlpackage");
        let report = run_dir.path().join("report.json");
        let mut args = vec![
            "prune",
            input.to_str().expect("utf-8 path"),
            out.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(options);
        args.extend_from_slice(&[
            "--weight-threshold",
            "0",
            "--device",
            device,
            "--gpu-min-elements",
            "0",
        ]);
        args.extend_from_slice(&["--report", report.to_str().expect("utf-8 path"), "--quiet"]);
        let run = mlprune(&args);
        assert!(
            run.status.success(),
            "{label} {device}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON");
        for t in report.as_array().expect("report array") {
            if t["pruned"] == true {
                check(t, device);
                gpu_tensors += usize::from(device == "gpu");
            }
        }
        outputs.push(files(&out));
    }
    assert_eq!(outputs[0], outputs[1], "{label}: cpu and gpu packages differ");
    gpu_tensors
}

/// Kernel timing counts every compute pass of a run: a magnitude cut of an fp16 tensor is one
/// histogram pass and one mask pass per chunk. Where the adapter has no timestamp queries, timing
/// does not start and nothing is measured.
#[test]
fn kernel_timing_covers_every_pass() {
    if gpu_or_skip().is_none() {
        return;
    }
    let mut ctx = GpuContext::new(DevicePolicy::Gpu).unwrap().unwrap();
    ctx.set_max_chunk_bytes(TINY_CHUNK_BYTES);
    let backend = GpuBackend::new(ctx);
    let n = 1001 * 7;
    let data = TensorData::F16(values_f16(n, Fill::Random, 3));
    let ctx = backend.context();
    if !ctx.start_kernel_timing().unwrap() {
        assert!(!ctx.has_timestamps());
        assert_eq!(ctx.finish_kernel_timing().unwrap(), None);
        visible("kernel timing: this adapter has no timestamp queries; pass counts not checked");
        return;
    }
    backend.run(&magnitude(0.5), &data, &[1001, 7], "w").unwrap();
    let time = ctx.finish_kernel_timing().unwrap().expect("timing was started");
    let chunks = (n as u64 * 2).div_ceil(TINY_CHUNK_BYTES) as u32;
    assert_eq!((time.passes, time.untimed), (2 * chunks, 0));
    assert!(time.seconds > 0.0 && time.seconds.is_finite(), "{time:?}");
    // Stopped: later runs are not timed.
    backend.run(&magnitude(0.5), &data, &[1001, 7], "w").unwrap();
    assert_eq!(ctx.finish_kernel_timing().unwrap(), None);
}

/// `mlprune bench` times kernels on the device's clock where it can, and measures the device's
/// own copy bandwidth in the same run as the ceiling for the kernels' GB/s.
#[test]
fn bench_splits_gpu_time_and_measures_a_copy_ceiling() {
    if gpu_or_skip().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = tmp.path().join("m.mlpackage");
    let made = mlprune(&[
        "generate",
        model.to_str().unwrap(),
        "--layers",
        "2",
        "--shape",
        "512x512",
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = mlprune::bench::default_config().unwrap();
    let report = mlprune::bench::bench(&model, &config, 1).unwrap();
    assert_eq!(report.rows.len(), 2);
    assert!(
        report.copy_gbps > 0.0 && report.copy_gbps.is_finite(),
        "{report:?}"
    );
    assert!(report.copy_bytes >= 64 << 20, "{report:?}");
    for r in &report.rows {
        assert!(r.identical && r.on_gpu, "{r:?}");
        match r.kernel_s {
            Some(k) => assert!(report.timestamps && k > 0.0 && k.is_finite(), "{r:?}"),
            None => assert!(!report.timestamps, "{r:?}: timestamps but no kernel time"),
        }
    }
    let text = mlprune::bench::render(&report);
    assert!(text.contains("device copy (buffer to buffer, 64 MiB)"), "{text}");
    assert!(text.contains("kernel GB/s"), "{text}");
}

/// A mapped tensor's kept values are collected into the buffer the engine passes back from the
/// writer, not into fresh memory per tensor; a spare of another dtype is left alone. Either way the
/// bytes are the CPU's.
#[test]
fn kept_values_land_in_the_spare_buffer() {
    let Some(g) = gpu_or_skip() else { return };
    let shape = [64u64, 64];
    let data = TensorData::F16(values_f16(64 * 64, Fill::Random, 9));
    let config = magnitude(0.5);
    let cpu = CpuBackend.run(&config, &data, &shape, "w").unwrap();
    let view = data.as_view().unwrap();
    for backend in [&g.normal, &g.chunked] {
        let spare: Vec<f16> = Vec::with_capacity(64 * 64);
        let address = spare.as_ptr();
        let work = Order::Config(&config)
            .decide(data.dtype(), &shape, data.len(), "w")
            .unwrap();
        let out = Some(TensorData::F16(spare));
        let got = backend
            .execute(&work, TensorInput::View { view, out }, "w")
            .unwrap();
        assert!(same_bytes(&got, &cpu));
        let KernelResult::Pruned(pruned) = &got else {
            panic!("not pruned: {got:?}")
        };
        let TensorData::F16(values) = &pruned.nonzero else {
            panic!("not fp16")
        };
        assert_eq!(
            values.as_ptr(),
            address,
            "the spare's allocation holds the kept values"
        );
        let other = Some(TensorData::F32(vec![1.0; 8]));
        assert!(same_bytes(
            &backend
                .execute(&work, TensorInput::View { view, out: other }, "w")
                .unwrap(),
            &cpu
        ));
    }
}

/// Block norms computed on the device (integer emulation of numpy's fp16 and f32 rounding)
/// against the reference norms, as whole multisets (key -> elements covered). fp16: every bit
/// pattern squared and rooted alone, sequential sums of random pairs and padded triples across the
/// whole range, numpy's pairwise sums for every accumulator shape up to 128 addends, and layouts
/// whose chunks split inside the outer axis. fp32 likewise on random bit patterns of every
/// exponent (subnormal squares, overflowing ones, NaN and inf) and on weights of a trained scale.
#[test]
fn device_block_norms_match_the_reference() {
    use mlprune::prune::kernel_paths::block_norm_key_counts;
    use mlprune::tensor::TensorView;
    let Some(g) = gpu_or_skip() else { return };
    let every: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut rng = Rng(0x5eed);
    let mut shuffled = every.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut scale = Vec::with_capacity(1 << 16);
    let mut wide: Vec<f32> = Vec::with_capacity(1 << 16);
    for i in 0..1usize << 16 {
        scale.push(rng.normal() * 0.05);
        // Every exponent, subnormals included; one value in 64 a tie with its neighbour.
        let bits = rng.next() as u32;
        let tie = i % 64 == 1;
        wide.push(if tie { wide[i - 1] } else { f32::from_bits(bits) });
    }
    // Weights of a trained layer's scale, with a few full-range patterns mixed in.
    let weights: Vec<f16> = (0..1 << 16)
        .map(|i| {
            if i % 17 == 0 {
                shuffled[i]
            } else {
                f16::from_f32(scale[i])
            }
        })
        .collect();
    // Small magnitudes whose squares are f32 subnormals or vanish, and large ones whose squares
    // overflow.
    let extremes: Vec<f32> = (0..1 << 14)
        .map(|i| {
            let r = (rng.next() >> 41) as f32 / (1u64 << 23) as f32 + 1.0;
            r * [1e-20, 1e-23, 1e19, 3e-39][i % 4]
        })
        .collect();
    // (what, weights, shape, block size, dim)
    type Case<'a> = (&'a str, TensorView<'a>, Vec<usize>, usize, usize);
    let mut cases: Vec<Case> = vec![
        (
            "every fp16 value alone",
            TensorView::F16(&every),
            vec![2, 32768],
            1,
            0,
        ),
        (
            "fp16 random pairs",
            TensorView::F16(&shuffled),
            vec![4, 16384],
            2,
            0,
        ),
        (
            "fp16 padded triples",
            TensorView::F16(&shuffled),
            vec![8, 8192],
            3,
            0,
        ),
        (
            "fp16 dim 1, inner 8",
            TensorView::F16(&weights),
            vec![64, 128, 8],
            4,
            1,
        ),
        (
            "fp16 weights in eights",
            TensorView::F16(&weights),
            vec![16, 4096],
            8,
            0,
        ),
        (
            "fp32 wide values alone",
            TensorView::F32(&wide[..4096]),
            vec![2, 2048],
            1,
            0,
        ),
        (
            "fp32 wide pairs",
            TensorView::F32(&wide[..4096]),
            vec![4, 1024],
            2,
            0,
        ),
        (
            "fp32 extremes in fours",
            TensorView::F32(&extremes),
            vec![8, 2048],
            4,
            0,
        ),
        (
            "fp32 weights, padded",
            TensorView::F32(&scale[..7 * 8192]),
            vec![7, 8192],
            3,
            0,
        ),
        (
            "fp32 dim 1, inner 8",
            TensorView::F32(&scale),
            vec![64, 128, 8],
            4,
            1,
        ),
    ];
    // dim 1 of a 2-D weight: the block axis is innermost (numpy's pairwise sum).
    let pairwise: [(&str, TensorView, Vec<usize>); 5] = [
        (
            "fp16 pairwise, weights",
            TensorView::F16(&weights),
            vec![256, 256],
        ),
        (
            "fp16 pairwise, every value",
            TensorView::F16(&shuffled),
            vec![128, 512],
        ),
        ("fp32 pairwise, weights", TensorView::F32(&scale), vec![256, 256]),
        (
            "fp32 pairwise, wide",
            TensorView::F32(&wide[..4096]),
            vec![16, 256],
        ),
        (
            "fp32 pairwise, extremes",
            TensorView::F32(&extremes),
            vec![64, 256],
        ),
    ];
    for b in [2, 5, 7, 8, 9, 13, 16, 31, 64, 100, 128] {
        for (what, w, shape) in &pairwise {
            cases.push((what, *w, shape.clone(), b, 1));
        }
    }
    // 300 channels: the last block of each row is padded with zeros.
    cases.push((
        "fp16 pairwise, padded",
        TensorView::F16(&weights[..300 * 200]),
        vec![200, 300],
        128,
        1,
    ));
    cases.push((
        "fp32 pairwise, padded",
        TensorView::F32(&scale[..300 * 200]),
        vec![200, 300],
        100,
        1,
    ));
    for (what, w, shape, b, dim) in cases {
        let want = match w {
            TensorView::F16(w) => block_norm_key_counts(w, &shape, b, dim),
            TensorView::F32(w) => block_norm_key_counts(w, &shape, b, dim),
        };
        let got = g
            .normal
            .block_norm_key_counts(w, &shape, b, dim)
            .expect("the device passes run")
            .unwrap_or_else(|| panic!("{what} {shape:?} b{b}: not taken by the device"));
        assert_eq!(got, want, "{what} {shape:?} block {b} dim {dim}");
    }
    // Many chunks of 1 KiB (512 fp16 or 256 fp32 elements): bands of whole block rows, and of
    // whole channel runs (30 or 10 channels leave a short block), so chunks start at every kind of
    // norm offset.
    let chunked = |shape: &[usize], b: usize, dim: usize, fp16: bool| {
        let n = shape.iter().product();
        let (want, got) = if fp16 {
            let w = &weights[..n];
            (
                block_norm_key_counts(w, shape, b, dim),
                g.chunked.block_norm_key_counts(TensorView::F16(w), shape, b, dim),
            )
        } else {
            let w = &scale[..n];
            (
                block_norm_key_counts(w, shape, b, dim),
                g.chunked.block_norm_key_counts(TensorView::F32(w), shape, b, dim),
            )
        };
        assert_eq!(
            got.unwrap(),
            Some(want),
            "chunked fp16={fp16} {shape:?} block {b} dim {dim}"
        );
    };
    for fp16 in [true, false] {
        chunked(&[64, 8], 4, 0, fp16);
        chunked(&[64, 10, 4], 4, 1, fp16);
        chunked(&[40, 56], 8, 1, fp16);
    }
    chunked(&[64, 30, 4], 4, 1, true);
    chunked(&[40, 60], 8, 1, true);
}

/// Block sparsity with many tied norms, end to end (histograms, host percentile, device flags,
/// mask), fp16 and fp32: the bytes are the CPU's, and the norms were taken on the device.
#[test]
fn device_block_norms_prune_ties_like_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    // A backend of its own: the shared ones count other tests' tensors too.
    let gpu = GpuBackend::new(GpuContext::new(DevicePolicy::Gpu).unwrap().unwrap());
    let mut cases = 0;
    let mut run = |config: &OpConfig, data: &TensorData, shape: &[u64], label: &str| {
        let want = CpuBackend.run(config, data, shape, label).unwrap();
        let got = gpu.run(config, data, shape, label).unwrap();
        assert!(same_bytes(&want, &got), "{label}: GPU differs from CPU");
        cases += 1;
    };
    for (seed, shape) in [
        (1u64, vec![64u64, 64]),
        (2, vec![24, 16, 3, 3]),
        (3, vec![48, 40]),
    ] {
        let n = shape.iter().product::<u64>() as usize;
        for fill in [Fill::Ties, Fill::Specials, Fill::Random] {
            for data in both_dtypes(n, fill, seed) {
                for (s, b, dim) in [(0.5, 2, 0), (0.3, 4, 1), (0.75, 8, 1), (0.5, 3, 0)] {
                    let label = format!("{:?} {fill:?} {shape:?} block {s} b{b} dim{dim}", data.dtype());
                    run(&block(s, b, dim), &data, &shape, &label);
                }
            }
        }
    }
    // Four blocks, three of them equal: the percentile falls on the tie itself.
    let ties = [0.5f32, 0.5, 0.25, 0.5]
        .iter()
        .flat_map(|&v| [f16::from_f32(v); 16])
        .collect();
    run(
        &block(0.5, 4, 0),
        &TensorData::F16(ties),
        &[16, 4],
        "four tied blocks",
    );
    assert_eq!(
        gpu.context().device_norm_tensors(),
        cases,
        "every block case took the device norms"
    );
}
