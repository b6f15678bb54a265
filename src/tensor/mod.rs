//! Typed tensor data: the element container shared by the blob reader/writer and the pruning kernels.

mod data;

pub use data::TensorData;
