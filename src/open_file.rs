//! Opening a path another process may swap meanwhile (the input's files, an old OUTPUT, a scratch
//! path): an `open(2)` of a FIFO for reading waits for a writer, forever if none comes, and
//! checking the type by path first leaves a window for the swap (red-team, round 19: `weight.bin`
//! swapped for a FIFO hung `prune`; one at OUTPUT hung a `--force` commit with signals held off).
//!
//! Every open here passes `O_NONBLOCK`, which returns at once whatever the path names, and the
//! type is then checked on the handle (`fstat`): what is checked is what is read.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::Path;

/// Whether the last component of the path may be a symbolic link to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Links {
    Follow,
    NoFollow,
}

/// Opens `path` for reading without ever blocking on it; the handle may be of any type.
#[cfg(unix)]
pub(crate) fn open_nonblocking(path: &Path, links: Links) -> io::Result<File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = OFlags::NONBLOCK | OFlags::NOCTTY;
    if links == Links::NoFollow {
        flags |= OFlags::NOFOLLOW;
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
}

/// Elsewhere there are no FIFOs that block an open; the type checks still apply.
#[cfg(not(unix))]
pub(crate) fn open_nonblocking(path: &Path, _links: Links) -> io::Result<File> {
    File::open(path)
}

/// Opens `path` for reading if it is a regular file (checked on the handle), in blocking mode again
/// for the reads; `Ok(Err(kind))` says what else it is ("a FIFO", "a directory", …).
pub(crate) fn open_regular(path: &Path, links: Links) -> io::Result<Result<File, &'static str>> {
    let file = open_nonblocking(path, links)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err(kind_of(&meta)));
    }
    // No effect on a regular file's reads, but nothing downstream expects the flag.
    #[cfg(unix)]
    {
        use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
        fcntl_setfl(&file, fcntl_getfl(&file)? - OFlags::NONBLOCK)?;
    }
    Ok(Ok(file))
}

/// [`open_regular`] where anything but a regular file is an `io::Error` saying what it is.
pub(crate) fn open_regular_or_err(path: &Path, links: Links) -> io::Result<File> {
    open_regular(path, links)?.map_err(|kind| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {kind}, not a regular file"),
        )
    })
}

/// Opens the folder at `path` (never following a link there), to lock or sync it.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    let file = open_nonblocking(path, Links::NoFollow)?;
    if !file.metadata()?.is_dir() {
        return Err(io::ErrorKind::NotADirectory.into());
    }
    Ok(file)
}

/// What a path's metadata says it is, for messages.
pub(crate) fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        return "a regular file";
    }
    if t.is_dir() {
        return "a directory";
    }
    if t.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        // Would block forever (no writer) with a plain open.
        assert_eq!(open_regular(&fifo, Links::Follow).unwrap().unwrap_err(), "a FIFO");
        assert_eq!(
            open_regular(&fifo, Links::NoFollow).unwrap().unwrap_err(),
            "a FIFO"
        );
        let err = open_regular_or_err(&fifo, Links::Follow).unwrap_err();
        assert!(err.to_string().contains("is a FIFO, not a regular file"), "{err}");
        assert!(open_dir(&fifo).is_err());
        assert_eq!(
            open_regular(dir.path(), Links::Follow).unwrap().unwrap_err(),
            "a directory"
        );
    }

    #[test]
    fn a_regular_file_is_read_in_blocking_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"bytes").unwrap();
        let file = open_regular(&path, Links::NoFollow).unwrap().unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        assert_eq!(std::io::read_to_string(file).unwrap(), "bytes");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open_regular(&link, Links::NoFollow).is_err(), "no link followed");
        assert!(open_regular(&link, Links::Follow).unwrap().is_ok());
        assert!(open_dir(dir.path()).is_ok());
    }
}
