//! [`ApiJson`]: the JSON body extractor every POST route uses instead of axum's `Json`, so
//! that each way a body can be wrong gets OpenAI's error shape and the right status:
//! a non-JSON `Content-Type` → 415; a body over the limit → 413; empty, malformed, truncated,
//! bad UTF-8, too deeply nested or not an object → 400; a field of the wrong type → 400 with
//! `param` naming the field. Unknown fields are accepted and reported back (to be warned
//! about once), as OpenAI-compatible servers do.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A parsed body plus the paths of fields it had that the type does not know.
pub struct ApiJson<T> {
    pub value: T,
    pub unknown_fields: Vec<String>,
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        // The Content-Type is checked after the body is read: a refused request whose body
        // stayed unread would force the connection closed, and a keep-alive client racing a
        // close sees a transport error instead of our 415.
        let content_type = req.headers().get(CONTENT_TYPE).map(|ct| ct.to_str().unwrap_or("(not ASCII)").to_string());
        let limit = state.cfg.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid(None, "invalid_body", format!("could not read the request body: {}", rej.body_text()))
            }
        })?;
        if let Some(ct) = content_type {
            if !is_json(&ct) {
                return Err(ApiError::unsupported_media_type(&ct));
            }
        }
        let (value, unknown_fields) = parse(&bytes)?;
        Ok(ApiJson { value, unknown_fields })
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`), or any `+json` type.
fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses a body: JSON syntax first (so syntax errors and type errors read differently), then
/// the typed value with the failing field's path.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Vec<String>), ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(None, "invalid_json", "the request body is empty; send a JSON object"));
    }
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        let why = if std::str::from_utf8(bytes).is_err() { " (the body is not valid UTF-8)" } else { "" };
        ApiError::invalid(None, "invalid_json", format!("the request body is not valid JSON: {e}{why}"))
    })?;
    if !json.is_object() {
        return Err(ApiError::invalid(
            None,
            "invalid_json",
            format!("the request body must be a JSON object, not {}", kind_of(&json)),
        ));
    }
    let mut unknown = Vec::new();
    // serde_ignored writes `?` for each Option level; clients never see those, drop them.
    let mut note = |path: serde_ignored::Path<'_>| {
        unknown.push(path.to_string().split('.').filter(|s| *s != "?").collect::<Vec<_>>().join("."))
    };
    let de = serde_ignored::Deserializer::new(json, &mut note);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok((v, unknown)),
        Err(e) => {
            let path = e.path().to_string();
            let param = (path != ".").then_some(path);
            let msg = match &param {
                Some(p) => format!("`{p}`: {}", e.inner()),
                None => e.inner().to_string(),
            };
            let mut err = ApiError::invalid(None, "invalid_type", msg);
            err.param = param;
            Err(err)
        }
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::completion::CompletionRequest;

    #[test]
    fn type_errors_name_the_field() {
        let e = parse::<CompletionRequest>(br#"{"prompt":"x","temperature":"hot"}"#).err().unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse::<CompletionRequest>(br#"{"prompt":"x","stop":["a",3]}"#).err().unwrap();
        assert_eq!(e.param.as_deref(), Some("stop"), "{e}");
    }

    #[test]
    fn unknown_fields_are_reported_not_refused() {
        let (_, unknown) =
            parse::<CompletionRequest>(br#"{"prompt":"x","frobnicate":1,"stream_options":{"x":1}}"#).unwrap();
        assert_eq!(unknown, vec!["frobnicate".to_string(), "stream_options.x".to_string()]);
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in
            [&b""[..], b"  ", b"{", b"[1]", b"\"s\"", b"{\"prompt\": \"\xff\"}", br#"{"prompt":"\ud800"}"#, b"nul"]
        {
            let e = parse::<CompletionRequest>(body).err().unwrap();
            assert_eq!(e.status, 400, "{body:?}");
        }
        let deep = "[".repeat(10_000);
        let e = parse::<CompletionRequest>(deep.as_bytes()).err().unwrap();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
