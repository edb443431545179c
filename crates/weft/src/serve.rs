//! `weft serve`: the OpenAI-compatible HTTP server, for a text model, a Whisper model, or
//! both (`weft serve CHAT_MODEL --audio-model whisper-base`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use weft_audio::{Transcriber, Whisper};
use weft_engine::engine::{EngineConfig, EngineHandle};
use weft_server::{
    AppState, AudioConfig, AudioService, Limits, MediaLimits, ReasoningParser, ServerConfig,
    TextService,
};

use crate::pull::DEFAULT_MODEL;
use crate::{load_model, ThreadArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Packaged model name or path: a .gguf file (chat and completions), or a Whisper model
    /// (whisper-base, a CTranslate2 directory or its model.bin, a Hugging Face directory) to
    /// serve /v1/audio/transcriptions and /v1/audio/translations alone.
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
    /// The vision tower of a GGUF chat model: llama.cpp's mmproj file for it (a Hugging Face
    /// directory brings its own).
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// A Whisper model served next to the text model, under its packaged or directory name.
    #[arg(long)]
    audio_model: Option<String>,
    /// Largest audio upload in bytes (413 beyond; OpenAI allows 25 MB), and largest audio
    /// clip in a chat message (400 beyond).
    #[arg(long, default_value_t = MediaLimits::default().max_audio_bytes)]
    max_audio_bytes: usize,
    /// Longest recording accepted, in seconds, whether uploaded for transcription, sent in a
    /// chat message or read from a video with use_audio_in_video (400 beyond).
    #[arg(long, default_value_t = MediaLimits::default().max_audio_seconds)]
    max_audio_seconds: f64,
    /// Transcriptions run at once (each uses every thread); the rest wait their turn.
    #[arg(long, default_value_t = 1)]
    max_concurrent_transcriptions: usize,
    /// Transcriptions that may wait their turn, each holding its upload (503 beyond).
    #[arg(long, default_value_t = 8)]
    max_waiting_transcriptions: usize,
    /// Beams of Whisper's beam search (1 = greedy, faster on a small CPU).
    #[arg(long, default_value_t = 5)]
    audio_beam_size: usize,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long, env = "WEFT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Name(s) clients use in `model` (default: the model's file stem); the first is
    /// reported.
    #[arg(long, num_args = 1..)]
    served_model_name: Vec<String>,
    /// Most sequences in the running batch (llama.cpp's parallel slots).
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// Longest sequence, prompt plus output (default: the model's context, at most 4096).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Token budget of one step: decodes first, then prefill chunks. Large enough (as
    /// vLLM's and llama.cpp's 2048) that prompts arriving together are prefilled in one step
    /// instead of stalling each other's decodes one chunk at a time; smaller values bound the
    /// stall a new prompt causes running streams, at some cost in throughput.
    #[arg(long, default_value_t = 2048)]
    max_num_batched_tokens: usize,
    /// KV cache size in tokens shared by all sequences (default: max(max-model-len, 16384)).
    #[arg(long)]
    kv_cache_tokens: Option<usize>,
    /// Do not share KV blocks between requests with a common prefix.
    #[arg(long)]
    no_enable_prefix_caching: bool,
    /// Requests that may wait for a slot; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Image tokens the vision tower may produce in one step (an image larger than this
    /// still runs, alone in its step): bounds how long one step's encoding holds up the
    /// running streams' decodes.
    #[arg(long, default_value_t = 2048)]
    encoder_budget: usize,
    /// Bytes of vision-tower outputs kept by image content, so that an image sent again
    /// (every turn of a conversation) is encoded once.
    #[arg(long, default_value_t = 512 << 20)]
    encoder_cache_bytes: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Split `<think>` reasoning into `reasoning_content`: qwen3 or deepseek_r1.
    #[arg(long)]
    reasoning_parser: Option<String>,
    /// Seconds in-flight requests may still run after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    threads: ThreadArgs,
}

