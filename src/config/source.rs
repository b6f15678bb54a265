//! Reading a config file's text safely: only regular files, at most [`MAX_CONFIG_BYTES`], UTF-8.
//!
//! Every refusal is `Error::Config` naming the file (exit 2); only an operating-system failure to
//! open or read an existing path stays `Error::Io`.

use std::io::Read;
use std::path::Path;

use crate::open_file::{kind_of, open_nonblocking, Links};
use crate::{Error, Result};

/// Largest config file mlprune reads, in bytes.
///
/// coremltools' `from_dict` layout holds one small mapping per op type or op name, about 30–100
/// bytes an entry. The cap keeps a wrong path (a disk image, a log, a file something is still
/// appending to) from being pulled into memory and handed to the parsers; what a file within it
/// may hold is bounded by `super::limits::MAX_CONFIG_NODES` (62,000 entries of
/// `name: {target_sparsity: 0.5}`, 125,000 of `name: null`: more than the ops of any model).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

fn config_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {reason}", path.display()))
}

/// Reads at most `cap + 1` bytes of `reader`; more than `cap` is refused. The check is on the bytes
/// actually read, so a file that grows, or reports a wrong size (procfs), cannot get past it.
pub(crate) fn read_capped(path: &Path, reader: impl Read, cap: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(config_error(
            path,
            format!(
                "larger than {} MiB; a coremltools config is far smaller, refusing to read it",
                cap >> 20
            ),
        ));
    }
    Ok(bytes)
}

/// The text of a config file: a regular file (after following links), at most
/// [`MAX_CONFIG_BYTES`], valid UTF-8.
pub(crate) fn read_config_text(path: &Path) -> Result<String> {
    // Without blocking: opening a FIFO for reading waits for a writer, forever if none comes.
    let file = open_nonblocking(path, Links::Follow).map_err(|e| Error::io(path, e))?;
    // The handle's own metadata: what was opened, not what the path names a moment later.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(config_error(
            path,
            format!(
                "is {}; a config must be a regular JSON or YAML file",
                kind_of(&meta)
            ),
        ));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(config_error(
            path,
            format!(
                "is {} bytes, larger than {} MiB; a coremltools config is far smaller, refusing to read it",
                meta.len(),
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    let bytes = read_capped(path, &file, MAX_CONFIG_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        config_error(
            path,
            format!(
                "not UTF-8 text: invalid byte 0x{:02x} at offset {at} (line {line}); JSON and YAML configs must be UTF-8",
                bytes[at]
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_message(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn reads_at_most_one_byte_past_the_cap() {
        // An endless reader: the cap is enforced on what is read, not on any declared size.
        let endless = std::io::repeat(b'a');
        let m = config_message(read_capped(Path::new("c.yaml"), endless, 1 << 20));
        assert!(m.starts_with("c.yaml: larger than 1 MiB"), "{m}");
        let exact = read_capped(Path::new("c.yaml"), std::io::repeat(b'a').take(1 << 20), 1 << 20);
        assert_eq!(exact.unwrap().len(), 1 << 20);
    }

    #[test]
    fn refuses_directories_and_invalid_utf8_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = config_message(read_config_text(dir.path()));
        assert!(m.contains("is a directory"), "{m}");
        assert!(m.starts_with(&dir.path().display().to_string()), "{m}");

        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, b"config_type: x\n# \xff\n").unwrap();
        let m = config_message(read_config_text(&bad));
        assert!(m.ends_with("bad.yaml: not UTF-8 text: invalid byte 0xff at offset 17 (line 2); JSON and YAML configs must be UTF-8"), "{m}");

        let missing = dir.path().join("missing.yaml");
        assert!(matches!(read_config_text(&missing), Err(Error::Io { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("c.json");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        // No writer ever opens it: a blocking open would hang this test.
        let m = config_message(read_config_text(&fifo));
        assert!(
            m.ends_with("c.json: is a FIFO; a config must be a regular JSON or YAML file"),
            "{m}"
        );
        let m = config_message(read_config_text(Path::new("/dev/zero")));
        assert!(m.contains("is a character device"), "{m}");
    }
}
