//! Path confinement: the checks that keep every path a package names inside the package.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Creates the folders of `relative` inside `root`, which must exist: unlike `create_dir_all`, it
/// never makes `root` or the scratch folder above it again. A signal removes that folder while
/// another thread is still writing into it, and `create_dir_all` put it back, with part of the
/// package in it, after the removal (red team: 3 leftover extraction folders in about 1,900
/// signals in session 17, 2 leftover staging folders of OUTPUT in about 1,000 in session 22).
pub(crate) fn create_dirs_below(root: &Path, relative: &Path) -> io::Result<()> {
    let mut path = root.to_path_buf();
    for component in relative.components() {
        path.push(component);
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            other => other?,
        }
    }
    Ok(())
}

/// Splits a manifest item path (relative to `Data/`, `/`-separated) into its components, refusing
/// anything that could leave `Data/`: absolute paths, `..`, backslashes (a separator on Windows),
/// NUL bytes, drive prefixes and paths that name `Data/` itself.
pub(crate) fn relative_item_path(path: &str) -> std::result::Result<PathBuf, String> {
    if path.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if path.contains('\\') {
        return Err("contains a backslash; item paths use '/'".into());
    }
    if path.starts_with('/') {
        return Err("is absolute; it must be relative to Data/".into());
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("is absolute; it must be relative to Data/".into())
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err("names Data/ itself".into());
    }
    Ok(relative)
}

/// Resolves `path` (which must exist) through every symlink and checks the result lies inside
/// `base` (already canonical). Returns the canonical path. `shown` is the path used in errors.
pub(crate) fn confined(path: &Path, base: &Path, shown: &Path) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(path).at(shown)?;
    if !resolved.starts_with(base) {
        return Err(Error::Package {
            path: shown.to_path_buf(),
            reason: format!("resolves to {}, outside {}", resolved.display(), base.display()),
        });
    }
    Ok(resolved)
}

/// Whether something (even a dangling symlink) exists at `path`.
pub(crate) fn exists_no_follow(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Device and inode of what `path` leads to (links followed), where the platform has them.
#[cfg(unix)]
pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
pub(crate) fn file_identity(_: &Path) -> Option<(u64, u64)> {
    None
}

/// Whether `a` and `b` are one file or folder seen through an overlay mount and one of its layers
/// (`merged/m.mlpackage` and `lower/m.mlpackage`): overlayfs gives the merged view its own device
/// but keeps the layer's inode numbers (layers on one filesystem, no `xino`), so identities
/// differ while the inode numbers, sizes and times agree. For folders the `Manifest.json` in them
/// must agree too. Linux only; elsewhere, and where neither path is on an overlay, `false`.
pub(crate) fn same_through_overlay(a: &Path, b: &Path) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::MetadataExt;
        if !(on_overlay(a) || on_overlay(b)) {
            return false;
        }
        let facts = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.ino(), m.is_dir(), m.len(), m.mtime(), m.mtime_nsec()))
        };
        let (Some(fa), Some(fb)) = (facts(a), facts(b)) else {
            return false;
        };
        // A folder's size and time change as it is written to; its manifest's do not.
        let folder = |f: (u64, bool, u64, i64, i64)| (f.0, f.1);
        if fa.1 {
            let (ma, mb) = (facts(&a.join("Manifest.json")), facts(&b.join("Manifest.json")));
            folder(fa) == folder(fb) && ma.is_some() && ma == mb
        } else {
            fa == fb
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (a, b);
        false
    }
}

/// Whether `path` (which must exist) is on an overlay mount. Linux only; elsewhere `false`.
fn on_overlay(path: &Path) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
        // `f_type` is an `i64` on some targets and narrower on others.
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == OVERLAYFS_SUPER_MAGIC)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = path;
        false
    }
}

