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

/// Tensors of fewer bytes than this are small: what pays for a large tensor costs more than copying
/// a small one. Mapping one costs an `fstat`, an `mmap` and an `munmap` (with its TLB shootdown on
/// every core); handing one to the writer thread, or from the reader thread, is a rendezvous (two
/// context switches). So a small tensor is read rather than mapped ([`mapped`]), copied into the
/// writer's piece ([`background`]), and travels from the reader in a batch (`crate::prefetch`):
/// on models of many small tensors those per-tensor costs were most of the run (issue 18).
pub const SMALL_TENSOR_BYTES: u64 = 64 << 10;

/// Whether a tensor of `bytes` is small (see [`SMALL_TENSOR_BYTES`]).
pub fn is_small_tensor(bytes: u64) -> bool {
    bytes < SMALL_TENSOR_BYTES
}
