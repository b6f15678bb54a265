//! The prune pipeline: package → model → graph → plan → per-tensor kernels → encode → write.
//!
//! Ops are visited once, in program order, and `weight.bin` is written in that same order: each
//! pruned const's new blobs are appended where the const stood, every other blob is copied (once per
//! original offset; the writer stores equal content once). A blob several consts read (the
//! functions of a multifunction model share equal weights) is pruned once, for the first; the others
//! point at its output blobs (`crate::shared`). Ops that coremltools' export would merge into an
//! earlier equal op are dropped and their readers rebound (`crate::dedupe`). Replacements are one op
//! for one op, so the graph's op paths stay valid while the
//! program is rewritten. Output goes to a staging folder that is renamed into place only at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::blob::ReadThreads;
pub use crate::cancel::CancelFlag;
use crate::config::{OpConfig, OptimizationConfig};
use crate::dedupe::{Deduplicator, Near, Verdict};
use crate::devices::{Devices, Placement};
pub use crate::dispatch::DevicePolicy;
use crate::dispatch::{KernelResult, Order, TensorInput};
use crate::encode::{sparse_to_dense_op, sparsified_name};
use crate::error::{Error, IoContext, Result};
use crate::global_sparsity::decide_cut;
pub use crate::global_sparsity::{CutReport, GlobalSparsity};
use crate::joint::{joint_ops, materialize, plan_joint, Context as JointContext, JointKind, JointNamer};
use crate::mil::access::OpPath;
use crate::mil::assemble::{assemble, Assembled, HeldOps, TopOps};
use crate::mil::fault::Fault;
use crate::mil::graph::{GraphView, UseSite};
use crate::mil::op_file::{ChangeWatch, OpFile};
use crate::mil::spill::{SpilledOps, SpilledRenames};
use crate::mil::value::{OperationExt, ValueExt};
use crate::mil::LoadedModel;
use crate::package::{check_output_spares, OutputPackage, OutputPlace, Package, TableFolder};
use crate::plan::{consumer_label, plan, report_shape, Decision, Plan, PlannedTensor};
use crate::prefetch::{Input, Job, Prefetcher, FRESH_READ_LIMIT};
use crate::proto::mil::{NamedValueType, Operation, Program};
use crate::report_stream::ReportStream;
use crate::shared::{check_shared_configs, qualified, renamed_copy, BlobReaders, Outcome};
use crate::sparsified::SparsifiedConsts;
use crate::weights::{WeightFileBuilder, WeightSource};

/// A validated `mlprune prune` request.
#[derive(Debug, Clone)]
pub struct PruneJob {
    pub input: PathBuf,
    pub output: PathBuf,
    pub config: OptimizationConfig,
    pub joint_compression: bool,
    pub device: DevicePolicy,
    pub gpu_min_elements: u64,
    pub force: bool,
    /// Write the per-tensor report (`--report`) here, committed together with OUTPUT.
    pub report: Option<PathBuf>,
    /// Return every tensor's report entry in [`PruneSummary::tensors`] (the Python API does).
    /// Otherwise only the counts are kept (`report` streams the entries to its file): a model of
    /// many small tensors would hold one entry per tensor for nothing.
    pub keep_entries: bool,
    /// The config file the job was read from, if any: the report may not overwrite it.
    pub config_file: Option<PathBuf>,
    /// Show a progress bar on stderr (it stays hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Checked before every op and before the commit: once set, the run fails with
    /// `Error::Interrupted` and leaves nothing behind.
    pub cancel: CancelFlag,
}

/// One entry of `--report`. A run keeps one per planned tensor, so texts every entry repeats
/// (function, dtype, mode, the global cut) are shared rather than copied.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    /// The function of a multifunction model (`main` for a single-function one).
    pub function: Arc<str>,
    pub name: String,
    pub consumer: String,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub mode: &'static str,
    pub pruned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Share of zeros after pruning (before, for skipped tensors is not computed: `null`).
    pub sparsity: Option<f64>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub device: &'static str,
    /// Why the kernel ran on that device (the policy, the size cut-off, `auto`'s race); absent
    /// when no kernel ran (a tensor the plan skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_reason: Option<String>,
    pub millis: f64,
    /// `--global-sparsity`: the one cut every eligible tensor was pruned by (mode `global`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_cut: Option<Arc<CutReport>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneSummary {
    /// Every planned tensor's report entry, when the job kept them (`keep_entries`); empty
    /// otherwise (`report` writes them to its file as they are made).
    pub tensors: Vec<TensorReport>,
    /// Tensors the plan considered (pruned or skipped), and how many of them were pruned.
    pub planned: usize,
    pub pruned: usize,
    /// One-line notices for the user (e.g. `--device auto` found no GPU); the CLI prints them unless
    /// `--quiet`.
    pub notices: Vec<String>,
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    /// Ops the program rewrite stepped through after the walk (moved while splicing replacements,
    /// visited while renaming uses): one pass each, so at most a small multiple of the op count
    /// whatever the number of pruned tensors. A count of work, for scaling tests.
    #[serde(skip)]
    pub rewrite_steps: usize,
    /// `--global-sparsity`'s cut, `None` otherwise.
    pub global_cut: Option<CutReport>,
}

