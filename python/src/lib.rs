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
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

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

/// The process that last ran mlprune's engine here (0: none yet).
static RAN_IN: AtomicU32 = AtomicU32::new(0);

/// Refuses to run in a process forked from one that has run the engine (multiprocessing's "fork"
/// start method): a fork copies only the forking thread, so the engine's worker threads (rayon's
/// pool) are missing in the child and its first parallel step waited for them forever, Ctrl-C
/// included (red team, session 21).
fn refuse_in_a_fork() -> Result<(), String> {
    let me = std::process::id();
    match RAN_IN.load(Ordering::SeqCst) {
        0 => {
            RAN_IN.store(me, Ordering::SeqCst);
            Ok(())
        }
        ran_in if ran_in == me => Ok(()),
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

/// A dict config as the Python values it holds, for `OptimizationConfig::from_value`: `None`,
/// `bool`, `int`, `float`, `str`, `list` (or `tuple`), `dict`, and anything with `tolist` (numpy
/// values, as coremltools takes them). Passed as values, not as JSON text, which made a key `None`
/// into the name `"null"` and could not say `float("inf")` (red team, session 21). Every mapping,
/// list, key and value counts one of [`MAX_VALUES`], as in config text.
fn config_value(obj: &Bound<'_, PyAny>, depth: u32, values: &mut usize) -> PyResult<ConfigValue> {
    let too_big = |what: String| PyValueError::new_err(format!("config: {what}"));
    *values += 1;
    if *values > MAX_VALUES {
        return Err(too_big(format!("more than {MAX_VALUES} values")));
    }
    if depth > MAX_DEPTH {
        return Err(too_big(format!("nested more than {MAX_DEPTH} levels deep")));
    }
    let py = obj.py();
    Ok(if obj.is_none() {
        ConfigValue::None
    } else if let Ok(b) = obj.cast::<PyBool>() {
        ConfigValue::Bool(b.is_true())
    } else if obj.is_instance_of::<PyInt>() {
        // As a plain int (an `IntEnum` prints its name), in decimal: any size.
        let plain = py.get_type::<PyInt>().call1((obj,))?;
        ConfigValue::int_from_text(&plain.str()?.to_cow()?).map_err(PyValueError::new_err)?
    } else if obj.is_instance_of::<PyFloat>() {
        ConfigValue::Float(obj.extract::<f64>()?)
    } else if let Ok(text) = obj.cast::<PyString>() {
        ConfigValue::Str(
            text.to_cow()
                .map_err(|e| PyValueError::new_err(format!("config: {e}")))?
                .into_owned(),
        )
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        // A snapshot of the items: converting a key may run code that changes the dict.
        let mut pairs = Vec::new();
        for item in dict.items().iter() {
            let (key, value) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
            pairs.push((
                config_value(&key, depth + 1, values)?,
                config_value(&value, depth + 1, values)?,
            ));
        }
        ConfigValue::Dict(pairs)
    } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let items = obj.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        let items = items.iter().map(|item| config_value(item, depth + 1, values));
        ConfigValue::List(items.collect::<PyResult<_>>()?)
    } else if obj.hasattr("tolist")? {
        *values -= 1; // the same value, in another form
        config_value(&obj.call_method0("tolist")?, depth, values)?
    } else {
        let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
        let shown: String = repr.chars().take(64).collect();
        return Err(PyValueError::new_err(format!(
            "config: {shown} ({}) cannot be passed to mlprune",
            obj.get_type().name()?
        )));
    })
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
        (Some(dict), None, None) => Some(config_value(dict, 1, &mut 0)?),
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
        move || {
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
            let result = match &global {
                Some(global) => engine::prune_global(&job, global),
                None => engine::prune(&job),
            };
            let _ = done.send(None);
            result
        }
    };
    let (mut interrupted, mut answered) = (None, false);
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
            // Once the final check is answered the run commits: a Ctrl-C from then on is
            // Python's to raise when the call returns, not a stop of the run.
            if interrupted.is_none() && !answered {
                if let Err(e) = py.check_signals() {
                    cancel.cancel();
                    interrupted = Some(e);
                }
            }
            if let Some(reply) = reply {
                answered = true;
                let _ = reply.send(());
            }
        }
        worker.join()
    });
    if let Some(e) = interrupted {
        // Seen before the final check was answered: the run stopped on the flag (or failed
        // anyway) and left nothing.
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
