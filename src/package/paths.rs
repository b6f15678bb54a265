//! Path confinement: the checks that keep every path a package names inside the package.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

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

/// Whether `path` is, or lies inside, `guarded` (both canonical, or where they would be): by path,
/// then, where `guarded` exists, by identity: whether `path` or a folder it lies in is the very
/// file or folder `guarded` is, whatever their names. A bind mount shows one folder under two
/// paths, which comparing paths cannot see.
pub(crate) fn lies_within(path: &Path, guarded: &Path) -> bool {
    if path.starts_with(guarded) {
        return true;
    }
    let Some(target) = file_identity(guarded) else {
        return false;
    };
    path.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .any(|a| file_identity(a) == Some(target))
}

/// Whether `root` is, or (a folder) holds at any depth, the file of identity `id`: another hard
/// link to it. Links inside are not followed; the walk stops at `MAX_FILES` entries.
pub(crate) fn tree_holds(root: &Path, id: (u64, u64)) -> bool {
    const MAX_FILES: usize = 100_000;
    let mut pending = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        seen += 1;
        if seen > MAX_FILES {
            return false;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() && file_identity(&path) == Some(id) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
