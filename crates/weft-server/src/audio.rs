//! `POST /v1/audio/transcriptions` and `POST /v1/audio/translations`: OpenAI's multipart
//! forms in, a Whisper transcript out in the requested `response_format`.
//!
//! Transcription is seconds of CPU work per request, so it runs on tokio's blocking threads,
//! never on the async workers, and at most `max_concurrent` at a time (a semaphore): the
//! model's thread pool already uses every core, so running two at once would only make both
//! slower. Requests beyond that wait their turn; one whose client leaves while it waits is
//! dropped before it starts, and one whose client leaves while it runs stops at the next
//! 30-second window.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use weft_audio::format::{render, ResponseFormat};
use weft_audio::{Task, TranscribeError, TranscribeOptions, Transcriber};

use crate::counted::Counted;
use crate::error::ApiError;
use crate::state::SharedState;

/// How the speech model is served.
#[derive(Clone, Debug)]
pub struct AudioConfig {
    /// Names clients may use in `model`; the first is reported.
    pub served_model_names: Vec<String>,
    /// Largest upload (the whole multipart body) in bytes; 413 beyond. OpenAI's is 25 MB.
    pub max_upload_bytes: usize,
    /// Longest recording in seconds; 400 beyond.
    pub max_audio_seconds: f64,
    /// Transcriptions run at once; the rest wait.
    pub max_concurrent: usize,
    /// Transcriptions that may wait (each holding its upload in memory); beyond, 503.
    pub max_waiting: usize,
    /// Beams of the beam search (faster-whisper's default is 5; 1 is greedy).
    pub beam_size: usize,
}

/// A Whisper model behind the audio routes.
pub struct AudioService {
    transcriber: Arc<Transcriber>,
    config: AudioConfig,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: Arc<AtomicUsize>,
    /// Cancel flags of the transcriptions started so far (dead ones are pruned on insert),
    /// so that shutdown can stop those still running.
    cancels: Mutex<Vec<Weak<AtomicBool>>>,
}

impl AudioService {
    /// A model given no name is served as `whisper`.
    pub fn new(transcriber: impl Into<Arc<Transcriber>>, mut config: AudioConfig) -> AudioService {
        if config.served_model_names.is_empty() {
            config.served_model_names.push("whisper".into());
        }
        AudioService {
            transcriber: transcriber.into(),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            waiting: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            cancels: Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.served_model_names[0]
    }

    pub fn names(&self) -> &[String] {
        &self.config.served_model_names
    }

    pub fn config(&self) -> &AudioConfig {
        &self.config
    }

    /// Transcriptions waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Transcriptions running on a blocking thread.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.waiting() + self.running()
    }

    /// Stops every running transcription at its next window (shutdown's grace is over).
    pub fn cancel_all(&self) {
        let cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        for flag in cancels.iter().filter_map(Weak::upgrade) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn register(&self, flag: &Arc<AtomicBool>) {
        let mut cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        cancels.retain(|w| w.strong_count() > 0);
        cancels.push(Arc::downgrade(flag));
    }

    /// 404 unless `requested` is one of the speech model's names (missing: the default).
    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
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
}

/// The fields of one request, validated.
struct Form {
    file: Vec<u8>,
    model: Option<String>,
    language: Option<String>,
    prompt: Option<String>,
    format: ResponseFormat,
    temperature: f32,
}

pub async fn transcriptions(
    State(state): State<SharedState>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    handle(state, form, Task::Transcribe).await
}

pub async fn translations(
    State(state): State<SharedState>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    handle(state, form, Task::Translate).await
}

async fn handle(
    state: SharedState,
    form: Result<Multipart, MultipartRejection>,
    task: Task,
) -> Result<Response, ApiError> {
    let audio = state.audio.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no speech model loaded (start it with a Whisper model, or \
             --audio-model)",
        )
    })?;
    state.check_accepting()?;
    // A place in line is taken before the upload is read: each waiting request holds its
    // whole file in memory.
    let waiting = Counted::within(&audio.waiting, audio.config.max_waiting).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} transcriptions are already waiting; retry later",
                audio.config.max_waiting
            ),
        )
    })?;
    let form = form.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let form = read_form(form, audio.config.max_upload_bytes).await?;
    audio.check_model(form.model.as_deref())?;
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = TranscribeOptions {
        language: form.language,
        task,
        beam_size: audio.config.beam_size.max(1),
        temperatures: temperatures(form.temperature),
        initial_prompt: form.prompt,
        max_seconds: audio.config.max_audio_seconds,
        cancel: Some(Arc::clone(&cancel)),
        ..TranscribeOptions::default()
    };
    let started = Instant::now();
    // Dropped while waiting (client gone) means the job never starts.
    let permit = Arc::clone(&audio.permits)
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    drop(waiting);
    state.check_accepting()?;
    audio.register(&cancel);
    // From here on a dropped handler (client gone) stops the job at its next window.
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
    let transcriber = Arc::clone(&audio.transcriber);
    let running = Arc::clone(&audio.running);
    let bytes = form.file;
    let job = tokio::task::spawn_blocking(move || {
        // The permit and the running count last as long as the work, not the request.
        let _permit = permit;
        running.fetch_add(1, Ordering::SeqCst);
        let result = transcriber.transcribe_bytes(&bytes, &opts);
        running.fetch_sub(1, Ordering::SeqCst);
        result
    });
    let transcript = match job.await {
        Ok(result) => result.map_err(transcribe_error)?,
        Err(e) => {
            tracing::error!("transcription task failed: {e}");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the transcription failed unexpectedly",
            ));
        }
    };
    state
        .metrics
        .transcribed(transcript.duration, started.elapsed().as_secs_f64());
    Ok((
        [(header::CONTENT_TYPE, form.format.content_type())],
        render(&transcript, form.format),
    )
        .into_response())
}

