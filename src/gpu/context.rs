//! Device acquisition and the per-run GPU state: one device and queue, the pipelines (compiled once),
//! the buffer pool, and the error channel that turns wgpu's asynchronous failures into `Error::Gpu`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::pool::BufferPool;
use super::profile::Profiler;
use super::shaders::{ModuleSource, BLOCK_NORM_MODULE, PRUNE_MODULE, SELECT_MODULE};
use crate::dispatch::DevicePolicy;
use crate::error::{Error, Result};

/// Size of the kernels' uniform block (`Params` in shaders/common.wgsl): 24 u32.
pub(crate) const PARAMS_BYTES: u64 = 96;

/// The compute pipelines, one per entry point, sharing one bind group layout.
pub(crate) struct Pipelines {
    pub layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    pub histogram: wgpu::ComputePipeline,
    /// Built on the first block tensor: most runs never need them, and a driver that
    /// compiles on the host (lavapipe) would hold their code all run (about 6 MiB there).
    block_norms: OnceLock<BlockNormPipelines>,
    pub pack: wgpu::ComputePipeline,
    pub scan_local: wgpu::ComputePipeline,
    pub scan_blocks: wgpu::ComputePipeline,
    pub scatter: wgpu::ComputePipeline,
}

/// The passes of `shaders/block_norms.wgsl`.
pub(crate) struct BlockNormPipelines {
    pub histogram: wgpu::ComputePipeline,
    pub flags: wgpu::ComputePipeline,
}

impl Pipelines {
    /// The block-norm passes, compiled on first use.
    pub(crate) fn block_norms(&self, device: &wgpu::Device) -> &BlockNormPipelines {
        self.block_norms.get_or_init(|| {
            let module = shader_module(device, &BLOCK_NORM_MODULE);
            BlockNormPipelines {
                histogram: compute_pipeline(device, &self.pipeline_layout, &module, "block_norm_histogram"),
                flags: compute_pipeline(device, &self.pipeline_layout, &module, "block_prune_flags"),
            }
        })
    }
}

/// An acquired GPU: create one per run and reuse it for every tensor.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Largest chunk of tensor bytes one dispatch sees (a multiple of 128 bytes = 32 fp32 elements).
    chunk_bytes: u64,
    /// The first device error reported asynchronously (validation, out of memory, device lost).
    errors: Arc<Mutex<Option<String>>>,
    pub(crate) pipelines: Pipelines,
    pub(crate) pool: Mutex<BufferPool>,
    /// Tensor bytes written to the device so far: tests hold it to one upload per tensor.
    pub(crate) uploaded: AtomicU64,
    /// Tensors whose block norms were computed on the device: tests hold block cases to it.
    pub(crate) device_norm_tensors: AtomicU64,
    /// While `mlprune bench` times kernels: the timestamp queries of every compute pass.
    pub(crate) profiler: Mutex<Option<Profiler>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("chunk_bytes", &self.chunk_bytes)
            .finish()
    }
}

/// The largest chunk of tensor bytes one dispatch sees, whatever the adapter allows.
///
/// Two chunks are in flight (`run.rs`), and each slot holds a chunk's data, its compacted values
/// and its readback (about three chunks), besides the two staging buffers uploads go through: some
/// eight chunks of memory, which is host memory where device memory is (lavapipe, Apple silicon's unified
/// memory) and host-visible memory everywhere for the readback and staging parts. The memory bound
/// leaves 128 MiB beyond the two largest tensors for everything else, so the GPU pipeline's share
/// is kept to about 64 MiB whatever the tensor size; before, chunks were as large as the adapter's
/// binding limit, that is whole tensors, and `--device gpu` peaked at three times the CPU path's
/// memory on lavapipe. Copying 8 MiB over PCIe 4 x16 takes about 0.3 ms, long against the tens of
/// microseconds a dispatch costs, so the size does not throttle the pipeline.
pub const MAX_CHUNK_BYTES: u64 = 8 << 20;

