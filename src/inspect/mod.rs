//! `mlprune inspect`: one row per weight tensor, then a total line.
//!
//! A weight tensor is either a plain `const` holding a numeric tensor of rank ≥ 1 (scalars and
//! string/int32 parameters like strides are not weights), or the last op of a constexpr chain (e.g.
//! `constexpr_lut_to_dense`, or `constexpr_sparse_to_dense` fed by a joint-compression op). Consts
//! that only feed constexpr ops are part of that chain's row, not rows of their own.

mod chains;
mod json;
mod shared;
mod table;

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{OperationExt, ValueExt};
use crate::mil::LoadedModel;
use crate::package::Package;
use crate::proto::mil::{argument::binding::Binding, Operation};
use crate::weights::rebuild::op_values_mut;
use crate::weights::source::blob_value_meta;
use crate::weights::{TensorMeta, WeightSource};
use chains::ChainWalker;
pub use json::{render_json, write_json};
use shared::SharedBlobs;
pub use table::{render_table, write_table, MAX_PADDED_WIDTH};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Consumer {
    pub op: String,
    pub op_type: String,
    pub input: String,
}

/// Which consumers a row lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumers {
    All,
    /// The first, and how many others: a weight read through millions of inputs is listed in
    /// one line of the table without holding them (2,000,000 held 389 MB).
    First,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WeightRow {
    /// The function the tensor's op belongs to (`main` in a single-function model).
    pub function: String,
    pub name: String,
    pub consumers: Vec<Consumer>,
    /// Consumers not listed in `consumers`: the table lists the first and counts the others
    /// ([`Consumers::First`]); every other listing lists them all.
    #[serde(skip)]
    pub other_consumers: usize,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    /// Bytes the tensor occupies as stored (all values of its constexpr chain).
    pub bytes: u64,
    /// Share of exact zeros in the dense tensor; `None` where it cannot be read without decompressing.
    pub sparsity: Option<f64>,
    /// The producing op type: `const`, `constexpr_sparse_to_dense`, ...
    pub storage: String,
    /// The constexpr ops that produce the tensor, innermost first (empty for a plain const). Rows
    /// whose chains pass through the same ops share these strings.
    pub chain: Vec<Arc<str>>,
    /// The `weight.bin` offsets of this row's blobs that other rows store too (the same weight in
    /// several functions of a multifunction model): rows listing an offset share that blob.
    pub shared_offsets: Vec<u64>,
    /// The functions of those other rows, in name order, each once: the first
    /// [`SHARED_NAMES_SHOWN`] of them (a blob shared by thousands of functions would otherwise list
    /// them all on each of their rows: output and memory quadratic in the function count).
    pub shared_with: Vec<String>,
    /// How many functions those are in all.
    pub shared_with_count: usize,
}

/// Functions a row names among those it shares a blob with.
pub const SHARED_NAMES_SHOWN: usize = 8;

/// The report with all its rows. Its JSON is written by `json.rs`, in the layout `inspect --json`
/// streams.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectReport {
    pub input: String,
    pub spec_version: i32,
    pub opsets: Vec<String>,
    /// The program's functions, in name order.
    pub functions: Vec<String>,
    /// `defaultFunctionName` of a multifunction model's description.
    pub default_function: Option<String>,
    pub weight_file_bytes: u64,
    pub weights: Vec<WeightRow>,
    /// What the user should know about how the model was read (bodies left out, as coremltools
    /// leaves them out).
    pub notices: Vec<String>,
    /// Ops the walks of constexpr rows stepped into, counting an op once per row that reaches it,
    /// in each pass that makes the rows: linear in the rows' chains (tests check this; it is not
    /// printed).
    pub chain_steps: u64,
    /// Ops those walks decoded: each at most once, however many rows reach it.
    pub chain_reads: u64,
}

/// Reads a package and lists its weight tensors, all rows at once (tests and the Python module;
/// the command line streams them, see [`Inspection`]).
pub fn inspect(input: &Path) -> Result<InspectReport> {
    Inspection::open(input)?.into_report()
}

/// A package read for `inspect`, its rows made on demand. The first pass, in [`Inspection::open`],
/// reads and validates every blob a row needs and keeps of each row only its op and share of zeros
/// (24 bytes): the rows themselves are made again, one at a time, as they are written. Held whole,
/// they took 1.2 KB each (392 MB at 320,000 rows).
pub struct Inspection {
    /// The report without its rows (`weights` empty, the counters zero).
    pub head: InspectReport,
    /// Per row, in program order: its op and the share of zeros the first pass read.
    rows: Vec<(u32, Option<f64>)>,
    elements: u64,
    bytes: u64,
    any_shared: bool,
    maker: RefCell<RowMaker>,
    /// Why making a row failed while the rows were written (see [`Inspection::failure`]).
    failed: RefCell<Option<Error>>,
    model: LoadedModel,
    graph: GraphView,
    source: WeightSource,
    /// Keeps an extracted zip's files until the rows are made.
    _package: Package,
}

