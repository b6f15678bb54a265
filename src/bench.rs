//! `mlprune bench`: runs every prunable tensor of a model through the CPU and the GPU kernels,
//! checks that both give the same bytes, and tabulates times and throughput. The GPU time is split
//! into kernel time, from the device's clock where the adapter has timestamp queries, and the rest
//! (uploads, read-backs, the host); a buffer-to-buffer copy measured in the same run gives the
//! device's own bandwidth ceiling for the kernels' GB/s.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::config::{from_shortcuts, OptimizationConfig, Shortcuts};
use crate::dispatch::{same_bytes, Backend, CpuBackend, DevicePolicy, KernelResult, Order, TensorInput};
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::gpu::{GpuBackend, GpuContext};
use crate::mil::graph::GraphView;
use crate::mil::value::{OperationExt, ValueExt};
use crate::mil::LoadedModel;
use crate::package::Package;
use crate::plan::{plan, Decision, Plan};
use crate::proto::mil::{Program, Value};
use crate::shared::check_shared_configs;
use crate::weights::rebuild::op_values_mut;
use crate::weights::source::{blob_value_meta, check_blob_file, in_tensor};
use crate::weights::{TensorMeta, WeightSource};

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
    /// Kernel time of one more GPU run, on the device's clock (`None`: no timestamp queries, or
    /// the CPU kernel ran).
    pub kernel_s: Option<f64>,
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
/// What `mlprune bench` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub adapter: String,
    pub rows: Vec<BenchRow>,
    /// Whether the adapter has timestamp queries (kernel times measured).
    pub timestamps: bool,
    /// GB/s of a device buffer-to-buffer copy as large as the largest tensor (at least 64 MiB),
    /// best of `runs`.
    pub copy_gbps: f64,
    pub copy_bytes: u64,
}

/// The smallest buffer the copy ceiling is measured on: smaller copies time the submission more
/// than the copy.
const MIN_COPY_BYTES: u64 = 64 << 20;

pub fn bench(input: &Path, config: &OptimizationConfig, runs: u32) -> Result<BenchReport> {
    bench_sparing(input, config, runs, &[])
}

