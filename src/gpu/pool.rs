//! The buffers every kernel binds, allocated once per context and grown (never shrunk) when a
//! tensor needs more; tensors reuse them. Chunk buffers come in two slots for the upload / compute /
//! readback pipeline. A slot's bind group is rebuilt only when one of its buffers is replaced.

use super::context::{Pipelines, PARAMS_BYTES};

/// Histogram bins: 32768 for one pass, plus 65536 × 2 for the fp32 refinement pass.
pub(crate) const HIST_BINS: u64 = 131_072;

/// Offsets inside the readback buffer: the kept count, then mask words, then values.
pub(crate) const READBACK_MASK_OFFSET: u64 = 256;

/// Sizes (bytes) a tensor chunk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Tensor bytes of the largest chunk (rounded up to whole words).
    pub data: u64,
    /// Mask words of the largest chunk, in bytes.
    pub mask: u64,
    /// Scan block totals plus the grand total, in bytes.
    pub block_sums: u64,
    /// Block-pruned flag words, in bytes.
    pub flags: u64,
}

/// The buffers of one chunk in flight. There are two, so that chunk i+1 is uploaded and computed
/// while chunk i is read back (see `GpuContext::mask_and_compact`).
pub(crate) struct Slot {
    pub params: wgpu::Buffer,
    pub data: wgpu::Buffer,
    pub mask: wgpu::Buffer,
    pub offsets: wgpu::Buffer,
    pub block_sums: wgpu::Buffer,
    pub compacted: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    bind_group: Option<wgpu::BindGroup>,
}

/// Chunk slots in the pipeline.
pub(crate) const SLOTS: usize = 2;

pub(crate) struct BufferPool {
    /// Shared by the slots: the histogram accumulates over every chunk of a tensor, and the block
    /// flags cover the whole tensor.
    pub hist: wgpu::Buffer,
    pub flags: wgpu::Buffer,
    /// A whole tensor of several chunks that more than one pass reads (histograms, then the mask):
    /// uploaded once, and bound chunk by chunk in place of a slot's data buffer.
    pub resident: wgpu::Buffer,
    pub slots: [Slot; SLOTS],
    pub staging: StagingRing,
}

/// Host-visible buffers every upload goes through, a chunk each, reused in turn: the host writes
/// chunk i+1 into one while the device copies chunk i out of the other. `queue.write_buffer` would
/// allocate fresh staging memory for every call instead (fresh pages: page faults per byte).
pub(crate) struct StagingRing {
    pub buffers: [wgpu::Buffer; SLOTS],
    /// The submission that last copied out of each buffer: it must have run before the buffer is
    /// written again.
    pub last_use: [Option<wgpu::SubmissionIndex>; SLOTS],
    pub next: usize,
}

fn buffer(device: &wgpu::Device, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: false,
    })
}

/// Grown size: at least `need` (and 16 bytes), rounded up to a power of two but never past `cap`.
fn grown(need: u64, cap: u64) -> u64 {
    let need = need.max(16).next_multiple_of(4);
    need.checked_next_power_of_two()
        .unwrap_or(need)
        .min(cap.max(need))
}

