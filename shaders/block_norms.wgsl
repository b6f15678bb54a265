// Block norms of fp16 weights on the device, with numpy's arithmetic reproduced exactly in
// integers (src/prune/element.rs, `f16::block_norm`, is the reference):
// * squares: the exact product of two fp16 values rounded once to fp16;
// * `inner > 1`: the sum runs from +0 over the block's elements in order, every addition rounded
//   to fp16 (an f32 addition rounded to fp16 is the correctly rounded fp16 sum: f32 has
//   24 >= 2 * 11 + 2 significand bits);
// * `inner == 1`: numpy's pairwise f32 summation of the fp16 squares (block_size <= 128: the
//   eight-accumulator loop, no recursion), every addition rounded to f32, then one rounding to
//   fp16;
// * the norm: the correctly rounded fp16 square root (f32 sqrt rounded to fp16, same argument).
// No float arithmetic runs on the device: WGSL leaves f32 rounding, subnormals, infinities and
// NaN loosely specified (and Metal compiles with fast math), so every step is integer. A
// non-negative value is a pair (m, e) meaning m * 2^e; rounding keeps a sticky bit for what was
// shifted out.
//
// The chunk holds whole bands of blocks (the host's `chunk_elems`): thread t handles norm
// `p.first_norm + t` of the [outer, blocks, inner] order, whose block elements all lie in the chunk.

@group(0) @binding(3) var<storage, read_write> flag_words: array<atomic<u32>>;

struct Soft {
    m: u32,
    e: i32,
    sticky: bool,
}

// Bit length of m (0 for 0).
fn bit_len(m: u32) -> u32 {
    return 32u - countLeadingZeros(m);
}

// (m, e) of a finite non-negative fp16 value.
fn f16_parts(bits: u32) -> Soft {
    let exp = (bits >> 10u) & 0x1fu;
    let frac = bits & 0x3ffu;
    if (exp == 0u) {
        return Soft(frac, -24, false);
    }
    return Soft(frac | 0x400u, i32(exp) - 25, false);
}

// Whether dropping the low `shift` bits of m (shift in 1..=32, q = the kept bits) rounds up, to
// nearest with ties to even; `sticky` says the true value lies above m * 2^e.
fn rounds_up(m: u32, shift: u32, q: u32, sticky: bool) -> bool {
    let half = 1u << (shift - 1u);
    var r = m;
    if (shift < 32u) {
        r = m & ((1u << shift) - 1u);
    }
    return r > half || (r == half && (sticky || (q & 1u) == 1u));
}

// fp16 bits of (m * 2^e + sticky), rounded to nearest even; overflow gives +inf.
fn round_f16(v: Soft) -> u32 {
    if (v.m == 0u) {
        return 0u;
    }
    let top = v.e + i32(bit_len(v.m)) - 1; // exponent of the leading bit
    if (top > 15) {
        return 0x7c00u;
    }
    let lsb = max(top - 10, -24); // fp16 spacing: normal, or the subnormal step 2^-24
    let shift = lsb - v.e;
    var q: u32;
    if (shift <= 0) {
        q = v.m << u32(-shift);
    } else if (shift > 32) {
        return 0u; // below half the smallest subnormal
    } else {
        let s = u32(shift);
        q = 0u;
        if (s < 32u) {
            q = v.m >> s;
        }
        if (rounds_up(v.m, s, q, v.sticky)) {
            q = q + 1u;
        }
    }
    if (lsb == -24) {
        return q; // subnormal, or 0x400 = the smallest normal after a carry
    }
    // q in [0x400, 0x800]: a carry to 0x800 moves into the exponent field by itself.
    let bits = (u32(lsb + 25) << 10u) + (q - 0x400u);
    return min(bits, 0x7c00u);
}

