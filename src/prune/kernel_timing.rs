//! Release-mode timings of the structural kernels on one LLM-sized fp16 tensor ([4096, 4096]).
//! Ignored by default; run with
//! `cargo test --release --lib kernel_timing -- --ignored --nocapture --test-threads 1`.
//! Prints the best of several runs: the flags alone (fast and reference paths: the ranking / norm
//! work), then the whole kernel and `encode_sparse` alone (its last step).

use std::time::Instant;

use half::f16;

use super::axes::ChannelLayout;
use super::block::reference_flags;
use super::block_norms::fast_block_flags;
use super::nm::argsort_flags;
use super::nm_rank::stable_rank_flags;
use super::{block, encode_sparse, n_m, Apply, KernelError, Outcome};

const ROWS: usize = 4096;
const RUNS: usize = 7;
const SHAPE: [usize; 2] = [ROWS, ROWS];

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

fn best_ms(mut f: impl FnMut() -> u64) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn kept(o: Outcome<f16>) -> u64 {
    match o {
        Outcome::Pruned(s) => s.kept,
        Outcome::Skipped(_) => u64::MAX,
    }
}

fn count(flags: &[bool]) -> u64 {
    flags.iter().filter(|&&p| p).count() as u64
}

fn count_fast(flags: Option<Result<Vec<bool>, KernelError>>) -> u64 {
    flags.and_then(|r| r.ok()).map_or(u64::MAX, |f| count(&f))
}

fn layout(w: &[f16], dim: usize) -> ChannelLayout {
    ChannelLayout::new(&SHAPE, w.len(), dim).expect("valid shape")
}

#[test]
#[ignore = "timing only; run in release mode"]
fn time_fast_flags_4096() {
    let w = weights();
    let w32: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
    for dim in [1, 0] {
        let l = layout(&w, dim);
        let nm = best_ms(|| count(&stable_rank_flags(&w, l, 2, 4)));
        let blk = best_ms(|| count_fast(fast_block_flags(&w, l, 4, 0.5)));
        let blk32 = best_ms(|| count_fast(fast_block_flags(&w32, l, 4, 0.5)));
        println!("dim {dim} fast flags: n_m 2:4 {nm:.1} ms, block 4 {blk:.1} ms (fp32 {blk32:.1} ms)");
    }
}

#[test]
#[ignore = "timing only; run in release mode"]
fn time_reference_flags_4096() {
    let w = weights();
    for dim in [1, 0] {
        let l = layout(&w, dim);
        let nm = best_ms(|| count(&argsort_flags(&w, l, 2, 4)));
        let blk = best_ms(|| count(&reference_flags(&w, l, 4, 0.5).expect("valid")));
        println!("dim {dim} reference flags: n_m 2:4 {nm:.1} ms, block 4 {blk:.1} ms");
    }
}

#[test]
#[ignore = "timing only; run in release mode"]
fn time_structural_kernels_4096() {
    let w = weights();
    let flags: Vec<bool> = (0..w.len()).map(|i| i % 3 == 0).collect();
    let enc_mul = best_ms(|| encode_sparse(&w, Apply::Multiply, |f| flags[f]).kept);
    let enc_where = best_ms(|| encode_sparse(&w, Apply::Where, |f| flags[f]).kept);
    println!("encode_sparse alone: multiply {enc_mul:.1} ms, where {enc_where:.1} ms");
    for dim in [1, 0] {
        let nm = best_ms(|| kept(n_m(&w, &SHAPE, 2, 4, dim).expect("valid")));
        let blk = best_ms(|| kept(block(&w, &SHAPE, 0.5, 4, dim).expect("valid")));
        println!("dim {dim} whole kernel: n_m 2:4 {nm:.1} ms, block 4 {blk:.1} ms");
    }
}
