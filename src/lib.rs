//! mlprune: prune Core ML ML Program models exactly like `coremltools.optimize.coreml.prune_weights`.
//!
//! Data flows forward through one module per stage (see `README.md` and the architecture notes):
//! `package` → `proto`/`mil` → `config` → `blob`/`tensor` → `prune` → `mil` rewrite → `package` write.

pub mod blob;
pub mod dtype;
pub mod error;
pub mod proto;
pub mod prune;

pub use error::{Error, Result};
