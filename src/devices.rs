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

use crate::dispatch::{execute_on_cpu, same_bytes, Backend, DevicePolicy, KernelResult, Order, TensorInput};
use crate::error::{Error, Result};
use crate::gpu::{GpuBackend, GpuContext};

/// Where a tensor was pruned, and why there (`--report`'s `device` and `device_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub device: &'static str,
    pub reason: String,
}

impl Placement {
    fn cpu(reason: String) -> Self {
        Placement {
            device: "cpu",
            reason,
        }
    }
}

pub struct Devices {
    policy: DevicePolicy,
    gpu_min_elements: u64,
    gpu: GpuState,
    /// Under `auto`, the device that won the race and what decided it (`None` before it ran).
    auto_verdict: Option<(&'static str, String)>,
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
            auto_verdict: None,
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

    /// The policy's name in reasons.
    fn policy_label(&self) -> &'static str {
        match self.policy {
            DevicePolicy::Cpu => "--device cpu",
            DevicePolicy::Gpu => "--device gpu",
            DevicePolicy::Auto => "--device auto",
        }
    }

    /// Why a tensor of `elements` stays on the CPU without asking the GPU, or `None` if the policy
    /// lets it go to the GPU (if there is one): never under `cpu`, always under `gpu`; under `auto`
    /// for large enough tensors, unless the CPU won the race.
    fn policy_keeps_on_cpu(&self, elements: usize) -> Option<String> {
        match self.policy {
            DevicePolicy::Cpu => Some("--device cpu".into()),
            DevicePolicy::Gpu => None,
            DevicePolicy::Auto if (elements as u64) < self.gpu_min_elements => Some(format!(
                "--device auto: below --gpu-min-elements ({})",
                self.gpu_min_elements
            )),
            DevicePolicy::Auto => match &self.auto_verdict {
                Some(("cpu", why)) => Some(format!("--device auto: the cpu won the race ({why})")),
                _ => None,
            },
        }
    }

    /// Where a tensor of `elements` goes: the CPU (with the reason), the GPU, or `auto`'s race.
    /// `covered` says whether the GPU kernels handle this case.
    fn route(&mut self, elements: usize, covered: impl FnOnce(&GpuBackend) -> bool) -> Route {
        if let Some(reason) = self.policy_keeps_on_cpu(elements) {
            return Route::Cpu(reason);
        }
        let label = self.policy_label();
        let undecided = self.policy == DevicePolicy::Auto && self.auto_verdict.is_none();
        match self.gpu() {
            None => Route::Cpu(format!("{label}: no hardware GPU")),
            Some(gpu) if !covered(gpu) => {
                Route::Cpu(format!("{label}: the GPU kernels do not cover this case"))
            }
            Some(_) if undecided => Route::Race,
            Some(_) => Route::Gpu,
        }
    }

    /// Why a tensor routed to the GPU runs there.
    fn gpu_placement(&self, device: &'static str) -> Placement {
        let reason = match &self.auto_verdict {
            Some((_, verdict)) => format!("--device auto: the gpu won the race ({verdict})"),
            None => self.policy_label().to_string(),
        };
        Placement { device, reason }
    }

    /// Settles `auto`'s race from both runs: keeps the CPU's result (the reference) and records
    /// the faster device for the tensors that follow. A GPU that fails or differs loses.
    fn settle_race(
        &mut self,
        tensor: &str,
        (on_gpu, gpu_ms): (Result<KernelResult>, f64),
        (on_cpu, cpu_ms): (KernelResult, f64),
    ) -> (KernelResult, Placement) {
        let (winner, why) = match &on_gpu {
            Ok(result) if !same_bytes(result, &on_cpu) => ("cpu", "the GPU's result differed".to_string()),
            Err(e) => ("cpu", format!("the GPU failed: {e}")),
            Ok(_) => (
                if gpu_ms < cpu_ms { "gpu" } else { "cpu" },
                format!("cpu {cpu_ms:.1} ms, gpu {gpu_ms:.1} ms"),
            ),
        };
        self.notices.push(format!(
            "--device auto: raced tensor '{tensor}' on both devices ({why}); the {winner} prunes the rest"
        ));
        let reason = format!("--device auto: raced here on both devices ({why}); the CPU's result is kept");
        self.auto_verdict = Some((winner, format!("on tensor '{tensor}': {why}")));
        (on_cpu, Placement::cpu(reason))
    }

    /// Runs one tensor's order (coremltools' config, or `--global-sparsity`'s cut): decides its
    /// work order once, executes it on the device the policy picks, and says where it ran
    /// (`"gpu"` or `"cpu"`) and why. Owned values give the CPU kernels their allocation; borrowed
    /// ones (a mapped tensor) are read in place by either device.
    pub fn run(
        &mut self,
        order: Order<'_>,
        input: TensorInput<'_>,
        shape: &[u64],
        tensor: &str,
    ) -> Result<(KernelResult, Placement)> {
        let work = order.decide(input.dtype(), shape, input.len(), tensor)?;
        let reason = match self.route(input.len(), |gpu| gpu.covers(&work, &input)) {
            Route::Cpu(reason) => reason,
            Route::Gpu => {
                let gpu = self.gpu().ok_or_else(gpu_gone)?;
                let (result, device) = (gpu.execute(&work, input, tensor)?, gpu.name());
                return Ok((result, self.gpu_placement(device)));
            }
            Route::Race => {
                let gpu = self.gpu().ok_or_else(gpu_gone)?;
                // The GPU reads the values in place and the CPU then runs on them as given.
                let on_gpu = timed(|| gpu.execute(&work, input.lend(), tensor));
                let (on_cpu, cpu_ms) = timed(|| execute_on_cpu(&work, input, tensor));
                return Ok(self.settle_race(tensor, on_gpu, (on_cpu?, cpu_ms)));
            }
        };
        Ok((execute_on_cpu(&work, input, tensor)?, Placement::cpu(reason)))
    }
}

/// Runs `f` and says how long it took, in milliseconds.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed().as_secs_f64() * 1e3)
}

/// `route` chose the GPU only after acquiring it, and it stays acquired: unreachable, but an error
/// rather than a panic.
fn gpu_gone() -> Error {
    Error::Gpu("the GPU backend is gone after it was chosen".into())
}

/// Where [`Devices::route`] sends a tensor.
enum Route {
    Cpu(String),
    Gpu,
    Race,
}
