//! The serving engine: one thread that owns the model's KV cache and thread pool and runs
//! scheduler steps, each one batched forward pass over every scheduled token of every
//! sequence. Callers talk to it through [`EngineHandle`]: requests go in over a channel,
//! results come back through each request's [`EventSink`].
//!
//! A panic on the engine thread never takes the server down: one in the forward pass fails
//! the requests of that step, one while sampling a request fails that request, and one
//! anywhere else fails every request in flight and restarts the scheduler from empty. Each
//! failed request gets [`Event::Failed`]; the rest go on.

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use weft_kernels::pool::ThreadPool;
use weft_models::arch::ForwardScratch;
use weft_models::batch::{Batch, BatchError, LogitsWanted, SeqSlice, TokenEmbedding};
use weft_models::kv_cache::KvCache;
use weft_models::media::MediaPositions;
use weft_models::TextModel;

use crate::blocks::{BlockManager, BLOCK_SIZE};
use crate::generation::{
    FinishReason, GenerateParams, Generation, OutputOptions, Step, TokenConstraint,
};
use crate::logprobs::TokenLogprobs;
use crate::media::{EncoderCache, MediaEncoder, RequestMedia};
use crate::scheduler::{Plan, Scheduler, SchedulerConfig, SeqId, Sequence};
use crate::EngineError;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub n_threads: usize,
    /// Most sequences evaluated in one step.
    pub max_num_seqs: usize,
    /// Token budget of one step (decodes plus prefill chunks).
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt plus generated).
    pub max_model_len: usize,
    /// KV cache size in tokens, shared by all sequences.
    pub kv_cache_tokens: usize,
    /// Share KV blocks between requests with the same prefix.
    pub prefix_caching: bool,
    /// Requests allowed to wait for a slot beyond the `max_num_seqs` running ones.
    pub max_waiting: usize,
    /// Media tokens (image rows) the encoders may produce in one step; an item larger than
    /// this still runs, alone in its step.
    pub encoder_budget: usize,
    /// Bytes of encoder outputs kept by content hash for later requests.
    pub encoder_cache_bytes: usize,
}

/// One generation request.
pub struct Request {
    /// Prompt token ids (template already applied).
    pub prompt: Vec<u32>,
    /// The prompt's media items and rotary positions (empty for text).
    pub media: RequestMedia,
    pub params: GenerateParams,
    pub options: OutputOptions,
    pub constraint: Option<Box<dyn TokenConstraint>>,
    pub sink: Box<dyn EventSink>,
}

/// Where a request's results go. `send` returns false when nobody listens any more; the
/// engine then aborts the request.
pub trait EventSink: Send {
    fn send(&mut self, event: Event) -> bool;
}

impl<F: FnMut(Event) -> bool + Send> EventSink for F {
    fn send(&mut self, event: Event) -> bool {
        self(event)
    }
}

