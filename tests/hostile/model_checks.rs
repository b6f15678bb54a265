//! Inconsistent models, terminal-safe inspect output, usage-error format.

#[allow(unused_imports)]
use crate::*;
