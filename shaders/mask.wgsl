// Threshold masks and packing: the keep decision of every element, packed LSB-first into u32 words
// together with each word's popcount (the input of the compaction scan).
//
// Exactness: decisions compare integer keys against a cut the host computed on the CPU
// (`key <= cut` is exactly numpy's `|w| <= thr` in the weight dtype, see src/prune/percentile.rs);
// value transforms (`w * 0` NaN rules) are bit operations. Kept iff the dense result is != 0:
// −0.0 counts as zero, NaN as non-zero.

@group(0) @binding(4) var<storage, read_write> mask_words: array<u32>;
@group(0) @binding(5) var<storage, read_write> word_offsets: array<u32>;

var<workgroup> wg_mask: array<atomic<u32>, 8>;

// (keep, output bits) of chunk element i.
fn decide(i: u32) -> vec2<u32> {
    let bits = elem_bits(i);
    var pruned = false;
    var apply_where = true;
    switch p.mode {
        case 0u: { // MODE_WHERE_CUT
            pruned = p.has_cut == 1u && mag_key(bits) <= p.cut;
        }
        case 1u: { // MODE_MULTIPLY_ALL
            pruned = true;
            apply_where = false;
        }
        case 2u: { // MODE_BLOCK
            pruned = block_pruned(i);
        }
        default: { // MODE_NM
            pruned = nm_pruned(i);
            apply_where = false;
        }
    }
    var out = bits;
    if (apply_where) {
        if (pruned) {
            out = 0u;
        }
    } else {
        out = mul_keep(bits, !pruned);
    }
    return vec2<u32>(select(0u, 1u, (out & abs_mask()) != 0u), out);
}

@compute @workgroup_size(256)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Workgroup memory is not zero-initialized (the pipeline opts out): clear it here.
    if (lid < 8u) {
        atomicStore(&wg_mask[lid], 0u);
    }
    workgroupBarrier();
    let i = linear_index(wid, num, lid);
    if (i < p.n && decide(i).x == 1u) {
        atomicOr(&wg_mask[lid >> 5u], 1u << (lid & 31u));
    }
    workgroupBarrier();
    if (lid < 8u) {
        let w = (i - lid) / 32u + lid;
        if (w < p.words) {
            let v = atomicLoad(&wg_mask[lid]);
            mask_words[w] = v;
            word_offsets[w] = countOneBits(v);
        }
    }
}
