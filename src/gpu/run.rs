//! Chunked execution of the kernels: upload a chunk, dispatch, read back. Every pass goes through
//! here, so the limits (binding size, 65535 workgroups per dimension) are handled in one place.

use std::sync::MutexGuard;

use bytemuck::{Pod, Zeroable};

use super::context::GpuContext;
use super::pool::{BufferPool, Needs, StagingRing, HIST_BINS, READBACK_MASK_OFFSET, SLOTS};
use crate::error::{Error, Result};
use crate::prune::axes::ChannelLayout;

/// Threads per workgroup (`WG` in shaders/common.wgsl).
const WG: u64 = 256;
/// Workgroups per grid dimension allowed by WebGPU.
const MAX_GRID: u64 = 65_535;

/// The kernels' uniform block, field for field as `Params` in shaders/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct Params {
    pub n: u32,
    pub base: u32,
    pub is_f16: u32,
    pub mode: u32,
    pub cut: u32,
    pub has_cut: u32,
    pub hist_shift: u32,
    pub hist_mask: u32,
    pub use_prefix: u32,
    pub prefix_shift: u32,
    pub prefix_a: u32,
    pub prefix_b: u32,
    pub channel: u32,
    pub inner: u32,
    pub group: u32,
    pub n_prune: u32,
    pub blocks: u32,
    pub words: u32,
    pub scan_blocks: u32,
    pub first_norm: u32,
    pub norms: u32,
    pub pad: [u32; 3],
}

pub(crate) const MODE_WHERE_CUT: u32 = 0;
pub(crate) const MODE_MULTIPLY_ALL: u32 = 1;
pub(crate) const MODE_BLOCK: u32 = 2;
pub(crate) const MODE_NM: u32 = 3;

/// One tensor's raw bytes on their way to the GPU.
pub(crate) struct TensorBytes<'a> {
    pub bytes: &'a [u8],
    pub n: u64,
    pub is_f16: bool,
    /// Elements per chunk: a multiple of 32 (whole mask words) and of any group band.
    pub chunk_elems: u64,
}

impl TensorBytes<'_> {
    fn elem_bytes(&self) -> u64 {
        if self.is_f16 {
            2
        } else {
            4
        }
    }

    /// The bytes of elements `start..start + len`.
    fn elements(&self, start: u64, len: u64) -> &[u8] {
        let eb = self.elem_bytes() as usize;
        &self.bytes[start as usize * eb..(start + len) as usize * eb]
    }

    fn chunks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.n)
            .step_by(self.chunk_elems.max(1) as usize)
            .map(|s| (s, (self.n - s).min(self.chunk_elems)))
    }
}

/// A histogram pass over one tensor's keys (its elements' magnitudes, or its block norms weighted
/// by their blocks' sizes): the binning fields of the params select the bins (see select.wgsl), and
/// the first `bins` counters come back.
pub(crate) type Histogram<'a> = dyn FnMut(Params, u64) -> Result<Vec<u32>> + 'a;

/// Where `MODE_BLOCK`'s "pruned" bits come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BlockFlags<'a> {
    /// Not a block pass.
    None,
    /// Computed on the host: uploaded into the pool's flag buffer.
    FromHost(&'a [u32]),
    /// Already in the pool's flag buffer ([`GpuContext::device_block_flags`]), this many bytes.
    OnDevice(u64),
}

/// Block sparsity's layout `[outer, channel, inner]` with blocks of `block_size` (at most half
/// the channels, as the work order guarantees) along the channel, as the kernels walk it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockGeometry {
    pub layout: ChannelLayout,
    pub block_size: usize,
}

impl BlockGeometry {
    fn blocks(&self) -> u64 {
        self.layout.channel.div_ceil(self.block_size) as u64
    }

    /// Norms in (outer, block, inner) order.
    pub fn norms(&self) -> u64 {
        self.layout.outer as u64 * self.blocks() * self.layout.inner as u64
    }

    /// The elements a chunk boundary may fall between (see [`ChannelLayout::group_band`]).
    pub fn band(&self) -> u64 {
        self.layout.group_band(self.block_size) as u64
    }

