//! Device policy: which backend prunes each tensor.
//!
//! `cpu` never touches a GPU. `gpu` requires an adapter (a software one such as lavapipe is
//! accepted) and sends every tensor the GPU kernels handle to it. `auto` sends tensors of at least
//! `--gpu-min-elements` to a hardware adapter, acquired on first use, and falls back to the CPU with
//! one notice when there is none: software adapters are slower than the CPU kernels here.
//! Every backend gives byte-identical results, so the policy only changes speed.

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

    /// Whether the policy sends a tensor of `elements` to the GPU (if there is one).
    fn wants_gpu(&self, elements: usize) -> bool {
        match self.policy {
            DevicePolicy::Cpu => false,
            DevicePolicy::Gpu => true,
            DevicePolicy::Auto => elements as u64 >= self.gpu_min_elements,
        }
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
            if let Some(gpu) = self.gpu().filter(|g| g.handles(config, &data, shape)) {
                return Ok((gpu.run(config, &data, shape, tensor)?, gpu.name()));
            }
        }
        Ok((run_kernel_in_place(config, data, shape, tensor)?, "cpu"))
    }
}
