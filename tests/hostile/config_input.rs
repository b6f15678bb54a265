//! Config files: special files, size and depth caps, lookups, encodings, NaN.

#[allow(unused_imports)]
use crate::*;

use std::ffi::OsStr;
use std::process::Stdio;

use mlprune::config::OptimizationConfig;

/// Runs the CLI, killing it if it is still running after `limit` (then the test fails), so a hang
/// cannot hang the test suite.
fn cli_bounded(args: &[&OsStr], limit: Duration) -> Output {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlprune"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let o = child.wait_with_output().unwrap();
            panic!(
                "mlprune {args:?} still running after {limit:?}; killed. stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `mlprune prune IN OUT --config CONFIG [extra]`, bounded to 10 s.
fn prune_with_config(case: &Case, config: &Path, extra: &[&str]) -> Output {
    let output = case.output();
    let mut args: Vec<&OsStr> = vec![
        "prune".as_ref(),
        case.input.as_os_str(),
        output.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    cli_bounded(&args, Duration::from_secs(10))
}

/// The config-error contract: exit 2, one `mlprune: error: config: ` line naming `names`.
fn assert_config_error(o: &Output, names: &[&str]) {
    assert_cli_error(o, 2, names);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.starts_with("mlprune: error: config: "), "{stderr}");
}

/// The library refuses `config` with `Error::Config` naming the file and `reason`.
fn assert_library_config_error(config: &Path, reason: &str) {
    match OptimizationConfig::from_file(config) {
        Err(Error::Config(m)) => {
            assert!(
                m.starts_with(&config.display().to_string()),
                "names the file: {m}"
            );
            assert!(m.contains(reason), "{m}");
        }
        other => panic!("{}: expected Error::Config, got {other:?}", config.display()),
    }
}

/// Everything a refused config must leave as it was: no OUTPUT, no temporary, the input intact.
fn assert_untouched(case: &Case, before: &BTreeMap<PathBuf, Vec<u8>>, kept: &[&str]) {
    let mut expected = vec!["in.mlpackage"];
    expected.extend_from_slice(kept);
    assert_nothing_left(case, &expected);
    assert_eq!(&snapshot(&case.input), before, "input unchanged");
}

#[cfg(unix)]
#[test]
fn fifo_and_other_special_files_are_refused_at_once() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    let fifo = case.tmp.path().join("fifo.json");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let link = case.tmp.path().join("link.yaml");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let dir = case.tmp.path().join("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let kept = ["fifo.json", "link.yaml", "dir.json"];

    // Library, in a thread: a blocking open would never return, so wait with a bound.
    let (tx, rx) = std::sync::mpsc::channel();
    let (f, l) = (fifo.clone(), link.clone());
    std::thread::spawn(move || {
        let r = [f, l].map(|p| {
            OptimizationConfig::from_file(&p)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        tx.send(r).unwrap();
    });
    let results = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("from_file on a FIFO returns");
    for r in results {
        let m = r.expect_err("a FIFO is refused");
        assert!(
            m.starts_with("config: ") && (m.contains("fifo.json") || m.contains("link.yaml")),
            "{m}"
        );
        assert!(
            m.contains("is a FIFO; a config must be a regular JSON or YAML file"),
            "{m}"
        );
    }

    for (config, name, kind) in [
        (&fifo, "fifo.json", "is a FIFO"),
        (&link, "link.yaml", "is a FIFO"),
        (&dir, "dir.json", "is a directory"),
        (&PathBuf::from("/dev/zero"), "/dev/zero", "is a character device"),
    ] {
        assert_library_config_error(config, kind);
        let started = Instant::now();
        let o = prune_with_config(&case, config, &[]);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_config_error(&o, &[name, kind]);
        assert_untouched(&case, &before, &kept);
    }
}

#[test]
fn oversized_config_is_refused_before_reading_it() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    // Sparse: 16 MiB + 1 byte of zeros costs no disk.
    let big = case.tmp.path().join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(mlprune::config::source::MAX_CONFIG_BYTES + 1).unwrap();
    drop(f);
    assert_library_config_error(&big, "larger than 16 MiB");
    let o = prune_with_config(&case, &big, &[]);
    assert_config_error(&o, &["big.yaml", "larger than 16 MiB"]);
    assert_untouched(&case, &before, &["big.yaml"]);
    assert_eq!(
        std::fs::metadata(&big).unwrap().len(),
        mlprune::config::source::MAX_CONFIG_BYTES + 1
    );
}

#[test]
fn deeply_nested_configs_are_refused_before_parsing() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    const N: usize = 100_000;
    let head = "config_type: OpThresholdPrunerConfig\nglobal_config: ";
    let cases = [
        (
            "seq.yaml",
            2,
            format!("{head}{}{}\n", "[".repeat(N), "]".repeat(N)),
        ),
        (
            "map.yaml",
            2,
            format!("{head}{}1{}\n", "{a: ".repeat(N), "}".repeat(N)),
        ),
        (
            "deep.json",
            1,
            format!(
                "{{\"config_type\": \"OpThresholdPrunerConfig\", \"global_config\": {}1{}}}",
                "{\"a\": ".repeat(N),
                "}".repeat(N)
            ),
        ),
        // No known extension: JSON first, then YAML.
        (
            "deep.cfg",
            2,
            format!("{head}{}{}\n", "[".repeat(N), "]".repeat(N)),
        ),
        ("dashes.yaml", 3, format!("{head}\n  {}1\n", "- ".repeat(N))),
    ];
    let names: Vec<&str> = cases.iter().map(|(n, _, _)| *n).collect();
    for (name, _, text) in &cases {
        let path = case.tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
    }
    for (name, line, text) in &cases {
        let path = case.tmp.path().join(name);
        let started = Instant::now();
        assert_library_config_error(
            &path,
            &format!("nested more than 128 levels deep at line {line},"),
        );
        // The parsers never see it: the same text through the string entry points.
        let direct = if name.ends_with(".json") {
            OptimizationConfig::from_json_str(text)
        } else {
            OptimizationConfig::from_yaml_str(text)
        };
        assert!(matches!(direct, Err(Error::Config(m)) if m.contains("nested more than 128")));
        let o = prune_with_config(&case, &path, &[]);
        assert_config_error(
            &o,
            &[name, "nested more than 128 levels deep", "refused before parsing"],
        );
        // Before the pre-scan, 100 000 levels took 92 s (sequences) to 158 s (mappings).
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: {:?}",
            started.elapsed()
        );
        assert_untouched(&case, &before, &names);
    }
}

/// 60 000 entries at one level, the last of them invalid when `bad`.
fn many_op_types(bad: bool) -> String {
    let mut s = String::from(
        "{\"config_type\": \"OpThresholdPrunerConfig\", \"global_config\": {\"threshold\": 0.01}, \
         \"op_type_configs\": {",
    );
    for i in 0..60_000 {
        let t = if bad && i == 59_999 { "-1" } else { "0.5" };
        s.push_str(&format!("\"type_{i}\": {{\"threshold\": {t}}}, "));
    }
    s.push_str("\"type_7\": null}}");
    s
}

#[test]
fn sixty_thousand_op_entries_are_read_in_linear_time() {
    // Before, each key was checked against every earlier one: 60 000 entries took 447 s.
    let case = Case::linear();
    let before = snapshot(&case.input);
    let good = case.tmp.path().join("many.json");
    std::fs::write(&good, many_op_types(false)).unwrap();
    let cfg = OptimizationConfig::from_file(&good).unwrap();
    assert_eq!(cfg.op_type.len(), 60_000);
    // A repeated key keeps the last value, as a Python dict does.
    assert_eq!(cfg.op_type.get("type_7"), Some(&None));
    assert!(matches!(
        cfg.op_type.get("type_59999"),
        Some(Some(mlprune::config::OpConfig::Threshold { threshold, .. })) if *threshold == 0.5
    ));

    let bad = case.tmp.path().join("bad.json");
    std::fs::write(&bad, many_op_types(true)).unwrap();
    assert_library_config_error(
        &bad,
        "op_type_configs['type_59999']: Invalid value of \"threshold\": -1.0",
    );
    let started = Instant::now();
    let o = prune_with_config(&case, &bad, &[]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_config_error(&o, &["bad.json", "type_59999"]);
    assert_untouched(&case, &before, &["many.json", "bad.json"]);

    // And the valid one prunes (the entries name op types the model does not have).
    let o = prune_with_config(&case, &good, &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(case.output().is_dir());
    assert_eq!(snapshot(&case.input), before);
}

#[test]
fn non_utf8_config_is_a_config_error() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    for (name, bytes) in [
        (
            "latin1.yaml",
            &b"config_type: OpThresholdPrunerConfig\n# caf\xe9\n"[..],
        ),
        ("utf16.json", &b"\xff\xfe{\x00}\x00"[..]),
    ] {
        let path = case.tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_library_config_error(&path, "not UTF-8 text");
        let o = prune_with_config(&case, &path, &[]);
        assert_config_error(&o, &[name, "not UTF-8 text: invalid byte 0x"]);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
    assert_untouched(&case, &before, &["latin1.yaml", "utf16.json"]);
}

#[test]
fn nan_is_refused_for_every_float_field_and_inf_follows_coremltools() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    let nan_msg = "nan. Needs to be in";
    let diverges = "coremltools 9.0 accepts nan here but then fails while pruning";
    // Config files (YAML `.nan`, and a JSON string that Python's float() reads as nan).
    let files = [
        ("t.yaml", "config_type: OpThresholdPrunerConfig\nglobal_config: {threshold: .nan}\n", "\"threshold\": nan"),
        ("m.yaml", "config_type: OpThresholdPrunerConfig\nglobal_config: {minimum_sparsity_percentile: .NaN}\n", "\"minimum_sparsity_percentile\": nan"),
        ("s.json", "{\"config_type\": \"OpMagnitudePrunerConfig\", \"global_config\": {\"target_sparsity\": \"nan\"}}", "\"target_sparsity\": nan"),
        ("n.json", "{\"config_type\": \"OpThresholdPrunerConfig\", \"op_name_configs\": {\"w\": {\"threshold\": \" NaN \"}}}", "op_name_configs['w']"),
        ("mi.yaml", "config_type: OpThresholdPrunerConfig\nglobal_config: {minimum_sparsity_percentile: .inf}\n", "\"minimum_sparsity_percentile\": inf. Needs to be in [0, 1]"),
        ("si.yaml", "config_type: OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: .inf}\n", "\"target_sparsity\": inf. Needs to be in [0, 1]."),
        ("ti.yaml", "config_type: OpThresholdPrunerConfig\nglobal_config: {threshold: -.inf}\n", "\"threshold\": -inf. Needs to be in [0, inf)"),
    ];
    let names: Vec<&str> = files.iter().map(|(n, _, _)| *n).collect();
    for (name, text, _) in &files {
        std::fs::write(case.tmp.path().join(name), text).unwrap();
    }
    for (name, _, what) in &files {
        let path = case.tmp.path().join(name);
        assert_library_config_error(&path, what);
        let o = prune_with_config(&case, &path, &[]);
        assert_config_error(&o, &[name, what]);
        if !what.contains("inf") {
            assert_config_error(&o, &[nan_msg, diverges]);
        }
        assert_untouched(&case, &before, &names);
    }

    // The shortcut flags, through the library and the CLI.
    let nan_flags: [(&[&str], &str); 5] = [
        (&["--threshold", "nan"], "\"threshold\": nan"),
        (
            &["--threshold", "0.1", "--min-sparsity", "NaN"],
            "\"minimum_sparsity_percentile\": nan",
        ),
        (&["--sparsity", "nan"], "\"target_sparsity\": nan"),
        (
            &["--threshold", "0.1", "--min-sparsity", "inf"],
            "\"minimum_sparsity_percentile\": inf",
        ),
        (&["--sparsity", "inf"], "\"target_sparsity\": inf"),
    ];
    for (flags, what) in nan_flags {
        let output = case.output();
        let mut args: Vec<&OsStr> = vec!["prune".as_ref(), case.input.as_os_str(), output.as_os_str()];
        args.extend(flags.iter().map(OsStr::new));
        let o = cli_bounded(&args, Duration::from_secs(10));
        assert_config_error(&o, &[what]);
        assert_untouched(&case, &before, &names);
    }
    for s in [
        from_shortcuts(&Shortcuts {
            threshold: Some(f64::NAN),
            ..Default::default()
        }),
        from_shortcuts(&Shortcuts {
            sparsity: Some(f64::NAN),
            ..Default::default()
        }),
        from_shortcuts(&Shortcuts {
            threshold: Some(0.1),
            min_sparsity: Some(f64::NAN),
            ..Default::default()
        }),
    ] {
        assert!(matches!(s, Err(Error::Config(m)) if m.contains(nan_msg) && m.contains(diverges)));
    }

    // threshold = inf is valid in coremltools and zeroes every value of every pruned tensor.
    let o = cli_bounded(
        &[
            "prune".as_ref(),
            case.input.as_os_str(),
            case.output().as_os_str(),
            "--threshold".as_ref(),
            "inf".as_ref(),
            "--weight-threshold".as_ref(),
            "0".as_ref(),
            "--quiet".as_ref(),
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = mlprune::inspect::inspect(&case.output()).unwrap();
    let sparse: Vec<_> = report
        .weights
        .iter()
        .filter(|w| w.storage == "constexpr_sparse_to_dense")
        .collect();
    assert!(!sparse.is_empty(), "{report:?}");
    for w in sparse {
        assert_eq!(w.sparsity, Some(1.0), "{}: every value zeroed", w.name);
    }
    assert_eq!(snapshot(&case.input), before);
}

#[test]
fn yaml_aliases_that_expand_past_the_bound_are_refused_before_they_do() {
    // 1 MB of text: a thousand 1,000-byte strings behind an anchor, then six levels of ten
    // aliases of the level before (10^9 bytes expanded; killed past 20 GB before).
    let case = Case::linear();
    let before = snapshot(&case.input);
    let long = format!("\"{}\"", "x".repeat(1000));
    let mut text = format!("a: &a [{}]\n", vec![long; 1000].join(","));
    for level in 0..6 {
        let previous = if level == 0 {
            "a".to_owned()
        } else {
            format!("b{}", level - 1)
        };
        text += &format!(
            "b{level}: &b{level} [{}]\n",
            vec![format!("*{previous}"); 10].join(",")
        );
    }
    text += "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: 0.5\n";
    let config = case.tmp.path().join("laughs.yaml");
    std::fs::write(&config, text).unwrap();
    let o = prune_with_config(&case, &config, &[]);
    assert_config_error(&o, &["laughs.yaml", "expands past 64 MiB"]);
    assert_library_config_error(&config, "expands past 64 MiB");
    assert_untouched(&case, &before, &["laughs.yaml"]);
}

#[test]
fn yaml_float_keys_are_read_in_linear_time() {
    // serde_norway hashes every float alike: 80,000 keys `0.5:`, `1.5:`, … took 30-50 s, each
    // inserted after a scan of every earlier key. Killed past 10 s.
    let case = Case::linear();
    let mut text = String::from(
        "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: 0.5\nop_name_configs:\n",
    );
    for i in 0..80_000 {
        text += &format!("  {i}.5: null\n");
    }
    let config = case.tmp.path().join("floats.yaml");
    std::fs::write(&config, text).unwrap();
    let o = prune_with_config(&case, &config, &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn configs_of_too_many_nodes_are_refused_before_they_are_built() {
    // 16 MiB of `0,` is eight million nodes: building them peaked at 874 MB (JSON) and 1.14 GB
    // (YAML) before the config was refused. Now refused by count, the same for JSON and YAML;
    // the memory it takes is measured by the bench scripts, not here.
    let case = Case::linear();
    let before = snapshot(&case.input);
    let zeros = "0,".repeat(((16 << 20) - 100) / 2);
    let mut names = vec![];
    let max = mlprune::config::limits::MAX_CONFIG_NODES.to_string();
    for (name, text) in [
        ("zeros.json", format!("{{\"a\": [{zeros}0]}}")),
        ("zeros.yaml", format!("a: [{zeros}0]\n")),
    ] {
        let path = case.tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        names.push(name);
        let o = prune_with_config(&case, &path, &[]);
        assert_config_error(&o, &[name, &format!("holds more than {max} nodes")]);
    }
    // A plain config (no anchors) of 500,000 entries: it was refused as YAML for "aliases" and
    // accepted as JSON. Now both are refused alike, naming no aliases.
    let entries: Vec<String> = (0..500_000).map(|i| format!("k{i}")).collect();
    let head = "config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: 0.5\n";
    let yaml = format!(
        "{head}op_name_configs:\n{}",
        entries
            .iter()
            .map(|k| format!("  {k}: null\n"))
            .collect::<String>()
    );
    let json = format!(
        "{{\"config_type\": \"OpMagnitudePrunerConfig\", \"op_name_configs\": {{{}}}}}",
        entries
            .iter()
            .map(|k| format!("\"{k}\": null"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, text) in [("plain.yaml", yaml), ("plain.json", json)] {
        let path = case.tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        names.push(name);
        let o = prune_with_config(&case, &path, &[]);
        assert_config_error(&o, &[name, &format!("holds more than {max} nodes")]);
        assert!(!String::from_utf8_lossy(&o.stderr).contains("alias"));
    }
    assert_untouched(&case, &before, &names);
}

#[test]
fn config_errors_echo_a_long_key_cut_short_on_one_line() {
    // A 16 MB key made a 16 MB error line.
    let case = Case::linear();
    let key = format!("{}\n{}", "k".repeat(100), "x".repeat(15 << 20));
    let config = case.tmp.path().join("longkey.json");
    std::fs::write(&config, format!("{{\"{}\": 1}}", key.replace('\n', "\\n"))).unwrap();
    let o = prune_with_config(&case, &config, &[]);
    let tail = format!("{}… ({} bytes)", "k".repeat(64), key.len());
    assert_config_error(&o, &["longkey.json", "Invalid key", &tail]);
    assert!(o.stderr.len() < 400, "{} bytes", o.stderr.len());
}

/// A long command-line value is quoted cut short too: a 100,000-digit `--global-sparsity` made
/// a 200 KB error line (red team, session 22), as did `--n-m`, `generate --shape`, an unknown
/// command and an unknown `--exclude` name.
#[test]
fn argument_errors_quote_a_long_value_cut_short() {
    let case = Case::linear();
    let out = case.output();
    let digits = format!("0.{}", "5".repeat(100_000));
    let ratio = format!("2:{}", "4".repeat(100_000));
    let shape = "4x".repeat(50_000);
    let flag = format!("--{}", "x".repeat(100_000));
    let input = case.input.to_str().unwrap();
    let output = out.to_str().unwrap();
    let word = "w".repeat(100_000);
    let runs: [(&[&str], &str); 6] = [
        (
            &["prune", input, output, "--global-sparsity", &digits],
            "--global-sparsity",
        ),
        (&["prune", input, output, "--n-m", &ratio], "n:m"),
        (&["prune", input, output, &flag], "unexpected argument"),
        (
            &["generate", "--layers", "1", "--shape", &shape, output],
            "--shape",
        ),
        (&[&word], "unrecognized command"),
        (
            &[
                "prune",
                input,
                output,
                "--global-sparsity",
                "0.5",
                "--exclude",
                &word,
            ],
            "--exclude",
        ),
    ];
    for (args, names) in runs {
        let o = Command::new(env!("CARGO_BIN_EXE_mlprune"))
            .args(args)
            .output()
            .unwrap();
        assert_cli_error(&o, 2, &[names, "bytes)"]);
        assert!(o.stderr.len() < 400, "{names}: {} bytes", o.stderr.len());
    }
    assert_nothing_left(&case, &["in.mlpackage"]);
}

#[test]
fn yaml_that_pyyaml_refuses_is_refused() {
    // coremltools' from_yaml (PyYAML) refuses these; mlprune pruned with them.
    let case = Case::linear();
    let before = snapshot(&case.input);
    let body = "config_type: OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: 0.5}\n";
    let cases = [
        (
            "anchor.yaml",
            "config_type: &t OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: &t 0.5}\n".to_string(),
            "found duplicate anchor 't'",
        ),
        ("boms.yaml", format!("\u{feff}\u{feff}{body}"), "byte-order mark"),
        ("bomend.yaml", format!("{body}\u{feff}"), "byte-order mark"),
    ];
    for (name, text, reason) in &cases {
        let path = case.tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let o = prune_with_config(&case, &path, &[]);
        assert_config_error(&o, &[name, reason]);
    }
    let names: Vec<&str> = cases.iter().map(|(n, _, _)| *n).collect();
    assert_untouched(&case, &before, &names);
}
