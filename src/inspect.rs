//! `mlprune inspect`: one row per weight tensor, then a total line.
//!
//! A weight tensor is either a plain `const` holding a numeric tensor of rank ≥ 1 (scalars and
//! string/int32 parameters like strides are not weights), or the last op of a constexpr chain (e.g.
//! `constexpr_lut_to_dense`, or `constexpr_sparse_to_dense` fed by a joint-compression op). Consts
//! that only feed constexpr ops are part of that chain's row, not rows of their own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::dtype::ScalarType;
use crate::error::{escape_control, Error, Result};
use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{is_constexpr_type, OperationExt, ValueExt};
use crate::mil::LoadedModel;
use crate::package::Package;
use crate::proto::mil::{argument::binding::Binding, Operation, Program};
use crate::tensor::TensorData;
use crate::weights::rebuild::op_values_mut;
use crate::weights::source::blob_value_meta;
use crate::weights::{TensorMeta, WeightSource};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Consumer {
    pub op: String,
    pub op_type: String,
    pub input: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WeightRow {
    /// The function the tensor's op belongs to (`main` in a single-function model).
    pub function: String,
    pub name: String,
    pub consumers: Vec<Consumer>,
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

#[derive(Debug, Clone, Serialize, PartialEq)]
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// Ops the walks of constexpr rows stepped into, counting an op once per row that reaches it:
    /// linear in the rows' chains (tests check this; it is not printed).
    #[serde(skip)]
    pub chain_steps: u64,
    /// Ops those walks decoded: each at most once, however many rows reach it.
    #[serde(skip)]
    pub chain_reads: u64,
}

/// Reads a package and lists its weight tensors. Every blob a row needs is read and validated.
pub fn inspect(input: &Path) -> Result<InspectReport> {
    let package = Package::open(input)?;
    let model_path = package.model_path();
    let mut model = LoadedModel::read(&model_path, &package.display_path(&model_path))?;
    let graph = GraphView::of_model(&mut model)?;
    let source = WeightSource::open(&package)?;
    let weight_file_bytes = source.blob_reader().map_or(0, |r| r.size());
    let mut weights = Vec::new();
    // The weight.bin offsets each row stores, parallel to `weights`.
    let mut row_blobs: Vec<Vec<u64>> = Vec::new();
    let mut chains = ChainWalker::new(&model.program, &graph);
    for (index, info) in graph.infos() {
        let Some(mut op) = graph.op(&model.program, index) else {
            continue;
        };
        // A blob prune would refuse is refused here too, not left out of the listing.
        for (param, value) in op_values_mut(&mut op) {
            if value.blob_offset().is_some() {
                blob_value_meta(&format!("{}.{param}", info.name), value)?;
            }
        }
        let consumers: Vec<Consumer> = graph
            .consumers(index)
            .into_iter()
            .map(|(c, input)| Consumer {
                op: graph.name(c).to_string(),
                op_type: graph.op_type(c).to_string(),
                input: input.to_owned(),
            })
            .collect();
        let feeds_constexpr_only =
            !consumers.is_empty() && consumers.iter().all(|c| c.op_type.starts_with("constexpr_"));
        if feeds_constexpr_only {
            continue;
        }
        let mut blobs = Vec::new();
        let row = if let Some(value) = op.const_value() {
            let Some(meta) =
                TensorMeta::of(value).filter(|m| is_weight_dtype(m.dtype) && !m.shape.is_empty())
            else {
                // Not listed, but its blob is checked as prune checks it when it copies it.
                if value.blob_offset().is_some() {
                    source.read(info.name, value)?;
                }
                continue;
            };
            let (_, data) = source.read(info.name, value)?;
            blobs.extend(value.blob_offset());
            WeightRow {
                function: info.path.function.to_string(),
                name: info.name.to_string(),
                consumers,
                dtype: meta.dtype.to_string(),
                elements: meta.count,
                bytes: meta.storage_bytes().unwrap_or(u64::MAX),
                sparsity: Some(zero_share(&data)),
                shape: meta.shape,
                storage: "const".into(),
                chain: vec![],
                shared_offsets: vec![],
                shared_with: vec![],
                shared_with_count: 0,
            }
        } else if op.is_constexpr() {
            let Some(out) = op.outputs.last() else { continue };
            let Some(meta) = out.r#type.as_ref().and_then(|t| {
                TensorMeta::of(&crate::proto::mil::Value {
                    r#type: Some(t.clone()),
                    ..Default::default()
                })
            }) else {
                continue;
            };
            let walk = chains.walk(index);
            blobs = walk.blobs;
            let sparsity = sparse_mask_share(&op, &meta, &source, info.name)?;
            WeightRow {
                function: info.path.function.to_string(),
                name: info.name.to_string(),
                consumers,
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
            continue;
        };
        weights.push(row);
        row_blobs.push(blobs);
    }
    mark_shared(&mut weights, &row_blobs);
    let (chain_steps, chain_reads) = (chains.steps, chains.reads);
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
    Ok(InspectReport {
        input: input.display().to_string(),
        spec_version: model.spec_version(),
        opsets,
        functions: model.program.functions.keys().cloned().collect(),
        default_function,
        weight_file_bytes,
        weights,
        notices: std::mem::take(&mut model.notices),
        chain_steps,
        chain_reads,
    })
}