/// How well an adapter suits pruning; higher is better, `None` excludes it.
fn adapter_rank(device_type: wgpu::DeviceType, allow_software: bool) -> Option<u8> {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => Some(4),
        wgpu::DeviceType::IntegratedGpu => Some(3),
        wgpu::DeviceType::VirtualGpu => Some(2),
        wgpu::DeviceType::Other => Some(1),
        wgpu::DeviceType::Cpu => allow_software.then_some(0),
    }
}

/// `MLPRUNE_AUTO_SOFTWARE_GPU=1` lets `--device auto` use a software adapter (tests only: such an
/// adapter loses the race against the CPU kernels anyway).
pub const AUTO_SOFTWARE_ENV: &str = "MLPRUNE_AUTO_SOFTWARE_GPU";

impl GpuContext {
    /// Acquires a device for `policy`: `Cpu` → `None`; `Auto` → the best hardware adapter, or `None`
    /// when there is none (software rasterizers such as lavapipe report `DeviceType::Cpu` and are
    /// slower than the CPU kernels); `Gpu` → the best adapter of any kind, software included, or
    /// `None`. Errors only when an adapter exists but its device cannot be opened.
    pub fn new(policy: DevicePolicy) -> Result<Option<GpuContext>> {
        let allow_software = match policy {
            DevicePolicy::Cpu => return Ok(None),
            // Test hook: lets the tests run `auto`'s race on lavapipe, where no hardware GPU exists.
            DevicePolicy::Auto => std::env::var_os(AUTO_SOFTWARE_ENV).is_some_and(|v| v == "1"),
            DevicePolicy::Gpu => true,
        };
        // `auto` only wants a hardware adapter. Where the system has no GPU device node at all,
        // none can exist, and loading the Vulkan drivers just to find the software one would cost
        // time and about 50 MiB of resident memory (lavapipe links LLVM).
        if !allow_software && !hardware_gpu_node_present() {
            return Ok(None);
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(desc_backends()));
        let best = adapters
            .into_iter()
            .filter_map(|a| adapter_rank(a.get_info().device_type, allow_software).map(|r| (r, a)))
            .max_by_key(|(r, _)| *r);
        let Some((_, adapter)) = best else { return Ok(None) };
        Self::open(adapter).map(Some)
    }

    fn open(adapter: wgpu::Adapter) -> Result<GpuContext> {
        let info = adapter.get_info();
        // The defaults cap buffers at 256 MiB and bindings at 128 MiB; ask for what the adapter has.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("mlprune"),
            // Timestamps let `mlprune bench` time kernels on the device's clock; nothing else
            // depends on them.
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("{}: cannot open device: {e}", info.name)))?;

        let errors: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| record(&sink, e.to_string())));
        let sink = Arc::clone(&errors);
        device.set_device_lost_callback(move |reason, msg| {
            record(&sink, format!("device lost ({reason:?}): {msg}"))
        });

        let binding = limits.max_storage_buffer_binding_size;
        // The readback buffer holds one chunk's values plus its mask: keep it under max_buffer_size.
        let chunk_bytes = binding.min(limits.max_buffer_size / 2).min(MAX_CHUNK_BYTES) / 128 * 128;
        if chunk_bytes < 128 {
            return Err(Error::Gpu(format!(
                "{}: storage buffers are too small ({binding} bytes)",
                info.name
            )));
        }
        let pipelines = build_pipelines(&device);
        let pool = BufferPool::new(&device);
        let ctx = GpuContext {
            device,
            queue,
            info,
            limits,
            chunk_bytes,
            errors,
            pipelines,
            pool: Mutex::new(pool),
            uploaded: AtomicU64::new(0),
            device_norm_tensors: AtomicU64::new(0),
            profiler: Mutex::new(None),
        };
        ctx.check()?;
        Ok(ctx)
    }

    /// The adapter's name and kind, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Cpu, Vulkan)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.device_type, self.info.backend
        )
    }

    /// True for software adapters (`DeviceType::Cpu`, e.g. Mesa lavapipe).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Tensors whose block-sparsity norms this context computed on the device.
    pub fn device_norm_tensors(&self) -> u64 {
        self.device_norm_tensors.load(Ordering::Relaxed)
    }

    /// Tensor bytes uploaded to the device since the context was opened (odd fp16 tails padded to
    /// a word).
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Bytes of tensor data one dispatch sees; larger tensors are processed in chunks.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// Lowers the chunk size (rounded down to a multiple of 128 bytes, at least 128), so tests and
    /// benchmarks can exercise chunking without gigabytes of data. It never raises it.
    pub fn set_max_chunk_bytes(&mut self, bytes: u64) {
        self.chunk_bytes = self.chunk_bytes.min((bytes / 128 * 128).max(128));
    }

    /// The first asynchronous device error since the context was created, as `Error::Gpu`.
    pub(crate) fn check(&self) -> Result<()> {
        let guard = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("error channel poisoned".into()))?;
        match guard.as_ref() {
            Some(msg) => Err(Error::Gpu(format!("{}: {msg}", self.info.name))),
            None => Ok(()),
        }
    }

    /// Waits for `submission` (and the work before it) to finish, then reports any device error.
    pub(crate) fn wait_for(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: None,
        })?;
        self.check()
    }

    /// Polls the device (which runs the callbacks of finished mappings).
    pub(crate) fn poll(&self, poll: wgpu::PollType) -> Result<()> {
        self.device
            .poll(poll)
            .map(drop)
            .map_err(|e| Error::Gpu(format!("{}: {e}", self.info.name)))
    }
}

