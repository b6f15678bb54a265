//! A file writer whose `write` syscalls run on a background thread, so that writing one tensor's
//! blobs overlaps reading and pruning the next.
//!
//! Small writes (records, masks, copied blobs, the values of small tensors) are gathered into
//! pieces of up to `PIECE` bytes; a larger pruned tensor's values are handed over by value
//! ([`TensorSink::write_tensor`]), never copied, and come back through
//! [`TensorSink::recycled_tensor`] once written, to be read into again. The
//! hand-over channel has no capacity: a send waits until the thread is free. So at most one item
//! is being written while the caller prepares the next, which keeps memory at two tensors at most
//! (the one being written, the one being pruned) and makes a fast producer wait for the disk.
//!
//! Seeking (only [`crate::blob::BlobWriter::finish`] does, to patch the header) first drains the
//! pipe and takes the file back; from then on writes go straight to the file. An I/O error on the
//! thread ends it; the next write, flush or seek reports that error.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::blob::{EarlierWriteFailed, TensorSink};
use crate::tensor::TensorData;
use crate::weights::is_small_tensor;
use crate::weights::syncer::Syncer;

/// Bytes gathered before a hand-over: large enough that a syscall moves a lot, small because every
/// piece in flight is resident (two at most). 8 MiB pieces held 19 MB more peak RSS than 1 MiB
/// ones on 24 × 4096² fp16 (114 → 95 MiB) at the same speed, also on 16 × 8192² (1.1–2.2 s either
/// way, page cache warm).
const PIECE: usize = 1 << 20;
/// Bytes written between two requests for an `fdatasync` (see [`Syncer`]).
const SYNC_EVERY: usize = 4 << 20;

pub struct BackgroundWriter {
    state: State,
    /// A second handle of the file, to read back what was written (positioned reads only, so
    /// the shared file offset is never moved).
    reader: File,
    /// Bytes accepted so far (the logical stream position while piped).
    position: u64,
}

enum State {
    Piped(Pipe),
    Direct(File),
    /// After a failure that consumed the pipe; every later call fails.
    Broken,
}

/// What the writer thread writes, in order.
enum Item {
    Bytes(Vec<u8>),
    Tensor(TensorData),
}

struct Pipe {
    filling: Vec<u8>,
    to_thread: SyncSender<Item>,
    pieces_back: Receiver<Vec<u8>>,
    tensors_back: Receiver<TensorData>,
    thread: JoinHandle<io::Result<File>>,
}

fn broken() -> io::Error {
    io::Error::other("an earlier write to this file failed")
}

