//! What a request asks its output to follow, and the llguidance grammar for it.
//!
//! Invariants: [`Spec::key`] is equal for two specs exactly when their grammars are (it is
//! the compiled-grammar cache key); JSON schemas are compiled with fixed separators (`", "`,
//! `": "`) and no free whitespace, so a small model cannot fill its budget with blank space
//! between tokens of the JSON; a schema's own `x-guidance` options win over those.

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

/// The tool-call markup: the Hermes / Qwen2.5 convention, which kiln also renders for
/// templates that know no tools (`super::super::tools`).
pub const TOOL_CALL_OPEN: &str = "<tool_call>\n";
pub const TOOL_CALL_CLOSE: &str = "\n</tool_call>";
/// Most calls one forced reply may make: a small model told it may go on calling otherwise
/// can repeat the same call until `max_tokens` (seen with SmolLM2 at temperature 1).
pub const MAX_PARALLEL_CALLS: usize = 8;

#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// Any JSON object (`response_format: {type: json_object}`).
    JsonObject,
    /// `response_format: {type: json_schema}`, or `guided_json`.
    JsonSchema(Value),
    /// `guided_regex`: the whole output matches.
    Regex(String),
    /// `guided_choice`: the output is exactly one of these.
    Choice(Vec<String>),
    /// `guided_grammar`: a Lark grammar (llguidance's dialect).
    Lark(String),
    /// One tool call (or several, `parallel`) whose `{"name", "arguments"}` object follows
    /// one of `tools`: `(name, parameters schema)`.
    ToolCalls { tools: Vec<(String, Value)>, parallel: bool },
}

fn with_json_options(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    s
}

/// `schema` with every object schema that does not say otherwise closed to its declared
/// properties (`additionalProperties: false`): what `strict: true` promises (OpenAI's strict
/// mode demands the keyword; JSON Schema's default would let the model add keys). Only schema
/// positions are walked (`properties`, `items`, `anyOf`, `$defs`, ...), never `enum`/`const`
/// values or a property that happens to be named like a keyword.
pub fn closed_objects(schema: &Value) -> Value {
    let mut s = schema.clone();
    close(&mut s);
    s
}

fn close(v: &mut Value) {
    let Value::Object(m) = v else { return };
    let is_object = m.contains_key("properties")
        || match m.get("type") {
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            _ => false,
        };
    if is_object && !m.contains_key("additionalProperties") && !m.contains_key("patternProperties") {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (k, x) in m.iter_mut() {
        match k.as_str() {
            // Maps from names to schemas.
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(named) = x {
                    named.values_mut().for_each(close);
                }
            }
            // One schema, or (items in older drafts) a list of them.
            "items"
            | "additionalProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "additionalItems"
            | "prefixItems"
            | "anyOf"
            | "oneOf"
            | "allOf" => match x {
                Value::Array(list) => list.iter_mut().for_each(close),
                one => close(one),
            },
            _ => {}
        }
    }
}