impl PruneSummary {
    pub fn pruned_count(&self) -> usize {
        self.pruned
    }
}

pub fn prune(job: &PruneJob) -> Result<PruneSummary> {
    prune_with(job, None)
}

/// `--global-sparsity`: `job.config` must be the global magnitude config whose eligibility applies
/// (see [`crate::global_sparsity`]); every eligible tensor not excluded is pruned by one cut.
pub fn prune_global(job: &PruneJob, global: &GlobalSparsity) -> Result<PruneSummary> {
    if job.joint_compression {
        return Err(Error::Usage(
            "--global-sparsity cannot be combined with --joint-compression".into(),
        ));
    }
    prune_with(job, Some(global))
}

fn prune_with(job: &PruneJob, global: Option<&GlobalSparsity>) -> Result<PruneSummary> {
    let mut watch = None;
    let mut fault = None;
    prune_steps(job, global, &mut watch, &mut fault).map_err(|e| {
        // A failed read of the graph index's scratch files, or an op read back from a file that
        // changed, explains whatever failed after it.
        (fault.as_ref().and_then(Fault::take))
            .or_else(|| watch.as_ref().and_then(ChangeWatch::error_if_changed))
            .unwrap_or(e)
    })
}

/// [`prune_with`]; `watch` is set once the ops are read from the model file, `fault` once the
/// graph index is built.
fn prune_steps(
    job: &PruneJob,
    global: Option<&GlobalSparsity>,
    watch: &mut Option<ChangeWatch>,
    fault: &mut Option<Fault>,
) -> Result<PruneSummary> {
    job.config.validate()?;
    let mut devices = Devices::new(job.device, job.gpu_min_elements)?;
    // The sweep of stale extractions spares every path the run names, not only the input.
    let named: Vec<&std::path::Path> = (job.config_file.iter().chain(&job.report))
        .map(PathBuf::as_path)
        .chain([job.output.as_path()])
        .collect();
    let package = Package::open_sparing(&job.input, &named)?;
    // An old OUTPUT holding the config is named as such before `OutputPlace` refuses it as no
    // package of ours.
    let configs: Vec<&std::path::Path> = job.config_file.iter().map(|c| c.as_path()).collect();
    check_output_spares(&job.output, &configs, job.force)?;
    // Checked once, before anything is made next to it; the tables and the staged package go
    // where this says.
    let place = OutputPlace::check(&package, &job.output, job.force)?;
    // Declared before the tables whose files it holds, so that it is dropped after them.
    let tables = TableFolder::create(&place)?;
    let model_path = package.model_path();
    let mut model = LoadedModel::read(&model_path, &package.display_path(&model_path))?;
    let functions = model.program.functions.len();
    if job.joint_compression && functions > 1 {
        // Shared blobs feed several ops of a joint chain each (indices, LUT, scales); pruning them
        // once across functions is not built yet, and pruning them per function would unshare them.
        return Err(Error::Unsupported(format!(
            "{}: --joint-compression of a multifunction model ({functions} functions) is not supported",
            model.path.display()
        )));
    }
    // The ops stay in the file and are read back as they are needed, instead of the whole file
    // staying in memory (issue 18).
    let load_notices = std::mem::take(&mut model.notices);
    let mut graph = GraphView::of_model(&mut model, Some(tables.path()))?;
    *watch = graph.op_file().map(OpFile::watch);
    *fault = Some(graph.fault());
    let mut shared_blobs = BlobReaders::default();
    let mut planned = if job.joint_compression {
        let joint = plan_joint(&model.program, &graph, &job.config, model.spec_version())?;
        Plan::of(
            joint
                .into_iter()
                .map(|p| PlannedTensor::new(p.op_index, &p.meta, p.decision)),
            graph.scratch_dir(),
        )?
    } else {
        let mut planned = plan(&model.program, &graph, &job.config)?;
        shared_blobs = check_shared_configs(&model.program, &graph, &job.config, &mut planned)?;
        planned
    };
    let source = WeightSource::open(&package, Some(tables.path()))?;
    let had_weight_file = source.blob_reader().is_some();
    let weight_bytes_before = source.blob_reader().map_or(0, |r| r.size());
    let global_cut = match global {
        Some(g) => Some(decide_cut(
            &model.program,
            &graph,
            &source,
            (&mut planned, &mut shared_blobs),
            g,
            &job.cancel,
        )?),
        None => None,
    };

    // The report is spared by the sweep of leftovers too: it may be named like one, or lie in a
    // folder so named, and a failed run must leave it as it was.
    let reads: Vec<&std::path::Path> = configs.iter().copied().chain(job.report.as_deref()).collect();
    let mut out = OutputPackage::create_at(&package, &place, &reads)?;
    if let Some(report) = &job.report {
        let protected: Vec<&std::path::Path> = std::iter::once(job.input.as_path())
            .chain(job.config_file.as_deref())
            .collect();
        out.reserve_companion(report, &protected)?;
    }
    let weight_path = out.weight_path();
    let mut rewrite = Rewrite {
        spec_version: model.spec_version(),
        weights: WeightFileBuilder::create(&weight_path)?,
        namer: JointNamer::new(),
        edits: Vec::new(),
        replaced: None,
        renames: SpilledRenames::create_in(out.scratch_dir())?,
        sparsified: SparsifiedConsts::new_in(Some(out.scratch_dir())),
        dedupe: Deduplicator::new_in(Some(out.scratch_dir())),
        shared: shared_blobs,
    };
    let keep_entries = job.keep_entries;
    let mut report_stream = match &job.report {
        Some(_) => Some(ReportStream::new(out.companion_file()?)),
        None => None,
    };
    let planned_count = planned.len();
    // A pruned tensor stores two blobs (mask, kept values), a skipped one its copy.
    let prunes = planned.prunes();
    rewrite.weights.reserve_blobs(planned_count + prunes);
    let mut pruned_count = 0;
    let mut reports = Vec::with_capacity(if keep_entries { planned_count } else { 0 });
    let shared_cut = global_cut.clone().map(Arc::new);
    let mut progress = Progress::new(job.progress, weight_bytes_before, planned.len());
    // Plain consts are read ahead on a reader thread; joint compression materializes its inputs
    // from several ops and reads them itself.
    let read_ahead = !job.joint_compression;
    let mut next_plan = planned.cursor();
    let mut changed_ops = SpilledOps::create_in(out.scratch_dir())?;
    std::thread::scope(|scope| -> Result<()> {
        let jobs = {
            let (program, graph, planned) = (&model.program, &graph, &planned);
            let fault = graph.fault();
            // The plan's pruned entries in program order; a blob several consts share is read for
            // the first of them only, the others reuse its result. A failed read of the plan's
            // scratch file ends the list, and fails the run once the walk is over.
            (0..if read_ahead { planned.len() } else { 0 })
                .map_while(move |i| planned.get(i).map_err(|e| fault.record(e)).ok())
                .filter(|p| p.is_prune() && !p.reuses_shared)
                .filter_map(move |p| prefetch_job(program, graph, p.op_index))
        };
        let prefetcher = Prefetcher::start(scope, &source, jobs);
        for (index, info) in graph.infos() {
            job.cancel.check()?;
            let started = Instant::now();
            let plan_entry = next_plan.take_if_at(index)?;
            let result = match &plan_entry {
                Some(PlannedTensor {
                    decision: Decision::Prune(config),
                    ..
                }) if job.joint_compression => {
                    Some(rewrite.prune_joint(&model.program, &graph, &source, index, config, &mut devices)?)
                }
                Some(PlannedTensor {
                    decision: Decision::Prune(config),
                    ..
                }) => Some(rewrite.prune_const(
                    &model.program,
                    &graph,
                    (&source, &prefetcher),
                    index,
                    match &global_cut {
                        Some(g) => Order::Cut(g.cut),
                        None => Order::Config(config),
                    },
                    &mut devices,
                )?),
                _ => None,
            };
            let (result, placement) = match result {
                Some((r, placement)) => (Some(r), Some(placement)),
                None => (None, None),
            };
            let gone = || Error::Graph(format!("op '{}' disappeared during rewrite", info.name));
            // One op for one, so later paths stay valid. Stored at the end, once the index is
            // freed (see `SpilledOps`); an op owning a nested block is then decoded and encoded
            // once for all the ops changed in it.
            let changed = if let Some(new_op) = rewrite.replaced.take() {
                Some(new_op)
            } else if !matches!(result, Some(Ok(_))) {
                let mut op = graph.op(&model.program, index).ok_or_else(gone)?;
                // Stored again only when its blob references moved: other ops keep their bytes.
                rewrite.carry_op(&mut op, &graph, index, &source)?.then_some(op)
            } else {
                None
            };
            if let Some(op) = changed {
                changed_ops.push(&info.path, &op)?;
            }
            if let Some(p) = plan_entry {
                progress.tensor_done(&info.name, p.storage_bytes().unwrap_or(0));
                pruned_count += usize::from(matches!(result, Some(Ok(_))));
                if keep_entries || report_stream.is_some() {
                    let function = info.path.function.clone();
                    let cut_by_global = matches!(p.decision, Decision::Prune(_)).then_some(&shared_cut);
                    let consumer = consumer_label(&graph, index);
                    let shape = report_shape(&model.program, &graph, index);
                    let mut report = tensor_report(
                        p,
                        (function, &info.name, shape),
                        consumer,
                        result,
                        started,
                        placement,
                    );
                    if let Some(Some(g)) = cut_by_global {
                        report.mode = "global";
                        report.global_cut = Some(g.clone());
                    }
                    if let Some(stream) = report_stream.as_mut() {
                        stream.push(&report)?;
                    }
                    if keep_entries {
                        reports.push(report);
                    }
                }
            }
        }
        Ok(())
    })?;
    progress.finish();
    // Whatever the walk read from the index, it read right: no read of its scratch files failed.
    graph.fault().check()?;
    // What only the walk needed is freed before the stored changes come back: the index, the rest
    // of the plan, the deduplication and rename tables, and (once its last blob is written) the
    // writer's store-once table. Fields a destructuring leaves out would live to the end.
    let mut op_file = graph.take_op_file();
    drop(graph);
    drop(next_plan);
    drop(planned);
    let Rewrite {
        weights,
        edits,
        renames,
        dedupe,
        sparsified,
        shared,
        namer,
        replaced: _,
        spec_version: _,
    } = rewrite;
    drop((dedupe, sparsified, shared, namer));
    let blob_count = weights.blob_count();
    weights.finish()?;
    let pruned_any = pruned_count > 0;
    // The output's bodies are assembled op by op into a scratch file, never held whole.
    let renames = renames.read_back_into_map(Some(out.scratch_dir()))?;
    let mut held;
    let top: &mut dyn TopOps = match op_file.as_mut() {
        Some(file) => file,
        None => {
            held = HeldOps::take_from(&mut model.program);
            &mut held
        }
    };
    let (mut assembled, rewrite_steps) = assemble(
        &mut model.program,
        top,
        changed_ops,
        edits,
        &renames,
        out.scratch_dir(),
    )?;
    drop(renames);
    if pruned_any && model.spec_version() < 7 {
        bump_to_ios16(&mut model, &mut assembled);
    }
    if blob_count == 0 && !had_weight_file {
        // Mirror the input: a package without blobs has an empty weights folder, no weight.bin.
        std::fs::remove_file(&weight_path).at(&weight_path)?;
    } else {
        let mut manifest = package.manifest().clone();
        if manifest.ensure_weights_item() {
            out.set_manifest(&manifest)?;
        }
    }
    let weight_bytes_after = std::fs::metadata(&weight_path).map(|m| m.len()).unwrap_or(0);
    let model_path = out.model_path();
    model.write_with(&model_path, &assembled)?;
    drop((model, assembled));
    if let Some(stream) = report_stream {
        stream.finish()?;
    }
    let mut notices = load_notices;
    notices.extend_from_slice(out.notices());
    notices.extend(devices.notices);
    source.check_unchanged()?;
    notices.extend(out.commit_unless(&job.cancel)?);
    Ok(PruneSummary {
        tensors: reports,
        planned: planned_count,
        pruned: pruned_count,
        weight_bytes_before,
        weight_bytes_after,
        notices,
        rewrite_steps,
        global_cut,
    })
}

