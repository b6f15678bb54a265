//! Fuzz targets for mlprune's untrusted-input readers. The entry points live in `entry.rs`, which
//! `tests/hostile.rs` also compiles (via `#[path]`), so CI replays `tests/corpus/<target>/` through
//! exactly the code the fuzzer ran.

#[path = "entry.rs"]
pub mod entry;
