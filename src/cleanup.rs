//! Scratch paths (staging folders, temporary archives and reports, extracted zips) that must not
//! outlive the process, even when it is interrupted.
//!
//! Every scratch path is created through [`ScratchPath::create_dir`] or
//! [`ScratchPath::create_file`], which
//! - registers it, so that SIGINT, SIGTERM or SIGHUP remove it before the process exits
//!   ([`install_signal_cleanup`], called once by `main`);
//! - holds an exclusive advisory lock (`flock`) on it for as long as the owner lives, so that a
//!   later run can tell a scratch path left by a killed process (`kill -9`, power loss: no handler
//!   runs) from one in use by a live run, and remove only the former ([`sweep_stale`]).
//!
//! The owner removes its scratch path itself on success or error (its `Drop`); the registry only
//! matters when a signal arrives. Commits that rename scratch paths into place run under
//! [`hold_off_signals`], so a signal never removes half of a commit: it waits for the commit to
//! finish and then removes only what is still registered.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, IoContext, Result};
use crate::package::paths::{handle_identity, lies_within};

/// Paths to remove if a signal arrives, by registration id.
static REGISTRY: Mutex<BTreeMap<u64, Registered>> = Mutex::new(BTreeMap::new());
/// Taken by commits, and by the signal thread before it removes anything.
static COMMIT: Mutex<()> = Mutex::new(());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// Set once the run's output is in place: a signal after that interrupts nothing.
static COMMITTED: AtomicBool = AtomicBool::new(false);

/// How many fresh names to try when a random name is taken.
const NAME_ATTEMPTS: usize = 16;

#[derive(Debug, Clone)]
struct Registered {
    path: PathBuf,
    is_dir: bool,
    /// Where it was made, once it is: removed through that, not `path`.
    place: Option<Place>,
}

/// A scratch path as made: its folder, open, its name there and its identity. It is removed
/// through the folder's handle, so that the folder renamed during the run (OUTPUT's folder moved
/// elsewhere) does not leave it behind there (red team, session 20: the staging folder and the
/// report's scratch file stayed in the moved folder), and only while the name still holds what
/// was made.
#[derive(Debug, Clone)]
#[cfg_attr(not(unix), allow(dead_code))]
struct Place {
    folder: std::sync::Arc<File>,
    name: OsString,
    identity: Option<(u64, u64)>,
}

impl Registered {
    /// Whether it is still there (at its place, where it has one).
    fn exists(&self) -> bool {
        #[cfg(unix)]
        if let Some(place) = &self.place {
            return place.holds_it();
        }
        std::fs::symlink_metadata(&self.path).is_ok()
    }

    fn remove(&self) -> io::Result<()> {
        #[cfg(unix)]
        if let Some(place) = &self.place {
            if !place.holds_it() {
                return Ok(()); // gone, or somebody else's now
            }
            return crate::package::paths::remove_tree_one_fs_at(&*place.folder, Path::new(&place.name));
        }
        remove_path(&self.path, self.is_dir)
    }
}

#[cfg(unix)]
impl Place {
    /// Whether its name in its folder names what was made there.
    fn holds_it(&self) -> bool {
        folder_holds(&self.folder, &self.name, self.identity)
    }
}

/// Opens the folder just made at `path`: through `folder`, the handle on the folder it was made
/// in, where there is one (by the path, a folder renamed meanwhile hid it: see `create_locked`).
fn open_made_dir(path: &Path, folder: Option<&File>) -> io::Result<File> {
    #[cfg(unix)]
    if let (Some(folder), Some(name)) = (folder, path.file_name()) {
        return Ok(File::from(crate::package::paths::open_dir_at(
            folder,
            Path::new(name),
        )?));
    }
    let _ = folder;
    crate::open_file::open_dir(path)
}

/// Whether `name` in the open `folder` is the file or folder of `identity`.
#[cfg(unix)]
fn folder_holds(folder: &File, name: &OsStr, identity: Option<(u64, u64)>) -> bool {
    use rustix::fs::AtFlags;
    rustix::fs::statat(folder, Path::new(name), AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|stat| {
        #[allow(clippy::unnecessary_cast)]
        let found = Some((stat.st_dev as u64, stat.st_ino as u64));
        found == identity
    })
}

fn registry() -> MutexGuard<'static, BTreeMap<u64, Registered>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records that the run's output is in place (call it under [`hold_off_signals`]): a signal that
/// arrives from then on says so and exits 0, since what was asked is done. It used to exit
/// 128 + the signal, which a caller could not tell from an interrupted run.
pub fn mark_committed() {
    COMMITTED.store(true, Ordering::SeqCst);
}

