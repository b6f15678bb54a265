// Order-statistic selection: histograms of magnitude keys for a radix select (no sort).
//
// Exactness: integer keys only, counted with atomic adds (order-independent), so the histogram is
// the same on every device. The host (src/gpu/select.rs) turns histograms into the two order
// statistics numpy's percentile interpolates between, and does the interpolation itself on the CPU
// in the weight dtype (WGSL float rounding is not specified tightly enough to reproduce numpy).
// * fp16: keys are 15 bits: one pass, bins = keys (32768 bins).
// * fp32: keys are 31 bits: pass 1 bins key >> 16 (32768 bins); pass 2 bins the low 16 bits of the
//   keys whose high half equals prefix_a (bins 0..65535) or prefix_b (bins 65536..131071).

@group(0) @binding(2) var<storage, read_write> hist: array<atomic<u32>>;

@compute @workgroup_size(256)
fn histogram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, num, lid);
    if (i >= p.n) {
        return;
    }
    count_key(mag_key(elem_bits(i)), 1u);
}

// Adds `weight` to key k's bin as the params select it (see the top of this file).
fn count_key(k: u32, weight: u32) {
    if (p.use_prefix == 0u) {
        atomicAdd(&hist[(k >> p.hist_shift) & p.hist_mask], weight);
        return;
    }
    let prefix = k >> p.prefix_shift;
    if (prefix == p.prefix_a) {
        atomicAdd(&hist[k & p.hist_mask], weight);
    } else if (prefix == p.prefix_b) {
        atomicAdd(&hist[65536u + (k & p.hist_mask)], weight);
    }
}
