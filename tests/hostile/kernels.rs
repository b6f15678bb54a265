//! The `kernels` fuzz target's saved inputs (`tests/corpus/kernels/`): every SIMD and raw-pointer
//! kernel of `prune` on both paths, compared with the portable code and the rule.

use crate::*;

#[test]
fn corpus_kernels() {
    replay("kernels", entry::kernels);
}