// (m, e) rounded to 24 significant bits (f32), nearest even. The values here (sums of fp16
// squares) stay far inside f32's normal range.
fn round_f32(v: Soft) -> Soft {
    let len = bit_len(v.m);
    if (len <= 24u) {
        return Soft(v.m, v.e, false);
    }
    let s = len - 24u;
    var q = v.m >> s;
    if (rounds_up(v.m, s, q, v.sticky)) {
        q = q + 1u;
    }
    if (q == 0x1000000u) {
        return Soft(0x800000u, v.e + i32(s) + 1, false);
    }
    return Soft(q, v.e + i32(s), false);
}

// (m, e) with m shifted up to exactly 24 bits (m != 0, at most 24 bits).
fn normalized(v: Soft) -> Soft {
    let up = 24u - bit_len(v.m);
    return Soft(v.m << up, v.e - i32(up), false);
}

// The exact sum of two non-negative values of at most 24 bits, as (m, e, sticky) with at least
// six bits below the 24th: enough for a correct rounding to fp16 or f32.
fn add_exact(a_in: Soft, b_in: Soft) -> Soft {
    if (a_in.m == 0u) {
        return b_in;
    }
    if (b_in.m == 0u) {
        return a_in;
    }
    // Both as 24-bit mantissas, so that the bits kept below the larger one's cover its precision.
    let a = normalized(a_in);
    let b = normalized(b_in);
    var big = a;
    var small = b;
    if (b.e > a.e) {
        big = b;
        small = a;
    }
    let gap = u32(big.e - small.e);
    if (gap <= 6u) {
        return Soft((big.m << gap) + small.m, small.e, false);
    }
    let drop = gap - 6u; // small's bits below big.e - 6
    var kept = 0u;
    var lost = small.m != 0u;
    if (drop < 32u) {
        kept = small.m >> drop;
        lost = (small.m & ((1u << drop) - 1u)) != 0u;
    }
    return Soft((big.m << 6u) + kept, big.e - 6, lost);
}

// The fp16 square of an fp16 magnitude (bits), rounded once.
fn square_f16(bits: u32) -> u32 {
    let v = f16_parts(bits);
    return round_f16(Soft(v.m * v.m, 2 * v.e, false));
}

// Integer square root with a remainder flag.
fn isqrt(x: u32) -> Soft {
    var op = x;
    var res = 0u;
    var one = 1u << 30u;
    while (one > op) {
        one = one >> 2u;
    }
    while (one != 0u) {
        if (op >= res + one) {
            op = op - (res + one);
            res = (res >> 1u) + one;
        } else {
            res = res >> 1u;
        }
        one = one >> 2u;
    }
    return Soft(res, 0, op != 0u);
}

// The correctly rounded fp16 square root of a finite non-negative fp16 value.
fn sqrt_f16(bits: u32) -> u32 {
    var v = f16_parts(bits);
    if (v.m == 0u) {
        return 0u;
    }
    // An even exponent, then about 30 bits of radicand: a root of 15 bits, 4 below fp16's 11.
    if ((v.e & 1) != 0) {
        v = Soft(v.m << 1u, v.e - 1, false);
    }
    var sh = 30u - bit_len(v.m);
    sh = sh - (sh & 1u);
    let root = isqrt(v.m << sh);
    return round_f16(Soft(root.m, (v.e - i32(sh)) / 2, root.sticky));
}

// fp16 magnitude bits of element (o, c, i) of the chunk, or 0 past the channel (padding).
fn block_elem(o: u32, c: u32, i: u32) -> u32 {
    if (c >= p.channel) {
        return 0u;
    }
    let f = (o * p.channel + c) * p.inner + i;
    return elem_bits(f - p.base) & 0x7fffu;
}

// The fp16 square of element (o, c, i)'s magnitude (0 for padding): 0x7c00 (inf) for an inf
// element or a square that overflows, above it (a NaN) for a NaN element.
fn block_square(o: u32, c: u32, i: u32) -> u32 {
    let m = block_elem(o, c, i);
    if (m >= 0x7c00u) {
        return m;
    }
    return square_f16(m);
}

