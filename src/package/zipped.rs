//! Zipped packages: safe extraction of an archive into a private directory, and writing a package
//! directory as an archive.
//!
//! Extraction trusts nothing in the archive: names are confined, symlinks and encrypted entries are
//! refused, and the entry count is capped. Only what the package uses is extracted: its manifest
//! first, then the entries under the items it declares ([`used_paths`]); the rest is never
//! decompressed. Before anything else is written, the sizes those entries declare are checked
//! against the free space of the temporary filesystem and against a cap; while writing, each
//! entry is held to its declared size and the total to the cap, so a header that understates a
//! size cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use super::folder::{MANIFEST_FILE, MAX_MANIFEST_BYTES};
use super::manifest::Manifest;
use super::paths::create_dirs_below;
use super::{used_paths, Use};
use crate::error::{Error, IoContext, Result};
use crate::open_file::{open_regular_or_err, Links};

/// Resource caps for extraction. Tests inject small ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZipLimits {
    pub max_entries: usize,
    /// Cap on the bytes read to list the archive (its central directory, mostly).
    pub max_directory_bytes: u64,
    /// Cap on the total uncompressed size of the extracted entries, declared and actual.
    pub max_total_bytes: u64,
    /// Free bytes to assume on the temporary filesystem instead of asking it (tests).
    pub free_bytes: Option<u64>,
}

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            max_entries: 100_000,
            max_directory_bytes: 32 << 20,
            max_total_bytes: 256 << 30,
            free_bytes: None,
        }
    }
}

/// Files at least this large are stored, not deflated: weight data barely compresses and
/// deflating gigabytes would dominate the run time.
const STORE_THRESHOLD: u64 = 1 << 20;
/// macOS Finder litter that zips made on a Mac carry; never part of a package.
const MACOS_METADATA_DIR: &str = "__MACOSX";
const MACOS_FOLDER_FILE: &str = ".DS_Store";
const PACKAGE_SUFFIX: &str = ".mlpackage";

/// What listing an archive may read. `ZipArchive::new` decodes every entry of the central
/// directory it picks before the entry count can be checked, at about 200 bytes of memory an
/// entry whatever the entry (issue 18: 2,000,000 empty entries in a 100 MB zip took 434 MB
/// before the count was refused). The reader it lists through counts central-header signatures
/// and bytes, and fails the listing past the caps: each decoded entry was read, signature
/// included, so the count is at least the number of entries decoded (stray signatures and
/// entries read again for another candidate directory only add to it, hence the slack).
#[derive(Clone)]
struct ListingBudget {
    state: std::rc::Rc<std::cell::RefCell<ListingState>>,
}

struct ListingState {
    listing: bool,
    max_entries: usize,
    max_signatures: usize,
    max_bytes: u64,
    signatures: usize,
    bytes: u64,
    /// The last bytes of the previous read, for a signature split between two reads.
    tail: Vec<u8>,
    exceeded: Option<String>,
}

const CENTRAL_HEADER_SIGNATURE: [u8; 4] = *b"PK\x01\x02";

impl ListingBudget {
    fn new(limits: &ZipLimits) -> Self {
        let state = ListingState {
            listing: true,
            max_entries: limits.max_entries,
            max_signatures: limits.max_entries.saturating_mul(2).saturating_add(16),
            max_bytes: limits.max_directory_bytes,
            signatures: 0,
            bytes: 0,
            tail: Vec::new(),
            exceeded: None,
        };
        ListingBudget {
            state: std::rc::Rc::new(std::cell::RefCell::new(state)),
        }
    }

    fn reader<R>(&self, inner: R) -> BudgetedReader<R> {
        BudgetedReader {
            inner,
            budget: self.clone(),
        }
    }

    /// The listing is done: reads from now on (extraction) are not counted.
    fn end(&self) {
        self.state.borrow_mut().listing = false;
    }

    /// Why listing failed: the cap it went past, or the archive's own error.
    fn explain(&self, error: zip::result::ZipError) -> String {
        self.state
            .borrow()
            .exceeded
            .clone()
            .unwrap_or_else(|| error.to_string())
    }

    fn count(&self, read: &[u8]) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if !state.listing {
            return Ok(());
        }
        state.bytes += read.len() as u64;
        let mut window = std::mem::take(&mut state.tail);
        window.extend_from_slice(read);
        state.signatures += window
            .windows(CENTRAL_HEADER_SIGNATURE.len())
            .filter(|w| *w == CENTRAL_HEADER_SIGNATURE)
            .count();
        let keep = window.len().min(CENTRAL_HEADER_SIGNATURE.len() - 1);
        state.tail = window.split_off(window.len() - keep);
        let exceeded = if state.signatures > state.max_signatures {
            Some(format!(
                "its central directory lists more entries than the limit of {}",
                state.max_entries
            ))
        } else if state.bytes > state.max_bytes {
            Some(format!(
                "listing its entries reads more than the limit of {} bytes",
                state.max_bytes
            ))
        } else {
            None
        };
        if let Some(reason) = exceeded {
            state.exceeded = Some(reason.clone());
            return Err(io::Error::other(reason));
        }
        Ok(())
    }

    /// A seek ends the bytes a signature could continue.
    fn moved(&self) {
        self.state.borrow_mut().tail.clear();
    }
}

