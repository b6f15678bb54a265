// n:m sparsity: the stable rank of each element inside its group of m along the channel axis.
//
// Exactness: numpy's argsort is an insertion sort for m <= 16, i.e. stable, so element j of a group
// is pruned iff its rank `#{k: key_k < key_j} + #{k < j: key_k == key_j}` is < n. Ranks are
// computed on integer keys only. The trailing group of a channel run is padded with key 0 (a zero
// magnitude) that takes part in the ranking; prunes that land on padding are lost, exactly as on
// the CPU. The host sends only m <= 16 here (numpy's median-of-3 partitioning decides ties above).
// Each chunk holds whole group bands, so every neighbour read is inside the chunk.

fn nm_pruned(local_i: u32) -> bool {
    let f = p.base + local_i;
    let c = (f / p.inner) % p.channel;
    let j_self = c % p.group;
    let k_self = mag_key(elem_bits(local_i));
    // Chunk-local index of the group's first element (channel g0 = c - j_self).
    let first = local_i - j_self * p.inner;
    var rank = 0u;
    for (var j = 0u; j < p.group; j = j + 1u) {
        var k = 0u;
        if (c - j_self + j < p.channel) {
            k = mag_key(elem_bits(first + j * p.inner));
        }
        if (k < k_self || (k == k_self && j < j_self)) {
            rank = rank + 1u;
        }
    }
    return rank < p.n_prune;
}
