//! `weft run`: one prompt in, one streamed reply out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use weft_engine::session::{GenerateOutcome, Session};
use weft_kernels::pool::ThreadPool;
use weft_models::media::PromptMedia;
use weft_models::TextModel;
use weft_vision::DecodeOptions;

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
    /// Needs a model with a vision tower (a Qwen2.5-VL Hugging Face directory).
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<PathBuf>,
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
    if args.raw && !args.images.is_empty() {
        bail!("--image needs the chat template (leave out --raw)");
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
        let content = match args.images.is_empty() {
            true => json!(prompt),
            false => {
                let mut parts: Vec<_> = args
                    .images
                    .iter()
                    .map(|_| json!({"type": "image"}))
                    .collect();
                parts.push(json!({"type": "text", "text": prompt}));
                json!(parts)
            }
        };
        messages.push(json!({"role": "user", "content": content}));
        let tokens = chat_prompt_tokens(&model, &messages)?;
        match args.images.is_empty() {
            true => (tokens, PromptMedia::default()),
            false => with_images(
                &model,
                args.mmproj.as_deref(),
                tokens,
                &args.images,
                args.context.threads(),
            )?,
        }
    };
    let mut session = Session::new(&model, args.context.session_config(&model));
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

/// The prompt with its images: placeholders expanded, the vision tower's rows, positions.
fn with_images(
    model: &TextModel,
    mmproj: Option<&Path>,
    tokens: Vec<u32>,
    paths: &[PathBuf],
    threads: usize,
) -> Result<(Vec<u32>, PromptMedia)> {
    let Some(vision) = crate::load_vision(model, mmproj)? else {
        bail!(
            "{} has no vision tower: --image needs a Qwen2.5-VL Hugging Face model directory, \
             or a GGUF model with --mmproj",
            model.name()
        );
    };
    let images = paths
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            weft_vision::decode(&bytes, &DecodeOptions::default())
                .with_context(|| format!("decoding {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let plan = vision.plan(&tokens, &images)?;
    let preprocess = t0.elapsed();
    let pool = ThreadPool::new(threads);
    let mut rows = Vec::with_capacity(plan.images.len());
    for (i, image) in plan.images.iter().enumerate() {
        let t1 = Instant::now();
        rows.push(vision.encode(&pool, image));
        let seconds = t1.elapsed().as_secs_f64();
        let flops = vision.encode_flops(image);
        eprintln!(
            "weft: image {}: {} tokens ({}x{} patches), encoded in {:.0} ms, {:.1} GFLOP at {:.1} GFLOP/s",
            i + 1,
            image.len,
            image.pixels.grid_thw[1],
            image.pixels.grid_thw[2],
            seconds * 1e3,
            flops / 1e9,
            flops / 1e9 / seconds.max(1e-9)
        );
    }
    tracing::info!(
        "{} images preprocessed in {:.0} ms",
        images.len(),
        preprocess.as_secs_f64() * 1e3
    );
    let (tokens, media) = plan.into_media(rows, vision.embedding_width());
    Ok((tokens, media))
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
