//! `weft chat`: a multi-turn conversation in the terminal. The session keeps the KV cache of
//! the whole conversation, so each turn evaluates only the new messages (up to the first
//! image: a session shares no prefix past media). `/image PATH` attaches an image to the next
//! message (a model with a vision tower); each image is encoded once per conversation.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use weft_engine::session::{FinishReason, Session};
use weft_models::chat_template::{ChatMessage, RenderOptions};
use weft_models::media::PromptMedia;
use weft_models::TextModel;
use weft_vision::qwen25vl::Qwen25VlVision;
use weft_vision::{DecodeOptions, RgbImage};

use crate::pull::DEFAULT_MODEL;
use crate::{load_model, ContextArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Packaged model name, path to a .gguf file, or a Hugging Face model directory.
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
    /// System message for the conversation.
    #[arg(long)]
    system: Option<String>,
    /// The vision tower of a GGUF model (llama.cpp's mmproj file), for `/image PATH`.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    context: ContextArgs,
}

/// Renders `messages` with the model's chat template (plus the assistant prompt) and
/// tokenizes the result, special-token text included.
pub fn chat_prompt_tokens<M: serde::Serialize>(
    model: &TextModel,
    messages: &[M],
) -> Result<Vec<u32>> {
    let Some(template) = &model.chat_template else {
        bail!(
            "{} has no chat template (it is probably a base model); use `weft run --raw` to continue plain text",
            model.name()
        );
    };
    let options = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    let text = template
        .render_with(messages, &options)
        .context("rendering the chat template")?;
    let mut tokens = model.tokenizer.encode(&text, true, true);
    // Templates often write BOS themselves; do not add a second one.
    if let Some(bos) = model.tokenizer.bos() {
        if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
            tokens.remove(0);
        }
    }
    Ok(tokens)
}

pub fn chat(args: &ChatArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    if model.chat_template.is_none() {
        chat_prompt_tokens::<ChatMessage>(&model, &[])?;
    }
    let mut session = Session::new(&model, args.context.session_config(&model));
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let params = args.sampling.generate_params();
    let mut messages: Vec<Value> = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    let mut images = Images::default();
    eprintln!(
        "chatting with {} (/image PATH attaches an image; Ctrl-C stops a reply, Ctrl-D leaves)",
        model.name()
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        cancel.store(false, Ordering::Relaxed);
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let input = line.trim_end_matches(['\n', '\r']);
        if input.trim().is_empty() {
            continue;
        }
        if let Some(path) = input.strip_prefix("/image ") {
            match images.attach(&model, args.mmproj.as_deref(), Path::new(path.trim())) {
                Ok(()) => eprintln!("[image attached to the next message]"),
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        let mut parts: Vec<Value> = (0..images.pending)
            .map(|_| json!({"type": "image"}))
            .collect();
        let content = match parts.is_empty() {
            true => json!(input),
            false => {
                parts.push(json!({"type": "text", "text": input}));
                Value::Array(parts)
            }
        };
        messages.push(json!({"role": "user", "content": content}));
        let prepared = chat_prompt_tokens(&model, &messages)
            .and_then(|tokens| images.prompt(&session, tokens));
        let (tokens, media) = match prepared {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                messages.pop();
                continue;
            }
        };
        let mut reply = String::new();
        let result = session.generate_with_media(&tokens, media, &params, &cancel, |text| {
            reply.push_str(text);
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        });
        println!();
        match result {
            Ok(outcome) => {
                if outcome.finish_reason == FinishReason::Cancelled {
                    eprintln!("[stopped]");
                }
                crate::run::report(&outcome);
                images.pending = 0;
                messages.push(json!({"role": "assistant", "content": reply}));
            }
            Err(e) => {
                // The turn did not fit: drop it and let the user go on.
                eprintln!("error: {e}");
                messages.pop();
            }
        }
    }
}

/// The conversation's images: the vision tower (loaded with the first image), every image
/// in order, and their tower rows by content hash so that no image is encoded twice.
#[derive(Default)]
struct Images {
    vision: Option<Qwen25VlVision>,
    decoded: Vec<RgbImage>,
    /// Attached since the last message was sent.
    pending: usize,
    rows: HashMap<u128, Vec<f32>>,
}

impl Images {
    fn attach(&mut self, model: &TextModel, mmproj: Option<&Path>, path: &Path) -> Result<()> {
        if self.vision.is_none() {
            self.vision = crate::load_vision(model, mmproj)?;
        }
        if self.vision.is_none() {
            bail!(
                "{} has no vision tower (a Qwen2.5-VL directory, or GGUF with --mmproj)",
                model.name()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = weft_vision::decode(&bytes, &DecodeOptions::default())
            .with_context(|| format!("decoding {}", path.display()))?;
        self.decoded.push(image);
        self.pending += 1;
        Ok(())
    }

    /// The prompt's tokens with every image placed, and the media that go with them.
    fn prompt(&mut self, session: &Session, tokens: Vec<u32>) -> Result<(Vec<u32>, PromptMedia)> {
        let Some(vision) = &self.vision else {
            return Ok((tokens, PromptMedia::default()));
        };
        let plan = vision.plan(&tokens, &self.decoded, &[])?;
        let rows = plan
            .inputs
            .iter()
            .map(|image| {
                self.rows
                    .entry(image.hash)
                    .or_insert_with(|| vision.encode(session.pool(), image))
                    .clone()
            })
            .collect();
        Ok(plan.into_media(rows, vision.embedding_width()))
    }
}
