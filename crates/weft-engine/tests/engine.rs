//! The batched engine against a real model: many sequences in one forward pass (chunked
//! prefill mixed with decodes, prefix sharing, preemption) must give the tokens each
//! sequence gets alone; aborts free their blocks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use weft_engine::blocks::MediaSpan;
use weft_engine::engine::{EngineConfig, EngineHandle, Event, Finished, Request};
use weft_engine::generation::{FinishReason, GenerateParams, OutputOptions, TokenConstraint};
use weft_engine::media::{MediaEncoder, MediaItem, RequestMedia};
use weft_engine::sampler::SamplingParams;
use weft_kernels::pool::ThreadPool;
use weft_models::media::MediaPositions;
use weft_models::TextModel;

fn model() -> Option<Arc<TextModel>> {
    let path = weft_test_support::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    Some(Arc::new(TextModel::load(&path).unwrap()))
}

fn config(max_num_seqs: usize, budget: usize, kv_tokens: usize) -> EngineConfig {
    EngineConfig {
        n_threads: 2,
        max_num_seqs,
        max_num_batched_tokens: budget,
        max_model_len: 256,
        kv_cache_tokens: kv_tokens,
        prefix_caching: true,
        max_waiting: 64,
        encoder_budget: 2048,
        encoder_cache_bytes: 64 << 20,
    }
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
    }
}

/// Submits a request whose events arrive on the returned channel.
fn submit(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    params: GenerateParams,
) -> (u64, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let id = engine
        .submit(Request {
            prompt,
            media: RequestMedia::default(),
            params,
            options: OutputOptions {
                ignore_eos: true,
                logprobs: None,
            },
            constraint: None,
            sink: Box::new(move |e| tx.send(e).is_ok()),
        })
        .unwrap();
    (id, rx)
}

/// Waits for a request's end: its tokens and final record.
fn collect(rx: &mpsc::Receiver<Event>) -> (Vec<u32>, Finished) {
    let mut tokens = Vec::new();
    loop {
        match rx
            .recv_timeout(Duration::from_secs(120))
            .expect("engine answers")
        {
            Event::Token { token, .. } => tokens.push(token),
            Event::Finished(f) => return (tokens, f),
            Event::Failed(message) => panic!("the request failed: {message}"),
        }
    }
}

fn prompts(model: &TextModel) -> Vec<Vec<u32>> {
    let system = "You are a helpful assistant who answers in one short paragraph. ".repeat(3);
    [
        "Why is the sky blue?",
        "Name three prime numbers.",
        "Write a haiku about the sea.",
        "What is the capital of France?",
        "Explain photosynthesis briefly.",
        "Count from one to ten.",
    ]
    .iter()
    .enumerate()
    .map(|(i, q)| {
        // Half of them share a long prefix, so prefix blocks are shared while running.
        let text = if i % 2 == 0 {
            format!("{system}{q}")
        } else {
            q.to_string()
        };
        model.tokenizer.encode(&text, true, false)
    })
    .collect()
}

fn one_at_a_time(model: &Arc<TextModel>, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let engine = EngineHandle::start(Arc::clone(model), config(1, 512, 1024)).unwrap();
    prompts
        .iter()
        .map(|p| collect(&submit(&engine, p.clone(), greedy(n)).1).0)
        .collect()
}

#[test]
fn concurrent_greedy_requests_match_sequential_ones() {
    let Some(model) = model() else { return };
    let prompts = prompts(&model);
    let alone = one_at_a_time(&model, &prompts, 24);
    // A small budget forces prompts into several chunks that share steps with decodes.
    let engine = EngineHandle::start(Arc::clone(&model), config(8, 48, 2048)).unwrap();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| submit(&engine, p.clone(), greedy(24)).1)
        .collect();
    for (i, rx) in rxs.iter().enumerate() {
        let (tokens, fin) = collect(rx);
        assert_eq!(tokens, alone[i], "prompt {i}");
        assert_eq!(fin.reason, FinishReason::Length);
        assert_eq!(fin.completion_tokens, 24);
        assert_eq!(fin.prompt_tokens, prompts[i].len());
    }
    let stats = engine.stats();
    assert!(stats.prefix_hit_tokens.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.kv_blocks_used.load(Ordering::Relaxed), 0);
}

