//! Inconsistent models, input files swapped for a FIFO mid-run, terminal-safe inspect output,
//! usage-error format.

use mlprune::proto::mil::{DataType, Dimension, NamedValueType, ValueType};

#[allow(unused_imports)]
use crate::*;

/// Applies `edit` to the op whose `name` attribute is `name`.
fn edit_named_op(case: &Case, name: &str, edit: impl FnOnce(&mut Operation)) {
    case.edit_program(|p| {
        let mut edit = Some(edit);
        for_each_op_mut(p, |op| -> Result<(), mlprune::Error> {
            if mlprune::mil::OperationExt::name(op) == Some(name) {
                if let Some(edit) = edit.take() {
                    edit(op);
                }
            }
            Ok(())
        })
        .unwrap();
        assert!(edit.is_none(), "no op named {name}");
    });
}

/// The tensor type of a const's `val` or output.
fn tensor_type(ty: &mut Option<ValueType>) -> &mut mlprune::proto::mil::TensorType {
    match ty.as_mut().and_then(|t| t.r#type.as_mut()) {
        Some(mlprune::proto::mil::value_type::Type::TensorType(t)) => t,
        other => panic!("not a tensor type: {other:?}"),
    }
}

fn constant(size: u64) -> Dimension {
    Dimension {
        dimension: Some(dimension::Dimension::Constant(dimension::ConstantDimension {
            size,
        })),
    }
}

/// Every character of `text` that a terminal could act on (controls, and the bidirectional
/// formatting characters that reorder what it shows), other than the line breaks in `allowed`.
fn control_chars(text: &str, allowed: &[char]) -> Vec<char> {
    let bidi = |c: char| matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    // Line and paragraph separators break lines for editors, JavaScript and Python's
    // `splitlines`; the byte-order mark shows as nothing.
    let breaks = |c: char| matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}');
    text.chars()
        .filter(|&c| (c.is_control() || bidi(c) || breaks(c)) && !allowed.contains(&c))
        .collect()
}

