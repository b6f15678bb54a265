//! Which rows store the same `weight.bin` blob (the same weight in several functions of a
//! multifunction model), from the offsets each row reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use smallvec::SmallVec;

use super::SHARED_NAMES_SHOWN;

/// A row's share marks: the offsets it shares, the names of the first of the other functions
/// storing them, and how many functions those are in all (see [`super::WeightRow`]).
#[derive(Debug, Default, PartialEq)]
pub(super) struct SharedMarks {
    pub offsets: Vec<u64>,
    pub with: Vec<String>,
    pub count: usize,
}

/// The rows of every blob offset, counted per function (functions by their index in name order).
/// Linear in the rows and functions: many rows sharing one blob (save_multifunction shares every
/// equal const, e.g. all-ones norm weights) list the blob, not each other.
#[derive(Debug, Default)]
pub(super) struct SharedBlobs {
    /// Per offset, `(function, rows of it)` in function order. Most blobs have one row: held
    /// inline, 24 bytes an offset besides the table's slot (a map of maps took a node each).
    users: HashMap<u64, SmallVec<[(u32, u32); 1]>>,
    /// The functions using a set of offsets, each set merged once: rows of many functions reading
    /// the same blobs share one list.
    merged: HashMap<Vec<u64>, Arc<[u32]>>,
}

impl SharedBlobs {
    /// Counts a row of `function` storing `blobs` (an offset listed twice counts once).
    pub fn add(&mut self, function: u32, blobs: &[u64]) {
        let mut blobs = blobs.to_vec();
        blobs.sort_unstable();
        blobs.dedup();
        for offset in blobs {
            let users = self.users.entry(offset).or_default();
            // Rows come function by function: the last entry is nearly always the one to count.
            match users.last_mut() {
                Some((f, rows)) if *f == function => *rows += 1,
                _ => match users.binary_search_by_key(&function, |&(f, _)| f) {
                    Ok(i) => users[i].1 += 1,
                    Err(i) => users.insert(i, (function, 1)),
                },
            }
        }
    }

    /// Whether any row shares a blob (with a row of another function or of its own).
    pub fn any(&self) -> bool {
        self.users
            .values()
            .any(|users| users.len() > 1 || users.iter().any(|&(_, rows)| rows > 1))
    }

    /// The marks of a row of `function` storing `blobs`; `names` are the functions in name order.
    pub fn marks(&mut self, function: u32, blobs: &[u64], names: &[String]) -> SharedMarks {
        let mut offsets = Vec::new();
        let mut own_shares = false;
        for offset in blobs {
            let Some(users) = self.users.get(offset) else {
                continue;
            };
            // This row counts once among its own function's users. Found by a search: a scan
            // of a blob every function reads made the marks of all rows quadratic in the
            // functions (32,000 functions: 10 s; red team, session 21).
            let own_again = users
                .binary_search_by_key(&function, |&(f, _)| f)
                .is_ok_and(|i| users[i].1 > 1);
            if (users.len() > 1 || own_again) && !offsets.contains(offset) {
                offsets.push(*offset);
                own_shares |= own_again;
            }
        }
        if offsets.is_empty() {
            return SharedMarks::default();
        }
        let mut key = offsets.clone();
        key.sort_unstable();
        let users = &self.users;
        let functions = self.merged.entry(key).or_insert_with_key(|key| {
            let all: BTreeSet<u32> = key
                .iter()
                .flat_map(|o| users[o].iter().map(|&(f, _)| f))
                .collect();
            all.into_iter().collect()
        });
        let others = functions.iter().filter(|&&f| own_shares || f != function);
        let with = others
            .take(SHARED_NAMES_SHOWN)
            .map(|&f| names[f as usize].clone())
            .collect();
        SharedMarks {
            offsets,
            with,
            count: functions.len() - usize::from(!own_shares),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_rows_name_the_other_rows_functions_and_the_offsets() {
        let names = ["a".to_string(), "b".to_string()];
        // a/w and b/w share 64; a/v and b/w share 128 (a joint chain reads two blobs); b/u and
        // a/v read the same blob twice each, which alone shares nothing.
        let rows: [(u32, &str, &[u64]); 4] = [
            (0, "w", &[64]),
            (0, "v", &[128, 256, 256]),
            (1, "w", &[64, 128]),
            (1, "u", &[512, 512]),
        ];
        let mut shared = SharedBlobs::default();
        for (function, _, blobs) in rows {
            shared.add(function, blobs);
        }
        assert!(shared.any());
        let marks: Vec<(&str, SharedMarks)> = rows
            .iter()
            .map(|&(function, name, blobs)| (name, shared.marks(function, blobs, &names)))
            .collect();
        let mark = |offsets: &[u64], with: &[&str], count| SharedMarks {
            offsets: offsets.to_vec(),
            with: with.iter().map(|f| f.to_string()).collect(),
            count,
        };
        assert_eq!(
            marks,
            vec![
                ("w", mark(&[64], &["b"], 1)),
                ("v", mark(&[128], &["b"], 1)),
                ("w", mark(&[64, 128], &["a"], 1)),
                ("u", SharedMarks::default()),
            ]
        );
    }

    #[test]
    fn rows_of_one_function_storing_one_blob_share_it_with_their_own_function() {
        let names = ["main".to_string()];
        let mut shared = SharedBlobs::default();
        shared.add(0, &[64]);
        assert!(!shared.any());
        shared.add(0, &[64]);
        assert!(shared.any());
        let marks = shared.marks(0, &[64], &names);
        assert_eq!(marks.offsets, vec![64]);
        assert_eq!(marks.with, vec!["main".to_string()]);
        assert_eq!(marks.count, 1);
    }

    /// Twenty functions reading one blob: each row names the first few others and counts all.
    #[test]
    fn a_row_names_the_first_few_other_functions_and_counts_them_all() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
        let mut shared = SharedBlobs::default();
        for f in 0..20 {
            shared.add(f, &[64]);
        }
        let first: Vec<String> = (1..=SHARED_NAMES_SHOWN).map(|i| format!("f{i:02}")).collect();
        let marks = shared.marks(0, &[64], &names);
        assert_eq!((&marks.with, marks.count), (&first, 19));
        assert_eq!(
            shared.marks(5, &[64], &names).with[4],
            "f04",
            "its own function left out"
        );
        assert_eq!(
            super::super::table::shared_cell(&marks.with, marks.count),
            format!("{},… (+11 more)", first.join(","))
        );
    }
}