/// Whether `path` is, or lies inside, `guarded` (both canonical, or where they would be): by path,
/// then, where `guarded` exists, by identity: whether `path` or a folder it lies in is the very
/// file or folder `guarded` is, or any folder inside it, whatever their names. A bind mount shows
/// one folder under two paths, which comparing paths cannot see; and a bind mount of a folder
/// inside `guarded` (`OUTPUT/Data` mounted elsewhere) shows that folder, not `guarded` itself.
/// Through an overlay mount the device is not compared, but the inode number, modification time
/// and mode are.
pub(crate) fn lies_within(path: &Path, guarded: &Path) -> bool {
    if path.starts_with(guarded) {
        return true;
    }
    // `guarded` itself is among them (none where it does not exist).
    let Some(inside) = folder_identities(guarded) else {
        // Too many folders to list: only a package's few folders are ever compared, so this is
        // no package of ours; saying "inside" refuses rather than risk writing into it.
        return true;
    };
    // An overlay's merged view shows its layers' files under its own device but with their inode
    // numbers, times and modes (see `same_through_overlay`): where one is involved, those match.
    let ancestors = || path.ancestors().filter(|a| !a.as_os_str().is_empty());
    let through_overlay = on_overlay(guarded) || ancestors().any(on_overlay);
    let layer_facts: std::collections::HashSet<(u64, LayerFacts)> = if through_overlay {
        inside.iter().map(|(&(_, ino), &facts)| (ino, facts)).collect()
    } else {
        Default::default()
    };
    ancestors()
        .filter_map(identity_and_facts)
        .any(|(id, facts)| inside.contains_key(&id) || layer_facts.contains(&(id.1, facts)))
}

/// The identities of `root` and of every folder under it (links not followed, mount points
/// entered: a mount inside the tree is part of what the user sees there); `None` past
/// `MAX_FOLDERS` folders. A plain file gives only itself.
fn folder_identities(root: &Path) -> Option<std::collections::HashMap<(u64, u64), LayerFacts>> {
    const MAX_FOLDERS: usize = 100_000;
    let mut found = std::collections::HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Some((id, facts)) = identity_and_facts(&dir) else {
            continue;
        };
        if found.insert(id, facts).is_some() {
            continue;
        }
        if found.len() > MAX_FOLDERS {
            return None;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Some(found)
}

/// What an overlay's merged view shows of a layer's file or folder besides its inode number: its
/// modification time (seconds, nanoseconds) and mode. A file elsewhere that shares an inode number
/// by chance (tmpfs numbers its files 2, 3, 4, …) does not share these.
type LayerFacts = (i64, i64, u32);

#[cfg(unix)]
fn identity_and_facts(path: &Path) -> Option<((u64, u64), LayerFacts)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(((m.dev(), m.ino()), (m.mtime(), m.mtime_nsec(), m.mode())))
}

#[cfg(not(unix))]
fn identity_and_facts(_: &Path) -> Option<((u64, u64), LayerFacts)> {
    None
}

/// Whether `root` is, or (a folder) holds at any depth, the file of identity `id`: another hard
/// link to it. Links inside are not followed; past [`MAX_TREE_ENTRIES`] entries, not held.
pub(crate) fn tree_holds(root: &Path, id: (u64, u64)) -> bool {
    let found = walk_tree(root, MAX_TREE_ENTRIES, |meta| {
        (meta.is_file() && identity_of(meta) == Some(id)).then_some(())
    });
    matches!(found, Ok(Some(())))
}

/// Entries a walk of a tree ([`tree_holds`], [`tree_holds_one_of`]) looks at before it gives up.
pub(crate) const MAX_TREE_ENTRIES: usize = 100_000;

/// The first of `ids` that `root` is or holds at any depth, a folder or a file's only name (a
/// file with other hard links outlives the removal of `root`); links inside are not followed.
/// `Err(())` past [`MAX_TREE_ENTRIES`] entries: not known.
pub(crate) fn tree_holds_one_of(root: &Path, ids: &[(u64, u64)]) -> Result<Option<(u64, u64)>, ()> {
    tree_holds_one_of_within(root, ids, MAX_TREE_ENTRIES)
}

