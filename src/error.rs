//! The one error type of mlprune. Every variant names what the user needs to find the problem: the
//! file, and where known the tensor or byte offset. `Display` is a single line so the CLI can print
//! it as is.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The package structure is wrong: missing items, paths escaping the package, not a package.
    #[error("{}: invalid package: {reason}", path.display())]
    Package { path: PathBuf, reason: String },
    /// `Manifest.json` is malformed or inconsistent.
    #[error("{}: invalid manifest: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    /// A zipped package could not be read or written.
    #[error("{}: invalid zip archive: {reason}", path.display())]
    Zip { path: PathBuf, reason: String },
    /// A zipped input could not be extracted for a local reason (a full disk, a file-size limit):
    /// the archive is fine, the temporary directory (`TMPDIR`) is what to act on.
    #[error("cannot extract {} to the temporary folder {}: {source}", archive.display(), temp_dir.display())]
    Extract {
        archive: PathBuf,
        temp_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `model.mlmodel` could not be decoded, or is not something mlprune can rewrite safely.
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    /// A malformed blob in `weight.bin`; `offset` is the byte offset of the blob metadata record.
    #[error("{}: blob at offset {offset}: {reason}", path.display())]
    Blob {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A weight tensor whose declared type, shape or data disagree.
    #[error("tensor '{tensor}': {reason}")]
    Tensor { tensor: String, reason: String },
    /// The MIL program graph is inconsistent (dangling names, cycles, ...).
    #[error("model graph: {0}")]
    Graph(String),
    /// The pruning configuration is invalid (mirrors coremltools' validation messages).
    #[error("config: {0}")]
    Config(String),
    /// The command line is unusable as given (e.g. output equals input).
    #[error("{0}")]
    Usage(String),
    /// The GPU failed: no usable adapter when one was required, a device error (validation, out of
    /// memory, device lost) or a failed buffer mapping.
    #[error("gpu: {0}")]
    Gpu(String),
    /// The model is valid but uses something mlprune does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The caller cancelled the run (`PruneJob::cancel`: Ctrl-C in the Python bindings). Nothing was
    /// written.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Exit code for the CLI: 2 for usage and configuration errors, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) => 2,
            // 128 + SIGINT, as a shell reports a run stopped by Ctrl-C.
            Error::Interrupted => 130,
            _ => 1,
        }
    }

    /// The message as the CLI prints it: always one line. Names and reasons can carry text from the
    /// input (a manifest string, a tensor name, a path), so control characters such as newlines are
    /// escaped rather than allowed to split the line or forge another one.
    pub fn one_line(&self) -> String {
        escape_control(&with_user_names(self.to_string())).into_owned()
    }

    /// Shorthand for wrapping an `io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn tensor(tensor: impl AsRef<str>, reason: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.as_ref().to_owned(),
            reason: reason.into(),
        }
    }
}

/// The hidden scratch names of this run (`.out.mlpackage.mlprune-tmp-<16 hex>`) and the names the
/// user chose that they stand for (`out.mlpackage`).
static USER_NAMES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// How many scratch names [`show_scratch_as`] remembers.
const REMEMBERED_USER_NAMES: usize = 256;

/// Makes error lines name `user_name` (OUTPUT, the report) where a system error names the scratch
/// path `scratch_name` it is written under: the user never chose that path, and it is gone by the
/// time the line is printed. The scratch name is random, so no other text matches it.
pub(crate) fn show_scratch_as(scratch_name: &std::ffi::OsStr, user_name: &std::ffi::OsStr) {
    let mut names = USER_NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A process that runs many prunes (the Python module) keeps the latest: a run has two or three
    // scratch names, and its errors are shown before many more runs start.
    if names.len() >= REMEMBERED_USER_NAMES {
        names.remove(0);
    }
    names.push((
        scratch_name.to_string_lossy().into_owned(),
        user_name.to_string_lossy().into_owned(),
    ));
}

fn with_user_names(mut text: String) -> String {
    let names = USER_NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (scratch, user) in names.iter() {
        if text.contains(scratch.as_str()) {
            text = text.replace(scratch.as_str(), user);
        }
    }
    text
}

/// Writes `text` to stderr. A stderr that cannot be written (`2>/dev/full`, a closed pipe) loses
/// the text but not the run: `eprintln!` panics there, and the process would exit 101 after a
/// successful prune.
pub fn write_stderr(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `text` with every control character (C0, DEL, C1: newlines, ESC, BEL, CSI, ...) and every
/// bidirectional formatting character (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069, which reorder
/// what a terminal shows: "Trojan Source") written as its Rust escape (`\n`, `\u{1b}`, `\u{202e}`),
/// so that text taken from the input can neither split a line, drive the terminal, nor disguise
/// itself; likewise the Unicode line and paragraph separators and the byte-order mark. Errors
/// ([`Error::one_line`]), notices and `mlprune inspect`'s table all go through it.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(needs_escape) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if needs_escape(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_format(c) || is_break_or_invisible(c)
}

/// The line and paragraph separators, which editors, JavaScript and Python's `splitlines` take
/// for line breaks, and the byte-order mark, which shows as nothing.
pub(crate) fn is_break_or_invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// Unicode's bidirectional formatting characters (marks, embeddings, overrides, isolates).
pub(crate) fn is_bidi_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Adds the path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long-lived process keeps the latest scratch names only, and they still name their paths.
    #[test]
    fn the_scratch_names_remembered_are_the_latest_few() {
        for run in 0..REMEMBERED_USER_NAMES + 10 {
            show_scratch_as(
                std::ffi::OsStr::new(&format!(".o{run}.mlprune-tmp-remembered")),
                std::ffi::OsStr::new(&format!("o{run}")),
            );
        }
        let count = USER_NAMES.lock().unwrap().len();
        assert!(count <= REMEMBERED_USER_NAMES, "{count}");
        let last = REMEMBERED_USER_NAMES + 9;
        assert_eq!(
            with_user_names(format!("/d/.o{last}.mlprune-tmp-remembered/x: full")),
            format!("/d/o{last}/x: full")
        );
    }

    #[test]
    fn one_line_escapes_control_characters_from_the_input() {
        let e = Error::Manifest {
            path: "m/Manifest.json".into(),
            reason: "fileFormatVersion '1.0\r\nmlprune: error: forged\t' is not major.minor.patch".into(),
        };
        assert_eq!(
            e.one_line(),
            "m/Manifest.json: invalid manifest: fileFormatVersion '1.0\\r\\nmlprune: error: forged\\t' \
             is not major.minor.patch"
        );
        let spoof = Error::tensor("w\u{202E}txt.exe\u{2066}", "bad");
        assert_eq!(spoof.one_line(), "tensor 'w\\u{202e}txt.exe\\u{2066}': bad");
        let plain = Error::Usage("output o exists".into());
        assert_eq!(plain.one_line(), plain.to_string());
    }
}