#[derive(Debug)]
pub enum Event {
    /// One generated token and the text that became final with it.
    Token {
        token: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// The request is over; nothing follows.
    Finished(Finished),
    /// The engine could not finish the request (an internal error, logged); nothing follows.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text released at the end (held back until then).
    pub text: String,
    /// The stop string that ended generation, if one did.
    pub stop: Option<String>,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the prefix cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// Live counters of the engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_cached: AtomicUsize,
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    pub aborted: AtomicU64,
    /// Internal errors (caught panics, refused batches) that failed requests.
    pub failures: AtomicU64,
    /// Times the scheduler was rebuilt from empty after an error outside a forward pass.
    pub restarts: AtomicU64,
    /// Media items encoded, and the tokens (rows) and microseconds that took.
    pub encoder_runs: AtomicU64,
    pub encoder_tokens: AtomicU64,
    pub encoder_micros: AtomicU64,
    /// Media items whose rows were found in the encoder cache.
    pub encoder_cache_hits: AtomicU64,
    /// Bytes held by the encoder cache.
    pub encoder_cache_bytes: AtomicUsize,
}

enum Command {
    Add(SeqId, Box<Request>),
    Abort(SeqId),
    AbortAll,
    #[cfg(feature = "fault-injection")]
    FailPoolShare(usize),
    Shutdown,
}

/// The caller's side of a running engine. Dropping it stops the engine (aborting what is
/// in flight) and waits for its thread.
pub struct EngineHandle {
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<EngineStats>,
    next_id: AtomicU64,
    /// Requests submitted and not yet finished.
    in_flight: Arc<AtomicUsize>,
    config: EngineConfig,
    vocab_size: usize,
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<TextModel>, config: EngineConfig) -> Result<EngineHandle, EngineError> {
        if config.max_model_len < 2
            || config.max_num_seqs == 0
            || config.max_num_batched_tokens == 0
        {
            return Err(EngineError::Config(
                "max_model_len must be >= 2, max_num_seqs and max_num_batched_tokens >= 1".into(),
            ));
        }
        // One sequence of the longest allowed length must always fit, or it could never run.
        let n_blocks = config
            .kv_cache_tokens
            .max(config.max_model_len)
            .div_ceil(BLOCK_SIZE);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        stats.kv_blocks_total.store(n_blocks, Ordering::Relaxed);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let vocab_size = model.decoder.vocab_size();
        let new_scheduler = {
            let config = config.clone();
            Box::new(move || {
                Scheduler::new(
                    SchedulerConfig {
                        max_num_seqs: config.max_num_seqs,
                        max_num_batched_tokens: config.max_num_batched_tokens,
                        encoder_budget: config.encoder_budget,
                    },
                    BlockManager::new(n_blocks, config.prefix_caching),
                )
            })
        };
        let worker = Worker {
            kv: KvCache::new(model.decoder.kv_shape(), BLOCK_SIZE, n_blocks),
            pool: ThreadPool::new(config.n_threads),
            scheduler: new_scheduler(),
            new_scheduler,
            model,
            max_model_len: config.max_model_len,
            requests: HashMap::new(),
            encoder_cache: EncoderCache::new(config.encoder_cache_bytes),
            scratch: ForwardScratch::default(),
            stats: Arc::clone(&stats),
            in_flight: Arc::clone(&in_flight),
        };
        let thread = std::thread::Builder::new()
            .name("weft-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            tx,
            thread: Some(thread),
            stats,
            next_id: AtomicU64::new(1),
            in_flight,
            config,
            vocab_size,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Checks `request` and queues it; the result says its id for [`EngineHandle::abort`].
    pub fn submit(&self, request: Request) -> Result<SeqId, EngineError> {
        Ok(self.submit_all(vec![request])?[0])
    }

    /// Checks `requests` and queues all of them or none: the choices of one HTTP request
    /// either all get a place in the queue or the request is refused whole, so that a
    /// request never ties up places it cannot use. More requests than the queue can ever
    /// hold is [`EngineError::TooManyRequests`]; more than it has free now is
    /// [`EngineError::QueueFull`].
    pub fn submit_all(&self, requests: Vec<Request>) -> Result<Vec<SeqId>, EngineError> {
        for request in &requests {
            self.validate(request)?;
        }
        let limit = self.config.max_num_seqs + self.config.max_waiting;
        let count = requests.len();
        if count > limit {
            return Err(EngineError::TooManyRequests { count, limit });
        }
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n + count <= limit).then_some(n + count)
            })
            .map_err(|_| EngineError::QueueFull { limit })?;
        let mut ids = Vec::with_capacity(count);
        for (sent, request) in requests.into_iter().enumerate() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if self.tx.send(Command::Add(id, Box::new(request))).is_err() {
                self.in_flight.fetch_sub(count - sent, Ordering::SeqCst);
                return Err(EngineError::Stopped);
            }
            ids.push(id);
        }
        Ok(ids)
    }

    fn validate(&self, request: &Request) -> Result<(), EngineError> {
        let prompt = request.prompt.len();
        if prompt == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt >= self.config.max_model_len {
            return Err(EngineError::ContextOverflow {
                tokens: prompt,
                ctx_size: self.config.max_model_len,
            });
        }
        request
            .media
            .check(prompt)
            .map_err(EngineError::InvalidMedia)?;
        let biased = request.params.sampling.logit_bias.iter().map(|(t, _)| t);
        if let Some(&bad) = request
            .prompt
            .iter()
            .chain(biased)
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(EngineError::TokenOutOfRange {
                token: bad,
                vocab_size: self.vocab_size,
            });
        }
        request
            .params
            .sampling
            .validate()
            .map_err(EngineError::Sampling)
    }

    /// Stops request `id` (a no-op when it already finished); it ends with `Cancelled`.
    pub fn abort(&self, id: SeqId) {
        let _ = self.tx.send(Command::Abort(id));
    }

    /// Stops every request in flight (they end with `Cancelled`).
    pub fn abort_all(&self) {
        let _ = self.tx.send(Command::AbortAll);
    }

    /// Requests submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether the engine thread is still running (it stops only when the handle drops).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Makes share `index` of the engine's next thread-pool job panic (0 runs on the engine
    /// thread itself, inside the forward pass): tests use it to show that such a panic fails
    /// only the requests of that step.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_pool_job(&self, index: usize) {
        let _ = self.tx.send(Command::FailPoolShare(index));
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request's state on the engine thread, beside its scheduler sequence.
struct Active {
    generation: Generation,
    sink: Box<dyn EventSink>,
    /// The prompt's media items, in token order.
    media: Vec<ActiveMedia>,
    positions: MediaPositions,
    /// Token ranges of its bidirectional media items, for every chunk's `SeqSlice`.
    bidirectional: Vec<Range<usize>>,
}

