//! What the run knows of each `weight.bin` blob the planned consts read, bounded in memory
//! (issue 18): a multifunction package whose functions share every weight has a shared blob per
//! tensor, and holding a key and the pruned op of each took about 1 KiB a tensor (187 MB for
//! 160,000 consts of 32x32).
//!
//! Each distinct [`BlobKey`] gets a number ([`Numbering`], a few thousand in memory, the rest in a
//! [`crate::spill_map::SpillDict`]); what is known of it is a fixed-size record in a [`PagedVec`] under that number, and the outcome of pruning it, once
//! there is one, a record of a [`SpillLog`]. All three stay within a few MiB and move to unlinked
//! scratch files past that.

use std::path::Path;

use prost::Message;

use super::{blob_key_of, BlobKey, Outcome};
use crate::error::{Error, Result};
use crate::proto::mil::{Operation, Value};
use crate::spill_map::paged::{PagedVec, Record, Spill};
use crate::spill_map::{Numbering, SpillLog};

/// A blob several planned consts read, by its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedBlob(u32);

/// What is known of one blob key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct KeyState {
    /// Planned consts reading it, counted to two.
    pub readers: u8,
    /// Whether one of them is to be pruned.
    pub pruned: bool,
    /// The plan index + 1 of the first of them whose config was compared, 0 before.
    pub first_compared: u32,
    /// The number of that config (see `check_shared_configs`).
    pub config: u32,
    /// The position + 1 of the outcome in the log, 0 before there is one.
    outcome: u64,
    /// The op index + 1 of a reader `--exclude` skipped, and of one still pruned, 0 before.
    excluded_reader: u32,
    pruned_reader: u32,
}

impl Record for KeyState {
    const SIZE: usize = 26;
    fn put(&self, out: &mut [u8]) {
        out[0] = self.readers;
        out[1] = u8::from(self.pruned);
        out[2..6].copy_from_slice(&self.first_compared.to_le_bytes());
        out[6..10].copy_from_slice(&self.config.to_le_bytes());
        out[10..18].copy_from_slice(&self.outcome.to_le_bytes());
        out[18..22].copy_from_slice(&self.excluded_reader.to_le_bytes());
        out[22..26].copy_from_slice(&self.pruned_reader.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        KeyState {
            readers: bytes[0],
            pruned: bytes[1] != 0,
            first_compared: u32_at(2),
            config: u32_at(6),
            outcome: u64::from_le_bytes(bytes[10..18].try_into().expect("8 bytes")),
            excluded_reader: u32_at(18),
            pruned_reader: u32_at(22),
        }
    }
}

/// The blob keys of the planned consts, numbered, with what is known of each.
pub struct BlobReaders {
    numbers: Numbering,
    states: PagedVec<KeyState>,
    outcomes: SpillLog,
    any_shared: bool,
}

impl Default for BlobReaders {
    fn default() -> Self {
        BlobReaders::new_in(None)
    }
}

impl BlobReaders {
    /// An empty table whose scratch files go to `scratch` (the system temporary folder when
    /// `None`).
    pub fn new_in(scratch: Option<&Path>) -> Self {
        BlobReaders {
            numbers: Numbering::new_in(scratch),
            states: PagedVec::new(Spill::in_dir(scratch)),
            outcomes: SpillLog::new_in(scratch),
            any_shared: false,
        }
    }
}

impl std::fmt::Debug for BlobReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReaders")
            .field("keys", &self.states.len())
            .field("any_shared", &self.any_shared)
            .finish()
    }
}

