//! Command-line definitions and their validation into engine requests, and [`run`], the whole
//! command line from arguments to exit code: `main.rs` and the Python package's `mlprune` console
//! script both call it. Everything that can be wrong with the arguments is turned into an `Error`
//! here.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::pyfmt::clip;
use crate::config::{from_shortcuts, parse_n_m, OptimizationConfig, Shortcuts};
use crate::engine::{self, DevicePolicy, PruneJob, PruneSummary};
use crate::error::{escape_control, write_stderr, Error, IoContext, Result};
use crate::global_sparsity::{GlobalSparsity, Sparsity};
use crate::inspect;

/// Default `--gpu-min-elements`: under `--device auto`, smaller tensors stay on the CPU and never
/// pay a device round trip. Larger ones go to a hardware GPU only after it won the race against the
/// CPU on this machine (see `devices`): measured on an NVIDIA H200 (issue 14), the GPU path was
/// 7–40 times slower than the CPU path, so the size alone does not decide.
pub const DEFAULT_GPU_MIN_ELEMENTS: u64 = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "mlprune",
    version,
    about = "Prune Core ML ML Program models exactly like coremltools, fast"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every weight tensor of a model: consumer, dtype, shape, size, sparsity, storage.
    Inspect {
        /// An .mlpackage folder or a .zip holding one.
        input: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prune a model's weights into a new package (the input is never modified).
    Prune(PruneArgs),
    /// Write a synthetic LLM-shaped model (a chain of linear layers) for benchmarks.
    Generate(GenerateArgs),
    /// Run every prunable tensor through the CPU and the GPU kernels: check both give identical
    /// bytes and print times and GB/s per tensor (uses any GPU adapter, software ones included).
    Bench {
        /// An .mlpackage folder or a .zip holding one.
        input: PathBuf,
        /// coremltools OptimizationConfig layout (JSON/YAML); default: magnitude pruning to 50 %.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Runs per tensor and device; the best time is reported.
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: u32,
    },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where to write the package (.mlpackage folder, or .zip).
    pub output: PathBuf,
    /// Number of linear layers.
    #[arg(long, default_value_t = 8)]
    pub layers: u32,
    /// Weight shape ROWSxCOLS of even layers (odd layers are transposed so the chain connects).
    #[arg(long, default_value = "4096x4096")]
    pub shape: String,
    /// Weight dtype: fp16 or fp32.
    #[arg(long, default_value = "fp16")]
    pub dtype: String,
    /// Core ML specification version (6 to 10).
    #[arg(long, default_value_t = 7)]
    pub spec: i32,
    /// Seed of the pseudo-random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
}