    /// The first norm and the number of norms of the chunk of `len` elements at `start` (both
    /// multiples of [`BlockGeometry::band`]): a band's channels hold whole blocks, `inner` norms
    /// each.
    pub fn norms_in(&self, start: u64, len: u64) -> (u64, u64) {
        let inner = self.layout.inner.max(1) as u64;
        let band = self.band();
        let per_band = (band / inner).div_ceil(self.block_size as u64) * inner;
        (start / band * per_band, len / band * per_band)
    }

    /// `p` with the block layout the kernels read (channel, inner, block size, blocks per run).
    pub fn params(&self, p: Params) -> Params {
        Params {
            channel: self.layout.channel as u32,
            inner: self.layout.inner as u32,
            group: self.block_size as u32,
            blocks: self.blocks() as u32,
            ..p
        }
    }
}

/// The sparse form of one tensor: the mask's bytes and the kept values, typed (`T` is the
/// tensor's element type), so they reach the writer without another copy.
pub(crate) struct Compacted<T> {
    pub mask: Vec<u8>,
    pub values: Vec<T>,
    pub kept: u64,
}

/// A 2-D grid of `workgroups` workgroups (the kernels linearize `id.x + id.y * num.x`).
fn grid(workgroups: u64) -> (u32, u32) {
    let workgroups = workgroups.max(1);
    let x = workgroups.min(MAX_GRID);
    (x as u32, workgroups.div_ceil(x) as u32)
}

/// What of the current tensor is on the device, so that no pass uploads it again: the chunk each
/// slot's data buffer holds (a tensor of one chunk), or the whole tensor in the pool's resident
/// buffer (see [`GpuContext::keep_resident`]).
#[derive(Default)]
pub(crate) struct Resident {
    slots: [Option<u64>; SLOTS],
    whole: bool,
}

/// A chunk whose results are on their way back: its slot, its submission, where its values start
/// in the readback buffer.
struct InFlight {
    slot: usize,
    submission: wgpu::SubmissionIndex,
    len: u64,
    values_at: u64,
    value_bytes: u64,
}

