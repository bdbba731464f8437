//! The real model behind the HTTP layer: the engine's handles as [`Backend`] and
//! [`RequestStream`], [`ModelCodec`] over the model's tokenizer and chat template, and
//! [`load`], which reads a model and starts its engine.

use crate::backend::{Backend, BoxFuture, RequestStream};
use crate::chat_data::{self, ChatDataError};
use crate::codec::{Codec, CodecError};
use crate::engine_api::{
    Engine, EngineConfig, EngineError, EngineEvent, EngineHandle, EngineStats, GenerateRequest, Heartbeat,
    RequestHandle, SubmitError,
};
use crate::state::Loaded;
use crate::structured::Structured;
use kiln_models::detok_adapter::TokenizerDetokenizer;
use kiln_models::loader::LoadError;
use kiln_models::model::CausalLm;
use kiln_models::tokenizer::{ChatMessage, ChatTemplate, ChatTemplateError, Tokenizer};
use kiln_runtime::sample::ConstraintSource;
use kiln_runtime::DType;
use kiln_runtime::Device;
use std::path::PathBuf;
use std::sync::Arc;

impl Backend for EngineHandle {
    fn submit(&self, req: GenerateRequest) -> Result<Box<dyn RequestStream>, SubmitError> {
        Ok(Box::new(EngineHandle::submit(self, req)?))
    }

    fn submit_constrained(
        &self,
        req: GenerateRequest,
        constraint: Option<Arc<dyn ConstraintSource>>,
    ) -> Result<Box<dyn RequestStream>, SubmitError> {
        Ok(Box::new(EngineHandle::submit_constrained(self, req, constraint)?))
    }

    fn stats(&self) -> EngineStats {
        EngineHandle::stats(self)
    }

    fn heartbeat(&self) -> Heartbeat {
        EngineHandle::heartbeat(self)
    }

    fn max_model_len(&self) -> usize {
        EngineHandle::max_model_len(self)
    }

    fn abort_all(&self) {
        EngineHandle::abort_all(self)
    }

    fn shutdown(&self) {
        // Called once the server has drained: wait (briefly) for the engine to release the
        // model, so GPU memory and graphs are freed before the process exits.
        EngineHandle::shutdown_and_join(self, std::time::Duration::from_secs(10));
    }
}

impl RequestStream for RequestHandle {
    fn recv(&mut self) -> BoxFuture<'_, Option<EngineEvent>> {
        Box::pin(RequestHandle::recv(self))
    }
}

pub struct ModelCodec {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// `None` when llguidance cannot read this tokenizer (structured output is then refused).
    structured: Option<Structured>,
}

impl ModelCodec {
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate) -> Self {
        let structured = match Structured::new(&tokenizer) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("kiln: structured output is off for this model: {e}");
                None
            }
        };
        ModelCodec { tokenizer, template, structured }
    }

    fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, CodecError> {
        self.template.render_with_tools(&self.tokenizer, messages, add_generation_prompt, tools).map_err(|e| match e {
            // The template refused the conversation, or the messages don't fit its logic:
            // the client's input, so 400.
            ChatTemplateError::Raised { .. } | ChatTemplateError::Render { .. } => {
                CodecError::Invalid(format!("the chat template could not render the messages: {e}"))
            }
            other => CodecError::Internal(other.to_string()),
        })
    }
}

impl Codec for ModelCodec {
    fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>, CodecError> {
        self.tokenizer.encode(text, with_bos).map_err(|e| CodecError::Invalid(e.to_string()))
    }

    fn default_bos(&self) -> bool {
        self.tokenizer.add_bos_by_default()
    }

    fn decode(&self, ids: &[u32]) -> Result<String, CodecError> {
        self.tokenizer.decode(ids, true).map_err(|e| CodecError::Invalid(e.to_string()))
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, CodecError> {
        self.render(messages, None, add_generation_prompt)
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    fn encode_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, CodecError> {
        let render = |m: &[ChatMessage]| self.render(m, tools.clone(), add_generation_prompt);
        chat_data::encode(&self.tokenizer, messages, render).map_err(|e| match e {
            ChatDataError::Render(r) => r,
            other => CodecError::Invalid(other.to_string()),
        })
    }

    fn takes_tools(&self) -> bool {
        self.template.takes_tools()
    }

    fn structured(&self) -> Option<&Structured> {
        self.structured.as_ref()
    }
}

/// What to load and how to run it.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub path: PathBuf,
    /// One device, or each tensor-parallel rank's.
    pub devices: Vec<Device>,
    pub dtype: DType,
    /// How quantized projection weights are held.
    pub weights: kiln_models::loader::WeightMode,
    /// The KV cache's element type.
    pub kv_cache: kiln_models::kv_fp8::KvCacheDtype,
    pub engine: EngineConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    #[error("loading the model: {0}")]
    Load(#[from] LoadError),
    /// Boxed: a `ModelError` is large, and this error crosses a thread as a `Result`.
    #[error("setting up the KV cache: {0}")]
    KvCache(Box<kiln_runtime::model::ModelError>),
    #[error("starting the engine: {0}")]
    Engine(#[from] EngineError),
}

/// Reads the model (weights, tokenizer, chat template) and starts its engine thread. Blocking:
/// call it from a blocking thread, not the reactor.
pub fn load(spec: &ModelSpec) -> Result<Loaded, LoadModelError> {
    let mut m = kiln_models::loader::load_parallel(&spec.path, &spec.devices, spec.dtype, spec.weights)?;
    let scales = kiln_models::kv_fp8::apply(m.model.as_mut(), Some(&m.tokenizer), spec.kv_cache)
        .map_err(|e| LoadModelError::KvCache(Box::new(e)))?;
    if let Some(s) = scales {
        eprintln!("kiln: {}", kiln_models::kv_fp8::describe(&s));
    }
    let detok = Arc::new(TokenizerDetokenizer::new(m.tokenizer.clone()));
    let model: Arc<dyn CausalLm> = Arc::from(m.model);
    let layers = model.info().layers.clone();
    let handle = Engine::start(model, detok, spec.engine.clone())?;
    eprintln!("kiln: {}", handle.sampling_note());
    // Sliding-window layers keep their whole context today (one block table for every layer).
    let (ctx, bs) = (handle.max_model_len(), spec.engine.block_size);
    let r = kiln_runtime::model::kv_residency(&layers, ctx, bs);
    if r.ratio() > 1.0 {
        eprintln!(
            "kiln: a sequence of {ctx} tokens keeps {} layer-blocks of KV where its next query sees {} ({:.1}×): \
             sliding-window layers do not free the blocks behind their window yet",
            r.kept,
            r.visible,
            r.ratio()
        );
    }
    Ok(Loaded { backend: Arc::new(handle), codec: Arc::new(ModelCodec::new(m.tokenizer, m.chat_template)) })
}