/// Dtypes that hold weights: floats and 8-bit-or-narrower integers (spec §2.5's storable set).
fn is_weight_dtype(dtype: ScalarType) -> bool {
    use ScalarType::*;
    dtype.is_float() && dtype != Float64 || dtype.is_sub_byte() || matches!(dtype, Int8 | UInt8)
}

fn zero_share(data: &TensorData) -> f64 {
    if data.is_empty() {
        0.0
    } else {
        data.count_zeros() as f64 / data.len() as f64
    }
}

/// Fills [`WeightRow::shared_offsets`] and [`WeightRow::shared_with`] from the offsets each row
/// stores. Linear in the rows and functions: many rows sharing one blob (save_multifunction shares
/// every equal const, e.g. all-ones norm weights) list the blob, not each other.
fn mark_shared(rows: &mut [WeightRow], row_blobs: &[Vec<u64>]) {
    let mut by_offset: BTreeMap<u64, BTreeMap<&str, usize>> = BTreeMap::new();
    for (row, blobs) in rows.iter().zip(row_blobs) {
        let mut blobs = blobs.clone();
        blobs.sort_unstable();
        blobs.dedup();
        for offset in blobs {
            *by_offset
                .entry(offset)
                .or_default()
                .entry(row.function.as_str())
                .or_default() += 1;
        }
    }
    // The functions using a set of offsets, each set merged once: rows of many functions reading
    // the same blobs share one list.
    let mut merged: BTreeMap<Vec<u64>, Vec<&str>> = BTreeMap::new();
    let mut marks: Vec<(Vec<u64>, Vec<String>, usize)> = Vec::with_capacity(rows.len());
    for (row, blobs) in rows.iter().zip(row_blobs) {
        let own = row.function.as_str();
        let mut offsets = Vec::new();
        let mut own_shares = false;
        for offset in blobs {
            let users = &by_offset[offset];
            // This row counts once among its own function's users.
            let own_again = users.get(own).is_some_and(|&n| n > 1);
            if (users.len() > 1 || own_again) && !offsets.contains(offset) {
                offsets.push(*offset);
                own_shares |= own_again;
            }
        }
        if offsets.is_empty() {
            marks.push((offsets, Vec::new(), 0));
            continue;
        }
        let mut key = offsets.clone();
        key.sort_unstable();
        let functions = merged.entry(key).or_insert_with_key(|key| {
            let all: BTreeSet<&str> = key.iter().flat_map(|o| by_offset[o].keys().copied()).collect();
            all.into_iter().collect()
        });
        let others = functions.iter().filter(|f| own_shares || **f != own);
        let count = functions.len() - usize::from(!own_shares);
        let shown = others.take(SHARED_NAMES_SHOWN).map(|f| f.to_string()).collect();
        marks.push((offsets, shown, count));
    }
    for (row, (offsets, functions, count)) in rows.iter_mut().zip(marks) {
        row.shared_offsets = offsets;
        row.shared_with = functions;
        row.shared_with_count = count;
    }
}

/// What one op adds to every walk that reaches it: read once, however many rows' chains pass
/// through it (K rows reading the end of one chain of D ops walk it K times).
struct OpPart {
    /// Bytes of the tensors it holds inline (attributes but `name`, inputs bound to values).
    bytes: u64,
    /// The `weight.bin` offsets of those tensors, attributes first.
    blobs: Vec<u64>,
    /// The const and constexpr ops producing its named inputs, by input name, each once.
    children: Vec<usize>,
    /// Its op type when it is a constexpr op (one link of the chain).
    constexpr_type: Option<Arc<str>>,
}

