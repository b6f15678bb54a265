//! Staged output: the new package is built in a hidden sibling of OUTPUT and renamed into place
//! only on `commit`, so OUTPUT is never seen half written and a failed run leaves nothing behind.

use std::collections::hash_map::{Entry, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek};
use std::path::{Path, PathBuf};

use super::folder::{DATA_DIR, MANIFEST_FILE, WEIGHT_FILE};
use super::holes::Copied;
use super::manifest::Manifest;
use super::paths::{
    confined, create_dirs_below, exists_no_follow, file_identity, foreign_entry, handle_identity,
    identity_no_follow, identity_of, is_mount_point, lies_within, remove_tree_one_fs, rename_exchange,
    rename_noreplace, same_through_overlay, tree_holds, tree_holds_one_of, Pinned, MAX_TREE_ENTRIES,
};
use super::random::temp_suffix;
use super::zipped::{package_stem, strip_suffix_ignore_case, write_package_zip};
use super::{used_paths, Package, Use, UsedPaths};
use crate::cancel::CancelFlag;
use crate::cleanup::{self, ScratchPath};
use crate::error::{show_scratch_as, Error, IoContext, Result};
use crate::open_file::{kind_of, open_dir, open_nonblocking, open_regular, open_regular_or_err, Links};
#[cfg(test)]
use zip::ZipArchive;

/// OUTPUT's parent directory (`.` for a bare name) and file name.
fn split_output(output: &Path) -> Result<(PathBuf, OsString)> {
    // `out/` or `out/.` would name a folder to the system, whatever the name says.
    let raw = output.as_os_str().as_encoded_bytes();
    if raw.ends_with(b"/") || raw.ends_with(b"/.") {
        return Err(Error::Usage(format!(
            "output {} ends in '/' or '/.'; name the package without it",
            output.display()
        )));
    }
    let name = output.file_name().ok_or_else(|| {
        Error::Usage(format!(
            "output {} does not name a file or directory",
            output.display()
        ))
    })?;
    check_name_length("output", output, name)?;
    Ok((parent_dir(output), name.to_os_string()))
}

/// Longest name a file system takes (Linux, macOS).
const NAME_MAX: usize = 255;

/// What [`scratch_prefix`] and a 16-digit suffix add to a name.
const SCRATCH_NAME_EXTRA: usize = ".".len() + ".mlprune-tmp-".len() + 16;

