//! The renames of a rewrite, `(function, old, new)`, held for
//! [`super::rewrite::rename_in_block`].
//!
//! A model of many small tensors renames the output of every pruned const, and the table is held
//! while every op that reads one is stored again (issue 18): as tuples of strings with a map over
//! them it took about 180 bytes a rename, as ranges of one text buffer about 100 (32 MB at
//! 320,000 tensors, the peak of the run). The renames are now byte-string dicts that keep a few
//! MiB in memory and the rest in unlinked scratch files ([`SpillDict`]).

use std::path::Path;
use std::sync::Arc;

use super::names::NameList;
use crate::error::{Error, Result};
use crate::spill_map::SpillDict;

/// Renames by function and old name; an old name is renamed at most once per function.
pub struct RenameMap {
    /// The functions with renames, in the order their first rename came.
    functions: NameList,
    /// (function, old) → new.
    by_old: SpillDict,
    /// (function, new) → the number of the first rename to it (several may rename to one name:
    /// equal consts merged into the first).
    by_new: SpillDict,
    len: u64,
    /// Of the renames whose new name is also an old name in their function, the first of the first
    /// function by name: (function, new name, rename number).
    first_chained: Option<(Arc<str>, String, u64)>,
}

impl std::fmt::Debug for RenameMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenameMap")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for RenameMap {
    fn default() -> Self {
        Self::new_in(None)
    }
}

fn too_many() -> Error {
    Error::Graph("the rewrite renames more values than it can index".into())
}

/// The key of `name` in the function numbered `function`.
fn key(function: u32, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + name.len());
    key.extend_from_slice(&function.to_le_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

impl RenameMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map whose scratch files, if it needs them, go in `dir` (the system temporary
    /// folder when `None`).
    pub fn new_in(dir: Option<&Path>) -> Self {
        RenameMap {
            functions: NameList::default(),
            by_old: SpillDict::new_in(dir),
            by_new: SpillDict::new_in(dir),
            len: 0,
            first_chained: None,
        }
    }

    /// The functions with renames.
    pub fn functions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.functions.iter()
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn function_index(&self, function: &str) -> Option<u32> {
        self.functions.find(function).map(|i| i as u32)
    }

    fn find(&self, function: u32, old: &str) -> Result<Option<String>> {
        let Some(new) = self.by_old.get(&key(function, old))? else {
            return Ok(None);
        };
        String::from_utf8(new)
            .map(Some)
            .map_err(|_| Error::Graph("a rename read back garbled from its scratch file".into()))
    }

    /// Records that uses of `old` in `function` are to read `new`. Renaming an old name twice in
    /// one function is an error.
    pub fn insert(&mut self, function: &str, old: &str, new: &str) -> Result<()> {
        let function_index = match self.function_index(function) {
            Some(i) => i,
            None => u32::try_from(self.functions.number(&Arc::from(function))).map_err(|_| too_many())?,
        };
        let old_key = key(function_index, old);
        if self.by_old.get(&old_key)?.is_some() {
            return Err(Error::Graph(format!(
                "value '{old}' in function '{function}' renamed twice"
            )));
        }
        let number = self.len;
        // A chain either way: this rename's new name was renamed before, or earlier renames made
        // this old name.
        if self.by_old.get(&key(function_index, new))?.is_some() {
            self.note_chained(function_index, new, number);
        }
        if let Some(first) = self.by_new.get(&old_key)? {
            let first = u64::from_le_bytes(first.try_into().map_err(|_| too_many())?);
            self.note_chained(function_index, old, first);
        }
        self.by_old.insert_new(&old_key, new.as_bytes())?;
        // The first rename to a name is kept.
        self.by_new
            .get_or_insert(&key(function_index, new), &number.to_le_bytes())?;
        self.len += 1;
        Ok(())
    }

    fn note_chained(&mut self, function: u32, new: &str, number: u64) {
        let Some(function) = self.functions.get(function as usize).cloned() else {
            return;
        };
        let earlier = match &self.first_chained {
            None => true,
            Some((f, _, n)) => (&function, number) < (f, *n),
        };
        if earlier {
            self.first_chained = Some((function, new.to_owned(), number));
        }
    }

    /// What `old` in `function` is renamed to, if it is.
    pub fn get(&self, function: &str, old: &str) -> Result<Option<String>> {
        match self.function_index(function) {
            Some(f) => self.find(f, old),
            None => Ok(None),
        }
    }

    /// A function and a new name there that is also an old name there, if any: the renames would
    /// then depend on their order. Of several, the first function by name, and there the first
    /// rename (kept as the renames came in, whatever their number).
    pub fn first_chained(&self) -> Option<(&Arc<str>, &str)> {
        self.first_chained.as_ref().map(|(f, new, _)| (f, new.as_str()))
    }

    /// A view of the renames of one function.
    pub fn of_function(&self, function: &str) -> Option<FunctionRenames<'_>> {
        Some(FunctionRenames {
            map: self,
            function: self.function_index(function)?,
        })
    }
}

