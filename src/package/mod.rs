//! `.mlpackage` input and output (spec §1): a package directory or a zip of one, its manifest,
//! confinement of every path it names, and staged, atomic writing of the result.
//!
//! `Package` is read-only: nothing of the input is ever opened for writing. A zipped input is
//! extracted (with checks) into a private temporary directory, so later stages see a plain
//! directory either way; only the entries the package uses (`used_paths`) are extracted.
//! `OutputPackage` stages the result next to the output and renames it into place on `commit`.

mod folder;
mod holes;
mod manifest;
mod output;
pub(crate) mod paths;
pub(crate) mod random;
mod zipped;

#[cfg(test)]
pub(crate) mod testutil;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use manifest::Manifest;
pub use output::{check_output_spares, OutputPackage, OutputPlace, TableFolder};

use crate::cleanup::{sweep_stale, ScratchPath};
use crate::error::{show_scratch_as, Error, IoContext, Result};
use crate::open_file::{open_regular_or_err, Links};
use folder::{read_folder, DATA_DIR, MANIFEST_FILE, WEIGHT_FILE};
use zipped::{extract_package, strip_suffix_ignore_case, ZipLimits};

/// Local file header and empty-archive signatures that start a zip file.
const ZIP_MAGICS: [&[u8; 4]; 2] = [b"PK\x03\x04", b"PK\x05\x06"];
/// Name prefix of the private folders zipped inputs are extracted into, in the temporary directory.
pub(crate) const UNZIP_PREFIX: &str = ".mlprune-unzip-";
/// A file in each of those folders, made with it: a sweep of the temporary directory, which other
/// programs and users share, removes only folders that hold one (or nothing at all).
pub(crate) const UNZIP_MARKER: &str = ".mlprune-unzip-scratch";

/// An opened input package.
#[derive(Debug)]
pub struct Package {
    origin: PathBuf,
    root: PathBuf,
    manifest: Manifest,
    weight_file: Option<PathBuf>,
    shown: ShownPaths,
    /// Holds the extracted copy of a zipped input; removed when the package is dropped.
    extracted: Option<ExtractedDir>,
}

/// The folder a zipped input is extracted into: a locked, registered scratch path, so a signal
/// removes it and a later run can tell it from a live run's ([`sweep_stale`]). Removed on drop.
#[derive(Debug)]
struct ExtractedDir(Option<ScratchPath>);

impl ExtractedDir {
    fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new(""), ScratchPath::path)
    }
}

impl Drop for ExtractedDir {
    fn drop(&mut self) {
        if let Some(scratch) = self.0.take() {
            scratch.remove();
        }
    }
}

impl Package {
    /// Opens a package directory, or a zip archive holding one (a file named `*.zip` or starting
    /// with the zip signature).
    pub fn open(input: &Path) -> Result<Package> {
        Self::open_sparing(input, &[])
    }

    /// [`Package::open`], whose sweep of stale extractions also spares `spare` (the run's config
    /// files, report and OUTPUT, as the sweep beside OUTPUT does): any of them may lie in a folder
    /// named like a killed run's extraction.
    pub fn open_sparing(input: &Path, spare: &[&Path]) -> Result<Package> {
        Self::open_with_limits(input, &ZipLimits::default(), spare)
    }

