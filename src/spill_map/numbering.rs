//! Byte strings numbered in the order first met, bounded in memory: the first few thousand in a
//! hash map, the rest in a [`SpillDict`]. Deduplication numbers block paths and printed types with
//! it (a model of many one-op blocks has a block path per op: 1,200,000 of them held 220 MB as a
//! map of paths), and the shared-blob table the blob keys of the plan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::SpillDict;
use crate::error::{Error, Result};

/// Keys a [`Numbering`] holds in its hash map.
const HELD_NUMBERS: usize = 4096;

#[derive(Default)]
pub struct Numbering {
    held: HashMap<Vec<u8>, u32>,
    spilled: Option<SpillDict>,
    dir: Option<PathBuf>,
    next: u32,
}

fn stored_number(bytes: Vec<u8>) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("numbers are stored as 4 bytes"))
}

impl Numbering {
    /// An empty numbering whose scratch files, if it needs them, go in `dir`.
    pub fn new_in(dir: Option<&Path>) -> Self {
        Numbering {
            dir: dir.map(Path::to_owned),
            ..Numbering::default()
        }
    }

    /// How many keys are numbered: the number the next new key gets.
    pub fn len(&self) -> u32 {
        self.next
    }

    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    /// The number of `key`, given now if it has none.
    pub fn number(&mut self, key: &[u8]) -> Result<u32> {
        if let Some(&number) = self.held.get(key) {
            return Ok(number);
        }
        let number = self.next;
        let next = number
            .checked_add(1)
            .ok_or_else(|| Error::Graph("more than 2^32 distinct keys to number".into()))?;
        if self.held.len() < HELD_NUMBERS {
            self.held.insert(key.to_vec(), number);
        } else {
            let dir = self.dir.as_deref();
            let spilled = self.spilled.get_or_insert_with(|| SpillDict::new_in(dir));
            if let Some(known) = spilled.get_or_insert(key, &number.to_le_bytes())? {
                return Ok(stored_number(known));
            }
        }
        self.next = next;
        Ok(number)
    }

    /// The number of `key`, if it has one.
    pub fn find(&self, key: &[u8]) -> Result<Option<u32>> {
        if let Some(&number) = self.held.get(key) {
            return Ok(Some(number));
        }
        match &self.spilled {
            Some(spilled) => Ok(spilled.get(key)?.map(stored_number)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_the_same_past_the_keys_held_in_memory() {
        let mut numbering = Numbering::new_in(None);
        let key = |i: u32| format!("block {i}").into_bytes();
        let count = HELD_NUMBERS as u32 * 3;
        for i in 0..count {
            assert_eq!(numbering.number(&key(i)).unwrap(), i);
        }
        assert_eq!(numbering.held.len(), HELD_NUMBERS);
        assert!(numbering.spilled.is_some());
        for i in (0..count).rev() {
            assert_eq!(numbering.number(&key(i)).unwrap(), i, "{i}");
            assert_eq!(numbering.find(&key(i)).unwrap(), Some(i), "{i}");
        }
        assert_eq!(numbering.find(b"new").unwrap(), None);
        assert_eq!(numbering.len(), count);
        assert_eq!(numbering.number(b"new").unwrap(), count);
    }
}