/// [`bench()`], whose sweep of stale extractions spares `spare` too (the `--config` file).
pub fn bench_sparing(
    input: &Path,
    config: &OptimizationConfig,
    runs: u32,
    spare: &[&Path],
) -> Result<BenchReport> {
    config.validate()?;
    // The model first, checked as prune checks it: a model prune refuses is refused here with the
    // same error, before any device is opened (it used to bench nothing and exit 0).
    let package = Package::open_sparing(input, spare)?;
    let model_path = package.model_path();
    let mut model = LoadedModel::read(&model_path, &package.display_path(&model_path))?;
    let graph = GraphView::of_model(&mut model, None)?;
    let fault = graph.fault();
    let mut planned = fault.explain(plan(&model.program, &graph, config))?;
    fault.explain(check_shared_configs(&model.program, &graph, config, &mut planned))?;
    let source = WeightSource::open(&package, None)?;
    fault.explain(check_blobs(&model.program, &graph, &planned, &source))?;
    let ctx = GpuContext::new(DevicePolicy::Gpu)?
        .ok_or_else(|| Error::Gpu("bench: no Vulkan or Metal adapter found".into()))?;
    let adapter = ctx.describe();
    let timestamps = ctx.has_timestamps();
    let gpu = GpuBackend::new(ctx);
    let mut rows = Vec::new();
    for p in planned.iter() {
        let p = p?;
        let Decision::Prune(op_config) = &p.decision else {
            continue;
        };
        let name = graph.name(p.op_index);
        fault.check()?;
        let value = graph
            .op(&model.program, p.op_index)
            .and_then(|op| op.into_const_value())
            .ok_or_else(|| Error::tensor(&name, "const op without a value"))?;
        let (meta, data) = source.read(&name, &value)?;
        // Decided once, executed by both backends, as the engine does.
        let work = Order::Config(op_config).decide(data.dtype(), &meta.shape, data.len(), &name)?;
        let time = |backend: &dyn Backend| -> Result<(f64, KernelResult)> {
            let mut best = f64::INFINITY;
            let mut last = None;
            for _ in 0..runs.max(1) {
                let started = Instant::now();
                let result = backend.execute(&work, TensorInput::borrowing(&data), &name)?;
                best = best.min(started.elapsed().as_secs_f64());
                last = Some(result);
            }
            last.map(|r| (best, r))
                .ok_or_else(|| Error::Usage("bench: no runs".into()))
        };
        let (cpu_s, cpu_result) = time(&CpuBackend)?;
        let (gpu_s, gpu_result) = time(&gpu)?;
        let on_gpu = gpu.covers(&work, &TensorInput::borrowing(&data));
        let kernel_s = if on_gpu && gpu.context().start_kernel_timing()? {
            let run = gpu.execute(&work, TensorInput::borrowing(&data), &name);
            let kernels = gpu.context().finish_kernel_timing()?;
            run?;
            kernels.filter(|k| k.untimed == 0).map(|k| k.seconds)
        } else {
            None
        };
        rows.push(BenchRow {
            name: name.to_string(),
            mode: op_config.mode_name().to_owned(),
            dtype: meta.dtype.to_string(),
            elements: meta.count,
            bytes: meta.storage_bytes().unwrap_or(0),
            cpu_s,
            gpu_s,
            kernel_s,
            on_gpu,
            identical: same_bytes(&cpu_result, &gpu_result),
        });
    }
    let largest = rows
        .iter()
        .map(|r| r.bytes)
        .max()
        .unwrap_or(0)
        .max(MIN_COPY_BYTES);
    let (copy_gbps, copy_bytes) = gpu.context().copy_bandwidth(largest, runs.max(3))?;
    Ok(BenchReport {
        adapter,
        rows,
        timestamps,
        copy_gbps,
        copy_bytes,
    })
}

/// Checks every blob of the model as a prune run reads it, in program order, without reading
/// data: a tensor prune prunes as `prune_const` maps it (errors name the tensor), every other
/// blob as the output's copy checks it (errors name `op.param`; see
/// [`crate::weights::WeightFileBuilder::copy_op_blobs`]).
fn check_blobs(program: &Program, graph: &GraphView, planned: &Plan, source: &WeightSource) -> Result<()> {
    let mut next_plan = planned.cursor();
    // Blob offsets already checked, with the type they were read as.
    let mut seen: HashMap<u64, (ScalarType, u64)> = HashMap::new();
    for (index, info) in graph.infos() {
        let Some(mut op) = graph.op(program, index) else {
            continue;
        };
        let planned_here = next_plan.take_if_at(index)?;
        if planned_here.is_some_and(|p| p.is_prune()) {
            let value = op
                .const_value()
                .ok_or_else(|| Error::tensor(&info.name, "const op without a value or an output"))?;
            check_blob(&info.name, value, source, &mut seen)?;
            continue;
        }
        for (param, value) in op_values_mut(&mut op) {
            if value.blob_offset().is_some() {
                let tensor = format!("{}.{param}", info.name);
                blob_value_meta(&tensor, value)?;
                check_blob(&tensor, value, source, &mut seen)?;
            }
        }
    }
    Ok(())
}

