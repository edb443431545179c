//! `weft chat`: a multi-turn conversation in the terminal. The session keeps the KV cache of
//! the whole conversation, so each turn evaluates only the new messages.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use weft_engine::session::{FinishReason, Session};
use weft_models::chat_template::{ChatMessage, RenderOptions};
use weft_models::TextModel;

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
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system.clone(),
        });
    }
    eprintln!(
        "chatting with {} (Ctrl-C stops a reply, Ctrl-D leaves)",
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
        messages.push(ChatMessage {
            role: "user".into(),
            content: input.to_string(),
        });
        let tokens = chat_prompt_tokens(&model, &messages)?;
        let mut reply = String::new();
        let result = session.generate(&tokens, &params, &cancel, |text| {
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
                messages.push(ChatMessage {
                    role: "assistant".into(),
                    content: reply,
                });
            }
            Err(e) => {
                // The turn did not fit: drop it and let the user go on.
                eprintln!("error: {e}");
                messages.pop();
            }
        }
    }
}
