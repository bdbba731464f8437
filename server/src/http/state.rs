//! [`AppState`]: what every handler shares: configuration, the server's phase (loading →
//! ready → draining), the engine once loaded, admission, metrics and API keys.
//!
//! Invariants: the phase only moves forward (loading → ready → draining, or loading →
//! draining); the engine is set once and never replaced; a generation request is admitted
//! only in the ready phase, and admission happens before any tokenization.

use crate::admission::{Admission, Permit};
use crate::auth::ApiKeys;
use crate::backend::Backend;
use crate::codec::Codec;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::{Metrics, Snapshot};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Loading = 0,
    Ready = 1,
    Draining = 2,
}

/// The loaded model: engine and tokenizer.
pub struct Loaded {
    pub backend: Arc<dyn Backend>,
    pub codec: Arc<dyn Codec>,
}

/// Distinct unknown field names warned about, at most (a fuzzer must not grow the set forever).
const MAX_WARNED_FIELDS: usize = 256;

pub struct AppState {
    pub cfg: ServerConfig,
    phase: AtomicU8,
    loaded: OnceLock<Loaded>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub keys: ApiKeys,
    warned_fields: Mutex<HashSet<String>>,
    /// Unix seconds at start (the `created` of `/v1/models`).
    pub started_unix: u64,
    next_id: AtomicU64,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AppState {
    pub fn new(cfg: ServerConfig) -> Arc<Self> {
        let started_unix = unix_now();
        Arc::new(AppState {
            admission: Admission::new(cfg.max_in_flight),
            keys: ApiKeys::new(&cfg.api_keys),
            cfg,
            phase: AtomicU8::new(Phase::Loading as u8),
            loaded: OnceLock::new(),
            metrics: Arc::new(Metrics::default()),
            warned_fields: Mutex::new(HashSet::new()),
            started_unix,
            // Ids differ across restarts without a random source: start from the clock.
            next_id: AtomicU64::new(started_unix << 20),
        })
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Installs the loaded model and opens for requests (unless draining already began).
    /// Returns false if a model was already installed.
    pub fn set_ready(&self, loaded: Loaded) -> bool {
        if self.loaded.set(loaded).is_err() {
            return false;
        }
        let _ =
            self.phase.compare_exchange(Phase::Loading as u8, Phase::Ready as u8, Ordering::AcqRel, Ordering::Acquire);
        true
    }

    pub fn begin_drain(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::Release);
    }

    pub fn loaded(&self) -> Option<&Loaded> {
        self.loaded.get()
    }

    /// The model for a request that only reads it (tokenize): works while draining too.
    pub fn model(&self) -> Result<&Loaded, ApiError> {
        self.loaded.get().ok_or_else(ApiError::loading)
    }

    /// Admits a generation request: ready phase and a free in-flight slot, else 503/429.
    pub fn admit(&self) -> Result<(Permit, &Loaded), ApiError> {
        match self.phase() {
            Phase::Loading => return Err(ApiError::loading()),
            Phase::Draining => return Err(ApiError::draining()),
            Phase::Ready => {}
        }
        let loaded = self.model()?;
        Ok((self.admission.try_admit()?, loaded))
    }

    /// Checks `model` against the served name (absent is fine).
    pub fn check_model(&self, asked: Option<&str>) -> Result<(), ApiError> {
        match asked {
            Some(m) if m != self.cfg.served_model_name => {
                Err(ApiError::model_not_found(m, &self.cfg.served_model_name))
            }
            _ => Ok(()),
        }
    }

    /// Logs each unknown field name once (array indices folded, so `messages.3.x` and
    /// `messages.4.x` are one name).
    pub fn warn_unknown_fields(&self, route: &str, fields: &[String]) {
        if fields.is_empty() {
            return;
        }
        let mut seen = self.warned_fields.lock().unwrap_or_else(|p| p.into_inner());
        for f in fields {
            let name: String = f
                .split('.')
                .map(|seg| if seg.parse::<u64>().is_ok() { "*" } else { seg })
                .collect::<Vec<_>>()
                .join(".");
            if seen.len() < MAX_WARNED_FIELDS && seen.insert(name.clone()) {
                tracing::warn!(route, field = %name, "request field is not supported and was ignored");
            }
        }
    }

    pub fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            engine: self.loaded.get().map(|l| (l.backend.stats(), l.backend.heartbeat())),
            in_flight: self.admission.in_flight(),
            ready: self.phase() == Phase::Ready,
            draining: self.phase() == Phase::Draining,
        }
    }
}
