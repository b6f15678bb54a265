//! Borrowed typed tensor values: a view into memory someone else owns (a mapped weight file).

use half::f16;

use super::TensorData;

/// The values of a float tensor, borrowed. Only the dtypes the engine maps from `weight.bin`.
#[derive(Debug, Clone, Copy)]
pub enum TensorView<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
}

impl<'a> TensorView<'a> {
    pub fn len(&self) -> usize {
        match self {
            TensorView::F16(v) => v.len(),
            TensorView::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> crate::dtype::ScalarType {
        match self {
            TensorView::F16(_) => crate::dtype::ScalarType::Float16,
            TensorView::F32(_) => crate::dtype::ScalarType::Float32,
        }
    }

    /// A copy that owns its values.
    pub fn to_owned(&self) -> TensorData {
        match self {
            TensorView::F16(v) => TensorData::F16(v.to_vec()),
            TensorView::F32(v) => TensorData::F32(v.to_vec()),
        }
    }

    /// The values with an empty vector of their own type for a kernel's output: `out`'s
    /// allocation (a buffer the writer has finished with) when it has that type, else a new one.
    pub fn with_spare(self, out: Option<TensorData>) -> ViewWithSpare<'a> {
        match (self, out) {
            (TensorView::F16(values), Some(TensorData::F16(mut spare))) => {
                spare.clear();
                ViewWithSpare::F16(values, spare)
            }
            (TensorView::F16(values), _) => ViewWithSpare::F16(values, Vec::new()),
            (TensorView::F32(values), Some(TensorData::F32(mut spare))) => {
                spare.clear();
                ViewWithSpare::F32(values, spare)
            }
            (TensorView::F32(values), _) => ViewWithSpare::F32(values, Vec::new()),
        }
    }
}

/// Borrowed values and an empty vector of the same element type to put the kept ones in
/// ([`TensorView::with_spare`]).
pub enum ViewWithSpare<'a> {
    F16(&'a [f16], Vec<f16>),
    F32(&'a [f32], Vec<f32>),
}