// Magnitude key (common.wgsl's `mag_key` for fp16) of the norm of block `g`.
fn block_norm_key(g: u32) -> u32 {
    let i = g % p.inner;
    let ob = g / p.inner;
    let o = ob / p.blocks;
    let c0 = (ob % p.blocks) * p.group;
    var nan = false;
    var inf = false;
    var sum = 0u; // fp16 bits
    if (p.inner > 1u) {
        for (var j = 0u; j < p.group; j = j + 1u) {
            let sq = block_square(o, c0 + j, i);
            nan = nan || sq > 0x7c00u;
            inf = inf || sq >= 0x7c00u;
            if (!inf) {
                sum = round_f16(add_exact(f16_parts(sum), f16_parts(sq)));
                inf = sum == 0x7c00u;
            }
        }
    } else {
        // numpy's pairwise_sum for n <= 128 (the host checks): below 8 addends a plain loop from
        // 0, else eight accumulators, combined pairwise, then the remainder in order. An inf or
        // NaN square decides the result alone, so its addends are skipped.
        var r: array<Soft, 8>;
        var total = Soft(0u, 0, false);
        let n = p.group;
        let full = select(0u, n - n % 8u, n >= 8u);
        for (var j = 0u; j < n; j = j + 1u) {
            let sq = block_square(o, c0 + j, i);
            nan = nan || sq > 0x7c00u;
            inf = inf || sq >= 0x7c00u;
            let x = f16_parts(min(sq, 0x7bffu));
            if (j < 8u && full > 0u) {
                r[j] = x;
            } else if (j < full) {
                r[j % 8u] = round_f32(add_exact(r[j % 8u], x));
            } else if (full == 0u) {
                total = round_f32(add_exact(total, x));
            } else {
                break; // the remainder is added after the accumulators are combined
            }
        }
        if (full > 0u) {
            let a = round_f32(add_exact(round_f32(add_exact(r[0], r[1])), round_f32(add_exact(r[2], r[3]))));
            let b = round_f32(add_exact(round_f32(add_exact(r[4], r[5])), round_f32(add_exact(r[6], r[7]))));
            total = round_f32(add_exact(a, b));
            for (var j = full; j < n; j = j + 1u) {
                let sq = block_square(o, c0 + j, i);
                nan = nan || sq > 0x7c00u;
                inf = inf || sq >= 0x7c00u;
                total = round_f32(add_exact(total, f16_parts(min(sq, 0x7bffu))));
            }
        }
        if (!inf) {
            sum = round_f16(total);
            inf = sum == 0x7c00u;
        }
    }
    if (nan) {
        return 0x7fffu;
    }
    if (inf) {
        return 0x7c00u;
    }
    return sqrt_f16(sum);
}

// Elements of the real channel rows block `g` covers (the last block of a run may be short).
fn block_covered(g: u32) -> u32 {
    let c0 = ((g / p.inner) % p.blocks) * p.group;
    return min(p.group, p.channel - c0);
}

// Pass 1: the norms' keys, each counted once per real element of its block (the percentile runs
// over the element-wise map of norms).
@compute @workgroup_size(256)
fn block_norm_histogram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, num, lid);
    if (t >= p.norms) {
        return;
    }
    let g = p.first_norm + t;
    atomicAdd(&hist[block_norm_key(g)], block_covered(g));
}

// Pass 2: "pruned" bit g of the flag words for every norm whose key is at or below the cut.
@compute @workgroup_size(256)
fn block_prune_flags(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, num, lid);
    if (t >= p.norms || p.has_cut == 0u) {
        return;
    }
    let g = p.first_norm + t;
    if (block_norm_key(g) <= p.cut) {
        atomicOr(&flag_words[g >> 5u], 1u << (g & 31u));
    }
}