impl BackgroundWriter {
    /// Creates (truncates) `path` and starts its writer thread.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let reader = file.try_clone()?;
        let (to_thread, from_main) = sync_channel::<Item>(0);
        let (piece_to_main, pieces_back) = sync_channel::<Vec<u8>>(2);
        // Room for a tensor's values and its mask, so that the values are not the one dropped.
        let (tensor_to_main, tensors_back) = sync_channel::<TensorData>(2);
        let thread = std::thread::Builder::new()
            .name("mlprune-writer".into())
            .spawn(move || {
                let mut file = file;
                let mut syncer = Syncer::start(file.try_clone()?)?;
                let mut unsynced = 0usize;
                for item in from_main {
                    // A full return channel means the caller did not want the buffer back: drop it.
                    match item {
                        Item::Bytes(mut piece) => {
                            file.write_all(&piece)?;
                            unsynced += piece.len();
                            piece.clear();
                            let _ = piece_to_main.try_send(piece);
                        }
                        Item::Tensor(data) => {
                            let bytes = data.as_le_bytes();
                            // In slices, each synced as soon as it is written: the disk then
                            // works while the rest is copied, and the last sync (which the
                            // commit waits for) covers one slice, not the whole tensor.
                            for slice in bytes.chunks(SYNC_EVERY) {
                                file.write_all(slice)?;
                                unsynced += slice.len();
                                if unsynced >= SYNC_EVERY {
                                    syncer.request()?;
                                    unsynced = 0;
                                }
                            }
                            drop(bytes);
                            let _ = tensor_to_main.try_send(data);
                        }
                    }
                    if unsynced >= SYNC_EVERY {
                        syncer.request()?;
                        unsynced = 0;
                    }
                }
                syncer.finish()?;
                Ok(file)
            })?;
        let pipe = Pipe {
            filling: Vec::new(),
            to_thread,
            pieces_back,
            tensors_back,
            thread,
        };
        Ok(BackgroundWriter {
            reader,
            state: State::Piped(pipe),
            position: 0,
        })
    }

    /// Hands `item` to the thread; if the thread has stopped, returns the error it stopped on.
    fn send(&mut self, item: Item) -> io::Result<()> {
        let State::Piped(pipe) = &mut self.state else {
            return Err(broken());
        };
        if pipe.to_thread.send(item).is_err() {
            return Err(self
                .drain()
                .err()
                .unwrap_or_else(|| io::Error::other("the writer thread stopped")));
        }
        Ok(())
    }

    /// Hands the piece being filled to the thread and starts a new one (a returned piece if any).
    /// With `always`, an empty piece is sent too, to wait until the thread has written everything
    /// before it.
    fn send_filling(&mut self, always: bool) -> io::Result<()> {
        let State::Piped(pipe) = &mut self.state else {
            return Ok(());
        };
        if pipe.filling.is_empty() && !always {
            return Ok(());
        }
        let next = pipe.pieces_back.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut pipe.filling, next);
        self.send(Item::Bytes(full))
    }

    /// Sends what is buffered, waits for the thread to write everything and takes the file back.
    fn drain(&mut self) -> io::Result<&mut File> {
        if let State::Piped(pipe) = &mut self.state {
            if !pipe.filling.is_empty() {
                let last = std::mem::take(&mut pipe.filling);
                // A failed send means the thread already stopped; its result says why.
                let _ = pipe.to_thread.send(Item::Bytes(last));
            }
        }
        match std::mem::replace(&mut self.state, State::Broken) {
            State::Piped(Pipe {
                to_thread, thread, ..
            }) => {
                drop(to_thread);
                let file = thread
                    .join()
                    .map_err(|_| io::Error::other("the writer thread panicked"))??;
                self.state = State::Direct(file);
            }
            other => self.state = other,
        }
        match &mut self.state {
            State::Direct(file) => Ok(file),
            _ => Err(broken()),
        }
    }

    /// Waits for every byte to reach the file and returns it.
    pub fn into_file(mut self) -> io::Result<File> {
        self.drain()?;
        match std::mem::replace(&mut self.state, State::Broken) {
            State::Direct(file) => Ok(file),
            _ => Err(broken()),
        }
    }
}

impl Write for BackgroundWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = match &mut self.state {
            State::Piped(pipe) => {
                if pipe.filling.capacity() == 0 {
                    pipe.filling.reserve_exact(PIECE);
                }
                let n = buf.len().min(PIECE - pipe.filling.len());
                pipe.filling.extend_from_slice(&buf[..n]);
                if pipe.filling.len() == PIECE {
                    self.send_filling(false)?;
                }
                n
            }
            State::Direct(file) => file.write(buf)?,
            State::Broken => return Err(broken()),
        };
        self.position += written as u64;
        Ok(written)
    }

    /// Hands buffered bytes to the thread, which takes them once it has written everything handed
    /// over before (tensors included); unlike `BufWriter`, it does not wait for these bytes
    /// themselves to be written ([`BackgroundWriter::into_file`] does).
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            State::Piped(_) => self.send_filling(true),
            State::Direct(file) => file.flush(),
            State::Broken => Err(broken()),
        }
    }
}

impl Seek for BackgroundWriter {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        if let (State::Piped(_), SeekFrom::Current(0)) = (&self.state, to) {
            return Ok(self.position);
        }
        let position = self.drain()?.seek(to)?;
        self.position = position;
        Ok(position)
    }
}

impl TensorSink for BackgroundWriter {
    fn write_tensor(&mut self, data: TensorData) -> io::Result<()> {
        let len = data.as_le_bytes().len() as u64;
        if is_small_tensor(len) {
            // Copied into the piece like a record: a hand-over waits for the thread.
            return self.write_all(&data.as_le_bytes());
        }
        match &mut self.state {
            State::Piped(_) => {
                self.send_filling(false)?;
                self.send(Item::Tensor(data))?;
            }
            State::Direct(file) => file.write_all(&data.as_le_bytes())?,
            State::Broken => return Err(broken()),
        }
        self.position += len;
        Ok(())
    }

    fn recycled_tensor(&mut self) -> Option<TensorData> {
        match &self.state {
            State::Piped(pipe) => pipe.tensors_back.try_recv().ok(),
            _ => None,
        }
    }

