//! llguidance's [`Matcher`] behind the engine's constraint traits.
//!
//! Invariants: a source holds one compiled prototype matcher; each sequence starts from a
//! clone of it (clones share the lexer's lazily built automaton, so a grammar's later
//! requests are cheaper than its first); the masks handed to the engine allow every
//! end-of-turn id of the model wherever the grammar allows its one EOS, and only those once
//! the grammar has ended.

use kiln_runtime::sample::constraint::allows;
use kiln_runtime::sample::{ConstraintError, ConstraintSource, TokenConstraint};
use llguidance::Matcher;
use std::sync::{Arc, Mutex, PoisonError};

pub struct LlgSource {
    proto: Mutex<Matcher>,
    ends: Ends,
}

/// The end-of-turn ids: the one llguidance knows, and all the engine stops on.
#[derive(Clone, Debug)]
pub struct Ends {
    pub env_eos: u32,
    pub all: Arc<[u32]>,
}

impl std::fmt::Debug for LlgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlgSource").field("ends", &self.ends).finish()
    }
}

impl LlgSource {
    pub fn new(proto: Matcher, ends: Ends) -> Self {
        LlgSource { proto: Mutex::new(proto), ends }
    }
}

impl ConstraintSource for LlgSource {
    fn start(&self) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
        let m = self.proto.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Box::new(LlgConstraint { m, ends: self.ends.clone() }))
    }
}

struct LlgConstraint {
    m: Matcher,
    ends: Ends,
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
        if allows(mask, self.ends.env_eos) {
            for &t in self.ends.all.iter() {
                if let Some(w) = mask.get_mut(t as usize / 32) {
                    *w |= 1 << (t % 32);
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        let t = if self.ends.all.contains(&token) { self.ends.env_eos } else { token };
        self.m.consume_token(t).map_err(err)
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        Box::new(LlgConstraint { m: self.m.clone(), ends: self.ends.clone() })
    }
}
