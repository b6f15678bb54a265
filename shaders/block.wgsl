// Block sparsity: which block an element belongs to, and whether that block is pruned.
//
// Exactness: block norms are computed on the CPU (src/gpu/backend.rs) with the reference
// `Element::block_norm`, because numpy's norm rounds fp16 squares and partial sums to fp16 and takes
// an f32 sqrt — WGSL neither rounds f32 -> f16 conversions nor sqrt correctly, and may flush
// subnormals. The CPU also selects the percentile over the norm keys. The GPU gets one bit per
// block ("pruned", LSB-first words) and applies it to every element: pure integer indexing.

@group(0) @binding(3) var<storage, read> block_flags: array<u32>;

// Index of the block holding global element f in the [outer, blocks, inner] block order.
fn block_of(f: u32) -> u32 {
    let i = f % p.inner;
    let row = f / p.inner;
    let c = row % p.channel;
    let o = row / p.channel;
    return (o * p.blocks + c / p.group) * p.inner + i;
}

fn block_pruned(local_i: u32) -> bool {
    let b = block_of(p.base + local_i);
    return ((block_flags[b >> 5u] >> (b & 31u)) & 1u) == 1u;
}
