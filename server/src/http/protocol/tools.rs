//! Tool calling on `POST /v1/chat/completions`: the `tools` / `tool_choice` request fields,
//! the tool-call fields of messages, and the `tool_calls` of replies and stream deltas.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `tools[i].function`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct FunctionDef {
    /// Unique among the tools; at most 64 of `A-Z a-z 0-9 _ -`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of the arguments object (default: any object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// One entry of `tools`: `{"type": "function", "function": {...}}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ToolDef {
    #[serde(rename = "type")]
    #[schema(schema_with = super::schema::function_type)]
    pub kind: String,
    pub function: FunctionDef,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or `{"type": "function", "function": {"name"}}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    #[schema(schema_with = super::schema::function_type)]
    pub kind: String,
    pub function: FunctionName,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct FunctionName {
    pub name: String,
}

/// `messages[i].tool_calls[j]` of an earlier assistant turn.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ToolCallIn {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct FunctionCallIn {
    pub name: String,
    /// The arguments object as JSON text (as OpenAI sends them), or the object.
    #[schema(schema_with = super::schema::object_or_text)]
    pub arguments: serde_json::Value,
}

/// A tool call in a reply.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    /// `function`
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// A tool call in a stream delta, as OpenAI streams one: the call's first chunk has its `id`,
/// `type` and `function.name` with empty `arguments`; each later chunk has only the `index` and
/// the next piece of `function.arguments`, as generated. The pieces joined are the call's
/// `arguments` in the same request unstreamed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ToolCallDelta {
    /// Position of the call in the choice's `tool_calls`.
    pub index: usize,
    /// Only in the call's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`; only in the call's first chunk.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FunctionCallDelta {
    /// Only in the call's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text (empty in the first chunk).
    pub arguments: String,
}
