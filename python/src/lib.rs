//! `mlprune._mlprune`: the extension module under the Python package `mlprune` (python/mlprune/).
//!
//! It stays thin: paths and JSON text in, JSON text out. Turning coremltools objects into a config
//! and a report into Python objects is the Python layer's job; every rule lives in the `mlprune`
//! crate, which is called exactly as the CLI calls it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::Duration;

use mlprune::cancel::CancelFlag;
use mlprune::cli::DEFAULT_GPU_MIN_ELEMENTS;
use mlprune::config::{ConfigValue, OptimizationConfig};
use mlprune::engine::{self, DevicePolicy, PruneJob};
use mlprune::global_sparsity::{GlobalSparsity, Sparsity};
use mlprune::Error;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};

pyo3::create_exception!(
    _mlprune,
    MlpruneError,
    PyException,
    "Bad input or a runtime failure: a malformed package, blob, protobuf or tensor, or an I/O error. \
     The message is the CLI's one-line error, naming the file and, where known, the tensor or offset."
);

/// Config and usage errors are `ValueError`, as coremltools raises for an invalid config; a
/// cancelled run is `KeyboardInterrupt`; everything else is `MlpruneError`. The message is the
/// CLI's one line.
fn to_py_err(e: Error) -> PyErr {
    let message = e.one_line();
    match e {
        Error::Config(_) | Error::Usage(_) => PyValueError::new_err(message),
        Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
        _ => MlpruneError::new_err(message),
    }
}

fn device_policy(device: &str) -> PyResult<DevicePolicy> {
    match device {
        "auto" => Ok(DevicePolicy::Auto),
        "cpu" => Ok(DevicePolicy::Cpu),
        "gpu" => Ok(DevicePolicy::Gpu),
        other => Err(PyValueError::new_err(format!(
            "device must be 'auto', 'cpu' or 'gpu', got {other:?}"
        ))),
    }
}

/// How often the waiting thread looks for Ctrl-C while a prune runs without the GIL.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The process in which mlprune's engine last got to work (0: none yet), and so may have
/// started its worker threads (rayon's pool, which lives as long as the process).
static RAN_IN: AtomicU32 = AtomicU32::new(0);

/// Notes that the engine is about to work in this process (see [`refuse_in_a_fork`]): only then,
/// so that a process that only imported mlprune, or whose call failed before any work (a config
/// refused, `--version`), forks children that can run it.
fn mark_engine_started() {
    RAN_IN.store(std::process::id(), Ordering::SeqCst);
}

/// Refuses to run in a process forked from one whose engine had got to work (multiprocessing's
/// "fork" start method): a fork copies only the forking thread, so the engine's worker threads
/// (rayon's pool) are missing in the child and its first parallel step waited for them forever,
/// Ctrl-C included (red team, session 21).
fn refuse_in_a_fork() -> Result<(), String> {
    match RAN_IN.load(Ordering::SeqCst) {
        0 => Ok(()),
        ran_in if ran_in == std::process::id() => Ok(()),
        _ => Err(
            "mlprune cannot run in a process forked from one that has run it (the \
                  multiprocessing \"fork\" start method): its worker threads do not exist here; use \
                  the \"spawn\" or \"forkserver\" start method"
                .into(),
        ),
    }
}

/// Most values a dict config may hold, and how deep: as for config text.
const MAX_VALUES: usize = mlprune::config::limits::MAX_CONFIG_NODES;
const MAX_DEPTH: u32 = mlprune::config::depth::MAX_CONFIG_DEPTH;

/// Where a value sits in a dict config: what `config_value` may make of a type that is not
/// Python's own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    /// A dict key: coremltools looks keys up by equality, so one of another type matches nothing.
    Key,
    /// A value: read as coremltools' converters read it (`tolist`, `float()`, `int()`).
    Value,
    /// What `tolist` returned: no second `tolist` (a numpy long double's returns itself).
    Converted,
}

impl Position {
    /// Where the values inside a dict or list at this position sit (their keys are `Key`).
    fn inner(self) -> Position {
        match self {
            Position::Converted => Position::Converted,
            Position::Key | Position::Value => Position::Value,
        }
    }
}

