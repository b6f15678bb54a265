//! The prune pipeline: package → model → graph → plan → per-tensor kernels → encode → write.
//!
//! Ops are visited once, in program order, and `weight.bin` is written in that same order: each
//! pruned const's new blobs are appended where the const stood, every other blob is copied (once per
//! original offset). Replacements are one op for one op, so the graph's op paths stay valid while the
//! program is rewritten. Output goes to a staging folder that is renamed into place only at the end.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::config::{OpConfig, OptimizationConfig};
use crate::dispatch::{run_kernel, Backend, KernelResult};
use crate::encode::{sparse_to_dense_op, sparsified_name};
use crate::error::{Error, IoContext, Result};
use crate::gpu::{GpuBackend, GpuContext};
use crate::mil::graph::{op_at_mut, GraphView};
use crate::mil::rewrite::{rename_uses, replace_op};
use crate::mil::value::OperationExt;
use crate::mil::LoadedModel;
use crate::package::{OutputPackage, Package};
use crate::plan::{plan, Decision, PlannedTensor};
use crate::tensor::TensorData;
use crate::weights::{WeightFileBuilder, WeightSource};

/// Where tensors are pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePolicy {
    Auto,
    Cpu,
    Gpu,
}

/// A validated `mlprune prune` request.
#[derive(Debug, Clone)]
pub struct PruneJob {
    pub input: PathBuf,
    pub output: PathBuf,
    pub config: OptimizationConfig,
    pub joint_compression: bool,
    pub device: DevicePolicy,
    pub gpu_min_elements: u64,
    pub force: bool,
}

/// One entry of `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub consumer: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub mode: String,
    pub pruned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Share of zeros after pruning (before, for skipped tensors is not computed: `null`).
    pub sparsity: Option<f64>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub device: &'static str,
    pub millis: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneSummary {
    pub tensors: Vec<TensorReport>,
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    /// One-line notices for the user (e.g. `--device auto` found no GPU); the CLI prints them unless
    /// `--quiet`.
    #[serde(skip)]
    pub notices: Vec<String>,
}

impl PruneSummary {
    pub fn pruned_count(&self) -> usize {
        self.tensors.iter().filter(|t| t.pruned).count()
    }
}

