//! What every handler shares: the text model with its engine and/or the speech model,
//! settings and metrics. Either model may be absent (`weft serve whisper-base` serves audio
//! only), so text handlers reach theirs through `AppState::text`, which answers 404 when none
//! is loaded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use weft_engine::constrained::VocabIndex;
use weft_engine::engine::EngineHandle;
use weft_models::TextModel;
use weft_vision::{MediaKind, Vision};

use crate::audio::AudioService;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::prep::PrepPool;
use crate::prompt::encode_prompt;
use crate::reasoning::ReasoningParser;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names clients may use in `model` for the text model; the first is reported (vLLM's
    /// `--served-model-name`). Empty when only a speech model is served.
    pub served_model_names: Vec<String>,
    /// Bearer token required on the API routes when set.
    pub api_key: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    pub reasoning_parser: Option<ReasoningParser>,
    /// How long in-flight requests may run after SIGTERM before they are aborted.
    pub shutdown_grace: Duration,
    pub limits: Limits,
}

/// The text model and the engine thread that runs it.
pub struct TextService {
    pub engine: EngineHandle,
    pub model: Arc<TextModel>,
    /// What preparing a request needs of the model.
    pub prompt: PromptContext,
}

impl TextService {
    /// `vision`: the model's vision tower, when it reads images.
    pub fn new(
        engine: EngineHandle,
        model: Arc<TextModel>,
        vision: Option<Arc<Vision>>,
    ) -> TextService {
        let prompt = PromptContext::new(Arc::clone(&model), engine.config().max_model_len)
            .with_vision(vision);
        TextService {
            engine,
            model,
            prompt,
        }
    }

    pub fn max_model_len(&self) -> usize {
        self.prompt.max_model_len()
    }
}

/// What turning a request into prompt tokens and a grammar needs of the text model, without
/// the engine that runs it (so that request preparation can be exercised, fuzzed, alone).
pub struct PromptContext {
    pub model: Arc<TextModel>,
    /// What turns the prompt's images into its media items (a model that reads images).
    pub vision: Option<Arc<Vision>>,
    max_model_len: usize,
    /// Bytes of text the longest token stands for.
    max_token_bytes: usize,
    /// The vocabulary as byte strings for constrained decoding, built on first use.
    vocab: OnceLock<Arc<VocabIndex>>,
}

impl PromptContext {
    pub fn new(model: Arc<TextModel>, max_model_len: usize) -> PromptContext {
        let tokenizer = &model.tokenizer;
        let max_token_bytes = (0..tokenizer.vocab_size() as u32)
            .map(|id| tokenizer.token_bytes(id, true).len())
            .max()
            .unwrap_or(1);
        PromptContext {
            model,
            vision: None,
            max_model_len,
            max_token_bytes,
            vocab: OnceLock::new(),
        }
    }

    pub fn with_vision(self, vision: Option<Arc<Vision>>) -> PromptContext {
        PromptContext { vision, ..self }
    }

    /// What the prompt may hold: `["text"]`, plus what the model's towers read.
    pub fn input_modalities(&self) -> Vec<&'static str> {
        let mut m = vec!["text"];
        m.extend(
            [MediaKind::Image, MediaKind::Video, MediaKind::Audio]
                .into_iter()
                .filter(|&kind| self.accepts(kind))
                .map(MediaKind::name),
        );
        m
    }

    /// Whether prompts may carry media of `kind`.
    pub fn accepts(&self, kind: MediaKind) -> bool {
        self.vision.as_ref().is_some_and(|v| v.accepts(kind))
    }

    /// Tokenizes a rendered chat prompt as the model's processor does (Gemma 3's writes each
    /// image's token run into the text first).
    pub fn encode_prompt(&self, rendered: &str) -> Vec<u32> {
        match &self.vision {
            Some(vision) => encode_prompt(&self.model, &vision.prompt_text(rendered)),
            None => encode_prompt(&self.model, rendered),
        }
    }

    /// Longest sequence, prompt plus output.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Refuses `bytes` of prompt text that cannot fit in the context whatever their
    /// tokenization (no token stands for more than the longest token's bytes), before any
    /// time is spent tokenizing them.
    pub fn check_text_fits(&self, bytes: usize, param: &str) -> Result<(), ApiError> {
        let max_model_len = self.max_model_len;
        if bytes > max_model_len.saturating_mul(self.max_token_bytes.max(1)) {
            return Err(ApiError::invalid(
                param,
                format!(
                    "This model's maximum context length is {max_model_len} tokens. However, \
                     your request has {bytes} bytes of text, which are more than {max_model_len} \
                     tokens however they are tokenized. Please reduce the length of the input."
                ),
            ));
        }
        Ok(())
    }

    pub fn vocab_index(&self) -> Arc<VocabIndex> {
        Arc::clone(
            self.vocab
                .get_or_init(|| Arc::new(VocabIndex::new(&self.model.tokenizer))),
        )
    }
}

