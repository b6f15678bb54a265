//! The axis bookkeeping shared by block and n:m sparsity.
//!
//! Both modes work on `dim` (0 or 1) of a row-major tensor of rank ≥ 2. Whatever transposes numpy
//! performs, each block or group is a run of consecutive indices along `dim` at one fixed index of
//! every other axis, so the tensor is viewed as `[outer, channel, inner]`:
//! * dim 0: `outer = 1`, `channel = shape[0]`, `inner = prod(shape[1..])`;
//! * dim 1: `outer = shape[0]`, `channel = shape[1]`, `inner = prod(shape[2..])`;
//!
//! and element (o, c, i) sits at flat index `(o * channel + c) * inner + i`. The order in which
//! numpy visits the runs does not matter: runs are independent.

use super::KernelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    pub outer: usize,
    pub channel: usize,
    pub inner: usize,
}

impl ChannelLayout {
    /// Validates `shape` against `len` and `dim` and returns the view. Errors for rank < 2, dim not
    /// 0/1, or a shape whose product differs from `len` (or overflows).
    pub fn new(shape: &[usize], len: usize, dim: usize) -> Result<Self, KernelError> {
        if shape.len() < 2 {
            return Err(KernelError(format!(
                "structural pruning needs rank >= 2, got shape {shape:?}"
            )));
        }
        if dim > 1 {
            return Err(KernelError(format!("dim must be 0 or 1, got {dim}")));
        }
        let product = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if product != Some(len) {
            return Err(KernelError(format!(
                "shape {shape:?} does not hold {len} elements"
            )));
        }
        // The partial products cannot overflow: they divide `len`, or a factor is zero.
        let prod = |s: &[usize]| s.iter().product::<usize>();
        Ok(if dim == 0 {
            ChannelLayout {
                outer: 1,
                channel: shape[0],
                inner: prod(&shape[1..]),
            }
        } else {
            ChannelLayout {
                outer: shape[0],
                channel: shape[1],
                inner: prod(&shape[2..]),
            }
        })
    }

    /// Flat index of (outer `o`, channel `c`, inner `i`).
    #[inline]
    pub fn flat(&self, o: usize, c: usize, i: usize) -> usize {
        (o * self.channel + c) * self.inner + i
    }

    /// The elements a chunk of the tensor must be a multiple of to hold only whole groups of
    /// `size` consecutive channels (n:m groups, blocks): a row of groups when `size` divides the
    /// channel count, else a whole channel run (each run ends in a short group). No overflow for a
    /// layout `new` accepted and `size <= channel`: the result is at most `channel * inner`.
    pub fn group_band(&self, size: usize) -> usize {
        if self.channel.is_multiple_of(size) {
            size * self.inner
        } else {
            self.channel * self.inner
        }
    }

    /// True division `size > channel / 2` as Python evaluates it, for non-negative integers.
    pub fn exceeds_half_channel(&self, size: usize) -> bool {
        (size as u128) * 2 > self.channel as u128
    }
}

/// coremltools asserts these ranks for structural pruning; other ranks make it raise.
pub fn check_structural_rank(shape: &[usize], what: &str) -> Result<(), KernelError> {
    if (2..=5).contains(&shape.len()) {
        Ok(())
    } else {
        Err(KernelError(format!(
            "{what} only supports weights of rank [2, 3, 4, 5], got shape {shape:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_bands_are_rows_of_groups_or_whole_runs() {
        let layout = ChannelLayout::new(&[3, 12, 5], 180, 1).unwrap();
        assert_eq!(layout.group_band(4), 20); // 4 channels of 5
        assert_eq!(layout.group_band(5), 60); // 12 channels do not split into fives: a whole run
    }

    #[test]
    fn views_conv_weights_per_dim() {
        let l0 = ChannelLayout::new(&[4, 3, 2, 2], 48, 0).ok();
        assert_eq!(
            l0,
            Some(ChannelLayout {
                outer: 1,
                channel: 4,
                inner: 12
            })
        );
        let l1 = ChannelLayout::new(&[4, 3, 2, 2], 48, 1).ok();
        assert_eq!(
            l1,
            Some(ChannelLayout {
                outer: 4,
                channel: 3,
                inner: 4
            })
        );
        // Element [1, 2, 1, 0] of a [4, 3, 2, 2] tensor: flat 1*12 + 2*4 + 1*2 + 0 = 22.
        assert_eq!(l1.map(|l| l.flat(1, 2, 2)), Some(22));
        assert!(ChannelLayout::new(&[4, 3], 11, 0).is_err());
        assert!(ChannelLayout::new(&[12], 12, 0).is_err());
        assert!(ChannelLayout::new(&[4, 3], 12, 2).is_err());
        assert!(ChannelLayout::new(&[usize::MAX, 3], 12, 0).is_err());
    }
}
