//! Tools and tool turns into the prompt. A template that takes `tools` gets them (and the
//! messages' `tool_calls` with arguments as objects, as HF templates expect). For one that does
//! not, kiln writes the tools into the system message and turns earlier calls and results into
//! text in the call format of [`super`], so the conversation still reads right to the model.

use super::ToolPlan;
use crate::structured::spec::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use kiln_models::tokenizer::ChatMessage;
use serde_json::Value;

/// The system-message text describing `plan`'s tools.
pub fn system_text(plan: &ToolPlan) -> String {
    let mut s = String::from(
        "You may call one or more functions to assist with the user query. \
         The functions are described in JSON within <tools></tools>:\n<tools>\n",
    );
    for t in &plan.defs {
        s.push_str(&serde_json::to_string(t).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nTo call a function, reply with one JSON object per call inside <tool_call></tool_call> tags:\n\
         <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// A call's text in the call format.
fn call_text(call: &Value) -> String {
    let f = &call["function"];
    let body = serde_json::json!({"name": f["name"], "arguments": f["arguments"]});
    format!("{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}")
}

/// The messages (and `tools` variable) to render.
pub fn for_template(
    mut messages: Vec<ChatMessage>,
    plan: Option<&ToolPlan>,
    takes_tools: bool,
) -> (Vec<ChatMessage>, Option<Value>) {
    if takes_tools {
        return (messages, plan.map(ToolPlan::tools_json));
    }
    for m in &mut messages {
        if let Some(Value::Array(calls)) = m.tool_calls.take() {
            for c in &calls {
                if !m.content.is_empty() {
                    m.content.push('\n');
                }
                m.content.push_str(&call_text(c));
            }
        }
        if m.role == "tool" {
            m.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
        }
        m.tool_call_id = None;
    }
    if let Some(plan) = plan {
        let text = system_text(plan);
        match messages.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
            _ => messages.insert(0, ChatMessage::new("system", text)),
        }
    }
    (messages, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tools::{FunctionDef, ToolDef};
    use crate::tools::Mode;
    use serde_json::json;

    fn plan() -> ToolPlan {
        ToolPlan {
            defs: vec![ToolDef {
                kind: "function".into(),
                function: FunctionDef { name: "f".into(), description: None, parameters: None, strict: None },
            }],
            mode: Mode::Auto,
            parallel: true,
        }
    }

    #[test]
    fn without_template_support_tools_go_to_the_system_message_and_turns_become_text() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls =
            Some(json!([{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]));
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("c".into());
        let (m, tools) = for_template(vec![ChatMessage::new("user", "hi"), call, result], Some(&plan()), false);
        assert!(tools.is_none());
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("<tools>\n{\"type\":\"function\",\"function\":{\"name\":\"f\"}}\n</tools>"));
        assert_eq!(m[2].content, "<tool_call>\n{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>");
        assert!(m[2].tool_calls.is_none());
        assert_eq!(m[3].content, "<tool_response>\n42\n</tool_response>");
        let (m, tools) = for_template(vec![ChatMessage::new("system", "Be brief.")], Some(&plan()), true);
        assert_eq!((m[0].content.as_str(), tools.is_some()), ("Be brief.", true));
    }
}