/// A name that fits the file system but not once a scratch name is made of it failed with the
/// system's error naming the hidden scratch path: refused up front, naming the user's path.
fn check_name_length(what: &str, path: &Path, name: &std::ffi::OsStr) -> Result<()> {
    let len = name.as_encoded_bytes().len();
    if len + SCRATCH_NAME_EXTRA > NAME_MAX {
        return Err(Error::Usage(format!(
            "{what} {} has a name of {len} bytes; at most {} fit (it is written under a temporary \
             name {SCRATCH_NAME_EXTRA} bytes longer first)",
            path.display(),
            NAME_MAX - SCRATCH_NAME_EXTRA
        )));
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The identity (device, inode) a folder of OUTPUT or the report had when the run checked it
/// (`None` where the system has none). Paths made there, and the commit, go through the folder's
/// path: a folder replaced since (by a link into the input, say) is refused by comparing this,
/// where the path alone led into the input (red team, session 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirIdentity(Option<(u64, u64)>);

impl DirIdentity {
    fn of(dir: &Path) -> DirIdentity {
        DirIdentity(file_identity(dir))
    }

    /// Whether a folder of identity `found` is the one checked (always, where none could be
    /// told then).
    fn is(self, found: Option<(u64, u64)>) -> bool {
        self.0.is_none() || found == self.0
    }

    /// Refuses the run where `dir` is no longer the folder this identity names.
    fn check(self, dir: &Path, what: &str, user_path: &Path) -> Result<()> {
        if !self.is(file_identity(dir)) {
            return Err(folder_changed(what, user_path));
        }
        Ok(())
    }
}

/// Whether the scratch path in `slot` still shows, at its name, what the run made there (`None`
/// in the slot: nothing to publish there, so nothing swapped). Where it does not, what is there is
/// somebody's: the slot is emptied, so that the cleanup does not remove it.
fn still_ours(slot: &mut Option<ScratchPath>) -> bool {
    let Some(scratch) = slot else {
        return true;
    };
    if identity_no_follow(scratch.path()) == scratch.identity() {
        return true;
    }
    slot.take();
    false
}

fn folder_changed(what: &str, user_path: &Path) -> Error {
    Error::Usage(format!(
        "{what} directory {} changed during the run (it is no longer the folder checked when the \
         run started); not writing there",
        parent_dir(user_path).display()
    ))
}

/// `dir` with every link in it followed, once: where the scratch siblings, the commit and the
/// cleanup of OUTPUT or the report (`what`) go for the rest of the run.
fn resolve_dir(what: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(dir)
        .map_err(|e| Error::Usage(format!("{what} directory {} is not usable: {e}", dir.display())))
}

/// OUTPUT's folder, resolved once (see [`resolve_dir`]), and its name. Every check of OUTPUT and
/// every path made next to it start from this one resolution: the checks resolved the folder
/// again, so a link in the path re-pointed between a check and the making of a folder put the
/// table folder, or the committed package, inside the input (red team, session 20). Errors
/// still name OUTPUT as given.
fn resolve_output(output: &Path) -> Result<(PathBuf, OsString)> {
    let (parent, name) = split_output(output)?;
    let parent = resolve_dir("output", &parent)?;
    let target = parent.join(&name);
    if target != output {
        show_scratch_as(target.as_os_str(), output.as_os_str());
    }
    Ok((parent, name))
}

/// `.<name>.mlprune-tmp-`: the prefix of every scratch sibling of `name` (staging folder, archive
/// or report being written). A fixed prefix lets a later run find what a killed run left. Built
/// from the name's bytes: a lossy conversion made a name of invalid UTF-8 longer than measured.
fn scratch_prefix(name: &OsStr) -> OsString {
    sibling_prefix(name, ".mlprune-tmp-")
}

/// `.<name>.mlprune-old-`: the prefix of an old OUTPUT set aside by `--force` until the new one
/// is in place.
fn aside_prefix(name: &OsStr) -> OsString {
    sibling_prefix(name, ".mlprune-old-")
}

fn sibling_prefix(name: &OsStr, tag: &str) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(tag);
    prefix
}

/// Creates the hidden scratch sibling (a folder if `is_dir`) in `dir` of `user_path`, OUTPUT or the
/// report (`what`). Errors name `user_path`, not the hidden name; a folder the user cannot write in
/// is a usage error, as one that does not exist is. `dir` must still be the folder checked, of
/// identity `checked` (see [`DirIdentity`]): a path made elsewhere (`dir` replaced by a link into
/// the input since) is removed and the run refused.
fn create_scratch(
    dir: &Path,
    checked: DirIdentity,
    user_path: &Path,
    what: &str,
    is_dir: bool,
) -> Result<ScratchPath> {
    let name = user_path.file_name().unwrap_or_default();
    let created = if is_dir {
        ScratchPath::create_dir(dir, scratch_prefix(name))
    } else {
        ScratchPath::create_file(dir, scratch_prefix(name))
    };
    match created {
        Ok(scratch) => {
            if !checked.is(scratch.folder_identity().or_else(|| file_identity(dir))) {
                scratch.remove();
                return Err(folder_changed(what, user_path));
            }
            if let Some(scratch_name) = scratch.path().file_name() {
                show_scratch_as(scratch_name, name);
            }
            // After the name above, so a scratch path shown as `<resolved dir>/<name>` then
            // reads as the path the user gave.
            let resolved = dir.join(name);
            if resolved != user_path {
                show_scratch_as(resolved.as_os_str(), user_path.as_os_str());
            }
            Ok(scratch)
        }
        Err(Error::Io { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            Err(Error::Usage(format!(
                "{what} directory {} is not writable: {source}",
                parent_dir(user_path).display()
            )))
        }
        Err(Error::Io { source, .. }) => Err(Error::io(user_path, source)),
        Err(e) => Err(e),
    }
}

/// Removes scratch siblings of `name` in `dir` that a killed run left (no live process holds
/// them), and old packages a killed `--force` run had set aside, and says so in `notices`.
/// Never what is, holds or lies inside one of `spare`.
fn sweep_leftovers(dir: &Path, name: &OsStr, spare: &[&Path], notices: &mut Vec<String>) -> Result<()> {
    let mut removed = cleanup::sweep_stale(dir, scratch_prefix(name), None, spare)?;
    removed.extend(cleanup::sweep_stale(dir, aside_prefix(name), None, spare)?);
    for path in removed {
        notices.push(format!("removed {}, left by an interrupted run", path.display()));
    }
    Ok(())
}

/// A file published together with the package (the `--report`): written to a hidden sibling of
/// its final path and renamed into place by the same commit, so both appear or neither does.
#[derive(Debug)]
struct Companion {
    final_path: PathBuf,
    /// What the folder of `final_path` was when it was checked.
    dir_identity: DirIdentity,
    scratch: ScratchPath,
    /// The identity of the regular file at `final_path` when it was last checked (reserved, then
    /// again at the commit): the commit replaces that file and nothing else (a link or FIFO
    /// swapped in since is kept). `None`: nothing was there, and the commit will not replace what
    /// appeared since.
    checked: Option<(u64, u64)>,
    /// What the report may not be or lie inside: the input, the config files, OUTPUT.
    guarded: Vec<PathBuf>,
}

/// A package being written.
#[derive(Debug)]
pub struct OutputPackage {
    /// OUTPUT as the user gave it.
    output: PathBuf,
    /// OUTPUT's directory, resolved once when staging starts (links in the path the user gave
    /// followed): every temporary sibling, the commit and the cleanup go there, so a link in that
    /// path re-pointed during the run (`current -> A` switched to `B`) changes nothing of where
    /// they go; same filesystem as OUTPUT, so renames work.
    parent: PathBuf,
    /// What `parent` was when the run checked it: the commit goes there only if it still is.
    parent_identity: DirIdentity,
    /// OUTPUT's file name.
    name: OsString,
    force: bool,
    /// For a zip OUTPUT, the archive's top-level folder name.
    zip_folder: Option<String>,
    manifest: Manifest,
    /// The staging folder; `None` once it has been renamed into place.
    staging: Option<ScratchPath>,
    /// The archive being written for a zip OUTPUT; `None` before `commit` and after it.
    temp_zip: Option<ScratchPath>,
    companion: Option<Companion>,
    /// Things the user should hear about (stale scratch paths removed).
    notices: Vec<String>,
    /// What the run reads (the input, the config files, the report) with the identities they had
    /// when staging began: an old OUTPUT that holds one of them by then is not replaced.
    read_files: Vec<(PathBuf, (u64, u64))>,
}

impl OutputPackage {
    /// Refuses an OUTPUT that is, contains or lies inside the input, and an existing OUTPUT
    /// unless `force` (and then only a package). Then stages a copy of every input file the
    /// package uses (the manifest and its declared items: `used_paths`) except the root model and
    /// `weight.bin`, which the caller writes at `model_path()` and `weight_path()`. `reads`: the
    /// other files the run reads or writes (config files, the report), which no sweep of leftovers
    /// removes.
    pub fn create(input: &Package, output: &Path, force: bool, reads: &[&Path]) -> Result<OutputPackage> {
        Self::create_at(input, &OutputPlace::check(input, output, force)?, reads)
    }

    /// [`OutputPackage::create`] at a place already checked, as the run checked it when it
    /// started (also for its [`TableFolder`]): OUTPUT is resolved and checked once per run.
    pub fn create_at(input: &Package, place: &OutputPlace, reads: &[&Path]) -> Result<OutputPackage> {
        let spare: Vec<&Path> = std::iter::once(input.origin())
            .chain(reads.iter().copied())
            .collect();
        let mut staged = Self::stage(
            &place.output,
            (place.parent.clone(), place.parent_identity, place.name.clone()),
            input.manifest().clone(),
            place.force,
            &spare,
        )?;
        staged.read_files = spare
            .iter()
            .filter_map(|p| Some((p.to_path_buf(), file_identity(p)?)))
            .collect();
        // From here on, dropping `staged` on error removes the staging directory.
        let skip = [
            Path::new(DATA_DIR).join(input.manifest().root_model_relative()),
            input.weight_file_relative(),
        ];
        let used = used_paths(input.manifest());
        let mut names = FirstNames::default();
        for relative in &skip {
            let path = input.root().join(relative);
            names.note(file_identity(&path), &input.display_path(&path))?;
        }
        copy_tree(
            input,
            input.root(),
            staged.staging_dir(),
            Path::new(""),
            (&used, &skip),
            &mut names,
        )?;
        staged.create_item_dirs()?;
        Ok(staged)
    }

    /// Stages a brand-new package with `manifest` and nothing else (the caller writes the model
    /// and `weight.bin`). An existing OUTPUT is refused unless `force` (and then only a package).
    pub fn create_new(output: &Path, manifest: Manifest, force: bool) -> Result<OutputPackage> {
        let (parent, name) = resolve_output(output)?;
        let identity = DirIdentity::of(&parent);
        check_existing_output(&parent.join(&name), force)?;
        let staged = Self::stage(output, (parent, identity, name), manifest, force, &[])?;
        let path = staged.staging_dir().join(MANIFEST_FILE);
        std::fs::write(&path, staged.manifest.to_json()).at(&path)?;
        staged.create_item_dirs()?;
        Ok(staged)
    }

    /// `parent`: OUTPUT's folder from [`resolve_output`]. `spare`: what the run reads, which no
    /// sweep of leftovers may remove.
    fn stage(
        output: &Path,
        (parent, parent_identity, name): (PathBuf, DirIdentity, OsString),
        manifest: Manifest,
        force: bool,
        spare: &[&Path],
    ) -> Result<OutputPackage> {
        let name_str = name.to_string_lossy();
        let zip_folder = (strip_suffix_ignore_case(&name_str, ".zip").len() < name_str.len())
            .then(|| format!("{}.mlpackage", package_stem(output)));
        let mut notices = Vec::new();
        sweep_leftovers(&parent, &name, spare, &mut notices)?;
        let staging = create_scratch(&parent, parent_identity, output, "output", true)?;
        Ok(OutputPackage {
            output: output.to_path_buf(),
            parent,
            parent_identity,
            name,
            force,
            zip_folder,
            manifest,
            staging: Some(staging),
            temp_zip: None,
            companion: None,
            notices,
            read_files: Vec::new(),
        })
    }

    /// Refuses to go on where the staging folder's name no longer shows the folder this run made
    /// (swapped by someone who may write next to OUTPUT): that one is somebody's, neither
    /// published nor removed.
    fn check_staging_is_ours(&mut self) -> Result<()> {
        if still_ours(&mut self.staging) {
            return Ok(());
        }
        Err(self.replaced_while_writing())
    }

    fn replaced_while_writing(&self) -> Error {
        Error::Usage(format!(
            "the package being written for output {} was replaced while mlprune was writing it; \
             not publishing it",
            self.output.display()
        ))
    }

    /// Notices for the user: stale scratch paths of interrupted runs that staging removed.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    fn staging_dir(&self) -> &Path {
        self.staging.as_ref().map_or(Path::new(""), ScratchPath::path)
    }

    /// A folder on OUTPUT's filesystem for scratch files of the run: the staging folder. A file
    /// left in it would be published with the package, so only unlinked files belong there.
    pub fn scratch_dir(&self) -> &Path {
        self.staging_dir()
    }

    /// Reserves `path` for a file to publish with the package (see `companion_file`): refuses a
    /// path that is or lies inside OUTPUT or any of `protected` (the input, the config file),
    /// also through links, and one where something other than a regular file exists. Creates
    /// its hidden sibling now, so an unusable folder fails the run before any work is done.
    pub fn reserve_companion(&mut self, path: &Path, protected: &[&Path]) -> Result<()> {
        // OUTPUT where this run puts it (its folder resolved at the start), not through the path
        // given, whose links may lead elsewhere by now.
        let target = self.parent.join(&self.name);
        let mut guarded: Vec<&Path> = protected.to_vec();
        guarded.push(&target);
        // Its folder resolved once, as OUTPUT's is, by the check (see `resolve_output`).
        let (dir, checked) = check_companion_location(path, &guarded)?;
        let dir_identity = DirIdentity::of(&dir);
        let name = path.file_name().unwrap_or_default();
        sweep_leftovers(&dir, name, &guarded, &mut self.notices)?;
        let scratch = create_scratch(&dir, dir_identity, path, "report", false)?;
        self.companion = Some(Companion {
            final_path: dir.join(name),
            dir_identity,
            scratch,
            checked,
            guarded: guarded.iter().map(|p| p.to_path_buf()).collect(),
        });
        Ok(())
    }

    /// The reserved companion's scratch file, emptied, with its path (for errors): the report is
    /// written into it as the run goes (`crate::report_stream`), never held whole. The writer
    /// syncs it; `commit` publishes it.
    pub fn companion_file(&self) -> Result<(File, PathBuf)> {
        let companion = self
            .companion
            .as_ref()
            .ok_or_else(|| Error::Usage("no companion file was reserved".into()))?;
        let scratch = companion.scratch.path();
        let mut file = companion.scratch.file().try_clone().at(scratch)?;
        file.set_len(0)
            .and_then(|()| file.seek(io::SeekFrom::Start(0)).map(drop))
            .at(scratch)?;
        Ok((file, scratch.to_path_buf()))
    }

    /// Writes the reserved companion's contents whole, synced (tests; runs stream it).
    #[cfg(test)]
    fn write_companion(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let (mut file, scratch) = self.companion_file()?;
        file.write_all(bytes).and_then(|()| file.sync_all()).at(scratch)
    }

    /// Where to write the root model in staging (its directory exists).
    pub fn model_path(&self) -> PathBuf {
        self.staging_dir()
            .join(DATA_DIR)
            .join(self.manifest.root_model_relative())
    }

    /// Where to write `weight.bin` in staging (its directory exists).
    pub fn weight_path(&self) -> PathBuf {
        self.weights_dir().join(WEIGHT_FILE)
    }

    /// Replaces the staged `Manifest.json` (call it only when the manifest changed).
    pub fn set_manifest(&mut self, manifest: &Manifest) -> Result<()> {
        let path = self.staging_dir().join(MANIFEST_FILE);
        // Remove first: the copy may have kept a read-only mode from the input.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
            _ => {}
        }
        std::fs::write(&path, manifest.to_json()).at(&path)?;
        self.manifest = manifest.clone();
        self.create_item_dirs()
    }

    /// Moves the staged package into place, with its companion file if one was reserved: a
    /// rename for a folder OUTPUT; for a `.zip` OUTPUT, an archive written to a temporary sibling,
    /// synced, then renamed. A replaced OUTPUT is removed only once the new one (and the
    /// companion) are in place; if the companion cannot be put in place, the package is taken
    /// back out and the old OUTPUT restored. Signals wait until the renames are done. Returns
    /// notices for the user: an old OUTPUT that could not be removed once the new one was in place.
    pub fn commit(self) -> Result<Vec<String>> {
        self.commit_unless(&CancelFlag::default())
    }

    /// [`OutputPackage::commit`], which stops with `Error::Interrupted`, nothing placed, when
    /// `cancel` is set before the commit begins, the wait for another run's commit included.
    pub fn commit_unless(mut self, cancel: &CancelFlag) -> Result<Vec<String>> {
        cancel.check()?;
        self.parent_identity.check(&self.parent, "output", &self.output)?;
        self.check_staging_is_ours()?;
        let new_path = match self.zip_folder.clone() {
            Some(folder) => {
                let temp = create_scratch(&self.parent, self.parent_identity, &self.output, "output", false)?;
                let file = temp.file().try_clone().at(temp.path())?;
                let temp_path = temp.path().to_path_buf();
                self.temp_zip = Some(temp);
                write_package_zip(self.staging_dir(), &folder, file, &self.output)?;
                // Archived by its name: a folder swapped in while it was read went into the
                // archive (red team, session 21).
                self.check_staging_is_ours()?;
                temp_path
            }
            None => {
                sync_tree(self.staging_dir())?;
                self.staging_dir().to_path_buf()
            }
        };
        // One commit at a time into OUTPUT's folder: two runs replacing one OUTPUT at once each
        // set aside the other's package. Waiting for the other run (up to a minute) is not yet
        // this run's commit, so signals are not held off meanwhile: a SIGINT then cleans up and
        // exits 130 as anywhere else, where it used to be deferred and the run committed anyway.
        // The last chance to stop, before the folder's lock is taken and signals are held off:
        // the holder asked may run code of its own (Python's signal handlers), which waited a
        // minute for the lock if it pruned into the same folder (red team, session 21). A stop
        // request while the lock is awaited is still seen there.
        cancel.final_check()?;
        let (dir_lock, waited) = lock_dir(&self.parent, cancel)?;
        if waited {
            // Another run's commit came first, for as long as it took: look once more.
            cancel.final_check()?;
        }
        let _signals = cleanup::hold_off_signals();
        cancel.check()?;
        // The commit goes through the folder's path: it must still be the folder checked (one
        // replaced by a link into the input put the package there; red team, session 21).
        self.parent_identity.check(&self.parent, "output", &self.output)?;
        // The report is checked again, as OUTPUT is below: what is there now, if it may be
        // replaced, is what the commit replaces. Checked only at the start, a second run of the
        // same command (whose commit waited for the first's) found the first's report there and
        // failed, always (red team, session 20).
        if let Some(companion) = &mut self.companion {
            let guarded: Vec<&Path> = companion.guarded.iter().map(PathBuf::as_path).collect();
            companion.checked = check_companion_location(&companion.final_path, &guarded)?.1;
            let dir = parent_dir(&companion.final_path);
            companion
                .dir_identity
                .check(&dir, "report", &companion.final_path)?;
        }
        // OUTPUT in the folder resolved when staging started (errors still name the user's path,
        // see `create_scratch`).
        let target = self.parent.join(&self.name);
        let mut checked = None;
        if exists_no_follow(&target) {
            if !self.force {
                return Err(appeared(&self.output));
            }
            checked = Some(check_replaceable(&target)?);
            // A package of ours, but one that now holds what the run reads (the input moved
            // into its weights folder): removing it would delete that (red team, session 21).
            let ids: Vec<(u64, u64)> = self.read_files.iter().map(|(_, id)| *id).collect();
            match tree_holds_one_of(&target, &ids) {
                Ok(None) => {}
                Ok(Some(held)) => {
                    let file = self.read_files.iter().find(|(_, id)| *id == held).map(|(p, _)| p);
                    return Err(Error::Usage(format!(
                        "output {} holds {}, which the run reads; refusing to replace it",
                        self.output.display(),
                        file.map_or_else(String::new, |p| p.display().to_string())
                    )));
                }
                // Said as what it is: it was reported as holding the input (red team, L-1).
                Err(()) => {
                    return Err(Error::Usage(format!(
                        "output {} holds more than {MAX_TREE_ENTRIES} entries, too many to make sure \
                         it holds nothing the run reads; refusing to replace it",
                        self.output.display()
                    )))
                }
            }
        }
        // What this run wrote, known by the handle it holds on it (the staging folder or the
        // archive), not by its name: only that is published. Something swapped in at the
        // scratch name since (by anyone who may write in OUTPUT's folder) is somebody's, and is
        // neither published nor removed; the commit used to publish whatever the name held.
        let scratch = if self.zip_folder.is_some() {
            &mut self.temp_zip
        } else {
            &mut self.staging
        };
        // Looked at just before the rename, which goes by name: a swap in the few system calls
        // between is not seen (a loop swapping the staging folder got 1 in 15 runs through
        // there; red team, session 21). Checking what the rename put at OUTPUT and moving it
        // back cannot tell that swap from one at OUTPUT after the commit, and moved a user's
        // folder swapped in there to a scratch name that the next run swept.
        let ours = scratch.as_ref().and_then(ScratchPath::identity);
        if !still_ours(scratch) {
            return Err(self.replaced_while_writing());
        }
        let place = Placement {
            output: &target,
            parent: &self.parent,
            name: &self.name,
            force: self.force,
        };
        let aside = match place.move_into_place(&new_path, checked) {
            Ok(aside) => aside,
            Err(e) => {
                // Whatever `new_path` names now, if not what we wrote, is somebody's (swapped
                // there while we put it back): our cleanup must not remove it.
                if exists_no_follow(&new_path) && identity_no_follow(&new_path) != ours {
                    // Only the scratch path that `new_path` is: a zip OUTPUT's staging folder
                    // is still ours to remove (forgotten too, it was left behind; seen in a
                    // loaded test run, session 22).
                    if self.zip_folder.is_some() {
                        self.temp_zip.take();
                    } else {
                        self.staging.take();
                    }
                    return Err(keep_found(&new_path, &self.parent, &self.name, e));
                }
                return Err(e);
            }
        };
        if let Some(companion) = &self.companion {
            let ours = identity_no_follow(companion.scratch.path());
            if let Err(failure) = place_companion(companion) {
                // Take the new package back out (to where it was staged, still ours to remove)
                // and put the old OUTPUT back: the run fails as a whole.
                let _ = std::fs::rename(&target, &new_path);
                let mut kept = String::new();
                if let Some(aside) = &aside {
                    if std::fs::rename(&aside.path, &target).is_err() {
                        kept = format!(
                            "; the old {} is kept at {}",
                            self.output.display(),
                            aside.path.display()
                        );
                    }
                }
                let mut error = failure.into_error(&companion.final_path, &kept);
                let scratch = companion.scratch.path().to_path_buf();
                if exists_no_follow(&scratch) && identity_no_follow(&scratch) != ours {
                    // Swapped again while it was put back: what the scratch name holds now is
                    // somebody's, not ours to remove.
                    let name = companion.final_path.file_name().unwrap_or_default().to_owned();
                    let dir = parent_dir(&companion.final_path);
                    self.companion.take();
                    error = keep_found(&scratch, &dir, &name, error);
                }
                return Err(error);
            }
            sync_dir(&parent_dir(&companion.final_path));
        }
        cleanup::mark_committed();
        // Published: nothing of it is scratch any more. Its lock goes before the folder's: the
        // next run's commit into this folder finds OUTPUT still locked otherwise, and refused it
        // as "another run is replacing output" (seen in CI, two `--force` runs at once).
        if self.zip_folder.is_some() {
            self.temp_zip = None;
        } else {
            self.staging = None;
        }
        self.companion = None;
        drop(dir_lock);
        let mut notices = Vec::new();
        if let Some(aside) = aside {
            // The new OUTPUT and its report are in place: the run has succeeded, and an old
            // package that cannot be removed (a read-only folder in it) is only reported.
            if let Err(e) = remove_tree_one_fs(&aside.path).at(&aside.path) {
                notices.push(format!(
                    "replaced {}, but could not remove what is left of the old package: {e}",
                    self.output.display()
                ));
            }
        }
        sync_dir(&self.parent);
        Ok(notices)
    }

    fn weights_dir(&self) -> PathBuf {
        self.staging_dir()
            .join(DATA_DIR)
            .join(self.manifest.weights_relative())
    }

    /// The directories the caller writes into: the root model's and the weights directory. Only
    /// below the staging folder, never that folder itself: a signal may have just removed it.
    fn create_item_dirs(&self) -> Result<()> {
        let root = self.staging_dir();
        let model = Path::new(DATA_DIR).join(self.manifest.root_model_relative());
        let weights = Path::new(DATA_DIR).join(self.manifest.weights_relative());
        for below in [model.parent().unwrap_or(Path::new(DATA_DIR)), &weights] {
            create_dirs_below(root, below).at(root.join(below))?;
        }
        Ok(())
    }
}

