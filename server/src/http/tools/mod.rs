//! Tool calling: which tools a request offers and how the model must use them ([`ToolPlan`]),
//! how they reach the prompt ([`render`]) and how calls are read back from the output
//! ([`parse`]).
//!
//! The call format is the Hermes / Qwen2.5 one, `<tool_call>\n{"name": ..., "arguments":
//! {...}}\n</tool_call>`: templates that take `tools` render their own instructions (and most
//! that do use this format); for templates that do not (the default model's), kiln describes
//! the tools in the system message in this format. With `tool_choice` `required` or a named
//! function the output is constrained to such calls, their arguments by each function's JSON
//! schema; with `auto` the model decides and whatever calls it writes are parsed.
//!
//! Invariants: a plan exists only when tools are offered and `tool_choice` is not `none`;
//! every tool has a unique name of at most 64 characters from `[A-Za-z0-9_-]`; a call is
//! reported only if it names an offered tool and its arguments open a JSON object (their text
//! is the model's, streamed as it is generated: see [`parse`]).

mod json_scan;
pub mod parse;
pub mod render;

use crate::error::ApiError;
use crate::protocol::tools::{ToolChoice, ToolDef};
use crate::structured::{closed_objects, Spec};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Auto,
    Required,
    Named(String),
}

#[derive(Clone, Debug)]
pub struct ToolPlan {
    pub defs: Vec<ToolDef>,
    pub mode: Mode,
    pub parallel: bool,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn plan(
    tools: Option<Vec<ToolDef>>,
    choice: Option<ToolChoice>,
    parallel: Option<bool>,
) -> Result<Option<ToolPlan>, ApiError> {
    let tools = tools.unwrap_or_default();
    let mode = match choice {
        None => Mode::Auto,
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "none" => return Ok(None),
            "auto" => Mode::Auto,
            "required" => Mode::Required,
            other => {
                return Err(ApiError::bad_value(
                    "tool_choice",
                    format!("`tool_choice` `{other}` is not none, auto, required or a named function"),
                ))
            }
        },
        Some(ToolChoice::Named(n)) => {
            if n.kind != "function" {
                return Err(ApiError::bad_value("tool_choice.type", "`tool_choice.type` must be `function`"));
            }
            Mode::Named(n.function.name)
        }
    };
    if tools.is_empty() {
        return match mode {
            Mode::Auto => Ok(None),
            _ => Err(ApiError::bad_value("tool_choice", "`tool_choice` asks for a tool call but no `tools` are given")),
        };
    }
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::bad_value(
                &format!("tools[{i}].type"),
                "only tools of type `function` are supported",
            ));
        }
        let name = &t.function.name;
        if !valid_name(name) {
            return Err(ApiError::bad_value(
                &format!("tools[{i}].function.name"),
                format!("tool name `{name}` must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -"),
            ));
        }
        if tools[..i].iter().any(|o| &o.function.name == name) {
            return Err(ApiError::bad_value(
                &format!("tools[{i}].function.name"),
                format!("tool `{name}` is given twice"),
            ));
        }
        if t.function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(ApiError::bad_value(
                &format!("tools[{i}].function.parameters"),
                "`parameters` must be a JSON schema object",
            ));
        }
    }
    if let Mode::Named(n) = &mode {
        if !tools.iter().any(|t| &t.function.name == n) {
            return Err(ApiError::bad_value("tool_choice.function.name", format!("`{n}` is not one of the `tools`")));
        }
    }
    Ok(Some(ToolPlan { defs: tools, mode, parallel: parallel.unwrap_or(true) }))
}

impl ToolPlan {
    pub fn names(&self) -> Vec<String> {
        self.defs.iter().map(|t| t.function.name.clone()).collect()
    }

    /// The `tools` variable of a chat template (OpenAI's shape).
    pub fn tools_json(&self) -> Value {
        serde_json::to_value(&self.defs).unwrap_or(Value::Null)
    }

    /// The constraint a forced call puts on the output (`None` with `auto`).
    pub fn spec(&self) -> Option<Spec> {
        let params = |t: &ToolDef| {
            let p = t.function.parameters.clone().unwrap_or_else(|| json!({"type": "object"}));
            if t.function.strict == Some(true) {
                closed_objects(&p)
            } else {
                p
            }
        };
        match &self.mode {
            Mode::Auto => None,
            Mode::Required => Some(Spec::ToolCalls {
                tools: self.defs.iter().map(|t| (t.function.name.clone(), params(t))).collect(),
                parallel: self.parallel,
            }),
            Mode::Named(n) => Some(Spec::ToolCalls {
                tools: self.defs.iter().filter(|t| &t.function.name == n).map(|t| (n.clone(), params(t))).collect(),
                parallel: false,
            }),
        }
    }
}