pub fn prune(job: &PruneJob) -> Result<PruneSummary> {
    if job.joint_compression {
        return Err(Error::Unsupported("--joint-compression is not implemented yet".into()));
    }
    job.config.validate()?;
    let mut devices = Devices::new(job.device, job.gpu_min_elements)?;
    let package = Package::open(&job.input)?;
    let model_path = package.model_path();
    let mut model = LoadedModel::read(&model_path, &package.display_path(&model_path))?;
    let graph = GraphView::build(&model.program)?;
    let planned = plan(&model.program, &graph, &job.config)?;
    let source = WeightSource::open(&package)?;
    let had_weight_file = source.blob_reader().is_some();
    let weight_bytes_before = source.blob_reader().map_or(0, |r| r.size());

    let mut out = OutputPackage::create(&package, &job.output, job.force)?;
    let weight_path = out.weight_path();
    let mut weights = WeightFileBuilder::create(&weight_path)?;
    let mut reports = Vec::with_capacity(planned.len());
    let spec_version = model.spec_version();
    let mut pruned_any = false;
    let mut next_plan = planned.iter().peekable();
    for (index, info) in graph.ops.iter().enumerate() {
        let plan_entry = next_plan.next_if(|p| p.op_index == index);
        let op = op_at_mut(&mut model.program, &info.path)
            .ok_or_else(|| Error::Graph(format!("op '{}' disappeared during rewrite", info.name)))?;
        let started = Instant::now();
        let Some(p) = plan_entry else {
            weights.copy_op_blobs(op, &info.name, source.blob_reader())?;
            continue;
        };
        let Decision::Prune(config) = &p.decision else {
            weights.copy_op_blobs(op, &info.name, source.blob_reader())?;
            reports.push(tensor_report(p, None, "cpu", started));
            continue;
        };
        let (value, output) = match (op.const_value(), op.outputs.first()) {
            (Some(v), Some(o)) => (v, o),
            _ => return Err(Error::tensor(&p.name, "const op without a value or an output")),
        };
        let (meta, data) = source.read(&p.name, value)?;
        let (result, device) = devices.run(config, &data, &meta.shape, &p.name)?;
        match result {
            KernelResult::Skipped(reason) => {
                weights.copy_op_blobs(op, &info.name, source.blob_reader())?;
                reports.push(tensor_report(p, Some(Err(reason)), device, started));
            }
            KernelResult::Pruned(pruned) => {
                let old_output = output.name.clone();
                let new_name = sparsified_name(&p.name);
                if graph.producer(&info.path.function, &new_name).is_some() {
                    return Err(Error::Graph(format!(
                        "cannot prune '{}': the model already has a value named '{new_name}'",
                        p.name
                    )));
                }
                let output_type = output.r#type.clone().unwrap_or_default();
                let kept = pruned.kept;
                // Stored size of the sparse form: the kept values plus one mask bit per element.
                let bytes_after = pruned
                    .nonzero
                    .dtype()
                    .storage_bytes(kept)
                    .and_then(|b| b.checked_add(meta.count.div_ceil(8)))
                    .unwrap_or(u64::MAX);
                let new_op = sparse_to_dense_op(
                    &p.name,
                    output_type,
                    &meta.shape,
                    pruned.nonzero,
                    pruned.mask,
                    spec_version,
                    &mut weights,
                )?;
                replace_op(&mut model.program, &info.path, vec![new_op])?;
                rename_uses(&mut model.program, &info.path.function, &old_output, &new_name)?;
                pruned_any = true;
                reports.push(tensor_report(p, Some(Ok((kept, bytes_after))), device, started));
            }
        }
    }
    if pruned_any && model.spec_version() < 7 {
        bump_to_ios16(&mut model);
    }
    let blob_count = weights.blob_count();
    weights.finish()?;
    if blob_count == 0 && !had_weight_file {
        // Mirror the input: a package without blobs has an empty weights folder, no weight.bin.
        std::fs::remove_file(&weight_path).at(&weight_path)?;
    } else {
        let mut manifest = package.manifest().clone();
        if manifest.ensure_weights_item() {
            out.set_manifest(&manifest)?;
        }
    }
    let weight_bytes_after = std::fs::metadata(&weight_path).map(|m| m.len()).unwrap_or(0);
    let model_path = out.model_path();
    std::fs::write(&model_path, model.encode()).at(&model_path)?;
    out.commit()?;
    Ok(PruneSummary { tensors: reports, weight_bytes_before, weight_bytes_after, notices: devices.notices })
}

/// The per-tensor device choice. `Cpu`: always the CPU. `Gpu`: a device of any kind (software
/// adapters included) is acquired up front — none is an error — and every tensor the GPU kernels
/// handle runs there. `Auto`: tensors with at least `gpu_min_elements` elements go to a hardware
/// adapter, acquired on first need; without one everything runs on the CPU, with one notice.
struct Devices {
    policy: DevicePolicy,
    gpu_min_elements: u64,
    gpu: GpuState,
    notices: Vec<String>,
}

enum GpuState {
    NotTried,
    Ready(Box<GpuBackend>),
    Unavailable,
}

impl Devices {
    fn new(policy: DevicePolicy, gpu_min_elements: u64) -> Result<Self> {
        let gpu = if policy == DevicePolicy::Gpu {
            let ctx = GpuContext::new(DevicePolicy::Gpu)?.ok_or_else(|| {
                Error::Gpu("--device gpu: no Vulkan or Metal adapter found; use --device cpu or auto".into())
            })?;
            GpuState::Ready(Box::new(GpuBackend::new(ctx)))
        } else {
            GpuState::NotTried
        };
        Ok(Devices { policy, gpu_min_elements, gpu, notices: Vec::new() })
    }