/// A dict config as the Python values it holds, for `OptimizationConfig::from_value`: `None`,
/// `bool`, `int` (any size), `float`, `str`, `list` (or `tuple`), `dict`. Passed as values, not as
/// JSON text, which made a key `None` into the name `"null"` and could not say `float("inf")`
/// (red team, session 21). As a value, anything else is read as coremltools' converters read it:
/// numpy values through `tolist` (once, and refused before it builds more than [`MAX_VALUES`]),
/// bytes as text, other numbers through `int()` or `float()` (`Decimal`, `Fraction`); as a key, or
/// where none of that applies, it is a value of its own type, which no field takes and no op name
/// equals. Every mapping, list, key and value counts one of [`MAX_VALUES`], as in config text.
fn config_value(
    obj: &Bound<'_, PyAny>,
    depth: u32,
    values: &mut usize,
    position: Position,
) -> PyResult<ConfigValue> {
    let refuse = |what: String| PyValueError::new_err(format!("config: {what}"));
    // A conversion that raises is the config's fault: ValueError, naming the type.
    let convert_error = |e: PyErr| match obj.get_type().name() {
        Ok(name) => refuse(format!("a {name} value could not be read: {e}")),
        Err(_) => refuse(format!("a value could not be read: {e}")),
    };
    *values += 1;
    if *values > MAX_VALUES {
        return Err(refuse(format!("more than {MAX_VALUES} values")));
    }
    if depth > MAX_DEPTH {
        return Err(refuse(format!("nested more than {MAX_DEPTH} levels deep")));
    }
    let py = obj.py();
    let hex_int = |int: Bound<'_, PyAny>| -> PyResult<ConfigValue> {
        let hex = py.import("builtins")?.getattr("hex")?.call1((int,))?;
        ConfigValue::int_from_hex(&hex.str()?.to_cow()?).map_err(&refuse)
    };
    // `float(obj)`, as coremltools' converter reads a number that is no float.
    let float_of = || -> PyResult<ConfigValue> {
        let float = py.get_type::<PyFloat>().call1((obj,)).map_err(convert_error)?;
        Ok(ConfigValue::Float(float.extract::<f64>()?))
    };
    if obj.is_none() {
        return Ok(ConfigValue::None);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(ConfigValue::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        // As a plain int, in hexadecimal: any size. A key by its value (int's own `__index__`:
        // coremltools compares keys, and one whose `__int__` raised failed the run where
        // coremltools prunes; red team, session 21, L-4); a value by `int()`, as coremltools'
        // converter reads it, a failure a ValueError.
        let int = py.get_type::<PyInt>();
        let plain = match position {
            Position::Key => int.getattr("__index__")?.call1((obj,))?,
            _ => int.call1((obj,)).map_err(convert_error)?,
        };
        if !plain.is_exact_instance_of::<PyInt>() {
            return Err(refuse(format!(
                "int() of a value gave a {}",
                plain.get_type().name()?
            )));
        }
        return hex_int(plain);
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(ConfigValue::Float(obj.extract::<f64>()?));
    }
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(match text.to_cow() {
            Ok(text) => ConfigValue::Str(text.into_owned()),
            // A lone surrogate: no op is so named, and no field reads it.
            Err(_) => other_value(obj, "str"),
        });
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        // A snapshot of the items: converting a key may run code that changes the dict.
        let mut pairs = Vec::new();
        for item in dict.items().iter() {
            let (key, value) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
            pairs.push((
                config_value(&key, depth + 1, values, Position::Key)?,
                config_value(&value, depth + 1, values, position.inner())?,
            ));
        }
        return Ok(ConfigValue::Dict(pairs));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            items.push(config_value(&item?, depth + 1, values, position.inner())?);
        }
        return Ok(ConfigValue::List(items));
    }
    if position == Position::Key {
        return Ok(other_value(obj, ""));
    }
    if obj.is_instance_of::<PyBytes>()
        || obj.is_instance_of::<PyByteArray>()
        || obj.is_instance_of::<PyMemoryView>()
    {
        // `float(b"0.5")` and `int(b"100")` read bytes (bytearray, a memoryview of bytes) as
        // their text.
        let bytes = py.get_type::<PyBytes>().call1((obj,)).map_err(convert_error)?;
        let bytes = bytes.cast::<PyBytes>()?;
        return Ok(match std::str::from_utf8(bytes.as_bytes()) {
            Ok(text) => ConfigValue::Str(text.to_owned()),
            Err(_) => other_value(obj, ""),
        });
    }
    if position == Position::Value && obj.hasattr("tolist").map_err(convert_error)? {
        // Its element count first: a broadcast array of 8 bytes listed 100 M elements before
        // it was counted (red team, session 21).
        if let Ok(size) = obj.getattr("size").and_then(|s| s.extract::<usize>()) {
            if size > MAX_VALUES - *values {
                return Err(refuse(format!("more than {MAX_VALUES} values")));
            }
        }
        *values -= 1; // the same value, in another form
        let listed = obj.call_method0("tolist").map_err(convert_error)?;
        if listed.is_instance_of::<PyComplex>() && obj.hasattr("__float__").map_err(convert_error)? {
            // A numpy complex: coremltools' float() takes its real part.
            return float_of();
        }
        return config_value(&listed, depth, values, Position::Converted);
    }
    if obj.hasattr("__index__").map_err(convert_error)? {
        let index = py.import("operator")?.getattr("index")?;
        return hex_int(index.call1((obj,)).map_err(convert_error)?);
    }
    if obj.hasattr("__float__").map_err(convert_error)? {
        return float_of();
    }
    Ok(other_value(obj, ""))
}