    /// The thread takes an item only once it has written every earlier one, so handing over the
    /// piece being filled and then an empty one means everything before is in the file.
    fn read_written(&mut self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.state {
            State::Piped(pipe) => {
                // Bytes still in the piece being filled are read from memory: handing them over
                // and waiting would stall on every earlier tensor still queued for the thread.
                let filling_start = self.position - pipe.filling.len() as u64;
                let in_filling = at
                    .checked_sub(filling_start)
                    .and_then(|offset| usize::try_from(offset).ok())
                    .and_then(|start| pipe.filling.get(start..start.checked_add(buf.len())?));
                if let Some(bytes) = in_filling {
                    buf.copy_from_slice(bytes);
                    return Ok(());
                }
                self.send_filling(true)
                    .and_then(|()| self.send_filling(true))
                    .map_err(EarlierWriteFailed::wrap)?;
            }
            State::Direct(_) => {}
            State::Broken => return Err(EarlierWriteFailed::wrap(broken())),
        }
        read_exact_at(&self.reader, buf, at)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, at)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut at: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, at)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                at += n as u64;
            }
        }
    }
    Ok(())
}

impl Drop for BackgroundWriter {
    /// Dropped without [`BackgroundWriter::into_file`] (an error elsewhere): stop the thread after
    /// the item it is writing. The file is a staging file the caller removes.
    fn drop(&mut self) {
        if let State::Piped(pipe) = std::mem::replace(&mut self.state, State::Broken) {
            drop(pipe.to_thread);
            let _ = pipe.thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::SMALL_TENSOR_BYTES;

    #[test]
    fn bytes_arrive_in_order_across_pieces_and_seeks_patch_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let mut w = BackgroundWriter::create(&path).unwrap();
        assert_eq!(w.stream_position().unwrap(), 0);
        let big: Vec<u8> = (0..(2 * PIECE + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        let mut want = Vec::new();
        for chunk in [&b"header.."[..], &big, b"tail"] {
            w.write_all(chunk).unwrap();
            want.extend_from_slice(chunk);
        }
        // A tensor handed over by value lands between the bytes written before and after it, and
        // its buffer comes back once written; a small one is copied like any bytes.
        let elements = SMALL_TENSOR_BYTES as usize / 2 + 1;
        let tensor = TensorData::F16((0..elements).map(|i| half::f16::from_bits(i as u16)).collect());
        let small = TensorData::U8((0..=255u8).collect());
        for data in [tensor, small] {
            want.extend_from_slice(&data.as_le_bytes());
            w.write_tensor(data).unwrap();
        }
        w.write_all(b"after").unwrap();
        want.extend_from_slice(b"after");
        // The hand-over waits until the thread is free, so once "after" is taken the tensor is written.
        w.flush().unwrap();
        assert!(matches!(w.recycled_tensor(), Some(TensorData::F16(v)) if v.len() == elements));
        assert!(
            w.recycled_tensor().is_none(),
            "the small tensor was copied, not handed over"
        );
        assert_eq!(w.stream_position().unwrap(), want.len() as u64);
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(b"HEADER").unwrap();
        want[..6].copy_from_slice(b"HEADER");
        let end = w.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(end, want.len() as u64);
        w.into_file().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn what_was_written_reads_back_while_the_pipe_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let mut w = BackgroundWriter::create(&path).unwrap();
        w.write_all(b"head").unwrap();
        let tensor = TensorData::U8((0..=255u8).cycle().take(PIECE + 100).collect());
        let want = tensor.as_le_bytes().into_owned();
        w.write_tensor(tensor).unwrap();
        // Still in the piece being filled, not yet handed to the thread.
        w.write_all(b"tail").unwrap();
        let mut got = vec![0u8; 4];
        w.read_written(4 + want.len() as u64, &mut got).unwrap();
        assert_eq!(got, b"tail");
        let mut got = vec![0u8; want.len()];
        w.read_written(4, &mut got).unwrap();
        assert!(got == want, "the tensor handed over reads back whole");
        // Reading moved no write position: later bytes still land at the end.
        w.write_all(b"more").unwrap();
        drop(w.into_file().unwrap());
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[file.len() - 8..], b"tailmore");
        assert_eq!(file.len(), 12 + want.len());
    }

    #[test]
    fn a_write_error_on_the_thread_is_reported() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let Ok(mut w) = BackgroundWriter::create(Path::new("/dev/full")) else {
            return;
        };
        let piece = vec![1u8; PIECE];
        let mut failed = false;
        for _ in 0..4 {
            if w.write_all(&piece).is_err() {
                failed = true;
                break;
            }
        }
        let flushed = w.into_file();
        assert!(
            failed || flushed.is_err(),
            "the ENOSPC from the thread must surface"
        );
    }
}
