//! `weft run`: one prompt in, one streamed reply out.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::Args;
use weft_engine::session::{GenerateOutcome, Session};
use weft_models::chat_template::ChatMessage;

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
    let tokens = if args.raw {
        model.tokenizer.encode(prompt, true, false)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: prompt.clone(),
        });
        chat_prompt_tokens(&model, &messages)?
    };
    let mut session = Session::new(&model, args.context.session_config(&model));
    let params = args.sampling.generate_params();
    let mut stdout = std::io::stdout().lock();
    let outcome = session.generate(&tokens, &params, &AtomicBool::new(false), |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    writeln!(stdout)?;
    report(&outcome);
    Ok(())
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
