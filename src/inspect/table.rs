//! `inspect`'s table: one row per weight tensor, then a total line.

use std::io::Write;

use super::{Consumers, Inspection, WeightRow};
use crate::error::{escape_control, Result};

/// The widest a column is padded to. Names come from the input: one name of 100,000 characters
/// padded every row of a 10,000-row table to it (1 GB of output). A longer cell extends its own
/// row and leaves the others aligned.
pub const MAX_PADDED_WIDTH: usize = 48;

/// [`write_table`] into a string.
pub fn render_table(inspection: &Inspection) -> Result<String> {
    inspection.render(write_table)
}

/// The human table: one row per tensor, then the total line. A multifunction model gets a
/// FUNCTION column in front, and a SHARED column (the functions of the other rows that store the
/// same blob, `-` for none) is added when any row shares a blob. Written to `out` a line at a
/// time: neither the table nor its rows are held whole (the rows are made once to size the
/// columns and again to write them). A row that cannot be made stops it; [`Inspection::failure`]
/// says why.
pub fn write_table(inspection: &Inspection, out: &mut impl Write) -> std::io::Result<()> {
    let columns = TableColumns {
        multifunction: inspection.head.functions.len() > 1,
        any_shared: inspection.any_shared(),
    };
    let header: Vec<String> = columns.header().iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for w in inspection.rows_for_writing(Consumers::First) {
        for (width, cell) in widths.iter_mut().zip(columns.cells(&w?)) {
            *width = (*width).max(cell.chars().count().min(MAX_PADDED_WIDTH));
        }
    }
    let mut line = String::new();
    columns.write_line(&header, &widths, &mut line, out)?;
    for w in inspection.rows_for_writing(Consumers::First) {
        columns.write_line(&columns.cells(&w?), &widths, &mut line, out)?;
    }
    out.write_all(total_line(inspection).as_bytes())
}

/// Which columns the table has.
struct TableColumns {
    multifunction: bool,
    any_shared: bool,
}

impl TableColumns {
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
                let others = rest.len() + w.other_consumers;
                let more = if others == 0 {
                    String::new()
                } else {
                    format!(" +{others}")
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
        cells.into_iter().map(|cell| escape_cell(&cell)).collect()
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
fn total_line(inspection: &Inspection) -> String {
    let (elements, bytes) = inspection.totals();
    let report = &inspection.head;
    let multifunction = report.functions.len() > 1;
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
        inspection.row_count(),
        report.spec_version,
        escape_cell(&report.opsets.join(",")),
        report.weight_file_bytes,
        escape_cell(&functions),
    )
}

/// Text from the input as the table shows it: control and formatting characters escaped
/// ([`escape_control`]), and a backslash doubled, so that a name holding the two characters `\t`
/// does not read as one holding a tab (red team, session 21).
fn escape_cell(text: &str) -> String {
    escape_control(&text.replace('\\', "\\\\")).into_owned()
}

/// The functions of the other rows sharing a blob with this one (`-` for none), the first few and
/// how many more.
pub(super) fn shared_cell(shared_with: &[String], count: usize) -> String {
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
