//! weft's OpenAI-compatible HTTP server: routes, JSON and SSE bodies, errors in OpenAI's
//! shape, API key, body limit, metrics and graceful shutdown. All text model work happens in
//! `weft-engine`'s engine thread, speech model work in `weft-audio` on blocking threads; this
//! crate only translates.

mod audio;
mod chat;
mod completions;
mod counted;
mod error;
mod generate;
mod limits;
mod logprobs_format;
mod media;
mod metrics;
mod misc;
mod openai;
mod params;
mod prep;
mod prompt;
mod reasoning;
mod shaper;
mod state;
mod structured;
mod tags;
mod tool_calls;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

pub use audio::{AudioConfig, AudioService};
pub use chat::prepare_chat_body;
pub use error::ApiError;
pub use limits::Limits;
pub use media::MediaLimits;
pub use reasoning::ReasoningParser;
pub use state::{AppState, PromptContext, ServerConfig, SharedState, TextService};

/// A JSON body whose failures come back in OpenAI's error shape (400 malformed, 413 too
/// large).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A request body as `T`, or a 400 saying why not.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Routes whose requests are counted by status in /metrics (anything else is `other`).
const ROUTES: [&str; 9] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/models",
    "/health",
    "/metrics",
    "/tokenize",
    "/detokenize",
];

pub fn router(state: SharedState) -> Router {
    // Uploads are far bigger than JSON bodies: the audio routes have their own limit.
    let audio_limit = DefaultBodyLimit::max(
        state
            .audio
            .as_ref()
            .map_or(state.config.max_body_bytes, |a| a.config().max_upload_bytes),
    );
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route(
            "/v1/audio/transcriptions",
            post(audio::transcriptions).layer(audio_limit),
        )
        .route(
            "/v1/audio/translations",
            post(audio::translations).layer(audio_limit),
        )
        .route("/v1/models", get(misc::models))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ));
    Router::new()
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// 401 unless the request carries `Authorization: Bearer <key>` (when a key is set).
async fn require_key(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key")
                .into_response();
        }
    }
    next.run(req).await
}

async fn count_requests(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let route = ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other");
    let response = next.run(req).await;
    state.metrics.request(route, response.status().as_u16());
    response
}

/// Serves until `shutdown` resolves, then stops accepting, gives in-flight requests the
/// configured grace period, aborts what is left and returns once every connection closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let on_signal = {
        let state = Arc::clone(&state);
        async move {
            shutdown.await;
            state.draining.store(true, Ordering::SeqCst);
            tracing::info!(
                "shutting down: {} requests in flight, grace {:?}",
                state.in_flight(),
                state.config.shutdown_grace
            );
            let grace = state.config.shutdown_grace;
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + grace;
                while state.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                if state.in_flight() > 0 {
                    tracing::warn!("grace period over: aborting {} requests", state.in_flight());
                    if let Some(text) = &state.text {
                        text.engine.abort_all();
                    }
                    if let Some(audio) = &state.audio {
                        audio.cancel_all();
                    }
                }
            });
        }
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(on_signal)
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Binds `addr` and serves on a runtime of its own until SIGTERM or Ctrl-C, then shuts
/// down gracefully. Prints the address it listens on to stderr once it accepts.
pub fn run(addr: &str, state: SharedState) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!(
            "weft: serving {} on http://{}",
            state.model_name(),
            listener.local_addr()?
        );
        serve(listener, state, shutdown_signal()).await
    })
}