/// Blocks signal cleanup while held: take it around renames that move scratch paths into place.
pub fn hold_off_signals() -> MutexGuard<'static, ()> {
    COMMIT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A registered, locked scratch file or directory. Dropping it unregisters it and releases the
/// lock; it does not remove the path (the owner decides: remove on failure, rename on success).
#[derive(Debug)]
pub struct ScratchPath {
    id: u64,
    path: PathBuf,
    /// Open handle holding the advisory lock; for a file, the handle to write through.
    handle: File,
    /// The identity (device, inode) of the folder it was made in, as a handle opened before it
    /// was made shows it, and only where that folder was seen to hold it.
    folder: Option<(u64, u64)>,
}

impl ScratchPath {
    /// Creates `<parent>/<prefix><random>` as a new directory, locked and registered.
    pub fn create_dir(parent: &Path, prefix: impl AsRef<OsStr>) -> Result<ScratchPath> {
        Self::create(parent, prefix.as_ref(), true)
    }

    /// Creates `<parent>/<prefix><random>` as a new empty file, open for writing, locked and
    /// registered.
    pub fn create_file(parent: &Path, prefix: impl AsRef<OsStr>) -> Result<ScratchPath> {
        Self::create(parent, prefix.as_ref(), false)
    }

    fn create(parent: &Path, prefix: &OsStr, is_dir: bool) -> Result<ScratchPath> {
        let mut last_error = None;
        for _ in 0..NAME_ATTEMPTS {
            let mut name = OsString::from(prefix);
            name.push(crate::package::random::temp_suffix());
            let path = parent.join(name);
            // A scratch path means a run (of the several `bench` makes) is under way again.
            COMMITTED.store(false, Ordering::SeqCst);
            // Registered and created under the registry's lock: the signal handler, which takes
            // it first, either removes the path once it exists or runs before it is made (and the
            // process exits before it could be). Registered but not yet made, a handler's pass
            // found nothing, ended, and the path appeared as the process exited: an empty
            // extraction folder left in about 1 of 200 signals (red-team, session 17).
            // Opened before the path is made: a folder renamed just after (a test that waits for
            // the path to appear, then renames) is still the one this handle holds.
            let folder = File::open(parent).ok();
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let mut registered = registry();
            registered.insert(
                id,
                Registered {
                    path: path.clone(),
                    is_dir,
                    place: None,
                },
            );
            let created = create_locked(&path, is_dir, folder.as_ref());
            let mut in_folder = None;
            match (&created, registered.get_mut(&id)) {
                (Ok(handle), Some(entry)) => {
                    entry.place = place_of(folder, &path, handle);
                    in_folder = entry.place.as_ref().and_then(|p| handle_identity(&p.folder));
                }
                _ => {
                    registered.remove(&id);
                }
            }
            drop(registered);
            match created {
                Ok(handle) => {
                    return Ok(ScratchPath {
                        id,
                        path,
                        handle,
                        folder: in_folder,
                    })
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(Error::io(path, e));
                    }
                    last_error = Some((path, e));
                }
            }
        }
        let (path, e) =
            last_error.unwrap_or_else(|| (parent.to_path_buf(), io::ErrorKind::AlreadyExists.into()));
        Err(Error::io(path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for a scratch file: write through it; it holds the lock).
    pub fn file(&self) -> &File {
        &self.handle
    }

    /// The identity (device, inode) of the folder it was made in; `None` where that could not be
    /// told (the folder could not be opened, or did not hold it once made).
    pub fn folder_identity(&self) -> Option<(u64, u64)> {
        self.folder
    }

    /// The identity of what it is (its open handle): what its name should still show.
    pub fn identity(&self) -> Option<(u64, u64)> {
        handle_identity(&self.handle)
    }

    /// Removes the path now (best effort) and unregisters it.
    pub fn remove(self) {
        let registered = registry().get(&self.id).cloned();
        let _ = match registered {
            Some(registered) => registered.remove(),
            None => Ok(()),
        };
    }
}

impl Drop for ScratchPath {
    fn drop(&mut self) {
        registry().remove(&self.id);
    }
}

/// Where `path`, just made and open as `handle`, is: in `folder`, the handle on its folder opened
/// before it was made. `None` where that folder could not be opened or no longer holds it (the
/// path is removed by its name then).
fn place_of(folder: Option<File>, path: &Path, handle: &File) -> Option<Place> {
    let identity = handle_identity(handle);
    let place = Place {
        folder: std::sync::Arc::new(folder?),
        name: path.file_name()?.to_os_string(),
        identity,
    };
    #[cfg(unix)]
    if !place.holds_it() {
        return None;
    }
    Some(place)
}

/// Creates the file or directory with `create_new` semantics and takes an exclusive lock on it.
/// `folder`: a handle on the folder it is made in, opened before, through which it is checked.
fn create_locked(path: &Path, is_dir: bool, folder: Option<&File>) -> io::Result<File> {
    let handle = if is_dir {
        std::fs::create_dir(path)?;
        // A sweep may already have removed the fresh, unlocked folder: the name is taken, as below.
        open_made_dir(path, folder).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => io::ErrorKind::AlreadyExists.into(),
            _ => e,
        })?
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?
    };
    // Nobody else can hold it yet, except a sweep that saw the fresh, unlocked path and is about to
    // remove it: if the path no longer names our inode, report it as taken and try another name.
    if handle.try_lock().is_err() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    // Locked, then checked (see above). Through the folder's handle where there is one: by the
    // path, a folder renamed just after the file was made (a test renames it as soon as the
    // file appears) failed the check, and the file, taken for another's, was left in the
    // renamed folder (seen once in CI, session 21).
    #[cfg(unix)]
    let ours = match folder {
        Some(folder) => path
            .file_name()
            .is_some_and(|name| folder_holds(folder, name, handle_identity(&handle))),
        None => same_file(path, &handle),
    };
    #[cfg(not(unix))]
    let ours = {
        let _ = folder;
        same_file(path, &handle)
    };
    if ours {
        Ok(handle)
    } else {
        Err(io::ErrorKind::AlreadyExists.into())
    }
}

