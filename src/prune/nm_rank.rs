//! The fast n:m ranking for `m <= 16` (see [`super::nm`] for the rules).
//!
//! For `m <= 16` numpy's argsort of one group is a plain insertion sort, which is stable, so the
//! position of element j in the sorted order is its *stable rank*
//! `#{k < j: key_k <= key_j} + #{k > j: key_k < key_j}`, and j is pruned iff that rank is `< n`.
//! That is `m * (m - 1)` branch-free comparisons per group instead of a sort, and it vectorizes
//! when the comparisons run lane by lane: the keys of a tile are laid out as m *lanes* (lane j
//! holds the key of the j-th member of every group in the tile), and each pass compares two whole
//! lanes element-wise.
//! * `inner > 1` (e.g. dim 0): the m members of a group are m rows of `inner` contiguous
//!   elements, so a lane is a slice of one row: the layout is already lane-major.
//! * `inner == 1` (e.g. dim 1 of a matrix): groups are m consecutive elements of a row; a tile of
//!   up to [`TILE`] groups is transposed into lanes (a strided gather that stays in L1).
//!
//! Zero padding of a short last group is a lane position holding the key of +0. Every group is
//! ranked on its own and the output is split by rows and groups, so the flags never depend on
//! the number of threads.

use rayon::prelude::*;

use super::axes::ChannelLayout;
use super::cpu::Avx2;
use super::element::{Element, MapValue};
use super::keys::Key;
use crate::dtype::ScalarType;

/// The largest m whose argsort is numpy's stable insertion sort (`SMALL_QUICKSORT` is 15:
/// a range of `pr - pl <= 15`, i.e. at most 16 elements, is never partitioned).
pub const MAX_STABLE_M: usize = 16;

/// Lane length of one tile: enough to amortize the per-pass loop overhead, small enough that the
/// m lanes of keys stay in L1/L2.
const TILE: usize = 1024;

/// What a call ranks: a whole tensor, or whole groups laid back to back.
#[derive(Debug, Clone, Copy)]
pub enum Span {
    /// A tensor with this layout, ranked in parallel.
    Tensor(ChannelLayout),
    /// Complete groups of m rows of `inner` elements each (no padding), ranked on the calling
    /// thread: one chunk of the encoding, which runs chunks in parallel itself.
    Groups { inner: usize },
}

/// The per-element "pruned" flags of n:m sparsity for `1 <= m <= MAX_STABLE_M`, `n <= m`.
pub fn stable_rank_flags<T: Element>(w: &[T], layout: ChannelLayout, n: usize, m: usize) -> Vec<bool> {
    let mut flags = vec![false; w.len()];
    stable_rank_flags_into(w, Span::Tensor(layout), n, m, &mut flags);
    flags
}

/// [`stable_rank_flags`] of `span` into `out` (`out.len() == w.len()`).
pub fn stable_rank_flags_into<T: Element>(w: &[T], span: Span, n: usize, m: usize, out: &mut [bool]) {
    stable_rank_flags_on(Avx2::detect(), w, span, n, m, out)
}

/// [`stable_rank_flags_into`] with groups of 2 and 4 ranked by code compiled for AVX2 when given
/// the token, else by the portable build of the same code: the same flags.
pub(crate) fn stable_rank_flags_on<T: Element>(
    simd: Option<Avx2>,
    w: &[T],
    span: Span,
    n: usize,
    m: usize,
    out: &mut [bool],
) {
    // Ranks only compare keys, so any key with the same order as `magnitude().key()` will do.
    // For floats that is the magnitude bits with every NaN clamped to one value above inf: a
    // `min` in the key's own width, which vectorizes (the generic key goes through u64).
    match T::DTYPE {
        ScalarType::Float16 => {
            if let Ok(w) = bytemuck::try_cast_slice::<T, u16>(w) {
                return flags_by_key(simd, w, span, n, m, out, |&b| (b & 0x7fff).min(0x7c01));
            }
        }
        ScalarType::Float32 => {
            if let Ok(w) = bytemuck::try_cast_slice::<T, u32>(w) {
                return flags_by_key(simd, w, span, n, m, out, |&b| (b & 0x7fff_ffff).min(0x7f80_0001));
            }
        }
        _ => {}
    }
    flags_by_key(simd, w, span, n, m, out, |x| x.magnitude().key())
}

