//! Structured-output request fields shared by completions and chat: OpenAI's
//! `response_format` and vLLM's `guided_*` extensions.

use serde::Deserialize;
use utoipa::ToSchema;

/// `response_format.json_schema`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    /// The JSON schema the output follows (required with `type` `json_schema`): an object or
    /// a boolean, checked whatever the `type`.
    #[schema(schema_with = super::schema::json_schema_value)]
    pub schema: Option<serde_json::Value>,
    /// kiln always enforces the schema; `true` also closes its objects to their declared
    /// properties (`additionalProperties: false` where a schema does not say).
    pub strict: Option<bool>,
}

/// `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    #[schema(schema_with = super::schema::response_format_type)]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

/// The guided-decoding fields of a request, gathered from either route's flat fields (see
/// [`super`] for why they are not flattened). They exclude one another.
#[derive(Clone, Debug, Default)]
pub struct GuidedFields {
    pub response_format: Option<ResponseFormat>,
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
}
