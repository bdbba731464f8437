//! llguidance's [`Matcher`] behind the engine's constraint traits.
//!
//! Invariants: a source holds one compiled prototype matcher; each sequence starts from a
//! clone of it (clones share the lexer's lazily built automaton, so a grammar's later
//! requests are cheaper than its first), and its start state's mask is computed once and
//! copied to each sequence's first fill; the masks handed to the engine allow exactly the
//! sequence's end ids (the engine's, given at start) wherever the grammar allows its one EOS,
//! and only those once the grammar has ended; llguidance's own EOS bit is never passed on
//! unless it is one of them.

use kiln_runtime::sample::constraint::allows;
use kiln_runtime::sample::{ConstraintError, ConstraintSource, TokenConstraint};
use llguidance::Matcher;
use std::sync::{Arc, Mutex, PoisonError};

pub struct LlgSource {
    proto: Mutex<Matcher>,
    /// llguidance's mask at the grammar's start, the same for every sequence: computed once
    /// here, so a request's first mask is a copy.
    start_mask: Arc<[u32]>,
    /// The EOS of llguidance's token environment.
    env_eos: u32,
}

impl std::fmt::Debug for LlgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlgSource").field("env_eos", &self.env_eos).finish()
    }
}

impl LlgSource {
    /// The source of a compiled matcher at its start, whose first mask is computed here: some
    /// problems (an unsatisfiable schema) only show then, and are this function's error.
    pub fn new(mut proto: Matcher, env_eos: u32) -> Result<Self, String> {
        let first = proto.compute_mask_or_eos().map_err(|e| e.to_string())?;
        if let Some(e) = proto.get_error() {
            return Err(e);
        }
        let start_mask = Arc::from(first.as_slice());
        Ok(LlgSource { proto: Mutex::new(proto), start_mask, env_eos })
    }
}

impl ConstraintSource for LlgSource {
    fn start(&self, ends: &[u32]) -> Result<Box<dyn TokenConstraint>, ConstraintError> {
        let m = self.proto.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let first = Some(self.start_mask.clone());
        Ok(Box::new(LlgConstraint { m, first, env_eos: self.env_eos, ends: ends.into() }))
    }
}

struct LlgConstraint {
    m: Matcher,
    /// The source's start mask while no token has been consumed.
    first: Option<Arc<[u32]>>,
    env_eos: u32,
    ends: Arc<[u32]>,
}

fn err(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError(e.to_string())
}

impl TokenConstraint for LlgConstraint {
    fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), ConstraintError> {
        match &self.first {
            Some(v) => mask.iter_mut().zip(v.iter()).for_each(|(d, s)| *d = *s),
            None => {
                let v = self.m.compute_mask_or_eos().map_err(err)?;
                mask.iter_mut().zip(v.as_slice()).for_each(|(d, s)| *d = *s);
            }
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
        self.first = None;
        self.m.consume_token(token).map_err(err)
    }

    fn fork(&self) -> Box<dyn TokenConstraint> {
        let (m, first) = (self.m.clone(), self.first.clone());
        Box::new(LlgConstraint { m, first, env_eos: self.env_eos, ends: self.ends.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Spec, Structured};
    use super::*;
    use kiln_runtime::sample::constraint::mask_words;
    use serde_json::json;

    /// The start mask copied to a sequence is the one its own matcher computes, and a consumed
    /// token drops it (the next mask is the matcher's again).
    #[test]
    fn the_shared_start_mask_is_the_matchers_own() {
        let path = kiln_models::fetch::default_model_path().expect("the default model (scripts/test.sh fetches it)");
        let file = kiln_models::gguf::GgufFile::open(&path).expect("open the GGUF");
        let spec = kiln_models::gguf_tokenizer::tokenizer_spec(&file).expect("tokenizer metadata");
        let tok = kiln_models::tokenizer::Tokenizer::from_gguf_spec(&spec).expect("tokenizer");
        let st = Structured::new(&tok).expect("llguidance environment");
        let words = mask_words(tok.vocab_size());
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        for spec in [Spec::JsonObject, Spec::JsonSchema(schema), Spec::Regex("[a-c]{2,4}x".into())] {
            let parser = st.factory.create_parser(spec.grammar().unwrap()).unwrap();
            let m = Matcher::new(Ok(parser));
            let src = LlgSource::new(m.clone(), st.env_eos).unwrap();
            let mut shared = src.start(&tok.eos_ids()).unwrap();
            let mut own = LlgConstraint { m, first: None, env_eos: st.env_eos, ends: tok.eos_ids().into() };
            let (mut a, mut b) = (vec![0u32; words], vec![0u32; words]);
            shared.fill_mask(&mut a).unwrap();
            own.fill_mask(&mut b).unwrap();
            assert_eq!(a, b, "{spec:?}: start masks");
            assert!(a.iter().any(|&w| w != 0) && a.iter().any(|&w| w != u32::MAX), "{spec:?}: a real mask");
            let t = (0..tok.vocab_size() as u32).find(|&t| a[t as usize / 32] >> (t % 32) & 1 == 1).unwrap();
            let mut fork = shared.fork();
            shared.accept(t).unwrap();
            own.accept(t).unwrap();
            shared.fill_mask(&mut a).unwrap();
            own.fill_mask(&mut b).unwrap();
            assert_eq!(a, b, "{spec:?}: masks after token {t}");
            fork.fill_mask(&mut b).unwrap();
            assert_ne!(a, b, "{spec:?}: a fork taken before the token still has the start mask");
        }
    }
}