impl GenerateArgs {
    pub fn to_spec(&self) -> Result<crate::synth::SynthSpec> {
        let bad_shape = || {
            Error::Usage(format!(
                "--shape must look like 4096x4096, not '{}'",
                clip(&self.shape)
            ))
        };
        let (r, c) = self.shape.split_once(['x', 'X']).ok_or_else(bad_shape)?;
        let rows = r.trim().parse().map_err(|_| bad_shape())?;
        let cols = c.trim().parse().map_err(|_| bad_shape())?;
        let dtype = match self.dtype.as_str() {
            "fp16" | "float16" => crate::dtype::ScalarType::Float16,
            "fp32" | "float32" => crate::dtype::ScalarType::Float32,
            other => {
                return Err(Error::Usage(format!(
                    "--dtype must be fp16 or fp32, not '{}'",
                    clip(other)
                )))
            }
        };
        Ok(crate::synth::SynthSpec {
            layers: self.layers,
            rows,
            cols,
            dtype,
            spec_version: self.spec,
            seed: self.seed,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The model to prune: an .mlpackage folder or a .zip holding one.
    pub input: PathBuf,
    /// Where to write the pruned model; a path ending in .zip writes a zipped package.
    pub output: PathBuf,
    /// coremltools OptimizationConfig.from_dict layout, as JSON or YAML.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["threshold", "sparsity", "n_m", "weight_threshold"])]
    pub config: Option<PathBuf>,
    /// Prune weights that are already quantized or palettized (iOS18 models).
    #[arg(long)]
    pub joint_compression: bool,
    /// Where to run the kernels.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Under --device auto, tensors with at least this many elements go to a hardware GPU
    /// (default 1048576). --device gpu sends every tensor the GPU kernels handle.
    #[arg(long, value_name = "N")]
    pub gpu_min_elements: Option<u64>,
    /// Write a per-tensor JSON report to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Shortcut: threshold pruning, zeroing |w| <= T.
    #[arg(long, value_name = "T", conflicts_with_all = ["sparsity", "n_m"])]
    pub threshold: Option<f64>,
    /// With --threshold: skip tensors that would end up less sparse than P (default 0.5).
    #[arg(long, value_name = "P", requires = "threshold")]
    pub min_sparsity: Option<f64>,
    /// Shortcut: magnitude pruning to target sparsity S in [0, 1].
    #[arg(long, value_name = "S", conflicts_with = "n_m")]
    pub sparsity: Option<f64>,
    /// With --sparsity: block sparsity with blocks of B channels.
    #[arg(long, value_name = "B", requires = "sparsity")]
    pub block_size: Option<u64>,
    /// Axis for --block-size (default 0) or --n-m (default 1).
    #[arg(long, value_name = "D")]
    pub dim: Option<u32>,
    /// Shortcut: n:m sparsity, zeroing the N smallest of every M.
    #[arg(long = "n-m", value_name = "N:M")]
    pub n_m: Option<String>,
    /// Whole-model magnitude pruning: zero the floor(S × N) smallest magnitudes over all eligible
    /// tensors together (N elements; ties at the cut are zeroed too). S is read as an exact decimal.
    #[arg(
        long,
        value_name = "S",
        value_parser = parse_global_sparsity,
        conflicts_with_all = ["config", "threshold", "min_sparsity", "sparsity", "block_size", "dim", "n_m", "joint_compression"]
    )]
    pub global_sparsity: Option<Sparsity>,
    /// With --global-sparsity: leave out this const, or every const feeding this op (repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// Only prune tensors with more than W elements (default 2048).
    #[arg(long, value_name = "W")]
    pub weight_threshold: Option<u64>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_global_sparsity(text: &str) -> std::result::Result<Sparsity, String> {
    Sparsity::parse(text)
}

impl PruneArgs {
    /// The `--global-sparsity` request, if given.
    pub fn global(&self) -> Option<GlobalSparsity> {
        self.global_sparsity.map(|sparsity| GlobalSparsity {
            sparsity,
            exclude: self.exclude.clone(),
        })
    }

    /// Validates the arguments into a job.
    pub fn to_job(&self) -> Result<PruneJob> {
        // clap's `requires` is not enforced for this optional repeated flag, so it is checked here.
        if !self.exclude.is_empty() && self.global_sparsity.is_none() {
            return Err(Error::Usage("--exclude needs --global-sparsity".into()));
        }
        let config = match (&self.config, self.global_sparsity) {
            (Some(path), _) => OptimizationConfig::from_file(path)?,
            // Eligibility is that of a global OpMagnitudePrunerConfig(target_sparsity=S,
            // weight_threshold=W): the plan decides it, as for every other mode.
            (None, Some(sparsity)) => GlobalSparsity {
                sparsity,
                exclude: Vec::new(),
            }
            .eligibility_config(self.weight_threshold)?,
            (None, None) => {
                if self.dim.is_some() && self.block_size.is_none() && self.n_m.is_none() {
                    return Err(Error::Usage("--dim needs --block-size or --n-m".into()));
                }
                let shortcuts = Shortcuts {
                    threshold: self.threshold,
                    min_sparsity: self.min_sparsity,
                    sparsity: self.sparsity,
                    block_size: self.block_size,
                    n_m: self.n_m.as_deref().map(parse_n_m).transpose()?,
                    dim: self.dim,
                    weight_threshold: self.weight_threshold,
                };
                if shortcuts == Shortcuts::default() {
                    return Err(Error::Usage(
                        "nothing to do: give --config FILE or a mode (--threshold, --sparsity, --n-m, --global-sparsity, --weight-threshold)".into(),
                    ));
                }
                from_shortcuts(&shortcuts)?
            }
        };
        Ok(PruneJob {
            input: self.input.clone(),
            output: self.output.clone(),
            config,
            joint_compression: self.joint_compression,
            device: match self.device {
                DeviceArg::Auto => DevicePolicy::Auto,
                DeviceArg::Cpu => DevicePolicy::Cpu,
                DeviceArg::Gpu => DevicePolicy::Gpu,
            },
            gpu_min_elements: self.gpu_min_elements.unwrap_or(DEFAULT_GPU_MIN_ELEMENTS),
            force: self.force,
            report: self.report.clone(),
            keep_entries: false,
            config_file: self.config.clone(),
            progress: !self.quiet,
            cancel: Default::default(),
        })
    }
}

/// The command line `args` (program name first), run to its exit code: 0 success, 1 bad input or
/// runtime failure, 2 usage or configuration error; 128 + the signal when interrupted (the signal
/// handlers exit the process themselves). Errors are printed as one `mlprune: error: ` line.
///
/// Installs process-wide signal handlers and may set `XDG_RUNTIME_DIR`: call it from a process
/// that runs this command line and nothing else, while it has one thread.
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    quiet_wayland_probe();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // --help and --version: the full text on stdout, exit 0.
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(0);
        }
        Err(e) => return report(&crate::arg_errors::one_line(&e)),
    };
    // From here on, an interrupted run removes its scratch paths (staging, temporary archives and
    // reports, extracted zips) and exits 128 + the signal number.
    if let Err(e) = crate::cleanup::install_signal_cleanup() {
        return report(&e);
    }
    match execute(cli) {
        Ok(()) => 0,
        Err(e) => report(&e),
    }
}

