//! Time and memory in the number of tensors and operations.

#[allow(unused_imports)]
use crate::*;
