//! `weft transcribe MODEL FILE`: speech to text with a Whisper model, printed to stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use weft_audio::format::{render, ResponseFormat};
use weft_audio::{Task, TranscribeOptions, Transcriber, Whisper};

use crate::{pull, ThreadArgs};

#[derive(Args, Debug)]
pub struct TranscribeArgs {
    /// Packaged model name (whisper-base), a CTranslate2 model directory or its model.bin, or
    /// a Hugging Face directory with model.safetensors.
    model: String,
    /// Audio files: wav, mp3, flac, ogg/vorbis, m4a/aac. With several, the model is loaded
    /// once and each transcript is printed in turn (text formats under a `==> FILE <==` line;
    /// json formats one object per line).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Spoken language as an ISO code or English name (default: detected).
    #[arg(long, short = 'l')]
    language: Option<String>,
    /// Translate the speech into English instead of transcribing it.
    #[arg(long)]
    translate: bool,
    /// Output: text, json, verbose_json, srt or vtt.
    #[arg(long, short = 'f', default_value = "text")]
    format: ResponseFormat,
    /// Beams for beam search (1 = greedy).
    #[arg(long, default_value_t = 5)]
    beam_size: usize,
    /// Do not predict timestamps (one segment per 30-second window).
    #[arg(long)]
    no_timestamps: bool,
    /// Text that precedes the recording (names, spelling).
    #[arg(long)]
    prompt: Option<String>,
    /// Refuse recordings longer than this many seconds.
    #[arg(long, default_value_t = 3.0 * 3600.0)]
    max_seconds: f64,
    #[command(flatten)]
    threads: ThreadArgs,
}

/// A Whisper model path: an existing file or directory as given, else a packaged name.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    pull::resolve(spec)
}

pub fn transcribe(args: &TranscribeArgs) -> Result<()> {
    let path = resolve(&args.model)?;
    let t0 = Instant::now();
    let model = Whisper::load(&path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        "loaded whisper ({} layers, d={}) in {:.2}s",
        model.config.encoder_layers,
        model.config.d_model,
        t0.elapsed().as_secs_f64()
    );
    let language = match &args.language {
        Some(l) => Some(
            weft_audio::languages::code(l)
                .with_context(|| format!("unknown language '{l}'"))?
                .to_string(),
        ),
        None => None,
    };
    let opts = TranscribeOptions {
        language,
        task: if args.translate {
            Task::Translate
        } else {
            Task::Transcribe
        },
        beam_size: args.beam_size.max(1),
        timestamps: !args.no_timestamps,
        initial_prompt: args.prompt.clone(),
        max_seconds: args.max_seconds,
        ..TranscribeOptions::default()
    };
    let transcriber = Transcriber::new(model, args.threads.get());
    let several = args.files.len() > 1;
    for file in &args.files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let t1 = Instant::now();
        let transcript = transcriber
            .transcribe_bytes(&bytes, &opts)
            .with_context(|| format!("transcribing {}", file.display()))?;
        tracing::info!(
            "{}: {:.1} s of audio in {:.2} s ({} segments, language {})",
            file.display(),
            transcript.duration,
            t1.elapsed().as_secs_f64(),
            transcript.segments.len(),
            transcript.language
        );
        let json = matches!(
            args.format,
            ResponseFormat::Json | ResponseFormat::VerboseJson
        );
        if several && !json {
            println!("==> {} <==", file.display());
        }
        print!("{}", render(&transcript, args.format));
        if json {
            println!();
        }
    }
    Ok(())
}
