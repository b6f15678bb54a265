//! Fixtures shared by the package tests: a coremltools manifest, a package tree, zips of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::ZipWriter;

/// Written by coremltools 9.0 (`ct.convert(...).save(...)`) for a tiny linear model.
pub(crate) const COREMLTOOLS_MANIFEST: &str = r#"{
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {
        "3f94ae08-585c-4961-9117-2bfe176f1b5e": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        },
        "dba3c96a-dc83-4e7d-850f-773703c01120": {
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel"
        }
    },
    "rootModelIdentifier": "dba3c96a-dc83-4e7d-850f-773703c01120"
}
"#;

pub(crate) const MODEL_BYTES: &[u8] = b"model bytes";
pub(crate) const WEIGHT_BYTES: &[u8] = b"weight bytes";
pub(crate) const EXTRA_FILE: &str = "Data/com.apple.CoreML/extra/notes.txt";

/// Path under `Data/` of the extra item [`manifest_with_extra_item`] declares.
pub(crate) const EXTRA_ITEM: &str = "com.example/labels";

/// [`COREMLTOOLS_MANIFEST`] with one more item, a folder at `Data/<EXTRA_ITEM>`.
pub(crate) fn manifest_with_extra_item() -> String {
    let item = format!(
        r#""itemInfoEntries": {{
        "0a0a0a0a-0000-4000-8000-000000000000": {{
            "author": "com.example",
            "description": "Labels",
            "name": "labels",
            "path": "{EXTRA_ITEM}"
        }},"#
    );
    let manifest = COREMLTOOLS_MANIFEST.replacen(r#""itemInfoEntries": {"#, &item, 1);
    assert_ne!(manifest, COREMLTOOLS_MANIFEST);
    manifest
}

/// Creates `<dir>/<name>` as a coremltools-like package with one extra file that no manifest item
/// covers ([`EXTRA_FILE`]); returns its path.
pub(crate) fn make_package(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    let core_ml = root.join("Data/com.apple.CoreML");
    std::fs::create_dir_all(core_ml.join("weights")).unwrap();
    std::fs::write(root.join("Manifest.json"), COREMLTOOLS_MANIFEST).unwrap();
    std::fs::write(core_ml.join("model.mlmodel"), MODEL_BYTES).unwrap();
    std::fs::write(core_ml.join("weights/weight.bin"), WEIGHT_BYTES).unwrap();
    std::fs::create_dir_all(core_ml.join("extra")).unwrap();
    std::fs::write(root.join(EXTRA_FILE), b"notes").unwrap();
    root
}

/// A package as mlprune writes one, which `--force` may replace: [`make_package`] without the file
/// its manifest does not declare.
pub(crate) fn make_written_package(dir: &Path, name: &str) -> PathBuf {
    let root = make_package(dir, name);
    std::fs::remove_dir_all(root.join(EXTRA_FILE).parent().unwrap()).unwrap();
    root
}

/// Every file and directory under `root`: relative path → contents (`None` for directories). A
/// symbolic link is recorded as `-> target` (not followed), a FIFO or device as `<special>` (never
/// opened, so a FIFO cannot block the test).
pub(crate) fn read_tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(relative, Some(format!("-> {}", target.display()).into_bytes()));
            } else if kind.is_dir() {
                out.insert(relative, None);
                walk(root, &path, out);
            } else if !kind.is_file() {
                out.insert(relative, Some(b"<special>".to_vec()));
            } else {
                out.insert(relative, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Zips the tree at `root`, each entry named `<prefix><relative path>`.
pub(crate) fn zip_tree(root: &Path, zip_path: &Path, prefix: &str) {
    let mut writer = ZipWriter::new(std::fs::File::create(zip_path).unwrap());
    let options = SimpleFileOptions::default();
    for (relative, contents) in read_tree(root) {
        let name = format!("{prefix}{}", relative.to_str().unwrap());
        match contents {
            None => writer.add_directory(name, options).unwrap(),
            Some(bytes) => {
                writer.start_file(name, options).unwrap();
                writer.write_all(&bytes).unwrap();
            }
        }
    }
    writer.finish().unwrap();
}

/// Writes a zip of the given `(name, contents)` file entries.
pub(crate) fn zip_entries(zip_path: &Path, entries: &[(&str, &[u8])]) {
    let mut writer = ZipWriter::new(std::fs::File::create(zip_path).unwrap());
    for (name, bytes) in entries {
        writer.start_file(*name, SimpleFileOptions::default()).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap();
}

/// Names of everything directly in `dir`, sorted.
pub(crate) fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
