//! One conversation with a model: a sequence whose KV cache persists between calls, so a
//! follow-up prompt that extends the previous one only pays for its new tokens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weft_kernels::pool::ThreadPool;
use weft_models::arch::ForwardScratch;
use weft_models::batch::{chunk_end, Batch, LogitsWanted, Position, SeqSlice, TokenEmbedding};
use weft_models::kv_cache::KvCache;
use weft_models::media::PromptMedia;
use weft_models::TextModel;

use crate::blocks::{BlockManager, SeqBlocks, BLOCK_SIZE};
pub use crate::generation::{FinishReason, GenerateParams};
use crate::generation::{Generation, OutputOptions};
use crate::EngineError;

/// Default most tokens per forward pass (llama.cpp's default micro-batch).
pub const MAX_BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Threads for the kernels.
    pub n_threads: usize,
    /// Context size in tokens (prompt plus generated).
    pub ctx_size: usize,
    /// Most tokens evaluated in one forward pass (prompts are split into chunks this long).
    pub max_batch: usize,
}

impl SessionConfig {
    pub fn new(n_threads: usize, ctx_size: usize) -> SessionConfig {
        SessionConfig {
            n_threads,
            ctx_size,
            max_batch: MAX_BATCH,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateOutcome {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the cache and not evaluated again.
    pub reused_tokens: usize,
    pub generated: Vec<u32>,
    pub prompt_time: Duration,
    pub generate_time: Duration,
}

pub struct Session<'m> {
    model: &'m TextModel,
    config: SessionConfig,
    pool: ThreadPool,
    kv: KvCache,
    /// One sequence, so no prefix hashing: `prefill` compares tokens directly.
    blocks: BlockManager,
    /// Tokens whose K/V are in the cache, in order.
    tokens: Vec<u32>,
    seq: SeqBlocks,
    positions: Vec<Position>,
    /// Embeddings and positions of the cached sequence's prompt.
    media: PromptMedia,
    scratch: ForwardScratch,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m TextModel, config: SessionConfig) -> Session<'m> {
        let n_blocks = config.ctx_size.div_ceil(BLOCK_SIZE);
        Session {
            model,
            pool: ThreadPool::new(config.n_threads),
            kv: KvCache::new(model.decoder.kv_shape(), BLOCK_SIZE, n_blocks),
            blocks: BlockManager::new(n_blocks, false),
            tokens: Vec::new(),
            seq: SeqBlocks::default(),
            positions: Vec::new(),
            media: PromptMedia::default(),
            scratch: ForwardScratch::default(),
            config,
        }
    }

