//! Cooperative cancellation of a prune: a caller that keeps control while the engine runs (the
//! Python bindings, polling for Ctrl-C) sets the flag, and the engine stops before the next tensor
//! with `Error::Interrupted`, leaving nothing behind like any other
//! failure. The CLI does not need it: a signal there removes the scratch paths and exits
//! (`crate::cleanup`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// Called by [`CancelFlag::final_check`]; see [`CancelFlag::before_final_check`].
type Ask = Box<dyn Fn() + Send + Sync>;

/// A shared stop request; clones share it. The default is never cancelled.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<Shared>);

#[derive(Default)]
struct Shared {
    cancelled: AtomicBool,
    ask: Mutex<Option<Ask>>,
}

impl std::fmt::Debug for CancelFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CancelFlag").field(&self.is_cancelled()).finish()
    }
}

impl CancelFlag {
    /// Asks every holder to stop.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// `Err(Error::Interrupted)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Has [`CancelFlag::final_check`] call `ask` first, which returns once the holder has looked
    /// for a stop request and set the flag if there is one. A holder that looks only now and then
    /// (Python, every 50 ms) otherwise saw a Ctrl-C that came just before the commit only once
    /// the output was in place, and the run could no longer be stopped (red team, session 21).
    pub fn before_final_check(&self, ask: impl Fn() + Send + Sync + 'static) {
        *self.0.ask.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(ask));
    }

    /// The check just before a run's output is put in place, its last chance to stop: asks the
    /// holder first (see [`CancelFlag::before_final_check`]).
    pub fn final_check(&self) -> Result<()> {
        if let Some(ask) = &*self.0.ask.lock().unwrap_or_else(PoisonError::into_inner) {
            ask();
        }
        self.check()
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

    #[test]
    fn the_final_check_asks_the_holder_first() {
        let flag = CancelFlag::default();
        assert!(flag.final_check().is_ok(), "nobody to ask: the flag decides");
        let holder = flag.clone();
        flag.before_final_check(move || holder.cancel());
        assert!(flag.check().is_ok(), "only the final check asks");
        assert!(matches!(flag.final_check(), Err(Error::Interrupted)));
    }
}