impl Drop for OutputPackage {
    fn drop(&mut self) {
        // Best effort: a cleanup failure must not hide the error that got us here.
        for scratch in [self.temp_zip.take(), self.staging.take()].into_iter().flatten() {
            scratch.remove();
        }
        if let Some(companion) = self.companion.take() {
            companion.scratch.remove();
        }
    }
}

/// A folder next to OUTPUT for the scratch files of the tables a run builds before it stages the
/// package (the graph index, the plan, the shared-blob table, the blob records read): on
/// OUTPUT's file system, like the writer's tables, where they were in the system temporary
/// folder, which may be memory (a tmpfs /tmp held 170 MB of them at 320,000 tensors). Its files
/// are unlinked; it is named like the staging folder, so that the next run sweeps one a killed
/// run left, and removed when dropped or on a signal, like every scratch path.
#[derive(Debug)]
pub struct TableFolder {
    scratch: Option<ScratchPath>,
}

impl TableFolder {
    /// Creates the folder next to OUTPUT, in the folder `place` resolved.
    pub fn create(place: &OutputPlace) -> Result<TableFolder> {
        let scratch = create_scratch(
            &place.parent,
            place.parent_identity,
            &place.output,
            "output",
            true,
        )?;
        Ok(TableFolder {
            scratch: Some(scratch),
        })
    }

    pub fn path(&self) -> &Path {
        self.scratch.as_ref().map_or(Path::new(""), ScratchPath::path)
    }
}

impl Drop for TableFolder {
    fn drop(&mut self) {
        if let Some(scratch) = self.scratch.take() {
            scratch.remove();
        }
    }
}

/// Where a run puts OUTPUT: its folder resolved once (links followed) and checked once,
/// when the run starts, before anything is made next to it. The table folder and the staged
/// package both go where this says: each resolved and checked OUTPUT itself before, so a link
/// switched in between could put them in two folders, and an old OUTPUT was checked twice.
#[derive(Debug)]
pub struct OutputPlace {
    /// OUTPUT as the user gave it (errors name it).
    output: PathBuf,
    parent: PathBuf,
    parent_identity: DirIdentity,
    name: OsString,
    force: bool,
}

impl OutputPlace {
    /// Refuses an OUTPUT that is, contains or lies inside the input, and an existing OUTPUT
    /// unless `force` (and then only a package).
    pub fn check(input: &Package, output: &Path, force: bool) -> Result<OutputPlace> {
        let (parent, name) = resolve_output(output)?;
        let parent_identity = DirIdentity::of(&parent);
        check_output_location(input, output, &parent, &name, force)?;
        Ok(OutputPlace {
            output: output.to_path_buf(),
            parent,
            parent_identity,
            name,
            force,
        })
    }
}

/// OUTPUT must not be the input, inside it, or contain it (comparing canonical paths, so links
/// and `..` cannot hide it), and must not exist unless `force`. `parent`: OUTPUT's folder from
/// [`resolve_output`]; `output` names it in errors.
fn check_output_location(
    input: &Package,
    output: &Path,
    parent: &Path,
    name: &std::ffi::OsStr,
    force: bool,
) -> Result<()> {
    let target = parent.join(name);
    let exists = exists_no_follow(&target);
    // A dangling symlink cannot be resolved: compare the link's own location then.
    let output_canonical = exists
        .then(|| std::fs::canonicalize(&target).ok())
        .flatten()
        .unwrap_or_else(|| target.clone());
    let input_canonical = std::fs::canonicalize(input.origin()).at(input.origin())?;
    // Paths first, then identities (device and inode), which see a bind mount too.
    let same = output_canonical == input_canonical
        || (exists && file_identity(&output_canonical) == file_identity(&input_canonical))
        || (exists && same_through_overlay(&output_canonical, &input_canonical));
    let by_path = if same {
        Some("is the input")
    } else if output_canonical.starts_with(&input_canonical) {
        Some("is inside the input")
    } else if input_canonical.starts_with(&output_canonical) {
        Some("contains the input")
    } else {
        None
    };
    // Then by identity, which sees bind mounts; it lists the folders of an existing OUTPUT, so
    // only a package of ours gets that far.
    let clash = match by_path {
        Some(clash) => Some(clash),
        None => {
            check_existing_output(&target, force)?;
            if lies_within(&output_canonical, &input_canonical) {
                Some("is inside the input")
            } else if lies_within(&input_canonical, &output_canonical) {
                Some("contains the input")
            } else {
                None
            }
        }
    };
    if let Some(clash) = clash {
        return Err(Error::Usage(format!(
            "output {} {clash} {}",
            output.display(),
            input.origin().display()
        )));
    }
    Ok(())
}

/// Refuses an existing OUTPUT that `force` would replace and that is or holds one of `files` (the
/// config file): replacing it would delete a file the run reads.
pub fn check_output_spares(output: &Path, files: &[&Path], force: bool) -> Result<()> {
    if !force || !exists_no_follow(output) {
        return Ok(()); // nothing will be replaced (an existing OUTPUT is refused without force)
    }
    let Ok(output_canonical) = std::fs::canonicalize(output) else {
        return Ok(());
    };
    let files: Vec<(&Path, PathBuf)> = files
        .iter()
        .filter_map(|f| Some((*f, std::fs::canonicalize(f).ok()?)))
        .collect();
    // By path first; then, once OUTPUT is known to be a package of ours (only its folders are
    // listed), by identity, which sees bind mounts.
    let by_path = files.iter().any(|(_, c)| c.starts_with(&output_canonical));
    if !by_path && check_replaceable(output).is_err() {
        // Not a package of ours: its folders are not listed, and creating the output refuses it
        // (naming the input first where it holds that).
        return Ok(());
    }
    let held = files
        .iter()
        .find(|(_, c)| lies_within(c, &output_canonical))
        .map(|(f, _)| *f);
    match held {
        Some(file) => Err(Error::Usage(format!(
            "output {} holds {}, which the run reads; refusing to replace it",
            output.display(),
            file.display()
        ))),
        None => Ok(()),
    }
}

/// An existing OUTPUT needs `force`, and even then only a package may be replaced.
fn check_existing_output(output: &Path, force: bool) -> Result<()> {
    if !exists_no_follow(output) {
        return Ok(());
    }
    if !force {
        return Err(Error::Usage(format!(
            "output {} already exists; pass --force to replace it",
            output.display()
        )));
    }
    check_replaceable(output).map(drop)
}