/// The stored bytes, op types innermost first, and `weight.bin` offsets of a constexpr op and
/// everything feeding it.
#[derive(Default)]
struct ChainTotals {
    bytes: u64,
    chain: Vec<Arc<str>>,
    blobs: Vec<u64>,
}

/// Walks the ops feeding constexpr rows without recursion (a chain of 20,000 ops overflowed the
/// stack) and in time linear in the ops each walk reaches: each op is decoded once for all walks,
/// and an op already counted in this walk is found by a stamp, not by scanning a list.
struct ChainWalker<'a> {
    program: &'a Program,
    graph: &'a GraphView,
    parts: HashMap<usize, OpPart>,
    /// Per op, the number of the last walk that counted it (a joint op feeds both inputs of the op
    /// after it, and counts once).
    stamps: Vec<u32>,
    walk: u32,
    /// See [`InspectReport::chain_steps`] and [`InspectReport::chain_reads`].
    steps: u64,
    reads: u64,
}

impl<'a> ChainWalker<'a> {
    fn new(program: &'a Program, graph: &'a GraphView) -> Self {
        ChainWalker {
            program,
            graph,
            parts: HashMap::new(),
            stamps: Vec::new(),
            walk: 0,
            steps: 0,
            reads: 0,
        }
    }

    /// Depth first from `root`, children in input-name order: an op's blobs are listed before
    /// those of the ops feeding it, its type after theirs (innermost first).
    fn walk(&mut self, root: usize) -> ChainTotals {
        self.walk += 1;
        if self.stamps.is_empty() {
            self.stamps = vec![0; self.graph.op_count()];
        }
        let mut totals = ChainTotals::default();
        // (op, how many of its children were entered)
        let mut stack: Vec<(usize, usize)> = Vec::new();
        if self.enter(root, &mut totals) {
            stack.push((root, 0));
        }
        while let Some((op, next)) = stack.last_mut() {
            let part = &self.parts[op];
            if let Some(&child) = part.children.get(*next) {
                *next += 1;
                if self.enter(child, &mut totals) {
                    stack.push((child, 0));
                }
            } else {
                totals.chain.extend(part.constexpr_type.clone());
                stack.pop();
            }
        }
        totals
    }

    /// Counts op `index` into `totals` unless this walk counted it already; whether it did now.
    fn enter(&mut self, index: usize, totals: &mut ChainTotals) -> bool {
        if self.stamps[index] == self.walk {
            return false;
        }
        self.stamps[index] = self.walk;
        self.steps += 1;
        let (program, graph, reads) = (self.program, self.graph, &mut self.reads);
        let part = self.parts.entry(index).or_insert_with(|| {
            *reads += 1;
            op_part(program, graph, index)
        });
        totals.bytes = totals.bytes.saturating_add(part.bytes);
        totals.blobs.extend_from_slice(&part.blobs);
        true
    }
}

