//! What --report and --force may write, replace or leave behind; signals.

#[allow(unused_imports)]
use crate::*;
