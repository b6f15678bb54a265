//! The renames of a rewrite, `(function, old, new)`, held compactly for
//! [`super::rewrite::rename_in_block`].
//!
//! A model of many small tensors renames the output of every pruned const, and the table is held
//! while every op that reads one is stored again: as tuples of strings with a map over them it
//! took about 180 bytes a rename (issue 18). Here both names are ranges of one text buffer, an
//! entry is 20 bytes, and the lookup table holds entry indices.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::names::NameList;
use super::texts::{Span, TextBuffer};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index into [`RenameMap::functions`].
    function: u32,
    old: Span,
    new: Span,
}

/// Renames by function and old name; an old name is renamed at most once per function.
#[derive(Debug, Default)]
pub struct RenameMap {
    text: TextBuffer,
    entries: Vec<Entry>,
    /// The functions with renames, in the order their first rename came.
    functions: NameList,
    by_old: HashTable<u32>,
    hasher: RandomState,
}

fn too_many() -> Error {
    Error::Graph("the rewrite renames more values than it can index".into())
}

impl RenameMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// The functions with renames.
    pub fn functions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.functions.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn span(&self, span: Span) -> &str {
        self.text.get(span)
    }

    fn store(&mut self, text: &str) -> Result<Span> {
        self.text.push(text).ok_or_else(too_many)
    }

    fn function_index(&self, function: &str) -> Option<u32> {
        self.functions.find(function).map(|i| i as u32)
    }

    fn find(&self, function: u32, old: &str) -> Option<&Entry> {
        let hash = self.hasher.hash_one((function, old));
        self.by_old
            .find(hash, |&i| {
                let entry = &self.entries[i as usize];
                entry.function == function && self.span(entry.old) == old
            })
            .map(|&i| &self.entries[i as usize])
    }

    /// Records that uses of `old` in `function` are to read `new`. Renaming an old name twice in
    /// one function is an error.
    pub fn insert(&mut self, function: &str, old: &str, new: &str) -> Result<()> {
        let function_index = match self.function_index(function) {
            Some(i) => i,
            None => u32::try_from(self.functions.number(&Arc::from(function))).map_err(|_| too_many())?,
        };
        if self.find(function_index, old).is_some() {
            return Err(Error::Graph(format!(
                "value '{old}' in function '{function}' renamed twice"
            )));
        }
        let index = u32::try_from(self.entries.len()).map_err(|_| too_many())?;
        let entry = Entry {
            function: function_index,
            old: self.store(old)?,
            new: self.store(new)?,
        };
        self.entries.push(entry);
        let (entries, text, hasher) = (&self.entries, &self.text, &self.hasher);
        let key = |e: &Entry| hasher.hash_one((e.function, text.get(e.old)));
        self.by_old
            .insert_unique(key(&entry), index, |&i| key(&entries[i as usize]));
        Ok(())
    }

    /// What `old` in `function` is renamed to, if it is.
    pub fn get(&self, function: &str, old: &str) -> Option<&str> {
        let entry = self.find(self.function_index(function)?, old)?;
        Some(self.span(entry.new))
    }

    /// A view of the renames of one function.
    /// A function and a new name there that is also an old name there, if any: the renames would
    /// then depend on their order. Of several, the first function by name. One pass over the
    /// renames, whatever the number of functions.
    pub fn first_chained(&self) -> Option<(&Arc<str>, &str)> {
        self.entries
            .iter()
            .map(|e| (e.function, self.span(e.new)))
            .filter(|&(function, new)| self.find(function, new).is_some())
            .filter_map(|(function, new)| Some((self.functions.get(function as usize)?, new)))
            .min_by(|a, b| a.0.cmp(b.0))
    }

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

impl<'m> FunctionRenames<'m> {
    pub fn get(&self, old: &str) -> Option<&'m str> {
        let entry = self.map.find(self.function, old)?;
        Some(self.map.span(entry.new))
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
        assert_eq!(map.get("main", "w"), Some("w_sparsified"));
        assert_eq!(map.get("other", "w"), Some("first"));
        assert_eq!(map.get("main", ""), Some("naïve"));
        assert_eq!(map.get("main", "first"), None);
        assert_eq!(map.get("third", "w"), None);
        let functions: Vec<_> = map.functions().map(|f| &**f).collect();
        assert_eq!(functions, ["main", "other"]);
        assert_eq!(map.of_function("other").unwrap().get("w"), Some("first"));
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
}
