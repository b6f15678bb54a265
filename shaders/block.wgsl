// Block sparsity: which block an element belongs to, and whether that block is pruned.
//
// The flags ("pruned", one bit per block, LSB-first words) come from the device's block-norm
// passes (block_norms.wgsl) or, for layouts those do not take, from the CPU's parallel block-norm
// kernel; either way this pass applies them to every element:
// pure integer indexing. Bound read_write because the norm passes write the same binding.

@group(0) @binding(3) var<storage, read_write> block_flags: array<u32>;

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