/// `--force` replaces only what mlprune could have written: an `.mlpackage` folder (with
/// `Manifest.json` and `Data/`) or a zip holding one. Another folder, a plain file, a link, a
/// FIFO or a device is somebody else's, and is refused. Returns the identity (device, inode) of
/// what was checked, for the commit to make sure it sets aside that and nothing else. The checks
/// look through a handle on it ([`Pinned`]), so what they see is what the identity names.
fn check_replaceable(output: &Path) -> Result<Option<(u64, u64)>> {
    let refuse = |what: &dyn std::fmt::Display| {
        Err(Error::Usage(format!(
            "output {} exists and is {what}; --force only replaces an .mlpackage folder or a zip \
             holding one",
            output.display()
        )))
    };
    let meta = std::fs::symlink_metadata(output).at(output)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return refuse(&"a symbolic link");
    } else if is_mount_point(output) {
        // Found before the work, not by the commit's rename failing with EBUSY after it.
        return refuse(&"a mount point (a filesystem or a bind mount is mounted there)");
    }
    let pinned = Pinned::new(output, kind.is_dir()).at(output)?;
    if pinned.identity() != identity_no_follow(output) {
        return Err(changed_while_writing(output));
    }
    let examined = pinned.examined();
    if kind.is_dir() {
        if !is_package_dir(examined) {
            refuse(&"a folder that is not only an .mlpackage (it may hold nothing but a valid Manifest.json and a Data folder holding only the items it declares, the root model among them)")
        } else if let Some((path, what)) = foreign_entry(examined) {
            // A mount point in it (the input, bind-mounted there) would be emptied with it.
            let shown = output.join(path.strip_prefix(examined).unwrap_or(&path));
            refuse(&format_args!("a folder holding {what} ({})", shown.display()))
        } else {
            Ok(pinned.identity())
        }
    } else if kind.is_file() {
        if zip_holds_package(examined) {
            Ok(pinned.identity())
        } else {
            refuse(&"a file that is not a zip holding only an .mlpackage (only the items its manifest declares, the root model among them)")
        }
    } else {
        refuse(&"not a regular file or folder")
    }
}

/// Largest `Manifest.json` read to decide whether `--force` may replace what holds it: the largest
/// a package may have.
const MANIFEST_READ_LIMIT: u64 = super::folder::MAX_MANIFEST_BYTES;

/// What a package folder holds at its top: a valid `Manifest.json` file, a `Data` folder (neither
/// a link), and nothing else but the `.DS_Store` Finder leaves. A folder holding anything more is
/// not only a package, and `--force` would delete the rest with it.
fn is_package_dir(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let (mut manifest, mut data) = (false, false);
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Ok(kind) = entry.file_type() else { return false };
        match entry.file_name().to_str() {
            Some(MANIFEST_FILE) if kind.is_file() => manifest = true,
            Some(DATA_DIR) if kind.is_dir() => data = true,
            Some(".DS_Store") if kind.is_file() => {}
            _ => return false,
        }
    }
    let path = dir.join(MANIFEST_FILE);
    if !(manifest && data) {
        return false;
    }
    // Without blocking, and only a regular file: a FIFO swapped in at `Manifest.json` since the
    // listing would hang the check (it runs in the commit, with signals held off).
    let Some(manifest) = open_regular(&path, Links::NoFollow)
        .ok()
        .and_then(Result::ok)
        .and_then(|f| valid_manifest(io::Read::take(f, MANIFEST_READ_LIMIT), &path))
    else {
        return false;
    };
    // A manifest copied into a folder of other things does not make it a package: the root model
    // it names must be there too, and `Data` may hold nothing but the items it declares.
    let root_model = dir.join(DATA_DIR).join(manifest.root_model_relative());
    std::fs::symlink_metadata(root_model).is_ok_and(|m| m.is_file())
        && data_holds_only_items(&dir.join(DATA_DIR), &manifest)
}

/// Files past this many in a `Data` folder are not looked at: `--force` refuses such an OUTPUT.
const MAX_DATA_ENTRIES: usize = 100_000;

/// Whether every file in the `Data` folder `data` lies in an item `manifest` declares (Finder's
/// `.DS_Store` files aside): mlprune writes nothing else there, so anything else is a user's.
fn data_holds_only_items(data: &Path, manifest: &Manifest) -> bool {
    let items: Vec<PathBuf> = manifest.item_paths().into_iter().map(|(_, p)| p).collect();
    let mut pending = vec![PathBuf::new()];
    let mut seen = 0;
    while let Some(relative) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(data.join(&relative)) else {
            return false;
        };
        for entry in entries {
            seen += 1;
            let (Ok(entry), true) = (entry, seen <= MAX_DATA_ENTRIES) else {
                return false;
            };
            let path = relative.join(entry.file_name());
            let Ok(kind) = entry.file_type() else { return false };
            match declared_place(&path, kind.is_dir(), kind.is_file(), &items) {
                None => return false,
                Some(Place::OnTheWay) => pending.push(path),
                // What is inside an item, `foreign_entry` checks.
                Some(Place::InItem | Place::FinderFile) => {}
            }
        }
    }
    true
}

/// Where a path of a package's `Data` folder lies, for the check that it holds nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In an item the manifest declares, or that item itself.
    InItem,
    /// A folder on the way to an item.
    OnTheWay,
    /// A `.DS_Store` file Finder left.
    FinderFile,
}

/// Where `path` (relative to `Data`, a folder or a file as the flags say) lies among `items`, the
/// item paths a manifest declares; `None` where mlprune would never write it.
fn declared_place(path: &Path, is_dir: bool, is_file: bool, items: &[PathBuf]) -> Option<Place> {
    if items.iter().any(|item| path.starts_with(item)) {
        Some(Place::InItem)
    } else if is_dir && items.iter().any(|item| item.starts_with(path)) {
        Some(Place::OnTheWay)
    } else if is_file && path.file_name().is_some_and(|n| n == ".DS_Store") {
        Some(Place::FinderFile)
    } else {
        None
    }
}

/// The manifest `reader` holds, when it is a valid one.
fn valid_manifest(mut reader: impl io::Read, path: &Path) -> Option<Manifest> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).ok()?;
    Manifest::parse(&bytes, path).ok()
}

/// A zip archive holding one package and nothing else: every entry is the package's
/// `Manifest.json` (valid), or lies in its `Data/`, with the package at the root or in one
/// `*.mlpackage/` folder. What mlprune writes for a `.zip` OUTPUT, and reads as a zipped package.
fn zip_holds_package(path: &Path) -> bool {
    // Following the link `path` may be (`/proc/self/fd/<n>`, see `Pinned`), but never blocking on a
    // FIFO it now names.
    let Ok(Ok(mut file)) = open_regular(path, Links::Follow) else {
        return false;
    };
    if !zip_is_bare(&mut file) {
        return false;
    }
    let Ok(mut archive) = zip::ZipArchive::new(io::BufReader::new(file)) else {
        return false;
    };
    if archive.offset() != 0 {
        return false;
    }
    let Ok(originals) = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<Vec<String>, _>>()
    else {
        return false;
    };
    let names: Vec<&str> = originals.iter().map(|n| n.trim_start_matches("./")).collect();
    let Some(position) = names.iter().position(|entry| {
        *entry == MANIFEST_FILE
            || entry.strip_suffix(MANIFEST_FILE).is_some_and(|folder| {
                folder.strip_suffix('/').is_some_and(|folder| {
                    !folder.contains('/')
                        && strip_suffix_ignore_case(folder, ".mlpackage").len() < folder.len()
                })
            })
    }) else {
        return false;
    };
    let manifest = names[position];
    let root = &manifest[..manifest.len() - MANIFEST_FILE.len()];
    let in_package = |entry: &str| {
        let Some(inside) = entry.strip_prefix(root) else {
            return entry == root.trim_end_matches('/') || entry.is_empty();
        };
        inside.is_empty() || inside == MANIFEST_FILE || inside.starts_with("Data/") || inside == DATA_DIR
    };
    // mlprune names entries by plain components: a `.` or `..` component or an empty one (`//`)
    // is another writer's, and could name a place outside the items it seems to lie in.
    let plain = |name: &str| {
        let name = name.strip_suffix('/').unwrap_or(name);
        name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
    };
    if !names.iter().all(|n| in_package(n) && (n.is_empty() || plain(n))) {
        return false;
    }
    // Where an entry lies in the package's `Data` (and whether it is a folder), for the check that
    // it holds only declared items (see `data_holds_only_items`).
    let in_data = |name: &str| -> Option<(PathBuf, bool)> {
        let inside = name.strip_prefix(root)?.strip_prefix("Data/")?;
        let folder = inside.strip_suffix('/');
        Some((
            PathBuf::from(folder.unwrap_or(inside)),
            folder.is_some() || inside.is_empty(),
        ))
    };
    let Some(index) = archive.index_for_name(&originals[position]) else {
        return false;
    };
    let Some(manifest) = archive
        .by_index(index)
        .ok()
        .and_then(|entry| valid_manifest(io::Read::take(entry, MANIFEST_READ_LIMIT), path))
    else {
        return false;
    };
    // The root model the manifest names must be in the archive too (see `is_package_dir`).
    let root_model = Path::new(root)
        .join(DATA_DIR)
        .join(manifest.root_model_relative());
    let items: Vec<PathBuf> = manifest.item_paths().into_iter().map(|(_, p)| p).collect();
    names.iter().any(|n| Path::new(n) == root_model)
        && names
            .iter()
            .filter_map(|n| in_data(n))
            .all(|(path, is_dir)| declared_place(&path, is_dir, !is_dir, &items).is_some())
}

/// Whether the file is a zip archive and nothing else, as mlprune writes one: a local file header
/// at offset 0 (no data before the archive: a self-extractor, a file with a zip appended) and the
/// end-of-central-directory record, with its comment, ending the file (no data after it).
fn zip_is_bare(file: &mut File) -> bool {
    use io::{Read, SeekFrom};
    const EOCD_LEN: u64 = 22;
    let Ok(len) = file.seek(SeekFrom::End(0)) else {
        return false;
    };
    let mut head = [0u8; 4];
    if len < EOCD_LEN
        || file.seek(SeekFrom::Start(0)).is_err()
        || file.read_exact(&mut head).is_err()
        || head != *b"PK\x03\x04"
    {
        return false;
    }
    let tail_len = len.min(EOCD_LEN + u64::from(u16::MAX));
    let mut tail = vec![0u8; tail_len as usize];
    if file.seek(SeekFrom::Start(len - tail_len)).is_err() || file.read_exact(&mut tail).is_err() {
        return false;
    }
    let _ = file.seek(SeekFrom::Start(0));
    // The last record whose comment runs exactly to the end of the file.
    (0..=tail.len() - EOCD_LEN as usize).rev().any(|at| {
        tail[at..at + 4] == *b"PK\x05\x06"
            && at + EOCD_LEN as usize + usize::from(u16::from_le_bytes([tail[at + 20], tail[at + 21]]))
                == tail.len()
    })
}