    /// The session's thread pool (an encoder can run on it between turns).
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    pub fn model(&self) -> &'m TextModel {
        self.model
    }

    pub fn ctx_size(&self) -> usize {
        self.config.ctx_size
    }

    /// Tokens currently held in the KV cache.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the cached sequence.
    pub fn reset(&mut self) {
        self.truncate(0);
        self.media = PromptMedia::default();
    }

    fn truncate(&mut self, len: usize) {
        let kept = self.blocks.truncate(&mut self.seq, len);
        self.tokens.truncate(kept);
    }

    /// Evaluates `new` after the cached tokens, in chunks of at most `max_batch` that do not
    /// split a bidirectional span of the media (a longer span is a chunk of its own), passing
    /// each chunk's logits rows to `on_chunk(index of the chunk's first token, rows)`. `Last`
    /// asks for the final token's row only; `All` for every row of every chunk.
    fn extend(
        &mut self,
        new: &[u32],
        logits: LogitsWanted,
        mut on_chunk: impl FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        let total = self.tokens.len() + new.len();
        if total > self.config.ctx_size {
            return Err(EngineError::ContextOverflow {
                tokens: total,
                ctx_size: self.config.ctx_size,
            });
        }
        if !self.blocks.allocate(&mut self.seq, total) {
            return Err(EngineError::ContextOverflow {
                tokens: total,
                ctx_size: self.config.ctx_size,
            });
        }
        let base = self.tokens.len();
        while self.tokens.len() < total {
            let cached = self.tokens.len();
            let spans = &self.media.bidirectional;
            let upto = chunk_end(
                cached,
                cached + self.config.max_batch,
                spans.iter().cloned(),
            )
            .min(total);
            let chunk = &new[cached - base..upto - base];
            let logits = if upto == total || logits == LogitsWanted::All {
                logits
            } else {
                LogitsWanted::None
            };
            self.positions.clear();
            self.positions
                .extend((cached..cached + chunk.len()).map(|j| self.media.position(j)));
            // The media's rows are in token order: take the run inside this chunk.
            let rows = &self.media.embeddings;
            let first = rows.partition_point(|(j, _)| *j < cached);
            let end = rows.partition_point(|(j, _)| *j < cached + chunk.len());
            let embeddings: Vec<TokenEmbedding<'_>> = rows[first..end]
                .iter()
                .map(|(j, values)| TokenEmbedding {
                    token: j - cached,
                    values,
                })
                .collect();
            let seqs = [SeqSlice {
                start: 0,
                len: chunk.len(),
                cached,
                block_table: self.seq.table(),
                logits,
                bidirectional: spans,
            }];
            let batch = Batch {
                tokens: chunk,
                positions: &self.positions,
                seqs: &seqs,
                embeddings: &embeddings,
            };
            let out =
                self.model
                    .decoder
                    .forward(&batch, &mut self.kv, &self.pool, &mut self.scratch)?;
            on_chunk(cached, out);
            self.tokens.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Evaluates `tokens` after the cached ones (logits of the last token only, discarded):
    /// what a benchmark times.
    pub fn append(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        self.extend(tokens, LogitsWanted::Last, |_, _| {})
    }

    /// Makes the cache hold exactly `prompt` (with `media`), reusing its longest cached
    /// prefix, and returns the logits after its last token plus how many tokens were reused.
    /// Placeholder tokens look alike whatever they stand for, so reuse stops at the first
    /// media token of either prompt.
    fn prefill(
        &mut self,
        prompt: &[u32],
        media: PromptMedia,
    ) -> Result<(Vec<f32>, usize), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > self.config.ctx_size {
            return Err(EngineError::ContextOverflow {
                tokens: prompt.len(),
                ctx_size: self.config.ctx_size,
            });
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let shareable = self
            .media
            .first_media_token()
            .min(media.first_media_token());
        // At least the last prompt token is evaluated, to produce its logits.
        self.truncate(common.min(prompt.len() - 1).min(shareable));
        self.media = media;
        let reuse = self.tokens.len();
        let mut last = Vec::new();
        self.extend(&prompt[reuse..], LogitsWanted::Last, |_, out| {
            last.extend_from_slice(out)
        })?;
        Ok((last, reuse))
    }

    /// Generates a reply to `prompt` (token ids, template already applied), streaming text
    /// through `on_text`. The cache keeps prompt and reply for the next call.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &AtomicBool,
        on_text: impl FnMut(&str),
    ) -> Result<GenerateOutcome, EngineError> {
        self.generate_with_media(prompt, PromptMedia::default(), params, cancel, on_text)
    }

    /// [`Session::generate`] for a prompt with media (images, audio): `media` gives the
    /// embeddings of its placeholder tokens and, for multimodal RoPE, its positions.
    pub fn generate_with_media(
        &mut self,
        prompt: &[u32],
        media: PromptMedia,
        params: &GenerateParams,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerateOutcome, EngineError> {
        let mut generation = Generation::new(params, OutputOptions::default(), None)?;
        let t0 = Instant::now();
        let (mut logits, reused) = self.prefill(prompt, media)?;
        let prompt_time = t0.elapsed();
        let t1 = Instant::now();
        let tokenizer = &self.model.tokenizer;
        let mut history: Vec<u32> = prompt.to_vec();
        let mut generated = Vec::new();
        let finish_reason = loop {
            let mut step = if cancel.load(Ordering::Relaxed) {
                generation.finish(FinishReason::Cancelled, None, None)
            } else {
                generation.step(tokenizer, &mut logits, &history)
            };
            if step.finish.is_none() && self.tokens.len() >= self.config.ctx_size {
                // The token was sampled but there is no room to evaluate it.
                let end = generation.finish(FinishReason::ContextFull, None, None);
                step.text.push_str(&end.text);
                step.finish = end.finish;
            }
            if !step.text.is_empty() {
                on_text(&step.text);
            }
            if let Some(token) = step.token {
                generated.push(token);
                history.push(token);
            }
            if let Some(reason) = step.finish {
                break reason;
            }
            let token = step.token.expect("a step that does not finish has a token");
            self.extend(&[token], LogitsWanted::Last, |_, out| {
                logits.clear();
                logits.extend_from_slice(out);
            })?;
        };
        Ok(GenerateOutcome {
            finish_reason,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            generated,
            prompt_time,
            generate_time: t1.elapsed(),
        })
    }

    /// Evaluates `tokens` as a fresh sequence and calls `on_logits(index, row)` for every
    /// position's logits (used for perplexity).
    pub fn score(
        &mut self,
        tokens: &[u32],
        on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.score_with_media(tokens, PromptMedia::default(), on_logits)
    }

    /// [`Session::score`] for a sequence with media (see [`Session::generate_with_media`]).
    pub fn score_with_media(
        &mut self,
        tokens: &[u32],
        media: PromptMedia,
        mut on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.reset();
        self.media = media;
        let vocab = self.model.decoder.vocab_size();
        self.extend(tokens, LogitsWanted::All, |start, out| {
            for (i, row) in out.chunks_exact(vocab).enumerate() {
                on_logits(start + i, row);
            }
        })
    }
}