    /// The GPU backend, acquiring it under `Auto` on first use.
    fn gpu(&mut self) -> Option<&GpuBackend> {
        if matches!(self.gpu, GpuState::NotTried) {
            self.gpu = match GpuContext::new(self.policy) {
                Ok(Some(ctx)) => GpuState::Ready(Box::new(GpuBackend::new(ctx))),
                Ok(None) => {
                    self.notices.push("no hardware GPU adapter found; pruning on the CPU".into());
                    GpuState::Unavailable
                }
                Err(e) => {
                    self.notices.push(format!("GPU unavailable ({e}); pruning on the CPU"));
                    GpuState::Unavailable
                }
            };
        }
        match &self.gpu {
            GpuState::Ready(backend) => Some(backend),
            _ => None,
        }
    }

    /// Runs one tensor's kernel and says where it ran (`"gpu"` or `"cpu"`).
    fn run(
        &mut self,
        config: &OpConfig,
        data: &TensorData,
        shape: &[u64],
        tensor: &str,
    ) -> Result<(KernelResult, &'static str)> {
        let wanted = match self.policy {
            DevicePolicy::Cpu => false,
            DevicePolicy::Gpu => true,
            DevicePolicy::Auto => data.len() as u64 >= self.gpu_min_elements,
        };
        if wanted {
            if let Some(gpu) = self.gpu().filter(|g| g.handles(config, data, shape)) {
                return Ok((gpu.run(config, data, shape, tensor)?, gpu.name()));
            }
        }
        Ok((run_kernel(config, data, shape, tensor)?, "cpu"))
    }
}

/// coremltools loads programs at spec ≥ 7 for pruning (constexpr ops do not exist in iOS15): spec 6
/// becomes 7 and every `CoreML5` opset, both `Function.opset` and its block key, becomes `CoreML6`.
fn bump_to_ios16(model: &mut LoadedModel) {
    model.shell.specification_version = 7;
    for function in model.program.functions.values_mut() {
        if function.opset == "CoreML5" {
            function.opset = "CoreML6".into();
        }
        if let Some(block) = function.block_specializations.remove("CoreML5") {
            function.block_specializations.insert("CoreML6".into(), block);
        }
    }
}

/// `result`: `None` for a tensor the plan skipped, `Some(Err(reason))` for one the kernel skipped,
/// `Some(Ok((kept, bytes_after)))` for a pruned one.
fn tensor_report(
    p: &PlannedTensor,
    result: Option<std::result::Result<(u64, u64), String>>,
    device: &'static str,
    started: Instant,
) -> TensorReport {
    let bytes = p.meta.storage_bytes().unwrap_or(0);
    let mode = match &p.decision {
        Decision::Skip(_) => "none".to_owned(),
        Decision::Prune(c) => c.mode_name().to_owned(),
    };
    let (pruned, skipped, sparsity, bytes_after) = match (result, &p.decision) {
        (Some(Ok((kept, after))), _) => {
            let sparsity = if p.meta.count == 0 { 0.0 } else { 1.0 - kept as f64 / p.meta.count as f64 };
            (true, None, Some(sparsity), after)
        }
        (Some(Err(reason)), _) => (false, Some(reason), None, bytes),
        (None, Decision::Skip(reason)) => (false, Some(reason.clone()), None, bytes),
        (None, Decision::Prune(_)) => (false, None, None, bytes),
    };
    TensorReport {
        name: p.name.clone(),
        consumer: p.consumer.clone(),
        dtype: p.meta.dtype.to_string(),
        shape: p.meta.shape.clone(),
        mode,
        pruned,
        skipped,
        sparsity,
        bytes_before: bytes,
        bytes_after,
        device,
        millis: started.elapsed().as_secs_f64() * 1e3,
    }
}