/// A file written next to OUTPUT (the report) must not land on or inside OUTPUT or any of
/// `protected` (by path or by identity), nor be another hard link of a file in them; where
/// something exists at `path` it must be a regular file, not a link, that a rename may replace.
/// Returns `path`'s folder resolved (once: everything checked starts from it, and so does the
/// report's scratch file) and the identity (device, inode) of the file there, for the commit to
/// replace only it; `None` where nothing is at `path`.
fn check_companion_location(path: &Path, protected: &[&Path]) -> Result<(PathBuf, Option<(u64, u64)>)> {
    let raw = path.as_os_str().as_encoded_bytes();
    if raw.ends_with(b"/") || raw.ends_with(b"/.") {
        return Err(Error::Usage(format!(
            "report {} ends in '/' or '/.'; name the file without it",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("report {} does not name a file", path.display())))?;
    check_name_length("report", path, name)?;
    // Resolved once; what is checked below and where the report goes start from it.
    let dir_canonical = resolve_dir("report", &parent_dir(path))?;
    let location = dir_canonical.join(name);
    let mut existing = None;
    if exists_no_follow(&location) {
        // Only a regular file is replaced: renaming over a link would put the report where the
        // link was (as root, `--report /dev/stdout` replaced the system's link).
        let own = std::fs::symlink_metadata(&location).at(path)?;
        // A file bind-mounted there cannot be renamed over (EBUSY): refused before the work.
        if !own.file_type().is_file() || is_mount_point(&location) {
            let what = if own.file_type().is_symlink() {
                "is a symbolic link"
            } else if own.file_type().is_file() {
                "is a mount point (a file is bind-mounted there)"
            } else {
                "exists and is not a regular file"
            };
            return Err(Error::Usage(format!(
                "report {} {what}; refusing to replace it",
                path.display()
            )));
        }
        // From the very look that found a regular file: a link swapped in since is not it.
        existing = identity_of(&own);
    }
    for guarded in protected {
        let guarded_canonical = match std::fs::canonicalize(guarded) {
            Ok(p) => p,
            // Not there (yet): where it would be.
            Err(_) => match (guarded.file_name(), std::fs::canonicalize(parent_dir(guarded))) {
                (Some(n), Ok(d)) => d.join(n),
                _ => continue,
            },
        };
        // Neither there yet: the same name in the same folder, whatever path leads to it (a
        // bind mount shows one folder under two paths).
        let same_slot = guarded.file_name() == Some(name)
            && file_identity(&dir_canonical).is_some()
            && file_identity(&dir_canonical) == file_identity(&parent_dir(guarded));
        if same_slot
            || lies_within(&location, &guarded_canonical)
            || existing.is_some_and(|id| tree_holds(&guarded_canonical, id))
        {
            return Err(Error::Usage(format!(
                "report {} would overwrite {}: it is, or lies inside, it",
                path.display(),
                guarded.display()
            )));
        }
    }
    Ok((dir_canonical, existing))
}

/// The input's files read or copied so far, by identity, with the name each was first met under.
#[derive(Default)]
struct FirstNames(HashMap<(u64, u64), PathBuf>);

impl FirstNames {
    /// Notes the file of `identity` under the name `shown`, refusing a second name for one file:
    /// each would be written out in full, so that 40 links to one weight file took 40 times its
    /// disk, and a few thousand would ask for terabytes (red team, session 22).
    fn note(&mut self, identity: Option<(u64, u64)>, shown: &Path) -> Result<()> {
        let Some(identity) = identity else {
            return Ok(());
        };
        match self.0.entry(identity) {
            Entry::Occupied(first) => Err(Error::Package {
                path: shown.to_owned(),
                reason: format!(
                    "is another name (a link) for {}; each file of a package is written out in \
                     full, so two names for one file are refused",
                    first.get().display()
                ),
            }),
            Entry::Vacant(slot) => {
                slot.insert(shown.to_owned());
                Ok(())
            }
        }
    }
}

/// Copies the input package tree `src_dir` (at `relative` inside it) into `dst_root`: the `used`
/// paths with everything under them, except the `skip` paths. Files outside every used path are
/// left out, as extraction leaves them out of a zipped input (see [`used_paths`]). A symlink is
/// copied as the file it points to, and only if that file is inside the package; the copy never
/// follows a link out of it. A file met under a second name is refused ([`FirstNames`]).
fn copy_tree(
    input: &Package,
    src_dir: &Path,
    dst_root: &Path,
    relative: &Path,
    (used, skip): (&UsedPaths, &[PathBuf]),
    names: &mut FirstNames,
) -> Result<()> {
    let shown = |p: &Path| input.display_path(p);
    let mut children: Vec<PathBuf> = std::fs::read_dir(src_dir)
        .at(shown(src_dir))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .at(shown(src_dir))?;
    children.sort();
    for src in children {
        let Some(file_name) = src.file_name() else {
            continue;
        };
        let child_relative = relative.join(file_name);
        if skip.contains(&child_relative) || used.use_of(&child_relative) == Use::Unused {
            continue;
        }
        let dst = dst_root.join(&child_relative);
        let meta = std::fs::symlink_metadata(&src).at(shown(&src))?;
        if meta.is_dir() {
            std::fs::create_dir(&dst).at(&dst)?;
            copy_tree(input, &src, dst_root, &child_relative, (used, skip), names)?;
        } else if meta.is_file() {
            names.note(identity_of(&meta), &shown(&src))?;
            copy_file(&src, &dst, &shown(&src))?;
        } else if meta.file_type().is_symlink() {
            let target = confined(&src, input.root(), &shown(&src))?;
            let target_meta = std::fs::metadata(&target).at(shown(&src))?;
            if !target_meta.is_file() {
                return Err(Error::Package {
                    path: shown(&src),
                    reason: format!("a symbolic link to {} is not supported", kind_of(&target_meta)),
                });
            }
            names.note(identity_of(&target_meta), &shown(&src))?;
            copy_file(&target, &dst, &shown(&src))?;
        } else {
            return Err(Error::Package {
                path: shown(&src),
                reason: "not a regular file, directory or symbolic link".into(),
            });
        }
    }
    Ok(())
}

/// Copies file contents into a new file, holes kept ([`super::holes`]; std uses
/// copy_file_range/sendfile for the data where it can).
fn copy_file(src: &Path, dst: &Path, src_shown: &Path) -> Result<()> {
    let mut from = open_regular_or_err(src, Links::NoFollow).at(src_shown)?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .at(dst)?;
    match super::holes::copy_keeping_holes(&mut from, &mut to).at(dst)? {
        Copied::Whole => Ok(()),
        Copied::SourceChanged => Err(Error::Package {
            path: src_shown.to_owned(),
            reason: "changed while mlprune was copying it".into(),
        }),
    }
}

/// The refusal when what is at OUTPUT is no longer what was checked (another file or folder was
/// put there): nothing of it is replaced.
fn changed_while_writing(output: &Path) -> Error {
    Error::Usage(format!(
        "output {} changed while mlprune was writing (it is no longer what was checked); not \
         replacing it",
        output.display()
    ))
}

/// Moves `found`, a scratch name that now holds somebody's file or folder (swapped in at OUTPUT or
/// the report, then swapped again while the commit put it back), to `.<name>.mlprune-kept-<16
/// hex>` in `dir`, a name no sweep of leftovers takes, and adds where it is to `error`.
fn keep_found(found: &Path, dir: &Path, name: &OsStr, error: Error) -> Error {
    let mut kept_name = sibling_prefix(name, ".mlprune-kept-");
    kept_name.push(temp_suffix());
    let kept = dir.join(kept_name);
    let at = if rename_noreplace(found, &kept).is_ok() {
        kept
    } else {
        found.to_path_buf()
    };
    Error::Usage(format!(
        "{error}; what was found there (changed again meanwhile) is kept at {}",
        at.display()
    ))
}

/// Why the report could not be put in place.
enum CompanionFailure {
    /// Nothing was at its path when it was reserved, and something is now.
    Appeared,
    /// What is at its path is no longer the regular file that was checked (a link, a FIFO).
    Changed,
    Io(io::Error),
}

impl CompanionFailure {
    /// The run's error; `kept` says where the old OUTPUT is, if it could not be put back.
    fn into_error(self, final_path: &Path, kept: &str) -> Error {
        let shown = final_path.display();
        match self {
            CompanionFailure::Appeared => Error::Usage(format!(
                "report {shown} appeared while writing (is it another name of the output?); not \
                 replacing it{kept}"
            )),
            CompanionFailure::Changed => Error::Usage(format!(
                "report {shown} changed while mlprune was writing (it is no longer the regular \
                 file that was checked); not replacing it{kept}"
            )),
            CompanionFailure::Io(e) if kept.is_empty() => Error::io(final_path, e),
            CompanionFailure::Io(e) => Error::Usage(format!("report {shown}: {e}{kept}")),
        }
    }
}

/// Renames the report's scratch file to its final path, replacing only the regular file that
/// was checked there (or, where nothing was, nothing at all). The two names are exchanged in one
/// step and what came back is looked at: the checked file is removed, anything else (a link or
/// FIFO swapped in meanwhile) is exchanged back, kept. Where the system cannot exchange names,
/// the file at the final path is checked just before a plain rename: something swapped in
/// between the two (a couple of system calls) would still be replaced.
fn place_companion(companion: &Companion) -> std::result::Result<(), CompanionFailure> {
    let (scratch, final_path) = (companion.scratch.path(), companion.final_path.as_path());
    let place_new = || {
        rename_noreplace(scratch, final_path).map_err(|e| {
            if is_taken(&e) {
                CompanionFailure::Appeared
            } else {
                CompanionFailure::Io(e)
            }
        })
    };
    let Some(checked) = companion.checked else {
        return place_new();
    };
    let is_checked_file = |path: &Path| {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
            && identity_no_follow(path) == Some(checked)
    };
    match rename_exchange(scratch, final_path) {
        Ok(()) if is_checked_file(scratch) => {
            // The scratch name holds the old report now: a failure to remove it leaves a
            // leftover the next run sweeps, not an error once the report is in place.
            let _ = std::fs::remove_file(scratch);
            Ok(())
        }
        Ok(()) => {
            let _ = rename_exchange(scratch, final_path);
            Err(CompanionFailure::Changed)
        }
        // Removed since: nothing to replace.
        Err(e) if e.kind() == io::ErrorKind::NotFound => place_new(),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            if !is_checked_file(final_path) {
                return Err(CompanionFailure::Changed);
            }
            std::fs::rename(scratch, final_path).map_err(CompanionFailure::Io)
        }
        Err(e) => Err(CompanionFailure::Io(e)),
    }
}

/// The refusal when OUTPUT turns up during a run without `--force`.
fn appeared(output: &Path) -> Error {
    Error::Usage(format!(
        "output {} appeared while writing; not replacing it without --force",
        output.display()
    ))
}

/// An old OUTPUT set aside until the new one is in place, locked (the lock is on the file or
/// folder itself, so it moves with it) so that another run's sweep leaves it to this run.
#[derive(Debug)]
struct Aside {
    path: PathBuf,
    _lock: Option<File>,
}

/// How long a commit waits for another run's commit into the same folder.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes the advisory lock on `dir` that every commit into it takes (waiting for another run's
/// commit, at most [`COMMIT_WAIT`], and only while `cancel` is not set: a try-lock in a loop, not
/// a blocking lock, so the wait can be given up). A folder that cannot be opened is not locked.
/// Also says whether it had to wait.
fn lock_dir(dir: &Path, cancel: &CancelFlag) -> Result<(Option<File>, bool)> {
    let Ok(handle) = open_dir(dir) else {
        return Ok((None, false));
    };
    let deadline = std::time::Instant::now() + COMMIT_WAIT;
    let mut waited = false;
    loop {
        cancel.check()?;
        match handle.try_lock() {
            Ok(()) => return Ok((Some(handle), waited)),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                waited = true;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Usage(format!(
                    "another process holds {} locked; not committing the output there",
                    dir.display()
                )))
            }
            // No locks on this filesystem: go on without.
            Err(std::fs::TryLockError::Error(_)) => return Ok((None, waited)),
        }
    }
}

/// Where a commit puts the new package: OUTPUT, its folder and name, and whether `--force` may
/// replace what is there.
struct Placement<'a> {
    output: &'a Path,
    parent: &'a Path,
    name: &'a OsStr,
    force: bool,
}

