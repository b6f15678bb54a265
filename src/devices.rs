//! Device policy: which backend prunes each tensor.
//!
//! `cpu` never touches a GPU. `gpu` requires an adapter (a software one such as lavapipe is
//! accepted) and sends every tensor the GPU kernels handle to it. `auto` considers the GPU only for
//! tensors of at least `--gpu-min-elements`, only on a hardware adapter (acquired on first use; one
//! notice and the CPU when there is none), and only once the GPU has proved faster on this machine:
//! the first tensor both devices can run is pruned on both, timed, and compared byte for byte; the
//! faster device takes every later tensor, and a notice says what was measured. A fixed size cut-off
//! alone was the slow choice on a real GPU (an H200 ran the GPU path 7–40 times slower than the CPU
//! path, issue 14), so `auto` decides by measurement. Every backend gives byte-identical results,
//! so the policy only changes speed.

use std::time::Instant;

use crate::bench::same_bytes;
use crate::config::OpConfig;
use crate::dispatch::{run_kernel_in_place, run_kernel_on_view, Backend, KernelResult};
use crate::engine::DevicePolicy;
use crate::error::{Error, Result};
use crate::gpu::{GpuBackend, GpuContext};
use crate::tensor::{TensorData, TensorView};

pub struct Devices {
    policy: DevicePolicy,
    gpu_min_elements: u64,
    gpu: GpuState,
    /// Under `auto`, the device that won the race (`None` before it ran).
    auto_winner: Option<&'static str>,
    /// One-line notices for the user, e.g. that `auto` found no hardware GPU.
    pub notices: Vec<String>,
}

enum GpuState {
    NotTried,
    Ready(Box<GpuBackend>),
    Unavailable,
}

impl Devices {
    pub fn new(policy: DevicePolicy, gpu_min_elements: u64) -> Result<Self> {
        let gpu = if policy == DevicePolicy::Gpu {
            let ctx = GpuContext::new(DevicePolicy::Gpu)?.ok_or_else(|| {
                Error::Gpu("--device gpu: no Vulkan or Metal adapter found; use --device cpu or auto".into())
            })?;
            GpuState::Ready(Box::new(GpuBackend::new(ctx)))
        } else {
            GpuState::NotTried
        };
        Ok(Devices {
            policy,
            gpu_min_elements,
            gpu,
            auto_winner: None,
            notices: Vec::new(),
        })
    }

    /// The GPU backend, acquiring it under `Auto` on first use.
    fn gpu(&mut self) -> Option<&GpuBackend> {
        if matches!(self.gpu, GpuState::NotTried) {
            self.gpu = match GpuContext::new(self.policy) {
                Ok(Some(ctx)) => GpuState::Ready(Box::new(GpuBackend::new(ctx))),
                Ok(None) => {
                    self.notices
                        .push("no hardware GPU adapter found; pruning on the CPU".into());
                    GpuState::Unavailable
                }
                Err(e) => {
                    self.notices
                        .push(format!("GPU unavailable ({e}); pruning on the CPU"));
                    GpuState::Unavailable
                }
            };
        }
        match &self.gpu {
            GpuState::Ready(backend) => Some(backend),
            _ => None,
        }
    }

    /// Whether the policy may send a tensor of `elements` to the GPU (if there is one): never under
    /// `cpu`, always under `gpu`; under `auto` for large enough tensors, unless the CPU won the race.
    fn wants_gpu(&self, elements: usize) -> bool {
        match self.policy {
            DevicePolicy::Cpu => false,
            DevicePolicy::Gpu => true,
            DevicePolicy::Auto => elements as u64 >= self.gpu_min_elements && self.auto_winner != Some("cpu"),
        }
    }

    /// `auto`'s race: runs the tensor on both devices, keeps the CPU's result (the reference), and
    /// records the faster device for the tensors that follow. A GPU that fails or differs loses.
    fn race(
        &mut self,
        config: &OpConfig,
        data: TensorData,
        shape: &[u64],
        tensor: &str,
    ) -> Result<(KernelResult, &'static str)> {
        let Some(gpu) = self.gpu() else {
            return Ok((run_kernel_in_place(config, data, shape, tensor)?, "cpu"));
        };
        let started = Instant::now();
        let on_gpu = gpu.run(config, &data, shape, tensor);
        let gpu_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let on_cpu = run_kernel_in_place(config, data, shape, tensor)?;
        let cpu_ms = started.elapsed().as_secs_f64() * 1e3;
        let (winner, why) = match &on_gpu {
            Ok(result) if !same_bytes(result, &on_cpu) => ("cpu", "the GPU's result differed".to_string()),
            Err(e) => ("cpu", format!("the GPU failed: {e}")),
            Ok(_) => (
                if gpu_ms < cpu_ms { "gpu" } else { "cpu" },
                format!("cpu {cpu_ms:.1} ms, gpu {gpu_ms:.1} ms"),
            ),
        };
        self.auto_winner = Some(winner);
        self.notices.push(format!(
            "--device auto: raced tensor '{tensor}' on both devices ({why}); the {winner} prunes the rest"
        ));
        Ok((on_cpu, "cpu"))
    }

    /// [`Devices::run`] on borrowed values; the CPU kernels write the kept values into `out`'s
    /// allocation where it fits. A GPU copies the values it uploads anyway.
    pub fn run_view(
        &mut self,
        config: &OpConfig,
        view: TensorView<'_>,
        out: Option<TensorData>,
        shape: &[u64],
        tensor: &str,
    ) -> Result<(KernelResult, &'static str)> {
        if self.wants_gpu(view.len()) && self.gpu().is_some() {
            return self.run(config, view.to_owned(), shape, tensor);
        }
        Ok((run_kernel_on_view(config, view, out, shape, tensor)?, "cpu"))
    }

    /// Runs one tensor's kernel and says where it ran (`"gpu"` or `"cpu"`). The CPU kernels reuse
    /// `data`'s allocation for the kept values.
    pub fn run(
        &mut self,
        config: &OpConfig,
        data: TensorData,
        shape: &[u64],
        tensor: &str,
    ) -> Result<(KernelResult, &'static str)> {
        if self.wants_gpu(data.len()) {
            let undecided = self.policy == DevicePolicy::Auto && self.auto_winner.is_none();
            if let Some(gpu) = self.gpu().filter(|g| g.handles(config, &data, shape)) {
                if undecided {
                    return self.race(config, data, shape, tensor);
                }
                return Ok((gpu.run(config, &data, shape, tensor)?, gpu.name()));
            }
        }
        Ok((run_kernel_in_place(config, data, shape, tensor)?, "cpu"))
    }
}
