//! Weight tensors as the engine sees them: where a value's data lives (`source`) and how a fresh,
//! compact `weight.bin` is rebuilt while the program is walked (`rebuild`), its bytes written by a
//! background thread (`background`) and flushed to disk as they go (`syncer`).

pub mod background;
pub mod mapped;
pub mod rebuild;
pub mod source;
pub mod syncer;

pub use rebuild::WeightFileBuilder;
pub use source::{TensorMeta, WeightSource};