#[cfg(unix)]
fn same_file(path: &Path, handle: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(path), handle.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(path: &Path, _handle: &File) -> bool {
    path.exists()
}

fn remove_path(path: &Path, is_dir: bool) -> io::Result<()> {
    // Never into a mount point somebody put in the folder.
    if is_dir {
        crate::package::paths::remove_tree_one_fs(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Removes every entry of `dir` whose name starts with `prefix` and that no live process holds
/// (its lock can be taken): scratch paths left by a run that was killed before it could clean up.
/// Returns what was removed. Left alone:
/// - entries of other kinds (links, FIFOs), and anything that cannot be opened;
/// - a mount point (a folder mounted at a scratch name), and a folder holding a mount point, a
///   link or a special file: mlprune writes none, and removing the rest would delete a user's
///   files before stopping at it;
/// - with `marker`, any plain file, and a folder that holds no file of that name and is not empty
///   (scratch paths in a shared place, the temporary directory, are folders carrying one from the
///   moment they are made);
/// - anything that is, holds or lies inside one of `spare` (the run's input, config and report, or
///   where the report will be: a user may well prune a package a killed run set aside, under the
///   name it was left with).
///
/// Fails closed: where one of `spare` cannot be made canonical (a working directory deeper than
/// `PATH_MAX`, a folder that went missing) nothing is swept, and an entry that cannot be made
/// canonical is left, since neither can be told apart from what must be spared. Dropping them
/// instead deleted an input lying in a stale extraction folder (red-team, round 19).
pub fn sweep_stale(
    dir: &Path,
    prefix: impl AsRef<OsStr>,
    marker: Option<&str>,
    spare: &[&Path],
) -> Result<Vec<PathBuf>> {
    let Some(spare) = spare
        .iter()
        .map(|p| canonical_or_future(p))
        .collect::<Option<Vec<PathBuf>>>()
    else {
        return Ok(Vec::new());
    };
    let prefix = prefix.as_ref().as_encoded_bytes();
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let Some(dir_mount) = crate::package::paths::mount_of_path(dir) else {
        return Ok(removed);
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        // Exactly a name `ScratchPath` makes: the prefix and 16 hex digits. A user's folder that
        // merely starts like one is not ours to remove.
        let name = entry.file_name();
        let ours = name
            .as_encoded_bytes()
            .strip_prefix(prefix)
            .is_some_and(|suffix| {
                suffix.len() == 16
                    && suffix
                        .iter()
                        .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
        if !ours {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // In a shared place (`marker`), mlprune's scratch paths are all folders: a plain file of
        // such a name is somebody else's (a config or report the user keeps there, say).
        let kind_ours = meta.is_dir() || (meta.is_file() && marker.is_none());
        if !kind_ours || crate::package::paths::mount_of_path(&path) != Some(dir_mount) {
            continue;
        }
        if meta.is_dir() {
            let marked = |marker: &str| {
                std::fs::symlink_metadata(path.join(marker)).is_ok_and(|m| m.is_file())
                    || std::fs::read_dir(&path).is_ok_and(|mut e| e.next().is_none())
            };
            if marker.is_some_and(|m| !marked(m)) || crate::package::paths::foreign_entry(&path).is_some() {
                continue;
            }
        }
        let Ok(canonical) = std::fs::canonicalize(&path) else {
            continue; // cannot be compared with what is spared
        };
        if spare
            .iter()
            .any(|s| lies_within(s, &canonical) || lies_within(&canonical, s))
        {
            continue;
        }
        // Without blocking: a FIFO swapped in since the type was looked at would hang the open.
        let Ok(handle) = crate::open_file::open_nonblocking(&path, crate::open_file::Links::NoFollow) else {
            continue;
        };
        let opened = handle.metadata().ok();
        let checked = opened.is_some_and(|m| {
            crate::package::paths::identity_of(&m) == crate::package::paths::identity_of(&meta)
                && m.file_type() == meta.file_type()
        });
        if !checked || handle.try_lock().is_err() || !same_file(&path, &handle) {
            continue; // not what was looked at, a live run holds it, or it was replaced meanwhile
        }
        if remove_path(&path, meta.is_dir()).is_ok() {
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

/// `path` made canonical; where it does not exist (a report not written yet), where it would be:
/// its folder made canonical, and its name.
fn canonical_or_future(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok().or_else(|| {
        let name = path.file_name()?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Some(std::fs::canonicalize(parent).ok()?.join(name))
    })
}

/// On SIGINT, SIGTERM or SIGHUP: wait for a commit in progress, remove every registered scratch
/// path, and exit with 128 + the signal number, as a shell reports a death by that signal.
#[cfg(unix)]
pub fn install_signal_cleanup() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::Usage(format!("cannot install signal handlers: {e}")))?;
    // A file-size limit (`ulimit -f`) ends a process by SIGXFSZ, no cleanup run, by default.
    // Caught, the write that passes the limit fails with EFBIG instead, and the run ends as on a
    // full disk: one error line, nothing left behind.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(AtomicBool::new(false)),
    )
    .map_err(|e| Error::Usage(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("mlprune-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _commit = hold_off_signals();
                // Held until the exit: from here no scratch path is registered, so none is created.
                let registered = registry();
                remove_racing_writers(registered.values());
                if COMMITTED.load(Ordering::SeqCst) {
                    crate::error::write_stderr(&format!(
                        "mlprune: signal {signal} arrived once the output was in place; it is complete\n"
                    ));
                    std::process::exit(0);
                }
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| Error::Usage(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

#[cfg(unix)]
/// Passes over the registered paths a signal makes at most, [`PASS_INTERVAL`] apart.
const REMOVAL_PASSES: usize = 25;
#[cfg(unix)]
const PASS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Removes `scratch` paths while the run's other threads go on: a file they create in a folder
/// after `remove_dir_all` listed it leaves the folder behind (it is not empty), and a path they
/// registered may be created only now. So the paths are looked at again, a moment later, until a
/// later pass finds none of them (red-team runs left a staging folder about once in 30 signals).
#[cfg(unix)]
fn remove_racing_writers<'r>(scratch: impl Iterator<Item = &'r Registered> + Clone) {
    if scratch.clone().next().is_none() {
        return; // nothing registered: no run is writing
    }
    for pass in 0..REMOVAL_PASSES {
        let mut found = false;
        for registered in scratch.clone() {
            if registered.exists() {
                found = true;
                let _ = registered.remove();
            }
        }
        if pass > 0 && !found {
            return;
        }
        std::thread::sleep(PASS_INTERVAL);
    }
}

#[cfg(not(unix))]
pub fn install_signal_cleanup() -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::package::testutil::list_dir as names;

    #[test]
    fn scratch_paths_are_registered_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = ScratchPath::create_dir(dir.path(), ".x.mlprune-tmp-").unwrap();
        assert!(scratch.path().is_dir());
        assert!(registry().values().any(|r| r.path == scratch.path()));
        let path = scratch.path().to_path_buf();
        drop(scratch);
        assert!(path.is_dir(), "dropping does not remove; the owner does");
        assert!(!registry().values().any(|r| r.path == path));
    }

    #[test]
    fn sweep_removes_only_what_no_live_owner_holds() {
        let dir = tempfile::tempdir().unwrap();
        let live_dir = ScratchPath::create_dir(dir.path(), ".o.mlprune-tmp-").unwrap();
        let live_file = ScratchPath::create_file(dir.path(), ".o.mlprune-tmp-").unwrap();
        // A killed run's leftovers: nobody holds a lock on them.
        std::fs::create_dir(dir.path().join(".o.mlprune-tmp-000000000000dead")).unwrap();
        std::fs::write(
            dir.path().join(".o.mlprune-tmp-000000000000dead/weight.bin"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join(".o.mlprune-tmp-00000000000dead2"), b"x").unwrap();
        // Not ours to touch: another prefix, a link matching the prefix, and a user's folder that
        // starts like a scratch name but does not end in 16 hex digits.
        std::fs::write(dir.path().join("o.mlpackage"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".o.mlprune-tmp-x")).unwrap();
        std::fs::write(dir.path().join(".o.mlprune-tmp-x/user.txt"), b"mine").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("o.mlpackage", dir.path().join(".o.mlprune-tmp-link")).unwrap();

        let removed = sweep_stale(dir.path(), ".o.mlprune-tmp-", None, &[]).unwrap();
        assert_eq!(
            removed,
            [
                dir.path().join(".o.mlprune-tmp-000000000000dead"),
                dir.path().join(".o.mlprune-tmp-00000000000dead2")
            ]
        );
        assert!(live_dir.path().is_dir());
        assert!(live_file.path().is_file());
        let mut expected = vec!["o.mlpackage".to_string(), ".o.mlprune-tmp-x".to_string()];
        #[cfg(unix)]
        expected.push(".o.mlprune-tmp-link".into());
        expected.push(
            live_dir
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        expected.push(
            live_file
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        expected.sort();
        assert_eq!(names(dir.path()), expected);

        // Once the owners are gone (dropped without removing, as a killed process would leave
        // them), the next sweep takes them.
        let (a, b) = (live_dir.path().to_path_buf(), live_file.path().to_path_buf());
        drop((live_dir, live_file));
        let mut removed = sweep_stale(dir.path(), ".o.mlprune-tmp-", None, &[]).unwrap();
        removed.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(removed, both);
    }

    #[test]
    fn creating_while_another_run_sweeps_never_fails() {
        // Regression: a sweep that removed a folder between its creation and its locking made
        // create_dir fail with NotFound instead of trying another name.
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    sweep_stale(dir.path(), ".race-", None, &[]).unwrap();
                }
            });
            let creators: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..300 {
                            let scratch = ScratchPath::create_dir(dir.path(), ".race-").unwrap();
                            assert!(scratch.path().is_dir(), "a live scratch folder is never swept");
                            scratch.remove();
                        }
                    })
                })
                .collect();
            for creator in creators {
                let result = creator.join();
                stop.store(true, Ordering::Relaxed);
                result.unwrap();
            }
        });
    }

    #[test]
    fn a_sweep_with_a_marker_never_removes_a_plain_file() {
        // Regression (red-team, round 5): a user's file in the temporary directory named like an
        // extraction folder (even the run's own --config) was deleted by every run.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".mlprune-unzip-0123456789abcdef");
        std::fs::write(&file, b"user data").unwrap();
        let stale = dir.path().join(".mlprune-unzip-00000000000000aa");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join(".marker"), b"").unwrap();
        let removed = sweep_stale(dir.path(), ".mlprune-unzip-", Some(".marker"), &[]).unwrap();
        assert_eq!(removed, [stale]);
        assert_eq!(std::fs::read(&file).unwrap(), b"user data");
    }

    #[test]
    fn a_sweep_that_cannot_resolve_what_it_spares_removes_nothing() {
        // Regression (red-team, round 19): a spared path that could not be made canonical was
        // dropped from the list, and the sweep went on without it (the input was deleted).
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".mlprune-unzip-00000000000000aa");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join(".marker"), b"").unwrap();
        let unresolvable = dir.path().join("gone/also-gone/in.mlpackage");
        let removed = sweep_stale(dir.path(), ".mlprune-unzip-", Some(".marker"), &[&unresolvable]).unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        assert!(stale.join(".marker").is_file());
        // Once every spared path resolves, the same folder is swept.
        let removed = sweep_stale(
            dir.path(),
            ".mlprune-unzip-",
            Some(".marker"),
            &[dir.path().join("in.mlpackage").as_path()],
        )
        .unwrap();
        assert_eq!(removed, [stale]);
    }

    #[test]
    fn remove_deletes_and_unregisters() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = ScratchPath::create_dir(dir.path(), ".r-").unwrap();
        std::fs::write(scratch.path().join("f"), b"x").unwrap();
        let path = scratch.path().to_path_buf();
        scratch.remove();
        assert!(!path.exists());
        assert!(!registry().values().any(|r| r.path == path));
    }
}
