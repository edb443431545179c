//! `weft perplexity`: llama-perplexity's perplexity and, with `--kl-divergence-base`, its
//! KL-divergence comparison, printed in its layout so the two tools' outputs line up.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use weft_engine::kl_divergence::{self, Estimate, KldReport, Quantile};
use weft_engine::perplexity::{Chunks, PerplexityEstimate};
use weft_engine::session::{Session, SessionConfig};

use crate::{load_model, PerplexityArgs};

const DEFAULT_CTX: usize = 512;

pub fn perplexity(args: &PerplexityArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let tokens = model.tokenizer.encode(&text, true, false);
    let threads = args.threads.get();
    match (&args.kl_divergence_base, args.kl_divergence) {
        (Some(base), true) => {
            let (base_file, mut records) =
                kl_divergence::open(base).with_context(|| format!("reading {}", base.display()))?;
            if let Some(ctx) = args.ctx.filter(|&c| c != base_file.ctx) {
                bail!(
                    "{} was computed with a context of {}, not {ctx} (leave out --ctx)",
                    base.display(),
                    base_file.ctx
                );
            }
            if let Some(i) = base_file.first_mismatch(&tokens) {
                eprintln!(
                    "warning: the base's tokens differ from this model's tokenization of {} from \
                     token {i} on ({} there, {:?} here); scoring the base's tokens",
                    args.file.display(),
                    base_file.tokens[i],
                    tokens.get(i)
                );
            }
            let mut session = Session::new(&model, SessionConfig::new(threads, base_file.ctx));
            let t0 = Instant::now();
            println!("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p");
            let report = kl_divergence::compare(
                &mut session,
                &base_file,
                &mut records,
                args.chunks,
                |chunk, _, r| print_chunk(chunk, r),
            )
            .with_context(|| format!("comparing with {}", base.display()))?;
            eprintln!("{:.2} s", t0.elapsed().as_secs_f64());
            print_report(&report);
            Ok(())
        }
        (base, _) => {
            let ctx = args.ctx.unwrap_or(DEFAULT_CTX);
            let mut session = Session::new(&model, SessionConfig::new(threads, ctx));
            let chunks = Chunks::of_text(&session, &tokens, ctx, args.chunks)?;
            eprintln!(
                "{} tokens, {} chunks of {ctx}",
                tokens.len(),
                chunks.n_chunks()
            );
            let t0 = Instant::now();
            let est = match base {
                Some(path) => write_base(&mut session, &chunks, path)?,
                None => weft_engine::perplexity::perplexity(&mut session, &chunks, print_estimate)?,
            };
            println!();
            eprintln!(
                "{:.2} s for {} chunks",
                t0.elapsed().as_secs_f64(),
                est.n_chunks
            );
            println!(
                "Final estimate: PPL = {:.4} +/- {:.5}",
                est.ppl, est.ppl_err
            );
            Ok(())
        }
    }
}

fn write_base(
    session: &mut Session<'_>,
    chunks: &Chunks<'_>,
    path: &Path,
) -> Result<PerplexityEstimate> {
    eprintln!("saving all logits to {}", path.display());
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    kl_divergence::write_base(session, chunks, BufWriter::new(file), print_estimate)
        .with_context(|| format!("writing {}", path.display()))
}

/// llama-perplexity's running estimate, `[chunk]ppl,`.
fn print_estimate(e: &PerplexityEstimate) {
    let mut out = std::io::stdout();
    let _ = write!(out, "[{}]{:.4},", e.chunk, e.ppl);
    let _ = out.flush();
}

fn print_chunk(chunk: usize, r: &KldReport) {
    let pct = |e: Estimate| format!("{:6.3} ± {:6.3} %", 100.0 * e.value, 100.0 * e.err);
    println!(
        "{chunk:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {}    {}",
        r.ppl.value,
        r.ppl.err,
        r.ln_ppl_ratio.value,
        r.ln_ppl_ratio.err,
        r.kld.value,
        r.kld.err,
        pct(r.rms_p_diff),
        pct(r.same_top)
    );
}

fn print_report(r: &KldReport) {
    let est = |e: Estimate| format!("{:10.6} ± {:10.6}", e.value, e.err);
    let pct = |e: Estimate| format!("{:6.3} ± {:5.3} %", 100.0 * e.value, 100.0 * e.err);
    println!();
    println!("====== Perplexity statistics ======");
    println!("Mean PPL(Q)                   : {}", est(r.ppl));
    println!("Mean PPL(base)                : {}", est(r.ppl_base));
    println!(
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * r.ln_ppl_correlation
    );
    println!("Mean ln(PPL(Q)/PPL(base))     : {}", est(r.ln_ppl_ratio));
    println!("Mean PPL(Q)/PPL(base)         : {}", est(r.ppl_ratio));
    println!("Mean PPL(Q)-PPL(base)         : {}", est(r.ppl_diff));
    println!();
    println!("====== KL divergence statistics ======");
    println!("Mean    KLD: {}", est(r.kld));
    for q in &r.kld_quantiles {
        println!("{} KLD: {:10.6}", quantile_label(q), q.value);
    }
    println!();
    println!("====== Token probability statistics ======");
    println!("Mean    Δp: {}", pct(r.p_diff));
    for q in &r.p_diff_quantiles {
        println!("{} Δp: {:6.3}%", quantile_label(q), 100.0 * q.value);
    }
    println!("RMS Δp    : {}", pct(r.rms_p_diff));
    println!("Same top p: {}", pct(r.same_top));
}

/// llama.cpp's seven-character names: "Maximum", "99.9%  ", "Median ", " 5.0%  ", "Minimum".
fn quantile_label(q: &Quantile) -> String {
    match q.fraction {
        f if f >= 1.0 => "Maximum".into(),
        f if f <= 0.0 => "Minimum".into(),
        0.5 => "Median ".into(),
        f => format!("{:4.1}%  ", 100.0 * f),
    }
}
