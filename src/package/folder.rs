//! Reading a package directory: the manifest, the root model and the weight file, each checked to
//! stay inside the package. Files are only ever opened for reading.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use super::paths::{confined, exists_no_follow};
use super::ShownPaths;
use crate::error::{Error, IoContext, Result};
use crate::open_file::{open_regular_or_err, Links};

pub(crate) const MANIFEST_FILE: &str = "Manifest.json";
pub(crate) const DATA_DIR: &str = "Data";
pub(crate) const WEIGHT_FILE: &str = "weight.bin";
/// A real manifest is under a kilobyte (one item per file the package declares); refuse to load an
/// absurd one into memory. 16 MiB of `[0,0,…]` decoded to 1.8 GB (issue 18).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What a valid package directory holds, as needed by later stages.
#[derive(Debug)]
pub(crate) struct FolderLayout {
    pub manifest: Manifest,
    /// `Data/<weights>/weight.bin` when it exists (it is absent for models without blobs).
    pub weight_file: Option<PathBuf>,
}

/// Validates the package at `root` (canonical). Every item that exists must resolve inside
/// `Data/`; the root model must be a regular file; the weight file, if any, too.
pub(crate) fn read_folder(root: &Path, shown: &ShownPaths) -> Result<FolderLayout> {
    let manifest_path = root.join(MANIFEST_FILE);
    if !exists_no_follow(&manifest_path) {
        return Err(package_error(shown.show(root), "Manifest.json is missing"));
    }
    let bytes = read_confined_file(&manifest_path, root, shown)?;
    let manifest = Manifest::parse(&bytes, &shown.show(&manifest_path))?;

    let data_path = root.join(DATA_DIR);
    if !exists_no_follow(&data_path) {
        return Err(package_error(shown.show(root), "the Data directory is missing"));
    }
    let data = confined(&data_path, root, &shown.show(&data_path))?;
    if !data.is_dir() {
        return Err(package_error(shown.show(&data_path), "is not a directory"));
    }

    for (id, relative) in manifest.item_paths() {
        let item = data_path.join(&relative);
        if exists_no_follow(&item) {
            confined(&item, &data, &shown.show(&item)).map_err(|e| match e {
                Error::Package { path, reason } => Error::Package {
                    path,
                    reason: format!("item '{id}' {reason}"),
                },
                other => other,
            })?;
        }
    }

    let model = data_path.join(manifest.root_model_relative());
    if !exists_no_follow(&model) {
        return Err(package_error(
            shown.show(&model),
            "the root model file is missing",
        ));
    }
    require_regular_file(&model, &data, shown)?;

    let weight = data_path.join(manifest.weights_relative()).join(WEIGHT_FILE);
    let weight_file = if exists_no_follow(&weight) {
        require_regular_file(&weight, &data, shown)?;
        Some(weight)
    } else {
        None
    };
    Ok(FolderLayout {
        manifest,
        weight_file,
    })
}

/// Checks `path` resolves inside `base` to a regular file.
fn require_regular_file(path: &Path, base: &Path, shown: &ShownPaths) -> Result<PathBuf> {
    let resolved = confined(path, base, &shown.show(path))?;
    let meta = std::fs::metadata(&resolved).at(shown.show(path))?;
    if !meta.is_file() {
        return Err(package_error(shown.show(path), "is not a regular file"));
    }
    Ok(resolved)
}

/// Reads a small file that must resolve inside `base`.
fn read_confined_file(path: &Path, base: &Path, shown: &ShownPaths) -> Result<Vec<u8>> {
    let resolved = require_regular_file(path, base, shown)?;
    // Checked again on the handle: the path may name a FIFO by now.
    let file = open_regular_or_err(&resolved, Links::NoFollow).at(shown.show(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .at(shown.show(path))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::Manifest {
            path: shown.show(path),
            reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

pub(crate) fn package_error(path: PathBuf, reason: &str) -> Error {
    Error::Package {
        path,
        reason: reason.to_owned(),
    }
}
