//! Typed tensor data: the element container shared by the blob reader/writer and the pruning kernels.

mod data;
mod view;

pub use data::TensorData;
pub use view::TensorView;
