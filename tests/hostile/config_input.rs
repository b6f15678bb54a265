//! Config files: special files, size and depth caps, lookups, encodings, NaN.

#[allow(unused_imports)]
use crate::*;