/// Prints the one error line and returns its exit code.
fn report(e: &Error) -> u8 {
    write_stderr(&format!("mlprune: error: {}\n", e.one_line()));
    u8::try_from(e.exit_code()).unwrap_or(1)
}

/// Mesa's Vulkan drivers probe for a Wayland display while wgpu lists adapters, and libwayland
/// prints "error: XDG_RUNTIME_DIR is invalid or not set" to stderr when the variable is unset (CI
/// boxes, ssh sessions). mlprune never opens a window; giving the probe a directory to look in
/// keeps that noise out of our one-line error contract. Done first, while the process has a single
/// thread, and only when the variable is unset.
fn quiet_wayland_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { input, json } => {
            let inspection = inspect::Inspection::open(&input)?;
            for notice in &inspection.head.notices {
                write_stderr(&format!("mlprune: {}\n", escape_control(notice)));
            }
            // Streamed: the rows are made as they are written, never held all at once.
            let written = write_stdout(|out| {
                if json {
                    inspect::write_json(&inspection, out)
                } else {
                    inspect::write_table(&inspection, out)
                }
            });
            inspection.failure().map_or(written, Err)
        }
        Command::Generate(args) => {
            let spec = args.to_spec()?;
            let params = crate::synth::generate(&spec, &args.output, args.force)?;
            write_stderr(&format!(
                "wrote {} ({params} weight parameters)\n",
                escape_control(&args.output.to_string_lossy())
            ));
            Ok(())
        }
        Command::Bench {
            input,
            config: config_path,
            runs,
        } => {
            let config = match &config_path {
                Some(path) => OptimizationConfig::from_file(path)?,
                None => crate::bench::default_config()?,
            };
            let spare: Vec<&std::path::Path> = config_path.iter().map(|p| p.as_path()).collect();
            let report = crate::bench::bench_sparing(&input, &config, runs, &spare)?;
            print_stdout(&crate::bench::render(&report))?;
            if report.rows.iter().any(|r| !r.identical) {
                return Err(Error::Gpu("bench: CPU and GPU results differ".into()));
            }
            Ok(())
        }
        Command::Prune(args) => {
            let job = args.to_job()?;
            let summary = match args.global() {
                Some(global) => engine::prune_global(&job, &global)?,
                None => engine::prune(&job)?,
            };
            if !args.quiet {
                for notice in &summary.notices {
                    write_stderr(&format!("mlprune: {}\n", escape_control(notice)));
                }
                write_stderr(&human_summary(&summary, &job));
            }
            Ok(())
        }
    }
}

fn human_summary(s: &PruneSummary, job: &PruneJob) -> String {
    let pruned = s.pruned_count();
    let cut = s
        .global_cut
        .as_ref()
        .map(|g| format!("; {}", g.summary()))
        .unwrap_or_default();
    format!(
        "pruned {pruned} of {} weight tensors ({} skipped){cut}; weight.bin {} → {} bytes; wrote {}\n",
        s.planned,
        s.planned - pruned,
        s.weight_bytes_before,
        s.weight_bytes_after,
        escape_control(&job.output.to_string_lossy())
    )
}

/// Writes to stdout, treating a closed pipe (`mlprune inspect m | head`) as success.
fn print_stdout(text: &str) -> Result<()> {
    write_stdout(|out| out.write_all(text.as_bytes()))
}

/// Runs `write` on buffered stdout and flushes it, treating a closed pipe as success.
fn write_stdout(
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.at("<stdout>"),
    }
}