/// What making rows needs besides the model: the chain walks and the share table.
#[derive(Default)]
struct RowMaker {
    chains: ChainWalker,
    shared: SharedBlobs,
}

impl Inspection {
    /// Reads a package and makes each of its rows once. Every blob a row needs is read and
    /// validated here, so writing the rows reads no weights.
    pub fn open(input: &Path) -> Result<Self> {
        let package = Package::open(input)?;
        let model_path = package.model_path();
        let mut model = LoadedModel::read(&model_path, &package.display_path(&model_path))?;
        let graph = GraphView::of_model(&mut model, None)?;
        let source = WeightSource::open(&package, None)?;
        let mut opsets: Vec<String> = model
            .program
            .functions
            .values()
            .map(|f| f.opset.clone())
            .collect();
        opsets.dedup();
        let default_function = model
            .shell
            .description
            .as_ref()
            .map(|d| d.default_function_name.clone())
            .filter(|name| !name.is_empty());
        let head = InspectReport {
            input: input.display().to_string(),
            spec_version: model.spec_version(),
            opsets,
            functions: model.program.functions.keys().cloned().collect(),
            default_function,
            weight_file_bytes: source.blob_reader().map_or(0, |r| r.size()),
            weights: Vec::new(),
            notices: std::mem::take(&mut model.notices),
            chain_steps: 0,
            chain_reads: 0,
        };
        let mut inspection = Inspection {
            head,
            rows: Vec::new(),
            elements: 0,
            bytes: 0,
            any_shared: false,
            maker: RefCell::default(),
            failed: RefCell::default(),
            model,
            graph,
            source,
            _package: package,
        };
        let fault = inspection.graph.fault();
        fault.explain(inspection.first_pass())?;
        Ok(inspection)
    }

    fn first_pass(&mut self) -> Result<()> {
        let mut rows = Vec::new();
        let (mut elements, mut bytes) = (0u64, 0u64);
        let mut shared = SharedBlobs::default();
        for index in 0..self.graph.op_count() {
            // Read and decoded once for the blob check and the row.
            let Some(mut op) = self.graph.op(&self.model.program, index) else {
                continue;
            };
            self.check_blobs(index, &mut op)?;
            let Some((row, blobs)) = self.make_row(index, &op, None, Consumers::First)? else {
                continue;
            };
            let too_many = || Error::Graph("too many ops to inspect".into());
            rows.push((u32::try_from(index).map_err(|_| too_many())?, row.sparsity));
            elements = elements.saturating_add(row.elements);
            bytes = bytes.saturating_add(row.bytes);
            shared.add(self.function_number(&row.function), &blobs);
        }
        rows.shrink_to_fit();
        self.rows = rows;
        (self.elements, self.bytes) = (elements, bytes);
        self.any_shared = shared.any();
        self.maker.get_mut().shared = shared;
        Ok(())
    }

    /// The number of rows.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The elements and stored bytes of all rows.
    pub fn totals(&self) -> (u64, u64) {
        (self.elements, self.bytes)
    }

    /// Whether any row shares a blob with another.
    pub fn any_shared(&self) -> bool {
        self.any_shared
    }

