// Shared prelude of every mlprune kernel module (the host prepends it to each family's file).
//
// Constants and conventions shared by all kernels:
// * WG = 256 threads per workgroup, one thread per element (or per mask word in the scans).
//   Grids are 2-D (x ≤ 65535 workgroups); the linear workgroup index is `id.x + id.y * num.x`.
// * Weights arrive as raw little-endian u32 words: fp32 one element per word; fp16 two elements per
//   word, element 2k in the low half. No float arithmetic touches them: `shader-f16` is never needed.
// * A chunk is `p.n` consecutive elements starting at global element `p.base`; the host makes every
//   chunk start a multiple of 32 (whole mask words) and, for n:m, a multiple of the group band.
// * Magnitude keys (identical to src/prune/keys.rs): `bits & ABS_MASK`, every NaN mapped to the
//   largest key ABS_MASK. Integer keys order magnitudes exactly as numpy's sort (NaN last).
// * The keep-mask is packed LSB first: bit (i % 32) of word i / 32 of the chunk, which is the byte
//   layout of `np.packbits(bitorder="little")` read as little-endian words.

const WG: u32 = 256u;

struct Params {
    n: u32,            // elements in this chunk
    base: u32,         // global index of the chunk's first element
    is_f16: u32,       // 1: fp16 (two per word), 0: fp32
    mode: u32,         // MODE_* below
    cut: u32,          // keys <= cut are pruned (when has_cut == 1)
    has_cut: u32,
    hist_shift: u32,   // histogram bin = (key >> hist_shift) & hist_mask
    hist_mask: u32,
    use_prefix: u32,   // 1: only keys whose (key >> prefix_shift) is prefix_a / prefix_b count
    prefix_shift: u32,
    prefix_a: u32,
    prefix_b: u32,
    channel: u32,      // block / n:m layout [outer, channel, inner]
    inner: u32,
    group: u32,        // block_size or m
    n_prune: u32,      // n of n:m
    blocks: u32,       // blocks per channel run (block mode)
    words: u32,        // mask words in this chunk = ceil(n / 32)
    scan_blocks: u32,  // ceil(words / WG)
    first_norm: u32,   // block norms: global index of the chunk's first norm
    norms: u32,        // block norms in this chunk
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

const MODE_WHERE_CUT: u32 = 0u;  // np.where(|w| <= thr, 0, w): threshold and magnitude
const MODE_MULTIPLY_ALL: u32 = 1u; // 0 * w (target_sparsity == 1)
const MODE_BLOCK: u32 = 2u;      // np.where(block pruned, 0, w)
const MODE_NM: u32 = 3u;         // w * (1 - mask), n smallest of every m (stable ranks)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;

fn linear_index(wid: vec3<u32>, num: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * num.x) * WG + lid;
}

// Raw bits of chunk element i (fp16 in the low 16 bits).
fn elem_bits(i: u32) -> u32 {
    if (p.is_f16 == 1u) {
        return (data[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    }
    return data[i];
}

fn abs_mask() -> u32 {
    return select(0x7fffffffu, 0x7fffu, p.is_f16 == 1u);
}

fn inf_bits() -> u32 {
    return select(0x7f800000u, 0x7c00u, p.is_f16 == 1u);
}

// numpy sort-order key of |w|: NaN is the largest key, all NaNs equal.
fn mag_key(bits: u32) -> u32 {
    let k = bits & abs_mask();
    return select(k, abs_mask(), k > inf_bits());
}

// numpy's `w * 1` (keep) or `w * 0` (not keep) bit for bit on x86-64 (src/prune/float.rs):
// NaN keeps its payload with the quiet bit set; a pruned ±inf becomes the default NaN (sign set);
// a pruned finite value becomes zero.
fn mul_keep(bits: u32, keep: bool) -> u32 {
    let a = bits & abs_mask();
    if (a > inf_bits()) {
        return bits | select(0x00400000u, 0x0200u, p.is_f16 == 1u);
    }
    if (keep) {
        return bits;
    }
    if (a == inf_bits()) {
        return select(0xffc00000u, 0xfe00u, p.is_f16 == 1u);
    }
    return 0u;
}