/// A media item's encoder, and its rows once encoded or found in the cache (kept until the
/// request ends: a preempted request recomputes its prompt from them).
struct ActiveMedia {
    encoder: Arc<dyn MediaEncoder>,
    rows: Option<Arc<[f32]>>,
}

struct Worker {
    model: Arc<TextModel>,
    kv: KvCache,
    pool: ThreadPool,
    scheduler: Scheduler,
    /// Builds an empty scheduler (at start, and to restart after an internal error).
    new_scheduler: Box<dyn Fn() -> Scheduler + Send>,
    max_model_len: usize,
    requests: HashMap<SeqId, Active>,
    encoder_cache: EncoderCache,
    scratch: ForwardScratch,
    stats: Arc<EngineStats>,
    in_flight: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Command>) {
        let mut stop = false;
        while !stop {
            let turn = catch_unwind(AssertUnwindSafe(|| {
                let mut stop = false;
                // Block only when there is nothing to do.
                if self.scheduler.is_idle() {
                    match rx.recv() {
                        Ok(cmd) => stop = self.handle(cmd),
                        Err(_) => return true,
                    }
                }
                while let Ok(cmd) = rx.try_recv() {
                    stop |= self.handle(cmd);
                }
                if !stop {
                    self.step();
                }
                stop
            }));
            stop = match turn {
                Ok(stop) => stop,
                Err(panic) => {
                    self.restart(&panic_message(panic.as_ref()));
                    false
                }
            };
            self.publish_stats();
        }
        for id in self.scheduler.ids() {
            self.end(id, FinishReason::Cancelled);
        }
        self.publish_stats();
    }

    /// Fails every request in flight and starts over with an empty scheduler: after a panic
    /// outside the forward pass, the scheduler's bookkeeping cannot be trusted. The KV cache
    /// memory is kept; no block of it is in use any more.
    fn restart(&mut self, message: &str) {
        tracing::error!(
            "engine error, failing {} requests and restarting the scheduler: {message}",
            self.requests.len()
        );
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        self.scheduler = (self.new_scheduler)();
        for (_, mut active) in self.requests.drain() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            active.sink.send(Event::Failed(internal_error(message)));
        }
    }

    /// Applies a command; true when it asks the engine to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Add(id, req) => self.add(id, *req),
            Command::Abort(id) => {
                if self.requests.contains_key(&id) {
                    self.stats.aborted.fetch_add(1, Ordering::Relaxed);
                    self.end(id, FinishReason::Cancelled);
                }
            }
            Command::AbortAll => {
                for id in self.scheduler.ids() {
                    self.stats.aborted.fetch_add(1, Ordering::Relaxed);
                    self.end(id, FinishReason::Cancelled);
                }
            }
            #[cfg(feature = "fault-injection")]
            Command::FailPoolShare(index) => self.pool.fail_next_job(index),
            Command::Shutdown => return true,
        }
        false
    }

    fn add(&mut self, id: SeqId, req: Request) {
        let mut sink = req.sink;
        let generation = match Generation::new(&req.params, req.options, req.constraint) {
            Ok(g) => g,
            Err(_) => {
                // Validated by `submit`; report an empty result rather than nothing.
                sink.send(Event::Finished(Finished {
                    reason: FinishReason::Stop,
                    text: String::new(),
                    stop: None,
                    prompt_tokens: req.prompt.len(),
                    cached_tokens: 0,
                    completion_tokens: 0,
                }));
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        let bidirectional = req
            .media
            .items
            .iter()
            .filter(|item| item.span.bidirectional)
            .map(|item| item.span.range())
            .collect();
        self.scheduler
            .add(Sequence::with_media(id, req.prompt, req.media.spans()));
        let mut media = Vec::with_capacity(req.media.items.len());
        for (index, item) in req.media.items.into_iter().enumerate() {
            let rows = self.encoder_cache.get(item.span.hash);
            if rows.is_some() {
                self.stats
                    .encoder_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                self.scheduler.media_ready(id, index);
            }
            media.push(ActiveMedia {
                encoder: item.encoder,
                rows,
            });
        }
        let positions = req.media.positions;
        self.requests.insert(
            id,
            Active {
                generation,
                sink,
                media,
                positions,
                bidirectional,
            },
        );
    }

    /// Runs the encoders the plan lists (or finds their output in the cache, encoded by an
    /// earlier item of this step) and fails the requests whose encoder fails; their chunks
    /// leave the plan.
    fn encode(&mut self, plan: &mut Plan) {
        for &(id, index) in &plan.encode {
            if !self.requests.contains_key(&id) {
                continue;
            }
            let span = self.scheduler.get(id).expect("active sequence").media[index];
            let rows = match self.encoder_cache.get(span.hash) {
                Some(rows) => {
                    self.stats
                        .encoder_cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    Ok(rows)
                }
                None => self.run_encoder(id, index, span.len),
            };
            match rows {
                Ok(rows) => {
                    self.encoder_cache.insert(span.hash, Arc::clone(&rows));
                    self.requests.get_mut(&id).expect("active request").media[index].rows =
                        Some(rows);
                    self.scheduler.media_ready(id, index);
                }
                Err(message) => {
                    tracing::error!("media encoder failed, failing request {id}: {message}");
                    self.fail(id, &format!("media encoder: {message}"));
                }
            }
        }
        self.stats
            .encoder_cache_bytes
            .store(self.encoder_cache.bytes(), Ordering::Relaxed);
        plan.chunks.retain(|c| self.requests.contains_key(&c.id));
    }

    /// Runs the encoder of media item `index` of request `id`, which must give `len` rows.
    fn run_encoder(&mut self, id: SeqId, index: usize, len: usize) -> Result<Arc<[f32]>, String> {
        let started = std::time::Instant::now();
        let encoder = &self.requests[&id].media[index].encoder;
        let pool = &self.pool;
        let rows = catch_unwind(AssertUnwindSafe(|| encoder.encode(pool)))
            .unwrap_or_else(|panic| Err(panic_message(panic.as_ref())))?;
        let width = self.model.decoder.config().n_embd;
        if rows.len() != len * width {
            return Err(format!(
                "a media encoder gave {} values for {len} tokens of {width}",
                rows.len()
            ));
        }
        let s = &self.stats;
        s.encoder_runs.fetch_add(1, Ordering::Relaxed);
        s.encoder_tokens.fetch_add(len as u64, Ordering::Relaxed);
        s.encoder_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(rows.into())
    }

    /// One scheduler step: a batched forward pass, then sampling for every sequence whose
    /// logits came out.
    fn step(&mut self) {
        let mut plan = self.scheduler.schedule();
        if !plan.encode.is_empty() {
            self.encode(&mut plan);
        }
        if plan.chunks.is_empty() {
            return;
        }
        let vocab = self.model.decoder.vocab_size();
        let forward = match catch_unwind(AssertUnwindSafe(|| self.forward(&plan))) {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(refused)) => Err(refused),
            Err(panic) => Err(panic_message(panic.as_ref())),
        };
        let mut rows = match forward {
            Ok(rows) => rows,
            Err(message) => {
                tracing::error!(
                    "forward pass failed, failing its {} requests: {message}",
                    plan.chunks.len()
                );
                // Nothing of this step is committed: the blocks it wrote go back unkeyed.
                for c in &plan.chunks {
                    self.fail(c.id, &message);
                }
                return;
            }
        };
        self.scheduler.complete(&plan);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let tokenizer = &self.model.tokenizer;
        let mut ended = Vec::new();
        let mut failed = Vec::new();
        for (c, row) in plan
            .chunks
            .iter()
            .filter(|c| c.sample)
            .zip(rows.chunks_exact_mut(vocab))
        {
            let seq = self.scheduler.get(c.id).expect("scheduled sequence");
            let active = self.requests.get_mut(&c.id).expect("active request");
            let sampled = catch_unwind(AssertUnwindSafe(|| {
                active.generation.step(tokenizer, row, &seq.tokens)
            }));
            let mut step = match sampled {
                Ok(step) => step,
                Err(panic) => {
                    failed.push((c.id, panic_message(panic.as_ref())));
                    continue;
                }
            };
            // The new token is evaluated next step; it needs a place in the context.
            if step.finish.is_none() && seq.tokens.len() + 1 >= self.max_model_len {
                let end = active
                    .generation
                    .finish(FinishReason::ContextFull, None, None);
                step.text.push_str(&end.text);
                step.finish = end.finish;
            }
            let Step {
                token,
                text,
                logprobs,
                finish,
            } = step;
            let mut listening = true;
            if let Some(token) = token {
                listening = active.sink.send(Event::Token {
                    token,
                    text,
                    logprobs,
                });
                self.scheduler.append(c.id, token);
                if let Some(reason) = finish {
                    ended.push((c.id, reason, String::new()));
                }
            } else if let Some(reason) = finish {
                ended.push((c.id, reason, text));
            }
            if !listening {
                self.stats.aborted.fetch_add(1, Ordering::Relaxed);
                ended.push((c.id, FinishReason::Cancelled, String::new()));
            }
        }
        for (id, message) in failed {
            tracing::error!("sampling failed, failing request {id}: {message}");
            self.fail(id, &message);
        }
        for (id, reason, text) in ended {
            self.end_with_text(id, reason, text);
        }
    }

    /// Evaluates the plan's chunks in one forward pass and returns the sampled rows' logits.
    fn forward(&mut self, plan: &Plan) -> Result<Vec<f32>, String> {
        let mut tokens = Vec::with_capacity(plan.num_tokens());
        let mut positions = Vec::with_capacity(plan.num_tokens());
        let mut embeddings = Vec::new();
        let width = self.model.decoder.config().n_embd;
        for c in &plan.chunks {
            let seq = self.scheduler.get(c.id).expect("scheduled sequence");
            let active = &self.requests[&c.id];
            let offset = tokens.len();
            tokens.extend_from_slice(&seq.tokens[c.start..c.start + c.len]);
            positions.extend((c.start..c.start + c.len).map(|j| active.positions.at(j)));
            let range = c.start..c.start + c.len;
            for (span, item) in seq.media.iter().zip(&active.media) {
                let first = span.start.max(range.start);
                let end = (span.start + span.len).min(range.end);
                if first >= end {
                    continue;
                }
                let rows = item
                    .rows
                    .as_ref()
                    .ok_or_else(|| format!("request {}: a media item was not encoded", c.id))?;
                embeddings.extend((first..end).map(|j| TokenEmbedding {
                    token: offset + j - c.start,
                    values: &rows[(j - span.start) * width..(j - span.start + 1) * width],
                }));
            }
        }
        let mut start = 0;
        let seqs: Vec<SeqSlice<'_>> = plan
            .chunks
            .iter()
            .map(|c| {
                let seq = self.scheduler.get(c.id).expect("scheduled sequence");
                let slice = SeqSlice {
                    start,
                    len: c.len,
                    cached: c.start,
                    block_table: seq.block_table(),
                    logits: if c.sample {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    },
                    bidirectional: &self.requests[&c.id].bidirectional,
                };
                start += c.len;
                slice
            })
            .collect();
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            embeddings: &embeddings,
        };
        self.model
            .decoder
            .forward(&batch, &mut self.kv, &self.pool, &mut self.scratch)
            .map(<[f32]>::to_vec)
            .map_err(|e: BatchError| e.to_string())
    }

    fn end(&mut self, id: SeqId, reason: FinishReason) {
        let text = match self.requests.get_mut(&id) {
            Some(a) => a.generation.finish(reason, None, None).text,
            None => String::new(),
        };
        self.end_with_text(id, reason, text);
    }

    /// Removes a request that hit an internal error and tells its listener.
    fn fail(&mut self, id: SeqId, message: &str) {
        let Some(mut active) = self.requests.remove(&id) else {
            return;
        };
        self.scheduler.remove(id);
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.publish_stats();
        active.sink.send(Event::Failed(internal_error(message)));
    }

    /// Removes a request and sends its final event.
    fn end_with_text(&mut self, id: SeqId, reason: FinishReason, text: String) {
        let Some(mut active) = self.requests.remove(&id) else {
            return;
        };
        let seq = self
            .scheduler
            .remove(id)
            .expect("sequence of an active request");
        // Counters first, so that whoever hears of the end sees the freed blocks.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.publish_stats();
        active.sink.send(Event::Finished(Finished {
            reason,
            text,
            stop: active.generation.matched_stop().map(str::to_owned),
            prompt_tokens: seq.prompt_len,
            cached_tokens: seq.cached_prompt.unwrap_or(0),
            completion_tokens: active.generation.generated(),
        }));
    }

    fn publish_stats(&self) {
        let s = &self.stats;
        let b = self.scheduler.blocks();
        s.running
            .store(self.scheduler.num_running(), Ordering::Relaxed);
        s.waiting
            .store(self.scheduler.num_waiting(), Ordering::Relaxed);
        s.kv_blocks_used.store(b.used_blocks(), Ordering::Relaxed);
        s.kv_blocks_cached
            .store(b.cached_blocks(), Ordering::Relaxed);
        let p = b.prefix_stats();
        s.prefix_queried_tokens
            .store(p.queried_tokens, Ordering::Relaxed);
        s.prefix_hit_tokens.store(p.hit_tokens, Ordering::Relaxed);
        s.preemptions
            .store(self.scheduler.preemptions(), Ordering::Relaxed);
    }
}

/// The text of a caught panic's payload (a `&str` or `String` for `panic!` with a message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// What a failed request's listener is told.
fn internal_error(message: &str) -> String {
    format!("internal error in the engine, the request was dropped: {message}")
}
