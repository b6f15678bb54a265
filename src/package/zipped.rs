//! Zipped packages: safe extraction of an archive into a private directory, and writing a package
//! directory as an archive.
//!
//! Extraction trusts nothing in the archive: names are confined, symlinks and encrypted entries are
//! refused, the entry count and the total size are capped, and the size cap is enforced on the
//! bytes actually written, so a header that understates a size cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use super::folder::MANIFEST_FILE;
use crate::error::{Error, IoContext, Result};

/// Resource caps for extraction. Tests inject small ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZipLimits {
    pub max_entries: usize,
    /// Cap on the total uncompressed size, declared and actual.
    pub max_total_bytes: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            max_entries: 100_000,
            max_total_bytes: 256 << 30,
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

/// One archive entry that will be extracted, with its confined path.
struct PlannedEntry {
    index: usize,
    name: String,
    components: Vec<String>,
    is_dir: bool,
    declared_size: u64,
}

/// Extracts the package held by the archive at `archive_path` into `dest` (an empty directory
/// private to this process) and returns the package root, `dest/<name>.mlpackage`.
pub(crate) fn extract_package(
    archive_path: &Path,
    dest: &Path,
    limits: &ZipLimits,
) -> Result<PathBuf> {
    let zip_error = |reason: String| Error::Zip {
        path: archive_path.to_path_buf(),
        reason,
    };
    let file = File::open(archive_path).at(archive_path)?;
    let mut archive = ZipArchive::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| zip_error(e.to_string()))?;
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

    let entries = plan_entries(&archive, limits).map_err(zip_error)?;
    let (package_name, strip) = package_layout(&entries, archive_path).map_err(zip_error)?;
    let root = dest.join(&package_name);
    std::fs::create_dir(&root).at(&root)?;

    let mut written: u64 = 0;
    for entry in &entries {
        let Some(relative) = entry.components.get(strip..) else {
            continue;
        };
        let target = relative.iter().fold(root.clone(), |p, c| p.join(c));
        if entry.is_dir {
            std::fs::create_dir_all(&target).at(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        let remaining = limits.max_total_bytes.saturating_sub(written);
        let copied = extract_file(&mut archive, entry, &target, remaining)
            .map_err(|reason| zip_error(format!("entry '{}': {reason}", entry.name)))?;
        written += copied;
    }
    Ok(root)
}

/// Checks every entry's metadata before anything is written; returns the entries to extract.
fn plan_entries<R: Read + io::Seek>(
    archive: &ZipArchive<R>,
    limits: &ZipLimits,
) -> std::result::Result<Vec<PlannedEntry>, String> {
    let mut planned = Vec::new();
    let mut declared_total: u64 = 0;
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
        declared_total = declared_total
            .checked_add(declared_size)
            .filter(|&total| total <= limits.max_total_bytes)
            .ok_or_else(|| {
                format!(
                    "uncompressed size exceeds the limit of {} bytes",
                    limits.max_total_bytes
                )
            })?;
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
        return Ok((format!("{}{PACKAGE_SUFFIX}", package_stem(archive_path)), 0));
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

/// Decompresses one file entry into a new file at `target`, writing at most `budget` bytes.
/// Returns the byte count.
fn extract_file<R: Read + io::Seek>(
    archive: &mut ZipArchive<R>,
    entry: &PlannedEntry,
    target: &Path,
    budget: u64,
) -> std::result::Result<u64, String> {
    let mut reader = archive.by_index(entry.index).map_err(|e| e.to_string())?;
    // create_new: never overwrite or write through anything already there.
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                "its path collides with another entry".to_owned()
            } else {
                format!("{}: {e}", target.display())
            }
        })?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let copied = io::copy(&mut (&mut reader).take(budget.saturating_add(1)), &mut out)
        .map_err(|e| e.to_string())?;
    if copied > budget {
        return Err("uncompressed data exceeds the archive size limit".into());
    }
    if copied != entry.declared_size {
        return Err(format!(
            "holds {copied} bytes but its header declares {}",
            entry.declared_size
        ));
    }
    out.flush()
        .map_err(|e| format!("{}: {e}", target.display()))?;
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
    let mut writer = ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    let dir_options = SimpleFileOptions::default().last_modified_time(DateTime::DEFAULT);
    writer
        .add_directory(
            format!("{folder_name}/"),
            dir_options.unix_permissions(0o755),
        )
        .map_err(|e| Error::Zip {
            path: dest.to_path_buf(),
            reason: e.to_string(),
        })?;
    add_tree(&mut writer, package_dir, folder_name, dest)?;
    let buffered = writer.finish().map_err(|e| Error::Zip {
        path: dest.to_path_buf(),
        reason: e.to_string(),
    })?;
    let file = buffered
        .into_inner()
        .map_err(|e| Error::io(dest, e.into_error()))?;
    file.sync_all().at(dest)
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
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            zip_error(format!("{}: file name is not valid UTF-8", path.display()))
        })?;
        let entry_name = format!("{prefix}/{name}");
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        let options = SimpleFileOptions::default()
            .last_modified_time(DateTime::DEFAULT)
            .unix_permissions(permissions(&meta));
        if meta.is_dir() {
            writer
                .add_directory(format!("{entry_name}/"), options)
                .map_err(|e| zip_error(e.to_string()))?;
            add_tree(writer, &path, &entry_name, dest)?;
        } else if meta.is_file() {
            let size = meta.len();
            let method = if size < STORE_THRESHOLD {
                CompressionMethod::Deflated
            } else {
                CompressionMethod::Stored
            };
            let options = options
                .compression_method(method)
                .large_file(size >= u64::from(u32::MAX));
            writer
                .start_file(entry_name.as_str(), options)
                .map_err(|e| zip_error(e.to_string()))?;
            let mut source = File::open(&path).at(&path)?;
            io::copy(&mut source, writer)
                .map_err(|e| zip_error(format!("adding {}: {e}", path.display())))?;
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

    fn open_limited(zip_path: &Path, limits: ZipLimits) -> Result<Package> {
        Package::open_with_limits(zip_path, &limits)
    }

    fn zip_reason(result: Result<Package>) -> String {
        match result {
            Err(Error::Zip { reason, .. }) => reason,
            other => panic!("expected a zip error, got {other:?}"),
        }
    }

    /// A valid package's entries plus `extra`, all under `m.mlpackage/`.
    fn package_entries<'a>(extra: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("m.mlpackage/Manifest.json", COREMLTOOLS_MANIFEST.as_bytes()),
            (
                "m.mlpackage/Data/com.apple.CoreML/model.mlmodel",
                MODEL_BYTES,
            ),
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
        for evil in [
            "../evil",
            "m.mlpackage/../../evil",
            "m.mlpackage\\..\\..\\evil",
        ] {
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
            writer
                .start_file(name, SimpleFileOptions::default())
                .unwrap();
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
        assert!(zip_reason(open_limited(&zip_path, limits))
            .contains("5 entries, more than the limit of 4"));
        assert!(open_limited(
            &zip_path,
            ZipLimits {
                max_entries: 5,
                ..limits
            }
        )
        .is_ok());
    }

    #[test]
    fn declared_size_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("bomb.zip");
        let zeros = vec![0u8; 5000];
        zip_entries(
            &zip_path,
            &package_entries(&[("m.mlpackage/zeros", &zeros)]),
        );
        let limits = ZipLimits {
            max_total_bytes: 4096,
            ..ZipLimits::default()
        };
        assert!(zip_reason(open_limited(&zip_path, limits)).contains("exceeds the limit of 4096"));
    }

    #[test]
    fn a_lying_size_header_cannot_bomb() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("liar.zip");
        let zeros = vec![0u8; 50_000];
        zip_entries(
            &zip_path,
            &package_entries(&[("m.mlpackage/zeros", &zeros)]),
        );
        // Rewrite the declared uncompressed size of the 50 000-byte entry to 10, in both headers.
        let mut bytes = std::fs::read(&zip_path).unwrap();
        let real = 50_000u32.to_le_bytes();
        let mut patched = 0;
        for (signature, size_at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            for start in 0..bytes.len().saturating_sub(size_at + 4) {
                if &bytes[start..start + 4] == signature
                    && bytes[start + size_at..start + size_at + 4] == real
                {
                    bytes[start + size_at..start + size_at + 4]
                        .copy_from_slice(&10u32.to_le_bytes());
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
        assert!(reason.contains("entry 'm.mlpackage/zeros'"), "{reason}");
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
        let entries = plan_entries(&archive, &ZipLimits::default()).unwrap();
        let target = dir.path().join("out");
        let reason = extract_file(&mut archive, &entries[0], &target, 1000).unwrap_err();
        assert!(
            reason.contains("exceeds the archive size limit"),
            "{reason}"
        );
        assert!(std::fs::metadata(&target).unwrap().len() <= 1001);
        let target = dir.path().join("out2");
        assert_eq!(
            extract_file(&mut archive, &entries[0], &target, 50_000),
            Ok(50_000)
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
        assert!(
            err.to_string().starts_with(zip_path.to_str().unwrap()),
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