/// [`stable_rank_flags_into`] for element type T (zero is `T::zeroed()`) ranked by `key`.
fn flags_by_key<T, K, F>(
    simd: Option<Avx2>,
    w: &[T],
    span: Span,
    n: usize,
    m: usize,
    flags: &mut [bool],
    key: F,
) where
    T: bytemuck::Pod + Sync,
    K: Key,
    F: Fn(&T) -> K + Sync,
{
    debug_assert!((1..=MAX_STABLE_M).contains(&m) && n <= m && w.len() == flags.len());
    if n == 0 {
        flags.fill(false);
        return;
    }
    // Padding is +0, whose bits are all zero in every element type.
    let ranker = Ranker {
        n,
        m,
        pad: key(&T::zeroed()),
        key,
        simd,
    };
    let pad = ranker.pad;
    let layout = match span {
        Span::Tensor(layout) => {
            debug_assert!(w.len() == layout.outer * layout.channel * layout.inner);
            layout
        }
        Span::Groups { inner } => {
            let mut s = Scratch::new(m, pad);
            let piece = if inner == 1 { TILE * m } else { m * inner };
            for (out, groups) in flags.chunks_mut(piece).zip(w.chunks(piece)) {
                if inner == 1 {
                    ranker.contiguous_groups(groups, out, &mut s);
                } else {
                    ranker.row_group(groups, inner, out, &mut s);
                }
            }
            return;
        }
    };
    let row_len = layout.channel * layout.inner;
    if row_len == 0 {
        return;
    }
    if layout.inner == 1 {
        // A row is a run of groups; a piece of TILE whole groups is one work item.
        let piece = TILE * m;
        flags
            .par_chunks_mut(row_len)
            .zip(w.par_chunks(row_len))
            .for_each(|(out, row)| {
                out.par_chunks_mut(piece)
                    .zip(row.par_chunks(piece))
                    .for_each_init(
                        || Scratch::new(m, pad),
                        |s, (out, groups)| ranker.contiguous_groups(groups, out, s),
                    );
            });
    } else {
        // A group is m rows of `inner` elements, contiguous in memory (fewer in the last group).
        let inner = layout.inner;
        flags
            .par_chunks_mut(row_len)
            .zip(w.par_chunks(row_len))
            .for_each(|(out, row)| {
                out.par_chunks_mut(m * inner)
                    .zip(row.par_chunks(m * inner))
                    .for_each_init(
                        || Scratch::new(m, pad),
                        |s, (out, group)| ranker.row_group(group, inner, out, s),
                    );
            });
    }
}

struct Ranker<K, F> {
    n: usize,
    m: usize,
    pad: K,
    key: F,
    /// Rank groups of 2 and 4 with code compiled for AVX2.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    simd: Option<Avx2>,
}

/// Per-thread buffers: m lanes of keys and of flags, one lane of rank counters.
struct Scratch<K> {
    keys: Vec<K>,
    flags: Vec<bool>,
    rank: Vec<u8>,
}

impl<K: Key> Scratch<K> {
    fn new(m: usize, pad: K) -> Self {
        Scratch {
            keys: vec![pad; m * TILE],
            flags: vec![false; m * TILE],
            rank: vec![0; TILE],
        }
    }
}

impl<K: Key, F> Ranker<K, F> {
    /// `groups` holds consecutive groups of m elements (the last one maybe short: zero padded).
    fn contiguous_groups<T>(&self, groups: &[T], out: &mut [bool], s: &mut Scratch<K>)
    where
        F: Fn(&T) -> K,
    {
        // Transposing costs more than ranking for the smallest m (2:4 is the common case): there
        // the m(m-1) comparisons of each group run on the group itself, unrolled.
        match self.m {
            2 => return self.small_groups::<T, 2>(groups, out),
            4 => return self.small_groups::<T, 4>(groups, out),
            _ => {}
        }
        let m = self.m;
        let len = groups.len().div_ceil(m);
        let (keys, flags) = (&mut s.keys[..m * len], &mut s.flags[..m * len]);
        // Transpose into lanes: lane j is every m-th element from j on (padding where the last
        // group is short).
        for (j, lane) in keys.chunks_exact_mut(len).enumerate() {
            let members = groups.get(j..).unwrap_or_default().iter().step_by(m);
            let real = members.len();
            lane.iter_mut().zip(members).for_each(|(k, x)| *k = (self.key)(x));
            lane[real..].fill(self.pad);
        }
        self.rank_lanes(keys, len, flags, len, &mut s.rank[..len]);
        for (j, lane) in flags.chunks_exact(len).enumerate() {
            let members = out.get_mut(j..).unwrap_or_default().iter_mut().step_by(m);
            members.zip(lane).for_each(|(o, &f)| *o = f);
        }
    }