impl Placement<'_> {
    /// Puts `new` at OUTPUT: where nothing is there, a rename that never replaces (a path that
    /// appeared meanwhile is refused unless `force`). Otherwise the old OUTPUT, which must be
    /// what `checked` names (the identity `check_replaceable` returned; `None`: nothing was there
    /// then), is exchanged with `new` in one step and set aside, and returned for the caller to
    /// put back if the rest of the commit fails, or to remove once it is complete. A file or
    /// folder swapped in at OUTPUT after the check is put back, and the commit fails.
    fn move_into_place(&self, new: &Path, checked: Option<Option<(u64, u64)>>) -> Result<Option<Aside>> {
        let output = self.output;
        match std::fs::symlink_metadata(output) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.place_new(new),
            Err(e) => return Err(Error::io(output, e)),
        }
        let Some(checked) = checked else {
            // Nothing was there when the commit looked: it appeared since, unchecked.
            return Err(if self.force {
                changed_while_writing(output)
            } else {
                appeared(output)
            });
        };
        // Opened without blocking, and refused unless it is what was checked: a FIFO swapped in
        // at OUTPUT since the check hung the commit here, signals held off (red-team, round 19).
        // A path that cannot be opened (a link) is left to the identity check after the exchange.
        let lock = open_nonblocking(output, Links::NoFollow).ok();
        if let Some(handle) = &lock {
            if handle_identity(handle) != checked {
                return Err(changed_while_writing(output));
            }
            if let Err(std::fs::TryLockError::WouldBlock) = handle.try_lock() {
                return Err(Error::Usage(format!(
                    "another run is replacing output {}; not replacing it too",
                    output.display()
                )));
            }
        }
        let mut aside_name = aside_prefix(self.name);
        aside_name.push(temp_suffix());
        let aside = Aside {
            path: self.parent.join(aside_name),
            _lock: lock,
        };
        match rename_exchange(new, output) {
            Ok(()) => {}
            // Gone since: put the new package there as where nothing was.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.place_new(new),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                return self.move_aside_then_place(new, checked, aside)
            }
            Err(e) => return Err(Error::io(output, e)),
        }
        // `new` now names what was at OUTPUT: exactly what was checked, or it goes back.
        if identity_no_follow(new) != checked {
            let _ = rename_exchange(new, output);
            return Err(changed_while_writing(output));
        }
        if let Err(e) = std::fs::rename(new, &aside.path) {
            let _ = rename_exchange(new, output);
            return Err(Error::io(output, e));
        }
        Ok(Some(aside))
    }

    /// Renames `new` to OUTPUT, where nothing was.
    fn place_new(&self, new: &Path) -> Result<Option<Aside>> {
        let output = self.output;
        match rename_noreplace(new, output) {
            Ok(()) => Ok(None),
            Err(e) if is_taken(&e) && !self.force => Err(appeared(output)),
            Err(e) if is_taken(&e) => Err(Error::Usage(format!(
                "output {} appeared while writing (another run?); not replacing it",
                output.display()
            ))),
            Err(e) => Err(Error::io(output, e)),
        }
    }

    /// Where the system cannot exchange two names: the old OUTPUT is set aside (a file by a second
    /// hard link, so OUTPUT never goes missing; a folder by a rename), checked to be what
    /// `checked` names (else put back: a hard link removed, a folder renamed back), then `new`
    /// renamed in (the old one put back if that fails). A file swapped in at OUTPUT between the
    /// identity check and the rename of `new` (a few system calls) would still be replaced: the
    /// exchange above closes that window where it is available.
    fn move_aside_then_place(
        &self,
        new: &Path,
        checked: Option<(u64, u64)>,
        aside: Aside,
    ) -> Result<Option<Aside>> {
        let output = self.output;
        let existing = std::fs::symlink_metadata(output).at(output)?;
        let new_is_file = std::fs::symlink_metadata(new).at(new)?.is_file();
        if new_is_file && !existing.is_dir() && std::fs::hard_link(output, &aside.path).is_ok() {
            if identity_no_follow(&aside.path) != checked {
                let _ = std::fs::remove_file(&aside.path); // only our second link
                return Err(changed_while_writing(output));
            }
            if let Err(e) = std::fs::rename(new, output) {
                let _ = std::fs::remove_file(&aside.path);
                return Err(Error::io(output, e));
            }
            return Ok(Some(aside));
        }
        std::fs::rename(output, &aside.path).at(output)?;
        if identity_no_follow(&aside.path) != checked {
            return Err(self.put_back(&aside, changed_while_writing(output)));
        }
        if let Err(e) = rename_noreplace(new, output) {
            return Err(self.put_back(&aside, Error::io(output, e)));
        }
        Ok(Some(aside))
    }

    /// Renames the set-aside `aside` back to OUTPUT (never over something that appeared there)
    /// and returns `error`, saying where the old OUTPUT is kept if it could not go back.
    fn put_back(&self, aside: &Aside, error: Error) -> Error {
        if rename_noreplace(&aside.path, self.output).is_ok() {
            return error;
        }
        Error::Usage(format!(
            "{error}; the old {} is kept at {}",
            self.output.display(),
            aside.path.display()
        ))
    }
}

/// Whether a no-replace rename failed because something is at the target.
fn is_taken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
    )
}