/// A reader counted by a [`ListingBudget`].
struct BudgetedReader<R> {
    inner: R,
    budget: ListingBudget,
}

impl<R: Read> Read for BudgetedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.count(&buf[..n])?;
        Ok(n)
    }
}

impl<R: io::Seek> io::Seek for BudgetedReader<R> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.budget.moved();
        self.inner.seek(to)
    }
}

/// One archive entry that passed the checks, with its confined path.
struct PlannedEntry {
    index: usize,
    name: String,
    components: Vec<String>,
    is_dir: bool,
    declared_size: u64,
}

/// Extracts the package held by the archive at `archive_path` into `dest` (an empty directory
/// private to this process) and returns the package root, `dest/<name>.mlpackage`.
///
/// Without a readable `Manifest.json` nothing but the package folder is created, and reading the
/// folder reports the problem exactly as for a folder input.
pub(crate) fn extract_package(archive_path: &Path, dest: &Path, limits: &ZipLimits) -> Result<PathBuf> {
    let zip_error = |reason: String| Error::Zip {
        path: archive_path.to_path_buf(),
        reason,
    };
    let file = open_regular_or_err(archive_path, Links::Follow).at(archive_path)?;
    let listing = ListingBudget::new(limits);
    let reader = BufReader::with_capacity(1 << 20, listing.reader(file));
    let mut archive = ZipArchive::new(reader).map_err(|e| zip_error(listing.explain(e)))?;
    listing.end();
    if archive.len() > limits.max_entries {
        return Err(zip_error(format!(
            "{} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    if archive.has_duplicate_names() {
        return Err(zip_error("it holds two entries with the same name".into()));
    }

    let entries = plan_entries(&archive).map_err(zip_error)?;
    let (package_name, strip) = package_layout(&entries, archive_path).map_err(zip_error)?;
    let root = dest.join(&package_name);
    std::fs::create_dir(&root).map_err(|e| extract_write_error(archive_path, dest, e))?;

    // Each entry with its path relative to the package root.
    let entries: Vec<(&PlannedEntry, PathBuf)> = entries
        .iter()
        .filter_map(|e| {
            let relative = e.components.get(strip..)?;
            (!relative.is_empty()).then(|| (e, relative.iter().collect()))
        })
        .collect();
    let Some((manifest_entry, _)) = entries
        .iter()
        .find(|(e, relative)| !e.is_dir && relative == Path::new(MANIFEST_FILE))
    else {
        return Ok(root);
    };
    // Named as read_folder names it: `archive.zip/<name>.mlpackage/Manifest.json`.
    let manifest_shown = archive_path.join(&package_name).join(MANIFEST_FILE);
    let manifest_bytes = read_manifest(&mut archive, manifest_entry, archive_path, &manifest_shown)?;
    let manifest = Manifest::parse(&manifest_bytes, &manifest_shown)?;

    let used = used_paths(&manifest);
    let selected: Vec<&(&PlannedEntry, PathBuf)> = entries
        .iter()
        .filter(|(e, relative)| match used.use_of(relative) {
            Use::Used => true,
            Use::Ancestor => e.is_dir,
            Use::Unused => false,
        })
        .collect();
    let needed = selected
        .iter()
        .fold(0u64, |sum, (e, _)| sum.saturating_add(e.declared_size));
    // Free space first: it is the figure the user can act on (TMPDIR), and a claim no disk could
    // hold reads best as what it is. The cap then stops a claim that a huge disk could hold.
    check_free_space(archive_path, dest, needed, limits)?;
    if needed > limits.max_total_bytes {
        return Err(zip_error(format!(
            "uncompressed size of the entries the package uses ({needed} bytes) exceeds the \
             limit of {} bytes",
            limits.max_total_bytes
        )));
    }

    let mut written: u64 = 0;
    for (entry, relative) in selected {
        let target = root.join(relative);
        let entry_error = |reason: String| zip_error(format!("entry '{}': {reason}", entry.name));
        let entry_failure = |failure: EntryFailure| match failure {
            EntryFailure::Archive(reason) => entry_error(reason),
            EntryFailure::Write(source) => extract_write_error(archive_path, dest, source),
        };
        // Named by the entry, not by the extraction folder, which is gone by the time the user
        // reads it: a file and a folder of one name (a file `weights` beside `weights/weight.bin`).
        // A folder the temporary folder has no room for (no inode left) is its fault, not the
        // archive's (red team, session 21).
        let folder_error = |e: io::Error| match e.kind() {
            io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
                entry_error(format!("cannot be extracted beside the others: {e}"))
            }
            _ => extract_write_error(archive_path, dest, e),
        };
        if entry.is_dir {
            create_dirs_below(&root, relative).map_err(folder_error)?;
            continue;
        }
        if let Some(parent) = relative.parent() {
            create_dirs_below(&root, parent).map_err(folder_error)?;
        }
        if entry.index == manifest_entry.index {
            // Already read and checked: write it from memory.
            let mut out = create_new(&target).map_err(entry_failure)?;
            out.write_all(&manifest_bytes)
                .map_err(|e| extract_write_error(archive_path, dest, e))?;
            written += manifest_bytes.len() as u64;
            continue;
        }
        let budget = limits.max_total_bytes.saturating_sub(written);
        written += extract_file(&mut archive, entry, &target, budget).map_err(entry_failure)?;
    }
    Ok(root)
}

/// Reads the manifest entry into memory, refusing one larger than read_folder would read.
fn read_manifest<R: Read + io::Seek>(
    archive: &mut ZipArchive<R>,
    entry: &PlannedEntry,
    archive_path: &Path,
    shown: &Path,
) -> Result<Vec<u8>> {
    if entry.declared_size > MAX_MANIFEST_BYTES {
        return Err(Error::Manifest {
            path: shown.to_path_buf(),
            reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    let entry_error = |reason: String| Error::Zip {
        path: archive_path.to_path_buf(),
        reason: format!("entry '{}': {reason}", entry.name),
    };
    let reader = archive
        .by_index(entry.index)
        .map_err(|e| entry_error(e.to_string()))?;
    let mut bytes = Vec::with_capacity(entry.declared_size as usize);
    reader
        .take(entry.declared_size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| entry_error(e.to_string()))?;
    if bytes.len() as u64 != entry.declared_size {
        return Err(entry_error(format!(
            "holds {} bytes but its header declares {}",
            bytes.len(),
            entry.declared_size
        )));
    }
    Ok(bytes)
}

/// Refuses to start an extraction of `needed` bytes into `dest` that the filesystem cannot hold.
fn check_free_space(archive_path: &Path, dest: &Path, needed: u64, limits: &ZipLimits) -> Result<()> {
    let available = match limits.free_bytes {
        Some(bytes) => bytes,
        None => free_space(dest).at(dest)?,
    };
    if needed <= available {
        return Ok(());
    }
    let temp_dir = dest.parent().unwrap_or(dest);
    Err(Error::io(
        archive_path,
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "extracting it needs {needed} bytes of temporary space in {}, but only {available} \
                 bytes are available there (set TMPDIR to a folder with more room)",
                temp_dir.display()
            ),
        ),
    ))
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
#[cfg(unix)]
fn free_space(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn free_space(_dir: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

/// Checks every entry's metadata (used or not) before anything is written; returns the entries
/// worth considering (macOS litter and the archive root left out).
fn plan_entries<R: Read + io::Seek>(
    archive: &ZipArchive<R>,
) -> std::result::Result<Vec<PlannedEntry>, String> {
    let mut planned = Vec::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_data(index).map_err(|e| e.to_string())?;
        let name = entry.name().map_err(|e| e.to_string())?.into_owned();
        let components = entry_components(&name).map_err(|why| format!("entry '{name}' {why}"))?;
        if is_macos_litter(&components) {
            continue;
        }
        if entry.is_symlink() {
            return Err(format!("entry '{name}' is a symbolic link"));
        }
        if entry.encrypted() {
            return Err(format!("entry '{name}' is encrypted"));
        }
        if components.is_empty() {
            continue; // "./": the archive root itself
        }
        let is_dir = entry.is_dir();
        let declared_size = if is_dir { 0 } else { entry.size() };
        planned.push(PlannedEntry {
            index,
            name,
            components,
            is_dir,
            declared_size,
        });
    }
    Ok(planned)
}

/// Splits an entry name into path components that cannot leave the extraction folder. Both `/`
/// and `\` count as separators (some Windows tools write `\`).
fn entry_components(name: &str) -> std::result::Result<Vec<String>, &'static str> {
    if name.contains('\0') {
        return Err("has a NUL byte in its name");
    }
    if name.starts_with(['/', '\\']) {
        return Err("has an absolute path");
    }
    let mut components = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err("has a '..' path component"),
            _ => {
                let mut parsed = Path::new(part).components();
                match (parsed.next(), parsed.next()) {
                    (Some(Component::Normal(_)), None) => components.push(part.to_owned()),
                    _ => return Err("has an absolute path"),
                }
            }
        }
    }
    Ok(components)
}

fn is_macos_litter(components: &[String]) -> bool {
    components.first().is_some_and(|c| c == MACOS_METADATA_DIR)
        || components.last().is_some_and(|c| c == MACOS_FOLDER_FILE)
}

/// Where the package is in the archive: either `Manifest.json` at the root (the package folder is
/// named after the archive), or exactly one top-level `*.mlpackage/` folder. Returns the folder
/// name and how many leading components to strip.
fn package_layout(
    entries: &[PlannedEntry],
    archive_path: &Path,
) -> std::result::Result<(String, usize), String> {
    let manifest_at_root = entries
        .iter()
        .any(|e| !e.is_dir && e.components.len() == 1 && e.components[0] == MANIFEST_FILE);
    if manifest_at_root {
        // Named after the archive, within the 255 bytes a file name may have: an archive name
        // of up to 255 bytes is valid, and with the suffix added it would not be.
        let stem = package_stem(archive_path);
        let stem = truncate_at_char(&stem, NAME_MAX_BYTES - PACKAGE_SUFFIX.len());
        return Ok((format!("{stem}{PACKAGE_SUFFIX}"), 0));
    }
    let mut tops: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.components.first())
        .map(String::as_str)
        .collect();
    tops.sort_unstable();
    tops.dedup();
    match tops.as_slice() {
        [top] if top.ends_with(PACKAGE_SUFFIX) => {
            if entries.iter().any(|e| !e.is_dir && e.components.len() == 1) {
                return Err(format!("top-level '{top}' is a file, not a folder"));
            }
            Ok(((*top).to_owned(), 1))
        }
        [] => Err("it holds no package".into()),
        _ => Err(format!(
            "expected one top-level *.mlpackage folder or Manifest.json at the root, found: {}",
            tops.join(", ")
        )),
    }
}

/// The longest file name most filesystems take, in bytes.
const NAME_MAX_BYTES: usize = 255;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The archive's file name without `.zip` and `.mlpackage` (`out.mlpackage.zip` → `out`).
pub(crate) fn package_stem(archive_path: &Path) -> String {
    let name = archive_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = strip_suffix_ignore_case(&name, ".zip");
    let stem = strip_suffix_ignore_case(stem, PACKAGE_SUFFIX);
    if stem.is_empty() || stem == "." || stem == ".." {
        "model".to_owned()
    } else {
        stem.to_owned()
    }
}

pub(crate) fn strip_suffix_ignore_case<'a>(name: &'a str, suffix: &str) -> &'a str {
    let split = name.len().saturating_sub(suffix.len());
    match (name.get(..split), name.get(split..)) {
        (Some(head), Some(tail)) if tail.eq_ignore_ascii_case(suffix) => head,
        _ => name,
    }
}

