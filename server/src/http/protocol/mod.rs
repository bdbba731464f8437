//! The wire types of the OpenAI-compatible API (requests parsed by serde, responses written by
//! serde, both described to `/openapi.json` by utoipa).
//!
//! Why each request type lists its sampling fields itself instead of `#[serde(flatten)]`-ing a
//! shared struct: flatten buffers the map, which hides unknown fields from the
//! unknown-field warning (serde_ignored) and loses the field path in type errors (the `param`
//! of a 400). [`common::SamplingFields`] collects them afterwards.

pub mod chat;
pub mod common;
pub mod completion;
pub mod guided;
pub mod models;
pub mod schema;
pub mod tokenize;
pub mod tools;
