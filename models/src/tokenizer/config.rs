//! `SpecialTokens`: the part of a tokenizer that HF keeps in `tokenizer_config.json` rather
//! than `tokenizer.json` (BOS/EOS/UNK/PAD, whether to add BOS, the chat template), and its
//! conversion to and from that file.
//!
//! Invariant: what `to_config_json` writes, `from_config_json` reads back unchanged.

use serde_json::{json, Map, Value};

use super::error::TokenizerError;

/// Special-token names (token strings, not ids) and prompt conventions of a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
    /// Whether `encode` callers should start prompts with BOS by default.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// An HF `tokenizer_config.json` for `tokenizer` with `specials`.
pub(crate) fn to_config_json(tokenizer: &tokenizers::Tokenizer, specials: &SpecialTokens) -> Value {
    let mut added: Vec<_> = tokenizer.get_added_tokens_decoder().into_iter().collect();
    added.sort_by_key(|(id, _)| *id);
    let decoder: Map<String, Value> = added
        .into_iter()
        .map(|(id, t)| {
            let entry = json!({
                "content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special,
            });
            (id.to_string(), entry)
        })
        .collect();
    let mut config = json!({
        "add_bos_token": specials.add_bos,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": specials.bos,
        "eos_token": specials.eos,
        "unk_token": specials.unk,
        "pad_token": specials.pad,
        "clean_up_tokenization_spaces": false,
        // The generic fast class reads everything from tokenizer.json; a model-specific class
        // (GPT2Tokenizer, LlamaTokenizer) would re-derive BOS handling from its own defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let (Some(template), Some(obj)) = (&specials.chat_template, config.as_object_mut()) {
        obj.insert("chat_template".into(), Value::String(template.clone()));
    }
    config
}

/// Reads the special-token fields of a parsed `tokenizer_config.json`.
///
/// `default_add_bos` is used when the file has no `add_bos_token` (HF then relies on the
/// tokenizer.json post-processor, which the caller inspects).
pub(crate) fn from_config_json(config: &Value, default_add_bos: bool) -> Result<SpecialTokens, TokenizerError> {
    Ok(SpecialTokens {
        bos: token_field(config, "bos_token")?,
        eos: token_field(config, "eos_token")?,
        unk: token_field(config, "unk_token")?,
        pad: token_field(config, "pad_token")?,
        add_bos: match config.get("add_bos_token") {
            None | Some(Value::Null) => default_add_bos,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(shape("add_bos_token", other)),
        },
        chat_template: chat_template_field(config)?,
    })
}

/// A special token is written either as a string or as an AddedToken object with `content`.
fn token_field(config: &Value, field: &'static str) -> Result<Option<String>, TokenizerError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(obj @ Value::Object(_)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(shape(field, obj)),
        },
        Some(other) => Err(shape(field, other)),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is the one
/// used for plain chat (the others serve tool use or RAG).
fn chat_template_field(config: &Value) -> Result<Option<String>, TokenizerError> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let default = list.iter().find(|t| t.get("name") == Some(&json!("default")));
            match default.and_then(|t| t.get("template")) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(TokenizerError::ConfigField {
                    field: "chat_template",
                    detail: "a list of templates without a `default` entry".into(),
                }),
            }
        }
        Some(other) => Err(shape("chat_template", other)),
    }
}

fn shape(field: &'static str, value: &Value) -> TokenizerError {
    let mut detail = value.to_string();
    if detail.len() > 80 {
        let cut = (0..=80).rev().find(|&i| detail.is_char_boundary(i)).unwrap_or(0);
        detail.truncate(cut);
        detail.push_str("...");
    }
    TokenizerError::ConfigField { field, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_accept_strings_and_objects() {
        let config = json!({
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "special": true},
            "pad_token": null,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
        });
        let s = from_config_json(&config, true).unwrap();
        assert_eq!(s.bos.as_deref(), Some("<s>"));
        assert_eq!(s.eos.as_deref(), Some("</s>"));
        assert_eq!(s.pad, None);
        assert!(s.add_bos, "absent add_bos_token falls back to the caller's default");
        assert_eq!(s.chat_template.as_deref(), Some("D"));
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let err = from_config_json(&json!({"eos_token": 5}), false).unwrap_err();
        assert!(matches!(err, TokenizerError::ConfigField { field: "eos_token", .. }), "{err}");
        let err = from_config_json(&json!({"chat_template": [{"name": "x"}]}), false).unwrap_err();
        assert!(matches!(err, TokenizerError::ConfigField { field: "chat_template", .. }));
    }
}