/// Flushes every file of the staged tree to disk, so the rename publishes complete data.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        if meta.is_dir() {
            sync_tree(&path)?;
        } else if meta.is_file() {
            open_regular_or_err(&path, Links::NoFollow)
                .and_then(|f| f.sync_all())
                .at(&path)?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Best-effort directory sync so renames and new entries survive a crash. Some platforms and
/// filesystems refuse to sync a directory; that is not an error for us.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = open_dir(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::testutil::*;
    use std::io::Write;

    /// Opens the fixture package in `dir` and stages it to `dir/<out_name>` with a new model,
    /// weight file and manifest, as the pipeline does.
    fn stage(dir: &Path, out_name: &str, force: bool) -> Result<(Package, OutputPackage)> {
        let input = Package::open(&dir.join("in.mlpackage"))?;
        let mut staged = OutputPackage::create(&input, &dir.join(out_name), force, &[])?;
        std::fs::write(staged.model_path(), b"new model").unwrap();
        std::fs::write(staged.weight_path(), b"new weights").unwrap();
        let mut manifest = input.manifest().clone();
        manifest.ensure_weights_item();
        staged.set_manifest(&manifest)?;
        Ok((input, staged))
    }

    /// What the committed fixture package must hold: the input, less the file no manifest item
    /// covers and its folder, with the new model and weights.
    fn expected_tree(input: &Package) -> std::collections::BTreeMap<PathBuf, Option<Vec<u8>>> {
        let mut tree = read_tree(input.root());
        tree.remove(Path::new(EXTRA_FILE));
        tree.remove(Path::new("Data/com.apple.CoreML/extra"));
        tree.insert(
            "Data/com.apple.CoreML/model.mlmodel".into(),
            Some(b"new model".to_vec()),
        );
        tree.insert(
            "Data/com.apple.CoreML/weights/weight.bin".into(),
            Some(b"new weights".to_vec()),
        );
        tree
    }

    /// The fixture package zipped to `dir/in.zip`, opened; and the zip's path.
    fn zipped_fixture(dir: &Path) -> (Package, PathBuf) {
        let root = make_package(dir, "src.mlpackage");
        let zip_path = dir.join("in.zip");
        zip_tree(&root, &zip_path, "src.mlpackage/");
        (Package::open(&zip_path).unwrap(), zip_path)
    }

    fn usage(result: Result<(Package, OutputPackage)>) -> String {
        match result {
            Err(Error::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn staging_holds_a_copy_without_model_and_weights() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let input = Package::open(&dir.path().join("in.mlpackage")).unwrap();
        let staged = OutputPackage::create(&input, &dir.path().join("out.mlpackage"), false, &[]).unwrap();
        let staging = staged.staging_dir().to_path_buf();
        assert!(staging
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".out.mlpackage.mlprune-tmp-"));
        assert_eq!(staging.parent().unwrap(), dir.path());
        let tree = read_tree(&staging);
        assert_eq!(
            tree[Path::new("Manifest.json")].as_deref(),
            Some(COREMLTOOLS_MANIFEST.as_bytes())
        );
        assert!(
            !tree.contains_key(Path::new(EXTRA_FILE)),
            "not in any manifest item"
        );
        assert!(!tree.contains_key(Path::new("Data/com.apple.CoreML/model.mlmodel")));
        assert!(!tree.contains_key(Path::new("Data/com.apple.CoreML/weights/weight.bin")));
        assert!(staged.weight_path().parent().unwrap().is_dir());
        assert_eq!(
            staged.model_path(),
            staging.join("Data/com.apple.CoreML/model.mlmodel")
        );
        // Dropping without commit removes everything it made.
        drop(staged);
        assert_eq!(list_dir(dir.path()), ["in.mlpackage"]);
    }

    #[test]
    fn commit_folder_output() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let before = read_tree(&dir.path().join("in.mlpackage"));
        let (input, staged) = stage(dir.path(), "out.mlpackage", false).unwrap();
        staged.commit().unwrap();
        assert_eq!(list_dir(dir.path()), ["in.mlpackage", "out.mlpackage"]);
        assert_eq!(
            read_tree(&dir.path().join("out.mlpackage")),
            expected_tree(&input)
        );
        assert_eq!(read_tree(input.root()), before, "the input is untouched");
        let output = Package::open(&dir.path().join("out.mlpackage")).unwrap();
        assert_eq!(
            std::fs::read(output.weight_file().unwrap()).unwrap(),
            b"new weights"
        );
    }

    #[test]
    fn set_manifest_rewrites_the_staged_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "in.mlpackage");
        let without_weights = COREMLTOOLS_MANIFEST.replace("\"name\": \"weights\"", "\"name\": \"w\"");
        std::fs::write(root.join("Manifest.json"), &without_weights).unwrap();
        let (_input, staged) = stage(dir.path(), "out.mlpackage", false).unwrap();
        staged.commit().unwrap();
        let output = Package::open(&dir.path().join("out.mlpackage")).unwrap();
        assert_eq!(
            output.manifest().weights_dir_path(),
            Some("com.apple.CoreML/weights")
        );
        assert_ne!(
            std::fs::read_to_string(dir.path().join("out.mlpackage/Manifest.json")).unwrap(),
            without_weights
        );
    }

    /// The commit publishes what the run wrote, known by its handle: a folder swapped in at the
    /// staging folder's name (by anyone who may write next to OUTPUT) is neither published nor
    /// removed, and OUTPUT does not appear.
    #[test]
    fn a_folder_swapped_in_at_the_staging_name_is_not_published() {
        // A zip OUTPUT too: its archive was written from the staging folder by name, and a
        // folder swapped in there was archived and published (red team, session 21).
        for output in ["out.mlpackage", "out.zip"] {
            let dir = tempfile::tempdir().unwrap();
            make_package(dir.path(), "in.mlpackage");
            let (_input, staged) = stage(dir.path(), output, false).unwrap();
            let staging = staged.staging_dir().to_path_buf();
            std::fs::rename(&staging, dir.path().join("moved")).unwrap();
            std::fs::create_dir(&staging).unwrap();
            std::fs::write(staging.join("theirs.txt"), b"theirs").unwrap();
            let err = staged.commit().unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{output}: {err:?}");
            assert!(
                err.to_string().contains("was replaced while mlprune was writing"),
                "{output}: {err}"
            );
            assert!(!dir.path().join(output).exists(), "{output}");
            assert_eq!(std::fs::read(staging.join("theirs.txt")).unwrap(), b"theirs");
        }
    }

    /// OUTPUT's folder replaced by a link into the input after the run checked it: the staged
    /// package went through the link into the input, and the run succeeded (red team, session
    /// 21). Staging there, or committing there, is refused now; the input is left as it was.
    #[cfg(unix)]
    #[test]
    fn an_output_folder_replaced_by_a_link_into_the_input_is_refused() {
        for at_commit in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = make_package(dir.path(), "in.mlpackage");
            let input = Package::open(&root).unwrap();
            let before = read_tree(&root);
            let out_dir = dir.path().join("out");
            std::fs::create_dir(&out_dir).unwrap();
            let output = out_dir.join("out.mlpackage");
            let place = OutputPlace::check(&input, &output, false).unwrap();
            let replace = || {
                std::fs::rename(&out_dir, dir.path().join("out.real")).unwrap();
                std::os::unix::fs::symlink(root.join("Data"), &out_dir).unwrap();
            };
            let err = if at_commit {
                let staged = OutputPackage::create_at(&input, &place, &[]).unwrap();
                std::fs::write(staged.model_path(), b"new model").unwrap();
                replace();
                staged.commit().unwrap_err()
            } else {
                replace();
                OutputPackage::create_at(&input, &place, &[]).unwrap_err()
            };
            assert!(matches!(err, Error::Usage(_)), "{err:?}");
            assert!(err.to_string().contains("changed during the run"), "{err}");
            assert_eq!(
                read_tree(&root),
                before,
                "the input as it was (at commit: {at_commit})"
            );
        }
    }

    /// A zip input's second name inside the old package is no reason to refuse: removing the old
    /// package leaves the zip. Its only name there (moved in mid-run) is.
    #[cfg(unix)]
    #[test]
    fn force_refuses_an_old_output_holding_a_zip_input_only_where_it_is_its_only_name() {
        let dir = tempfile::tempdir().unwrap();
        let (input, zip_path) = zipped_fixture(dir.path());
        let out = dir.path().join("out.mlpackage");
        let stage = |force| {
            let staged = OutputPackage::create(&input, &out, force, &[]).unwrap();
            std::fs::write(staged.model_path(), b"new model").unwrap();
            staged
        };
        stage(false).commit().unwrap();
        let inside = out.join("Data/com.apple.CoreML/weights/in.zip");
        let staged = stage(true);
        std::fs::hard_link(&zip_path, &inside).unwrap();
        staged.commit().unwrap();
        assert!(zip_path.is_file(), "the input is still there");
        let staged = stage(true);
        std::fs::rename(&zip_path, &inside).unwrap();
        let err = staged.commit().unwrap_err();
        assert!(err.to_string().contains("which the run reads"), "{err}");
        assert!(inside.is_file(), "the input is still there");
    }

    /// `--force` over an old package that, by the commit, holds the input (moved into its
    /// weights folder, a link left at its path so that the run reads on): removing the old
    /// package deleted the input (red team, session 21). Refused now, both left as they are.
    #[cfg(unix)]
    #[test]
    fn force_never_replaces_an_old_output_that_now_holds_the_input() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let (input, first) = stage(dir.path(), "out.mlpackage", false).unwrap();
        first.commit().unwrap();
        let (root, old) = (dir.path().join("in.mlpackage"), dir.path().join("out.mlpackage"));
        let staged = OutputPackage::create(&input, &old, true, &[]).unwrap();
        std::fs::write(staged.model_path(), b"new model").unwrap();
        let moved = old.join("Data/com.apple.CoreML/weights/in.mlpackage");
        std::fs::rename(&root, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &root).unwrap();
        let err = staged.commit().unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("which the run reads"), "{err}");
        assert!(moved.join("Manifest.json").is_file(), "the input is still there");
    }

    #[test]
    fn commit_zip_output_reopens_to_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        for (out_name, folder) in [
            ("out.zip", "out.mlpackage"),
            ("out2.mlpackage.zip", "out2.mlpackage"),
        ] {
            let (input, staged) = stage(dir.path(), out_name, false).unwrap();
            staged.commit().unwrap();
            let zip_path = dir.path().join(out_name);
            let reopened = Package::open(&zip_path).unwrap();
            assert_eq!(reopened.root().file_name().unwrap(), folder);
            assert_eq!(read_tree(reopened.root()), expected_tree(&input));
            // One top-level folder holds everything, directories included.
            let archive = ZipArchive::new(File::open(&zip_path).unwrap()).unwrap();
            let names: Vec<String> = archive.file_names().map(|n| n.unwrap().into_owned()).collect();
            assert!(
                names.iter().all(|n| n.starts_with(&format!("{folder}/"))),
                "{names:?}"
            );
            assert!(names.contains(&format!("{folder}/Data/com.apple.CoreML/weights/")));
        }
        assert_eq!(
            list_dir(dir.path()),
            ["in.mlpackage", "out.zip", "out2.mlpackage.zip"]
        );
    }

    #[test]
    fn zip_output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        stage(dir.path(), "a.zip", false).unwrap().1.commit().unwrap();
        stage(dir.path(), "b.zip", false).unwrap().1.commit().unwrap();
        // Same folder name inside, so the archives must be byte-identical apart from it.
        let a = std::fs::read(dir.path().join("a.zip")).unwrap();
        let b = std::fs::read(dir.path().join("b.zip")).unwrap();
        assert_eq!(a.len(), b.len());
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let entries = ZipArchive::new(File::open(dir.path().join("a.zip")).unwrap())
            .unwrap()
            .len();
        // Each name appears twice (local + central header) and differs in one byte ('a' vs 'b').
        assert_eq!(differing, entries * 2);
    }

    #[test]
    fn zipped_input_to_folder_output() {
        let dir = tempfile::tempdir().unwrap();
        let (input, zip_path) = zipped_fixture(dir.path());
        let out = dir.path().join("out.mlpackage");
        let staged = OutputPackage::create(&input, &out, false, &[]).unwrap();
        std::fs::write(staged.model_path(), b"m").unwrap();
        staged.commit().unwrap();
        let tree = read_tree(&out);
        assert!(!tree.contains_key(Path::new(EXTRA_FILE)));
        assert!(!tree.contains_key(Path::new("Data/com.apple.CoreML/weights/weight.bin")));
        // The zip itself is the input: writing over it is refused.
        assert!(matches!(
            OutputPackage::create(&input, &zip_path, true, &[]),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn output_equal_to_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        assert!(usage(stage(dir.path(), "in.mlpackage", true)).contains("is the input"));
        // Also when spelled differently.
        let input = Package::open(&dir.path().join("in.mlpackage")).unwrap();
        let other_spelling = dir.path().join("in.mlpackage/Data/../../in.mlpackage");
        let err = OutputPackage::create(&input, &other_spelling, true, &[]).unwrap_err();
        assert!(err.to_string().contains("is the input"), "{err}");
        let no_name = dir.path().join("in.mlpackage/Data/..");
        let err = OutputPackage::create(&input, &no_name, true, &[]).unwrap_err();
        assert!(err.to_string().contains("does not name a file"), "{err}");
        assert_eq!(list_dir(dir.path()), ["in.mlpackage"]);
    }

    #[test]
    fn output_inside_input_and_input_inside_output_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        assert!(
            usage(stage(dir.path(), "in.mlpackage/Data/out.mlpackage", true)).contains("inside the input")
        );
        let input = Package::open(&dir.path().join("in.mlpackage")).unwrap();
        let err = OutputPackage::create(&input, dir.path(), true, &[]).unwrap_err();
        assert!(err.to_string().contains("contains the input"), "{err}");
        assert!(input.root().join("Data/com.apple.CoreML/model.mlmodel").exists());
        let in_data = read_tree(input.root());
        assert!(!in_data
            .keys()
            .any(|p| p.to_string_lossy().contains("mlprune-tmp")));
    }

    #[cfg(unix)]
    #[test]
    fn output_through_a_symlink_into_the_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        std::os::unix::fs::symlink(dir.path().join("in.mlpackage/Data"), dir.path().join("alias")).unwrap();
        assert!(usage(stage(dir.path(), "alias/out.mlpackage", false)).contains("inside the input"));
    }

    #[test]
    fn existing_output_needs_force_and_is_replaced_with_it() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let out = make_written_package(dir.path(), "out.mlpackage");
        // Package content of the old run: replaced with it.
        let old = out.join("Data/com.apple.CoreML/weights/old");
        std::fs::write(&old, b"old").unwrap();
        assert!(usage(stage(dir.path(), "out.mlpackage", false)).contains("--force"));
        assert!(old.exists());
        assert_eq!(list_dir(dir.path()), ["in.mlpackage", "out.mlpackage"]);

        let (input, staged) = stage(dir.path(), "out.mlpackage", true).unwrap();
        assert!(old.exists(), "replaced only at commit time");
        staged.commit().unwrap();
        assert_eq!(read_tree(&out), expected_tree(&input));
        assert_eq!(list_dir(dir.path()), ["in.mlpackage", "out.mlpackage"]);

        // A zip over an existing zip holding a package (one mlprune wrote).
        stage(dir.path(), "out.zip", false).unwrap().1.commit().unwrap();
        assert!(usage(stage(dir.path(), "out.zip", false)).contains("already exists"));
        stage(dir.path(), "out.zip", true).unwrap().1.commit().unwrap();
        assert!(Package::open(&dir.path().join("out.zip")).is_ok());
        assert_eq!(list_dir(dir.path()), ["in.mlpackage", "out.mlpackage", "out.zip"]);
    }

    #[test]
    fn force_refuses_to_replace_anything_but_a_package() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        // A user's folder, a folder with only one of the two package parts, a plain file, a
        // file named .zip that is no zip, and a zip that holds no package.
        std::fs::create_dir_all(dir.path().join("victim/important")).unwrap();
        std::fs::write(dir.path().join("victim/important/thesis.txt"), b"years").unwrap();
        std::fs::create_dir_all(dir.path().join("half.mlpackage/Data")).unwrap();
        std::fs::write(dir.path().join("plain.mlpackage"), b"a file").unwrap();
        std::fs::write(dir.path().join("fake.zip"), b"not a zip").unwrap();
        let other_zip = dir.path().join("other.zip");
        {
            let mut writer = zip::ZipWriter::new(File::create(&other_zip).unwrap());
            writer
                .start_file("notes/Manifest.json", zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(b"{}").unwrap();
            writer.finish().unwrap();
        }
        let mut names = vec![
            "victim",
            "half.mlpackage",
            "plain.mlpackage",
            "fake.zip",
            "other.zip",
        ];
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("victim", dir.path().join("link.mlpackage")).unwrap();
            let fifo = dir.path().join("fifo.mlpackage");
            let status = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(status.is_ok_and(|s| s.success()), "mkfifo failed");
            names.extend(["link.mlpackage", "fifo.mlpackage"]);
        }
        let before = read_tree(dir.path());
        for name in &names {
            let message = usage(stage(dir.path(), name, true));
            assert!(message.contains("--force only replaces"), "{name}: {message}");
            assert!(message.contains(name), "{name}: {message}");
            // `generate` stages through create_new: the same rule.
            let err = OutputPackage::create_new(&dir.path().join(name), Manifest::new_ml_program(), true)
                .unwrap_err();
            assert!(err.to_string().contains("--force only replaces"), "{name}: {err}");
        }
        assert_eq!(
            read_tree(dir.path()),
            before,
            "nothing replaced, nothing left behind"
        );
    }

    #[test]
    fn a_stale_staging_folder_is_swept_but_a_live_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        // Left by a killed run: nobody holds its lock.
        let stale = dir.path().join(".out.mlpackage.mlprune-tmp-000000000000dead");
        std::fs::create_dir_all(stale.join("Data")).unwrap();
        // In use by a run still going (this process holds its lock).
        let live = ScratchPath::create_dir(dir.path(), ".out.mlpackage.mlprune-tmp-").unwrap();
        let (_input, staged) = stage(dir.path(), "out.mlpackage", false).unwrap();
        assert_eq!(staged.notices().len(), 1, "{:?}", staged.notices());
        assert!(staged.notices()[0].contains(".out.mlpackage.mlprune-tmp-000000000000dead"));
        assert!(staged.notices()[0].contains("interrupted run"));
        assert!(!stale.exists());
        assert!(live.path().is_dir());
        staged.commit().unwrap();
        assert!(live.path().is_dir());
    }

    #[test]
    fn a_companion_is_published_with_the_package_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let report = dir.path().join("report.json");
        let (input, mut staged) = stage(dir.path(), "out.mlpackage", false).unwrap();
        staged.reserve_companion(&report, &[input.origin()]).unwrap();
        staged.write_companion(b"first draft, longer").unwrap();
        staged.write_companion(b"[]\n").unwrap();
        assert!(!report.exists(), "published only at commit");
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&report).unwrap(), b"[]\n");
        assert_eq!(
            list_dir(dir.path()),
            ["in.mlpackage", "out.mlpackage", "report.json"]
        );

        // Dropped before commit: neither appears, and no scratch sibling stays.
        let (input, mut staged) = stage(dir.path(), "out2.zip", false).unwrap();
        staged
            .reserve_companion(&dir.path().join("r2.json"), &[input.origin()])
            .unwrap();
        staged.write_companion(b"[]").unwrap();
        drop(staged);
        assert_eq!(
            list_dir(dir.path()),
            ["in.mlpackage", "out.mlpackage", "report.json"]
        );
    }

    #[test]
    fn a_companion_may_not_overwrite_the_input_the_output_or_a_protected_file() {
        let dir = tempfile::tempdir().unwrap();
        let input_root = make_package(dir.path(), "in.mlpackage");
        make_written_package(dir.path(), "out.mlpackage");
        let zip = dir.path().join("in.zip");
        zip_tree(&input_root, &zip, "in.mlpackage/");
        std::fs::write(dir.path().join("config.yaml"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            input_root.join("Data/com.apple.CoreML/weights/weight.bin"),
            dir.path().join("innocent.json"),
        )
        .unwrap();
        let before = read_tree(dir.path());
        let input = Package::open(&input_root).unwrap();
        let zipped = Package::open(&zip).unwrap();
        let config = dir.path().join("config.yaml");
        let mut cases = vec![
            (
                &input,
                "in.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
                "would overwrite",
            ),
            (&input, "in.mlpackage/Manifest.json", "would overwrite"),
            (&input, "out.mlpackage/Manifest.json", "would overwrite"),
            (&input, "out.mlpackage", "not a regular file"),
            (&input, "config.yaml", "would overwrite"),
            (&zipped, "in.zip", "would overwrite"),
            (&input, "missing/report.json", "not usable"),
        ];
        #[cfg(unix)]
        cases.push((&input, "innocent.json", "symbolic link"));
        for (package, report, expected) in cases {
            let mut staged =
                OutputPackage::create(package, &dir.path().join("out.mlpackage"), true, &[]).unwrap();
            let err = staged
                .reserve_companion(&dir.path().join(report), &[package.origin(), &config])
                .unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{report}: {err:?}");
            assert!(err.to_string().contains(expected), "{report}: {err}");
        }
        // The output was staged with --force each time but never committed: all as before.
        assert_eq!(read_tree(dir.path()), before);
    }

    #[test]
    fn a_commit_waiting_for_the_folder_lock_can_be_cancelled() {
        // Regression (red-team, round 19): the wait for another run's commit (up to a minute)
        // could not be interrupted, and the run then committed anyway.
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let (_input, staged) = stage(dir.path(), "out.zip", false).unwrap();
        let other_run = File::open(dir.path()).unwrap();
        other_run.lock().unwrap();
        let cancel = CancelFlag::default();
        let (err, waited) = std::thread::scope(|scope| {
            let canceller = cancel.clone();
            scope.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                canceller.cancel();
                // Time-boxed: the other run's commit ends, as a run that ignored the cancel
                // would find (it would then commit).
                std::thread::sleep(std::time::Duration::from_secs(2));
                drop(other_run);
            });
            let started = std::time::Instant::now();
            (staged.commit_unless(&cancel), started.elapsed())
        });
        assert!(matches!(err, Err(Error::Interrupted)), "{err:?}");
        assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
        assert_eq!(
            list_dir(dir.path()),
            ["in.mlpackage"],
            "nothing placed, nothing left"
        );
    }

    #[test]
    fn failed_commit_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        for out_name in ["out.mlpackage", "out.zip"] {
            let (_input, staged) = stage(dir.path(), out_name, false).unwrap();
            // Something else creates OUTPUT while we work: commit must not clobber it.
            std::fs::create_dir(dir.path().join(out_name)).unwrap();
            std::fs::write(dir.path().join(out_name).join("theirs"), b"x").unwrap();
            let err = staged.commit().unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{err}");
            assert_eq!(list_dir(&dir.path().join(out_name)), ["theirs"]);
        }
        assert_eq!(list_dir(dir.path()), ["in.mlpackage", "out.mlpackage", "out.zip"]);
    }

    #[cfg(unix)]
    #[test]
    fn failed_zip_write_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        make_package(dir.path(), "in.mlpackage");
        let (_input, staged) = stage(dir.path(), "out.zip", false).unwrap();
        // A staged file the archive cannot hold (a FIFO) makes the zip writer fail mid-way.
        let fifo = staged.staging_dir().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(status.is_ok_and(|s| s.success()), "mkfifo failed");
        let err = staged.commit().unwrap_err();
        assert!(matches!(err, Error::Zip { .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(list_dir(dir.path()), ["in.mlpackage"]);
    }

    #[cfg(unix)]
    #[test]
    fn copy_never_follows_a_symlink_out_of_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "in.mlpackage");
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        // Inside the declared weights folder, so the copy must look at it.
        let weights = root.join("Data/com.apple.CoreML/weights");
        std::os::unix::fs::symlink(dir.path().join("secret"), weights.join("leak")).unwrap();
        let err = usage_or_package(stage(dir.path(), "out.mlpackage", false));
        assert!(
            err.contains("weights/leak: invalid package: resolves to"),
            "{err}"
        );
        assert_eq!(list_dir(dir.path()), ["in.mlpackage", "secret"]);

        // A link to a file inside the package (even one no item covers) is copied as that file.
        std::fs::remove_file(weights.join("leak")).unwrap();
        std::os::unix::fs::symlink("../extra/notes.txt", weights.join("alias")).unwrap();
        stage(dir.path(), "out.mlpackage", false)
            .unwrap()
            .1
            .commit()
            .unwrap();
        let alias = dir
            .path()
            .join("out.mlpackage/Data/com.apple.CoreML/weights/alias");
        assert!(std::fs::symlink_metadata(&alias).unwrap().is_file());
        assert_eq!(std::fs::read(alias).unwrap(), b"notes");
    }

    /// Two names inside the package for one file (a hard link, or a symbolic link to a file the
    /// copy or the run reads anyway) are refused: each would be written out in full. A file
    /// whose other name is outside the package is copied.
    #[cfg(unix)]
    #[test]
    fn a_second_name_for_one_file_of_the_package_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "in.mlpackage");
        let weights = root.join("Data/com.apple.CoreML/weights");
        std::fs::write(weights.join("table.bin"), b"table").unwrap();
        std::fs::hard_link(weights.join("table.bin"), dir.path().join("backup.bin")).unwrap();
        // Its other name is outside the package: staged (and dropped unpublished).
        stage(dir.path(), "out.mlpackage", false).unwrap();

        type MakeLink = fn(&Path, &Path);
        let cases: [(&str, MakeLink); 3] = [
            ("hard link", |weights, link| {
                std::fs::hard_link(weights.join("table.bin"), link).unwrap()
            }),
            ("link to a copied file", |_, link| {
                std::os::unix::fs::symlink("table.bin", link).unwrap()
            }),
            ("link to weight.bin", |_, link| {
                std::os::unix::fs::symlink("weight.bin", link).unwrap()
            }),
        ];
        for (case, make_link) in cases {
            let link = weights.join("z-second");
            make_link(&weights, &link);
            let err = usage_or_package(stage(dir.path(), "out.mlpackage", false));
            assert!(
                err.contains("weights/z-second: invalid package: is another name (a link) for"),
                "{case}: {err}"
            );
            assert_eq!(list_dir(dir.path()), ["backup.bin", "in.mlpackage"], "{case}");
            std::fs::remove_file(&link).unwrap();
        }
    }

    #[test]
    fn folder_and_zip_inputs_carry_declared_items_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "in.mlpackage");
        std::fs::write(root.join("Manifest.json"), manifest_with_extra_item()).unwrap();
        let labels = root.join("Data").join(EXTRA_ITEM);
        std::fs::create_dir_all(labels.join("de")).unwrap();
        std::fs::write(labels.join("en.txt"), b"cat").unwrap();
        std::fs::write(labels.join("de/de.txt"), b"Katze").unwrap();
        // Next to the items, covered by none (EXTRA_FILE is one too).
        std::fs::write(root.join("README.md"), b"readme").unwrap();
        std::fs::write(root.join("Data/stray.bin"), b"stray").unwrap();
        std::fs::create_dir_all(root.join("Data/com.example/labels2")).unwrap();
        std::fs::write(root.join("Data/com.example/labels2/x"), b"x").unwrap();
        let zip_path = dir.path().join("in.zip");
        zip_tree(&root, &zip_path, "in.mlpackage/");

        let mut outputs = Vec::new();
        for (input, out_name) in [
            (&root, "from-folder.mlpackage"),
            (&zip_path, "from-zip.mlpackage"),
        ] {
            let input = Package::open(input).unwrap();
            let out = dir.path().join(out_name);
            let staged = OutputPackage::create(&input, &out, false, &[]).unwrap();
            std::fs::write(staged.model_path(), b"new model").unwrap();
            std::fs::write(staged.weight_path(), b"new weights").unwrap();
            staged.commit().unwrap();
            outputs.push(read_tree(&out));
        }
        let expected: std::collections::BTreeMap<PathBuf, Option<Vec<u8>>> = [
            ("Data", None),
            ("Data/com.apple.CoreML", None),
            ("Data/com.apple.CoreML/model.mlmodel", Some(&b"new model"[..])),
            ("Data/com.apple.CoreML/weights", None),
            ("Data/com.apple.CoreML/weights/weight.bin", Some(b"new weights")),
            ("Data/com.example", None),
            ("Data/com.example/labels", None),
            ("Data/com.example/labels/de", None),
            ("Data/com.example/labels/de/de.txt", Some(b"Katze")),
            ("Data/com.example/labels/en.txt", Some(b"cat")),
            ("Manifest.json", Some(manifest_with_extra_item().as_bytes())),
        ]
        .into_iter()
        .map(|(p, c)| (PathBuf::from(p), c.map(<[u8]>::to_vec)))
        .collect();
        assert_eq!(outputs[0], expected, "folder input");
        assert_eq!(outputs[1], expected, "zip input");
        // The input folder still holds everything.
        assert!(root.join("README.md").is_file() && root.join(EXTRA_FILE).is_file());
    }

    fn usage_or_package(result: Result<(Package, OutputPackage)>) -> String {
        match result {
            Err(e @ Error::Package { .. }) => e.to_string(),
            other => panic!("expected a package error, got {other:?}"),
        }
    }
}