#[test]
fn inspect_escapes_control_characters_from_the_input() {
    // ESC sequences, BEL, CR/LF, DEL and the C1 CSI (U+009B) in every string inspect shows: the
    // tensor name, its consumer's name, op type and input name, and the opset.
    let case = Case::linear();
    let (weight, _) = first_blob_const(&case);
    let evil_name = format!("{weight}\x1b[2J\x1b]0;pwned\x07\r\nfake row\u{2028}\u{2029}\u{feff}");
    // A literal backslash and `t` must not read as an escaped tab: the table doubles it.
    let evil_consumer = "fc1\x1b[31m\u{9b}1m\x7f\\t";
    let evil_type = "linear\x08\x08\x08";
    let evil_input = "weight\n";
    let evil_opset = "CoreML8\x1b[0m\u{202E}\u{2066}";
    case.edit_program(|p| {
        for function in p.functions.values_mut() {
            let body = function.block_specializations.remove(&function.opset).unwrap();
            function.opset = evil_opset.into();
            function.block_specializations.insert(evil_opset.into(), body);
        }
    });
    edit_named_op(&case, &weight, |op| {
        op.attributes
            .set("name".into(), mlprune::mil::value::string_value(&evil_name));
    });
    edit_named_op(&case, "fc1_cast_fp16", |op| {
        op.attributes
            .set("name".into(), mlprune::mil::value::string_value(evil_consumer));
        op.r#type = evil_type.into();
        let arg = op.inputs.take("weight").unwrap();
        op.inputs.set(evil_input.into(), arg);
    });
    let before = snapshot(&case.input);

    // The library reports the strings as they are; only what is printed is escaped.
    let report = mlprune::inspect::inspect(&case.input).unwrap();
    let row = report.weights.iter().find(|w| w.name == evil_name).unwrap();
    assert_eq!(
        (
            row.consumers[0].op.as_str(),
            row.consumers[0].op_type.as_str(),
            row.consumers[0].input.as_str()
        ),
        (evil_consumer, evil_type, evil_input)
    );

    let o = cli_inspect(&case.input);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert_eq!(control_chars(&table, &['\n']), Vec::<char>::new(), "{table}");
    assert!(
        !table.contains('\r') && !table.as_bytes().contains(&0x1b),
        "{table}"
    );
    // One header, one line per tensor, the total: no name split a line or forged one.
    assert_eq!(table.lines().count(), report.weights.len() + 2, "{table}");
    assert!(!table.lines().any(|l| l.starts_with("fake row")), "{table}");
    let escaped_name = format!(
        "{weight}\\u{{1b}}[2J\\u{{1b}}]0;pwned\\u{{7}}\\r\\nfake row\\u{{2028}}\\u{{2029}}\\u{{feff}}"
    );
    let row_line = table
        .lines()
        .find(|l| l.starts_with(&escaped_name))
        .unwrap_or_else(|| panic!("row of {escaped_name}: {table}"));
    assert!(
        row_line.contains("fc1\\u{1b}[31m\\u{9b}1m\\u{7f}\\\\t (linear\\u{8}\\u{8}\\u{8}.weight\\n)"),
        "{row_line}"
    );
    let total = table.lines().last().unwrap();
    assert!(
        total.contains("opset CoreML8\\u{1b}[0m\\u{202e}\\u{2066}, weight.bin"),
        "{total}"
    );

    // JSON: every control character escaped (serde_json does C0; DEL and C1 are escaped too), and
    // the strings read back exactly.
    let o = cli(&["inspect".as_ref(), case.input.as_os_str(), "--json".as_ref()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = String::from_utf8(o.stdout).unwrap();
    // Pretty JSON breaks lines between values; inside strings a newline is `\n`.
    assert_eq!(control_chars(&json, &['\n']), Vec::<char>::new(), "{json}");
    assert!(
        json.contains("\\u007f")
            && json.contains("\\u009b")
            && json.contains("\\u001b")
            && json.contains("\\u202e")
            && json.contains("\\u2028\\u2029\\ufeff"),
        "{json}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["opsets"][0], evil_opset);
    let row = parsed["weights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == evil_name.as_str())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(row["consumers"][0]["op"], evil_consumer);
    assert_eq!(row["consumers"][0]["op_type"], evil_type);
    assert_eq!(row["consumers"][0]["input"], evil_input);

    assert_nothing_left(&case, &["in.mlpackage"]);
    assert_eq!(snapshot(&case.input), before, "input unchanged");
}

fn is_tensor_error<'a>(name: &'a str, reason: &'a str) -> impl Fn(&Error) -> bool + 'a {
    move |e| matches!(e, Error::Tensor { tensor, reason: r } if tensor == name && r.contains(reason))
}

fn is_graph_error<'a>(parts: &'a [&'a str]) -> impl Fn(&Error) -> bool + 'a {
    move |e| matches!(e, Error::Graph(m) if parts.iter().all(|p| m.contains(p)))
}

#[test]
fn const_whose_val_disagrees_with_its_output_type() {
    // The val says one thing, the output another: pruning the val's shape into a sparse op of the
    // output type would give consumers a tensor of the wrong size. Refused by prune and inspect.
    type Edit = fn(&mut Operation);
    let edits: [(Edit, &str); 5] = [
        (
            |op| tensor_type(&mut op.outputs[0].r#type).data_type = DataType::Float32 as i32,
            "declared fp32 [48, 64]",
        ),
        (
            |op| {
                tensor_type(&mut op.attributes.lookup_mut("val").unwrap().r#type).data_type =
                    DataType::Float32 as i32
            },
            "'val' is fp32 [48, 64]",
        ),
        (
            |op| {
                let t = tensor_type(&mut op.outputs[0].r#type);
                t.dimensions = vec![constant(64), constant(48)];
            },
            "declared fp16 [64, 48]",
        ),
        (
            |op| {
                let t = tensor_type(&mut op.outputs[0].r#type);
                t.rank = 1;
                t.dimensions = vec![constant(48 * 64)];
            },
            "declared fp16 [3072]",
        ),
        (
            |op| {
                op.outputs[0].r#type = Some(ValueType {
                    r#type: Some(mlprune::proto::mil::value_type::Type::ListType(Box::default())),
                })
            },
            "declared list",
        ),
    ];
    for (edit, detail) in edits {
        let case = Case::linear();
        let (weight, _) = first_blob_const(&case);
        assert_eq!(weight, "fc1_weight_0_to_fp16", "fixture layout");
        edit_named_op(&case, &weight, edit);
        let kind = is_tensor_error(&weight, "const 'val' is fp");
        let check = |e: &Error| kind(e) && e.to_string().contains(detail);
        assert_refused(&case, Refused::Both, check, &[&weight, detail]);
    }
}

#[test]
fn const_without_a_usable_val() {
    type Edit = fn(&mut Operation);
    let edits: [(Edit, &'static str); 4] = [
        (|op| drop(op.attributes.take("val")), "no 'val' attribute"),
        (
            |op| op.attributes.lookup_mut("val").unwrap().value = None,
            "neither an immediate value nor a weight.bin reference",
        ),
        (
            // The value moved to an input: it would be ignored and its blob dropped.
            |op| {
                let val = op.attributes.take("val").unwrap();
                op.inputs.set("val".into(), mlprune::mil::build::bind_value(val));
            },
            "has an input ('val')",
        ),
        (
            |op| {
                let extra = NamedValueType {
                    name: "second".into(),
                    ..op.outputs[0].clone()
                };
                op.outputs.push(extra);
            },
            "2 outputs, expected 1",
        ),
    ];
    for (edit, reason) in edits {
        let case = Case::linear();
        let (weight, _) = first_blob_const(&case);
        edit_named_op(&case, &weight, edit);
        assert_refused(
            &case,
            Refused::Both,
            is_tensor_error(&weight, reason),
            &[&weight, reason],
        );
    }
    // A const with no val and no output at all.
    let case = Case::linear();
    let (weight, _) = first_blob_const(&case);
    edit_named_op(&case, &weight, |op| {
        op.attributes.take("val");
        op.outputs.clear();
    });
    // Refused at the const, before its consumer is found reading an undefined value.
    let reason = "0 outputs, expected 1";
    assert_refused(
        &case,
        Refused::Both,
        is_tensor_error(&weight, reason),
        &[&weight, reason],
    );
}

#[test]
fn ops_and_outputs_without_a_type() {
    // A linear's output with no type, and with an empty ValueType; a const's output the same; an op
    // with an empty op type.
    type Edit = fn(&mut Operation);
    let cases: [(&str, Edit, &[&str]); 4] = [
        (
            "fc1_cast_fp16",
            |op| op.outputs[0].r#type = None,
            &["fc1_cast_fp16", "(linear)", "has no declared type"],
        ),
        (
            "fc2_cast_fp16",
            |op| op.outputs[0].r#type = Some(ValueType::default()),
            &["fc2_cast_fp16", "(linear)", "has no declared type"],
        ),
        (
            "fc2_bias_0_to_fp16",
            |op| op.outputs[0].r#type = None,
            &["fc2_bias_0_to_fp16", "(const)", "has no declared type"],
        ),
        (
            "fc1_cast_fp16",
            |op| op.r#type.clear(),
            &["fc1_cast_fp16", "has no op type"],
        ),
    ];
    for (name, edit, parts) in cases {
        let case = Case::linear();
        edit_named_op(&case, name, edit);
        assert_refused(&case, Refused::Both, is_graph_error(parts), parts);
    }
}

#[test]
fn a_key_given_twice_in_an_ops_inputs_or_attributes() {
    // On the wire these are protobuf maps: a key given twice is legal protobuf, and a map reader
    // silently keeps one of them. Which binding the user meant cannot be known: refused, naming
    // the op and the key, by prune and inspect alike.
    type Edit = fn(&mut Operation);
    use mlprune::proto::mil::operation::{AttributeEntry, InputEntry};
    let edits: [(Edit, &str); 2] = [
        (
            |op| {
                let val = op.attributes.lookup("val").cloned();
                op.attributes.push(AttributeEntry {
                    key: "val".into(),
                    value: val,
                })
            },
            "has two attributes named 'val'",
        ),
        (
            |op| {
                op.inputs.push(InputEntry {
                    key: "unused".into(),
                    value: Some(mlprune::mil::build::bind_name("a")),
                });
                op.inputs.push(InputEntry {
                    key: "unused".into(),
                    value: Some(mlprune::mil::build::bind_name("b")),
                });
            },
            "has two inputs named 'unused'",
        ),
    ];
    for (edit, reason) in edits {
        let case = Case::linear();
        let (weight, _) = first_blob_const(&case);
        edit_named_op(&case, &weight, edit);
        let check = |e: &Error| matches!(e, Error::Model { reason: r, .. } if r.contains(reason) && r.contains(&weight));
        assert_refused(&case, Refused::Both, check, &[&weight, reason]);
    }
}

#[test]
fn blocks_nested_thousands_deep_are_refused_before_any_reader_recurses() {
    // A few hundred bytes per level: 8,000 levels overflowed the stack (exit 134, three lines),
    // and a few thousand took memory quadratic in the depth.
    let depth = mlprune::mil::ops::MAX_BLOCK_DEPTH * 250;
    let case = Case::linear();
    case.edit_program(|p| {
        let mut block = mlprune::mil::ops::block_of([]);
        for _ in 0..depth {
            let owner = Operation {
                r#type: "cond".into(),
                blocks: vec![block],
                ..Default::default()
            };
            block = mlprune::mil::ops::block_of([owner]);
        }
        let body = p.functions.values_mut().next().unwrap();
        let body = body.block_specializations.values_mut().next().unwrap();
        body.operations.extend(block.operations);
    });
    let reason = "blocks nested more than 32 levels deep";
    let check = |e: &Error| matches!(e, Error::Model { reason: r, .. } if r.contains(reason));
    assert_refused(&case, Refused::Both, check, &["model.mlmodel", reason]);
}

/// Applies `edit` to the output type and the `val` type of the case's first blob const, and
/// returns its name.
fn edit_first_weight_types(case: &Case, edit: fn(&mut mlprune::proto::mil::TensorType)) -> String {
    let (weight, _) = first_blob_const(case);
    edit_named_op(case, &weight, |op| {
        edit(tensor_type(&mut op.outputs[0].r#type));
        let val = op.attributes.iter_mut().find(|e| e.key == "val").unwrap();
        edit(tensor_type(&mut val.value.as_mut().unwrap().r#type));
    });
    weight
}

#[test]
fn a_blob_whose_type_says_not_how_to_read_it_is_refused_by_inspect_as_by_prune() {
    // inspect used to leave such a tensor out of its listing (and its totals) while prune refused it.
    type Edit = fn(&mut mlprune::proto::mil::TensorType);
    let edits: [Edit; 3] = [
        |t| t.dimensions.iter_mut().for_each(|d| *d = constant(1 << 33)),
        |t| t.rank = -1,
        |t| t.data_type = 9999,
    ];
    for edit in edits {
        let case = Case::linear();
        let weight = edit_first_weight_types(&case, edit);
        let reason = "blob value without a numeric tensor type of known shape";
        let check = |e: &Error| e.to_string().contains(reason);
        assert_refused(&case, Refused::Both, check, &[&weight, reason]);
    }
}

/// A const declared a scalar over a blob of many elements: prune refused it while inspect left it
/// out of its listing (scalars are not listed) without reading its blob.
#[test]
fn a_const_declared_a_scalar_over_a_larger_blob_is_refused_by_inspect_as_by_prune() {
    let case = Case::linear();
    let (weight, offset) = first_blob_const(&case);
    edit_named_op(&case, &weight, |op| {
        let scalar = |t: &mut mlprune::proto::mil::TensorType| {
            t.dimensions.clear();
            t.rank = 0;
        };
        scalar(tensor_type(&mut op.outputs[0].r#type));
        let val = op.attributes.iter_mut().find(|e| e.key == "val").unwrap();
        scalar(tensor_type(&mut val.value.as_mut().unwrap().r#type));
    });
    assert_refused(
        &case,
        Refused::Both,
        is_blob_at(offset),
        &["weight.bin", &weight, "expected 1"],
    );
}

/// coremltools reads each function's body for its opset and no other (`milproto/load.py`): it
/// prunes that one, leaves the others out of what it writes, and refuses a function without one.
/// mlprune read every body: it refused a model whose other body reused the names (as "already
/// has a value named ..._sparsified"), or held a blob it could not read, and listed each tensor
/// once per body.
#[test]
fn only_the_body_for_each_functions_opset_is_read_as_coremltools_reads_it() {
    let case = Case::linear();
    let (weight, _) = first_blob_const(&case);
    // Another body, a copy whose first const points far past the end of weight.bin.
    case.edit_program(|p| {
        let function = p.functions.values_mut().next().unwrap();
        let mut other = function.block_specializations[&function.opset].clone();
        for bytes in &mut other.operations {
            let mut op = mlprune::mil::decode_op(bytes).unwrap();
            if mlprune::mil::OperationExt::name(&op) == Some(weight.as_str()) {
                if let Some(value::Value::BlobFileValue(b)) =
                    op.attributes.lookup_mut("val").and_then(|v| v.value.as_mut())
                {
                    b.offset = 1 << 40;
                }
                *bytes = mlprune::mil::encode_op(&op);
            }
        }
        function.block_specializations.insert("CoreML5".into(), other);
    });
    let before = snapshot(&case.input);
    let notice = "block specialization 'CoreML5' is not for its opset 'CoreML8' and is left out, as \
                  coremltools leaves it out";

    let o = cli_inspect(&case.input);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains(notice), "{stderr}");
    let table = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with(&weight)).count(),
        1,
        "{table}"
    );

    let o = cli_prune(&case.input, &case.output(), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains(notice), "{stderr}");
    let written = std::fs::read(case.output().join(CORE_ML).join("model.mlmodel")).unwrap();
    let Some(Type::MlProgram(program)) = Model::decode(written.as_slice()).unwrap().r#type else {
        panic!("an ML Program")
    };
    for function in program.functions.values() {
        let bodies: Vec<_> = function.block_specializations.keys().collect();
        assert_eq!(bodies, [&function.opset], "only the opset's body is written");
    }
    assert_eq!(snapshot(&case.input), before, "input unchanged");
    std::fs::remove_dir_all(case.output()).unwrap();

    // No body for the opset: refused, as coremltools refuses it.
    case.edit_program(|p| {
        for function in p.functions.values_mut() {
            function.opset = "Nope".into();
        }
    });
    assert_refused(
        &case,
        Refused::Both,
        |e| matches!(e, Error::Model { reason, .. } if reason.contains("no block specialization for its opset 'Nope'")),
        &[
            "model.mlmodel",
            "function 'main' has no block specialization for its opset 'Nope'",
        ],
    );
}

/// A tensor name of 10,000 characters: every row of the table was padded to it (N rows, one such
/// name: N × 10,000 bytes of spaces, built whole in memory). A column is padded to at most
/// `MAX_PADDED_WIDTH` now; the long name extends only its own row.
#[test]
fn a_very_long_name_widens_only_its_own_row() {
    let case = Case::linear();
    let (weight, _) = first_blob_const(&case);
    let long = "n".repeat(10_000);
    edit_named_op(&case, &weight, |op| {
        op.attributes
            .set("name".into(), mlprune::mil::value::string_value(&long));
    });
    let o = cli_inspect(&case.input);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    let (long_rows, others): (Vec<&str>, Vec<&str>) = table.lines().partition(|l| l.starts_with(&long));
    assert_eq!(long_rows.len(), 1, "{table}");
    assert!(long_rows[0].len() < long.len() + 200, "{}", long_rows[0].len());
    let widest = mlprune::inspect::MAX_PADDED_WIDTH + 150;
    assert!(
        others.iter().all(|l| l.chars().count() < widest),
        "rows padded past {widest} characters: {table}"
    );
    // The other rows stay aligned with the header: CONSUMER starts at the same column.
    let column = others[0].find("CONSUMER").unwrap();
    assert!(
        others[1..others.len() - 1]
            .iter()
            .all(|l| l[..column].ends_with("  ") && !l[column..].starts_with(' ')),
        "{table}"
    );
}

/// `bench` benched only the tensors the plan prunes, so a model whose other consts prune refuses
/// (dims overflowing, a 0 dim, rank ≠ number of dims, an unknown dtype) printed an empty table and
/// exited 0. It now checks every blob as prune does, before opening a device, and fails with
/// prune's line and exit code.
#[test]
fn bench_refuses_what_prune_refuses() {
    type Edit = fn(&mut mlprune::proto::mil::TensorType);
    let edits: [Edit; 4] = [
        |t| t.dimensions.iter_mut().for_each(|d| *d = constant(1 << 32)),
        |t| t.dimensions[0] = constant(0),
        |t| t.rank = 3,
        |t| t.data_type = 9999,
    ];
    for edit in edits {
        let case = Case::linear();
        let weight = edit_first_weight_types(&case, edit);
        let output = case.output();
        let prune = cli(&[
            "prune".as_ref(),
            case.input.as_os_str(),
            output.as_os_str(),
            "--sparsity".as_ref(),
            "0.5".as_ref(),
        ]);
        let bench = cli(&[
            "bench".as_ref(),
            case.input.as_os_str(),
            "--runs".as_ref(),
            "1".as_ref(),
        ]);
        let code = prune.status.code().unwrap();
        assert_ne!(code, 0, "prune refuses it");
        assert_cli_error(&bench, code, &[&weight]);
        assert_eq!(
            String::from_utf8_lossy(&bench.stderr),
            String::from_utf8_lossy(&prune.stderr)
        );
        assert!(bench.stdout.is_empty(), "no table");
    }
}

/// Runs `f` on another thread and returns what it returns, or `None` after `limit` (the thread,
/// blocked, is left behind: the test fails either way).
#[cfg(unix)]
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Replaces `path` by a FIFO (no writer ever comes), as a rename by another process would.
#[cfg(unix)]
fn swap_in_fifo(path: &Path) {
    let fifo = path.with_extension("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::rename(&fifo, path).unwrap();
}

/// The input's files were type-checked by path when the package was opened, then opened again by
/// path without `O_NONBLOCK`: `weight.bin` or `model.mlmodel` swapped for a FIFO in between made
/// `prune` block in open(2) forever (red-team, round 19). Each is opened without blocking and
/// checked on the handle now: an I/O error naming the file, exit 1.
#[cfg(unix)]
#[test]
fn input_files_swapped_for_a_fifo_are_refused_without_blocking() {
    let case = Case::linear();
    let package = mlprune::package::Package::open(&case.input).unwrap();
    let weight_bin = case.weight_bin();
    let saved = std::fs::read(&weight_bin).unwrap();
    swap_in_fifo(&weight_bin);
    let err = within(Duration::from_secs(3), move || {
        mlprune::weights::WeightSource::open(&package, None).err()
    })
    .expect("WeightSource::open blocked on the FIFO")
    .expect("refused");
    assert!(
        matches!(&err, Error::Io { path, source } if path.ends_with("weight.bin")
            && source.kind() == std::io::ErrorKind::InvalidInput),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 1);
    assert!(err.one_line().contains("is a FIFO, not a regular file"), "{err}");
    std::fs::remove_file(&weight_bin).unwrap();
    std::fs::write(&weight_bin, saved).unwrap();

    let model = case.file("model.mlmodel");
    swap_in_fifo(&model);
    let label = model.clone();
    let err = within(Duration::from_secs(3), move || {
        mlprune::mil::LoadedModel::read(&label, &label).err()
    })
    .expect("LoadedModel::read blocked on the FIFO")
    .expect("refused");
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("model.mlmodel")),
        "{err:?}"
    );
    assert!(err.one_line().contains("is a FIFO"), "{err}");
}

/// The same swap racing a real run (the repro of round 19): every run ends within seconds, by
/// success or by one error line, never a panic, and leaves nothing behind.
#[cfg(unix)]
#[test]
fn prune_never_blocks_on_a_fifo_swapped_in_for_weight_bin() {
    let case = Case::generated(2, 64);
    let weight_bin = case.weight_bin();
    let real = case.tmp.path().join("wb.real");
    std::fs::hard_link(&weight_bin, &real).unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut tries = 0;
    while Instant::now() < deadline {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlprune"))
            .arg("prune")
            .arg(&case.input)
            .arg(case.output())
            .args(["--sparsity", "0.5", "-q"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(500 * (tries % 20)));
        swap_in_fifo(&weight_bin);
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(5) {
                child.kill().unwrap();
                panic!("prune blocked on a FIFO swapped in for weight.bin (try {tries})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let o = child.wait_with_output().unwrap();
        if !o.status.success() {
            assert_cli_error(&o, 1, &[]);
        }
        let back = case.tmp.path().join("wb.back");
        std::fs::hard_link(&real, &back).unwrap();
        std::fs::rename(&back, &weight_bin).unwrap();
        let _ = std::fs::remove_dir_all(case.output());
        tries += 1;
    }
    assert!(tries > 3, "only {tries} runs");
    assert_nothing_left(&case, &["in.mlpackage", "wb.real"]);
}