#[test]
fn preempted_requests_are_recomputed_to_the_same_tokens() {
    let Some(model) = model() else { return };
    let prompts: Vec<Vec<u32>> = prompts(&model).into_iter().skip(1).step_by(2).collect();
    let alone = one_at_a_time(&model, &prompts, 48);
    // 256 tokens of cache (the minimum: max_model_len) cannot hold three growing sequences
    // without evicting; here 96 tokens = 6 blocks.
    let mut cfg = config(8, 512, 96);
    cfg.max_model_len = 96;
    let engine = EngineHandle::start(Arc::clone(&model), cfg).unwrap();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| submit(&engine, p.clone(), greedy(48)).1)
        .collect();
    for (i, rx) in rxs.iter().enumerate() {
        assert_eq!(collect(rx).0, alone[i], "prompt {i}");
    }
    assert!(engine.stats().preemptions.load(Ordering::Relaxed) > 0);
}

#[test]
fn abort_and_a_vanished_listener_free_blocks() {
    let Some(model) = model() else { return };
    let engine = EngineHandle::start(Arc::clone(&model), config(4, 512, 1024)).unwrap();
    let prompt = prompts(&model).remove(0);
    let (id, rx) = submit(&engine, prompt.clone(), greedy(200));
    // Let it start, then abort.
    assert!(matches!(rx.recv().unwrap(), Event::Token { .. }));
    engine.abort(id);
    let (_, fin) = collect(&rx);
    assert_eq!(fin.reason, FinishReason::Cancelled);

    // A listener that goes away: the engine notices on the next token.
    let (_, rx) = submit(&engine, prompt, greedy(200));
    assert!(matches!(rx.recv().unwrap(), Event::Token { .. }));
    drop(rx);
    for _ in 0..100 {
        if engine.in_flight() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.stats().kv_blocks_used.load(Ordering::Relaxed), 0);
    assert_eq!(engine.stats().aborted.load(Ordering::Relaxed), 2);
}