/// A value of a type no config field takes, as Python shows it (its type's name, its `repr` cut
/// to 64 characters); `name`, where given, is the type's name.
fn other_value(obj: &Bound<'_, PyAny>, name: &'static str) -> ConfigValue {
    let type_name = match name {
        "" => obj
            .get_type()
            .name()
            .map(|n| interned(&n.to_string()))
            .unwrap_or("object"),
        name => name,
    };
    let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
    ConfigValue::Other(type_name, repr.chars().take(64).collect())
}

/// `name` for as long as the process lives: the value tree names types as `&'static str`. A
/// process meets few types; past 256 names, "object".
fn interned(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.iter().find(|n| **n == name) {
        return known;
    }
    if names.len() >= 256 {
        return "object";
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

/// Prunes `src` into `dst` with a config given as a dict in coremltools' `from_dict` layout
/// (`config_dict`) or as a JSON or YAML file (`config_path`), or by one whole-model cut
/// (`global_sparsity` S as decimal text, with `weight_threshold` and `exclude`, as
/// `mlprune prune --global-sparsity S`), and returns the per-tensor report as JSON text (the
/// `--report` format).
///
/// The config is read and the prune runs on another thread, without the GIL; this thread wakes
/// every 50 ms to let Python handle signals. Ctrl-C cancels the run, which stops before its next
/// tensor (or before its commit) and removes what it wrote, then raises `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (src, dst, *, config_dict=None, config_path=None, global_sparsity=None, weight_threshold=None, exclude=Vec::new(), joint_compression=false, device="auto", force=false, progress=false))]
#[allow(clippy::too_many_arguments)]
fn prune(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    config_dict: Option<&Bound<'_, PyAny>>,
    config_path: Option<PathBuf>,
    global_sparsity: Option<&str>,
    weight_threshold: Option<u64>,
    exclude: Vec<String>,
    joint_compression: bool,
    device: &str,
    force: bool,
    progress: bool,
) -> PyResult<String> {
    let global = match global_sparsity {
        Some(text) => Some(GlobalSparsity {
            sparsity: Sparsity::parse(text)
                .map_err(|e| PyValueError::new_err(format!("global sparsity: {e}")))?,
            exclude,
        }),
        None if exclude.is_empty() && weight_threshold.is_none() => None,
        None => {
            return Err(PyValueError::new_err(
                "weight_threshold and exclude go with global_sparsity",
            ))
        }
    };
    let dict = match (config_dict, &config_path, &global) {
        (Some(dict), None, None) => Some(config_value(dict, 1, &mut 0, Position::Value)?),
        (None, Some(_), None) | (None, None, Some(_)) => None,
        _ => {
            return Err(PyValueError::new_err(
                "give exactly one of config_dict, config_path and global_sparsity",
            ))
        }
    };
    let device = device_policy(device)?;
    refuse_in_a_fork().map_err(MlpruneError::new_err)?;
    let cancel = CancelFlag::default();
    // The run asks this thread to look for Ctrl-C once more just before its commit, and waits for
    // the answer (`Some`): a Ctrl-C pressed before then stops it, however recently. It says when
    // it is done (`None`), so that this thread returns at once: waiting out the poll, it raised a
    // Ctrl-C pressed after the commit as if it had interrupted the run.
    let (asks, asked) = mpsc::channel::<Option<mpsc::SyncSender<()>>>();
    let done = asks.clone();
    // Only this thread receives; the lock makes the receiver shareable with the GIL released.
    let asked = Mutex::new(asked);
    cancel.before_final_check(move || {
        let (reply, replied) = mpsc::sync_channel(1);
        if asks.send(Some(reply)).is_ok() {
            let _ = replied.recv();
        }
    });
    let run = {
        let cancel = cancel.clone();
        let run = move || {
            // Read here, off the GIL: a large config file took a second to read with it held.
            let config = match (&dict, &config_path, &global) {
                (Some(dict), _, _) => OptimizationConfig::from_value(dict),
                (None, Some(path), _) => OptimizationConfig::from_file(path),
                (None, None, Some(global)) => global.eligibility_config(weight_threshold),
                (None, None, None) => Err(Error::Usage("no config given".into())),
            }?;
            let job = PruneJob {
                input: src,
                output: dst,
                config,
                joint_compression,
                device,
                gpu_min_elements: DEFAULT_GPU_MIN_ELEMENTS,
                force,
                report: None,
                // `prune` returns them.
                keep_entries: true,
                config_file: config_path,
                progress,
                cancel,
            };
            mark_engine_started();
            match &global {
                Some(global) => engine::prune_global(&job, global),
                None => engine::prune(&job),
            }
        };
        // Said however the run ends, a refused config included (it cost the 50 ms poll).
        move || {
            let result = run();
            let _ = done.send(None);
            result
        }
    };
    let mut interrupted = None;
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(run);
        loop {
            let message = py.detach(|| {
                let asked = asked.lock().unwrap_or_else(PoisonError::into_inner);
                asked.recv_timeout(SIGNAL_POLL)
            });
            let reply = match message {
                Ok(Some(reply)) => Some(reply),
                // Done: a Ctrl-C not seen yet is Python's to raise, after the call returns.
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                // A worker that ended without saying so (a panic) is found here.
                Err(mpsc::RecvTimeoutError::Timeout) if worker.is_finished() => break,
                Err(mpsc::RecvTimeoutError::Timeout) => None,
            };
            if interrupted.is_none() {
                if let Err(e) = py.check_signals() {
                    cancel.cancel();
                    interrupted = Some(e);
                }
            }
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
        }
        worker.join()
    });
    if let Some(e) = interrupted {
        // Seen up to the final check (or while the run waited for the folder's lock): the run
        // stopped on the flag and left nothing. Seen in the few system calls of the commit
        // itself, it is raised with the output in place, as Python would raise it on return.
        return Err(e);
    }
    let summary = result
        .map_err(|_| MlpruneError::new_err("internal error: the prune thread panicked"))?
        .map_err(to_py_err)?;
    serde_json::to_string(&summary.tensors)
        .map_err(|e| MlpruneError::new_err(format!("cannot serialize the report: {e}")))
}

/// `mlprune inspect PATH --json`, as JSON text.
#[pyfunction]
fn inspect(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    refuse_in_a_fork().map_err(MlpruneError::new_err)?;
    mark_engine_started();
    py.detach(|| mlprune::inspect::Inspection::open(&path).and_then(|i| mlprune::inspect::render_json(&i)))
        .map_err(to_py_err)
}

/// The `mlprune` command line (`argv[0]` first), run to its exit code: the console script.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    if let Err(message) = refuse_in_a_fork() {
        mlprune::error::write_stderr(&format!("mlprune: error: {message}\n"));
        return 1;
    }
    // `--version`, `--help` and usage errors start no worker.
    let works = argv
        .iter()
        .skip(1)
        .any(|a| matches!(a.to_str(), Some("prune" | "inspect" | "bench" | "generate")));
    if works {
        mark_engine_started();
    }
    py.detach(|| mlprune::cli::run(argv))
}

#[pymodule]
fn _mlprune(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MlpruneError", m.py().get_type::<MlpruneError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    Ok(())
}