fn tree_holds_one_of_within(
    root: &Path,
    ids: &[(u64, u64)],
    max_entries: usize,
) -> Result<Option<(u64, u64)>, ()> {
    if ids.is_empty() {
        return Ok(None);
    }
    walk_tree(root, max_entries, |meta| {
        let only_name = !meta.is_file() || link_count(meta) <= 1;
        identity_of(meta).filter(|id| ids.contains(id) && only_name)
    })
}

/// Looks at `root` and everything under it (links not followed, each entry's own metadata) until
/// `look` finds something; `Err(())` past `max_entries` entries.
fn walk_tree<T>(
    root: &Path,
    max_entries: usize,
    mut look: impl FnMut(&std::fs::Metadata) -> Option<T>,
) -> Result<Option<T>, ()> {
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        seen += 1;
        if seen > max_entries {
            return Err(());
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if let Some(found) = look(&meta) {
            return Ok(Some(found));
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    Ok(None)
}

/// How many names (hard links) the file of `meta` has; 1 where the system does not say.
#[cfg(unix)]
fn link_count(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.nlink()
}

#[cfg(not(unix))]
fn link_count(_: &std::fs::Metadata) -> u64 {
    1
}

/// [`mount_of`] where the system has mounts to tell apart; `None` when `path` cannot be looked at.
#[cfg(unix)]
pub(crate) fn mount_of_path(path: &Path) -> Option<(u64, u64)> {
    Some(mount_of(&std::fs::symlink_metadata(path).ok()?, path))
}

#[cfg(not(unix))]
pub(crate) fn mount_of_path(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|_| (0, 0))
}

/// Whether `path` (not followed) is a mount point: on another mount than the folder it is in (a
/// filesystem mounted there, or a file or folder bind-mounted there). It cannot be renamed or
/// removed (EBUSY), and what is under it is not the folder's to replace. `false` when either
/// cannot be looked at.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(parent), Some(own)) = (std::fs::canonicalize(parent), mount_of_path(path)) else {
        return false;
    };
    mount_of_path(&parent).is_some_and(|parent_mount| parent_mount != own)
}

/// Which mount `path` itself (not followed) is on: its device and, on Linux, the mount id
/// (`statx`), which also tells a bind mount of a folder of the same filesystem apart.
#[cfg(unix)]
fn mount_of(meta: &std::fs::Metadata, path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mount = mount_id(rustix::fs::CWD, Some(path));
    (meta.dev(), mount)
}

/// The Linux mount id (`statx`) of `path` (not followed), or of the open `dir` itself when no
/// path is given; 0 where the system has none to give.
#[cfg(unix)]
fn mount_id(dir: impl std::os::fd::AsFd, path: Option<&Path>) -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{statx, AtFlags, StatxFlags};
        let stat = match path {
            Some(path) => statx(dir, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID),
            None => statx(dir, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID),
        };
        stat.ok()
            .filter(|s| s.stx_mask & StatxFlags::MNT_ID.bits() != 0)
            .map_or(0, |s| s.stx_mnt_id)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (dir, path);
        0
    }
}

/// The first thing in the tree at `root` (not following links) that is not a plain file or
/// folder on `root`'s own mount: a mount point (another device, or a bind mount, which shows the
/// same device under another mount id), a link, a FIFO, a socket or a device. mlprune writes none
/// of these; deleting the tree would cross into a mount point. `None` when the tree is plain.
pub(crate) fn foreign_entry(root: &Path) -> Option<(PathBuf, &'static str)> {
    let root_meta = std::fs::symlink_metadata(root).ok()?;
    #[cfg(unix)]
    let root_mount = mount_of(&root_meta, root);
    #[cfg(not(unix))]
    let _ = root_meta;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Some((path, "unreadable"));
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Some((path, "a symbolic link"));
        }
        if !(kind.is_dir() || kind.is_file()) {
            return Some((path, "not a regular file or folder"));
        }
        #[cfg(unix)]
        if mount_of(&meta, &path) != root_mount {
            return Some((path, "a mount point"));
        }
        if kind.is_dir() {
            let Ok(entries) = std::fs::read_dir(&path) else {
                return Some((path, "unreadable"));
            };
            for entry in entries {
                match entry {
                    Ok(e) => pending.push(e.path()),
                    Err(_) => return Some((path, "unreadable")),
                }
            }
        }
    }
    None
}

