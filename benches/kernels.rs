//! CPU vs GPU pruning kernels: magnitude, block, n:m and threshold, fp16 and fp32, at 1M, 16M and
//! 64M elements (throughput in input bytes). See benches/README.md.
//!
//! `MLPRUNE_BENCH_SIZES` picks sizes in Mi-elements (default `1,16,64`), e.g.
//! `MLPRUNE_BENCH_SIZES=1 cargo bench --bench kernels`. Without a GPU adapter only the CPU runs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use mlprune::config::OpConfig;
use mlprune::dispatch::{Backend, CpuBackend};
use mlprune::engine::DevicePolicy;
use mlprune::gpu::{GpuBackend, GpuContext};
use mlprune::tensor::TensorData;

fn sizes() -> Vec<usize> {
    std::env::var("MLPRUNE_BENCH_SIZES")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .map(|m| m << 20)
        .collect()
}

fn tensor(n: usize, fp16: bool) -> TensorData {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let values = (0..n).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    });
    if fp16 {
        TensorData::F16(values.map(f16::from_f32).collect())
    } else {
        TensorData::F32(values.collect())
    }
}

fn configs() -> Vec<(&'static str, OpConfig)> {
    let magnitude = |s, block_size, n_m_ratio, dim| OpConfig::Magnitude {
        target_sparsity: s,
        block_size,
        n_m_ratio,
        dim,
        weight_threshold: None,
    };
    vec![
        ("magnitude", magnitude(Some(0.5), None, None, None)),
        ("block", magnitude(Some(0.5), Some(4), None, Some(0))),
        ("n_m", magnitude(None, None, Some((2, 4)), Some(1))),
        (
            "threshold",
            OpConfig::Threshold {
                threshold: 0.1,
                minimum_sparsity_percentile: 0.0,
                weight_threshold: None,
            },
        ),
    ]
}

fn kernels(c: &mut Criterion) {
    let gpu = GpuContext::new(DevicePolicy::Gpu)
        .ok()
        .flatten()
        .map(GpuBackend::new);
    match &gpu {
        Some(g) => eprintln!("GPU: {}", g.context().describe()),
        None => eprintln!("no GPU adapter: benchmarking the CPU only"),
    }
    for n in sizes() {
        for fp16 in [true, false] {
            let data = tensor(n, fp16);
            // Rows of 1024: a [n / 1024, 1024] weight.
            let shape = [(n / 1024) as u64, 1024];
            let dtype = if fp16 { "fp16" } else { "fp32" };
            for (mode, config) in configs() {
                let mut group = c.benchmark_group(format!("{mode}/{dtype}"));
                group.throughput(Throughput::Bytes((n * if fp16 { 2 } else { 4 }) as u64));
                group.sample_size(10);
                let label = format!("{}M", n >> 20);
                group.bench_with_input(BenchmarkId::new("cpu", &label), &data, |b, d| {
                    b.iter(|| black_box(CpuBackend.run(&config, d, &shape, "bench")))
                });
                if let Some(g) = &gpu {
                    group.bench_with_input(BenchmarkId::new("gpu", &label), &data, |b, d| {
                        b.iter(|| black_box(g.run(&config, d, &shape, "bench")))
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
