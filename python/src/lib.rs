//! `mlprune._mlprune`: the extension module under the Python package `mlprune` (python/mlprune/).
//!
//! It stays thin: paths and JSON text in, JSON text out. Turning coremltools objects into a config
//! and a report into Python objects is the Python layer's job; every rule lives in the `mlprune`
//! crate, which is called exactly as the CLI calls it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use mlprune::cancel::CancelFlag;
use mlprune::cli::DEFAULT_GPU_MIN_ELEMENTS;
use mlprune::config::OptimizationConfig;
use mlprune::engine::{self, DevicePolicy, PruneJob};
use mlprune::global_sparsity::{GlobalSparsity, Sparsity};
use mlprune::Error;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

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

/// Prunes `src` into `dst` with a config given as JSON text in coremltools' `from_dict` layout
/// (`config_json`) or as a JSON or YAML file (`config_path`), or by one whole-model cut
/// (`global_sparsity` S as decimal text, with `weight_threshold` and `exclude`, as
/// `mlprune prune --global-sparsity S`), and returns the per-tensor report as JSON text (the
/// `--report` format).
///
/// The prune runs on its own thread without the GIL; this thread wakes every 50 ms to let Python
/// handle signals. Ctrl-C cancels the run, which stops before its next tensor and removes what it
/// wrote, then raises `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (src, dst, *, config_json=None, config_path=None, global_sparsity=None, weight_threshold=None, exclude=Vec::new(), joint_compression=false, device="auto", force=false, progress=false))]
#[allow(clippy::too_many_arguments)]
fn prune(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    config_json: Option<&str>,
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
    let config = match (config_json, &config_path, &global) {
        (Some(text), None, None) => OptimizationConfig::from_json_str(text),
        (None, Some(path), None) => OptimizationConfig::from_file(path),
        (None, None, Some(global)) => global.eligibility_config(weight_threshold),
        _ => {
            return Err(PyValueError::new_err(
                "give exactly one of config_json, config_path and global_sparsity",
            ))
        }
    }
    .map_err(to_py_err)?;
    let cancel = CancelFlag::default();
    let job = PruneJob {
        input: src,
        output: dst,
        config,
        joint_compression,
        device: device_policy(device)?,
        gpu_min_elements: DEFAULT_GPU_MIN_ELEMENTS,
        force,
        report: None,
        // `prune` returns them.
        keep_entries: true,
        config_file: config_path,
        progress,
        cancel: cancel.clone(),
    };
    let mut interrupted = None;
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| match &global {
            Some(global) => engine::prune_global(&job, global),
            None => engine::prune(&job),
        });
        while !worker.is_finished() {
            py.detach(|| std::thread::sleep(SIGNAL_POLL));
            if interrupted.is_none() {
                if let Err(e) = py.check_signals() {
                    cancel.cancel();
                    interrupted = Some(e);
                }
            }
        }
        worker.join()
    });
    if let Some(e) = interrupted {
        // The run stopped on the flag (or finished first: then its output stands, as a Ctrl-C
        // that comes after a command ends leaves its output).
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
    py.detach(|| mlprune::inspect::Inspection::open(&path).and_then(|i| mlprune::inspect::render_json(&i)))
        .map_err(to_py_err)
}

/// The `mlprune` command line (`argv[0]` first), run to its exit code: the console script.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<OsString>) -> u8 {
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
