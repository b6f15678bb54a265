//! Borrowed typed tensor values: a view into memory someone else owns (a mapped weight file).

use half::f16;

use super::TensorData;

/// The values of a float tensor, borrowed. Only the dtypes the engine maps from `weight.bin`.
#[derive(Debug, Clone, Copy)]
pub enum TensorView<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl TensorView<'_> {
    pub fn len(&self) -> usize {
        match self {
            TensorView::F16(v) => v.len(),
            TensorView::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy that owns its values.
    pub fn to_owned(&self) -> TensorData {
        match self {
            TensorView::F16(v) => TensorData::F16(v.to_vec()),
            TensorView::F32(v) => TensorData::F32(v.to_vec()),
        }
    }
}