/// Bounds on one request (400 beyond each), and on the requests being prepared (503).
#[derive(Args, Debug)]
struct LimitArgs {
    /// Most messages in one chat request.
    #[arg(long, default_value_t = Limits::default().max_messages)]
    max_messages: usize,
    /// Most stop strings per request.
    #[arg(long, default_value_t = Limits::default().max_stop_strings)]
    max_stop_strings: usize,
    /// Longest stop string, in bytes.
    #[arg(long, default_value_t = Limits::default().max_stop_bytes)]
    max_stop_bytes: usize,
    /// Most logit_bias entries per request.
    #[arg(long, default_value_t = Limits::default().max_logit_bias)]
    max_logit_bias: usize,
    /// Most alternatives per token in log-probabilities (top_logprobs, logprobs).
    #[arg(long, default_value_t = Limits::default().max_logprobs)]
    max_logprobs: usize,
    /// Most tools per chat request.
    #[arg(long, default_value_t = Limits::default().max_tools)]
    max_tools: usize,
    /// Requests tokenized and rendered at once, off the network threads.
    #[arg(long, default_value_t = Limits::default().max_concurrent_preparations)]
    max_concurrent_preparations: usize,
    /// Requests that may wait to be tokenized (503 beyond).
    #[arg(long, default_value_t = Limits::default().max_waiting_preparations)]
    max_waiting_preparations: usize,
    /// Most media items per prompt, as vLLM writes it: '{"image": 4, "video": 1, "audio": 4}'
    /// (or image=4,video=1,audio=4); a kind left out keeps its default (4 images, 1 video,
    /// 4 audio clips).
    #[arg(long, value_parser = parse_mm_limit)]
    limit_mm_per_prompt: Option<MmLimit>,
    /// Largest image file in bytes, however it arrives (data: URL, http(s), file://).
    #[arg(long, default_value_t = MediaLimits::default().max_image_bytes)]
    max_image_bytes: usize,
    /// Largest video file in bytes, however it arrives.
    #[arg(long, default_value_t = MediaLimits::default().max_video_bytes)]
    max_video_bytes: usize,
    /// Largest image or video frame in pixels (width x height), checked before decoding.
    #[arg(long, default_value_t = MediaLimits::default().max_image_pixels)]
    max_image_pixels: u64,
    /// Seconds one image or video URL may take to fetch.
    #[arg(long, default_value_t = MediaLimits::default().fetch_timeout.as_secs_f64())]
    media_fetch_timeout: f64,
    /// Seconds probing, and then decoding, one video may take (ffmpeg is stopped after).
    #[arg(long, default_value_t = MediaLimits::default().video_decode_timeout.as_secs_f64())]
    video_decode_timeout: f64,
    /// Let requests name images as file:// URLs below this directory.
    #[arg(long)]
    allowed_local_media_path: Option<PathBuf>,
}

/// `--limit-mm-per-prompt`: the most images, videos and audio clips per prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MmLimit {
    image: Option<usize>,
    video: Option<usize>,
    audio: Option<usize>,
}

/// vLLM's JSON object, or `image=N,video=M`.
fn parse_mm_limit(s: &str) -> std::result::Result<MmLimit, String> {
    let bad = || format!("expected '{{\"image\": N, \"video\": M}}' or image=N,video=M, got {s}");
    let pairs: Vec<(String, Option<u64>)> = match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, v)| (k, v.as_u64())).collect(),
        _ => s
            .split(',')
            .map(|pair| {
                let (k, v) = pair.split_once('=').ok_or_else(bad)?;
                Ok((k.trim().to_owned(), v.trim().parse().ok()))
            })
            .collect::<std::result::Result<_, String>>()?,
    };
    let mut limit = MmLimit::default();
    for (key, n) in pairs {
        let slot = match key.as_str() {
            "image" => &mut limit.image,
            "video" => &mut limit.video,
            "audio" => &mut limit.audio,
            other => {
                return Err(format!(
                    "only images, videos and audio are read, not {other}"
                ))
            }
        };
        *slot = Some(n.ok_or_else(bad)? as usize);
    }
    Ok(limit)
}