pub struct AppState {
    pub text: Option<Arc<TextService>>,
    pub audio: Option<Arc<AudioService>>,
    pub config: ServerConfig,
    pub metrics: Metrics,
    /// Set on shutdown: new generations are refused with 503.
    pub draining: AtomicBool,
    /// Unix time the server started (`created` of the model card).
    pub created: u64,
    /// Where requests are tokenized, rendered and compiled.
    pub prep: PrepPool,
    /// Fetches the images that requests name by URL.
    pub media_client: reqwest::Client,
}

impl AppState {
    /// A server for a text model.
    pub fn new(engine: EngineHandle, model: Arc<TextModel>, config: ServerConfig) -> AppState {
        AppState::for_text(TextService::new(engine, model, None), config)
    }

    /// A server for a text model, possibly one with a vision tower.
    pub fn for_text(text: TextService, config: ServerConfig) -> AppState {
        AppState {
            text: Some(Arc::new(text)),
            audio: None,
            prep: prep_pool(&config.limits),
            media_client: media_client(&config.limits),
            config,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            created: unix_now(),
        }
    }

    /// A server for a speech model alone (`config.served_model_names` is ignored).
    pub fn audio_only(audio: AudioService, config: ServerConfig) -> AppState {
        AppState {
            text: None,
            audio: Some(Arc::new(audio)),
            prep: prep_pool(&config.limits),
            media_client: media_client(&config.limits),
            config: ServerConfig {
                served_model_names: Vec::new(),
                ..config
            },
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            created: unix_now(),
        }
    }

    /// Adds a speech model next to the text model.
    pub fn with_audio(mut self, audio: AudioService) -> AppState {
        self.audio = Some(Arc::new(audio));
        self
    }

    /// The text model, or 404 on a server that only transcribes.
    pub fn text(&self) -> Result<&Arc<TextService>, ApiError> {
        self.text.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this server has no text model loaded (it serves /v1/audio routes only)",
            )
        })
    }

    /// The name the server is known by: the text model's first name, else the speech model's.
    pub fn model_name(&self) -> &str {
        match (self.config.served_model_names.first(), &self.audio) {
            (Some(name), _) => name,
            (None, Some(audio)) => audio.name(),
            (None, None) => "none",
        }
    }

    /// 404 unless `requested` is one of the text model's names (a missing name means the
    /// default).
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        self.text()?;
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

    /// Requests still being worked on: generations in the engine plus transcriptions
    /// running or waiting for their turn.
    pub fn in_flight(&self) -> usize {
        self.text.as_ref().map_or(0, |t| t.engine.in_flight())
            + self.audio.as_ref().map_or(0, |a| a.in_flight())
    }
}

fn prep_pool(limits: &Limits) -> PrepPool {
    PrepPool::new(
        limits.max_concurrent_preparations,
        limits.max_waiting_preparations,
    )
}

/// The client that fetches image URLs: each fetch is also bounded by
/// `limits.media.fetch_timeout` as a whole; a few redirects are followed.
fn media_client(limits: &Limits) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(limits.media.fetch_timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
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
