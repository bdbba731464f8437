//! API-key authentication for every route except `/health` and `/metrics` (unknown paths
//! included, so the route table is not probeable without a key).
//!
//! Keys are kept only as SHA-256 digests; a presented key is hashed and compared with every
//! stored digest in constant time (`subtle`), without an early exit, so neither the position
//! of the first differing byte nor which key matched shows in the timing. Keys are never
//! logged. Accepted headers: `Authorization: Bearer <key>` (scheme case-insensitive, as RFC
//! 9110 says) and `x-api-key: <key>`.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Paths that answer without a key (probes and scrapers).
pub const OPEN_PATHS: &[&str] = &["/health", "/metrics"];

pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        ApiKeys { digests: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect() }
    }

    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys (constant time in the keys' contents).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.digests {
            ok |= k.ct_eq(&d);
        }
        ok.into()
    }

    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        presented_key(headers).is_some_and(|k| self.accepts(k))
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        return Some(&rest[1..]);
    }
    headers.get("x-api-key").map(|v| v.as_bytes())
}

pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !state.keys.enabled() || OPEN_PATHS.contains(&req.uri().path()) || state.keys.authorized(req.headers()) {
        return next.run(req).await;
    }
    ApiError::unauthorized().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(name: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn bearer_and_x_api_key() {
        let k = ApiKeys::new(&["k1".into(), "second-key".into()]);
        assert!(k.authorized(&h("authorization", "Bearer k1")));
        assert!(k.authorized(&h("authorization", "bearer second-key")));
        assert!(k.authorized(&h("x-api-key", "k1")));
        for bad in ["Bearer k2", "Bearer k1 ", "Bearer  k1", "Basic k1", "k1", "Bearer", "Bearer "] {
            assert!(!k.authorized(&h("authorization", bad)), "{bad:?}");
        }
        assert!(!k.authorized(&HeaderMap::new()));
    }

    #[test]
    fn no_keys_means_disabled() {
        assert!(!ApiKeys::new(&[]).enabled());
        assert!(!ApiKeys::new(&[]).accepts(b""));
    }
}