impl LimitArgs {
    fn limits(&self) -> Result<Limits> {
        let allowed_local_media_path = match &self.allowed_local_media_path {
            None => None,
            Some(dir) => Some(
                dir.canonicalize()
                    .with_context(|| format!("--allowed-local-media-path {}", dir.display()))?,
            ),
        };
        for (flag, seconds) in [
            ("--media-fetch-timeout", self.media_fetch_timeout),
            ("--video-decode-timeout", self.video_decode_timeout),
        ] {
            if !(seconds > 0.0 && seconds.is_finite()) {
                bail!("{flag} must be a positive number of seconds");
            }
        }
        let mm = self.limit_mm_per_prompt.unwrap_or_default();
        let defaults = MediaLimits::default();
        Ok(Limits {
            max_messages: self.max_messages,
            max_stop_strings: self.max_stop_strings,
            max_stop_bytes: self.max_stop_bytes,
            max_logit_bias: self.max_logit_bias,
            max_logprobs: self.max_logprobs,
            max_tools: self.max_tools,
            max_concurrent_preparations: self.max_concurrent_preparations,
            max_waiting_preparations: self.max_waiting_preparations,
            media: MediaLimits {
                max_images: mm.image.unwrap_or(defaults.max_images),
                max_videos: mm.video.unwrap_or(defaults.max_videos),
                max_audios: mm.audio.unwrap_or(defaults.max_audios),
                max_image_bytes: self.max_image_bytes,
                max_video_bytes: self.max_video_bytes,
                // `serve` sets these from the speech flags, which bound every audio input.
                max_audio_bytes: defaults.max_audio_bytes,
                max_audio_seconds: defaults.max_audio_seconds,
                max_image_pixels: self.max_image_pixels,
                fetch_timeout: Duration::from_secs_f64(self.media_fetch_timeout),
                video_decode_timeout: Duration::from_secs_f64(self.video_decode_timeout),
                allowed_local_media_path,
            },
        })
    }
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let reasoning_parser = match &args.reasoning_parser {
        None => None,
        Some(name) => match ReasoningParser::from_name(name) {
            Some(p) => Some(p),
            None => bail!("unknown --reasoning-parser {name} (qwen3, deepseek_r1)"),
        },
    };
    let api_key = args.api_key.clone().filter(|k| !k.is_empty());
    let mut limits = args.limits.limits()?;
    if !(args.max_audio_seconds > 0.0 && args.max_audio_seconds.is_finite()) {
        bail!("--max-audio-seconds must be a positive number of seconds");
    }
    limits.media.max_audio_bytes = args.max_audio_bytes;
    limits.media.max_audio_seconds = args.max_audio_seconds;
    let config = |names: Vec<String>| ServerConfig {
        served_model_names: names,
        api_key: api_key.clone(),
        max_body_bytes: args.max_body_bytes,
        reasoning_parser,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        limits: limits.clone(),
    };
    let names = |spec: &str, id: fn(&str) -> String| {
        if args.served_model_name.is_empty() {
            vec![id(spec)]
        } else {
            args.served_model_name.clone()
        }
    };
    let first = crate::transcribe::resolve(&args.model)?;
    let state = if is_whisper(&first)? {
        if args.audio_model.is_some() {
            bail!("MODEL is a Whisper model already: give a .gguf chat model with --audio-model");
        }
        let audio = audio_service(args, &first, names(&args.model, audio_model_id))?;
        AppState::audio_only(audio, config(Vec::new()))
    } else {
        let text = text_state(args, config(names(&args.model, model_id)))?;
        match &args.audio_model {
            None => text,
            Some(spec) => {
                let path = crate::transcribe::resolve(spec)?;
                if !is_whisper(&path)? {
                    bail!("--audio-model {spec} is not a Whisper model");
                }
                text.with_audio(audio_service(args, &path, vec![audio_model_id(spec)])?)
            }
        }
    };
    weft_server::run(&format!("{}:{}", args.host, args.port), Arc::new(state))
        .context("serving HTTP")?;
    eprintln!("weft: stopped");
    Ok(())
}