/// The renames of one function.
#[derive(Clone, Copy)]
pub struct FunctionRenames<'m> {
    map: &'m RenameMap,
    function: u32,
}

impl FunctionRenames<'_> {
    pub fn get(&self, old: &str) -> Result<Option<String>> {
        self.map.find(self.function, old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_rename_in_its_own_function_only() {
        let mut map = RenameMap::new();
        map.insert("main", "w", "w_sparsified").unwrap();
        map.insert("other", "w", "first").unwrap();
        map.insert("main", "", "naïve").unwrap();
        assert_eq!(map.len(), 3);
        let get = |f: &str, old: &str| map.get(f, old).unwrap();
        assert_eq!(get("main", "w").as_deref(), Some("w_sparsified"));
        assert_eq!(get("other", "w").as_deref(), Some("first"));
        assert_eq!(get("main", "").as_deref(), Some("naïve"));
        assert_eq!(get("main", "first"), None);
        assert_eq!(get("third", "w"), None);
        let functions: Vec<_> = map.functions().map(|f| &**f).collect();
        assert_eq!(functions, ["main", "other"]);
        let other = map.of_function("other").unwrap();
        assert_eq!(other.get("w").unwrap().as_deref(), Some("first"));
        assert!(map.of_function("third").is_none());
    }

    #[test]
    fn refuses_an_old_name_twice_and_finds_chains() {
        let mut map = RenameMap::new();
        map.insert("main", "a", "b").unwrap();
        let twice = map.insert("main", "a", "c").unwrap_err().to_string();
        assert!(
            twice.contains("value 'a' in function 'main' renamed twice"),
            "{twice}"
        );
        map.insert("other", "c", "a").unwrap();
        assert_eq!(
            map.first_chained(),
            None,
            "a new name that is old in another function"
        );
        map.insert("main", "b", "c").unwrap();
        map.insert("zeta", "x", "y").unwrap();
        map.insert("zeta", "y", "z").unwrap();
        assert_eq!(map.first_chained().map(|(f, n)| (&**f, n)), Some(("main", "b")));
    }

    #[test]
    fn a_chain_is_found_whichever_rename_comes_first_and_however_many() {
        // The later rename makes the earlier one's new name old, or the other way round.
        for order in [[("b", "c"), ("a", "b")], [("a", "b"), ("b", "c")]] {
            let mut map = RenameMap::new();
            for (old, new) in order {
                map.insert("main", old, new).unwrap();
            }
            assert_eq!(map.first_chained().map(|(f, n)| (&**f, n)), Some(("main", "b")));
        }
        // Many renames through scratch files: the first chain of the first function by name.
        let mut map = RenameMap::new();
        map.by_old = SpillDict::with_tiny_memory();
        map.by_new = SpillDict::with_tiny_memory();
        for i in 0..3000 {
            map.insert("z", &format!("v{i}"), &format!("v{i}_sparsified"))
                .unwrap();
            map.insert("y", &format!("w{i}"), "merged").unwrap();
        }
        assert_eq!(map.first_chained(), None);
        map.insert("z", "v7_sparsified", "again").unwrap();
        map.insert("y", "merged", "w0").unwrap();
        assert_eq!(map.first_chained().map(|(f, n)| (&**f, n)), Some(("y", "merged")));
        assert_eq!(
            map.get("z", "v2999").unwrap().as_deref(),
            Some("v2999_sparsified")
        );
        assert_eq!(map.len(), 6002);
    }
}
