//! Whether two tokenizers share one vocabulary, which a KL divergence between their models
//! needs (row `i` of both models' logits must mean the same token).
//!
//! Invariant: equal means the same number of ids and the same stored token string for every id.

use super::PerplexityError;
use crate::tokenizer::Tokenizer;

pub fn same_vocabulary(model: &Tokenizer, base: &Tokenizer) -> Result<(), PerplexityError> {
    let (m, b) = (model.vocab_size(), base.vocab_size());
    if m != b {
        return Err(PerplexityError::VocabMismatch(format!("{b} ids in the base's tokenizer, {m} in the model's")));
    }
    for id in 0..m as u32 {
        let (tm, tb) = (model.id_to_token(id), base.id_to_token(id));
        if tm != tb {
            return Err(PerplexityError::VocabMismatch(format!(
                "id {id} is {tb:?} in the base's tokenizer, {tm:?} in the model's"
            )));
        }
    }
    Ok(())
}
