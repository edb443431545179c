//! What every handler shares: the engine, the model (tokenizer, template), settings and
//! metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use weft_engine::constrained::VocabIndex;
use weft_engine::engine::EngineHandle;
use weft_models::TextModel;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::reasoning::ReasoningParser;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names clients may use in `model`; the first is reported (vLLM's
    /// `--served-model-name`).
    pub served_model_names: Vec<String>,
    /// Bearer token required on the API routes when set.
    pub api_key: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    pub reasoning_parser: Option<ReasoningParser>,
    /// How long in-flight requests may run after SIGTERM before they are aborted.
    pub shutdown_grace: Duration,
}

pub struct AppState {
    pub engine: EngineHandle,
    pub model: Arc<TextModel>,
    pub config: ServerConfig,
    pub metrics: Metrics,
    /// Set on shutdown: new generations are refused with 503.
    pub draining: AtomicBool,
    /// Unix time the server started (`created` of the model card).
    pub created: u64,
    /// The vocabulary as byte strings for constrained decoding, built on first use.
    vocab: OnceLock<Arc<VocabIndex>>,
}

impl AppState {
    pub fn new(engine: EngineHandle, model: Arc<TextModel>, config: ServerConfig) -> AppState {
        AppState {
            engine,
            model,
            config,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            created: unix_now(),
            vocab: OnceLock::new(),
        }
    }

    pub fn vocab_index(&self) -> Arc<VocabIndex> {
        Arc::clone(
            self.vocab
                .get_or_init(|| Arc::new(VocabIndex::new(&self.model.tokenizer))),
        )
    }

    pub fn model_name(&self) -> &str {
        &self.config.served_model_names[0]
    }

    /// 404 unless `requested` is one of the served names (a missing name means the default).
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            None => Ok(()),
            Some(name) if self.config.served_model_names.iter().any(|n| n == name) => Ok(()),
            Some(name) => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("The model `{name}` does not exist."),
                param: Some("model".into()),
            }),
        }
    }

    /// 503 once shutdown has begun.
    pub fn check_accepting(&self) -> Result<(), ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    pub fn max_model_len(&self) -> usize {
        self.engine.config().max_model_len
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request id: prefix plus a process-unique number mixed with the time, in hex.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}-{:016x}{n:08x}",
        t.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

pub type SharedState = Arc<AppState>;
