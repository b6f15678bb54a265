//! Zipped inputs: only what the package uses is extracted, within the disk it declares, and no
//! extraction outlives its run (issue 18, item 8).
//!
//! Every CLI run gets a private TMPDIR, so "nothing left behind" covers the extraction folder too.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::*;

const WEIGHTS: &str = "linear.mlpackage/Data/com.apple.CoreML/weights";
const GIB: u64 = 1 << 30;

/// A case whose input is `in.zip`: the linear fixture under `linear.mlpackage/`, then one deflated
/// all-zero entry per `(name, size)` (1 GiB deflates to about 1 MiB in 1-2 s). With `large_weight_bin`,
/// weight.bin is written with zip64 size fields, so its declared size can be patched past 4 GiB.
fn zip_case(zeros: &[(&str, u64)], large_weight_bin: bool) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&input).unwrap());
    let deflated =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in fixture_entries() {
        let large = large_weight_bin && name.ends_with("weight.bin");
        w.start_file(name, deflated.large_file(large)).unwrap();
        w.write_all(&bytes).unwrap();
    }
    for &(name, size) in zeros {
        w.start_file(name, deflated.large_file(size >= u64::from(u32::MAX)))
            .unwrap();
        std::io::copy(&mut std::io::repeat(0).take(size), &mut w).unwrap();
    }
    w.finish().unwrap();
    Case { tmp, input }
}

/// Sets the declared uncompressed size of zip entry `name` to `declared` in its local header and
/// central directory record, both written with zip64 extra fields (`large_file`).
fn declare_zip64_size(zip: &mut [u8], name: &str, declared: u64) {
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let (name_len_at, extra_len_at, header) = match &zip[i..i + 4] {
            b"PK\x03\x04" => (26, 28, 30),
            b"PK\x01\x02" => (28, 30, 46),
            _ => continue,
        };
        let u16_at = |at: usize| u16::from_le_bytes([zip[i + at], zip[i + at + 1]]) as usize;
        let (name_len, extra_len) = (u16_at(name_len_at), u16_at(extra_len_at));
        if zip.get(i + header..i + header + name_len) != Some(name.as_bytes()) {
            continue;
        }
        // Extra fields: (id u16, size u16, data); zip64 is id 1, uncompressed size first.
        let mut at = i + header + name_len;
        let end = at + extra_len;
        while at + 4 <= end {
            let id = u16::from_le_bytes([zip[at], zip[at + 1]]);
            let size = u16::from_le_bytes([zip[at + 2], zip[at + 3]]) as usize;
            if id == 1 {
                zip[at + 4..at + 12].copy_from_slice(&declared.to_le_bytes());
                patched += 1;
                break;
            }
            at += 4 + size;
        }
    }
    assert_eq!(
        patched, 2,
        "zip64 fields of {name} in the local and central headers"
    );
}

/// OUTPUT holds the package's own files and nothing else: unused entries are not carried over.
fn assert_only_package_files(output: &Path) {
    let written: Vec<PathBuf> = snapshot(output).into_keys().collect();
    assert_eq!(
        written,
        [
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin",
            "Manifest.json",
        ]
        .map(PathBuf::from),
        "the unused entries are not carried to the output"
    );
}

/// A private, initially empty TMPDIR for CLI runs.
fn private_tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `mlprune args...` with TMPDIR at `tmpdir`, under a file-size limit of `max_file_kib` KiB when
/// given: writing a larger file kills it with SIGXFSZ, which shows up as a failed run.
fn mlprune(tmpdir: &Path, max_file_kib: Option<u64>, args: &[&OsStr]) -> Output {
    let mut command = match max_file_kib {
        // `ulimit -f` counts 512-byte blocks in POSIX sh, 1024-byte ones in bash: ask for twice
        // the KiB so the limit is at least `max_file_kib` either way.
        Some(kib) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -f {}; exec \"$0\" \"$@\"", kib * 2))
                .arg(env!("CARGO_BIN_EXE_mlprune"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_mlprune")),
    };
    command.env("TMPDIR", tmpdir).args(args).output().unwrap()
}