    pub(crate) fn open_with_limits(input: &Path, limits: &ZipLimits, spare: &[&Path]) -> Result<Package> {
        let temp_dir = std::env::temp_dir();
        // Extracted copies left by runs killed before they could remove them (SIGKILL, power loss)
        // go first; a live run's copy is locked and stays. Best effort: a temporary directory that
        // cannot be listed is no reason to refuse a folder input, and extraction reports its own
        // errors.
        let spare: Vec<&Path> = std::iter::once(input).chain(spare.iter().copied()).collect();
        let _ = sweep_stale(&temp_dir, UNZIP_PREFIX, Some(UNZIP_MARKER), &spare);
        let meta = std::fs::metadata(input).at(input)?;
        if meta.is_dir() {
            let root = std::fs::canonicalize(input).at(input)?;
            let shown = ShownPaths {
                real: root.clone(),
                shown: input.to_path_buf(),
            };
            return Self::from_dir(input, root, shown, None);
        }
        if !meta.is_file() || !looks_like_zip(input)? {
            return Err(Error::Package {
                path: input.to_path_buf(),
                reason: "not an .mlpackage directory or a .zip archive".into(),
            });
        }
        // The temporary folder's fault, not the archive's (no room left there, say): exit 1
        // naming it, as a full disk anywhere.
        let in_temp_dir = |source| Error::Extract {
            archive: input.to_path_buf(),
            temp_dir: temp_dir.clone(),
            source,
        };
        // From here on, dropping `temp` (on error, or with the package) removes the extraction.
        let temp = match ScratchPath::create_dir(&temp_dir, UNZIP_PREFIX) {
            Ok(scratch) => ExtractedDir(Some(scratch)),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                return Err(in_temp_dir(source))
            }
            // The environment's fault, not the input's: said as such, naming the folder rather
            // than a hidden name in it the user never chose.
            Err(Error::Io { source, .. }) => {
                return Err(Error::Usage(format!(
                    "the temporary directory {} (TMPDIR) is not usable for extracting {}: {source}",
                    temp_dir.display(),
                    input.display()
                )))
            }
            Err(e) => return Err(e),
        };
        // Errors about the extraction (its folder removed or renamed mid-run, say) name the
        // archive, as errors about the files in it do, not the hidden folder.
        show_scratch_as(temp.path().as_os_str(), input.as_os_str());
        let marker = temp.path().join(UNZIP_MARKER);
        File::create_new(&marker).map_err(in_temp_dir)?;
        let root = extract_package(input, temp.path(), limits)?;
        let root = std::fs::canonicalize(&root).at(&root)?;
        // Name files inside the archive as `archive.zip/<pkg>.mlpackage/...` rather than by the
        // temporary path the user never chose.
        let inner = root.file_name().map(PathBuf::from).unwrap_or_default();
        let shown = ShownPaths {
            real: root.clone(),
            shown: input.join(inner),
        };
        Self::from_dir(input, root, shown, Some(temp))
    }

    fn from_dir(
        origin: &Path,
        root: PathBuf,
        shown: ShownPaths,
        extracted: Option<ExtractedDir>,
    ) -> Result<Package> {
        let layout = read_folder(&root, &shown)?;
        Ok(Package {
            origin: origin.to_path_buf(),
            root,
            manifest: layout.manifest,
            weight_file: layout.weight_file,
            shown,
            extracted,
        })
    }

    /// The path the user named (a directory or an archive).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The package directory on disk, canonical (a private temporary directory for a zip).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `Data/<root model item path>`.
    pub fn model_path(&self) -> PathBuf {
        self.root.join(DATA_DIR).join(self.manifest.root_model_relative())
    }

    /// `Data/<weights item path>`, or `Data/com.apple.CoreML/weights` without a weights item.
    pub fn weights_dir(&self) -> PathBuf {
        self.root.join(DATA_DIR).join(self.manifest.weights_relative())
    }

    /// `weight.bin` in the weights directory, when the package has one.
    pub fn weight_file(&self) -> Option<PathBuf> {
        self.weight_file.clone()
    }

    pub fn is_zip(&self) -> bool {
        self.extracted.is_some()
    }

    /// The path to show the user for a file of this package: inside the folder the user named,
    /// or inside the archive (`model.zip/model.mlpackage/...`) for a zipped input.
    pub fn display_path(&self, path: &Path) -> PathBuf {
        self.shown.show(path)
    }

    /// The path of `weight.bin` relative to the package root, used to leave it out of copies.
    pub(crate) fn weight_file_relative(&self) -> PathBuf {
        Path::new(DATA_DIR)
            .join(self.manifest.weights_relative())
            .join(WEIGHT_FILE)
    }
}

