//! A list of distinct names (functions, specializations) numbered in the order they came, found by
//! hash: a multifunction package has thousands of functions, and a linear search of them for every
//! op, rename or stored change made a run quadratic in the function count (issue 18).

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default, Clone)]
pub struct NameList {
    names: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, usize>,
}

impl NameList {
    /// The number of `name`, added if new.
    pub fn number(&mut self, name: &Arc<str>) -> usize {
        if let Some(&n) = self.numbers.get(name) {
            return n;
        }
        self.names.push(name.clone());
        self.numbers.insert(name.clone(), self.names.len() - 1);
        self.names.len() - 1
    }

    /// The number of `name`, if it is listed.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.numbers.get(name).copied()
    }

    pub fn get(&self, number: usize) -> Option<&Arc<str>> {
        self.names.get(number)
    }

    /// The names, in the order they came.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.names.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_in_the_order_they_came() {
        let mut list = NameList::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!((list.number(&b), list.number(&a), list.number(&b)), (0, 1, 0));
        assert_eq!((list.find("a"), list.find("c")), (Some(1), None));
        assert_eq!(list.get(0), Some(&b));
        assert_eq!(list.iter().map(|n| &**n).collect::<Vec<_>>(), ["b", "a"]);
    }
}
