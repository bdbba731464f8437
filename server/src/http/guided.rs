//! A request's structured-output fields → one [`Spec`] → its compiled constraint.
//!
//! Invariants: at most one of `response_format` (other than `text`), `guided_json`,
//! `guided_regex`, `guided_choice`, `guided_grammar` and a forced tool call may be given; any
//! problem (a conflict, a malformed field, a schema or grammar that does not compile) is a 400
//! whose `param` names the field and whose message carries the compiler's reason. A new
//! grammar compiles while its request already runs (its sequences wait for it at their first
//! sample); a request whose grammar fails is dropped, so aborted, before any token is sent.

use crate::codec::Codec;
use crate::error::ApiError;
use crate::protocol::guided::GuidedFields;
use crate::structured::{closed_objects, Spec, StructuredError};
use kiln_runtime::sample::deferred::deferred;
use kiln_runtime::sample::ConstraintSource;
use std::sync::Arc;

/// The spec a request asks for, with the request field it came from.
pub type Asked = Option<(Spec, &'static str)>;

pub fn spec(f: &GuidedFields) -> Result<Asked, ApiError> {
    let mut asked: Vec<(Spec, &'static str)> = Vec::new();
    let schema = f.response_format.as_ref().and_then(|rf| rf.json_schema.as_ref()).and_then(|j| j.schema.as_ref());
    if schema.is_some_and(|s| !s.is_object() && !s.is_boolean()) {
        return Err(ApiError::bad_value(
            "response_format.json_schema.schema",
            "`response_format.json_schema.schema` must be a JSON Schema: an object or a boolean",
        ));
    }
    if let Some(rf) = &f.response_format {
        match rf.kind.as_str() {
            "text" => {}
            "json_object" => asked.push((Spec::JsonObject, "response_format")),
            "json_schema" => {
                let schema = rf.json_schema.as_ref().and_then(|j| j.schema.clone()).ok_or_else(|| {
                    ApiError::bad_value(
                        "response_format.json_schema.schema",
                        "`response_format` of type `json_schema` needs `json_schema.schema`",
                    )
                })?;
                let strict = rf.json_schema.as_ref().and_then(|j| j.strict) == Some(true);
                let schema = if strict { closed_objects(&schema) } else { schema };
                asked.push((Spec::JsonSchema(schema), "response_format"));
            }
            other => {
                return Err(ApiError::bad_value(
                    "response_format.type",
                    format!("`response_format.type` `{other}` is not one of text, json_object, json_schema"),
                ))
            }
        }
    }
    if let Some(j) = &f.guided_json {
        let schema = match j {
            serde_json::Value::String(s) => serde_json::from_str(s)
                .map_err(|e| ApiError::bad_value("guided_json", format!("`guided_json` is not JSON: {e}")))?,
            v => v.clone(),
        };
        asked.push((Spec::JsonSchema(schema), "guided_json"));
    }
    if let Some(r) = &f.guided_regex {
        asked.push((Spec::Regex(r.clone()), "guided_regex"));
    }
    if let Some(c) = &f.guided_choice {
        asked.push((Spec::Choice(c.clone()), "guided_choice"));
    }
    if let Some(g) = &f.guided_grammar {
        asked.push((Spec::Lark(g.clone()), "guided_grammar"));
    }
    match asked.len() {
        0 => Ok(None),
        1 => Ok(asked.pop()),
        _ => Err(ApiError::bad_value(
            asked[1].1,
            format!("`{}` and `{}` both constrain the output: give at most one", asked[0].1, asked[1].1),
        )),
    }
}

/// `ignore_eos` would leave a finished grammar nothing to end with: refused together.
pub fn check_ignore_eos(asked: &Asked, ignore_eos: Option<bool>) -> Result<(), ApiError> {
    match (asked, ignore_eos) {
        (Some((_, param)), Some(true)) => Err(ApiError::bad_value(
            "ignore_eos",
            format!("`ignore_eos` cannot be combined with `{param}`: the constrained output must be able to end"),
        )),
        _ => Ok(()),
    }
}

/// The compiler's answer on a spec being compiled beside its request (see [`compile`]).
pub struct Verdict(Option<(tokio::task::JoinHandle<Result<(), StructuredError>>, &'static str)>);

impl Verdict {
    /// The spec's 400 if it did not compile (the caller then drops the submitted request,
    /// which aborts it).
    pub async fn wait(self) -> Result<(), ApiError> {
        let Some((task, param)) = self.0 else { return Ok(()) };
        match task.await.map_err(|e| ApiError::internal(format!("the grammar compiler failed: {e}")))? {
            Ok(()) => Ok(()),
            Err(StructuredError::Invalid(m)) => Err(ApiError::bad_value(param, format!("`{param}`: {m}"))),
        }
    }
}

/// Spec text (bytes) up to which a new grammar compiles beside its request; a longer one is
/// compiled before the request is submitted. A sequence whose grammar is still compiling at
/// its first sample holds the engine thread until it is (every other sequence's step waits),
/// so only specs whose compile is short are deferred (a JSON schema of 20 nested objects, 4.6
/// KB, compiled in 6.7 ms on a loaded 2-core machine; 1.2 KB in 1.3 ms).
const DEFER_MAX: usize = 4096;

/// The asked spec's constraint with the model's grammar engine: a grammar compiled before
/// (cached by spec text) at once; a new one compiles on the blocking pool (a large schema takes
/// a while) — for a short spec behind a [`deferred`] source, so the request is submitted and
/// its prompt prefilled meanwhile and its first sample waits for the grammar, not its time to
/// first token for the compiler. Pass the [`Verdict`] to `submit_all`: it carries the 400 of a
/// spec that does not compile.
pub async fn compile(
    codec: &Arc<dyn Codec>,
    asked: Asked,
) -> Result<(Option<Arc<dyn ConstraintSource>>, Verdict), ApiError> {
    let Some((spec, param)) = asked else { return Ok((None, Verdict(None))) };
    let Some(st) = codec.structured() else {
        return Err(ApiError::bad_value(param, "structured output is not available for this model's tokenizer"));
    };
    let key = spec.key();
    if let Some(src) = st.cached(&key) {
        return Ok((Some(src), Verdict(None)));
    }
    let defer = key.len() <= DEFER_MAX;
    let (source, resolver) = deferred();
    let c = Arc::clone(codec);
    let task = tokio::task::spawn_blocking(move || {
        let r = match c.structured() {
            Some(st) => st.compile_keyed(&spec, key),
            None => Err(StructuredError::Invalid("structured output is not available".into())),
        };
        resolver.resolve(r.clone().map_err(|StructuredError::Invalid(m)| m));
        r.map(|_| ())
    });
    let verdict = Verdict(Some((task, param)));
    if defer {
        return Ok((Some(source), verdict));
    }
    verdict.wait().await?;
    Ok((Some(source), Verdict(None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::guided::{JsonSchemaFormat, ResponseFormat};
    use serde_json::json;

    fn rf(kind: &str, schema: Option<serde_json::Value>) -> Option<ResponseFormat> {
        Some(ResponseFormat {
            kind: kind.into(),
            json_schema: Some(JsonSchemaFormat { name: None, description: None, schema, strict: Some(true) }),
        })
    }

    #[test]
    fn fields_map_to_specs_and_conflicts_are_named() {
        let none = GuidedFields { response_format: rf("text", None), ..Default::default() };
        assert!(spec(&none).unwrap().is_none());
        // `strict: true` closes the objects to their declared properties.
        let s =
            GuidedFields { response_format: rf("json_schema", Some(json!({"type": "object"}))), ..Default::default() };
        let closed = json!({"type": "object", "additionalProperties": false});
        assert_eq!(spec(&s).unwrap(), Some((Spec::JsonSchema(closed), "response_format")));
        let text = GuidedFields { guided_json: Some(json!("{\"type\": \"string\"}")), ..Default::default() };
        assert_eq!(spec(&text).unwrap().unwrap().0, Spec::JsonSchema(json!({"type": "string"})));
        let param = |f: GuidedFields| spec(&f).unwrap_err().param.unwrap_or_default();
        assert_eq!(
            param(GuidedFields { response_format: rf("json_schema", None), ..Default::default() }),
            "response_format.json_schema.schema"
        );
        assert_eq!(
            param(GuidedFields { response_format: rf("xml", None), ..Default::default() }),
            "response_format.type"
        );
        assert_eq!(param(GuidedFields { guided_json: Some(json!("{not json")), ..Default::default() }), "guided_json");
        // A schema that is not one is refused whatever the type (it was ignored with `text`).
        assert_eq!(
            param(GuidedFields { response_format: rf("text", Some(json!(5))), ..Default::default() }),
            "response_format.json_schema.schema"
        );
        let boolean = GuidedFields { response_format: rf("text", Some(json!(false))), ..Default::default() };
        assert!(spec(&boolean).unwrap().is_none());
        let both = GuidedFields {
            guided_regex: Some("a".into()),
            guided_choice: Some(vec!["a".into()]),
            ..Default::default()
        };
        assert_eq!(param(both), "guided_choice");
    }
}
