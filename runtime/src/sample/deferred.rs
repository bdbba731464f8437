//! A grammar that is still compiling when its request enters the engine.
//!
//! A new JSON schema takes the compiler a millisecond or more; waiting for it before submitting
//! the request added that to the time to first token. With a [`Deferred`] source the request
//! is submitted at once and its prefill runs while the grammar compiles; the sequence needs the
//! grammar only at its first sample, by when the compile has (almost always) finished.
//!
//! Invariants: a constraint started before the source arrived stays at the grammar's start
//! until it first needs the grammar (a mask, a token); it then waits for the source and starts
//! from it with the same end ids, so it behaves exactly as one started from the source itself.
//! A fork of one still waiting waits too (it is at the start as well). A compile that failed,
//! or a [`Resolver`] dropped without an answer, makes every mask an error. While the source
//! has not arrived, [`TokenConstraint::ready`] is false, so the engine computes no mask ahead
//! on its pool (a pool worker never parks on a compile).

use super::constraint::{ConstraintError, ConstraintSource, TokenConstraint};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

type Outcome = Result<Arc<dyn ConstraintSource>, String>;

#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Outcome>>,
    arrived: Condvar,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outcome>> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_set(&self) -> bool {
        self.lock().is_some()
    }

    /// The compiled source, waiting for it.
    fn wait(&self) -> Outcome {
        let mut g = self.lock();
        loop {
            if let Some(o) = g.as_ref() {
                return o.clone();
            }
            g = self.arrived.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn set(&self, o: Outcome) {
        let mut g = self.lock();
        if g.is_none() {
            *g = Some(o);
        }
        self.arrived.notify_all();
    }
}

/// The source a request is submitted with while its grammar compiles.
pub struct Deferred {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred").field("arrived", &self.slot.is_set()).finish()
    }
}

/// Hands the compiled source (or the compiler's error) to its [`Deferred`].
pub struct Resolver {
    slot: Arc<Slot>,
}

impl Resolver {
    pub fn resolve(self, outcome: Result<Arc<dyn ConstraintSource>, String>) {
        self.slot.set(outcome);
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // No-op after `resolve`; otherwise the compile was lost (its task panicked).
        self.slot.set(Err("the grammar compiler stopped without an answer".into()));
    }
}

/// A source to submit now and the resolver to answer it with once compiled.
pub fn deferred() -> (Arc<Deferred>, Resolver) {
    let slot = Arc::new(Slot::default());
    (Arc::new(Deferred { slot: Arc::clone(&slot) }), Resolver { slot })
}

impl ConstraintSource for Deferred {
    fn start(&self, ends: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
        match self.slot.lock().as_ref() {
            Some(Ok(src)) => src.start(ends),
            _ => Ok(Box::new(Waiting { slot: Arc::clone(&self.slot), ends: ends.into(), started: None })),
        }
    }
}

/// A sequence's constraint at the grammar's start until the source arrives.
struct Waiting {
    slot: Arc<Slot>,
    ends: Arc<[u32]>,
    started: Option<Box<dyn TokenConstraint>>,
}

impl Waiting {
    fn started(&mut self) -> Result<&mut Box<dyn TokenConstraint>, ConstraintError> {
        if self.started.is_none() {
            let src = self.slot.wait().map_err(ConstraintError)?;
            self.started = Some(src.start(&self.ends)?);
        }
        Ok(self.started.as_mut().expect("started above"))
    }
}

impl TokenConstraint for Waiting {
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
        self.started()?.fill_mask(mask)
    }

    fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.started()?.accept(token)
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        match &self.started {
            Some(c) => c.fork(),
            None => Box::new(Waiting { slot: Arc::clone(&self.slot), ends: Arc::clone(&self.ends), started: None }),
        }
    }

    fn ready(&self) -> bool {
        self.started.is_some() || self.slot.is_set()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Allows `end` and the tokens above the last accepted one, up to 8.
    #[derive(Debug)]
    struct Above(u32);
    struct AboveC(u32, u32);

    impl ConstraintSource for Above {
        fn start(&self, ends: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
            Ok(Box::new(AboveC(self.0, ends[0])))
        }
    }

    impl TokenConstraint for AboveC {
        fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
            mask[0] = (0xFF & !((2u32 << self.0) - 1)) | 1 << self.1;
            Ok(())
        }
        fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
            self.0 = token;
            Ok(())
        }
        fn fork(&self) -> Box<dyn TokenConstraint> {
            Box::new(AboveC(self.0, self.1))
        }
    }

    fn mask(c: &mut dyn TokenConstraint) -> Result<u32, ConstraintError> {
        let mut m = [0u32; 1];
        c.fill_mask(&mut m).map(|()| m[0])
    }

    #[test]
    fn a_constraint_started_early_waits_for_the_source_and_then_is_the_sources_own() {
        let (d, r) = deferred();
        let mut early = d.start(&[20]).unwrap();
        let fork = early.fork();
        assert!(!early.ready() && !fork.ready(), "nothing to compute from yet");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            r.resolve(Ok(Arc::new(Above(1))));
        });
        // Waits for the source, then the same masks as one started from it directly.
        let mut direct = Above(1).start(&[20]).unwrap();
        assert_eq!(mask(early.as_mut()).unwrap(), mask(direct.as_mut()).unwrap());
        t.join().unwrap();
        assert!(early.ready() && fork.ready());
        early.accept(4).unwrap();
        direct.accept(4).unwrap();
        assert_eq!(mask(early.as_mut()).unwrap(), mask(direct.as_mut()).unwrap());
        // The fork taken while waiting is still at the start, with the same end ids.
        let mut fork = fork;
        assert_eq!(mask(fork.as_mut()).unwrap(), 0xFC | 1 << 20);
        // Started after the source arrived: the source's own constraint.
        let mut late = d.start(&[21]).unwrap();
        assert!(late.ready());
        assert_eq!(mask(late.as_mut()).unwrap(), 0xFC | 1 << 21);
    }

    #[test]
    fn a_failed_or_lost_compile_makes_every_mask_an_error() {
        let (d, r) = deferred();
        let mut c = d.start(&[0]).unwrap();
        r.resolve(Err("bad schema".into()));
        assert!(mask(c.as_mut()).unwrap_err().0.contains("bad schema"));
        assert!(c.accept(3).is_err());
        let (d, r) = deferred();
        let mut c = d.start(&[0]).unwrap();
        drop(r);
        assert!(mask(c.as_mut()).unwrap_err().0.contains("without an answer"));
    }
}
