//! A float tensor pruned straight from the input's page cache.
//!
//! Reading a tensor copies it out of the page cache into a buffer, and a fresh buffer costs a page
//! fault and a zeroed page per 4 KiB on top; that was most of the system time of a run. A mapped
//! tensor is read where it lies: the kernels compact its kept values into an output buffer (which
//! the writer recycles), so neither the copy nor an input buffer exists. The mapping covers only
//! the tensor's bytes and is dropped after the tensor, which releases its pages from our resident
//! set (the memory bound counts them while mapped).
//!
//! The input must not be truncated while it is mapped: the kernel then answers a read of the lost
//! pages with SIGBUS, which kills the process. mlprune never writes its input, and `map` checks the
//! file's current length first, so a file that is already too short (truncated before or during
//! the run, up to this tensor) is read instead and fails with a clean error. What remains is a
//! truncation by another process in the milliseconds a tensor is mapped; the README's Safety section
//! records why mapping is still worth it (commit 5de164c: system time 0.29 → 0.12 s).

use std::fs::File;

use memmap2::{Mmap, MmapOptions};

use super::is_small_tensor;
use crate::dtype::ScalarType;
use crate::tensor::TensorView;

/// One tensor's bytes, mapped read-only.
pub struct MappedTensor {
    map: Mmap,
    dtype: ScalarType,
}

impl MappedTensor {
    /// Maps `len` bytes at `offset` of `file` holding `dtype` values, with every page mapped
    /// up front (`populate`: on the reader thread, so the kernels then run without page faults).
    /// `None` where mapping does not apply (other dtypes, big-endian hosts, a small tensor
    /// ([`is_small_tensor`]), an offset not aligned for the type, a file now shorter than
    /// `offset + len`, or a failed map): the caller reads the tensor instead, which reports a short
    /// file as an error.
    pub fn map(file: &File, offset: u64, len: u64, dtype: ScalarType) -> Option<MappedTensor> {
        let elem = match dtype {
            ScalarType::Float16 => 2,
            ScalarType::Float32 => 4,
            _ => return None,
        };
        if cfg!(target_endian = "big") || is_small_tensor(len) || !offset.is_multiple_of(elem) {
            return None;
        }
        // Mapping past the end of the file succeeds, and the first touch of a page past it is
        // SIGBUS: only map what the file holds now.
        let end = offset.checked_add(len)?;
        if file.metadata().ok()?.len() < end {
            return None;
        }
        let len = usize::try_from(len).ok()?;
        // SAFETY: the mapping is read-only and private to this value, and lies within the file's
        // current length (checked above); see the module doc for the one way it can still fail (the
        // file truncated by another process while mapped).
        let map = unsafe { MmapOptions::new().offset(offset).len(len).populate().map(file) }.ok()?;
        let mapped = MappedTensor { map, dtype };
        mapped.view().is_some().then_some(mapped)
    }

    /// The values, typed.
    pub fn view(&self) -> Option<TensorView<'_>> {
        match self.dtype {
            ScalarType::Float16 => bytemuck::try_cast_slice(&self.map).ok().map(TensorView::F16),
            ScalarType::Float32 => bytemuck::try_cast_slice(&self.map).ok().map(TensorView::F32),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::SMALL_TENSOR_BYTES;
    use std::io::Write;

    #[test]
    fn a_mapped_tensor_views_the_bytes_at_its_offset() {
        let count = SMALL_TENSOR_BYTES as usize / 4 + 10;
        let values: Vec<f32> = (0..count).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0xAB; 64]).unwrap();
        file.write_all(bytemuck::cast_slice(&values)).unwrap();
        let len = 4 * count as u64;
        let mapped = MappedTensor::map(&file, 64, len, ScalarType::Float32).expect("maps");
        match mapped.view() {
            Some(TensorView::F32(v)) => assert_eq!(v, &values[..]),
            _ => panic!("wrong view"),
        }
        let halves = MappedTensor::map(&file, 64, len, ScalarType::Float16).expect("maps");
        assert_eq!(halves.view().map(|v| v.len()), Some(2 * count));
    }

    #[test]
    fn what_cannot_be_mapped_is_left_to_a_read() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![0u8; 2 * SMALL_TENSOR_BYTES as usize])
            .unwrap();
        assert!(MappedTensor::map(&file, 64, SMALL_TENSOR_BYTES, ScalarType::Float32).is_some());
        assert!(
            MappedTensor::map(&file, 66, SMALL_TENSOR_BYTES, ScalarType::Float32).is_none(),
            "misaligned"
        );
        assert!(
            MappedTensor::map(&file, 64, SMALL_TENSOR_BYTES - 4, ScalarType::Float32).is_none(),
            "small: read"
        );
        assert!(
            MappedTensor::map(&file, 64, 0, ScalarType::Float16).is_none(),
            "empty"
        );
        assert!(
            MappedTensor::map(&file, 64, SMALL_TENSOR_BYTES, ScalarType::Int8).is_none(),
            "not a float"
        );
    }

    #[test]
    fn a_file_shorter_than_the_tensor_is_not_mapped() {
        // Mapping it would succeed and the first read past the end would kill the process.
        let len = SMALL_TENSOR_BYTES;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![0u8; 4096 + len as usize]).unwrap();
        assert!(MappedTensor::map(&file, 4096, len, ScalarType::Float16).is_some());
        assert!(MappedTensor::map(&file, 4096, len + 2, ScalarType::Float16).is_none());
        file.set_len(4096 + len - 2).unwrap();
        assert!(MappedTensor::map(&file, 4096, len, ScalarType::Float16).is_none());
        assert!(MappedTensor::map(&file, u64::MAX - 1, len, ScalarType::Float16).is_none());
    }
}
