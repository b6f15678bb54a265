//! What `mlprune bench` measures on the device itself: kernel time from the adapter's own clock
//! (timestamp queries, where the adapter has them) and a buffer-to-buffer copy as the device's own
//! bandwidth ceiling. End-to-end time minus kernel time is what uploads, read-backs and the host
//! cost.

use std::time::Instant;

use super::context::GpuContext;
use crate::error::{Error, Result};

/// Compute passes timed per run: two queries each, and a query set holds at most
/// `wgpu::QUERY_SET_MAX_QUERIES`.
const MAX_PASSES: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

/// The timestamp queries of one timed run.
pub(crate) struct Profiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Queries written so far (two per pass).
    used: u32,
    /// Passes that ran after the query set was full, untimed.
    untimed: u32,
}

/// Kernel time of one run, from the device's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelTime {
    pub seconds: f64,
    pub passes: u32,
    /// Passes the query set had no room for: their time is missing from `seconds`.
    pub untimed: u32,
}

impl Profiler {
    fn new(device: &wgpu::Device) -> Self {
        let bytes = u64::from(MAX_PASSES) * 2 * 8;
        Profiler {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: MAX_PASSES * 2,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("resolved timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            used: 0,
            untimed: 0,
        }
    }

    /// The timestamp writes for the next compute pass, or `None` once the query set is full.
    pub(crate) fn next_pass(&mut self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        if self.used + 2 > MAX_PASSES * 2 {
            self.untimed += 1;
            return None;
        }
        let begin = self.used;
        self.used += 2;
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(begin),
            end_of_pass_write_index: Some(begin + 1),
        })
    }
}

impl GpuContext {
    /// Whether the adapter can time kernels (`wgpu::Features::TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Starts timing every compute pass until [`GpuContext::finish_kernel_timing`]; `false` (and
    /// nothing timed) where the adapter has no timestamp queries.
    pub fn start_kernel_timing(&self) -> Result<bool> {
        if !self.has_timestamps() {
            return Ok(false);
        }
        *self.profiler()? = Some(Profiler::new(&self.device));
        Ok(true)
    }

    /// The kernel time of the passes since [`GpuContext::start_kernel_timing`]; `None` if timing
    /// was not started.
    pub fn finish_kernel_timing(&self) -> Result<Option<KernelTime>> {
        let Some(p) = self.profiler()?.take() else {
            return Ok(None);
        };
        if p.used == 0 {
            return Ok(Some(KernelTime {
                seconds: 0.0,
                passes: 0,
                untimed: p.untimed,
            }));
        }
        let bytes = u64::from(p.used) * 8;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.resolve_query_set(&p.queries, 0..p.used, &p.resolved, 0);
        encoder.copy_buffer_to_buffer(&p.resolved, 0, &p.readback, 0, bytes);
        let submission = self.queue.submit([encoder.finish()]);
        let ticks: u64 = self.read_mapped(&p.readback, bytes, submission, "the timestamps", |view| {
            Ok(view
                .chunks_exact(16)
                .map(|pair| {
                    let at = |i: usize| u64::from_le_bytes(pair[i..i + 8].try_into().unwrap_or([0; 8]));
                    at(8).saturating_sub(at(0))
                })
                .sum())
        })?;
        let period_ns = f64::from(self.queue.get_timestamp_period());
        Ok(Some(KernelTime {
            seconds: ticks as f64 * period_ns * 1e-9,
            passes: p.used / 2,
            untimed: p.untimed,
        }))
    }

    fn profiler(&self) -> Result<std::sync::MutexGuard<'_, Option<Profiler>>> {
        self.profiler
            .lock()
            .map_err(|_| Error::Gpu("kernel timing poisoned by an earlier failure".into()))
    }

    /// The device's own bandwidth ceiling: GB/s of a buffer-to-buffer copy of `bytes` (capped by
    /// the adapter's buffer size), the best of `runs` after one warm-up copy, timed from submission
    /// to completion; and the bytes copied.
    pub fn copy_bandwidth(&self, bytes: u64, runs: u32) -> Result<(f64, u64)> {
        let bytes = bytes.min(self.limits().max_buffer_size).max(4) / 4 * 4;
        let buffer = |label, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let from = buffer(
            "copy source",
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let to = buffer("copy destination", wgpu::BufferUsages::COPY_DST);
        let copy = || -> Result<f64> {
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            encoder.copy_buffer_to_buffer(&from, 0, &to, 0, bytes);
            let started = Instant::now();
            let submission = self.queue.submit([encoder.finish()]);
            self.wait_for(submission)?;
            Ok(started.elapsed().as_secs_f64())
        };
        // The first copy also clears both buffers (wgpu zero-fills on first use).
        copy()?;
        let mut best = f64::INFINITY;
        for _ in 0..runs.max(1) {
            best = best.min(copy()?);
        }
        Ok((bytes as f64 / best / 1e9, bytes))
    }
}
