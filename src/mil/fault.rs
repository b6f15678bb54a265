//! The first error met reading a scratch file, kept for whoever outlives the reader: the graph
//! index and the op file answer plain values (a failed read answers an empty one), and their
//! callers check the fault before they trust what followed.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The first error met reading the index's scratch files, kept by whoever outlives the index.
#[derive(Debug, Clone, Default)]
pub struct Fault(Arc<Mutex<Option<Error>>>);

impl Fault {
    pub fn record(&self, error: Error) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
    }

    /// The error a read met, if one did (taken: later calls answer `None`).
    pub fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// `Err` with the error a read met, if one did.
    pub fn check(&self) -> Result<()> {
        self.take().map_or(Ok(()), Err)
    }

    /// `result`, unless a read failed: then that error, which explains whatever followed it.
    pub fn explain<T>(&self, result: Result<T>) -> Result<T> {
        match (self.take(), result) {
            (Some(e), _) => Err(e),
            (None, result) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failed_read_explains_what_followed_it() {
        let fault = Fault::default();
        assert_eq!(fault.explain(Ok(1)).unwrap(), 1);
        fault.record(Error::Graph("first".into()));
        fault.record(Error::Graph("second".into()));
        let later = fault.explain::<()>(Err(Error::Graph("later".into())));
        assert!(later.unwrap_err().to_string().ends_with("first"));
        // Taken: reported once.
        assert!(fault.check().is_ok());
    }
}
