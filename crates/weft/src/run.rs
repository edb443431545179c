//! `weft run`: one prompt in, one streamed reply out.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use weft_engine::session::{GenerateOutcome, Session};
use weft_kernels::pool::ThreadPool;
use weft_models::media::PromptMedia;
use weft_models::TextModel;
use weft_vision::video::VideoLimits;
use weft_vision::DecodeOptions;
use weft_vision::{ProcessorKwargs, Video, Vision};

use crate::chat::chat_prompt_tokens;
use crate::pull::DEFAULT_MODEL;
use crate::{load_model, ContextArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// [MODEL] PROMPT: MODEL is a packaged name or a .gguf path (default smollm2-135m).
    #[arg(num_args = 1..=2, required = true, value_names = ["MODEL", "PROMPT"])]
    args: Vec<String>,
    /// Treat PROMPT as plain text to continue, without the chat template.
    #[arg(long)]
    raw: bool,
    /// System message (chat mode only).
    #[arg(long)]
    system: Option<String>,
    /// An image (PNG, JPEG, WebP, GIF) placed before PROMPT in the user message; repeatable.
    /// Needs a model with a vision tower (Qwen2.5-VL or Gemma 3: a Hugging Face directory, or
    /// GGUF with --mmproj).
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<PathBuf>,
    /// A video (any format ffmpeg reads) placed after the images, before PROMPT; repeatable.
    /// Frames are sampled at 2 per second within the model's frame and pixel budgets
    /// (Qwen2.5-VL; Gemma 3 reads no video).
    #[arg(long = "video", value_name = "PATH")]
    videos: Vec<PathBuf>,
    /// An audio clip (WAV, MP3, FLAC, Ogg) placed after the videos, before PROMPT;
    /// repeatable. Needs a model with an audio tower (Qwen2.5-Omni).
    #[arg(long = "audio", value_name = "PATH")]
    audios: Vec<PathBuf>,
    /// Put each video's own audio track into the prompt with its frames, interleaved by
    /// time (Qwen2.5-Omni's use_audio_in_video).
    #[arg(long)]
    use_audio_in_video: bool,
    /// The vision tower of a GGUF model: llama.cpp's mmproj file for it.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    context: ContextArgs,
}

pub fn run(args: &RunArgs) -> Result<()> {
    let (model_spec, prompt) = match args.args.as_slice() {
        [prompt] => (DEFAULT_MODEL, prompt),
        [model, prompt] => (model.as_str(), prompt),
        _ => unreachable!("clap enforces one or two values"),
    };
    let model = load_model(model_spec)?;
    let session_config = args.context.session_config(&model);
    let ctx_size = session_config.ctx_size;
    let has_media = !args.images.is_empty() || !args.videos.is_empty() || !args.audios.is_empty();
    if args.raw && has_media {
        bail!("--image, --video and --audio need the chat template (leave out --raw)");
    }
    let (tokens, media) = if args.raw {
        (
            model.tokenizer.encode(prompt, true, false),
            PromptMedia::default(),
        )
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        let content = match has_media {
            false => json!(prompt),
            true => {
                let images = args.images.iter().map(|_| json!({"type": "image"}));
                let videos = args.videos.iter().map(|_| json!({"type": "video"}));
                let audios = args.audios.iter().map(|_| json!({"type": "audio"}));
                let text = json!({"type": "text", "text": prompt});
                json!(images
                    .chain(videos)
                    .chain(audios)
                    .chain([text])
                    .collect::<Vec<_>>())
            }
        };
        messages.push(json!({"role": "user", "content": content}));
        match has_media {
            false => (
                chat_prompt_tokens(&model, None, &messages)?,
                PromptMedia::default(),
            ),
            true => {
                let vision = load_vision(&model, args)?;
                let tokens = chat_prompt_tokens(&model, Some(&vision), &messages)?;
                with_media(&vision, args, tokens, ctx_size)?
            }
        }
    };
    let mut session = Session::new(&model, session_config);
    let params = args.sampling.generate_params();
    let mut stdout = std::io::stdout().lock();
    let on_text = |text: &str| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    };
    let outcome =
        session.generate_with_media(&tokens, media, &params, &AtomicBool::new(false), on_text)?;
    writeln!(stdout)?;
    report(&outcome);
    Ok(())
}

