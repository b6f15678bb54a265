//! mlprune: prune Core ML ML Program models exactly like `coremltools.optimize.coreml.prune_weights`.
//!
//! Data flows forward through one module per stage (see `README.md` and the architecture notes):
//! `package` → `proto`/`mil` → `config` → `blob`/`tensor` → `prune` → `mil` rewrite → `package` write.
//!
//! `unsafe` is confined to `prune` (SIMD kernels and raw-pointer compaction), `weights::mapped`
//! (the mmap) and `config::yaml11` (libyaml's event API); every block states why it holds (see the
//! README's "Unsafe code").
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arg_errors;
pub mod bench;
pub mod blob;
pub mod cancel;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod devices;
pub mod dispatch;
pub mod dtype;
pub mod encode;
pub mod engine;
pub mod error;
pub mod global_sparsity;
pub mod gpu;
pub mod inspect;
pub mod joint;
mod json_nodes;
pub mod mil;
pub(crate) mod open_file;
pub mod package;
pub mod plan;
pub mod prefetch;
pub mod proto;
pub mod prune;
pub mod report_stream;
pub mod shared;
pub mod sparsified;
pub mod spill_map;
pub mod synth;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