/// Removes the file or tree at `path` without ever leaving its filesystem: links are removed,
/// not followed, and a folder on another device or mount (a mount point put there since it was
/// checked) stops the removal with an error instead of being emptied. Each folder is opened
/// (`O_NOFOLLOW`) and checked through its open handle, so swapping a folder for a link meanwhile
/// leads nowhere else.
#[cfg(unix)]
pub(crate) fn remove_tree_one_fs(path: &Path) -> std::io::Result<()> {
    remove_tree_one_fs_at(rustix::fs::CWD, path)
}

/// [`remove_tree_one_fs`] of `name` in the open folder `dir`: reached through the handle, so that
/// the folder renamed meanwhile (a user moving OUTPUT's folder during a run) changes nothing.
#[cfg(unix)]
pub(crate) fn remove_tree_one_fs_at<Fd: std::os::fd::AsFd>(dir: Fd, name: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType};
    let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(std::io::Error::from);
    }
    #[allow(clippy::unnecessary_cast)]
    let mount = (stat.st_dev as u64, mount_id(&dir, Some(name)));
    let child = open_dir_on(&dir, name, mount)?;
    empty_dir_on(&child, mount)?;
    drop(child);
    rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
pub(crate) fn remove_tree_one_fs(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Opens the folder `name` in `dirfd` without following a link.
#[cfg(unix)]
pub(crate) fn open_dir_at<P: rustix::path::Arg, Fd: std::os::fd::AsFd>(
    dirfd: Fd,
    name: P,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dirfd, name, flags, Mode::empty())?)
}

/// Opens the folder `name` in `dirfd` without following a link, and checks it is on `mount`.
#[cfg(unix)]
fn open_dir_on<P: rustix::path::Arg, Fd: std::os::fd::AsFd>(
    dirfd: Fd,
    name: P,
    mount: (u64, u64),
) -> std::io::Result<std::os::fd::OwnedFd> {
    let fd = open_dir_at(dirfd, name)?;
    let stat = rustix::fs::fstat(&fd)?;
    let mnt = mount_id(&fd, None);
    #[allow(clippy::unnecessary_cast)]
    if (stat.st_dev as u64, mnt) != mount {
        return Err(std::io::Error::other(
            "holds a mount point of another filesystem; not removing it",
        ));
    }
    Ok(fd)
}

/// Removes everything in the open folder `dir`, which is on `mount`.
#[cfg(unix)]
fn empty_dir_on(dir: &std::os::fd::OwnedFd, mount: (u64, u64)) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType};
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    // Our markers (`.mlprune-unzip-scratch`) last: the sweep of the shared temporary folder
    // removes only a folder that carries one, so a run killed while it removes its extraction
    // must leave it there. Removed first, as it was on ext4, the rest stayed for good (red team,
    // session 20: 10 of 10 kills timed so).
    names.sort_by_key(|name| name.to_bytes().starts_with(b".mlprune-"));
    for name in names {
        let stat = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            let child = open_dir_on(dir, name.as_c_str(), mount)?;
            empty_dir_on(&child, mount)?;
            drop(child);
            rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty())?;
        }
    }
    Ok(())
}

/// Device and inode of `path` itself (a link not followed), where the platform has them.
pub(crate) fn identity_no_follow(path: &Path) -> Option<(u64, u64)> {
    identity_of(&std::fs::symlink_metadata(path).ok()?)
}