/// Why an entry could not be extracted: the archive's fault, or the local disk's.
#[derive(Debug)]
enum EntryFailure {
    /// Something wrong with the archive (the reason, for an "invalid zip archive" error).
    Archive(String),
    /// Writing the extracted copy failed (a full disk, a file-size limit, an I/O error): nothing
    /// wrong with the input, so not reported as an invalid archive.
    Write(io::Error),
}

/// The error for a failure writing the extraction of `archive_path` into `dest` (a private folder
/// in the temporary directory): names the archive and the temporary directory the user can act on
/// (`TMPDIR`), not the private folder, which is gone by the time the line is read.
fn extract_write_error(archive_path: &Path, dest: &Path, source: io::Error) -> Error {
    let temp_dir = dest.parent().unwrap_or(dest);
    Error::Extract {
        archive: archive_path.to_path_buf(),
        temp_dir: temp_dir.to_path_buf(),
        source,
    }
}

/// Creates `target`, which must not exist: never overwrite or write through anything already there.
fn create_new(target: &Path) -> std::result::Result<File, EntryFailure> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                EntryFailure::Archive("its path collides with another entry".to_owned())
            } else {
                EntryFailure::Write(e)
            }
        })
}

/// Copies `reader` into `out` as `io::copy` does, telling a failure to read the archive (corrupt
/// data) from a failure to write the copy.
fn copy_entry(reader: &mut impl Read, out: &mut impl Write) -> std::result::Result<u64, EntryFailure> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EntryFailure::Archive(e.to_string())),
        };
        out.write_all(&buffer[..read]).map_err(EntryFailure::Write)?;
        copied += read as u64;
    }
}

