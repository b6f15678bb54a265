// Block norms on the device, with numpy's arithmetic reproduced exactly in integers
// (src/prune/element.rs, `block_norm` of f16 and f32, is the reference). In the weight dtype T:
// * squares: the exact product of two T values rounded once to T;
// * `inner > 1`: the sum runs from +0 over the block's elements in order, every addition rounded
//   to T (for fp16, numpy's f32 addition rounded to fp16 is the correctly rounded fp16 sum: f32 has
//   24 >= 2 * 11 + 2 significand bits);
// * `inner == 1`: numpy's pairwise f32 summation of the squares (block_size <= 128: the
//   eight-accumulator loop, no recursion), every addition rounded to f32, then one rounding to T;
// * the norm: the correctly rounded square root in T (fp16: f32 sqrt rounded to fp16, same
//   argument).
// No float arithmetic runs on the device: WGSL leaves f32 rounding, subnormals, infinities and
// NaN loosely specified (and Metal compiles with fast math), so every step is integer. A
// non-negative value is a pair (m, e) meaning m * 2^e, wider values a 64-bit pair of words
// (vec2: x low, y high); rounding keeps a sticky bit for what was shifted out. fp32 keeps its
// subnormals, as numpy does on the CPU.
//
// The chunk holds whole bands of blocks (the host's `chunk_elems`): thread t handles norm
// `p.first_norm + t` of the [outer, blocks, inner] order, whose block elements all lie in the chunk.

@group(0) @binding(3) var<storage, read_write> flag_words: array<atomic<u32>>;

struct Soft {
    m: u32,
    e: i32,
    sticky: bool,
}

const F32_INF: u32 = 0x7f800000u;

// Bit length of m (0 for 0).
fn bit_len(m: u32) -> u32 {
    return 32u - countLeadingZeros(m);
}

// ---- 64-bit integers as vec2<u32>(low, high)

fn bit_len64(v: vec2<u32>) -> u32 {
    if (v.y != 0u) {
        return 32u + bit_len(v.y);
    }
    return bit_len(v.x);
}

// v >> s, s in 0..=63.
fn shr64(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return v;
    }
    if (s >= 32u) {
        return vec2<u32>(v.y >> (s - 32u), 0u);
    }
    return vec2<u32>((v.x >> s) | (v.y << (32u - s)), v.y >> s);
}

// v << s, s in 0..=63, for values that stay below 2^64.
fn shl64(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return v;
    }
    if (s >= 32u) {
        return vec2<u32>(0u, v.x << (s - 32u));
    }
    return vec2<u32>(v.x << s, (v.y << s) | (v.x >> (32u - s)));
}

// The low s bits of v, s in 1..=64.
fn low64(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s >= 64u) {
        return v;
    }
    if (s >= 32u) {
        return vec2<u32>(v.x, v.y & ((1u << (s - 32u)) - 1u));
    }
    return vec2<u32>(v.x & ((1u << s) - 1u), 0u);
}

// 2^s, s in 0..=63.
fn pow2_64(s: u32) -> vec2<u32> {
    if (s >= 32u) {
        return vec2<u32>(0u, 1u << (s - 32u));
    }
    return vec2<u32>(1u << s, 0u);
}

fn gt64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x > b.x);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

// ---- rounding (m, e) to a float format, nearest even

// Whether dropping the low `s` bits of v (s >= 1, q = the kept bits) rounds up; `sticky` says the
// true value lies above v * 2^e.
fn rounds_up(v: vec2<u32>, s: u32, q: u32, sticky: bool) -> bool {
    let r = low64(v, s);
    let half = pow2_64(s - 1u);
    return gt64(r, half) || (all(r == half) && (sticky || (q & 1u) == 1u));
}

// The bits of (v * 2^e + sticky) rounded to a binary format of `digits` significand bits whose
// subnormal step is 2^`emin` and whose largest exponent is `emax`: +inf on overflow.
fn round_bits(v: vec2<u32>, e: i32, sticky: bool, digits: u32, emin: i32, emax: i32, inf: u32) -> u32 {
    let len = bit_len64(v);
    if (len == 0u) {
        return 0u;
    }
    let top = e + i32(len) - 1; // exponent of the leading bit
    if (top > emax) {
        return inf;
    }
    let lsb = max(top - i32(digits) + 1, emin); // the format's spacing at this value
    let shift = lsb - e;
    var q: u32;
    if (shift <= 0) {
        q = shl64(v, u32(-shift)).x;
    } else if (u32(shift) > len) {
        return 0u; // below half the smallest subnormal
    } else {
        let s = u32(shift);
        q = 0u;
        if (s < 64u) {
            q = shr64(v, s).x;
        }
        if (rounds_up(v, s, q, sticky)) {
            q = q + 1u;
        }
    }
    let hidden = 1u << (digits - 1u);
    if (lsb == emin) {
        return q; // subnormal, or the smallest normal after a carry: the same encoding
    }
    // q in [hidden, 2 * hidden]: a carry to 2 * hidden moves into the exponent field by itself.
    let bits = (u32(lsb - emin + 1) << (digits - 1u)) + (q - hidden);
    return min(bits, inf);
}

