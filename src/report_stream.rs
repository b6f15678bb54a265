//! `--report` written entry by entry as the walk makes them, into the report's scratch file: the
//! same bytes as the whole list pretty-printed at the end (`serde_json::to_vec_pretty` and a
//! newline), without holding an entry per tensor (issue 18: 320,000 entries took 301 MB, the
//! entries and the JSON text both in memory).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};

pub struct ReportStream {
    out: BufWriter<File>,
    /// The scratch file, for errors.
    path: PathBuf,
    entries: usize,
}

impl ReportStream {
    /// Writes into `file` (empty, at its start).
    pub fn new((file, path): (File, PathBuf)) -> Self {
        ReportStream {
            out: BufWriter::with_capacity(64 << 10, file),
            path,
            entries: 0,
        }
    }

    /// Appends one entry of the list.
    pub fn push(&mut self, entry: &impl Serialize) -> Result<()> {
        let json = serde_json::to_vec_pretty(entry)
            .map_err(|e| Error::Usage(format!("cannot serialize the report: {e}")))?;
        self.out
            .write_all(if self.entries == 0 { b"[\n  " } else { b",\n  " })
            .at(&self.path)?;
        // One level deeper, as an element of the list: every line after the first is indented
        // two more spaces. JSON strings escape their newlines, so every newline is a line break.
        for (i, line) in json.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.out.write_all(b"\n  ").at(&self.path)?;
            }
            self.out.write_all(line).at(&self.path)?;
        }
        self.entries += 1;
        Ok(())
    }

    /// Closes the list and syncs the file.
    pub fn finish(mut self) -> Result<()> {
        let end: &[u8] = if self.entries == 0 { b"[]\n" } else { b"\n]\n" };
        self.out.write_all(end).at(&self.path)?;
        let file = self.out.into_inner().map_err(|e| e.into_error()).at(&self.path)?;
        file.sync_all().at(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[derive(Serialize)]
    struct Entry {
        name: String,
        shape: Vec<u64>,
        nested: Option<Vec<Vec<u8>>>,
        ratio: f64,
    }

    fn streamed(entries: &[Entry]) -> Vec<u8> {
        let file = tempfile::tempfile().unwrap();
        let mut stream = ReportStream::new((file.try_clone().unwrap(), "r.json".into()));
        for e in entries {
            stream.push(e).unwrap();
        }
        stream.finish().unwrap();
        let mut bytes = Vec::new();
        let mut file = file;
        file.rewind().unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_stream_writes_what_pretty_printing_the_whole_list_writes() {
        let entry = |i: u64| Entry {
            name: format!("w{i}\n\"quoted\"\t{}", "é".repeat(i as usize)),
            shape: (0..i).collect(),
            nested: (i % 2 == 1).then(|| vec![vec![], vec![i as u8; 2]]),
            ratio: i as f64 / 3.0,
        };
        for n in [0, 1, 2, 5] {
            let entries: Vec<Entry> = (0..n).map(entry).collect();
            let mut whole = serde_json::to_vec_pretty(&entries).unwrap();
            whole.push(b'\n');
            assert_eq!(
                String::from_utf8(streamed(&entries)).unwrap(),
                String::from_utf8(whole).unwrap(),
                "{n} entries"
            );
        }
    }
}