/// Device and inode in `meta`, where the platform has them.
#[cfg(unix)]
pub(crate) fn identity_of(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
pub(crate) fn identity_of(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Device and inode of what the open `file` is.
pub(crate) fn handle_identity(file: &std::fs::File) -> Option<(u64, u64)> {
    identity_of(&file.metadata().ok()?)
}

/// Swaps what `a` and `b` name, atomically (`renameat2(RENAME_EXCHANGE)`): both must exist.
/// `Unsupported` where the system or filesystem cannot.
pub(crate) fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                Err(std::io::ErrorKind::Unsupported.into())
            }
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (a, b);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// What `path` names now (a link not followed), held open so that checks made through
/// [`Pinned::examined`] see that very file or folder even if another is swapped in at `path`
/// while they run (they read several files by path, and a fast enough swapper could show them a
/// package while `path` names a user's folder before and after).
pub(crate) struct Pinned {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    _fd: rustix::fd::OwnedFd,
    identity: Option<(u64, u64)>,
    examined: PathBuf,
}

impl Pinned {
    /// Pins what `path` names: on Linux through an `O_PATH` handle (opening nothing, so a device
    /// or FIFO is not touched) seen as `/proc/self/fd/<n>`; elsewhere `path` itself.
    pub(crate) fn new(path: &Path, is_dir: bool) -> std::io::Result<Pinned> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::fd::AsRawFd;
            use rustix::fs::{fstat, openat, Mode, OFlags, CWD};
            let fd = openat(
                CWD,
                path,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let stat = fstat(&fd)?;
            let proc_fds = Path::new("/proc/self/fd");
            // A trailing '/' makes the system follow the magic link to the folder even where the
            // checks look at a path without following it.
            let examined = match (proc_fds.is_dir(), is_dir) {
                (true, true) => PathBuf::from(format!("/proc/self/fd/{}/", fd.as_raw_fd())),
                (true, false) => proc_fds.join(fd.as_raw_fd().to_string()),
                (false, _) => path.to_path_buf(),
            };
            Ok(Pinned {
                _fd: fd,
                identity: Some((stat.st_dev as u64, stat.st_ino as u64)),
                examined,
            })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = is_dir;
            Ok(Pinned {
                identity: identity_no_follow(path),
                examined: path.to_path_buf(),
            })
        }
    }

    /// Device and inode of what was pinned.
    pub(crate) fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    /// The path to look at it through.
    pub(crate) fn examined(&self) -> &Path {
        &self.examined
    }
}