    /// [`Ranker::contiguous_groups`] for `m == M`, group by group.
    fn small_groups<T, const M: usize>(&self, groups: &[T], out: &mut [bool])
    where
        F: Fn(&T) -> K,
    {
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = self.simd {
            // SAFETY: the token exists only on a CPU with AVX2, all `small_groups_avx2` enables;
            // it has no other requirement.
            return unsafe { self.small_groups_avx2::<T, M>(token, groups, out) };
        }
        self.small_groups_portable::<T, M>(groups, out)
    }

    /// The same code compiled for AVX2, where the comparisons of consecutive groups vectorize
    /// (about twice as fast as the SSE2 baseline).
    ///
    /// # Safety
    /// None beyond the token's proof that the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn small_groups_avx2<T, const M: usize>(&self, _: Avx2, groups: &[T], out: &mut [bool])
    where
        F: Fn(&T) -> K,
    {
        self.small_groups_portable::<T, M>(groups, out)
    }

    #[inline(always)]
    fn small_groups_portable<T, const M: usize>(&self, groups: &[T], out: &mut [bool])
    where
        F: Fn(&T) -> K,
    {
        let n = self.n;
        let flags_of = |keys: &[K; M]| -> [bool; M] {
            std::array::from_fn(|j| {
                let mut rank = 0;
                for (i, k) in keys.iter().enumerate() {
                    // Ties count against j only for earlier members (the sort is stable).
                    rank += usize::from(if i < j {
                        *k <= keys[j]
                    } else {
                        i > j && *k < keys[j]
                    });
                }
                rank < n
            })
        };
        let mut whole = groups.chunks_exact(M);
        let mut outs = out.chunks_exact_mut(M);
        for (group, out) in (&mut whole).zip(&mut outs) {
            out.copy_from_slice(&flags_of(&std::array::from_fn(|j| (self.key)(&group[j]))));
        }
        let short = whole.remainder();
        if !short.is_empty() {
            let keys = std::array::from_fn(|j| short.get(j).map_or(self.pad, |x| (self.key)(x)));
            let out = outs.into_remainder();
            out.copy_from_slice(&flags_of(&keys)[..out.len()]);
        }
    }

    /// `group` is `real <= m` rows of `inner` elements; rows `real..m` are padding.
    fn row_group<T>(&self, group: &[T], inner: usize, out: &mut [bool], s: &mut Scratch<K>)
    where
        F: Fn(&T) -> K,
    {
        let m = self.m;
        for i0 in (0..inner).step_by(TILE) {
            let len = TILE.min(inner - i0);
            let keys = &mut s.keys[..m * len];
            for (j, lane) in keys.chunks_exact_mut(len).enumerate() {
                match group.get(j * inner + i0..j * inner + i0 + len) {
                    Some(row) => lane.iter_mut().zip(row).for_each(|(k, x)| *k = (self.key)(x)),
                    None => lane.fill(self.pad),
                }
            }
            // Flags go straight to the output rows; padding rows have no output.
            self.rank_lanes(keys, len, &mut out[i0..], inner, &mut s.rank[..len]);
        }
    }

    /// Writes `rank(j, i) < n` for every real lane j (those with room in `out`) to
    /// `out[j * stride + i]`, `i < len`, where `keys` holds m lanes of `len` keys.
    fn rank_lanes(&self, keys: &[K], len: usize, out: &mut [bool], stride: usize, rank: &mut [u8]) {
        let n = self.n as u8;
        for j in 0..self.m {
            let Some(dst) = out.get_mut(j * stride..j * stride + len) else {
                break;
            };
            let kj = &keys[j * len..(j + 1) * len];
            rank.fill(0);
            for k in 0..self.m {
                let kk = &keys[k * len..(k + 1) * len];
                // Ties count against j only for earlier members (the sort is stable).
                if k < j {
                    rank.iter_mut()
                        .zip(kk.iter().zip(kj))
                        .for_each(|(r, (a, b))| *r += u8::from(a <= b));
                } else if k > j {
                    rank.iter_mut()
                        .zip(kk.iter().zip(kj))
                        .for_each(|(r, (a, b))| *r += u8::from(a < b));
                }
            }
            dst.iter_mut().zip(rank.iter()).for_each(|(d, &r)| *d = r < n);
        }
    }
}
