//! Structured output: request constraints (JSON schema, regex, choice, Lark grammar, tool
//! calls) compiled by llguidance into the engine's [`ConstraintSource`]s.
//!
//! One [`Structured`] per tokenizer, built at load: the token trie and llguidance's parser
//! factory are made once and shared by every request. Compiled grammars are cached by
//! [`Spec::key`] (the schema's text), so a repeated schema costs a clone, not a compile.
//!
//! Invariants: a spec that does not compile (bad schema, regex or grammar) is a
//! [`StructuredError`] naming the problem, before anything reaches the engine; nothing here
//! panics on user input (llguidance's own panics are caught by its matcher).

mod matcher;
pub mod spec;
mod tokenv;

pub use spec::{closed_objects, Spec};

use kiln_models::tokenizer::Tokenizer;
use kiln_runtime::sample::ConstraintSource;
use llguidance::toktrie::TokTrie;
use llguidance::{Matcher, ParserFactory};
use matcher::LlgSource;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// Compiled grammars kept, at most (oldest evicted first).
const CACHE_ENTRIES: usize = 256;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StructuredError {
    /// The spec itself is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Arc<LlgSource>>,
    order: VecDeque<String>,
}

pub struct Structured {
    factory: ParserFactory,
    env_eos: u32,
    /// Bytes that are in none of the vocabulary's tokens: text containing one can't be output.
    unspellable: [bool; 256],
    cache: Mutex<Cache>,
}

impl Structured {
    /// The token environment and parser factory for `tokenizer`.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, String> {
        let env = tokenv::build(tokenizer)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        let trie = env.tok_trie();
        let env_eos = trie.eos_token();
        let mut unspellable = [true; 256];
        for t in 0..trie.vocab_size() as u32 {
            let bytes = trie.token(t);
            // Special tokens carry a marker byte that grammars never produce.
            if bytes.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                bytes.iter().for_each(|&b| unspellable[b as usize] = false);
            }
        }
        Ok(Structured { factory, env_eos, unspellable, cache: Mutex::default() })
    }

    /// The grammar of the spec whose [`Spec::key`] is `key`, if it was compiled before (and is
    /// still cached).
    pub fn cached(&self, key: &str) -> Option<Arc<dyn ConstraintSource>> {
        self.cache().map.get(key).map(|s| s.clone() as Arc<dyn ConstraintSource>)
    }

    /// The compiled grammar of `spec`, from the cache or compiled now.
    pub fn compile(&self, spec: &Spec) -> Result<Arc<dyn ConstraintSource>, StructuredError> {
        self.compile_keyed(spec, spec.key())
    }

    /// [`Structured::compile`] for a caller that already has the spec's [`Spec::key`] (a JSON
    /// schema's is the whole schema serialised).
    pub fn compile_keyed(&self, spec: &Spec, key: String) -> Result<Arc<dyn ConstraintSource>, StructuredError> {
        if let Some(s) = self.cached(&key) {
            return Ok(s);
        }
        self.check_spellable(spec)?;
        let grammar = spec.grammar().map_err(StructuredError::Invalid)?;
        let parser = self.factory.create_parser(grammar).map_err(|e| StructuredError::Invalid(e.to_string()))?;
        let m = Matcher::new(Ok(parser));
        let src = Arc::new(LlgSource::new(m, self.env_eos).map_err(StructuredError::Invalid)?);
        let mut c = self.cache();
        if c.map.len() >= CACHE_ENTRIES {
            if let Some(old) = c.order.pop_front() {
                c.map.remove(&old);
            }
        }
        if c.map.insert(key.clone(), src.clone()).is_none() {
            c.order.push_back(key);
        }
        Ok(src)
    }

    /// Refuses a spec whose text has a character this vocabulary cannot spell. A grammar that
    /// forces such a character (a choice, a `const`) would otherwise be found stuck only in
    /// the middle of generation, when no token can continue it: an engine error (500) for
    /// what is a bad request. (SmolLM2's vocabulary has no token with byte 0xF1 or 0xF2, the
    /// lead bytes of the unassigned planes 4 to 11.) Conservative: a character the spec only
    /// mentions (in a description, a negated class) is refused too.
    fn check_spellable(&self, spec: &Spec) -> Result<(), StructuredError> {
        let mut bad = None;
        spec.for_each_text(&mut |s| {
            if bad.is_none() {
                bad = s.chars().find(|c| c.encode_utf8(&mut [0; 4]).bytes().any(|b| self.unspellable[b as usize]));
            }
        });
        match bad {
            None => Ok(()),
            Some(c) => Err(StructuredError::Invalid(format!(
                "U+{:04X} cannot be output by this model: its vocabulary has no token for part of its UTF-8 bytes",
                c as u32
            ))),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