fn desc_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL
}

fn record(sink: &Mutex<Option<String>>, msg: String) {
    if let Ok(mut slot) = sink.lock() {
        // Keep the first error: later ones are usually its consequences.
        slot.get_or_insert(msg.lines().next().unwrap_or("unknown device error").to_owned());
    }
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn build_pipelines(device: &wgpu::Device) -> Pipelines {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
        },
        count: None,
    }];
    // 1 data, 2 hist, 3 block flags (written by the block-norm pass), 4 mask words, 5 word
    // offsets, 6 block sums, 7 compacted.
    for (binding, read_only) in [
        (1, true),
        (2, false),
        (3, false),
        (4, false),
        (5, false),
        (6, false),
        (7, false),
    ] {
        entries.push(storage(binding, read_only));
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("mlprune kernels"),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("mlprune kernels"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let select = shader_module(device, &SELECT_MODULE);
    let prune = shader_module(device, &PRUNE_MODULE);
    let pipeline =
        |module: &wgpu::ShaderModule, entry: &str| compute_pipeline(device, &pipeline_layout, module, entry);
    Pipelines {
        histogram: pipeline(&select, "histogram"),
        block_norms: OnceLock::new(),
        pack: pipeline(&prune, "pack"),
        scan_local: pipeline(&prune, "scan_local"),
        scan_blocks: pipeline(&prune, "scan_blocks"),
        scatter: pipeline(&prune, "scatter"),
        layout,
        pipeline_layout,
    }
}

fn shader_module(device: &wgpu::Device, m: &ModuleSource) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(m.label),
        source: wgpu::ShaderSource::Wgsl(m.source().into()),
    })
}

fn compute_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::PipelineLayout,
    module: &wgpu::ShaderModule,
    entry: &str,
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(layout),
        module,
        entry_point: Some(entry),
        // The kernels clear the workgroup memory they read; skipping the zero-fill saves time.
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

/// Whether a GPU device node exists: on Linux every hardware Vulkan driver opens one (Mesa's
/// `/dev/dri/renderD*` or `card*`, NVIDIA's `/dev/nvidia*`, WSL's `/dev/dxg`); a software adapter
/// needs none. Elsewhere (macOS: Metal) assume there is one and let wgpu look.
fn hardware_gpu_node_present() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let named = |dir: &str, prefixes: &[&str]| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                prefixes.iter().any(|p| name.starts_with(p))
            })
        })
    };
    named("/dev/dri", &["renderD", "card"]) || named("/dev", &["nvidia", "dxg"])
}
