//! Perplexity the way llama.cpp's `llama-perplexity` measures it, so the two can be compared
//! figure for figure: the text is cut into non-overlapping chunks of `ctx` tokens, the first
//! token of each chunk is replaced by BOS when the model adds one, and only the second half of
//! each chunk is scored (every scored token then sees at least ctx/2 tokens of context).
//! `Chunks` is that cutting and scoring; the KL-divergence comparison walks the same chunks.

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

/// The chunks llama.cpp scores in a token sequence.
pub struct Chunks<'t> {
    tokens: &'t [u32],
    ctx: usize,
    len: usize,
    /// Replaces each chunk's first token when the model adds BOS.
    bos: Option<u32>,
}

impl<'t> Chunks<'t> {
    /// The chunks of a tokenized text (with BOS as the model wants): all whole chunks of
    /// `ctx`, at most `max_chunks`. llama.cpp asks for at least two chunks' worth of tokens.
    pub fn of_text(
        session: &Session<'_>,
        tokens: &'t [u32],
        ctx: usize,
        max_chunks: Option<usize>,
    ) -> Result<Chunks<'t>, EngineError> {
        if ctx < 4 || tokens.len() < 2 * ctx {
            return Err(EngineError::TextTooShort {
                needed: 2 * ctx.max(4),
                ctx,
                have: tokens.len(),
            });
        }
        let len = (tokens.len() / ctx)
            .min(max_chunks.unwrap_or(usize::MAX))
            .max(1);
        Ok(Chunks::new(session, tokens, ctx, len))
    }

    /// The first `len` chunks of `tokens`, which holds at least `len * ctx` of them
    /// (`ctx >= 4`).
    pub(crate) fn new(
        session: &Session<'_>,
        tokens: &'t [u32],
        ctx: usize,
        len: usize,
    ) -> Chunks<'t> {
        assert!(ctx >= 4 && tokens.len() >= len * ctx);
        let tokenizer = &session.model().tokenizer;
        let bos = if tokenizer.add_bos() {
            tokenizer.bos()
        } else {
            None
        };
        Chunks {
            tokens,
            ctx,
            len,
            bos,
        }
    }

    pub fn n_chunks(&self) -> usize {
        self.len
    }

    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// The tokens the chunks cover, as they are in the text (no BOS substituted).
    pub fn tokens(&self) -> &'t [u32] {
        &self.tokens[..self.len * self.ctx]
    }

    pub fn scored_per_chunk(&self) -> usize {
        scored_per_chunk(self.ctx)
    }

    /// Evaluates chunk `chunk` from an empty cache and passes each scored position's logits
    /// and the text's next token to `on_scored`, in order.
    pub fn score(
        &self,
        session: &mut Session<'_>,
        chunk: usize,
        mut on_scored: impl FnMut(&[f32], u32),
    ) -> Result<(), EngineError> {
        let window = &self.tokens[chunk * self.ctx..(chunk + 1) * self.ctx];
        let mut input = window.to_vec();
        if let Some(bos) = self.bos {
            input[0] = bos;
        }
        let first = self.ctx / 2;
        session.score(&input, |i, logits| {
            if i >= first && i + 1 < self.ctx {
                on_scored(logits, window[i + 1]);
            }
        })
    }
}

/// Scored positions in a chunk of `ctx` tokens: ctx/2 .. ctx-1 (the last has no next token).
pub(crate) fn scored_per_chunk(ctx: usize) -> usize {
    ctx - 1 - ctx / 2
}

/// Running sums of the scored tokens' negative log-likelihoods.
#[derive(Default)]
pub(crate) struct NllSum {
    nll: f64,
    nll2: f64,
    count: usize,
}

impl NllSum {
    pub(crate) fn add(&mut self, logits: &[f32], target: u32) {
        let lp = log_softmax_at(logits, target as usize);
        self.nll -= lp;
        self.nll2 += lp * lp;
        self.count += 1;
    }

    pub(crate) fn estimate(&self, chunk: usize, n_chunks: usize) -> PerplexityEstimate {
        let mean = self.nll / self.count as f64;
        let var = self.nll2 / self.count as f64 - mean * mean;
        let err = if var > 0.0 && self.count > 1 {
            (var / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        };
        let ppl = mean.exp();
        PerplexityEstimate {
            chunk,
            n_chunks,
            ppl,
            ppl_err: err * ppl,
        }
    }
}

/// Scores every chunk, calling `on_chunk` with the running estimate; returns the final one.
pub fn perplexity(
    session: &mut Session<'_>,
    chunks: &Chunks<'_>,
    mut on_chunk: impl FnMut(&PerplexityEstimate),
) -> Result<PerplexityEstimate, EngineError> {
    let mut sum = NllSum::default();
    let mut estimate = sum.estimate(0, chunks.n_chunks());
    for chunk in 0..chunks.n_chunks() {
        chunks.score(session, chunk, |logits, target| sum.add(logits, target))?;
        estimate = sum.estimate(chunk + 1, chunks.n_chunks());
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