impl GpuContext {
    /// The buffer pool, locked for one tensor: its passes share the data buffer (see [`Resident`]).
    pub(crate) fn lock_pool(&self) -> Result<MutexGuard<'_, BufferPool>> {
        self.pool
            .lock()
            .map_err(|_| Error::Gpu("buffer pool poisoned by an earlier failure".into()))
    }

    /// Grows the pool for `t` (and `flags_bytes` of block flags).
    fn size_pool(&self, pool: &mut BufferPool, t: &TensorBytes<'_>, flags_bytes: u64) -> Result<()> {
        let chunk = t.chunk_elems.min(t.n).max(32);
        let words = chunk.div_ceil(32);
        let needs = Needs {
            data: (chunk * t.elem_bytes()).next_multiple_of(4),
            mask: words * 4,
            block_sums: (words.div_ceil(WG) + 1) * 4,
            flags: flags_bytes.max(4),
        };
        pool.ensure(
            &self.device,
            needs,
            self.chunk_bytes(),
            self.limits().max_buffer_size,
        );
        self.check()
    }

    /// Elements `start..start + len` of `t` into slot `slot`'s data buffer, unless they are on the
    /// device already.
    fn upload(
        &self,
        pool: &mut BufferPool,
        slot: usize,
        t: &TensorBytes<'_>,
        start: u64,
        len: u64,
        resident: &mut Resident,
    ) -> Result<()> {
        if resident.whole || resident.slots[slot] == Some(start) {
            return Ok(());
        }
        self.write_words(
            &mut pool.staging,
            &pool.slots[slot].data,
            0,
            t.elements(start, len),
        )?;
        resident.slots[slot] = Some(start);
        Ok(())
    }

    /// `bytes` into `buffer` at `offset` (a multiple of 4) through the next staging buffer of
    /// `ring`, an odd fp16 tail padded with zeros (copies are whole words). Waits only for that
    /// staging buffer's previous copy, two uploads back.
    fn write_words(
        &self,
        ring: &mut StagingRing,
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let size = (bytes.len() as u64).next_multiple_of(4);
        self.uploaded
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        if size == 0 {
            return Ok(());
        }
        let index = ring.next;
        ring.next = (index + 1) % ring.buffers.len();
        if let Some(previous) = ring.last_use[index].take() {
            self.wait_for(previous)?;
        }
        let staging = &ring.buffers[index];
        // The buffer is idle (its last copy has run): nothing to wait for.
        self.map_buffer(staging, wgpu::MapMode::Write, size, None, "a staging buffer")?;
        {
            let mut view = staging
                .get_mapped_range_mut(0..size)
                .map_err(|e| Error::Gpu(format!("cannot write a staging buffer: {e}")))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
            let pad = size as usize - bytes.len();
            view.slice(bytes.len()..).copy_from_slice(&[0u8; 3][..pad]);
        }
        staging.unmap();
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(staging, 0, buffer, offset, size);
        ring.last_use[index] = Some(self.queue.submit([encoder.finish()]));
        Ok(())
    }

    /// Uploads a tensor of several chunks once, whole, for work that reads it in more than one pass
    /// (the histograms of a magnitude cut, then the mask); every pass then binds its chunks in place
    /// instead of uploading them again. It is written chunk by chunk through the staging ring. A tensor of one chunk stays in its slot anyway; one too large for a buffer, or
    /// whose chunks do not start at offsets the adapter can bind, is uploaded per pass.
    fn keep_resident(
        &self,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        resident: &mut Resident,
    ) -> Result<()> {
        if resident.whole || t.n <= t.chunk_elems {
            return Ok(());
        }
        let eb = t.elem_bytes();
        let bytes = (t.n * eb).next_multiple_of(4);
        let alignment = u64::from(self.limits().min_storage_buffer_offset_alignment).max(4);
        if !(t.chunk_elems * eb).is_multiple_of(alignment) || bytes > self.limits().max_buffer_size {
            return Ok(());
        }
        pool.ensure_resident(&self.device, bytes);
        for (start, len) in t.chunks() {
            self.write_words(
                &mut pool.staging,
                &pool.resident,
                start * eb,
                t.elements(start, len),
            )?;
        }
        resident.whole = true;
        self.check()
    }

    /// The bind group for chunk `start..start + len` of `t` in slot `slot`: the slot's own, or with
    /// the chunk's range of the resident tensor as data.
    fn bind(
        &self,
        pool: &mut BufferPool,
        slot: usize,
        t: &TensorBytes<'_>,
        (start, len): (u64, u64),
        resident: &Resident,
    ) -> wgpu::BindGroup {
        if resident.whole {
            let eb = t.elem_bytes();
            let size = (len * eb).next_multiple_of(4);
            pool.resident_bind_group(slot, &self.device, &self.pipelines, start * eb, size)
        } else {
            pool.bind_group(slot, &self.device, &self.pipelines)
        }
    }

    fn dispatch(
        &self,
        group: &wgpu::BindGroup,
        encoder: &mut wgpu::CommandEncoder,
        steps: &[(&wgpu::ComputePipeline, u64)],
    ) {
        // Only while `mlprune bench` times kernels; a poisoned lock just leaves the pass untimed.
        let mut profiler = self.profiler.lock().ok();
        let timestamp_writes = profiler.as_mut().and_then(|p| p.as_mut()?.next_pass());
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes,
        });
        pass.set_bind_group(0, group, &[]);
        for (pipeline, workgroups) in steps {
            pass.set_pipeline(pipeline);
            let (x, y) = grid(*workgroups);
            pass.dispatch_workgroups(x, y, 1);
        }
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Maps the first `size` bytes of slot `slot`'s readback buffer once `submission` has run
    /// (later submissions may still be running) and hands the mapped bytes to `read`, which copies
    /// out what it needs: one copy, straight from the mapping, and no buffer per chunk.
    fn read_back<T>(
        &self,
        pool: &BufferPool,
        slot: usize,
        size: u64,
        submission: wgpu::SubmissionIndex,
        read: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let readback = &pool.slots[slot].readback;
        self.read_mapped(readback, size, submission, "the readback buffer", read)
    }

    /// Maps the first `size` bytes of `buffer` (a `MAP_READ` buffer that `submission` writes) once
    /// that has run, hands them to `read` and unmaps; `what` names the buffer in errors.
    pub(crate) fn read_mapped<T>(
        &self,
        buffer: &wgpu::Buffer,
        size: u64,
        submission: wgpu::SubmissionIndex,
        what: &str,
        read: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        self.map_buffer(buffer, wgpu::MapMode::Read, size, Some(submission), what)?;
        let result = buffer
            .get_mapped_range(0..size)
            .map_err(|e| Error::Gpu(format!("cannot read {what}: {e}")))
            .and_then(|view| read(&view));
        buffer.unmap();
        result
    }

    /// Maps the first `size` bytes of `buffer` for `mode`, after waiting for `after` (the last
    /// submission using it) when given; `what` names the buffer in errors.
    fn map_buffer(
        &self,
        buffer: &wgpu::Buffer,
        mode: wgpu::MapMode,
        size: u64,
        after: Option<wgpu::SubmissionIndex>,
        what: &str,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(mode, 0..size, move |r| {
            let _ = tx.send(r);
        });
        // Polling runs the callback of a mapping whose buffer is free; waiting for the last
        // submission frees it first.
        match after {
            Some(submission) => self.wait_for(submission)?,
            None => self.poll(wgpu::PollType::Poll)?,
        }
        let mapped = match rx.try_recv() {
            Ok(mapped) => mapped,
            Err(_) => {
                self.poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: None,
                })?;
                rx.recv()
                    .map_err(|_| Error::Gpu(format!("{what} was never mapped")))?
            }
        };
        mapped.map_err(|e| Error::Gpu(format!("cannot map {what}: {e}")))
    }

    /// Histogram of magnitude keys over the whole tensor (`bins` ≤ 131072), counts summed over
    /// chunks on the device. `params` carries the bin selection; n/base are set per chunk.
    pub(crate) fn histogram(
        &self,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        params: Params,
        bins: u64,
        resident: &mut Resident,
    ) -> Result<Vec<u32>> {
        self.size_pool(pool, t, 0)?;
        // A histogram is always followed by another pass over the same tensor.
        self.keep_resident(pool, t, resident)?;
        self.clear_histogram(pool);
        let histogram = &self.pipelines.histogram;
        self.pass_over_chunks(pool, t, resident, |_, len| (histogram, params, len.div_ceil(WG)))?;
        self.read_histogram(pool, bins)
    }

    /// The "pruned" flags of block sparsity, computed on the device (block_norms.wgsl): histograms
    /// of the block norms' keys, each counted once per real element of its block, which
    /// `select_cut` asks for and picks the cut from on the host (the reference percentile); then one
    /// flag bit per norm at or below it, written into the pool's flag buffer for
    /// [`GpuContext::mask_and_compact`]. The tensor is uploaded once for the three passes. `t`'s
    /// chunks must hold whole bands of blocks ([`BlockGeometry::band`]). Returns the flags' size.
    pub(crate) fn device_block_flags(
        &self,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        geometry: BlockGeometry,
        resident: &mut Resident,
        select_cut: impl FnOnce(&mut Histogram<'_>) -> Result<Option<u32>>,
    ) -> Result<u64> {
        let band = geometry.band();
        if band == 0 || !t.chunk_elems.is_multiple_of(band) {
            return Err(Error::Gpu(format!(
                "block norms need chunks of whole bands of {band} elements, got {}",
                t.chunk_elems
            )));
        }
        let flag_bytes = geometry.norms().div_ceil(32) * 4;
        self.size_pool(pool, t, flag_bytes)?;
        self.device_norm_tensors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.keep_resident(pool, t, resident)?;
        let norms_of = |start: u64, len: u64, params: Params| {
            let (first, count) = geometry.norms_in(start, len);
            let p = Params {
                first_norm: first as u32,
                norms: count as u32,
                ..params
            };
            (p, count.div_ceil(WG))
        };
        let passes = self.pipelines.block_norms(&self.device);
        let cut = {
            let mut histogram = |binning: Params, bins: u64| {
                self.clear_histogram(pool);
                let with_bins = geometry.params(binning);
                self.pass_over_chunks(pool, t, resident, |start, len| {
                    let (p, groups) = norms_of(start, len, with_bins);
                    (&passes.histogram, p, groups)
                })?;
                self.read_histogram(pool, bins)
            };
            select_cut(&mut histogram)?
        };
        let mut encoder = self.encoder();
        encoder.clear_buffer(&pool.flags, 0, Some(flag_bytes));
        self.queue.submit([encoder.finish()]);
        if let Some(cut) = cut {
            let flags = &passes.flags;
            let with_cut = geometry.params(Params {
                cut,
                has_cut: 1,
                ..Params::default()
            });
            self.pass_over_chunks(pool, t, resident, |start, len| {
                let (p, groups) = norms_of(start, len, with_cut);
                (flags, p, groups)
            })?;
        }
        Ok(flag_bytes)
    }

    fn clear_histogram(&self, pool: &BufferPool) {
        let mut encoder = self.encoder();
        encoder.clear_buffer(&pool.hist, 0, None);
        self.queue.submit([encoder.finish()]);
    }

    /// One dispatch per chunk of `t`, through slot 0: `step(start, len)` names the pipeline, its
    /// parameters (n, base and dtype are filled in here) and its workgroups. The passes write only
    /// shared buffers (histogram, flags), so the chunks need no second slot: the queue orders each
    /// upload after the pass before.
    fn pass_over_chunks<'p>(
        &self,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        resident: &mut Resident,
        mut step: impl FnMut(u64, u64) -> (&'p wgpu::ComputePipeline, Params, u64),
    ) -> Result<()> {
        const SLOT: usize = 0;
        for (start, len) in t.chunks() {
            self.upload(pool, SLOT, t, start, len, resident)?;
            let (pipeline, params, workgroups) = step(start, len);
            let p = Params {
                n: len as u32,
                base: start as u32,
                is_f16: t.is_f16 as u32,
                ..params
            };
            self.queue
                .write_buffer(&pool.slots[SLOT].params, 0, bytemuck::bytes_of(&p));
            let mut encoder = self.encoder();
            let group = self.bind(pool, SLOT, t, (start, len), resident);
            self.dispatch(&group, &mut encoder, &[(pipeline, workgroups)]);
            self.queue.submit([encoder.finish()]);
        }
        Ok(())
    }

    /// The first `bins` counters of the histogram, once every pass before has run.
    fn read_histogram(&self, pool: &BufferPool, bins: u64) -> Result<Vec<u32>> {
        const SLOT: usize = 0;
        let bins = bins.min(HIST_BINS);
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(&pool.hist, 0, &pool.slots[SLOT].readback, 0, bins * 4);
        let submission = self.queue.submit([encoder.finish()]);
        self.read_back(pool, SLOT, bins * 4, submission, |bytes| {
            Ok(bytes
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect())
        })
    }

    /// Keep-mask, packing and compaction of every chunk with the decision in `params`;
    /// `flags` gives the block-pruned bits for `MODE_BLOCK`.
    ///
    /// Chunks alternate between the pool's two slots and are pipelined: chunk i+1 is uploaded and
    /// submitted before chunk i's results are waited for, so the device computes one chunk while
    /// the host copies the next one in and the previous one out.
    pub(crate) fn mask_and_compact<T: Pod>(
        &self,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        params: Params,
        flags: BlockFlags<'_>,
        resident: &mut Resident,
        mut values: Vec<T>,
    ) -> Result<Compacted<T>> {
        match flags {
            BlockFlags::None => self.size_pool(pool, t, 0)?,
            BlockFlags::OnDevice(bytes) => self.size_pool(pool, t, bytes)?,
            BlockFlags::FromHost(words) => {
                self.size_pool(pool, t, words.len() as u64 * 4)?;
                self.queue
                    .write_buffer(&pool.flags, 0, bytemuck::cast_slice(words));
            }
        }
        let eb = t.elem_bytes();
        // Reserved once, at most the whole tensor: chunks append without regrowing (each regrowth
        // copies everything so far into fresh pages); pages never written are never touched.
        // `values` comes empty, in a buffer the writer has finished with where there is one.
        values.reserve(t.n as usize);
        let mut out = Compacted {
            mask: Vec::with_capacity(t.n.div_ceil(8) as usize),
            values,
            kept: 0,
        };
        let mut in_flight: Option<InFlight> = None;
        for (i, (start, len)) in t.chunks().enumerate() {
            let slot = i % SLOTS;
            self.upload(pool, slot, t, start, len, resident)?;
            let words = len.div_ceil(32);
            let scan_blocks = words.div_ceil(WG);
            let p = Params {
                n: len as u32,
                base: start as u32,
                is_f16: t.is_f16 as u32,
                words: words as u32,
                scan_blocks: scan_blocks as u32,
                ..params
            };
            let buffers = &pool.slots[slot];
            self.queue
                .write_buffer(&buffers.params, 0, bytemuck::bytes_of(&p));
            let value_bytes = (len * eb).next_multiple_of(4);
            let mask_bytes = words * 4;
            let values_at = READBACK_MASK_OFFSET + mask_bytes.next_multiple_of(256);
            let mut encoder = self.encoder();
            encoder.clear_buffer(&buffers.compacted, 0, Some(value_bytes));
            let pl = &self.pipelines;
            let elem_groups = len.div_ceil(WG);
            let group = self.bind(pool, slot, t, (start, len), resident);
            self.dispatch(
                &group,
                &mut encoder,
                &[
                    (&pl.pack, elem_groups),
                    (&pl.scan_local, scan_blocks),
                    (&pl.scan_blocks, 1),
                    (&pl.scatter, elem_groups),
                ],
            );
            let buffers = &pool.slots[slot];
            encoder.copy_buffer_to_buffer(&buffers.block_sums, scan_blocks * 4, &buffers.readback, 0, 4);
            encoder.copy_buffer_to_buffer(
                &buffers.mask,
                0,
                &buffers.readback,
                READBACK_MASK_OFFSET,
                mask_bytes,
            );
            encoder.copy_buffer_to_buffer(&buffers.compacted, 0, &buffers.readback, values_at, value_bytes);
            let submission = self.queue.submit([encoder.finish()]);
            // The previous chunk, in the other slot, is collected while this one computes. Its
            // slot is free again before the next upload into it (two chunks from now).
            if let Some(previous) = in_flight.replace(InFlight {
                slot,
                submission,
                len,
                values_at,
                value_bytes,
            }) {
                self.collect(pool, previous, eb, &mut out)?;
            }
        }
        if let Some(last) = in_flight {
            self.collect(pool, last, eb, &mut out)?;
        }
        Ok(out)
    }

    /// Waits for chunk `c`'s results and appends them to `out`, copied straight from the mapping.
    fn collect<T: Pod>(&self, pool: &BufferPool, c: InFlight, eb: u64, out: &mut Compacted<T>) -> Result<()> {
        self.read_back(pool, c.slot, c.values_at + c.value_bytes, c.submission, |bytes| {
            let kept = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
            if kept > c.len {
                return Err(Error::Gpu(format!(
                    "compaction counted {kept} kept values in a chunk of {}",
                    c.len
                )));
            }
            let mask_start = READBACK_MASK_OFFSET as usize;
            out.mask
                .extend_from_slice(&bytes[mask_start..mask_start + c.len.div_ceil(8) as usize]);
            let values = &bytes[c.values_at as usize..(c.values_at + kept * eb) as usize];
            match bytemuck::try_cast_slice::<u8, T>(values) {
                Ok(typed) => out.values.extend_from_slice(typed),
                // A mapping is normally aligned far beyond T; if not, read each value unaligned.
                Err(_) => out.values.extend(
                    values
                        .chunks_exact(std::mem::size_of::<T>())
                        .map(bytemuck::pod_read_unaligned::<T>),
                ),
            }
            out.kept += kept;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_stay_within_the_per_dimension_limit() {
        assert_eq!(grid(0), (1, 1));
        assert_eq!(grid(65_535), (65_535, 1));
        assert_eq!(grid(65_536), (65_535, 2));
        let (x, y) = grid(262_144);
        assert!(u64::from(x) * u64::from(y) >= 262_144 && y <= 65_535);
    }

    #[test]
    fn params_match_the_wgsl_struct_size() {
        assert_eq!(
            std::mem::size_of::<Params>() as u64,
            super::super::context::PARAMS_BYTES
        );
    }
}