/// A Lark string literal for `s` (JSON's escapes are Lark's).
fn lark_literal(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Spec {
    /// The compiled-grammar cache key.
    pub fn key(&self) -> String {
        match self {
            Spec::JsonObject => "json_object".into(),
            Spec::JsonSchema(s) => format!("json_schema:{s}"),
            Spec::Regex(r) => format!("regex:{r}"),
            Spec::Choice(c) => format!("choice:{}", Value::from(c.clone())),
            Spec::Lark(g) => format!("lark:{g}"),
            Spec::ToolCalls { tools, parallel } => {
                let t: Vec<Value> = tools.iter().map(|(n, p)| json!([n, p])).collect();
                format!("tools:{parallel}:{}", Value::from(t))
            }
        }
    }

    /// Calls `f` on every piece of text the spec is written in (choices, the regex, the
    /// grammar, every string and key of a schema, tool names): where its output text can come
    /// from.
    pub fn for_each_text(&self, f: &mut impl FnMut(&str)) {
        fn walk(v: &Value, f: &mut impl FnMut(&str)) {
            match v {
                Value::String(s) => f(s),
                Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
                Value::Object(m) => m.iter().for_each(|(k, x)| {
                    f(k);
                    walk(x, f)
                }),
                _ => {}
            }
        }
        match self {
            Spec::JsonObject => {}
            Spec::JsonSchema(s) => walk(s, f),
            Spec::Regex(t) | Spec::Lark(t) => f(t),
            Spec::Choice(c) => c.iter().for_each(|s| f(s)),
            Spec::ToolCalls { tools, .. } => tools.iter().for_each(|(name, params)| {
                f(name);
                walk(params, f)
            }),
        }
    }

    /// The schema of one tool call's JSON object.
    pub fn tool_call_schema(tools: &[(String, Value)]) -> Value {
        let one = |(name, params): &(String, Value)| {
            json!({
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        match tools {
            [t] => one(t),
            many => json!({"anyOf": many.iter().map(one).collect::<Vec<_>>()}),
        }
    }

    pub fn grammar(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Spec::JsonObject => TopLevelGrammar::from_json_schema(with_json_options(&json!({"type": "object"}))),
            Spec::JsonSchema(s) => {
                if !s.is_object() && !s.is_boolean() {
                    return Err("the schema must be a JSON object".into());
                }
                TopLevelGrammar::from_json_schema(with_json_options(s))
            }
            Spec::Regex(r) => TopLevelGrammar::from_regex(r),
            Spec::Choice(c) => {
                if c.is_empty() {
                    return Err("give at least one choice".into());
                }
                let alts: Vec<String> = c.iter().map(|s| lark_literal(s)).collect();
                TopLevelGrammar::from_lark(format!("start: {}\n", alts.join(" | ")))
            }
            Spec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Spec::ToolCalls { tools, parallel } => {
                if tools.is_empty() {
                    return Err("no tool to call".into());
                }
                let schema = with_json_options(&Self::tool_call_schema(tools));
                let start = if *parallel {
                    format!("start: call (\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1)
                } else {
                    "start: call".to_string()
                };
                TopLevelGrammar::from_lark(format!(
                    "{start}\ncall: {} %json {schema} {}\n",
                    lark_literal(TOOL_CALL_OPEN),
                    lark_literal(TOOL_CALL_CLOSE)
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object schema is closed, through every schema position; enum/const values, a
    /// property named like a keyword, and an object that already says are left as they are.
    #[test]
    fn strict_closes_object_schemas_only() {
        let s = json!({
            "type": "object",
            "properties": {
                "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "tags": {"type": "array", "items": {"properties": {"t": {"type": "string"}}}},
                "open": {"type": "object", "additionalProperties": true},
                "pick": {"anyOf": [{"type": ["object", "null"]}, {"const": {"properties": 1}}]},
                "e": {"enum": [{"type": "object"}]}
            },
            "$defs": {"d": {"type": "object"}}
        });
        let c = closed_objects(&s);
        let no = Value::Bool(false);
        assert_eq!(c["additionalProperties"], no);
        assert_eq!(c["properties"]["properties"]["additionalProperties"], no);
        assert!(c["properties"].get("additionalProperties").is_none(), "a property map is not a schema");
        assert_eq!(c["properties"]["tags"]["items"]["additionalProperties"], no);
        assert_eq!(c["properties"]["open"]["additionalProperties"], Value::Bool(true));
        assert_eq!(c["properties"]["pick"]["anyOf"][0]["additionalProperties"], no);
        assert_eq!(c["properties"]["pick"]["anyOf"][1], json!({"const": {"properties": 1}}));
        assert_eq!(c["properties"]["e"], json!({"enum": [{"type": "object"}]}));
        assert_eq!(c["$defs"]["d"]["additionalProperties"], no);
        assert_eq!(closed_objects(&json!({"type": "string"})), json!({"type": "string"}));
    }
}