    /// The rows in program order, each made again (the weights are not read again).
    pub fn rows(&self) -> impl Iterator<Item = Result<WeightRow>> + '_ {
        self.rows_listing(Consumers::All)
    }

    /// [`Inspection::rows`], listing `consumers`.
    pub fn rows_listing(&self, consumers: Consumers) -> impl Iterator<Item = Result<WeightRow>> + '_ {
        self.rows.iter().map(move |&(index, sparsity)| {
            // An op read back from a file that changed since the first pass is not read: say so.
            let gone = || {
                self.graph
                    .op_file()
                    .and_then(|file| file.watch().error_if_changed())
                    .unwrap_or_else(|| Error::Graph(format!("op {index} is no longer a weight row")))
            };
            let index = index as usize;
            let op = self.graph.op(&self.model.program, index).ok_or_else(gone);
            let made = op.and_then(|op| {
                self.make_row(index, &op, Some(sparsity), consumers)?
                    .ok_or_else(gone)
            });
            let (mut row, blobs) = self.graph.fault().explain(made)?;
            let function = self.function_number(&row.function);
            let marks = self
                .maker
                .borrow_mut()
                .shared
                .marks(function, &blobs, &self.head.functions);
            row.shared_offsets = marks.offsets;
            row.shared_with = marks.with;
            row.shared_with_count = marks.count;
            Ok(row)
        })
    }

    /// [`Inspection::rows`] for a writer: a row that cannot be made stops it with an I/O error,
    /// and the error itself is kept for [`Inspection::failure`].
    pub(crate) fn rows_for_writing(
        &self,
        consumers: Consumers,
    ) -> impl Iterator<Item = std::io::Result<WeightRow>> + '_ {
        self.rows_listing(consumers).map(|row| {
            row.map_err(|e| {
                let stop = std::io::Error::other(e.to_string());
                self.failed.borrow_mut().get_or_insert(e);
                stop
            })
        })
    }

    /// Why a writer stopped, when it was a row that could not be made rather than the output.
    pub fn failure(&self) -> Option<Error> {
        self.failed.borrow_mut().take()
    }

    /// What `write` (the table's or the JSON's writer) writes, as a string.
    fn render(&self, write: impl FnOnce(&Self, &mut Vec<u8>) -> std::io::Result<()>) -> Result<String> {
        let mut out = Vec::new();
        let written = write(self, &mut out);
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        written.map_err(|e| Error::Usage(e.to_string()))?;
        String::from_utf8(out).map_err(|e| Error::Usage(e.to_string()))
    }

    /// Every row at once.
    pub fn into_report(self) -> Result<InspectReport> {
        let weights = self.rows().collect::<Result<Vec<_>>>()?;
        let ChainWalker { steps, reads, .. } = self.maker.into_inner().chains;
        Ok(InspectReport {
            weights,
            chain_steps: steps,
            chain_reads: reads,
            ..self.head
        })
    }

    /// The index of `function` among the program's functions (in name order).
    fn function_number(&self, function: &str) -> u32 {
        let found = self.head.functions.binary_search_by(|f| f.as_str().cmp(function));
        // A row's function is one of the program's, and their count fits the op indices' u32.
        found.unwrap_or_default() as u32
    }

    /// A blob prune would refuse is refused here too, not left out of the listing: `op` is op
    /// `index`.
    fn check_blobs(&self, index: usize, op: &mut Operation) -> Result<()> {
        let name = self.graph.name(index);
        for (param, value) in op_values_mut(op) {
            if value.blob_offset().is_some() {
                blob_value_meta(&format!("{name}.{param}"), value)?;
            }
        }
        Ok(())
    }

    /// The row of op `index` (decoded: `op`) with the `weight.bin` offsets it stores, or `None` for
    /// an op that is not a weight. `known_sparsity` is the share of zeros an earlier pass read;
    /// without it the row's blobs are read (and a const that is not listed has its blob checked as
    /// prune checks it when it copies it).
    fn make_row(
        &self,
        index: usize,
        op: &Operation,
        known_sparsity: Option<Option<f64>>,
        listing: Consumers,
    ) -> Result<Option<(WeightRow, Vec<u64>)>> {
        let (program, graph, source) = (&self.model.program, &self.graph, &self.source);
        let info = graph.info(index);
        let mut consumers = Vec::new();
        let (mut count, mut all_constexpr) = (0usize, true);
        graph.for_each_consumer(index, |c, input| {
            count += 1;
            let op_type = graph.op_type(c);
            all_constexpr &= op_type.starts_with("constexpr_");
            if listing == Consumers::All || consumers.is_empty() {
                consumers.push(Consumer {
                    op: graph.name(c).to_string(),
                    op_type: op_type.to_owned(),
                    input: input.to_owned(),
                });
            }
        });
        let other_consumers = count - consumers.len();
        let feeds_constexpr_only = count > 0 && all_constexpr;
        if feeds_constexpr_only {
            return Ok(None);
        }
        let mut blobs = Vec::new();
        let row = if let Some(value) = op.const_value() {
            let Some(meta) =
                TensorMeta::of(value).filter(|m| is_weight_dtype(m.dtype) && !m.shape.is_empty())
            else {
                if known_sparsity.is_none() && value.blob_offset().is_some() {
                    source.read(&info.name, value)?;
                }
                return Ok(None);
            };
            let sparsity = match known_sparsity {
                Some(known) => known,
                None => {
                    let (meta, zeros) = source.count_zeros(&info.name, value)?;
                    Some(if meta.count == 0 {
                        0.0
                    } else {
                        zeros as f64 / meta.count as f64
                    })
                }
            };
            blobs.extend(value.blob_offset());
            WeightRow {
                function: info.path.function.to_string(),
                name: info.name.to_string(),
                consumers,
                other_consumers,
                dtype: meta.dtype.to_string(),
                elements: meta.count,
                bytes: meta.storage_bytes().unwrap_or(u64::MAX),
                sparsity,
                shape: meta.shape,
                storage: "const".into(),
                chain: vec![],
                shared_offsets: vec![],
                shared_with: vec![],
                shared_with_count: 0,
            }
        } else if op.is_constexpr() {
            let Some(out) = op.outputs.last() else {
                return Ok(None);
            };
            let Some(meta) = out.r#type.as_ref().and_then(|t| {
                TensorMeta::of(&crate::proto::mil::Value {
                    r#type: Some(t.clone()),
                    ..Default::default()
                })
            }) else {
                return Ok(None);
            };
            let walk = self.maker.borrow_mut().chains.walk(program, graph, index);
            blobs = walk.blobs;
            let sparsity = match known_sparsity {
                Some(known) => known,
                None => sparse_mask_share(op, &meta, source, &info.name)?,
            };
            WeightRow {
                function: info.path.function.to_string(),
                name: info.name.to_string(),
                consumers,
                other_consumers,
                dtype: meta.dtype.to_string(),
                elements: meta.count,
                bytes: walk.bytes,
                sparsity,
                shape: meta.shape,
                storage: op.r#type.clone(),
                chain: walk.chain,
                shared_offsets: vec![],
                shared_with: vec![],
                shared_with_count: 0,
            }
        } else {
            return Ok(None);
        };
        Ok(Some((row, blobs)))
    }
}

