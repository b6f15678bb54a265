//! Typed tensor data: the element container shared by the blob reader/writer and the pruning kernels.

mod data;
mod view;

pub use data::TensorData;
pub use view::{TensorView, ViewWithSpare};

/// `buffer` resized to `n` elements, or a fresh one if it cannot hold them; the contents are to be
/// overwritten. Only elements beyond the buffer's current length are zeroed, and fresh memory comes
/// zeroed from the allocator, untouched: its pages are faulted in only where they are written
/// (a `resize` would fault every page in just to write zeros).
pub fn reuse_or_zeroed<T: bytemuck::Pod>(mut buffer: Vec<T>, n: usize) -> Vec<T> {
    if buffer.capacity() < n {
        return bytemuck::zeroed_vec(n);
    }
    buffer.truncate(n);
    buffer.resize(n, T::zeroed());
    buffer
}
