//! What an architecture entry is given and what it gives back.
//!
//! Loading a model: [`Checkpoint::open`] reads what a path holds without its weights (an HF
//! directory's `config.json`, or a GGUF file's metadata); the registry picks the entry whose
//! names include [`Checkpoint::architecture`]; the entry parses its own config from
//! [`Checkpoint::config`] (refusing, with the key named, every feature it does not implement),
//! opens the weights with its tensor naming ([`Checkpoint::weights`]) and builds the model.
//! The loader then fails on any tensor the entry did not consume.
//!
//! Invariant: an entry's `build` never sees another architecture's checkpoint (the registry
//! dispatches on the name before any parsing), and a model is only returned after every tensor
//! of the checkpoint was consumed or explicitly marked as not needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_runtime::comm::Communicator;
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;

use crate::config::{ConfigError, LlamaConfig};
use crate::gguf::{GgufFile, MetadataValue};
use crate::model::{CausalLm, ModelError};
use crate::weights::quantization::{self, Quantization};
use crate::weights::{GgufNaming, WeightSource, WeightsError};

/// One architecture kiln runs: one line of [`crate::registry::ARCHITECTURES`].
pub struct Architecture {
    /// The HF `model_type` / GGUF `general.architecture` values it builds.
    pub names: &'static [&'static str],
    /// Parse the config, open the weights, build the model.
    pub build: fn(&Checkpoint, &Device, DType) -> Result<Built, ModelError>,
}

/// A built model and the weights it was built from (checked for leftovers by the loader).
pub struct Built {
    pub model: Box<dyn CausalLm>,
    pub weights: WeightSource,
}

enum Kind {
    /// An HF directory: its parsed `config.json`.
    Hf { json: Value },
    /// Shared with the weight source, so the header is parsed once per load.
    Gguf { file: Arc<GgufFile> },
}

/// A checkpoint on disk, opened without reading its weights.
pub struct Checkpoint {
    path: PathBuf,
    kind: Kind,
    weight_mode: WeightMode,
    /// Build one tensor-parallel rank of the model, in this communicator's group.
    tp: Option<Arc<dyn Communicator>>,
}

/// How projection weights stored in a quantized format are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightMode {
    /// As stored, where kiln has kernels for the format on the device (every GGML block format
    /// kiln reads, on the CPU); dense in the compute dtype otherwise.
    #[default]
    Stored,
    /// Always dequantized to the compute dtype (the reference for comparisons).
    Dense,
}

/// The config of a checkpoint as its file states it.
#[derive(Clone, Copy)]
pub enum ConfigSource<'a> {
    Hf { json: &'a Value, source_name: &'a str },
    Gguf(&'a GgufFile),
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Safetensors { path: path.to_path_buf(), reason: e.to_string() }
}

impl Checkpoint {
    /// An HF directory (`config.json` + safetensors) or a GGUF file.
    pub fn open(path: &Path) -> Result<Checkpoint, WeightsError> {
        let kind = if path.is_dir() {
            let cfg = path.join("config.json");
            let text = std::fs::read_to_string(&cfg).map_err(|err| WeightsError::Io { path: cfg.clone(), err })?;
            let json: Value = serde_json::from_str(&text).map_err(|e| load_err(&cfg, format!("invalid JSON: {e}")))?;
            if !json.is_object() {
                return Err(load_err(&cfg, "is not a JSON object"));
            }
            Kind::Hf { json }
        } else {
            Kind::Gguf { file: Arc::new(GgufFile::open(path)?) }
        };
        Ok(Checkpoint { path: path.to_path_buf(), kind, weight_mode: WeightMode::default(), tp: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the weights [`Checkpoint::weights`] opens hold quantized projections.
    pub fn set_weight_mode(&mut self, mode: WeightMode) {
        self.weight_mode = mode;
    }

    /// Build only `comm`'s rank of the model (its shards of the weights), as a member of
    /// `comm`'s group: the architecture's loader sees it through [`WeightSource::tp`].
    pub fn set_tp(&mut self, comm: Option<Arc<dyn Communicator>>) {
        self.tp = comm;
    }

    /// The GGUF file, for a GGUF checkpoint (its tokenizer lives in the metadata).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.kind {
            Kind::Gguf { file } => Some(file),
            Kind::Hf { .. } => None,
        }
    }

    pub fn config(&self) -> ConfigSource<'_> {
        match &self.kind {
            Kind::Hf { json } => ConfigSource::Hf { json, source_name: self.path.to_str().unwrap_or("config.json") },
            Kind::Gguf { file } => ConfigSource::Gguf(file),
        }
    }

    /// The architecture name the checkpoint declares.
    pub fn architecture(&self) -> Result<String, ConfigError> {
        self.config().architecture()
    }

    /// The weights, with GGUF tensor names mapped by `naming` (HF checkpoints carry HF names).
    pub fn weights(&self, naming: &GgufNaming) -> Result<WeightSource, WeightsError> {
        let mut src = match &self.kind {
            Kind::Hf { json } => {
                let mut src = WeightSource::open_safetensors_dir(&self.path)?;
                let stored = quantization::from_hf(json).map_err(|(field, why)| ConfigError::Unsupported {
                    source_name: self.config().source_name(),
                    what: format!("'{field}': {why}"),
                })?;
                match stored {
                    Some(Quantization::Packed(cfg)) => src.set_packed(cfg)?,
                    Some(Quantization::Scaled(cfg)) => src.set_scaled(cfg)?,
                    None => {}
                }
                src
            }
            Kind::Gguf { file } => WeightSource::open_gguf(file.clone(), naming)?,
        };
        src.set_keep_quantized(self.weight_mode == WeightMode::Stored);
        src.set_tp(self.tp.clone());
        Ok(src)
    }
}