fn prune_args<'a>(input: &'a Path, output: &'a Path) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec!["prune".as_ref(), input.as_os_str(), output.as_os_str()];
    args.extend(PRUNE_ARGS.iter().map(OsStr::new));
    args
}

#[cfg(unix)]
#[test]
fn a_large_unused_entry_is_neither_extracted_nor_carried() {
    // 1 GiB of zeros next to the items (and one outside Data/): never decompressed. The CLI runs
    // under a 32 MiB file-size limit, so extracting either would kill it.
    let unused = [
        ("linear.mlpackage/Data/unused.bin", GIB),
        ("linear.mlpackage/unused-too.bin", 4096),
    ];
    let case = zip_case(&unused, false);
    let input_bytes = std::fs::read(&case.input).unwrap();
    assert!(input_bytes.len() < 2 << 20, "the archive itself stays small");
    let tmpdir = private_tmpdir();

    let o = mlprune(
        tmpdir.path(),
        Some(32 << 10),
        &["inspect".as_ref(), case.input.as_os_str()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(names_in(tmpdir.path()).is_empty(), "extraction removed");

    let output = case.output();
    let o = mlprune(tmpdir.path(), Some(32 << 10), &prune_args(&case.input, &output));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(names_in(tmpdir.path()).is_empty(), "extraction removed");
    assert_only_package_files(&output);
    assert_nothing_left(&case, &["in.zip", "out.mlpackage"]);
    assert_eq!(
        std::fs::read(&case.input).unwrap(),
        input_bytes,
        "input untouched"
    );

    // The library agrees (its own temporary directory).
    std::fs::remove_dir_all(&output).unwrap();
    mlprune::inspect::inspect(&case.input).unwrap();
    engine::prune(&prune_job(&case.input, &output, false)).unwrap();
    assert!(!output.join("Data/unused.bin").exists() && !output.join("unused-too.bin").exists());
}

#[cfg(unix)]
#[test]
fn a_folder_input_leaves_the_same_files_out() {
    // The same package as a folder, with the same unused files: the same output.
    let case = Case::linear();
    std::fs::write(case.input.join("Data/unused.bin"), b"not in any item").unwrap();
    std::fs::write(case.input.join("unused-too.bin"), b"nor this").unwrap();
    let before = snapshot(&case.input);
    let tmpdir = private_tmpdir();
    let output = case.output();
    let o = mlprune(tmpdir.path(), None, &prune_args(&case.input, &output));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_only_package_files(&output);
    assert!(names_in(tmpdir.path()).is_empty());
    assert_nothing_left(&case, &["in.mlpackage", "out.mlpackage"]);
    assert_eq!(snapshot(&case.input), before, "input untouched");
}

#[test]
fn used_entries_declaring_more_than_the_free_space_are_refused_before_writing() {
    // weight.bin's headers claim 1 PiB: more than any temporary filesystem has free. Refused from
    // the headers alone, before a byte is extracted.
    const DECLARED: u64 = 1 << 50;
    let case = zip_case(&[], true);
    let mut bytes = std::fs::read(&case.input).unwrap();
    declare_zip64_size(&mut bytes, &format!("{WEIGHTS}/weight.bin"), DECLARED);
    std::fs::write(&case.input, &bytes).unwrap();

    let no_space = |e: &Error| {
        matches!(e, Error::Io { path, source }
            if *path == case.input && source.kind() == std::io::ErrorKind::StorageFull)
    };
    let err = mlprune::inspect::inspect(&case.input).unwrap_err();
    assert!(no_space(&err), "{err:?}");
    let err = engine::prune(&prune_job(&case.input, &case.output(), false)).unwrap_err();
    assert!(no_space(&err), "{err:?}");

    let tmpdir = private_tmpdir();
    for args in [
        vec!["inspect".as_ref(), case.input.as_os_str()],
        prune_args(&case.input, &case.output()),
    ] {
        let o = mlprune(tmpdir.path(), None, &args);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        // The bytes needed: the claimed weight.bin, the manifest and the model.
        let fixture = root().join("tests/fixtures/linear_fp16_ios18.mlpackage");
        let needed = DECLARED
            + std::fs::metadata(fixture.join("Manifest.json")).unwrap().len()
            + std::fs::metadata(fixture.join(CORE_ML).join("model.mlmodel"))
                .unwrap()
                .len();
        assert_cli_error(
            &o,
            1,
            &[
                "in.zip",
                &format!("needs {needed} bytes"),
                "bytes are available",
                "TMPDIR",
            ],
        );
        assert!(
            stderr.contains(tmpdir.path().to_str().unwrap()),
            "names the folder: {stderr}"
        );
        assert!(names_in(tmpdir.path()).is_empty(), "nothing left in TMPDIR");
    }
    assert_nothing_left(&case, &["in.zip"]);
    assert_eq!(std::fs::read(&case.input).unwrap(), bytes, "input untouched");
}

/// Starts `mlprune inspect` on `input` with TMPDIR at `tmpdir` and waits until its extraction (a
/// folder not in `tmpdir` before) has begun writing `file` (relative to the package root);
/// returns the child and the folder.
fn start_extraction(tmpdir: &Path, input: &Path, file: &str) -> (Child, PathBuf) {
    let before = names_in(tmpdir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlprune"))
        .env("TMPDIR", tmpdir)
        .arg("inspect")
        .arg(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let found = std::fs::read_dir(tmpdir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !before.contains(&e.file_name().to_string_lossy().into_owned()))
            .map(|e| e.path())
            .find(|p| p.join("linear.mlpackage").join(file).exists());
        if let Some(folder) = found {
            return (child, folder);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("mlprune ended ({status}) before extracting {file}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "extraction never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[cfg(unix)]
#[test]
fn an_extraction_killed_mid_way_is_swept_by_the_next_run_but_a_live_one_is_not() {
    use std::os::unix::process::ExitStatusExt;
    // A used entry large enough that extracting it takes a while.
    let big = "Data/com.apple.CoreML/weights/big.bin";
    let case = zip_case(&[(&format!("linear.mlpackage/{big}"), GIB)], false);
    let input_bytes = std::fs::read(&case.input).unwrap();
    let tmpdir = private_tmpdir();
    let folder_input = Case::linear();
    let inspect_folder: [&OsStr; 2] = ["inspect".as_ref(), folder_input.input.as_os_str()];

    // SIGKILL: no handler runs, the half-written extraction stays behind...
    let (mut killed, stale) = start_extraction(tmpdir.path(), &case.input, big);
    killed.kill().unwrap();
    assert_eq!(killed.wait().unwrap().signal(), Some(9));
    let stale_name = stale.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stale_name.starts_with(".mlprune-unzip-"), "{stale_name}");
    assert_eq!(
        names_in(tmpdir.path()),
        std::slice::from_ref(&stale_name),
        "left by the killed run"
    );

    // ...until the next run sweeps it: here another extraction, held still with SIGSTOP so that
    // it cannot finish and remove its own folder.
    let (mut live, live_folder) = start_extraction(tmpdir.path(), &case.input, big);
    signal(&live, "STOP");
    assert!(
        live.try_wait().unwrap().is_none(),
        "still extracting when stopped"
    );
    let live_name = live_folder.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        names_in(tmpdir.path()),
        std::slice::from_ref(&live_name),
        "stale extraction swept"
    );

    // A run with a folder input sweeps too, but leaves the live run's extraction (locked) and a
    // folder of another prefix alone.
    std::fs::create_dir(tmpdir.path().join(&stale_name)).unwrap();
    std::fs::create_dir(tmpdir.path().join("mlprune-unzip-not-ours")).unwrap();
    let o = mlprune(tmpdir.path(), None, &inspect_folder);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut expected = vec![live_name, "mlprune-unzip-not-ours".to_owned()];
    expected.sort();
    assert_eq!(
        names_in(tmpdir.path()),
        expected,
        "only the unlocked extraction swept"
    );
    assert!(
        live_folder.join("linear.mlpackage/Manifest.json").is_file(),
        "live one whole"
    );
    std::fs::remove_dir(tmpdir.path().join("mlprune-unzip-not-ours")).unwrap();

    // SIGTERM (delivered once it runs again): the handler removes the extraction and exits.
    signal(&live, "TERM");
    signal(&live, "CONT");
    let o = live.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(128 + 15),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(names_in(tmpdir.path()).is_empty(), "nothing left in TMPDIR");
    assert_nothing_left(&case, &["in.zip"]);
    assert_eq!(
        std::fs::read(&case.input).unwrap(),
        input_bytes,
        "input untouched"
    );
}

#[test]
fn a_file_and_a_folder_of_one_name_are_refused_naming_the_entry() {
    // `weights` as a file, then `weights/weight.bin`: the error named the extraction folder,
    // already removed when the user read it.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&input).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let (weight_bin, rest): (Vec<_>, Vec<_>) = fixture_entries()
        .into_iter()
        .partition(|(name, _)| name.ends_with("weight.bin"));
    for (name, bytes) in rest {
        w.start_file(name, options).unwrap();
        w.write_all(&bytes).unwrap();
    }
    w.start_file(WEIGHTS, options).unwrap();
    w.write_all(b"abc").unwrap();
    for (name, bytes) in weight_bin {
        w.start_file(name, options).unwrap();
        w.write_all(&bytes).unwrap();
    }
    w.finish().unwrap();
    let case = Case { tmp, input };
    let tmpdir = private_tmpdir();
    let output = case.output();
    let o = mlprune(tmpdir.path(), None, &prune_args(&case.input, &output));
    assert_cli_error(&o, 1, &["in.zip", "weights/weight.bin", "cannot be extracted"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains(".mlprune-unzip-"));
    assert!(names_in(tmpdir.path()).is_empty(), "nothing left in TMPDIR");
    assert_nothing_left(&case, &["in.zip"]);
}

/// A zip holding the package at its root is extracted into a folder named after the archive;
/// with the suffix added, an archive name of 246 to 255 bytes (valid) made a folder name past
/// the system's 255 bytes, and the run failed naming the extraction folder.
#[test]
fn an_archive_name_of_255_bytes_with_the_package_at_its_root_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("{}.zip", "a".repeat(251));
    assert_eq!(name.len(), 255);
    let input = tmp.path().join(&name);
    let mut w = zip::ZipWriter::new(std::fs::File::create(&input).unwrap());
    for (entry, bytes) in fixture_entries() {
        let at_root = entry.strip_prefix("linear.mlpackage/").unwrap();
        w.start_file(at_root, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&bytes).unwrap();
    }
    w.finish().unwrap();
    let case = Case { tmp, input };
    let tmpdir = private_tmpdir();
    let o = mlprune(tmpdir.path(), None, &["inspect".as_ref(), case.input.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let output = case.output();
    let o = mlprune(tmpdir.path(), None, &prune_args(&case.input, &output));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_only_package_files(&output);
    assert!(names_in(tmpdir.path()).is_empty(), "nothing left in TMPDIR");
}

/// A zip listing millions of empty entries was decoded whole before the entry cap refused it:
/// about 200 bytes of memory an entry, 434 MB for 2,000,000 entries in a 100 MB zip. Listing
/// now stops once it has read more central headers than twice the cap (a few bytes of slack),
/// so the refusal names the listing, not the total it never counted.
#[test]
fn a_zip_listing_far_more_entries_than_the_cap_is_refused_while_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.zip");
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(std::fs::File::create(&input).unwrap()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in fixture_entries() {
        w.start_file(name, stored).unwrap();
        w.write_all(&bytes).unwrap();
    }
    for i in 0..210_000 {
        w.start_file(format!("u/{i}"), stored).unwrap();
    }
    w.finish().unwrap();
    let case = Case { tmp, input };
    let before = snapshot(&case.input);
    let tmpdir = private_tmpdir();
    for args in [
        vec!["inspect".as_ref(), case.input.as_os_str()],
        prune_args(&case.input, &case.output()),
    ] {
        let o = mlprune(tmpdir.path(), None, &args);
        assert_cli_error(&o, 1, &["in.zip", "lists more entries than the limit of 100000"]);
        assert!(names_in(tmpdir.path()).is_empty(), "nothing left in TMPDIR");
    }
    assert_nothing_left(&case, &["in.zip"]);
    assert_eq!(snapshot(&case.input), before, "input untouched");
}

/// A local write failure while extracting (here a file-size limit; a full disk or EIO alike) was
/// reported as "in.zip: invalid zip archive: entry '…': <private extraction folder>/…: File too
/// large", blaming a valid input and naming a folder already removed (red-team, round 5). It
/// names the cause and the temporary directory now.
#[cfg(unix)]
#[test]
fn a_write_failure_while_extracting_is_not_called_an_invalid_archive() {
    let case = zip_case(&[(&format!("{WEIGHTS}/big.bin"), 1 << 20)], false);
    let tmpdir = private_tmpdir();
    let shown_tmpdir = tmpdir.path().to_string_lossy().into_owned();
    let o = mlprune(
        tmpdir.path(),
        Some(64),
        &["inspect".as_ref(), case.input.as_os_str()],
    );
    assert_cli_error(
        &o,
        1,
        &["cannot extract", "in.zip", &shown_tmpdir, "File too large"],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("invalid zip archive"), "{stderr}");
    assert!(!stderr.contains(".mlprune-unzip-"), "{stderr}");
    assert!(names_in(tmpdir.path()).is_empty(), "extraction removed");
}

/// A zip input needs the temporary folder: one that cannot be used is the environment's fault,
/// a usage error naming it and the archive, where the line named a hidden folder in it
/// (`/nonexistent/.mlprune-unzip-<hex>: No such file or directory`, exit 1).
#[test]
fn an_unusable_tmpdir_for_a_zip_input_is_a_usage_error_naming_it() {
    let case = zip_case(&[], false);
    let missing = case.tmp.path().join("no such tmpdir");
    let output = case.tmp.path().join("out.mlpackage");
    let o = mlprune(&missing, None, &prune_args(&case.input, &output));
    assert_cli_error(&o, 2, &["no such tmpdir", "(TMPDIR)", "in.zip"]);
    let line = String::from_utf8_lossy(&o.stderr);
    assert!(!line.contains(".mlprune-unzip"), "{line}");
    assert_nothing_left(&case, &["in.zip"]);
}

/// The temporary folder renamed while a zip input is extracted into it: the run fails, naming
/// the archive, not the hidden extraction folder (red team, session 20), and what it extracted
/// is removed from where the folder went.
#[cfg(unix)]
#[test]
fn a_tmpdir_renamed_mid_extraction_fails_naming_the_archive_and_leaves_nothing() {
    let big = "Data/com.apple.CoreML/weights/big.bin";
    let case = zip_case(&[(&format!("linear.mlpackage/{big}"), GIB)], false);
    let tmpdir = case.tmp.path().join("t");
    std::fs::create_dir(&tmpdir).unwrap();
    let (child, _) = start_extraction(&tmpdir, &case.input, big);
    signal(&child, "STOP");
    let moved = case.tmp.path().join("t2");
    std::fs::rename(&tmpdir, &moved).unwrap();
    signal(&child, "CONT");
    let o = child.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&o.stderr);
    assert_cli_error(&o, 1, &["in.zip"]);
    assert!(!line.contains(".mlprune-unzip"), "{line}");
    assert!(names_in(&moved).is_empty(), "nothing left in the moved TMPDIR");
}
