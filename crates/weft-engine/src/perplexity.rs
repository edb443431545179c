//! Perplexity the way llama.cpp's `llama-perplexity` measures it, so the two can be compared
//! figure for figure: the text is cut into non-overlapping chunks of `ctx` tokens, the first
//! token of each chunk is replaced by BOS when the model adds one, and only the second half of
//! each chunk is scored (every scored token then sees at least ctx/2 tokens of context).

use crate::session::Session;
use crate::EngineError;

/// Result after each chunk: running estimate and its standard error.
#[derive(Clone, Copy, Debug)]
pub struct PerplexityEstimate {
    pub chunk: usize,
    pub n_chunks: usize,
    pub ppl: f64,
    pub ppl_err: f64,
}

/// Scores `tokens` (already tokenized with BOS as the model wants) in chunks of `ctx` (at
/// most `max_chunks` of them), calling `on_chunk` with the running estimate; returns the final
/// one.
pub fn perplexity(
    session: &mut Session<'_>,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(&PerplexityEstimate),
) -> Result<PerplexityEstimate, EngineError> {
    if ctx < 4 || tokens.len() < 2 * ctx {
        return Err(EngineError::TextTooShort {
            needed: 2 * ctx.max(4),
            ctx,
            have: tokens.len(),
        });
    }
    let tokenizer = &session.model().tokenizer;
    let bos = if tokenizer.add_bos() {
        tokenizer.bos()
    } else {
        None
    };
    let n_chunks = (tokens.len() / ctx)
        .min(max_chunks.unwrap_or(usize::MAX))
        .max(1);
    let first = ctx / 2;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut chunk_tokens = Vec::with_capacity(ctx);
    let mut estimate = PerplexityEstimate {
        chunk: 0,
        n_chunks,
        ppl: f64::NAN,
        ppl_err: f64::NAN,
    };
    for chunk in 0..n_chunks {
        chunk_tokens.clear();
        chunk_tokens.extend_from_slice(&tokens[chunk * ctx..(chunk + 1) * ctx]);
        if let Some(bos) = bos {
            chunk_tokens[0] = bos;
        }
        // Targets are the original tokens: position i predicts token i + 1.
        let targets = &tokens[chunk * ctx..(chunk + 1) * ctx];
        session.score(&chunk_tokens, |i, logits| {
            if i >= first && i + 1 < ctx {
                let lp = log_softmax_at(logits, targets[i + 1] as usize);
                nll -= lp;
                nll2 += lp * lp;
                count += 1;
            }
        })?;
        let mean = nll / count as f64;
        let var = nll2 / count as f64 - mean * mean;
        let err = if var > 0.0 && count > 1 {
            (var / (count - 1) as f64).sqrt()
        } else {
            0.0
        };
        let ppl = mean.exp();
        estimate = PerplexityEstimate {
            chunk: chunk + 1,
            n_chunks,
            ppl,
            ppl_err: err * ppl,
        };
        on_chunk(&estimate);
    }
    Ok(estimate)
}

/// log softmax(logits)[target], accumulated in f64.
fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    f64::from(logits[target] - max) - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::log_softmax_at;

    #[test]
    fn log_softmax_of_uniform_logits() {
        let l = [0.5f32; 4];
        assert!((log_softmax_at(&l, 2) - (0.25f64).ln()).abs() < 1e-12);
    }
}