/// Checks one blob-backed value named `tensor`: its file, its type, and its record in weight.bin
/// (a blob read by several values must be read as one type by all).
fn check_blob(
    tensor: &str,
    value: &Value,
    source: &WeightSource,
    seen: &mut HashMap<u64, (ScalarType, u64)>,
) -> Result<()> {
    let Some(offset) = value.blob_offset() else {
        return Ok(());
    };
    check_blob_file(tensor, value)?;
    let meta = TensorMeta::of(value)
        .ok_or_else(|| Error::tensor(tensor, "is not a numeric tensor with a known shape"))?;
    match seen.get(&offset) {
        Some(&(dtype, count)) if (dtype, count) == (meta.dtype, meta.count) => Ok(()),
        Some(&(dtype, count)) => Err(Error::tensor(
            tensor,
            format!(
                "declares {} {} elements, but the weight.bin blob at offset {offset} it shares \
                 with another value holds {count} {dtype} elements",
                meta.count, meta.dtype
            ),
        )),
        None => {
            let reader = source.blob_reader().ok_or_else(|| {
                Error::tensor(
                    tensor,
                    format!("refers to weight.bin offset {offset} but the package has no weight.bin"),
                )
            })?;
            reader
                .data_range(offset, meta.dtype, meta.count)
                .map_err(|e| in_tensor(tensor, e))?;
            seen.insert(offset, (meta.dtype, meta.count));
            Ok(())
        }
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
pub fn render(report: &BenchReport) -> String {
    let mut out = format!("GPU: {}\n", report.adapter);
    let ms = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{:.3}", s * 1e3));
    let rate = |bytes: u64, s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{:.3}", gbps(bytes, s)));
    let _ = writeln!(
        out,
        "{:<32} {:<9} {:<7} {:>11} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}  same",
        "tensor",
        "mode",
        "dtype",
        "elements",
        "cpu ms",
        "gpu ms",
        "kernel ms",
        "cpu GB/s",
        "gpu GB/s",
        "kernel GB/s"
    );
    let (mut bytes, mut cpu, mut gpu, mut elements) = (0u64, 0.0, 0.0, 0u64);
    let (mut kernel_bytes, mut kernel) = (0u64, Some(0.0));
    for r in &report.rows {
        let device_note = if r.on_gpu { "" } else { " (cpu fallback)" };
        let _ = writeln!(
            out,
            "{:<32} {:<9} {:<7} {:>11} {:>10.3} {:>10.3} {:>10} {:>9.3} {:>9.3} {:>10}  {}{}",
            crate::error::escape_control(&r.name),
            r.mode,
            r.dtype,
            r.elements,
            r.cpu_s * 1e3,
            r.gpu_s * 1e3,
            ms(r.kernel_s),
            gbps(r.bytes, r.cpu_s),
            gbps(r.bytes, r.gpu_s),
            rate(r.bytes, r.kernel_s),
            if r.identical { "yes" } else { "NO" },
            device_note
        );
        bytes += r.bytes;
        cpu += r.cpu_s;
        gpu += r.gpu_s;
        elements += r.elements;
        if r.on_gpu {
            kernel = kernel.zip(r.kernel_s).map(|(a, b)| a + b);
            kernel_bytes += r.bytes;
        }
    }
    let kernel = kernel.filter(|_| kernel_bytes > 0);
    let all_same = report.rows.iter().all(|r| r.identical);
    let _ = writeln!(
        out,
        "{:<32} {:<9} {:<7} {:>11} {:>10.3} {:>10.3} {:>10} {:>9.3} {:>9.3} {:>10}  {}",
        "total",
        "",
        "",
        elements,
        cpu * 1e3,
        gpu * 1e3,
        ms(kernel),
        gbps(bytes, cpu),
        gbps(bytes, gpu),
        rate(kernel_bytes, kernel),
        if all_same { "yes" } else { "NO" }
    );
    let _ = writeln!(
        out,
        "device copy (buffer to buffer, {} MiB): {:.3} GB/s",
        report.copy_bytes >> 20,
        report.copy_gbps
    );
    if report.timestamps {
        let _ = writeln!(
            out,
            "kernel time: the device's timestamps around every compute pass of one more run; gpu ms \
             minus kernel ms is uploads, read-backs and host work"
        );
    } else {
        let _ = writeln!(
            out,
            "kernel time: not measured (the adapter has no timestamp queries)"
        );
    }
    out
}
