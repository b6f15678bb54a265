//! Release-mode timings of the structural kernels on one LLM-sized fp16 tensor ([4096, 4096]).
//! Ignored by default; run with
//! `cargo test --release --lib kernel_timing -- --ignored --nocapture --test-threads 1`.
//! Prints the best of several runs: the full kernel, and `encode_sparse` alone (its last step), so
//! the difference is the ranking / norm work.

use std::time::Instant;

use half::f16;

use super::axes::ChannelLayout;
use super::block::reference_flags;
use super::block_norms::fast_block_flags;
use super::nm::argsort_flags;
use super::nm_rank::stable_rank_flags;
use super::{block, encode_sparse, n_m, Apply, Outcome};

const ROWS: usize = 4096;
const RUNS: usize = 7;

/// Random normal-ish fp16 values (sum of uniforms), reproducible.
fn weights() -> Vec<f16> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..ROWS * ROWS)
        .map(|_| f16::from_f32((next() + next() + next()) * 0.05))
        .collect()
}

fn best_ms(mut f: impl FnMut() -> u64) -> (f64, u64) {
    let mut best = f64::INFINITY;
    let mut last = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        last = std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    (best, last)
}

fn kept(o: Outcome<f16>) -> u64 {
    match o {
        Outcome::Pruned(s) => s.kept,
        Outcome::Skipped(_) => u64::MAX,
    }
}

#[test]
#[ignore = "timing only; run in release mode"]
fn time_structural_kernels_4096() {
    let w = weights();
    let shape = [ROWS, ROWS];
    let flags: Vec<bool> = (0..w.len()).map(|i| i % 3 == 0).collect();
    let (enc_mul, _) = best_ms(|| encode_sparse(&w, Apply::Multiply, |f| flags[f]).kept);
    let (enc_where, _) = best_ms(|| encode_sparse(&w, Apply::Where, |f| flags[f]).kept);
    println!("encode_sparse alone: multiply {enc_mul:.1} ms, where {enc_where:.1} ms");
    let count = |f: &[bool]| f.iter().filter(|&&p| p).count() as u64;
    for dim in [1, 0] {
        let layout = ChannelLayout::new(&shape, w.len(), dim).expect("valid");
        let (fast, _) = best_ms(|| count(&stable_rank_flags(&w, layout, 2, 4)));
        let (slow, _) = best_ms(|| count(&argsort_flags(&w, layout, 2, 4)));
        println!("n_m 2:4 dim {dim} flags: fast {fast:.1} ms, reference {slow:.1} ms");
        let flags = |f: Option<Result<Vec<bool>, super::KernelError>>| f.and_then(|r| r.ok()).map_or(0, |f| count(&f));
        let (fast, _) = best_ms(|| flags(fast_block_flags(&w, layout, 4, 0.5)));
        let (slow, _) = best_ms(|| count(&reference_flags(&w, layout, 4, 0.5).expect("valid")));
        println!("block 4 dim {dim} flags: fast {fast:.1} ms, reference {slow:.1} ms");
    }
    for dim in [1, 0] {
        let (t, k) = best_ms(|| kept(n_m(&w, &shape, 2, 4, dim).expect("valid")));
        println!("n_m 2:4 dim {dim}: {t:.1} ms total, ~{:.1} ms before encode (kept {k})", t - enc_mul);
    }
    for dim in [0, 1] {
        let (t, k) = best_ms(|| kept(block(&w, &shape, 0.5, 4, dim).expect("valid")));
        println!("block 4 dim {dim}: {t:.1} ms total, ~{:.1} ms before encode (kept {k})", t - enc_where);
    }
}
