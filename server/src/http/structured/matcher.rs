//! llguidance's [`Matcher`] behind the engine's constraint traits.
//!
//! Invariants: a source holds one compiled prototype matcher; each sequence starts from a
//! clone of it (clones share the lexer's lazily built automaton, so a grammar's later
//! requests are cheaper than its first); the masks handed to the engine allow exactly the
//! sequence's end ids (the engine's, given at start) wherever the grammar allows its one EOS,
//! and only those once the grammar has ended; llguidance's own EOS bit is never passed on
//! unless it is one of them.

use kiln_runtime::sample::constraint::allows;
use kiln_runtime::sample::{ConstraintError, ConstraintSource, TokenConstraint};
use llguidance::Matcher;
use std::sync::{Arc, Mutex, PoisonError};

pub struct LlgSource {
    proto: Mutex<Matcher>,
    /// The EOS of llguidance's token environment.
    env_eos: u32,
}

impl std::fmt::Debug for LlgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlgSource").field("env_eos", &self.env_eos).finish()
    }
}

impl LlgSource {
    pub fn new(proto: Matcher, env_eos: u32) -> Self {
        LlgSource { proto: Mutex::new(proto), env_eos }
    }
}

impl ConstraintSource for LlgSource {
    fn start(&self, ends: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
        let m = self.proto.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Box::new(LlgConstraint { m, env_eos: self.env_eos, ends: ends.into() }))
    }
}

struct LlgConstraint {
    m: Matcher,
    env_eos: u32,
    ends: Arc<[u32]>,
}

fn err(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError(e.to_string())
}

impl TokenConstraint for LlgConstraint {
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
        let v = self.m.compute_mask_or_eos().map_err(err)?;
        for (d, s) in mask.iter_mut().zip(v.as_slice()) {
            *d = *s;
        }
        let may_end = allows(mask, self.env_eos);
        let mut set = |t: u32, on: bool| {
            if let Some(w) = mask.get_mut(t as usize / 32) {
                if on {
                    *w |= 1 << (t % 32);
                } else {
                    *w &= !(1 << (t % 32));
                }
            }
        };
        set(self.env_eos, false);
        for &t in self.ends.iter() {
            set(t, may_end);
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.m.consume_token(token).map_err(err)
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        Box::new(LlgConstraint { m: self.m.clone(), env_eos: self.env_eos, ends: self.ends.clone() })
    }
}
