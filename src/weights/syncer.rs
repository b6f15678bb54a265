//! Flushes a file to disk on a thread of its own while it is still being written.
//!
//! The package is committed only after an fsync of every file. Flushing `weight.bin` as it grows
//! leaves that final fsync little to wait for; doing it here rather than on the writer thread means
//! waiting for the disk never holds up the writes, and through them the pruning.

use std::fs::File;
use std::io;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

pub struct Syncer {
    requests: Option<SyncSender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Syncer {
    /// Starts the thread; `file` is a second handle of the file being written.
    pub fn start(file: File) -> io::Result<Syncer> {
        // One request can wait while a sync runs: every sync covers all the bytes written before
        // it starts, so requests made meanwhile collapse into that one.
        let (requests, pending) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("mlprune-syncer".into())
            .spawn(move || {
                for () in pending {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Syncer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Asks for a sync of everything written so far, without waiting for it. Fails with the error a
    /// previous sync stopped on: a write-back error must reach the caller, since a later fsync on
    /// another handle may no longer report it.
    pub fn request(&mut self) -> io::Result<()> {
        match self.requests.as_ref().map(|r| r.try_send(())) {
            Some(Ok(())) | Some(Err(TrySendError::Full(()))) => Ok(()),
            _ => self
                .finish()
                .and(Err(io::Error::other("the sync thread stopped"))),
        }
    }

    /// Waits for the syncs asked for so far; the first error any of them met.
    pub fn finish(&mut self) -> io::Result<()> {
        drop(self.requests.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the sync thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    /// Never leaves the thread running past the writer that owns it.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncs_requested_while_writing_finish_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("w.bin")).unwrap();
        let mut syncer = Syncer::start(file.try_clone().unwrap()).unwrap();
        for _ in 0..50 {
            file.write_all(&[7u8; 4096]).unwrap();
            syncer.request().unwrap();
        }
        syncer.finish().unwrap();
        // Finished: later requests fail instead of being lost.
        assert!(syncer.request().is_err());
        assert_eq!(
            std::fs::metadata(dir.path().join("w.bin")).unwrap().len(),
            50 * 4096
        );
    }
}
