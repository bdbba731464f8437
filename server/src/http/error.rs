//! [`ApiError`]: every failure the HTTP layer reports, with its HTTP status, OpenAI error
//! `type`, the offending `param` and a stable `code`.
//!
//! Invariants: the body is always `{"error": {"message", "type", "param", "code"}}` (the shape
//! the official clients parse); 429 and 503 carry `Retry-After`; permanent 5xx carry
//! `x-should-retry: false` so clients don't hammer a dead engine; the response carries a
//! [`Failure`] extension so the metrics middleware counts it by reason without parsing bodies.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a request failed, as the `reason` label of `llm_request_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    Invalid,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    UnsupportedMediaType,
    Overloaded,
    Draining,
    Loading,
    EngineError,
    Internal,
    /// The client went away before the response was complete.
    ClientDisconnect,
}

impl Failure {
    pub const ALL: [Failure; 12] = [
        Failure::Invalid,
        Failure::Unauthorized,
        Failure::NotFound,
        Failure::MethodNotAllowed,
        Failure::TooLarge,
        Failure::UnsupportedMediaType,
        Failure::Overloaded,
        Failure::Draining,
        Failure::Loading,
        Failure::EngineError,
        Failure::Internal,
        Failure::ClientDisconnect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Invalid => "invalid",
            Failure::Unauthorized => "unauthorized",
            Failure::NotFound => "not_found",
            Failure::MethodNotAllowed => "method_not_allowed",
            Failure::TooLarge => "too_large",
            Failure::UnsupportedMediaType => "unsupported_media_type",
            Failure::Overloaded => "overloaded",
            Failure::Draining => "draining",
            Failure::Loading => "loading",
            Failure::EngineError => "engine_error",
            Failure::Internal => "internal",
            Failure::ClientDisconnect => "client_disconnect",
        }
    }
}

/// An error answer. Build it with the constructors; they fix status, type and reason together.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
    pub failure: Failure,
    /// Answered before the request body was read: the connection can't be reused, so say
    /// `Connection: close` (a keep-alive client would otherwise race the close).
    pub close: bool,
}

/// The JSON body (also the SSE error event's payload).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, failure: Failure, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_s: None,
            failure,
            close: false,
        }
    }

    /// 400: the request can never succeed as written.
    pub fn invalid(param: Option<&str>, code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", Failure::Invalid, message);
        e.param = param.map(str::to_string);
        e.code = Some(code);
        e
    }

    /// 400 naming a field whose value is out of range or unsupported.
    pub fn bad_value(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(Some(param), "invalid_value", message)
    }

    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Failure::Unauthorized,
            "missing or invalid API key: send `Authorization: Bearer <key>`",
        );
        e.code = Some("invalid_api_key");
        e.close = true;
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "not_found_error", Failure::NotFound, message);
        e.code = Some("not_found");
        e
    }

    /// 404 for a path with no route (its body is never read).
    pub fn no_route(message: impl Into<String>) -> Self {
        let mut e = Self::not_found(message);
        e.close = true;
        e
    }

    pub fn model_not_found(asked: &str, served: &str) -> Self {
        let mut e = Self::not_found(format!("the model `{asked}` does not exist; this server serves `{served}`"));
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    pub fn method_not_allowed() -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Failure::MethodNotAllowed,
            "method not allowed on this route",
        );
        e.code = Some("method_not_allowed");
        e.close = true;
        e
    }

    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Failure::TooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        );
        e.code = Some("body_too_large");
        e.close = true;
        e
    }

    pub fn unsupported_media_type(got: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            Failure::UnsupportedMediaType,
            format!("Content-Type `{got}` is not supported; send `Content-Type: application/json`"),
        );
        e.code = Some("unsupported_media_type");
        e
    }

    /// 429: more requests in flight than the server admits; retry shortly.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Failure::Overloaded, message);
        e.code = Some("overloaded");
        e.retry_after_s = Some(1);
        e
    }

    /// 503 while the server drains for shutdown.
    pub fn draining() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            Failure::Draining,
            "the server is shutting down and takes no new requests",
        );
        e.code = Some("shutting_down");
        e.retry_after_s = Some(5);
        e
    }

    /// 503 while the model loads.
    pub fn loading() -> Self {
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", Failure::Loading, "the model is loading");
        e.code = Some("model_loading");
        e.retry_after_s = Some(2);
        e
    }

    /// 500: the engine failed this request (a model step failed, the engine stopped).
    pub fn engine(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", Failure::EngineError, message);
        e.code = Some("engine_error");
        e
    }

    /// 500 for a bug on our side (a tokenizer thread that died); never for bad input.
    pub fn internal(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", Failure::Internal, message);
        e.code = Some("internal_error");
        e
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorInfo {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.map(str::to_string),
            },
        }
    }

    /// The body as JSON text (for SSE error events).
    pub fn json(&self) -> String {
        // Serializing plain strings cannot fail; the fallback keeps this panic-free anyway.
        serde_json::to_string(&self.body()).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        let h = resp.headers_mut();
        if let Some(s) = self.retry_after_s {
            h.insert("retry-after", HeaderValue::from(s));
        }
        if self.status.is_server_error() && self.retry_after_s.is_none() {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if self.close {
            h.insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.extensions_mut().insert(self.failure);
        resp
    }
}