/// Loads the text model and starts its engine.
fn text_state(args: &ServeArgs, config: ServerConfig) -> Result<AppState> {
    let model = Arc::new(load_model(&args.model)?);
    let max_model_len = args
        .max_model_len
        .unwrap_or_else(|| model.decoder.config().context_length.min(4096));
    let engine = EngineHandle::start(
        Arc::clone(&model),
        EngineConfig {
            n_threads: args.threads.get(),
            max_num_seqs: args.max_num_seqs,
            max_num_batched_tokens: args.max_num_batched_tokens,
            max_model_len,
            kv_cache_tokens: args.kv_cache_tokens.unwrap_or(max_model_len.max(16384)),
            prefix_caching: !args.no_enable_prefix_caching,
            max_waiting: args.max_waiting,
            encoder_budget: args.encoder_budget,
            encoder_cache_bytes: args.encoder_cache_bytes,
        },
    )
    .context("starting the engine")?;
    let vision = crate::load_vision(&model, args.mmproj.as_deref())?.map(Arc::new);
    Ok(AppState::for_text(
        TextService::new(engine, model, vision),
        config,
    ))
}

/// Loads a Whisper model for the audio routes.
fn audio_service(args: &ServeArgs, path: &Path, names: Vec<String>) -> Result<AudioService> {
    let t0 = Instant::now();
    let model = Whisper::load(path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        "loaded whisper ({} layers, d={}) in {:.2}s",
        model.config.encoder_layers,
        model.config.d_model,
        t0.elapsed().as_secs_f64()
    );
    if args.max_concurrent_transcriptions == 0 || args.audio_beam_size == 0 {
        bail!("--max-concurrent-transcriptions and --audio-beam-size must be at least 1");
    }
    Ok(AudioService::new(
        Transcriber::new(model, args.threads.get()),
        AudioConfig {
            served_model_names: names,
            max_upload_bytes: args.max_audio_bytes,
            max_audio_seconds: args.max_audio_seconds,
            max_concurrent: args.max_concurrent_transcriptions,
            max_waiting: args.max_waiting_transcriptions,
            beam_size: args.audio_beam_size,
        },
    ))
}

/// A CTranslate2 directory (`model.bin`), a Hugging Face directory whose `config.json` says
/// `whisper`, or any file that is not GGUF is taken for a Whisper model (its loader says what
/// is wrong with it if it is not one); other directories hold text models.
fn is_whisper(path: &Path) -> Result<bool> {
    if path.is_dir() {
        if path.join("model.bin").is_file() {
            return Ok(true);
        }
        let config = std::fs::read_to_string(path.join("config.json")).unwrap_or_default();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap_or_default();
        return Ok(config["model_type"] == "whisper");
    }
    let mut magic = [0u8; 4];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = file.read(&mut magic).unwrap_or(0);
    Ok(!(n == 4 && &magic == b"GGUF"))
}

/// The default served name of a Whisper model: a packaged name as given, else the name of
/// the model's directory (`/models/whisper-small/model.bin` -> `whisper-small`).
fn audio_model_id(spec: &str) -> String {
    let path = Path::new(spec);
    let dir = if path.is_file() {
        path.parent()
    } else {
        Some(path)
    };
    dir.and_then(|d| d.file_name())
        .map_or_else(|| spec.to_owned(), |s| s.to_string_lossy().into_owned())
}

/// The default served name: a packaged name as given, a path's file stem (a directory's
/// name).
fn model_id(spec: &str) -> String {
    let path = std::path::Path::new(spec);
    if !spec.ends_with(".gguf") && !path.is_dir() {
        return spec.to_owned();
    }
    path.file_stem()
        .map_or_else(|| spec.to_owned(), |s| s.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_limits_read_vllm_json_and_pairs() {
        let both = MmLimit {
            image: Some(2),
            video: Some(0),
            audio: None,
        };
        assert_eq!(parse_mm_limit(r#"{"image": 2, "video": 0}"#), Ok(both));
        assert_eq!(parse_mm_limit("image=2, video=0"), Ok(both));
        assert_eq!(
            parse_mm_limit("video=3,audio=2"),
            Ok(MmLimit {
                image: None,
                video: Some(3),
                audio: Some(2),
            })
        );
        for bad in [
            r#"{"speech": 1}"#,
            r#"{"image": -1}"#,
            "image",
            "image=x",
            "",
        ] {
            assert!(parse_mm_limit(bad).is_err(), "{bad}");
        }
    }
}