/// The bytes a key is found by: offset, dtype, then each dimension.
fn key_bytes((offset, dtype, shape): &BlobKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(9 + 8 * shape.len());
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.push(*dtype as u8);
    for d in shape {
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    bytes
}

impl BlobReaders {
    /// The number of `key`, if it has one.
    pub(super) fn number(&self, key: &BlobKey) -> Result<Option<u32>> {
        self.numbers.find(&key_bytes(key))
    }

    /// The number of `key`, and its state: a fresh one for a key not met before.
    pub(super) fn number_or_insert(&mut self, key: &BlobKey) -> Result<(u32, KeyState)> {
        let fresh = self.numbers.len();
        let number = self.numbers.number(&key_bytes(key))?;
        if number != fresh {
            return Ok((number, self.state(number)?));
        }
        self.states.push(KeyState::default())?;
        Ok((number, KeyState::default()))
    }

    pub(super) fn state(&self, number: u32) -> Result<KeyState> {
        self.states
            .get(number as usize)?
            .ok_or_else(|| Error::Graph(format!("blob number {number} of {}", self.states.len())))
    }

    pub(super) fn set_state(&mut self, number: u32, state: KeyState) -> Result<()> {
        self.any_shared |= state.readers > 1;
        self.states.set(number as usize, state)
    }

    /// How many keys are numbered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.states.len()
    }

    /// Forgets every key when none is shared: the engine then asks nothing more.
    pub(super) fn keep_only_if_shared(self) -> Self {
        if self.any_shared {
            self
        } else {
            BlobReaders::default()
        }
    }

    /// Whether any blob is read by several planned consts (most models have none).
    pub fn any_shared(&self) -> bool {
        self.any_shared
    }

    /// The blob `key` names, if several planned consts read it.
    pub fn shared(&self, key: &BlobKey) -> Result<Option<SharedBlob>> {
        if !self.any_shared {
            return Ok(None);
        }
        let Some(number) = self.number(key)? else {
            return Ok(None);
        };
        Ok((self.state(number)?.readers > 1).then_some(SharedBlob(number)))
    }

    /// The blob a const `value` reads, if several planned consts read it; nothing is computed when
    /// no blob is shared.
    pub fn shared_of(&self, value: &Value) -> Result<Option<SharedBlob>> {
        if !self.any_shared {
            return Ok(None);
        }
        match blob_key_of(value) {
            Some(key) => self.shared(&key),
            None => Ok(None),
        }
    }

    /// What became of `blob` the first time a const read it, if that happened yet.
    pub fn outcome(&self, blob: SharedBlob) -> Result<Option<Outcome>> {
        let position = match self.state(blob.0)?.outcome {
            0 => return Ok(None),
            p => p - 1,
        };
        let mut length = [0; 4];
        self.outcomes.read(position, &mut length)?;
        let mut bytes = vec![0; u32::from_le_bytes(length) as usize];
        self.outcomes.read(position + 4, &mut bytes)?;
        decode_outcome(&bytes).map(Some)
    }

    /// Notes that the const at `op_index`, reading `blob`, is skipped by `--exclude` (or still
    /// pruned): once the blob has readers of both kinds, the op indices of the first of each.
    pub fn note_exclusion(
        &mut self,
        blob: SharedBlob,
        op_index: usize,
        excluded: bool,
    ) -> Result<Option<(usize, usize)>> {
        let mut state = self.state(blob.0)?;
        let reader = if excluded {
            &mut state.excluded_reader
        } else {
            &mut state.pruned_reader
        };
        if *reader == 0 {
            *reader = op_index as u32 + 1;
            self.set_state(blob.0, state)?;
        }
        Ok((state.excluded_reader > 0 && state.pruned_reader > 0).then(|| {
            (
                state.excluded_reader as usize - 1,
                state.pruned_reader as usize - 1,
            )
        }))
    }

    /// Records what became of `blob`, if other consts read it too (`outcome` is called only then).
    pub fn record(&mut self, blob: Option<SharedBlob>, outcome: impl FnOnce() -> Outcome) -> Result<()> {
        let Some(SharedBlob(number)) = blob else {
            return Ok(());
        };
        let bytes = encode_outcome(&outcome());
        let length = u32::try_from(bytes.len()).map_err(|_| Error::Graph("a pruned op of 4 GiB".into()))?;
        let position = self.outcomes.append(&[&length.to_le_bytes(), &bytes])?;
        let mut state = self.state(number)?;
        state.outcome = position + 1;
        self.set_state(number, state)
    }
}

const DEVICES: [&str; 2] = ["cpu", "gpu"];

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    let device_code = |device: &str| DEVICES.iter().position(|d| *d == device).unwrap_or(0) as u8;
    let mut out = Vec::new();
    match outcome {
        Outcome::Skipped {
            reason,
            first,
            device,
        } => {
            out.extend([0, device_code(device)]);
            put_text(&mut out, reason);
            put_text(&mut out, first);
        }
        Outcome::Pruned {
            kept,
            bytes_after,
            op,
            first,
            device,
        } => {
            out.extend([1, device_code(device)]);
            out.extend_from_slice(&kept.to_le_bytes());
            out.extend_from_slice(&bytes_after.to_le_bytes());
            put_text(&mut out, first);
            op.encode(&mut out).expect("a Vec grows as needed");
        }
    }
    out
}

