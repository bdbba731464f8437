//! Schemas for request fields whose Rust type says less than the server accepts or refuses: a
//! string that must be one of a few values, a value that may be a JSON object or its text. The
//! fields stay plain strings and `serde_json::Value`s (the handlers answer a bad value with a
//! 400 naming it); these only make `/openapi.json` state the same rule.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};

fn one_of(values: &[&str]) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied()))
}

/// `messages[i].role`.
pub fn role() -> ObjectBuilder {
    one_of(crate::prompt::ROLES).description(Some("Who wrote the message"))
}

/// `response_format.type` (see `guided::spec`).
pub fn response_format_type() -> ObjectBuilder {
    one_of(&["text", "json_object", "json_schema"])
}

/// The `type` of a tool and of a named `tool_choice`: only functions exist.
pub fn function_type() -> ObjectBuilder {
    one_of(&["function"])
}

/// A content part's `type`: only text parts are supported.
pub fn text_part_type() -> ObjectBuilder {
    one_of(&["text"])
}

/// A JSON object, or its text.
pub fn object_or_text() -> OneOfBuilder {
    let object = || ObjectBuilder::new().schema_type(Type::Object);
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .content_schema(Some(object()))
        .description(Some("The object as JSON text"));
    OneOfBuilder::new().item(object()).item(text)
}

/// A JSON Schema (an object, or `true` / `false`), or null: `response_format.json_schema.schema`.
pub fn json_schema_value() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Object))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Null))
}

/// [`object_or_text`], or null.
pub fn optional_object_or_text() -> OneOfBuilder {
    object_or_text().item(ObjectBuilder::new().schema_type(Type::Null))
}

/// A map the server does not support (`logit_bias`): only empty, or null.
pub fn unsupported_map() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Object).max_properties(Some(0)))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("Not supported: a non-empty map is refused with 400"))
}