/// A const op stored in more bytes than this holds its value inline (a `weight.bin` reference is
/// a few dozen bytes): the reader is given no job for it.
const READ_AHEAD_OP_LIMIT: usize = 1 << 20;

/// The reader's job for the const at `op_index`; none for a const holding its value inline, whose
/// data is in the op itself: the reader would only hold a second copy of the op and of its value
/// beside the engine's (a 256 MiB inline tensor peaked at 4× its size).
fn prefetch_job(program: &Program, graph: &GraphView, op_index: usize) -> Option<Job> {
    if graph
        .op_len(op_index)
        .is_some_and(|len| len > READ_AHEAD_OP_LIMIT)
    {
        return None;
    }
    Some(Job {
        op_index,
        name: graph.name(op_index).into(),
        op: graph.op_bytes(program, op_index)?,
    })
}

/// Tensors done, bytes, throughput and ETA on stderr. indicatif hides it when stderr is not a
/// terminal; `--quiet` hides it always.
struct Progress {
    bar: indicatif::ProgressBar,
    done: usize,
    tensors: usize,
}

impl Progress {
    fn new(enabled: bool, total_bytes: u64, tensors: usize) -> Self {
        let bar = if enabled {
            indicatif::ProgressBar::with_draw_target(
                Some(total_bytes),
                indicatif::ProgressDrawTarget::stderr(),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        ) {
            bar.set_style(style);
        }
        Progress {
            bar,
            done: 0,
            tensors,
        }
    }

    fn tensor_done(&mut self, name: &str, bytes: u64) {
        self.done += 1;
        self.bar.inc(bytes);
        // The name comes from the model: escaped like inspect's table, it cannot drive the terminal.
        let name = crate::error::escape_control(name);
        self.bar
            .set_message(format!("{}/{} tensors {name}", self.done, self.tensors));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The pending rewrite of one program: blobs are written as ops are visited, while op
/// replacements are recorded and spliced in at the end (joint compression replaces one op by two,
/// which would move later op paths).
struct Rewrite {
    spec_version: i32,
    weights: WeightFileBuilder,
    namer: JointNamer,
    edits: Vec<(OpPath, Vec<Operation>)>,
    /// The op that replaces the one just visited, one for one: the walk puts it in place at once.
    replaced: Option<Operation>,
    /// `(function, old output, new output)` to rebind once the edits are in (on disk meanwhile: a
    /// model of many tensors renames each of them).
    renames: SpilledRenames,
    /// The consts whose `<name>_sparsified` this rewrite defined, to find a name created twice
    /// without reading `renames` back.
    sparsified: SparsifiedConsts,
    /// coremltools' `const_deduplication`, applied to every const and constexpr op as it is final.
    dedupe: Deduplicator,
    /// What became of each shared blob pruned so far (see [`crate::shared`]).
    shared: BlobReaders,
}

/// `Ok((kept, bytes_after))` for a pruned tensor, `Err(reason)` when the kernel skipped it.
type PruneResult = std::result::Result<(u64, u64), String>;

impl Rewrite {
    /// Records that uses of `old` in `function` are to read `new`.
    fn rename(&mut self, function: &Arc<str>, old: &str, new: String) -> Result<()> {
        self.renames.push(function, old, &new)
    }

    /// Records that the const at `index` now defines `<name>_sparsified` for its output `old`.
    fn rename_to_sparsified(
        &mut self,
        graph: &GraphView,
        index: usize,
        old: &str,
        new: String,
    ) -> Result<()> {
        self.rename(graph.function(index), old, new)?;
        self.sparsified.insert(graph, index)
    }

    /// Carries an op the walk does not prune into the output: its blobs are copied, unless
    /// coremltools' `const_deduplication` merges it into an earlier op; then it is dropped and its
    /// readers are rebound (a const close to an earlier one before its blob is copied). Returns
    /// whether `op` changed.
    fn carry_op(
        &mut self,
        op: &mut Operation,
        graph: &GraphView,
        index: usize,
        source: &WeightSource,
    ) -> Result<bool> {
        let info = graph.info(index);
        let returned = op
            .outputs
            .first()
            .is_some_and(|o| returned_by_own_block(graph, index, &o.name));
        // A const close enough to an earlier one is dropped before its blob is copied.
        let near = self.dedupe.near_duplicate(
            &info.path,
            op,
            returned,
            || input_const_bytes(op, &info.name, source),
            &mut self.weights,
        )?;
        let (duplicate_of, changed) = match near {
            Near::DuplicateOf(first) => (Some(first), false),
            Near::Returned => (
                None,
                self.weights.copy_op_blobs(op, &info.name, source.blob_reader())?,
            ),
            Near::None => {
                let changed = self.weights.copy_op_blobs(op, &info.name, source.blob_reader())?;
                match self.dedupe.observe(&info.path, op, returned, &mut self.weights)? {
                    Verdict::DuplicateOf(first) => (Some(first), changed),
                    Verdict::Keep => (None, changed),
                }
            }
        };
        if let Some(first) = duplicate_of {
            let duplicate = op.outputs[0].name.clone();
            self.rename(&info.path.function, &duplicate, first)?;
            self.edits.push((info.path.clone(), Vec::new()));
        }
        Ok(changed)
    }

    /// Prunes a plain `const` into `constexpr_sparse_to_dense` (spec §5.10).
    fn prune_const(
        &mut self,
        program: &Program,
        graph: &GraphView,
        (source, prefetcher): (&WeightSource, &Prefetcher),
        index: usize,
        order: Order<'_>,
        devices: &mut Devices,
    ) -> Result<(PruneResult, Placement)> {
        let info = graph.info(index);
        let op = graph
            .op(program, index)
            .ok_or_else(|| Error::Graph(format!("no op '{}'", info.name)))?;
        let (value, output) = match (op.const_value(), op.outputs.first()) {
            (Some(v), Some(o)) => (v, o),
            _ => return Err(Error::tensor(&info.name, "const op without a value or an output")),
        };
        // A buffer the writer thread has finished with becomes the next read-ahead buffer.
        while let Some(buffer) = self.weights.recycled_tensor() {
            prefetcher.recycle(buffer);
        }
        let key = self.shared.shared_of(value)?;
        if let Some(outcome) = key.map(|k| self.shared.outcome(k)).transpose()?.flatten() {
            // Not read again: the prefetcher has no job for it either.
            return self.reuse_shared(graph, index, outcome, output);
        }
        let input = match prefetcher.next(index) {
            Some(ready) => ready?,
            None => match source.map(&info.name, value)? {
                Some((meta, mapped)) => Input::Mapped(meta, mapped),
                // Not read ahead: nothing else runs while the engine reads, so the pool reads,
                // into a spare if one was passed back (they were all handed to the prefetcher
                // just above).
                None => {
                    let spare = prefetcher.take_spare();
                    let (meta, data) = source.read_reusing(&info.name, value, spare, ReadThreads::Pool)?;
                    Input::Read(meta, data)
                }
            },
        };
        let (meta, (result, device)) = match input {
            Input::Read(meta, data) => {
                let run = devices.run(order, TensorInput::Owned(data), &meta.shape, &info.name)?;
                (meta, run)
            }
            Input::Mapped(meta, mapped) => {
                let view = mapped
                    .view()
                    .ok_or_else(|| Error::tensor(&info.name, "mapped data does not match its type"))?;
                let out = prefetcher.take_spare_of(meta.dtype);
                let run = devices.run(order, TensorInput::View { view, out }, &meta.shape, &info.name)?;
                // The mapping is dropped here, which releases its pages.
                (meta, run)
            }
        };
        let pruned = match result {
            KernelResult::Skipped(reason) => {
                self.shared.record(key, || Outcome::Skipped {
                    reason: reason.clone(),
                    first: qualified(graph, index),
                    device: device.device,
                })?;
                return Ok((Err(reason), device));
            }
            KernelResult::Pruned(p) => p,
        };
        let new_name = self.fresh_name(graph, index)?;
        let kept = pruned.kept;
        let bytes_after = sparse_bytes(pruned.nonzero.dtype(), kept, meta.count);
        let new_op = sparse_to_dense_op(
            &info.name,
            output.r#type.clone().unwrap_or_default(),
            &meta.shape,
            pruned.nonzero,
            pruned.mask,
            self.spec_version,
            &mut self.weights,
        )?;
        // Functions sharing this blob reuse the op even when this block merges it: its blobs exist.
        self.shared.record(key, || Outcome::Pruned {
            kept,
            bytes_after,
            op: new_op.clone(),
            first: qualified(graph, index),
            device: device.device,
        })?;
        if self.merged_into_earlier(graph, index, &new_op, &output.name)? {
            return Ok((Ok((kept, 0)), device));
        }
        // The writer thread writes these values while the next tensor is read and pruned: three
        // tensors in memory. That fits the memory bound (two of the largest tensor plus 128 MiB)
        // only for tensors the reader may also read ahead into fresh memory; after a larger one,
        // wait until its values are written, so that at most two are in memory.
        if meta.storage_bytes().is_none_or(|bytes| bytes > FRESH_READ_LIMIT) {
            self.weights.flush()?;
        }
        self.rename_to_sparsified(graph, index, &output.name, new_name)?;
        self.replaced = Some(new_op);
        Ok((Ok((kept, bytes_after)), device))
    }

    /// coremltools' export merges a sparse op equal to an earlier one in its block (identical
    /// weights, or same-shaped weights pruned to all zeros): the later one's readers read the
    /// earlier op, and it stores nothing of its own (its blobs were stored once already). True
    /// when `new_op`, written for the const at `index`, was merged so.
    fn merged_into_earlier(
        &mut self,
        graph: &GraphView,
        index: usize,
        new_op: &Operation,
        output: &str,
    ) -> Result<bool> {
        let info = graph.info(index);
        let returned = returned_by_own_block(graph, index, output);
        match self
            .dedupe
            .observe(&info.path, new_op, returned, &mut self.weights)?
        {
            Verdict::DuplicateOf(first) => {
                self.rename(&info.path.function, output, first)?;
                self.edits.push((info.path.clone(), Vec::new()));
                Ok(true)
            }
            Verdict::Keep => Ok(false),
        }
    }

    /// `<name>_sparsified` for the const at `index`, refused if that value exists already. Two
    /// consts can share a `name` attribute (names are only unique per output): the second would
    /// define `<name>_sparsified` again, so names this rewrite already created count too.
    fn fresh_name(&self, graph: &GraphView, index: usize) -> Result<String> {
        let info = graph.info(index);
        let new_name = sparsified_name(&info.name);
        let created = self.sparsified.contains(&info.path.function, &info.name)?;
        if created || graph.producer(&info.path.function, &new_name).is_some() {
            return Err(Error::Graph(format!(
                "cannot prune '{}': the model already has a value named '{new_name}'",
                info.name
            )));
        }
        Ok(new_name)
    }

    /// Replaces the const at `index`, whose blob an earlier const shared and was pruned (or
    /// skipped by the kernel) for, by an op reading that result's blobs: nothing is read or
    /// computed again. The plan made sure both resolve to the same config
    /// ([`check_shared_configs`]). The copy goes through its own block's deduplication, as pruning
    /// this function's source on its own would.
    fn reuse_shared(
        &mut self,
        graph: &GraphView,
        index: usize,
        outcome: Outcome,
        output: &NamedValueType,
    ) -> Result<(PruneResult, Placement)> {
        let (kept, bytes_after, op, first, device) = match outcome {
            Outcome::Skipped {
                reason,
                first,
                device,
            } => {
                let placement = Placement {
                    device,
                    reason: format!("shared weight.bin blob: the kernel ran once, for {first}"),
                };
                return Ok((Err(reason), placement));
            }
            Outcome::Pruned {
                kept,
                bytes_after,
                op,
                first,
                device,
            } => (kept, bytes_after, op, first, device),
        };
        let placement = Placement {
            device,
            reason: format!("shared weight.bin blob: pruned once, for {first}"),
        };
        let new_name = self.fresh_name(graph, index)?;
        let new_op = renamed_copy(&op, &new_name);
        // This function's own block may hold an equal op already, as pruning its source alone
        // would find.
        if self.merged_into_earlier(graph, index, &new_op, &output.name)? {
            return Ok((Ok((kept, 0)), placement));
        }
        self.rename_to_sparsified(graph, index, &output.name, new_name)?;
        self.replaced = Some(new_op);
        Ok((Ok((kept, bytes_after)), placement))
    }

    /// Prunes a quantized or palettized weight into its iOS18 joint form (spec §5.9).
    fn prune_joint(
        &mut self,
        program: &Program,
        graph: &GraphView,
        source: &WeightSource,
        index: usize,
        config: &OpConfig,
        devices: &mut Devices,
    ) -> Result<(PruneResult, Placement)> {
        let info = graph.info(index);
        let m = materialize(&JointContext::new(program, graph, source), index)?;
        let (result, device) = devices.run(
            Order::Config(config),
            TensorInput::borrowing(&m.dense),
            &m.shape,
            &info.name,
        )?;
        let pruned = match result {
            KernelResult::Skipped(reason) => return Ok((Err(reason), device)),
            KernelResult::Pruned(p) => p,
        };
        let original = graph
            .op(program, index)
            .ok_or_else(|| Error::Graph(format!("no op '{}'", info.name)))?;
        let old_output = original
            .outputs
            .first()
            .ok_or_else(|| Error::tensor(&info.name, "constexpr op without an output"))?
            .name
            .clone();
        let names = self.namer.names(graph, index)?;
        let ops = joint_ops(
            &original,
            &info.name,
            &m,
            &pruned.mask,
            &names,
            source,
            &mut self.weights,
        )?;
        let stored = match &m.kind {
            JointKind::ShiftScale { data, .. } => data.dtype(),
            JointKind::Lut { indices, .. } => indices.dtype(),
        };
        let count = m.dense.len() as u64;
        self.rename(&info.path.function, &old_output, ops.output)?;
        self.edits.push((info.path.clone(), ops.ops));
        Ok((Ok((ops.kept, sparse_bytes(stored, ops.kept, count))), device))
    }
}

/// The stored bytes of a blob-backed `const` of the input, checked like a copy checks them.
fn input_const_bytes(op: &Operation, name: &str, source: &WeightSource) -> Result<Vec<u8>> {
    let tensor = format!("{name}.val");
    let value = op
        .const_value()
        .ok_or_else(|| Error::tensor(&tensor, "const op without a value"))?;
    let meta = crate::weights::source::blob_value_meta(&tensor, value)?;
    let (reader, offset) = match (source.blob_reader(), value.blob_offset()) {
        (Some(reader), Some(offset)) => (reader, offset),
        _ => {
            return Err(Error::tensor(
                &tensor,
                "refers to weight.bin but the package has no weight.bin",
            ))
        }
    };
    reader
        .read(offset, meta.dtype, meta.count)
        .map_err(|e| crate::weights::source::in_tensor(&tensor, e))
}

/// Whether the block holding op `index` returns `value` (coremltools keeps such a duplicate).
fn returned_by_own_block(graph: &GraphView, index: usize, value: &str) -> bool {
    let path = &graph.path(index);
    // The op owning the block: none for a function body, else the op two steps up.
    let owner_steps = path.steps.len().checked_sub(2).map(|n| &path.steps[..n]);
    graph.output_uses(index, value).iter().any(|site| match site {
        UseSite::BlockOutput { owner: None } => owner_steps.is_none(),
        UseSite::BlockOutput { owner: Some(o) } => graph.get(*o).is_some_and(|owner| {
            owner.path.specialization == path.specialization
                && Some(owner.path.steps.as_slice()) == owner_steps
        }),
        UseSite::Input { .. } => false,
    })
}

/// Stored bytes of a sparse tensor: the kept values plus one mask bit per element.
fn sparse_bytes(dtype: crate::dtype::ScalarType, kept: u64, count: u64) -> u64 {
    dtype
        .storage_bytes(kept)
        .and_then(|b| b.checked_add(count.div_ceil(8)))
        .unwrap_or(u64::MAX)
}

/// coremltools loads programs at spec ≥ 7 for pruning (constexpr ops do not exist in iOS15): spec 6
/// becomes 7 and every `CoreML5` opset, both `Function.opset` and its block key, becomes `CoreML6`.
fn bump_to_ios16(model: &mut LoadedModel, bodies: &mut Assembled) {
    model.shell.specification_version = 7;
    for (name, function) in &mut model.program.functions {
        if function.opset == "CoreML5" {
            function.opset = "CoreML6".into();
        }
        if let Some(block) = function.block_specializations.remove("CoreML5") {
            function.block_specializations.insert("CoreML6".into(), block);
            bodies.move_specialization(name, "CoreML5", "CoreML6");
        }
    }
}

/// `result`: `None` for a tensor the plan skipped, `Some(Err(reason))` for one the kernel skipped,
/// `Some(Ok((kept, bytes_after)))` for a pruned one. `placement`: where its kernel ran, if one did.
fn tensor_report(
    p: PlannedTensor,
    (function, name, shape): (Arc<str>, &str, Vec<u64>),
    consumer: String,
    result: Option<PruneResult>,
    started: Instant,
    placement: Option<Placement>,
) -> TensorReport {
    let bytes = p.storage_bytes().unwrap_or(0);
    let mode = match &p.decision {
        Decision::Skip(_) => "none",
        Decision::Prune(c) => c.mode_name(),
    };
    let (pruned, skipped, sparsity, bytes_after) = match (result, p.decision) {
        (Some(Ok((kept, after))), _) => {
            let sparsity = if p.count == 0 {
                0.0
            } else {
                1.0 - kept as f64 / p.count as f64
            };
            (true, None, Some(sparsity), after)
        }
        (Some(Err(reason)), _) => (false, Some(reason), None, bytes),
        (None, Decision::Skip(reason)) => (false, Some(reason.to_string()), None, bytes),
        (None, Decision::Prune(_)) => (false, None, None, bytes),
    };
    TensorReport {
        function,
        name: name.to_owned(),
        consumer,
        dtype: p.dtype.name(),
        shape,
        mode,
        pruned,
        skipped,
        sparsity,
        bytes_before: bytes,
        bytes_after,
        device: placement.as_ref().map_or("cpu", |p| p.device),
        device_reason: placement.map(|p| p.reason),
        millis: started.elapsed().as_secs_f64() * 1e3,
        global_cut: None,
    }
}
