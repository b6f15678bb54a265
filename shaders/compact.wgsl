// Stream compaction of the kept values, in the weight dtype: an exclusive prefix sum over the mask
// words' popcounts (two levels: per workgroup, then one workgroup over the block totals), then a
// scatter of every kept element to its rank.
//
// Exactness: integer counts and bit copies only; the output order is the row-major element order,
// as `nonzero_data` requires. fp16 values are written into u32 words with atomicOr (two threads
// may share a word), so the host clears the output buffer first.

@group(0) @binding(6) var<storage, read_write> block_sums: array<u32>;
@group(0) @binding(7) var<storage, read_write> compacted: array<atomic<u32>>;

var<workgroup> scan_buf: array<u32, 256>;

// Inclusive Hillis-Steele scan of scan_buf; every thread of the workgroup must call it.
fn scan_workgroup(lid: u32) {
    for (var step = 1u; step < WG; step = step * 2u) {
        workgroupBarrier();
        var add = 0u;
        if (lid >= step) {
            add = scan_buf[lid - step];
        }
        workgroupBarrier();
        scan_buf[lid] = scan_buf[lid] + add;
    }
    workgroupBarrier();
}

// word_offsets[w]: popcount in, exclusive offset within its workgroup block out;
// block_sums[b]: the block's total.
@compute @workgroup_size(256)
fn scan_local(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let w = linear_index(wid, num, lid);
    var v = 0u;
    if (w < p.words) {
        v = word_offsets[w];
    }
    scan_buf[lid] = v;
    scan_workgroup(lid);
    if (w < p.words) {
        word_offsets[w] = scan_buf[lid] - v;
    }
    if (lid == WG - 1u && w / WG < p.scan_blocks) {
        block_sums[w / WG] = scan_buf[lid];
    }
}

// One workgroup: block_sums[b] becomes the exclusive offset of block b; block_sums[scan_blocks]
// the chunk's kept count.
@compute @workgroup_size(256)
fn scan_blocks(@builtin(local_invocation_index) lid: u32) {
    let seg = (p.scan_blocks + WG - 1u) / WG;
    let start = min(lid * seg, p.scan_blocks);
    let end = min(start + seg, p.scan_blocks);
    var total = 0u;
    for (var b = start; b < end; b = b + 1u) {
        total = total + block_sums[b];
    }
    scan_buf[lid] = total;
    scan_workgroup(lid);
    var run = scan_buf[lid] - total;
    for (var b = start; b < end; b = b + 1u) {
        let s = block_sums[b];
        block_sums[b] = run;
        run = run + s;
    }
    if (lid == WG - 1u) {
        block_sums[p.scan_blocks] = scan_buf[lid];
    }
}

@compute @workgroup_size(256)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, num, lid);
    if (i >= p.n) {
        return;
    }
    let d = decide(i);
    if (d.x == 0u) {
        return;
    }
    let w = i >> 5u;
    let below = mask_words[w] & ((1u << (i & 31u)) - 1u);
    let pos = word_offsets[w] + block_sums[w / WG] + countOneBits(below);
    if (p.is_f16 == 1u) {
        atomicOr(&compacted[pos >> 1u], (d.y & 0xffffu) << ((pos & 1u) * 16u));
    } else {
        atomicStore(&compacted[pos], d.y);
    }
}