/// Reads back what [`encode_outcome`] wrote (into the run's own scratch file).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Graph("a shared blob's outcome read back short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn text(&mut self) -> Result<String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| Error::Graph("a shared blob's outcome read back garbled".into()))
    }
}

fn decode_outcome(bytes: &[u8]) -> Result<Outcome> {
    let mut r = Reader(bytes);
    let head = r.take(2)?;
    let device = DEVICES[usize::from(head[1]).min(DEVICES.len() - 1)];
    Ok(match head[0] {
        0 => Outcome::Skipped {
            reason: r.text()?,
            first: r.text()?,
            device,
        },
        _ => {
            let kept = r.u64()?;
            let bytes_after = r.u64()?;
            let first = r.text()?;
            let op = Operation::decode(r.0)
                .map_err(|e| Error::Graph(format!("a shared blob's pruned op read back: {e}")))?;
            Outcome::Pruned {
                kept,
                bytes_after,
                op,
                first,
                device,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::build::const_op;
    use crate::mil::value::blob_value;

    fn key(i: u64) -> BlobKey {
        (64 * i, ScalarType::Float16, vec![i % 7 + 1, 3])
    }

    #[test]
    fn keys_are_numbered_once_and_outcomes_read_back() {
        let mut readers = BlobReaders::default();
        for i in 0..300_000 {
            let (number, state) = readers.number_or_insert(&key(i)).unwrap();
            assert_eq!((number, state), (i as u32, KeyState::default()));
        }
        assert_eq!(readers.shared(&key(5)).unwrap(), None, "nothing shared yet");
        let (number, mut state) = readers.number_or_insert(&key(5)).unwrap();
        assert_eq!(number, 5);
        state.readers = 2;
        readers.set_state(number, state).unwrap();
        assert_eq!(readers.len(), 300_000);
        assert_eq!(
            readers.number(&(320, ScalarType::Float32, vec![6, 3])).unwrap(),
            None
        );
        let blob = readers.shared(&key(5)).unwrap().expect("shared");
        assert_eq!(readers.shared(&key(6)).unwrap(), None);
        assert!(readers.outcome(blob).unwrap().is_none());

        let op = const_op("w_sparse", blob_value(ScalarType::Float16, &[6, 3], 4096));
        readers
            .record(Some(blob), || Outcome::Pruned {
                kept: 9,
                bytes_after: 21,
                op: op.clone(),
                first: "main/w".into(),
                device: "gpu",
            })
            .unwrap();
        match readers.outcome(blob).unwrap() {
            Some(Outcome::Pruned {
                kept: 9,
                bytes_after: 21,
                op: read,
                first,
                device: "gpu",
            }) => assert_eq!((read, first.as_str()), (op, "main/w")),
            other => panic!("{other:?}"),
        }
        let (skipped, _) = readers.number_or_insert(&key(7)).unwrap();
        readers
            .set_state(
                skipped,
                KeyState {
                    readers: 2,
                    ..KeyState::default()
                },
            )
            .unwrap();
        let skipped = readers.shared(&key(7)).unwrap().unwrap();
        let reason = "sparsity below the minimum ✓".to_owned();
        readers
            .record(Some(skipped), || Outcome::Skipped {
                reason: reason.clone(),
                first: "f2/v".into(),
                device: "cpu",
            })
            .unwrap();
        assert!(matches!(
            readers.outcome(skipped).unwrap(),
            Some(Outcome::Skipped { reason: r, first, device: "cpu" }) if r == reason && first == "f2/v"
        ));
    }

    #[test]
    fn a_key_state_reads_back_as_written() {
        let state = KeyState {
            readers: 2,
            pruned: true,
            first_compared: 0x0102_0304,
            config: 0x0506_0708,
            outcome: 0x090a_0b0c_0d0e_0f10,
            excluded_reader: 0x1112_1314,
            pruned_reader: 0x1516_1718,
        };
        let mut bytes = [0; KeyState::SIZE];
        state.put(&mut bytes);
        assert_eq!(KeyState::take(&bytes), state);
    }

    #[test]
    fn without_a_shared_key_nothing_is_kept() {
        let mut readers = BlobReaders::default();
        readers.number_or_insert(&key(1)).unwrap();
        let readers = readers.keep_only_if_shared();
        assert_eq!(readers.len(), 0);
        assert!(!readers.any_shared());
        assert_eq!(readers.shared(&key(1)).unwrap(), None);
    }
}