fn staging(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    buffer(device, "staging", size, wgpu::BufferUsages::MAP_WRITE | COPY_SRC)
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE;
const COPY_SRC: wgpu::BufferUsages = wgpu::BufferUsages::COPY_SRC;
const COPY_DST: wgpu::BufferUsages = wgpu::BufferUsages::COPY_DST;

impl Slot {
    fn new(device: &wgpu::Device) -> Self {
        Slot {
            params: buffer(
                device,
                "params",
                PARAMS_BYTES,
                wgpu::BufferUsages::UNIFORM | COPY_DST,
            ),
            data: buffer(device, "data", 16, STORAGE | COPY_DST),
            mask: buffer(device, "mask words", 16, STORAGE | COPY_SRC),
            offsets: buffer(device, "word offsets", 16, STORAGE),
            block_sums: buffer(device, "block sums", 16, STORAGE | COPY_SRC),
            compacted: buffer(device, "compacted", 16, STORAGE | COPY_SRC | COPY_DST),
            readback: buffer(
                device,
                "readback",
                HIST_BINS * 4,
                wgpu::BufferUsages::MAP_READ | COPY_DST,
            ),
            bind_group: None,
        }
    }
}

impl BufferPool {
    pub fn new(device: &wgpu::Device) -> Self {
        BufferPool {
            hist: buffer(device, "histogram", HIST_BINS * 4, STORAGE | COPY_SRC | COPY_DST),
            flags: buffer(device, "block flags", 16, STORAGE | COPY_DST),
            resident: buffer(device, "resident tensor", 16, STORAGE | COPY_DST),
            slots: [Slot::new(device), Slot::new(device)],
            staging: StagingRing {
                buffers: [staging(device, 16), staging(device, 16)],
                last_use: [None, None],
                next: 0,
            },
        }
    }

    /// Grows whatever is too small for `needs`, in every slot; `cap` (the chunk size) bounds the
    /// bound buffers, and the readback buffers are bounded by what a chunk of `cap` bytes reads back
    /// (and by `max_buffer`).
    pub fn ensure(&mut self, device: &wgpu::Device, needs: Needs, cap: u64, max_buffer: u64) {
        let replace = |buf: &mut wgpu::Buffer, need: u64, label: &str, usage: wgpu::BufferUsages| {
            if buf.size() < need {
                *buf = buffer(device, label, grown(need, cap), usage);
                true
            } else {
                false
            }
        };
        let readback_of = |mask: u64, data: u64| READBACK_MASK_OFFSET + mask.next_multiple_of(256) + data;
        let readback_need = readback_of(needs.mask, needs.data).max(HIST_BINS * 4);
        // A full chunk's mask words and values: growing past that would only round up.
        let readback_cap = readback_of(cap.div_ceil(2).div_ceil(32) * 4, cap).min(max_buffer);
        let shared_changed = replace(&mut self.flags, needs.flags, "block flags", STORAGE | COPY_DST);
        for (buf, last_use) in self.staging.buffers.iter_mut().zip(&mut self.staging.last_use) {
            if buf.size() < needs.data {
                *buf = staging(device, grown(needs.data, cap));
                // A new buffer has no copy pending (wgpu keeps the old one alive for its own).
                *last_use = None;
            }
        }
        for slot in &mut self.slots {
            let mut changed = shared_changed;
            changed |= replace(&mut slot.data, needs.data, "data", STORAGE | COPY_DST);
            changed |= replace(&mut slot.mask, needs.mask, "mask words", STORAGE | COPY_SRC);
            changed |= replace(&mut slot.offsets, needs.mask, "word offsets", STORAGE);
            changed |= replace(
                &mut slot.block_sums,
                needs.block_sums,
                "block sums",
                STORAGE | COPY_SRC,
            );
            changed |= replace(
                &mut slot.compacted,
                needs.data,
                "compacted",
                STORAGE | COPY_SRC | COPY_DST,
            );
            // The readback buffer is not bound: growing it keeps the bind group.
            if slot.readback.size() < readback_need {
                let size = grown(readback_need, readback_cap);
                slot.readback = buffer(device, "readback", size, wgpu::BufferUsages::MAP_READ | COPY_DST);
            }
            if changed {
                slot.bind_group = None;
            }
        }
    }

    /// Grows the resident buffer to `bytes` (exactly: it holds one tensor, and a larger one later
    /// replaces it).
    pub fn ensure_resident(&mut self, device: &wgpu::Device, bytes: u64) {
        if self.resident.size() < bytes {
            self.resident = buffer(device, "resident tensor", bytes, STORAGE | COPY_DST);
        }
    }

    /// The bind group over slot `index`'s buffers and the shared ones (cached until a buffer is
    /// replaced).
    pub fn bind_group(
        &mut self,
        index: usize,
        device: &wgpu::Device,
        pipelines: &Pipelines,
    ) -> wgpu::BindGroup {
        if let Some(group) = &self.slots[index].bind_group {
            return group.clone();
        }
        let data = self.slots[index].data.as_entire_buffer_binding();
        let group = self.group(index, device, pipelines, data);
        self.slots[index].bind_group = Some(group.clone());
        group
    }

    /// The bind group of slot `index` with `offset..offset + size` of the resident tensor as its
    /// data: one per chunk of a resident tensor, not cached.
    pub fn resident_bind_group(
        &self,
        index: usize,
        device: &wgpu::Device,
        pipelines: &Pipelines,
        offset: u64,
        size: u64,
    ) -> wgpu::BindGroup {
        let data = wgpu::BufferBinding {
            buffer: &self.resident,
            offset,
            size: wgpu::BufferSize::new(size),
        };
        self.group(index, device, pipelines, data)
    }

    fn group<'a>(
        &'a self,
        index: usize,
        device: &wgpu::Device,
        pipelines: &Pipelines,
        data: wgpu::BufferBinding<'a>,
    ) -> wgpu::BindGroup {
        let slot = &self.slots[index];
        fn whole(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(b.as_entire_buffer_binding())
        }
        let resources = [
            whole(&slot.params),
            wgpu::BindingResource::Buffer(data),
            whole(&self.hist),
            whole(&self.flags),
            whole(&slot.mask),
            whole(&slot.offsets),
            whole(&slot.block_sums),
            whole(&slot.compacted),
        ];
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mlprune kernels"),
            layout: &pipelines.layout,
            entries: &entries,
        })
    }
}
