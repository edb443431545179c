//! `weft serve`: the OpenAI-compatible HTTP server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use weft_engine::engine::{EngineConfig, EngineHandle};
use weft_server::{AppState, ReasoningParser, ServerConfig};

use crate::pull::DEFAULT_MODEL;
use crate::{load_model, ThreadArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Packaged model name or path to a .gguf file.
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
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
    /// Token budget of one step: decodes first, then prefill chunks.
    #[arg(long, default_value_t = 256)]
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
    threads: ThreadArgs,
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let reasoning_parser = match &args.reasoning_parser {
        None => None,
        Some(name) => match ReasoningParser::from_name(name) {
            Some(p) => Some(p),
            None => bail!("unknown --reasoning-parser {name} (qwen3, deepseek_r1)"),
        },
    };
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
        },
    )
    .context("starting the engine")?;
    let mut names = args.served_model_name.clone();
    if names.is_empty() {
        names.push(model_id(&args.model));
    }
    let config = ServerConfig {
        served_model_names: names,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_bytes,
        reasoning_parser,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let state = Arc::new(AppState::new(engine, model, config));
    weft_server::run(&format!("{}:{}", args.host, args.port), state).context("serving HTTP")?;
    eprintln!("weft: stopped");
    Ok(())
}

/// The default served name: a packaged name as given, a path's file stem.
fn model_id(spec: &str) -> String {
    let path = std::path::Path::new(spec);
    if !spec.ends_with(".gguf") {
        return spec.to_owned();
    }
    path.file_stem()
        .map_or_else(|| spec.to_owned(), |s| s.to_string_lossy().into_owned())
}