/// The paths a package uses, relative to its root: `Manifest.json`, and `Data/<path>` for every item
/// the manifest declares (the root model, the weights folder, any other item, each with everything
/// under it), plus the weights folder `weight_file` looks in when no item declares one.
///
/// Everything else in a package (a README or a stray copy next to the items, say) is invisible to
/// Core ML and to coremltools: ModelPackage only ever resolves declared items, and coremltools 9.0's
/// `prune_weights` builds its result as a brand-new package (`_mil_convert` → `_create_mlpackage`:
/// root model plus weights only) before `MLModel.save` copies it. So mlprune neither extracts such
/// files from a zipped input nor carries them from a folder input to the output: both inputs give
/// the same output, and an unused entry costs neither time nor disk. Declared items other than the
/// model and weights are kept (unlike coremltools) because the manifest we copy still names them.
pub(crate) fn used_paths(manifest: &Manifest) -> UsedPaths {
    let data = Path::new(DATA_DIR);
    let mut used = vec![PathBuf::from(MANIFEST_FILE)];
    used.extend(manifest.item_paths().into_iter().map(|(_, item)| data.join(item)));
    used.push(data.join(manifest.weights_relative()));
    UsedPaths::new(used)
}

/// How a path relative to the package root stands to [`used_paths`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A used path or something under one: extract or copy it, with everything under it.
    Used,
    /// A folder on the way to a used path (`Data`, `Data/com.apple.CoreML`): create it and look
    /// inside.
    Ancestor,
    /// Neither: leave it out.
    Unused,
}

/// The used paths as a tree of their components, so that placing a path costs one step per
/// component of it, whatever the number of used paths: every zip entry and every file of a
/// folder input is placed, and a manifest may declare tens of thousands of items (issue 18:
/// comparing each with each took minutes).
#[derive(Debug)]
pub(crate) struct UsedPaths {
    /// Sorted, without repeats.
    paths: Vec<PathBuf>,
    /// Per node: whether the path to it is used. Node 0 is the root (the empty path).
    used: Vec<bool>,
    children: std::collections::HashMap<(usize, std::ffi::OsString), usize>,
}

impl UsedPaths {
    fn new(mut paths: Vec<PathBuf>) -> Self {
        paths.sort();
        paths.dedup();
        let mut tree = UsedPaths {
            paths: Vec::new(),
            used: vec![false],
            children: std::collections::HashMap::new(),
        };
        for path in &paths {
            let mut node = 0;
            for component in path.components() {
                let next = tree.used.len();
                node = *tree
                    .children
                    .entry((node, component.as_os_str().to_owned()))
                    .or_insert(next);
                if node == next {
                    tree.used.push(false);
                }
            }
            tree.used[node] = true;
        }
        tree.paths = paths;
        tree
    }

    /// [`Use::Used`] when a used path is `relative` or one of its ancestors, [`Use::Ancestor`]
    /// when `relative` is an ancestor of a used path.
    pub(crate) fn use_of(&self, relative: &Path) -> Use {
        let mut node = 0;
        for component in relative.components() {
            if self.used[node] {
                return Use::Used;
            }
            match self.children.get(&(node, component.as_os_str().to_owned())) {
                Some(&child) => node = child,
                None => return Use::Unused,
            }
        }
        if self.used[node] {
            Use::Used
        } else {
            Use::Ancestor
        }
    }

    /// Whether `path` itself is one of the used paths.
    #[cfg(test)]
    fn contains(&self, path: &Path) -> bool {
        self.paths.binary_search_by(|p| p.as_path().cmp(path)).is_ok()
    }
}

/// Maps on-disk paths under a package root to the paths the user knows.
#[derive(Debug, Clone)]
pub(crate) struct ShownPaths {
    real: PathBuf,
    shown: PathBuf,
}

impl ShownPaths {
    pub(crate) fn show(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.real) {
            Ok(rest) if rest.as_os_str().is_empty() => self.shown.clone(),
            Ok(rest) => self.shown.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }
}

