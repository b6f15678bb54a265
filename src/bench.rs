//! `mlprune bench`: runs every prunable tensor of a model through the CPU and the GPU kernels,
//! checks that both give the same bytes, and tabulates times and throughput.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::config::{from_shortcuts, OptimizationConfig, Shortcuts};
use crate::dispatch::{Backend, CpuBackend, KernelResult};
use crate::engine::DevicePolicy;
use crate::error::{Error, Result};
use crate::gpu::{GpuBackend, GpuContext};
use crate::mil::graph::{op_at, GraphView};
use crate::mil::value::OperationExt;
use crate::mil::LoadedModel;
use crate::package::Package;
use crate::plan::{plan, Decision};
use crate::weights::WeightSource;

/// One tensor's measurement.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub name: String,
    pub mode: String,
    pub dtype: String,
    pub elements: u64,
    pub bytes: u64,
    /// Best of the runs, in seconds.
    pub cpu_s: f64,
    pub gpu_s: f64,
    /// Whether the GPU backend ran its own kernels (false: it fell back to the CPU kernel).
    pub on_gpu: bool,
    pub identical: bool,
}

/// The default config when none is given: magnitude pruning to 50 % (`--sparsity 0.5`).
pub fn default_config() -> Result<OptimizationConfig> {
    from_shortcuts(&Shortcuts {
        sparsity: Some(0.5),
        ..Shortcuts::default()
    })
}

/// Benchmarks every tensor `config` prunes in `input`, best of `runs` per device.
pub fn bench(input: &Path, config: &OptimizationConfig, runs: u32) -> Result<(String, Vec<BenchRow>)> {
    config.validate()?;
    let ctx = GpuContext::new(DevicePolicy::Gpu)?
        .ok_or_else(|| Error::Gpu("bench: no Vulkan or Metal adapter found".into()))?;
    let adapter = ctx.describe();
    let gpu = GpuBackend::new(ctx);
    let package = Package::open(input)?;
    let model_path = package.model_path();
    let model = LoadedModel::read(&model_path, &package.display_path(&model_path))?;
    let graph = GraphView::build(&model.program)?;
    let source = WeightSource::open(&package)?;
    let mut rows = Vec::new();
    for p in plan(&model.program, &graph, config)? {
        let Decision::Prune(op_config) = &p.decision else {
            continue;
        };
        let value = graph
            .ops
            .get(p.op_index)
            .and_then(|info| op_at(&model.program, &info.path))
            .and_then(|op| op.const_value())
            .ok_or_else(|| Error::tensor(&p.name, "const op without a value"))?;
        let (meta, data) = source.read(&p.name, value)?;
        let time = |backend: &dyn Backend| -> Result<(f64, KernelResult)> {
            let mut best = f64::INFINITY;
            let mut last = None;
            for _ in 0..runs.max(1) {
                let started = Instant::now();
                let result = backend.run(op_config, &data, &meta.shape, &p.name)?;
                best = best.min(started.elapsed().as_secs_f64());
                last = Some(result);
            }
            last.map(|r| (best, r))
                .ok_or_else(|| Error::Usage("bench: no runs".into()))
        };
        let (cpu_s, cpu_result) = time(&CpuBackend)?;
        let (gpu_s, gpu_result) = time(&gpu)?;
        rows.push(BenchRow {
            name: p.name.clone(),
            mode: op_config.mode_name().to_owned(),
            dtype: meta.dtype.to_string(),
            elements: meta.count,
            bytes: meta.storage_bytes().unwrap_or(0),
            cpu_s,
            gpu_s,
            on_gpu: gpu.handles(op_config, &data, &meta.shape),
            identical: same_bytes(&cpu_result, &gpu_result),
        });
    }
    Ok((adapter, rows))
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

fn gbps(bytes: u64, s: f64) -> f64 {
    if s > 0.0 {
        bytes as f64 / s / 1e9
    } else {
        0.0
    }
}

/// The table `mlprune bench` prints.
pub fn render(adapter: &str, rows: &[BenchRow]) -> String {
    let mut out = format!("GPU: {adapter}\n");
    let _ = writeln!(
        out,
        "{:<32} {:<9} {:<7} {:>11} {:>10} {:>10} {:>9} {:>9}  same",
        "tensor", "mode", "dtype", "elements", "cpu ms", "gpu ms", "cpu GB/s", "gpu GB/s"
    );
    let (mut bytes, mut cpu, mut gpu, mut elements) = (0u64, 0.0, 0.0, 0u64);
    for r in rows {
        let device_note = if r.on_gpu { "" } else { " (cpu fallback)" };
        let _ = writeln!(
            out,
            "{:<32} {:<9} {:<7} {:>11} {:>10.3} {:>10.3} {:>9.3} {:>9.3}  {}{}",
            crate::error::escape_control(&r.name),
            r.mode,
            r.dtype,
            r.elements,
            r.cpu_s * 1e3,
            r.gpu_s * 1e3,
            gbps(r.bytes, r.cpu_s),
            gbps(r.bytes, r.gpu_s),
            if r.identical { "yes" } else { "NO" },
            device_note
        );
        bytes += r.bytes;
        cpu += r.cpu_s;
        gpu += r.gpu_s;
        elements += r.elements;
    }
    let all_same = rows.iter().all(|r| r.identical);
    let _ = writeln!(
        out,
        "{:<32} {:<9} {:<7} {:>11} {:>10.3} {:>10.3} {:>9.3} {:>9.3}  {}",
        "total",
        "",
        "",
        elements,
        cpu * 1e3,
        gpu * 1e3,
        gbps(bytes, cpu),
        gbps(bytes, gpu),
        if all_same { "yes" } else { "NO" }
    );
    out
}