/// Decompresses one file entry into a new file at `target`, writing at most its declared size and
/// at most `budget` bytes. Returns the byte count.
fn extract_file<R: Read + io::Seek>(
    archive: &mut ZipArchive<R>,
    entry: &PlannedEntry,
    target: &Path,
    budget: u64,
) -> std::result::Result<u64, EntryFailure> {
    let archive_error = |reason: String| EntryFailure::Archive(reason);
    let mut reader = archive
        .by_index(entry.index)
        .map_err(|e| archive_error(e.to_string()))?;
    let mut out = BufWriter::with_capacity(1 << 20, create_new(target)?);
    let limit = entry.declared_size.min(budget);
    let copied = copy_entry(&mut (&mut reader).take(limit.saturating_add(1)), &mut out)?;
    if copied > budget {
        return Err(archive_error(
            "uncompressed data exceeds the archive size limit".into(),
        ));
    }
    if copied != entry.declared_size {
        let held = if copied > entry.declared_size {
            "more".to_owned()
        } else {
            copied.to_string()
        };
        return Err(archive_error(format!(
            "holds {held} bytes but its header declares {}",
            entry.declared_size
        )));
    }
    out.flush().map_err(EntryFailure::Write)?;
    Ok(copied)
}

/// Writes the package directory `package_dir` as an archive into `file` (newly created at
/// `dest`, which names it in errors) under the single top-level folder `folder_name/`, and syncs it to disk. Entries are in
/// sorted order with a fixed timestamp, so the same package gives the same bytes.
pub(crate) fn write_package_zip(
    package_dir: &Path,
    folder_name: &str,
    file: File,
    dest: &Path,
) -> Result<()> {
    let sink = Sink {
        file,
        failed: false,
        position: 0,
    };
    let mut writer = ZipWriter::new(BufWriter::with_capacity(1 << 20, sink));
    let dir_options = SimpleFileOptions::default().last_modified_time(DateTime::DEFAULT);
    writer
        .add_directory(format!("{folder_name}/"), dir_options.unix_permissions(0o755))
        .map_err(|e| write_failed(dest, folder_name, e))?;
    add_tree(&mut writer, package_dir, folder_name, dest)?;
    let buffered = writer
        .finish()
        .map_err(|e| write_failed(dest, "the archive's central directory", e))?;
    let sink = buffered
        .into_inner()
        .map_err(|e| write_failed(dest, "the archive's central directory", e.into_error()))?;
    sink.file.sync_all().at(dest)
}

