//! Zipped inputs: only what the package uses is extracted, within the disk it declares.

#[allow(unused_imports)]
use crate::*;