/// OpenAI's `temperature`: 0 (the default) lets the decoder raise it when a result is
/// repetitive or improbable; a higher value is where that fallback starts.
fn temperatures(start: f32) -> Vec<f32> {
    let defaults = TranscribeOptions::default().temperatures;
    if start <= 0.0 {
        return defaults;
    }
    let mut out = vec![start];
    out.extend(defaults.into_iter().filter(|&t| t > start + 1e-6));
    out
}

/// Reads the multipart form; fields OpenAI defines but weft cannot honour are refused, unknown
/// ones are ignored (clients send extra ones).
async fn read_form(mut multipart: Multipart, limit: usize) -> Result<Form, ApiError> {
    let mut file: Option<Vec<u8>> = None;
    let mut form = Form {
        file: Vec::new(),
        model: None,
        language: None,
        prompt: None,
        format: ResponseFormat::Json,
        temperature: 0.0,
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().unwrap_or("").to_owned();
        if name == "file" {
            if file.is_some() {
                return Err(ApiError::invalid("file", "give exactly one `file`"));
            }
            let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
            file = Some(bytes.to_vec());
            continue;
        }
        let value = field.text().await.map_err(|e| multipart_error(e, limit))?;
        let value = value.trim();
        match name.as_str() {
            "model" => form.model = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "language" if !value.is_empty() => {
                let code = weft_audio::languages::code(value).ok_or_else(|| {
                    ApiError::invalid(
                        "language",
                        format!("unknown language '{value}' (give an ISO-639-1 code such as en)"),
                    )
                })?;
                form.language = Some(code.to_owned());
            }
            "prompt" => form.prompt = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "response_format" => {
                form.format = value
                    .parse()
                    .map_err(|e: String| ApiError::invalid("response_format", e))?;
            }
            "temperature" => {
                form.temperature = value
                    .parse::<f32>()
                    .ok()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "temperature",
                            format!("temperature must be a number from 0 to 1, not '{value}'"),
                        )
                    })?;
            }
            "timestamp_granularities[]" | "timestamp_granularities" => match value {
                "segment" => {}
                "word" => {
                    return Err(ApiError::invalid(
                        "timestamp_granularities",
                        "word timestamps are not supported; use segment",
                    ))
                }
                other => {
                    return Err(ApiError::invalid(
                        "timestamp_granularities",
                        format!("unknown timestamp granularity '{other}' (segment)"),
                    ))
                }
            },
            "stream" if value == "true" => {
                return Err(ApiError::invalid(
                    "stream",
                    "streamed transcription is not supported",
                ))
            }
            _ => {}
        }
    }
    form.file = file.ok_or_else(|| {
        ApiError::invalid(
            "file",
            "the form has no `file` field (the audio to transcribe)",
        )
    })?;
    Ok(form)
}

fn multipart_error(e: MultipartError, limit: usize) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            format!("the upload is larger than this server's limit of {limit} bytes"),
        );
    }
    ApiError::bad_request(format!("malformed multipart form: {}", e.body_text()))
}

/// Bad audio and bad options are the client's fault (400); a cancelled job only happens when
/// the server stops or the client left.
fn transcribe_error(e: TranscribeError) -> ApiError {
    match e {
        TranscribeError::Audio(_) => ApiError::invalid("file", e.to_string()),
        TranscribeError::UnknownLanguage(_) => ApiError::invalid("language", e.to_string()),
        TranscribeError::EnglishOnly(_) | TranscribeError::Option(_) => {
            ApiError::bad_request(e.to_string())
        }
        TranscribeError::Cancelled => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the transcription was cancelled",
        ),
    }
}

/// Counts itself in `counter` while alive.
/// Sets the job's cancel flag when the handler goes away; after a normal end the job is
/// already over, so setting it then changes nothing.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_keeps_the_fallback_and_higher_starts_it_later() {
        assert_eq!(temperatures(0.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(temperatures(0.5), vec![0.5, 0.6, 0.8, 1.0]);
        assert_eq!(temperatures(1.0), vec![1.0]);
    }
}
