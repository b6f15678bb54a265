//! Cooperative cancellation of a prune: a caller that keeps control while the engine runs (the
//! Python bindings, polling for Ctrl-C) sets the flag, and the engine stops before the next tensor
//! with `Error::Interrupted`, leaving nothing behind like any other
//! failure. The CLI does not need it: a signal there removes the scratch paths and exits
//! (`crate::cleanup`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A shared stop request; clones share it. The default is never cancelled.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Asks every holder to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Interrupted)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_request() {
        let flag = CancelFlag::default();
        let other = flag.clone();
        assert!(flag.check().is_ok());
        other.cancel();
        assert!(flag.is_cancelled());
        assert!(matches!(flag.check(), Err(Error::Interrupted)));
    }
}