/// The archive file under the zip writer. After a write fails it takes everything without
/// writing it: the writer's `Drop` finishes an archive that `finish` was not called on, and
/// printed "ZipWriter::drop: failed to finalize archive" to stderr when that failed too (a full
/// disk), before the error line. The archive is scratch and removed on error anyway.
struct Sink {
    file: File,
    failed: bool,
    /// Where the discarding writer is, once `failed`.
    position: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            self.position += buf.len() as u64;
            return Ok(buf.len());
        }
        let written = self.file.write(buf).inspect_err(|_| self.failed = true)?;
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        self.file.flush().inspect_err(|_| self.failed = true)
    }
}

impl io::Seek for Sink {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        if self.failed {
            self.position = match pos {
                io::SeekFrom::Start(at) => at,
                io::SeekFrom::End(by) | io::SeekFrom::Current(by) => self.position.saturating_add_signed(by),
            };
            return Ok(self.position);
        }
        let at = self.file.seek(pos).inspect_err(|_| self.failed = true)?;
        self.position = at;
        Ok(at)
    }
}

/// A failure writing the archive for OUTPUT `dest`: the system's error (a full disk) names
/// OUTPUT and the package file being written; the zip writer's own errors say what it refused.
fn write_failed(dest: &Path, what: &str, error: impl Into<zip::result::ZipError>) -> Error {
    match error.into() {
        zip::result::ZipError::Io(e) => {
            let message = e.to_string();
            let message = match e.raw_os_error() {
                Some(code) => message
                    .trim_end_matches(&format!(" (os error {code})"))
                    .to_owned(),
                None => message,
            };
            Error::io(
                dest,
                io::Error::new(e.kind(), format!("{message} (writing {what})")),
            )
        }
        other => Error::Zip {
            path: dest.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

fn add_tree<W: Write + io::Seek>(
    writer: &mut ZipWriter<W>,
    dir: &Path,
    prefix: &str,
    dest: &Path,
) -> Result<()> {
    let zip_error = |reason: String| Error::Zip {
        path: dest.to_path_buf(),
        reason,
    };
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .at(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .at(dir)?;
    children.sort();
    for path in children {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| zip_error(format!("{}: file name is not valid UTF-8", path.display())))?;
        let entry_name = format!("{prefix}/{name}");
        let failed = |e: zip::result::ZipError| write_failed(dest, name, e);
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        let options = SimpleFileOptions::default()
            .last_modified_time(DateTime::DEFAULT)
            .unix_permissions(permissions(&meta));
        if meta.is_dir() {
            writer
                .add_directory(format!("{entry_name}/"), options)
                .map_err(failed)?;
            add_tree(writer, &path, &entry_name, dest)?;
        } else if meta.is_file() {
            let size = meta.len();
            // A sparse file (a declared folder item mostly holes) is compressed too: stored, its
            // holes would be written out whole (a 2 GiB file taking 40 KB of disk made a 2 GiB
            // zip, red team); deflated, they take about a thousandth.
            let sparse = std::os::unix::fs::MetadataExt::blocks(&meta).saturating_mul(512) < size / 2;
            let method = if size < STORE_THRESHOLD || sparse {
                CompressionMethod::Deflated
            } else {
                CompressionMethod::Stored
            };
            let options = options
                .compression_method(method)
                .large_file(size >= u64::from(u32::MAX));
            writer.start_file(entry_name.as_str(), options).map_err(failed)?;
            let mut source = open_regular_or_err(&path, Links::NoFollow).at(&path)?;
            io::copy(&mut source, writer).map_err(|e| failed(e.into()))?;
        } else {
            return Err(zip_error(format!(
                "{}: not a regular file or directory",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn permissions(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn permissions(meta: &std::fs::Metadata) -> u32 {
    if meta.is_dir() {
        0o755
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::testutil::*;
    use crate::package::Package;

    /// Extraction goes on while a signal removes the extraction folder: making the folders of an
    /// entry must then fail, not make that folder again (`create_dir_all` did).
    #[test]
    fn entry_folders_are_never_made_above_the_package_root() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join(".mlprune-unzip-0123456789abcdef");
        let root = scratch.join("m.mlpackage");
        std::fs::create_dir_all(&root).unwrap();
        create_dirs_below(&root, Path::new("Data/com.apple.CoreML/weights")).unwrap();
        create_dirs_below(&root, Path::new("Data/com.apple.CoreML")).unwrap();
        assert!(root.join("Data/com.apple.CoreML/weights").is_dir());
        std::fs::remove_dir_all(&scratch).unwrap();
        let err = create_dirs_below(&root, Path::new("Data/com.apple.CoreML")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!scratch.exists(), "the removed folder stays removed");
    }

    fn open_limited(zip_path: &Path, limits: ZipLimits) -> Result<Package> {
        Package::open_with_limits(zip_path, &limits, &[])
    }

    fn zip_reason(result: Result<Package>) -> String {
        match result {
            Err(Error::Zip { reason, .. }) => reason,
            other => panic!("expected a zip error, got {other:?}"),
        }
    }

    /// An entry inside the declared weights item, so it is extracted.
    const USED_ZEROS: &str = "m.mlpackage/Data/com.apple.CoreML/weights/zeros";

    /// A valid package's entries plus `extra`, all under `m.mlpackage/`.
    fn package_entries<'a>(extra: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("m.mlpackage/Manifest.json", COREMLTOOLS_MANIFEST.as_bytes()),
            ("m.mlpackage/Data/com.apple.CoreML/model.mlmodel", MODEL_BYTES),
            (
                "m.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
                WEIGHT_BYTES,
            ),
        ];
        entries.extend_from_slice(extra);
        entries
    }

    #[test]
    fn macos_litter_is_ignored_and_missing_dir_entries_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("m.zip");
        zip_entries(
            &zip_path,
            &package_entries(&[
                ("__MACOSX/m.mlpackage/._Manifest.json", b"junk"),
                ("m.mlpackage/.DS_Store", b"junk"),
            ]),
        );
        let package = Package::open(&zip_path).unwrap();
        assert_eq!(
            std::fs::read(package.weight_file().unwrap()).unwrap(),
            WEIGHT_BYTES
        );
        assert!(!package.root().join(".DS_Store").exists());
        assert!(!package.root().parent().unwrap().join("__MACOSX").exists());
    }

    #[test]
    fn zip_slip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for evil in ["../evil", "m.mlpackage/../../evil", "m.mlpackage\\..\\..\\evil"] {
            let zip_path = dir.path().join("slip.zip");
            zip_entries(&zip_path, &package_entries(&[(evil, b"pwned")]));
            let reason = zip_reason(Package::open(&zip_path));
            assert!(reason.contains("'..'"), "{evil}: {reason}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn absolute_entry_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("abs.zip");
        let target = dir.path().join("abs-evil");
        let name = target.to_str().unwrap().to_owned();
        zip_entries(&zip_path, &package_entries(&[(name.as_str(), b"pwned")]));
        assert!(zip_reason(Package::open(&zip_path)).contains("absolute path"));
        assert!(!target.exists());
    }

    #[test]
    fn symlink_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("link.zip");
        let mut writer = ZipWriter::new(File::create(&zip_path).unwrap());
        for (name, bytes) in package_entries(&[]) {
            writer.start_file(name, SimpleFileOptions::default()).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer
            .add_symlink(
                "m.mlpackage/Data/link",
                "/etc/passwd",
                SimpleFileOptions::default(),
            )
            .unwrap();
        writer.finish().unwrap();
        assert!(zip_reason(Package::open(&zip_path)).contains("symbolic link"));
    }

    #[test]
    fn encrypted_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("enc.zip");
        zip_entries(&zip_path, &package_entries(&[]));
        // Set general-purpose flag bit 0 (encrypted) in every local and central header.
        let mut bytes = std::fs::read(&zip_path).unwrap();
        for (signature, flags_at) in [(b"PK\x03\x04", 6), (b"PK\x01\x02", 8)] {
            let starts: Vec<usize> = bytes
                .windows(4)
                .enumerate()
                .filter(|(_, w)| w == signature)
                .map(|(i, _)| i)
                .collect();
            for start in starts {
                bytes[start + flags_at] |= 1;
            }
        }
        std::fs::write(&zip_path, bytes).unwrap();
        assert!(zip_reason(Package::open(&zip_path)).contains("encrypted"));
    }

    #[test]
    fn too_many_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("many.zip");
        zip_entries(
            &zip_path,
            &package_entries(&[("m.mlpackage/a", b""), ("m.mlpackage/b", b"")]),
        );
        let limits = ZipLimits {
            max_entries: 4,
            ..ZipLimits::default()
        };
        assert!(zip_reason(open_limited(&zip_path, limits)).contains("5 entries, more than the limit of 4"));
        open_limited(
            &zip_path,
            ZipLimits {
                max_entries: 5,
                ..limits
            },
        )
        .unwrap();
    }

    #[test]
    fn listing_stops_at_the_caps_before_every_entry_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("many.zip");
        let names: Vec<String> = (0..200).map(|i| format!("m.mlpackage/unused/{i}")).collect();
        let extra: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        zip_entries(&zip_path, &package_entries(&extra));
        // 203 entries against a limit of 50: refused while listing, past 2 x 50 + 16 headers
        // (the exact count, once listed, is `too_many_entries_are_refused`).
        let limits = ZipLimits {
            max_entries: 50,
            ..ZipLimits::default()
        };
        let reason = zip_reason(open_limited(&zip_path, limits));
        assert!(
            reason.contains("lists more entries than the limit of 50"),
            "{reason}"
        );
        // The bytes read to list it are capped too.
        let limits = ZipLimits {
            max_directory_bytes: 4096,
            ..ZipLimits::default()
        };
        let reason = zip_reason(open_limited(&zip_path, limits));
        assert!(
            reason.contains("reads more than the limit of 4096 bytes"),
            "{reason}"
        );
        open_limited(&zip_path, ZipLimits::default()).unwrap();
    }

    #[test]
    fn a_signature_split_between_two_reads_is_counted() {
        let budget = ListingBudget::new(&ZipLimits::default());
        let mut reader = budget.reader(io::Cursor::new(b"xxPK\x01\x02PK\x01\x02yPK\x01".to_vec()));
        let mut byte = [0u8; 3];
        while reader.read(&mut byte).unwrap() > 0 {}
        assert_eq!(budget.state.borrow().signatures, 2);
    }

    #[test]
    fn declared_size_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("bomb.zip");
        let zeros = vec![0u8; 5000];
        zip_entries(&zip_path, &package_entries(&[(USED_ZEROS, &zeros)]));
        let limits = ZipLimits {
            max_total_bytes: 4096,
            ..ZipLimits::default()
        };
        assert!(zip_reason(open_limited(&zip_path, limits)).contains("exceeds the limit of 4096"));
        // The cap counts only what is extracted: the same entry outside every item is skipped.
        zip_entries(&zip_path, &package_entries(&[("m.mlpackage/zeros", &zeros)]));
        assert!(open_limited(&zip_path, limits).is_ok());
    }

    #[test]
    fn a_lying_size_header_cannot_bomb() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("liar.zip");
        let zeros = vec![0u8; 50_000];
        zip_entries(&zip_path, &package_entries(&[(USED_ZEROS, &zeros)]));
        // Rewrite the declared uncompressed size of the 50 000-byte entry to 10, in both headers.
        let mut bytes = std::fs::read(&zip_path).unwrap();
        let real = 50_000u32.to_le_bytes();
        let mut patched = 0;
        for (signature, size_at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            for start in 0..bytes.len().saturating_sub(size_at + 4) {
                if &bytes[start..start + 4] == signature
                    && bytes[start + size_at..start + size_at + 4] == real
                {
                    bytes[start + size_at..start + size_at + 4].copy_from_slice(&10u32.to_le_bytes());
                    patched += 1;
                }
            }
        }
        assert_eq!(patched, 2);
        std::fs::write(&zip_path, bytes).unwrap();
        let limits = ZipLimits {
            max_total_bytes: 1000,
            ..ZipLimits::default()
        };
        let reason = zip_reason(open_limited(&zip_path, limits));
        assert!(reason.contains(&format!("entry '{USED_ZEROS}'")), "{reason}");
        assert!(reason.contains("larger than its declared"), "{reason}");
    }

    #[test]
    fn bytes_written_are_capped_whatever_the_headers_say() {
        // The zip crate itself stops at the declared size today; this checks our own cap, which
        // does not depend on that.
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("big.zip");
        let zeros = vec![0u8; 50_000];
        zip_entries(&zip_path, &[("zeros", &zeros)]);
        let mut archive = ZipArchive::new(File::open(&zip_path).unwrap()).unwrap();
        let entries = plan_entries(&archive).unwrap();
        let target = dir.path().join("out");
        let Err(EntryFailure::Archive(reason)) = extract_file(&mut archive, &entries[0], &target, 1000)
        else {
            panic!("an archive error");
        };
        assert!(reason.contains("exceeds the archive size limit"), "{reason}");
        assert!(std::fs::metadata(&target).unwrap().len() <= 1001);
        let target = dir.path().join("out2");
        assert_eq!(
            extract_file(&mut archive, &entries[0], &target, 50_000).unwrap(),
            50_000
        );
        assert_eq!(std::fs::read(&target).unwrap(), zeros);
    }

    #[test]
    fn layouts_other_than_one_package_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("two.zip");
        zip_entries(&zip_path, &[("a.mlpackage/x", b""), ("b.mlpackage/y", b"")]);
        assert!(zip_reason(Package::open(&zip_path)).contains("one top-level *.mlpackage folder"));
        zip_entries(&zip_path, &[("folder/Manifest.json", b"{}")]);
        assert!(zip_reason(Package::open(&zip_path)).contains("found: folder"));
        zip_entries(&zip_path, &[]);
        assert!(zip_reason(Package::open(&zip_path)).contains("no package"));
        std::fs::write(&zip_path, b"not a zip at all").unwrap();
        let err = Package::open(&zip_path).unwrap_err();
        assert!(matches!(err, Error::Zip { .. }), "{err}");
        assert!(err.to_string().starts_with(zip_path.to_str().unwrap()), "{err}");
    }

    #[test]
    fn only_the_manifest_and_declared_items_are_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("m.zip");
        let manifest = manifest_with_extra_item();
        // An unused entry whose header understates its size: it would fail if it were inflated.
        let bomb = vec![0u8; 100_000];
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("m.mlpackage/Manifest.json", manifest.as_bytes()),
            ("m.mlpackage/Data/com.apple.CoreML/model.mlmodel", MODEL_BYTES),
            (
                "m.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
                WEIGHT_BYTES,
            ),
            ("m.mlpackage/Data/com.example/labels/en.txt", b"cat"),
            ("m.mlpackage/Data/com.example/labels/de/de.txt", b"Katze"),
        ];
        let unused: [(&str, &[u8]); 6] = [
            ("m.mlpackage/README.md", b"readme"),
            ("m.mlpackage/Data/stray.bin", b"stray"),
            ("m.mlpackage/Data/com.apple.CoreML/model.mlmodel.bak", b"old"),
            ("m.mlpackage/Data/com.apple.CoreML/extra/notes.txt", b"notes"),
            ("m.mlpackage/Data/com.example/labels2/x", b"x"),
            ("m.mlpackage/Data/com.example/bomb", &bomb),
        ];
        entries.extend_from_slice(&unused);
        zip_entries(&zip_path, &entries);
        let mut bytes = std::fs::read(&zip_path).unwrap();
        let real = 100_000u32.to_le_bytes();
        for (signature, size_at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            for start in 0..bytes.len() - 30 {
                if &bytes[start..start + 4] == signature
                    && bytes[start + size_at..start + size_at + 4] == real
                {
                    bytes[start + size_at..start + size_at + 4].copy_from_slice(&[10, 0, 0, 0]);
                }
            }
        }
        std::fs::write(&zip_path, &bytes).unwrap();

        let package = Package::open(&zip_path).unwrap();
        let tree: Vec<(String, Option<Vec<u8>>)> = read_tree(package.root())
            .into_iter()
            .map(|(p, c)| (p.to_str().unwrap().to_owned(), c))
            .collect();
        let file = |p: &str, c: &[u8]| (p.to_owned(), Some(c.to_vec()));
        let folder = |p: &str| (p.to_owned(), None);
        assert_eq!(
            tree,
            [
                folder("Data"),
                folder("Data/com.apple.CoreML"),
                file("Data/com.apple.CoreML/model.mlmodel", MODEL_BYTES),
                folder("Data/com.apple.CoreML/weights"),
                file("Data/com.apple.CoreML/weights/weight.bin", WEIGHT_BYTES),
                folder("Data/com.example"),
                folder("Data/com.example/labels"),
                folder("Data/com.example/labels/de"),
                file("Data/com.example/labels/de/de.txt", b"Katze"),
                file("Data/com.example/labels/en.txt", b"cat"),
                file("Manifest.json", manifest.as_bytes()),
            ]
        );
    }

    #[test]
    fn free_space_is_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("m.zip");
        // A large unused entry does not count.
        let unused = vec![7u8; 1 << 20];
        zip_entries(
            &zip_path,
            &package_entries(&[("m.mlpackage/unused.bin", &unused)]),
        );
        let needed = (COREMLTOOLS_MANIFEST.len() + MODEL_BYTES.len() + WEIGHT_BYTES.len()) as u64;
        let dest = dir.path().join("dest");
        for available in [0, needed - 1] {
            std::fs::create_dir(&dest).unwrap();
            let limits = ZipLimits {
                free_bytes: Some(available),
                ..ZipLimits::default()
            };
            let err = extract_package(&zip_path, &dest, &limits).unwrap_err();
            let Error::Io { path, source } = &err else {
                panic!("expected an I/O error, got {err:?}")
            };
            assert_eq!(path, &zip_path);
            assert_eq!(source.kind(), io::ErrorKind::StorageFull);
            let message = err.to_string();
            assert!(message.starts_with(zip_path.to_str().unwrap()), "{message}");
            assert!(
                message.contains(&format!(
                    "needs {needed} bytes of temporary space in {}",
                    dir.path().display()
                )),
                "{message}"
            );
            assert!(
                message.contains(&format!("only {available} bytes are available")),
                "{message}"
            );
            // Nothing was extracted: the package folder is empty.
            assert!(list_dir(&dest.join("m.mlpackage")).is_empty());
            std::fs::remove_dir_all(&dest).unwrap();
        }
        let limits = ZipLimits {
            free_bytes: Some(needed),
            ..ZipLimits::default()
        };
        assert!(open_limited(&zip_path, limits).is_ok());
        // And the real filesystem is asked when no figure is injected.
        assert!(free_space(dir.path()).unwrap() > 0);
    }

    #[test]
    fn manifest_problems_are_named_inside_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("m.zip");
        let shown = zip_path.join("m.mlpackage/Manifest.json");
        zip_entries(
            &zip_path,
            &[
                ("m.mlpackage/Manifest.json", b"{}"),
                ("m.mlpackage/Data/com.apple.CoreML/model.mlmodel", MODEL_BYTES),
            ],
        );
        let err = Package::open(&zip_path).unwrap_err();
        assert!(
            matches!(&err, Error::Manifest { path, .. } if *path == shown),
            "{err}"
        );

        let huge = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
        zip_entries(&zip_path, &[("m.mlpackage/Manifest.json", &huge)]);
        let err = Package::open(&zip_path).unwrap_err();
        assert!(
            matches!(&err, Error::Manifest { path, reason } if *path == shown && reason.contains("larger than")),
            "{err}"
        );

        zip_entries(
            &zip_path,
            &[("m.mlpackage/Data/com.apple.CoreML/model.mlmodel", MODEL_BYTES)],
        );
        let err = Package::open(&zip_path).unwrap_err();
        assert!(
            matches!(&err, Error::Package { path, reason }
                if *path == zip_path.join("m.mlpackage") && reason == "Manifest.json is missing"),
            "{err}"
        );
    }

    #[test]
    fn stems_drop_zip_and_mlpackage_suffixes() {
        assert_eq!(package_stem(Path::new("d/out.mlpackage.zip")), "out");
        assert_eq!(package_stem(Path::new("out.ZIP")), "out");
        assert_eq!(package_stem(Path::new("out.v2.zip")), "out.v2");
        assert_eq!(package_stem(Path::new(".zip")), "model");
    }

    #[test]
    fn entry_names_are_split_safely() {
        assert_eq!(entry_components("a/./b//c/").unwrap(), ["a", "b", "c"]);
        assert_eq!(entry_components("a\\b").unwrap(), ["a", "b"]);
        assert!(entry_components("/etc/x").is_err());
        assert!(entry_components("\\x").is_err());
        assert!(entry_components("a/../b").is_err());
        assert!(entry_components("a\0b").is_err());
    }
}
