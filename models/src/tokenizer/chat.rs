//! Chat templates: render a model's Jinja chat template (HF `chat_template`) into the prompt
//! text, with minijinja configured like transformers' Jinja2 environment.
//!
//! Invariants: the environment matches HF's (`trim_blocks` and `lstrip_blocks` on, Python
//! string/dict methods via minijinja-contrib's pycompat, `raise_exception` available), so a
//! template renders the same text it does in transformers; a template's own
//! `raise_exception(..)` is reported as [`ChatTemplateError::Raised`], other failures as
//! `Syntax` (at compile time) or `Render` — never a panic.

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use super::error::ChatTemplateError;
use super::Tokenizer;

/// The ChatML template, for models that ship none (no system prompt is injected).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's template (Gemma 2 / 3 `tokenizer_config.json`, text parts only), for Gemma GGUFs
/// that ship none: a system message prefixes the first user turn, `assistant` is `model`, roles
/// must alternate.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}\
{%- set first_user_prefix = '' -%}\
{%- set loop_messages = messages -%}\
{%- endif -%}\
{%- for message in loop_messages -%}\
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
{%- endif -%}\
{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}\
{{ message['content'] | trim }}\
{{ '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation. The tool fields are what HF templates that take `tools` read
/// (`message.tool_calls[i].function.{name, arguments}` with `arguments` an object,
/// `message.tool_call_id`, `message.name`); they are left out of the template's view when unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), tool_calls: None, tool_call_id: None, name: None }
    }
}

/// Variables besides `messages` that HF passes to a chat template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Append the header of an assistant turn, so the model writes the reply next.
    pub add_generation_prompt: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// The `tools` variable (OpenAI's tool list) for templates that render tools.
    pub tools: Option<serde_json::Value>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

/// The payload of a template's `raise_exception(msg)`, found again in the error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RaisedByTemplate(String);

impl ChatTemplate {
    /// Compiles `source`; a syntax error names the line.
    pub fn new(source: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, "raise_exception called")
                .with_source(RaisedByTemplate(message)))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatTemplateError::Syntax { message: describe(&e), line: e.line() })?;
        Ok(Self { env, source: source.to_string() })
    }

    /// The ChatML fallback ([`CHATML_TEMPLATE`]).
    pub fn chatml() -> Result<Self, ChatTemplateError> {
        Self::new(CHATML_TEMPLATE)
    }

    /// The tokenizer's own template; when the model ships none, Gemma's for a vocabulary with
    /// Gemma's turn markers as special tokens, else ChatML.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<Self, ChatTemplateError> {
        let special = |t: &str| tokenizer.token_to_id(t).is_some_and(|id| tokenizer.is_special(id));
        let fallback =
            if special("<start_of_turn>") && special("<end_of_turn>") { GEMMA_TEMPLATE } else { CHATML_TEMPLATE };
        Self::new(tokenizer.chat_template().unwrap_or(fallback))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template reads a `tools` variable (else tools must be described to the
    /// model some other way, e.g. in the system message).
    pub fn takes_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// The prompt text for `messages`.
    pub fn render(&self, messages: &[ChatMessage], options: &RenderOptions) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render { message: describe(&e), line: e.line() })?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => options.add_generation_prompt,
            bos_token => options.bos_token.as_deref(),
            eos_token => options.eos_token.as_deref(),
            tools => options.tools.as_ref().map(Value::from_serialize),
        };
        template.render(ctx).map_err(classify)
    }

    /// [`render`](Self::render) with the tokenizer's BOS/EOS names.
    pub fn render_for(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_tools(tokenizer, messages, add_generation_prompt, None)
    }

    /// [`render_for`](Self::render_for) with the `tools` variable set.
    pub fn render_with_tools(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let specials = tokenizer.special_tokens();
        let options = RenderOptions {
            add_generation_prompt,
            bos_token: specials.bos.clone(),
            eos_token: specials.eos.clone(),
            tools,
        };
        self.render(messages, &options)
    }
}

fn classify(err: minijinja::Error) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedByTemplate>() {
            return ChatTemplateError::Raised { message: raised.0.clone() };
        }
        source = e.source();
    }
    ChatTemplateError::Render { message: describe(&err), line: err.line() }
}

/// The error's kind and detail, without minijinja's `(in name:line)` suffix (the line is
/// reported separately and the template name is always ours).
fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    #[test]
    fn chatml_fallback_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::chatml().unwrap();
        let m = msgs(&[("system", "Be brief."), ("user", "Hi")]);
        let with = RenderOptions { add_generation_prompt: true, ..Default::default() };
        assert_eq!(
            t.render(&m, &with).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let without = t.render(&m, &RenderOptions::default()).unwrap();
        assert!(without.ends_with("Hi<|im_end|>\n"), "{without:?}");
    }

    #[test]
    fn raise_exception_is_reported_as_raised() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be user') }}{% endif %}ok";
        let t = ChatTemplate::new(src).unwrap();
        let err = t.render(&msgs(&[("assistant", "x")]), &RenderOptions::default()).unwrap_err();
        match err {
            ChatTemplateError::Raised { message } => assert_eq!(message, "first turn must be user"),
            other => panic!("expected Raised, got {other:?}"),
        }
        assert_eq!(t.render(&msgs(&[("user", "x")]), &RenderOptions::default()).unwrap(), "ok");
    }

    #[test]
    fn syntax_and_render_errors_are_distinct() {
        let err = ChatTemplate::new("{% for m in messages %}no end").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("at line 1"), "names the place: {err}");
        // Filters and operand types are only known while rendering.
        for src in ["{{ messages | no_such_filter }}", "{{ 1 + messages }}"] {
            let t = ChatTemplate::new(src).unwrap();
            let err = t.render(&msgs(&[("user", "x")]), &RenderOptions::default()).unwrap_err();
            assert!(matches!(err, ChatTemplateError::Render { .. }), "{src}: {err:?}");
        }
    }

    #[test]
    fn hf_environment_conventions_hold() {
        // trim_blocks/lstrip_blocks: block tags on their own lines leave no blank lines;
        // pycompat: Python string methods used by real templates work.
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}]\n  {% endif %}\n{% endfor %}\n{{ bos_token }}|{{ eos_token }}";
        let t = ChatTemplate::new(src).unwrap();
        let opts = RenderOptions {
            add_generation_prompt: false,
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            tools: None,
        };
        let out = t.render(&msgs(&[("user", "  hi "), ("assistant", "no")]), &opts).unwrap();
        assert_eq!(out, "[HI]\n<s>|</s>");
    }

    #[test]
    fn tools_and_tool_calls_reach_the_template() {
        let src = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments | tojson }}){% endfor %}{% elif m.role == 'tool' %}<{{ m.tool_call_id }}:{{ m.content }}>{% else %}{{ m.content }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        assert!(t.takes_tools() && !ChatTemplate::chatml().unwrap().takes_tools());
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(
            serde_json::json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]),
        );
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("c1".into());
        let opts = RenderOptions {
            tools: Some(serde_json::json!([{"type": "function", "function": {"name": "f"}}])),
            ..Default::default()
        };
        let out = t.render(&[ChatMessage::new("user", "hi"), call, result], &opts).unwrap();
        assert_eq!(out, "[f]hif({\"x\":1})<c1:42>");
    }
}