/// The model's media towers, which `--image`, `--video` and `--audio` need.
fn load_vision(model: &TextModel, args: &RunArgs) -> Result<Vision> {
    crate::load_vision(model, args.mmproj.as_deref())?.with_context(|| {
        format!(
            "{} has no vision tower: --image and --video need a Qwen2.5-VL, Qwen2.5-Omni or \
             Gemma 3 Hugging Face model directory, or a GGUF model with --mmproj",
            model.name()
        )
    })
}

/// The prompt with its images, videos and audio: placeholders expanded, the towers' rows,
/// positions. Says on stderr what each medium became and what encoding it cost.
fn with_media(
    vision: &Vision,
    args: &RunArgs,
    tokens: Vec<u32>,
    ctx_size: usize,
) -> Result<(Vec<u32>, PromptMedia)> {
    let t0 = Instant::now();
    let images = args
        .images
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            weft_vision::decode(&bytes, &DecodeOptions::default())
                .with_context(|| format!("decoding {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let limits = VideoLimits::default();
    let kwargs = ProcessorKwargs {
        use_audio_in_video: args.use_audio_in_video,
        ..ProcessorKwargs::default()
    };
    let audios = args
        .audios
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            weft_audio::audio::decode(&bytes, limits.max_audio_seconds)
                .with_context(|| format!("decoding the audio {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let videos = args
        .videos
        .iter()
        .map(|path| {
            let read = || -> Result<Video> {
                let (plan, video) = vision.open_video(path, kwargs, &limits)?;
                let tokens = vision.video_tokens_for(&plan, kwargs)?;
                let info = &plan.info;
                eprintln!(
                    "weft: video {}: {}x{}, {:.1} s at {:.2} fps; {} of {} frames sampled, {tokens} tokens",
                    path.display(),
                    info.width,
                    info.height,
                    info.duration(),
                    info.fps,
                    plan.indices.len(),
                    info.frames,
                );
                Ok(video)
            };
            read().with_context(|| format!("reading the video {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = vision.plan_with(&tokens, &images, &videos, &audios, kwargs)?;
    // Refused before the tower runs: the session would refuse it after.
    if plan.tokens.len() > ctx_size {
        bail!(
            "the prompt has {} tokens with its media but the context holds {ctx_size} (raise \
             --ctx-size, or use smaller or fewer media)",
            plan.tokens.len()
        );
    }
    tracing::info!(
        "{} images, {} videos and {} audio clips read and preprocessed in {:.0} ms",
        images.len(),
        videos.len(),
        audios.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let pool = ThreadPool::new(args.context.threads());
    let mut rows = Vec::with_capacity(plan.inputs.len());
    // Per medium: tokens, encoding seconds and floating-point operations.
    let mut cost: Vec<(usize, f64, f64)> = Vec::new();
    for input in &plan.inputs {
        let t1 = Instant::now();
        rows.push(vision.encode(&pool, input));
        if cost.len() == input.medium {
            cost.push((0, 0.0, 0.0));
        }
        let c = &mut cost[input.medium];
        c.0 += input.len;
        c.1 += t1.elapsed().as_secs_f64();
        c.2 += vision.encode_flops(input);
    }
    for (i, (tokens, seconds, flops)) in cost.into_iter().enumerate() {
        eprintln!(
            "weft: medium {}: {tokens} tokens, encoded in {:.0} ms, {:.1} GFLOP at {:.1} GFLOP/s",
            i + 1,
            seconds * 1e3,
            flops / 1e9,
            flops / 1e9 / seconds.max(1e-9)
        );
    }
    Ok(plan.into_media(rows, vision.embedding_width()))
}

/// Timing summary on stderr, in llama.cpp's terms.
pub fn report(o: &GenerateOutcome) {
    let evaluated = o.prompt_tokens - o.reused_tokens;
    let pp = evaluated as f64 / o.prompt_time.as_secs_f64().max(1e-9);
    let tg = o.generated.len() as f64 / o.generate_time.as_secs_f64().max(1e-9);
    tracing::info!(
        "prompt: {} tokens ({} reused) at {pp:.1} t/s; generated {} tokens at {tg:.1} t/s; finish: {:?}",
        o.prompt_tokens,
        o.reused_tokens,
        o.generated.len(),
        o.finish_reason
    );
}