/// Reads what op `index` adds to a walk (nothing for an op that cannot be read).
fn op_part(program: &Program, graph: &GraphView, index: usize) -> OpPart {
    let mut part = OpPart {
        bytes: 0,
        blobs: Vec::new(),
        children: Vec::new(),
        constexpr_type: None,
    };
    let Some(op) = graph.op(program, index) else {
        return part;
    };
    let mut inline = |v: &crate::proto::mil::Value| {
        if let Some(b) = TensorMeta::of(v).and_then(|m| m.storage_bytes()) {
            part.bytes = part.bytes.saturating_add(b);
        }
        part.blobs.extend(v.blob_offset());
    };
    for (name, v) in op.attributes.pairs() {
        if name != "name" {
            inline(v);
        }
    }
    let mut named = Vec::new();
    for (_, arg) in op.inputs.pairs() {
        for b in &arg.arguments {
            match &b.binding {
                Some(Binding::Value(v)) => inline(v),
                Some(Binding::Name(n)) => named.push(n.as_str()),
                None => {}
            }
        }
    }
    named.sort_unstable();
    named.dedup();
    let function = &graph.info(index).path.function;
    part.children = named
        .into_iter()
        .filter_map(|n| graph.producer(function, n))
        .filter(|&p| {
            let t = graph.op_type(p);
            t == "const" || is_constexpr_type(t)
        })
        .collect();
    if op.is_constexpr() {
        part.constexpr_type = Some(op.r#type.as_str().into());
    }
    part
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
        return Err(Error::tensor(
            name,
            format!(
                "{} mask of {} elements does not fit the {} dense elements",
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

/// The report as pretty JSON, ending in a newline. serde_json escapes C0 control characters in
/// strings; DEL, the C1 controls (U+0080–U+009F, e.g. CSI) and the bidirectional formatting
/// characters it leaves raw, so they are escaped here as well (`\u007f`, `\u202e`): same JSON
/// value, and nothing in it can drive a terminal or reorder what it shows.
pub fn render_json(report: &InspectReport) -> Result<String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::Usage(e.to_string()))?;
    // Outside strings, valid JSON holds only ASCII structure and whitespace, so every such
    // character here is inside a string, where `\uXXXX` means the same character.
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c)
            || crate::error::is_bidi_format(c)
            || crate::error::is_break_or_invisible(c)
        {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    Ok(out)
}

/// The widest a column is padded to. Names come from the input: one name of 100,000 characters
/// padded every row of a 10,000-row table to it (1 GB of output). A longer cell extends its own
/// row and leaves the others aligned.
pub const MAX_PADDED_WIDTH: usize = 48;

/// The human table: one row per tensor, then the total line. A multifunction model gets a
/// FUNCTION column in front, and a SHARED column (the functions of the other rows that store the
/// same blob, `-` for none) is added when any row shares a blob.
pub fn render_table(report: &InspectReport) -> String {
    let mut out = Vec::new();
    write_table(report, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the table is built from strings")
}

/// [`render_table`], written to `out` a line at a time: the table is never held whole (a row's
/// cells are made again for the second pass instead of being kept from the first).
pub fn write_table(report: &InspectReport, out: &mut impl Write) -> std::io::Result<()> {
    let columns = TableColumns::of(report);
    let header: Vec<String> = columns.header().iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for w in &report.weights {
        for (width, cell) in widths.iter_mut().zip(columns.cells(w)) {
            *width = (*width).max(cell.chars().count().min(MAX_PADDED_WIDTH));
        }
    }
    let mut line = String::new();
    columns.write_line(&header, &widths, &mut line, out)?;
    for w in &report.weights {
        columns.write_line(&columns.cells(w), &widths, &mut line, out)?;
    }
    out.write_all(total_line(report).as_bytes())
}

/// Which columns the table has.
struct TableColumns {
    multifunction: bool,
    any_shared: bool,
}

impl TableColumns {
    fn of(report: &InspectReport) -> Self {
        TableColumns {
            multifunction: report.functions.len() > 1,
            any_shared: report.weights.iter().any(|w| !w.shared_with.is_empty()),
        }
    }

    fn header(&self) -> Vec<&'static str> {
        let mut header: Vec<&str> = Vec::new();
        if self.multifunction {
            header.push("FUNCTION");
        }
        header.extend([
            "NAME", "CONSUMER", "DTYPE", "SHAPE", "ELEMENTS", "BYTES", "SPARSITY", "STORAGE",
        ]);
        if self.any_shared {
            header.push("SHARED");
        }
        header
    }

    /// ELEMENTS, BYTES and SPARSITY are right-aligned.
    fn numeric(&self, column: usize) -> bool {
        (4..=6).contains(&column.wrapping_sub(usize::from(self.multifunction)))
    }

    /// The cells of row `w`, escaped for the terminal.
    fn cells(&self, w: &WeightRow) -> Vec<String> {
        let consumer = match w.consumers.as_slice() {
            [] => "-".to_owned(),
            [c, rest @ ..] => {
                let more = if rest.is_empty() {
                    String::new()
                } else {
                    format!(" +{}", rest.len())
                };
                format!("{} ({}.{}){more}", c.op, c.op_type, c.input)
            }
        };
        let storage = if w.chain.len() > 1 {
            w.chain.join(" → ")
        } else {
            w.storage.clone()
        };
        let mut cells = Vec::with_capacity(10);
        if self.multifunction {
            cells.push(w.function.clone());
        }
        cells.extend([
            w.name.clone(),
            consumer,
            w.dtype.clone(),
            format!("{:?}", w.shape),
            w.elements.to_string(),
            w.bytes.to_string(),
            w.sparsity.map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
            storage,
        ]);
        if self.any_shared {
            cells.push(shared_cell(&w.shared_with, w.shared_with_count));
        }
        // Names and op types come from the input: no control character reaches the terminal.
        cells
            .into_iter()
            .map(|cell| escape_control(&cell).into_owned())
            .collect()
    }

    /// Writes one line of `cells` padded to `widths`, built in `line` (reused between lines).
    fn write_line(
        &self,
        cells: &[String],
        widths: &[usize],
        line: &mut String,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        line.clear();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // A cell wider than its column (see MAX_PADDED_WIDTH) is not padded.
            let pad = w.saturating_sub(cell.chars().count());
            if self.numeric(i) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < cells.len() {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            if i + 1 < cells.len() {
                line.push_str("  ");
            }
        }
        out.write_all(line.trim_end().as_bytes())?;
        out.write_all(b"\n")
    }
}

/// The table's last line: totals, spec version, opsets, and a multifunction model's functions.
fn total_line(report: &InspectReport) -> String {
    let multifunction = report.functions.len() > 1;
    let elements: u64 = report.weights.iter().map(|w| w.elements).sum();
    let bytes: u64 = report.weights.iter().map(|w| w.bytes).sum();
    let functions = if multifunction {
        format!(
            "; functions {}{}",
            report.functions.join(","),
            report
                .default_function
                .as_ref()
                .map_or(String::new(), |d| format!(" (default {d})"))
        )
    } else {
        String::new()
    };
    format!(
        "total: {} weight tensors, {elements} elements, {bytes} bytes; spec version {}, opset {}, weight.bin {} bytes{}\n",
        report.weights.len(),
        report.spec_version,
        escape_control(&report.opsets.join(",")),
        report.weight_file_bytes,
        escape_control(&functions),
    )
}

/// The functions of the other rows sharing a blob with this one (`-` for none), the first few and
/// how many more.
fn shared_cell(shared_with: &[String], count: usize) -> String {
    if shared_with.is_empty() {
        "-".into()
    } else if count > shared_with.len() {
        format!(
            "{},… (+{} more)",
            shared_with.join(","),
            count - shared_with.len()
        )
    } else {
        shared_with.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(function: &str, name: &str) -> WeightRow {
        WeightRow {
            function: function.into(),
            name: name.into(),
            consumers: vec![],
            dtype: "fp16".into(),
            shape: vec![4],
            elements: 4,
            bytes: 8,
            sparsity: None,
            storage: "const".into(),
            chain: vec![],
            shared_offsets: vec![],
            shared_with: vec![],
            shared_with_count: 0,
        }
    }

    #[test]
    fn shared_rows_name_the_other_rows_functions_and_the_offsets() {
        let mut rows = vec![row("a", "w"), row("a", "v"), row("b", "w"), row("b", "u")];
        // a/w and b/w share 64; a/v and b/w share 128 (a joint chain reads two blobs); b/u and
        // a/v read the same blob twice each, which alone shares nothing.
        let blobs = vec![vec![64], vec![128, 256, 256], vec![64, 128], vec![512, 512]];
        mark_shared(&mut rows, &blobs);
        let marks: Vec<(&str, &[u64], &[String])> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.shared_offsets.as_slice(),
                    r.shared_with.as_slice(),
                )
            })
            .collect();
        let b = ["b".to_string()];
        let a = ["a".to_string()];
        assert_eq!(
            marks,
            [
                ("w", &[64][..], &b[..]),
                ("v", &[128][..], &b[..]),
                ("w", &[64, 128][..], &a[..]),
                ("u", &[][..], &[][..]),
            ]
        );
        // Two rows of one function sharing a blob name that function.
        let mut rows = vec![row("a", "x"), row("a", "y")];
        mark_shared(&mut rows, &[vec![64], vec![64]]);
        assert_eq!(rows[0].shared_with, a);
        assert_eq!(rows[1].shared_offsets, [64]);
        assert_eq!(rows[1].shared_with_count, 1);
        // Twenty functions reading one blob: each row names the first few others and counts all.
        let mut rows: Vec<WeightRow> = (0..20).map(|i| row(&format!("f{i:02}"), "w")).collect();
        mark_shared(&mut rows, &vec![vec![64]; 20]);
        let first: Vec<String> = (1..=SHARED_NAMES_SHOWN).map(|i| format!("f{i:02}")).collect();
        assert_eq!((&rows[0].shared_with, rows[0].shared_with_count), (&first, 19));
        assert_eq!(rows[5].shared_with[4], "f04", "its own function left out");
        assert_eq!(
            shared_cell(&rows[0].shared_with, rows[0].shared_with_count),
            format!("{},… (+11 more)", first.join(","))
        );
    }
}
