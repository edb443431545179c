//! `weft chat`: a multi-turn conversation in the terminal. The session keeps the KV cache of
//! the whole conversation, so each turn evaluates only the new messages (up to the first
//! image: a session shares no prefix past media). `/image PATH` and `/video PATH` attach an
//! image or a video to the next message (a model with a vision tower); each is read and
//! encoded once per conversation.

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
use weft_vision::video::VideoLimits;
use weft_vision::{DecodeOptions, MediaKind, RgbImage};
use weft_vision::{ProcessorKwargs, Video, Vision};

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
    /// The vision tower of a GGUF model (llama.cpp's mmproj file), for `/image` and `/video`.
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    context: ContextArgs,
}

/// Renders `messages` with the model's chat template (plus the assistant prompt) and
/// tokenizes the result as the model's processor does (`vision`'s prompt text), special-token
/// text included.
pub fn chat_prompt_tokens<M: serde::Serialize>(
    model: &TextModel,
    vision: Option<&Vision>,
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
    let text = match vision {
        Some(vision) => vision.prompt_text(&text),
        None => text.into(),
    };
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
        chat_prompt_tokens::<ChatMessage>(&model, None, &[])?;
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
    let mut attached = Media::default();
    eprintln!(
        "chatting with {} (/image PATH or /video PATH attaches one; Ctrl-C stops a reply, \
         Ctrl-D leaves)",
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
        let attachment = [
            ("/image ", MediaKind::Image),
            ("/video ", MediaKind::Video),
            ("/audio ", MediaKind::Audio),
        ]
        .into_iter()
        .find_map(|(command, kind)| Some((input.strip_prefix(command)?, kind)));
        if let Some((path, kind)) = attachment {
            let path = Path::new(path.trim());
            match attached.attach(&model, args.mmproj.as_deref(), kind, path) {
                Ok(()) => eprintln!("[{} attached to the next message]", kind.name()),
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        let mut parts: Vec<Value> = attached
            .pending
            .iter()
            .map(|kind| json!({"type": kind.name()}))
            .collect();
        let content = match parts.is_empty() {
            true => json!(input),
            false => {
                parts.push(json!({"type": "text", "text": input}));
                Value::Array(parts)
            }
        };
        messages.push(json!({"role": "user", "content": content}));
        let prepared = chat_prompt_tokens(&model, attached.vision.as_ref(), &messages)
            .and_then(|tokens| attached.prompt(&session, tokens));
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
                attached.pending.clear();
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

/// The conversation's media: the vision tower (loaded with the first medium), every image
/// and video in order, and their tower rows by content hash so that nothing is encoded twice.
#[derive(Default)]
struct Media {
    vision: Option<Vision>,
    images: Vec<RgbImage>,
    videos: Vec<Video>,
    /// 16 kHz mono samples.
    audios: Vec<Vec<f32>>,
    /// Attached since the last message was sent.
    pending: Vec<MediaKind>,
    rows: HashMap<u128, Vec<f32>>,
}

impl Media {
    fn attach(
        &mut self,
        model: &TextModel,
        mmproj: Option<&Path>,
        kind: MediaKind,
        path: &Path,
    ) -> Result<()> {
        if self.vision.is_none() {
            self.vision = crate::load_vision(model, mmproj)?;
        }
        let Some(vision) = &self.vision else {
            bail!(
                "{} has no vision tower (a Qwen2.5-VL or Gemma 3 directory, or GGUF with --mmproj)",
                model.name()
            );
        };
        match kind {
            MediaKind::Image => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let image = weft_vision::decode(&bytes, &DecodeOptions::default())
                    .with_context(|| format!("decoding {}", path.display()))?;
                self.images.push(image);
            }
            MediaKind::Video => {
                let limits = VideoLimits::default();
                let (_, video) = vision
                    .open_video(path, ProcessorKwargs::default(), &limits)
                    .with_context(|| format!("reading {}", path.display()))?;
                self.videos.push(video);
            }
            MediaKind::Audio => {
                if !vision.accepts(MediaKind::Audio) {
                    bail!("{} has no audio tower", model.name());
                }
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let samples =
                    weft_audio::audio::decode(&bytes, VideoLimits::default().max_audio_seconds)
                        .with_context(|| format!("decoding {}", path.display()))?;
                self.audios.push(samples);
            }
        }
        self.pending.push(kind);
        Ok(())
    }

    /// The prompt's tokens with every medium placed, and the media that go with them.
    fn prompt(&mut self, session: &Session, tokens: Vec<u32>) -> Result<(Vec<u32>, PromptMedia)> {
        let Some(vision) = &self.vision else {
            return Ok((tokens, PromptMedia::default()));
        };
        let plan = vision.plan(&tokens, &self.images, &self.videos, &self.audios)?;
        let rows = plan
            .inputs
            .iter()
            .map(|input| {
                self.rows
                    .entry(input.hash)
                    .or_insert_with(|| vision.encode(session.pool(), input))
                    .clone()
            })
            .collect();
        Ok(plan.into_media(rows, vision.embedding_width()))
    }
}