impl ConfigSource<'_> {
    pub fn source_name(&self) -> String {
        match self {
            ConfigSource::Hf { source_name, .. } => format!("{source_name}/config.json"),
            ConfigSource::Gguf(f) => f.path().display().to_string(),
        }
    }

    /// `model_type` (or the class in `architectures`), or GGUF `general.architecture`.
    pub fn architecture(&self) -> Result<String, ConfigError> {
        let sn = self.source_name();
        match self {
            ConfigSource::Hf { json, .. } => {
                if let Some(t) = json.get("model_type").and_then(Value::as_str) {
                    return Ok(t.to_owned());
                }
                let class = json.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str);
                match class {
                    Some(c) => crate::config::model_type_of_class(c).map(str::to_owned).ok_or_else(|| {
                        ConfigError::Unsupported {
                            source_name: sn,
                            what: format!("architecture '{c}' without a model_type"),
                        }
                    }),
                    None => Err(ConfigError::Missing { source_name: sn, field: "model_type".into() }),
                }
            }
            ConfigSource::Gguf(f) => match f.get("general.architecture") {
                Some(MetadataValue::String(s)) => Ok(s.clone()),
                Some(_) => Err(crate::config::invalid(&sn, "general.architecture", "is not a string")),
                None => Err(ConfigError::Missing { source_name: sn, field: "general.architecture".into() }),
            },
        }
    }

    /// The decoder hyper-parameters every Llama-like architecture shares (sizes, heads, RoPE,
    /// norms' epsilon, special tokens), validated.
    pub fn decoder(&self) -> Result<LlamaConfig, ConfigError> {
        match self {
            ConfigSource::Hf { json, .. } => LlamaConfig::from_hf_value(json, &self.source_name()),
            ConfigSource::Gguf(f) => LlamaConfig::from_gguf(f),
        }
    }

    /// HF `config.json` value of `key` (`None` when absent or null, and for GGUF).
    pub fn hf(&self, key: &str) -> Option<&Value> {
        match self {
            ConfigSource::Hf { json, .. } => json.get(key).filter(|v| !v.is_null()),
            ConfigSource::Gguf(_) => None,
        }
    }

    /// GGUF metadata `{arch}.{key}` (`None` when absent, and for HF).
    pub fn gguf(&self, key: &str) -> Option<&MetadataValue> {
        let ConfigSource::Gguf(f) = self else { return None };
        f.get(&format!("{}.{key}", self.architecture().ok()?))
    }

    /// A number from HF `hf_key` or GGUF `gguf_key`, whichever the source has; an error naming
    /// the key when it holds something else.
    pub fn number(&self, hf_key: &str, gguf_key: &str) -> Result<Option<f64>, ConfigError> {
        let sn = self.source_name();
        if let Some(v) = self.hf(hf_key) {
            return v.as_f64().map(Some).ok_or_else(|| crate::config::invalid(&sn, hf_key, "is not a number"));
        }
        match self.gguf(gguf_key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| crate::config::invalid(&sn, gguf_key, "is not a number")),
        }
    }

    /// The sliding window the config states: HF `sliding_window` (absent or null: none), or GGUF
    /// `{arch}.attention.sliding_window` (absent or 0, llama.cpp's "none": none); anything but
    /// a positive integer is an error naming the key.
    pub fn sliding_window(&self) -> Result<Option<usize>, ConfigError> {
        match self.number("sliding_window", "attention.sliding_window")? {
            None => Ok(None),
            Some(w) if w == 0.0 && self.hf("sliding_window").is_none() => Ok(None),
            Some(w) if w >= 1.0 && w.fract() == 0.0 => Ok(Some(w as usize)),
            Some(w) => Err(crate::config::invalid(
                &self.source_name(),
                "sliding_window",
                format!("{w} is not a positive integer"),
            )),
        }
    }

    /// HF only: an error naming `key` when the config sets it to a value `supported` rejects
    /// (an absent key or `null` is always accepted). `what` says what the value would ask for.
    pub fn refuse_hf(&self, key: &str, what: &str, supported: impl Fn(&Value) -> bool) -> Result<(), ConfigError> {
        let ConfigSource::Hf { json, .. } = self else { return Ok(()) };
        match json.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(v) if supported(v) => Ok(()),
            Some(v) => Err(ConfigError::Unsupported {
                source_name: self.source_name(),
                what: format!("'{key}': {v} ({what} is not implemented for this architecture)"),
            }),
        }
    }

    /// GGUF only: an error naming `{arch}.{key}` when the metadata has it with a value
    /// `supported` rejects.
    pub fn refuse_gguf(
        &self,
        key: &str,
        what: &str,
        supported: impl Fn(&MetadataValue) -> bool,
    ) -> Result<(), ConfigError> {
        let ConfigSource::Gguf(f) = self else { return Ok(()) };
        let full = format!("{}.{key}", self.architecture()?);
        match f.get(&full) {
            None => Ok(()),
            Some(v) if supported(v) => Ok(()),
            Some(v) => Err(ConfigError::Unsupported {
                source_name: self.source_name(),
                what: format!("'{full}': {v:?} ({what} is not implemented for this architecture)"),
            }),
        }
    }
}

/// Accepts `false` only.
pub fn is_false(v: &Value) -> bool {
    v == &Value::Bool(false)
}

/// Accepts the string `s` only.
pub fn is_str(s: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v.as_str() == Some(s)
}