/// Renames `from` to `to` only if nothing exists at `to` (else `AlreadyExists`), atomically where
/// the system can (`renameat2(RENAME_NOREPLACE)` on Linux); elsewhere a file is linked to its new
/// name and unlinked from the old, which also fails if `to` exists.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            // Not supported by this filesystem or kernel: fall through.
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
    }
    if std::fs::symlink_metadata(from)?.is_dir() {
        // No hard link of a folder: rename, which fails over anything but an empty folder.
        if exists_no_follow(to) {
            return Err(std::io::ErrorKind::AlreadyExists.into());
        }
        return std::fs::rename(from, to);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder, or a file's only name, is held; a file's second hard link is not (removing the
    /// tree leaves the file); past the entry cap the answer is "not known", never "held" (an old
    /// package of many files was said to hold the input: red team, session 21).
    #[cfg(unix)]
    #[test]
    fn tree_holds_one_of_tells_held_from_linked_and_from_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub/input")).unwrap();
        std::fs::write(dir.path().join("outside"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("outside"), tree.join("sub/linked")).unwrap();
        std::fs::write(tree.join("sub/only"), b"y").unwrap();
        let id = |p: &Path| identity_no_follow(p).unwrap();
        let (folder, linked, only) = (
            id(&tree.join("sub/input")),
            id(&tree.join("sub/linked")),
            id(&tree.join("sub/only")),
        );
        assert_eq!(tree_holds_one_of(&tree, &[folder]), Ok(Some(folder)));
        assert_eq!(tree_holds_one_of(&tree, &[only]), Ok(Some(only)));
        assert_eq!(tree_holds_one_of(&tree, &[linked]), Ok(None));
        assert_eq!(tree_holds_one_of(&tree, &[]), Ok(None));
        assert_eq!(tree_holds_one_of_within(&tree, &[linked], 2), Err(()));
    }

    #[test]
    fn item_paths_are_confined_to_data() {
        assert_eq!(
            relative_item_path("com.apple.CoreML/./model.mlmodel").as_deref(),
            Ok(Path::new("com.apple.CoreML/model.mlmodel"))
        );
        assert!(relative_item_path("/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(relative_item_path("a/../../b").unwrap_err().contains(".."));
        assert!(relative_item_path("..").unwrap_err().contains(".."));
        assert!(relative_item_path("a\\..\\b").unwrap_err().contains("backslash"));
        assert!(relative_item_path("a\0b").unwrap_err().contains("NUL"));
        assert!(relative_item_path("").unwrap_err().contains("Data/ itself"));
        assert!(relative_item_path("./.").unwrap_err().contains("Data/ itself"));
    }

    #[test]
    fn confined_refuses_symlink_escape() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(dir.path().join("outside"), b"x").unwrap();
        std::fs::write(base.join("inside"), b"x").unwrap();
        let base = std::fs::canonicalize(&base).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("outside"), base.join("link")).unwrap();
        assert_eq!(
            confined(&base.join("inside"), &base, Path::new("i")).unwrap(),
            base.join("inside")
        );
        #[cfg(unix)]
        {
            let err = confined(&base.join("link"), &base, Path::new("shown/link")).unwrap_err();
            assert!(matches!(err, Error::Package { .. }), "{err}");
            assert!(err.to_string().starts_with("shown/link: "), "{err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn removal_never_follows_a_link_nor_enters_a_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("precious"), b"x").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"f").unwrap();
        std::os::unix::fs::symlink(&keep, tree.join("a/link")).unwrap();
        assert_eq!(
            foreign_entry(&tree).map(|(_, what)| what),
            Some("a symbolic link")
        );
        remove_tree_one_fs(&tree).unwrap();
        assert!(!tree.exists());
        assert!(keep.join("precious").is_file(), "the link's target is kept");

        // A bind mount inside (root only): the removal stops with an error and leaves it whole.
        #[cfg(target_os = "linux")]
        {
            std::fs::create_dir_all(tree.join("m")).unwrap();
            // A marker of an extraction folder is removed last, so it outlives a removal that
            // stops (or is killed) part way: the temp sweep removes only marked folders.
            std::fs::write(tree.join(crate::package::UNZIP_MARKER), b"").unwrap();
            for i in 0..32 {
                std::fs::write(tree.join(format!("f{i}")), b"f").unwrap();
            }
            let mounted = std::process::Command::new("mount")
                .arg("--bind")
                .arg(&keep)
                .arg(tree.join("m"))
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                eprintln!("skipped: cannot mount here (bind mount inside a removed tree)");
                return;
            }
            let found = foreign_entry(&tree);
            let removed = remove_tree_one_fs(&tree);
            let _ = std::process::Command::new("umount").arg(tree.join("m")).status();
            assert_eq!(found.map(|(_, what)| what), Some("a mount point"));
            assert!(removed.is_err());
            assert!(
                keep.join("precious").is_file(),
                "nothing removed through the mount"
            );
            assert!(
                tree.join(crate::package::UNZIP_MARKER).is_file(),
                "the marker is removed last"
            );
        }
    }

    #[test]
    fn rename_noreplace_refuses_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        // Not even over an empty folder, which a plain rename of a folder replaces.
        let (d, e) = (dir.path().join("d"), dir.path().join("e"));
        std::fs::create_dir(&d).unwrap();
        std::fs::create_dir(&e).unwrap();
        assert!(rename_noreplace(&d, &e).is_err());
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"a");
        assert!(!a.exists());
    }
}
