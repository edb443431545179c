//! `weft bench`: llama-bench's flags and output formats, so the two tables line up.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use weft_engine::bench::{run_case, BenchCase, BenchSamples};
use weft_engine::session::{Session, SessionConfig};
use weft_models::TextModel;

use crate::load_model;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Packaged model name, path to a .gguf file, or a Hugging Face model directory.
    model: String,
    /// Prompt lengths to time (comma-separated; 0 skips prompt tests).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to time (comma-separated; 0 skips generation tests).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Tokens already in the context before each test (comma-separated).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    n_depth: Vec<usize>,
    /// Thread counts (comma-separated; default: all cores).
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Timed repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    repetitions: usize,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Md)]
    output: Format,
    /// Skip the untimed warm-up pass.
    #[arg(long)]
    no_warmup: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Md,
    Json,
    Jsonl,
}

/// What the table says about the model: llama-bench's `model`, `size` and `params` columns.
struct ModelInfo {
    filename: String,
    model_type: String,
    size_bytes: u64,
    n_params: u64,
}

impl ModelInfo {
    fn of(model: &TextModel) -> ModelInfo {
        let tensors = model.weights.tensors();
        let n_params: u64 = tensors.iter().map(|t| t.n_elements()).sum();
        // GGUF names its quantization mix; a Hugging Face directory is as its embedding.
        let ftype = match &model.gguf {
            Some(file) => file
                .get_u32("general.file_type")
                .ok()
                .flatten()
                .map_or("?", file_type_name),
            None => model
                .weights
                .tensor("token_embd.weight")
                .map_or("?", |t| t.ggml_type.name()),
        };
        ModelInfo {
            filename: model.weights.path().display().to_string(),
            model_type: format!(
                "{} {} {ftype}",
                model.decoder.config().arch.name(),
                size_label(n_params)
            ),
            size_bytes: tensors.iter().map(|t| t.size).sum(),
            n_params,
        }
    }
}

/// llama.cpp's `llama_ftype` names for `general.file_type`.
fn file_type_name(ftype: u32) -> &'static str {
    match ftype {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        32 => "BF16",
        _ => "?",
    }
}

fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else {
        format!("{:.0}M", n / 1e6)
    }
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        bail!("-r must be at least 1");
    }
    let model = load_model(&args.model)?;
    let info = ModelInfo::of(&model);
    let threads = if args.threads.is_empty() {
        vec![crate::ThreadArgs::default_threads()]
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        bail!("-t must be at least 1");
    }
    let mut cases = Vec::new();
    for &n_depth in &args.n_depth {
        cases.extend(
            args.n_prompt
                .iter()
                .filter(|&&p| p > 0)
                .map(|&n_prompt| BenchCase {
                    n_prompt,
                    n_gen: 0,
                    n_depth,
                }),
        );
        cases.extend(
            args.n_gen
                .iter()
                .filter(|&&g| g > 0)
                .map(|&n_gen| BenchCase {
                    n_prompt: 0,
                    n_gen,
                    n_depth,
                }),
        );
    }
    let ctx = cases.iter().map(BenchCase::ctx_size).max().unwrap_or(1);
    let mut records = Vec::new();
    if matches!(args.output, Format::Md) {
        print_md_header();
    }
    for &n_threads in &threads {
        let mut session = Session::new(&model, SessionConfig::new(n_threads, ctx));
        for &case in &cases {
            let samples = run_case(&mut session, case, args.repetitions, !args.no_warmup)?;
            let record = json_record(&model, &info, n_threads, &samples);
            match args.output {
                Format::Md => print_md_row(&info, n_threads, &samples),
                Format::Jsonl => println!("{record}"),
                Format::Json => {}
            }
            records.push(record);
        }
    }
    if matches!(args.output, Format::Json) {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(())
}

fn json_record(
    model: &TextModel,
    info: &ModelInfo,
    n_threads: usize,
    s: &BenchSamples,
) -> serde_json::Value {
    // The average context while generating: depth, prompt, then half the generated tokens.
    let context = s.case.n_depth + s.case.n_prompt + s.case.n_gen / 2;
    json!({
        "build_commit": env!("CARGO_PKG_VERSION"),
        "backends": "CPU",
        "model_filename": info.filename,
        "model_type": info.model_type,
        "model_size": info.size_bytes,
        "model_n_params": info.n_params,
        "n_ubatch": weft_engine::session::MAX_BATCH,
        "n_threads": n_threads,
        "type_k": "f16",
        "type_v": "f16",
        "flash_attn": true,
        "n_prompt": s.case.n_prompt,
        "n_gen": s.case.n_gen,
        "n_depth": s.case.n_depth,
        "avg_ns": s.avg_ns().round() as u64,
        "stddev_ns": s.stddev_ns().round() as u64,
        "avg_ts": s.avg_ts(),
        "stddev_ts": s.stddev_ts(),
        "samples_ns": s.samples_ns,
        "samples_ts": s.samples_ts(),
        "decode_bytes_per_token": model.decoder.bytes_read_per_token(context),
    })
}

fn print_md_header() {
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
        "model", "size", "params", "backend", "threads", "test", "t/s"
    );
    println!(
        "| {:-<30} | {:->9}: | {:->9}: | {:-<10} | {:->6}: | {:->14}: | {:->19}: |",
        "", "", "", "", "", "", ""
    );
}

fn print_md_row(info: &ModelInfo, n_threads: usize, s: &BenchSamples) {
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
        info.model_type,
        format!("{:.2} MiB", info.size_bytes as f64 / (1024.0 * 1024.0)),
        format!("{:.2} M", info.n_params as f64 / 1e6),
        "CPU",
        n_threads,
        s.case.name(),
        format!("{:.2} ± {:.2}", s.avg_ts(), s.stddev_ts()),
    );
}