fn round_f32(v: vec2<u32>, e: i32, sticky: bool) -> u32 {
    return round_bits(v, e, sticky, 24u, -149, 127, F32_INF);
}

// (v * 2^e + sticky) rounded to the weight dtype.
fn round_dtype(v: vec2<u32>, e: i32, sticky: bool) -> u32 {
    if (p.is_f16 == 1u) {
        return round_bits(v, e, sticky, 11u, -24, 15, 0x7c00u);
    }
    return round_f32(v, e, sticky);
}

// (m, e, sticky) rounded to the weight dtype.
fn round_soft(v: Soft) -> u32 {
    return round_dtype(vec2<u32>(v.m, 0u), v.e, v.sticky);
}

// (m, e) of a finite non-negative value of the weight dtype (bits).
fn parts(bits: u32) -> Soft {
    if (p.is_f16 == 1u) {
        let exp = (bits >> 10u) & 0x1fu;
        let frac = bits & 0x3ffu;
        if (exp == 0u) {
            return Soft(frac, -24, false);
        }
        return Soft(frac | 0x400u, i32(exp) - 25, false);
    }
    return f32_parts(bits);
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

// a + b of two finite non-negative values of the weight dtype, rounded to it.
fn add_dtype(a: u32, b: u32) -> u32 {
    return round_soft(add_exact(parts(a), parts(b)));
}

// a + b of two finite non-negative f32 values (bits), rounded to f32.
fn add_f32(a: u32, b: u32) -> u32 {
    let s = add_exact(f32_parts(a), f32_parts(b));
    return round_f32(vec2<u32>(s.m, 0u), s.e, s.sticky);
}

// (m, e) of a finite non-negative f32 value.
fn f32_parts(bits: u32) -> Soft {
    let exp = (bits >> 23u) & 0xffu;
    let frac = bits & 0x7fffffu;
    if (exp == 0u) {
        return Soft(frac, -149, false);
    }
    return Soft(frac | 0x800000u, i32(exp) - 150, false);
}

// The square of a finite weight magnitude (bits), rounded once to the weight dtype.
fn square_dtype(bits: u32) -> u32 {
    let v = parts(bits);
    // m < 2^24: m^2 from 16-bit halves, exact in 64 bits.
    let hi_half = v.m >> 16u;
    let lo_half = v.m & 0xffffu;
    let low = lo_half * lo_half;
    let mid = 2u * hi_half * lo_half; // < 2^25
    let lo = low + (mid << 16u);
    let hi = hi_half * hi_half + (mid >> 16u) + select(0u, 1u, lo < low);
    return round_dtype(vec2<u32>(lo, hi), 2 * v.e, false);
}

// A finite non-negative value of the weight dtype as f32 bits (exact).
fn to_f32(bits: u32) -> u32 {
    let v = parts(bits);
    return round_f32(vec2<u32>(v.m, 0u), v.e, false);
}

// Integer square root of x with a remainder flag.
fn isqrt64(x: vec2<u32>) -> Soft {
    var op = x;
    var res = vec2<u32>(0u, 0u);
    var one = vec2<u32>(0u, 1u << 30u); // 2^62
    while (gt64(one, op)) {
        one = shr64(one, 2u);
    }
    while (one.x != 0u || one.y != 0u) {
        let t = add64(res, one);
        if (!gt64(t, op)) {
            op = sub64(op, t);
            res = add64(shr64(res, 1u), one);
        } else {
            res = shr64(res, 1u);
        }
        one = shr64(one, 2u);
    }
    return Soft(res.x, 0, op.x != 0u || op.y != 0u);
}

// The correctly rounded square root of a finite non-negative value of the weight dtype.
fn sqrt_dtype(bits: u32) -> u32 {
    let v = parts(bits);
    if (v.m == 0u) {
        return 0u;
    }
    // An even exponent, then a radicand of 61 or 62 bits: a root of 31 bits, well below which
    // the format's 24 (or 11) digits end.
    var m = vec2<u32>(v.m, 0u);
    var e = v.e;
    if ((e & 1) != 0) {
        m = shl64(m, 1u);
        e = e - 1;
    }
    var sh = 62u - bit_len64(m);
    sh = sh - (sh & 1u);
    let root = isqrt64(shl64(m, sh));
    return round_soft(Soft(root.m, (e - i32(sh)) / 2, root.sticky));
}

// Magnitude bits of element (o, c, i) of the chunk, or 0 past the channel (padding).
fn block_elem(o: u32, c: u32, i: u32) -> u32 {
    if (c >= p.channel) {
        return 0u;
    }
    let f = (o * p.channel + c) * p.inner + i;
    return elem_bits(f - p.base) & abs_mask();
}

// The square of element (o, c, i)'s magnitude in the weight dtype (0 for padding): inf for an
// inf element or a square that overflows, above it (a NaN) for a NaN element.
fn block_square(o: u32, c: u32, i: u32) -> u32 {
    let m = block_elem(o, c, i);
    if (m >= inf_bits()) {
        return m;
    }
    return square_dtype(m);
}

// Magnitude key (common.wgsl's `mag_key`) of the norm of block `g`.
fn block_norm_key(g: u32) -> u32 {
    let i = g % p.inner;
    let ob = g / p.inner;
    let o = ob / p.blocks;
    let c0 = (ob % p.blocks) * p.group;
    let inf_t = inf_bits();
    var nan = false;
    var inf = false;
    var sum = 0u; // bits of the weight dtype
    if (p.inner > 1u) {
        for (var j = 0u; j < p.group; j = j + 1u) {
            let sq = block_square(o, c0 + j, i);
            nan = nan || sq > inf_t;
            inf = inf || sq >= inf_t;
            if (!inf) {
                sum = add_dtype(sum, sq);
                inf = sum == inf_t;
            }
        }
    } else {
        // numpy's pairwise_sum for n <= 128 (the host checks): below 8 addends a plain loop from
        // 0, else eight accumulators, combined pairwise, then the remainder in order; f32 bits
        // throughout. An inf or NaN square decides the result alone, so its addends are skipped.
        var r: array<u32, 8>;
        var total = 0u;
        let n = p.group;
        let full = select(0u, n - n % 8u, n >= 8u);
        for (var j = 0u; j < n; j = j + 1u) {
            let sq = block_square(o, c0 + j, i);
            nan = nan || sq > inf_t;
            inf = inf || sq >= inf_t;
            let x = to_f32(min(sq, inf_t - 1u));
            if (j < 8u && full > 0u) {
                r[j] = x;
            } else if (j < full) {
                r[j % 8u] = add_f32(r[j % 8u], x);
            } else if (full == 0u) {
                total = add_f32(total, x);
            } else {
                break; // the remainder is added after the accumulators are combined
            }
        }
        if (full > 0u) {
            total = add_f32(add_f32(add_f32(r[0], r[1]), add_f32(r[2], r[3])), add_f32(add_f32(r[4], r[5]), add_f32(r[6], r[7])));
            for (var j = full; j < n; j = j + 1u) {
                let sq = block_square(o, c0 + j, i);
                nan = nan || sq > inf_t;
                inf = inf || sq >= inf_t;
                total = add_f32(total, to_f32(min(sq, inf_t - 1u)));
            }
        }
        if (!inf) {
            // A finite f32 sum (at most 128 squares) rounded once to the weight dtype.
            let t = f32_parts(total);
            sum = round_soft(t);
            inf = sum == inf_t;
        }
    }
    if (nan) {
        return abs_mask();
    }
    if (inf) {
        return inf_t;
    }
    return sqrt_dtype(sum);
}

// Elements of the real channel rows block `g` covers (the last block of a run may be short).
fn block_covered(g: u32) -> u32 {
    let c0 = ((g / p.inner) % p.blocks) * p.group;
    return min(p.group, p.channel - c0);
}

// Pass 1: the norms' keys, each counted once per real element of its block (the percentile runs
// over the element-wise map of norms), into the bins the params select (select.wgsl).
@compute @workgroup_size(256)
fn block_norm_histogram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) num: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, num, lid);
    if (t >= p.norms) {
        return;
    }
    let g = p.first_norm + t;
    count_key(block_norm_key(g), block_covered(g));
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