#[test]
fn requests_beyond_the_context_or_queue_are_refused() {
    let Some(model) = model() else { return };
    let mut cfg = config(1, 512, 1024);
    cfg.max_waiting = 0;
    let engine = EngineHandle::start(Arc::clone(&model), cfg).unwrap();
    let (tx, _rx) = mpsc::channel();
    let request = |prompt: Vec<u32>| Request {
        prompt,
        media: RequestMedia::default(),
        params: greedy(4),
        options: OutputOptions::default(),
        constraint: None,
        sink: Box::new({
            let tx = tx.clone();
            move |e| tx.send(e).is_ok()
        }),
    };
    let err = engine
        .submit(request(vec![1; 256]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("256") && err.contains("context"), "{err}");
    assert!(engine.submit(request(vec![])).is_err());
    let (_, running) = submit(&engine, vec![1, 2, 3], greedy(100));
    let err = engine
        .submit(request(vec![1, 2, 3]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("queue is full"), "{err}");
    collect(&running);
}

/// A constraint whose mask panics, as a bug in constrained decoding would.
struct PanickingConstraint;

impl TokenConstraint for PanickingConstraint {
    fn mask(&mut self, _logits: &mut [f32]) {
        panic!("constraint bug");
    }
    fn accept(&mut self, _token: u32) {}
    fn is_complete(&self) -> bool {
        false
    }
}

#[test]
fn a_panic_while_sampling_fails_only_that_request() {
    let Some(model) = model() else { return };
    let engine = EngineHandle::start(Arc::clone(&model), config(4, 512, 1024)).unwrap();
    let prompt = prompts(&model).remove(1);
    let alone = one_at_a_time(&model, std::slice::from_ref(&prompt), 12).remove(0);
    // A polite request is already decoding when the faulty one arrives.
    let (_, polite) = submit(&engine, prompt.clone(), greedy(12));
    let (tx, faulty) = mpsc::channel();
    engine
        .submit(Request {
            prompt: prompt.clone(),
            media: RequestMedia::default(),
            params: greedy(12),
            options: OutputOptions::default(),
            constraint: Some(Box::new(PanickingConstraint)),
            sink: Box::new(move |e| tx.send(e).is_ok()),
        })
        .unwrap();
    match faulty.recv_timeout(Duration::from_secs(120)).unwrap() {
        Event::Failed(message) => assert!(message.contains("constraint bug"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(collect(&polite).0, alone);
    // The engine goes on serving, with every block back.
    let (_, after) = submit(&engine, prompt, greedy(12));
    assert_eq!(collect(&after).0, alone);
    assert_eq!(engine.stats().failures.load(Ordering::Relaxed), 1);
    assert_eq!(engine.stats().restarts.load(Ordering::Relaxed), 0);
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.stats().kv_blocks_used.load(Ordering::Relaxed), 0);
}

/// A media item whose rows are the token embeddings of the tokens it covers, so the engine
/// must reproduce the text-only result exactly; `calls` counts its runs.
struct EmbeddingEncoder {
    model: Arc<TextModel>,
    tokens: Vec<u32>,
    calls: Arc<AtomicUsize>,
}

impl MediaEncoder for EmbeddingEncoder {
    fn encode(&self, _: &ThreadPool) -> Result<Vec<f32>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let d = self.model.decoder.config().n_embd;
        let mut rows = vec![0.0; self.tokens.len() * d];
        for (&t, row) in self.tokens.iter().zip(rows.chunks_exact_mut(d)) {
            self.model.decoder.embed(t, row);
        }
        Ok(rows)
    }
}

struct FailingEncoder(&'static str);

impl MediaEncoder for FailingEncoder {
    fn encode(&self, _: &ThreadPool) -> Result<Vec<f32>, String> {
        match self.0 {
            "panic" => panic!("encoder bug"),
            "short" => Ok(vec![0.0; 3]),
            message => Err(message.to_owned()),
        }
    }
}

fn with_media(
    prompt: &[u32],
    start: usize,
    len: usize,
    hash: u128,
    encoder: Arc<dyn MediaEncoder>,
) -> (Request, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let request = Request {
        prompt: prompt.to_vec(),
        media: RequestMedia {
            items: vec![MediaItem {
                span: MediaSpan {
                    start,
                    len,
                    hash,
                    bidirectional: false,
                },
                encoder,
            }],
            positions: MediaPositions::default(),
        },
        params: greedy(16),
        options: OutputOptions {
            ignore_eos: true,
            logprobs: None,
        },
        constraint: None,
        sink: Box::new(move |e| tx.send(e).is_ok()),
    };
    (request, rx)
}

/// Media rows go into the batch at their tokens' places across chunk boundaries; an item
/// already encoded is taken from the encoder cache; a failing encoder fails only its request.
#[test]
fn media_rows_replace_their_tokens_and_are_encoded_once() {
    let Some(model) = model() else { return };
    let prompt = prompts(&model).remove(0);
    let alone = one_at_a_time(&model, std::slice::from_ref(&prompt), 16).remove(0);
    // A 16-token step budget puts the item (tokens 5..40) into three chunks.
    let engine = EngineHandle::start(Arc::clone(&model), config(4, 16, 1024)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let encoder = Arc::new(EmbeddingEncoder {
        model: Arc::clone(&model),
        tokens: prompt[5..40].to_vec(),
        calls: Arc::clone(&calls),
    });
    let (request, rx) = with_media(&prompt, 5, 35, 42, encoder.clone());
    engine.submit(request).unwrap();
    assert_eq!(collect(&rx).0, alone);
    // The same content hash: not encoded again (the prefix cache covers the item too).
    let (request, rx) = with_media(&prompt, 5, 35, 42, encoder.clone());
    engine.submit(request).unwrap();
    assert_eq!(collect(&rx).0, alone);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(engine.stats().encoder_cache_hits.load(Ordering::Relaxed), 1);

    // Failing encoders (a panic, an error, the wrong number of rows) beside a text request.
    let (_, polite) = submit(&engine, prompt.clone(), greedy(16));
    let mut failing = Vec::new();
    for (hash, how) in [(1, "panic"), (2, "no such image"), (3, "short")] {
        let (request, rx) = with_media(&prompt, 5, 35, hash, Arc::new(FailingEncoder(how)));
        engine.submit(request).unwrap();
        failing.push((how, rx));
    }
    for (how, rx) in failing {
        match rx.recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Failed(message) => {
                assert!(message.contains("media encoder"), "{how}: {message}")
            }
            other => panic!("{how}: expected a failure, got {other:?}"),
        }
    }
    assert_eq!(collect(&polite).0, alone);
    assert_eq!(engine.stats().failures.load(Ordering::Relaxed), 3);
    assert_eq!(engine.stats().restarts.load(Ordering::Relaxed), 0);
    assert_eq!(engine.in_flight(), 0);

    // Spans that do not fit the prompt are refused at submission.
    let (request, _) = with_media(&prompt, prompt.len() - 2, 5, 9, encoder);
    assert!(matches!(
        engine.submit(request),
        Err(weft_engine::EngineError::InvalidMedia(_))
    ));
}