/// Dtypes that hold weights: floats and 8-bit-or-narrower integers (spec §2.5's storable set).
fn is_weight_dtype(dtype: ScalarType) -> bool {
    use ScalarType::*;
    dtype.is_float() && dtype != Float64 || dtype.is_sub_byte() || matches!(dtype, Int8 | UInt8)
}

/// The value of parameter `param` when the op holds it inline: an attribute (iOS16 serialization)
/// or an input bound to a value (iOS18); `None` when it is another op's output.
fn inline_param<'a>(op: &'a Operation, param: &str) -> Option<&'a crate::proto::mil::Value> {
    op.attributes.lookup(param).or_else(|| {
        op.inputs
            .lookup(param)
            .and_then(|a| match a.arguments.first().and_then(|b| b.binding.as_ref()) {
                Some(Binding::Value(v)) => Some(v),
                _ => None,
            })
    })
}

/// For a `constexpr_sparse_to_dense` whose mask is held inline, the share of zero mask bits. The
/// mask must have one bit per dense element (iOS16: packed `uint8[ceil(N/8)]` with zero bits past N;
/// iOS18: `uint1` of the dense shape), and an inline `nonzero_data` one value per set bit: Core ML
/// reads past the data otherwise, so a model that disagrees is refused, not reported.
fn sparse_mask_share(
    op: &Operation,
    meta: &TensorMeta,
    source: &WeightSource,
    name: &str,
) -> Result<Option<f64>> {
    if op.r#type != "constexpr_sparse_to_dense" {
        return Ok(None);
    }
    let Some(mask) = inline_param(op, "mask") else {
        return Ok(None);
    };
    let (mask_meta, data) = source.read(&format!("{name}.mask"), mask)?;
    let bits = match mask_meta.dtype {
        ScalarType::UInt8 => mask_meta.count.saturating_mul(8),
        ScalarType::UInt1 => mask_meta.count,
        other => {
            return Err(Error::tensor(
                name,
                format!("mask is {other}, expected uint8 (iOS16) or uint1 (iOS18)"),
            ))
        }
    };
    if bits < meta.count
        || bits - meta.count >= 8
        || (mask_meta.dtype == ScalarType::UInt1 && bits != meta.count)
    {
        // Said in bits: "uint8 mask of 3072 elements does not fit the 3072 dense elements" read
        // as a contradiction (red team, session 21).
        let expected = match mask_meta.dtype {
            ScalarType::UInt8 => format!("{} bytes", meta.count.div_ceil(8)),
            _ => format!("{} elements", meta.count),
        };
        return Err(Error::tensor(
            name,
            format!(
                "{} mask of {} elements holds {bits} bits, not one for each of the {} dense \
                 elements ({expected} expected)",
                mask_meta.dtype, mask_meta.count, meta.count
            ),
        ));
    }
    let bytes = data.to_le_bytes();
    let kept = crate::blob::count_ones(&bytes);
    // Bits of the last byte past the dense elements must be clear; `bits - count < 8` above.
    let unused = bits - meta.count;
    if unused > 0 && bytes.last().is_some_and(|&last| last >> (8 - unused) != 0) {
        return Err(Error::tensor(
            name,
            format!("mask sets bits past the {} dense elements", meta.count),
        ));
    }
    if let Some(nonzero) = inline_param(op, "nonzero_data") {
        let (nonzero_meta, _) = source.read(&format!("{name}.nonzero_data"), nonzero)?;
        if nonzero_meta.count != kept {
            return Err(Error::tensor(
                name,
                format!(
                    "nonzero_data holds {} values but the mask sets {kept} bits",
                    nonzero_meta.count
                ),
            ));
        }
    }
    if meta.count == 0 {
        return Ok(None);
    }
    Ok(Some(1.0 - kept as f64 / meta.count as f64))
}