/// A `.zip` name, or a file that starts with a zip signature.
fn looks_like_zip(path: &Path) -> Result<bool> {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    if strip_suffix_ignore_case(&name, ".zip").len() < name.len() {
        return Ok(true);
    }
    let mut head = Vec::with_capacity(4);
    let file = open_regular_or_err(path, Links::Follow).at(path)?;
    file.take(4).read_to_end(&mut head).at(path)?;
    Ok(ZIP_MAGICS.iter().any(|magic| head == magic[..]))
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn opens_a_folder_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "m.mlpackage");
        let package = Package::open(&root).unwrap();
        assert!(!package.is_zip());
        assert_eq!(package.origin(), root);
        assert_eq!(package.root(), std::fs::canonicalize(&root).unwrap());
        assert_eq!(
            package.manifest().root_model_path(),
            "com.apple.CoreML/model.mlmodel"
        );
        assert_eq!(std::fs::read(package.model_path()).unwrap(), MODEL_BYTES);
        assert_eq!(
            package.weights_dir(),
            package.root().join("Data/com.apple.CoreML/weights")
        );
        assert_eq!(
            std::fs::read(package.weight_file().unwrap()).unwrap(),
            WEIGHT_BYTES
        );
        assert_eq!(
            package.display_path(&package.model_path()),
            root.join("Data/com.apple.CoreML/model.mlmodel")
        );
    }

    #[test]
    fn weight_file_is_optional_and_weights_dir_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "m.mlpackage");
        std::fs::remove_file(root.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
        let manifest = COREMLTOOLS_MANIFEST.replace("\"name\": \"weights\"", "\"name\": \"w\"");
        std::fs::write(root.join("Manifest.json"), manifest).unwrap();
        let package = Package::open(&root).unwrap();
        assert_eq!(package.weight_file(), None);
        assert_eq!(package.manifest().weights_dir_path(), None);
        assert_eq!(
            package.weights_dir(),
            package.root().join("Data/com.apple.CoreML/weights")
        );
    }

    #[test]
    fn opens_a_zip_of_the_package_folder_and_of_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "m.mlpackage");
        // Everything but the file no manifest item covers, and its folder.
        let mut expected = read_tree(&root);
        assert!(expected.remove(Path::new(EXTRA_FILE)).is_some());
        assert!(expected
            .remove(Path::new("Data/com.apple.CoreML/extra"))
            .is_some());
        for (zip_name, prefix) in [("folder.zip", "m.mlpackage/"), ("flat.mlpackage.zip", "")] {
            let zip_path = dir.path().join(zip_name);
            zip_tree(&root, &zip_path, prefix);
            let package = Package::open(&zip_path).unwrap();
            assert!(package.is_zip());
            assert_eq!(package.origin(), zip_path);
            assert_eq!(read_tree(package.root()), expected, "{zip_name}");
            assert_eq!(std::fs::read(package.model_path()).unwrap(), MODEL_BYTES);
            assert_eq!(
                std::fs::read(package.weight_file().unwrap()).unwrap(),
                WEIGHT_BYTES
            );
            let folder = if prefix.is_empty() {
                "flat.mlpackage"
            } else {
                "m.mlpackage"
            };
            assert_eq!(package.root().file_name().unwrap(), folder);
            assert_eq!(
                package.display_path(&package.model_path()),
                zip_path.join(folder).join("Data/com.apple.CoreML/model.mlmodel")
            );
            // The extracted copy lives only as long as the package.
            let extracted = package.root().to_path_buf();
            drop(package);
            assert!(!extracted.exists());
        }
    }

    #[test]
    fn the_tree_of_used_paths_places_a_path_as_comparing_with_each_would() {
        let used = [
            "Manifest.json",
            "Data/a",
            "Data/a/b/c",
            "Data/x/y",
            "Data/x/yz",
            "Data/./dotted",
            "Data/é",
        ];
        let tree = UsedPaths::new(used.map(PathBuf::from).to_vec());
        let each = |relative: &Path| {
            if used.iter().any(|u| relative.starts_with(u)) {
                Use::Used
            } else if used.iter().any(|u| Path::new(u).starts_with(relative)) {
                Use::Ancestor
            } else {
                Use::Unused
            }
        };
        for path in [
            "",
            "Data",
            "Data/",
            "Data/a",
            "Data/a/",
            "Data/a/b",
            "Data/a/b/c/d",
            "Data/x",
            "Data/x/y/z",
            "Data/x/y.bin",
            "Data/x/yz",
            "Data/x/z",
            "Data/dotted",
            "Data/./dotted/f",
            "Data/é/f",
            "Data/e",
            "Manifest.json",
            "Manifest.json/x",
            "manifest.json",
            "Other",
            "./Data/a",
            "Data//a",
        ] {
            assert_eq!(tree.use_of(Path::new(path)), each(Path::new(path)), "{path:?}");
        }
    }

    #[test]
    fn used_paths_are_the_manifest_and_the_declared_items() {
        let manifest =
            Manifest::parse(manifest_with_extra_item().as_bytes(), Path::new("Manifest.json")).unwrap();
        let used = used_paths(&manifest);
        assert_eq!(
            used.paths,
            [
                "Data/com.apple.CoreML/model.mlmodel",
                "Data/com.apple.CoreML/weights",
                "Data/com.example/labels",
                "Manifest.json",
            ]
            .map(PathBuf::from)
        );
        for (path, expected) in [
            ("", Use::Ancestor),
            ("Data", Use::Ancestor),
            ("Data/com.apple.CoreML", Use::Ancestor),
            ("Data/com.apple.CoreML/model.mlmodel", Use::Used),
            ("Data/com.apple.CoreML/weights/weight.bin", Use::Used),
            ("Data/com.apple.CoreML/weights/sub/x", Use::Used),
            ("Data/com.example/labels/de/de.txt", Use::Used),
            ("Manifest.json", Use::Used),
            ("Data/com.apple.CoreML/model.mlmodel.bak", Use::Unused),
            ("Data/com.apple.CoreML/weights2", Use::Unused),
            ("Data/com.example/labels2", Use::Unused),
            ("Data/stray.bin", Use::Unused),
            ("README.md", Use::Unused),
            ("manifest.json", Use::Unused),
        ] {
            assert_eq!(used.use_of(Path::new(path)), expected, "{path}");
        }
        // Without a weights item, the folder weight_file looks in is still used.
        let manifest = COREMLTOOLS_MANIFEST.replace("\"name\": \"weights\"", "\"name\": \"w\"");
        let manifest = Manifest::parse(manifest.as_bytes(), Path::new("Manifest.json")).unwrap();
        assert!(used_paths(&manifest).contains(Path::new("Data/com.apple.CoreML/weights")));
    }

    /// A folder named like an extraction, as a killed run leaves it: not locked by anyone, with
    /// the marker every extraction folder gets.
    fn plant_stale_extraction(_tag: &str) -> PathBuf {
        let stale = std::env::temp_dir().join(format!("{UNZIP_PREFIX}{}", random::temp_suffix()));
        std::fs::create_dir_all(stale.join("m.mlpackage/Data")).unwrap();
        std::fs::write(stale.join(UNZIP_MARKER), b"").unwrap();
        std::fs::write(stale.join("m.mlpackage/Data/weight.bin"), b"left behind").unwrap();
        stale
    }

    #[test]
    fn open_sweeps_extractions_left_by_killed_runs_but_not_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "m.mlpackage");
        let zip_path = dir.path().join("m.zip");
        zip_tree(&root, &zip_path, "m.mlpackage/");

        // A live run's extraction (this process's, held by an open package) survives a sweep.
        let live = Package::open(&zip_path).unwrap();
        let live_dir = live.root().parent().unwrap().to_path_buf();
        assert!(live_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(UNZIP_PREFIX));
        assert_eq!(
            live_dir.parent().unwrap(),
            std::fs::canonicalize(std::env::temp_dir()).unwrap()
        );

        // Opening a folder input sweeps too; opening a zip input as well.
        for (tag, input) in [("folder", &root), ("zip", &zip_path)] {
            let stale = plant_stale_extraction(tag);
            let package = Package::open(input).unwrap();
            assert!(!stale.exists(), "{tag}: stale extraction swept");
            assert!(live_dir.is_dir(), "{tag}: live extraction kept");
            drop(package);
        }
        // Dropping the package removes its extraction.
        drop(live);
        assert!(!live_dir.exists());
    }

    #[test]
    fn recognizes_a_zip_by_its_magic_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "m.mlpackage");
        let zip_path = dir.path().join("archive.bin");
        zip_tree(&root, &zip_path, "m.mlpackage/");
        assert!(Package::open(&zip_path).unwrap().is_zip());
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, b"hello").unwrap();
        let err = Package::open(&other).unwrap_err();
        assert!(matches!(err, Error::Package { .. }), "{err}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    #[test]
    fn missing_pieces_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Package::open(&dir.path().join("nope.mlpackage")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing}");
        assert!(missing.to_string().contains("nope.mlpackage"));

        let root = make_package(dir.path(), "a.mlpackage");
        std::fs::remove_file(root.join("Manifest.json")).unwrap();
        let err = Package::open(&root).unwrap_err();
        assert!(
            matches!(&err, Error::Package { path, .. } if *path == root),
            "{err}"
        );
        assert!(err.to_string().contains("Manifest.json is missing"), "{err}");

        let root = make_package(dir.path(), "b.mlpackage");
        std::fs::remove_file(root.join("Data/com.apple.CoreML/model.mlmodel")).unwrap();
        let err = Package::open(&root).unwrap_err();
        assert!(
            matches!(&err, Error::Package { path, .. } if *path == root.join("Data/com.apple.CoreML/model.mlmodel")),
            "{err}"
        );

        let root = make_package(dir.path(), "c.mlpackage");
        std::fs::write(root.join("Manifest.json"), b"{}").unwrap();
        let err = Package::open(&root).unwrap_err();
        assert!(
            matches!(&err, Error::Manifest { path, .. } if *path == root.join("Manifest.json")),
            "{err}"
        );

        let root = make_package(dir.path(), "d.mlpackage");
        std::fs::remove_file(root.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
        std::fs::create_dir(root.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
        let err = Package::open(&root).unwrap_err();
        assert!(
            err.to_string()
                .contains("weight.bin: invalid package: is not a regular file"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn items_resolving_outside_data_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = make_package(dir.path(), "m.mlpackage");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("model.mlmodel"), MODEL_BYTES).unwrap();
        let core_ml = root.join("Data/com.apple.CoreML");
        std::fs::remove_dir_all(&core_ml).unwrap();
        std::os::unix::fs::symlink(&outside, &core_ml).unwrap();
        let err = Package::open(&root).unwrap_err();
        assert!(matches!(err, Error::Package { .. }), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");

        // A weight.bin that links out of the package is refused as well.
        let root = make_package(dir.path(), "w.mlpackage");
        let weight = root.join("Data/com.apple.CoreML/weights/weight.bin");
        std::fs::remove_file(&weight).unwrap();
        std::os::unix::fs::symlink(outside.join("model.mlmodel"), &weight).unwrap();
        let err = Package::open(&root).unwrap_err();
        assert!(
            err.to_string()
                .contains("weight.bin: invalid package: resolves to"),
            "{err}"
        );

        // A link that stays inside is fine.
        let root = make_package(dir.path(), "ok.mlpackage");
        let model = root.join("Data/com.apple.CoreML/model.mlmodel");
        std::fs::rename(&model, root.join("Data/real.mlmodel")).unwrap();
        std::os::unix::fs::symlink("../real.mlmodel", &model).unwrap();
        let package = Package::open(&root).unwrap();
        assert_eq!(std::fs::read(package.model_path()).unwrap(), MODEL_BYTES);
    }
}
