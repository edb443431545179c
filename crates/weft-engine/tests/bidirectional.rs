//! A bidirectional media item (Gemma 3's images) through the engine and a session, on the
//! tiny Gemma 3 checkpoint of tests/data/hf-tiny: chunked by a small step budget (the item
//! whole in one chunk beyond the budget) or by a small `max_batch`, the prompt is computed as
//! in one pass, and the span matters (causal attention replies otherwise).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use weft_engine::blocks::MediaSpan;
use weft_engine::engine::{EngineConfig, EngineHandle, Event, Request};
use weft_engine::generation::{GenerateParams, OutputOptions};
use weft_engine::media::{MediaEncoder, MediaItem, RequestMedia};
use weft_engine::sampler::SamplingParams;
use weft_engine::session::{Session, SessionConfig};
use weft_kernels::pool::ThreadPool;
use weft_models::media::PromptMedia;
use weft_models::TextModel;

const IMAGE: std::ops::Range<usize> = 10..30;

fn model() -> Arc<TextModel> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/hf-tiny/gemma3");
    Arc::new(TextModel::load(&dir).unwrap_or_else(|e| panic!("{e}")))
}

fn prompt() -> Vec<u32> {
    (0..40u32).map(|i| (i * 37 + 11) % 399).collect()
}

/// Rows for the image's tokens: a fixed pattern, the same for engine and session.
fn rows(width: usize) -> Vec<f32> {
    (0..IMAGE.len() * width)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn greedy() -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 12,
        stop: Vec::new(),
    }
}

fn session_reply(model: &TextModel, max_batch: usize, bidirectional: bool) -> Vec<u32> {
    let width = model.decoder.config().n_embd;
    let rows = rows(width);
    let media = PromptMedia {
        embeddings: IMAGE
            .zip(rows.chunks_exact(width))
            .map(|(i, row)| (i, row.to_vec()))
            .collect(),
        bidirectional: if bidirectional { vec![IMAGE] } else { vec![] },
        ..PromptMedia::default()
    };
    let mut session = Session::new(
        model,
        SessionConfig {
            max_batch,
            ..SessionConfig::new(2, 256)
        },
    );
    let cancel = AtomicBool::new(false);
    session
        .generate_with_media(&prompt(), media, &greedy(), &cancel, |_| {})
        .unwrap()
        .generated
}

struct Rows(Vec<f32>);

impl MediaEncoder for Rows {
    fn encode(&self, _: &ThreadPool) -> Result<Vec<f32>, String> {
        Ok(self.0.clone())
    }
}

fn engine_reply(model: &Arc<TextModel>) -> Vec<u32> {
    // An 8-token step budget: the 20-token image can only go whole, beyond it.
    let engine = EngineHandle::start(
        Arc::clone(model),
        EngineConfig {
            n_threads: 2,
            max_num_seqs: 4,
            max_num_batched_tokens: 8,
            max_model_len: 256,
            kv_cache_tokens: 256,
            prefix_caching: true,
            max_waiting: 4,
            encoder_budget: 64,
            encoder_cache_bytes: 1 << 20,
        },
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    engine
        .submit(Request {
            prompt: prompt(),
            media: RequestMedia {
                items: vec![MediaItem {
                    span: MediaSpan {
                        start: IMAGE.start,
                        len: IMAGE.len(),
                        hash: 1,
                        bidirectional: true,
                    },
                    encoder: Arc::new(Rows(rows(model.decoder.config().n_embd))),
                }],
                positions: Default::default(),
            },
            params: greedy(),
            options: OutputOptions::default(),
            constraint: None,
            sink: Box::new(move |e| tx.send(e).is_ok()),
        })
        .unwrap();
    let mut tokens = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Token { token, .. } => tokens.push(token),
            Event::Finished(_) => return tokens,
            Event::Failed(message) => panic!("{message}"),
        }
    }
}

#[test]
fn a_bidirectional_image_is_computed_whole_however_the_prompt_is_chunked() {
    let model = model();
    let whole = session_reply(&model, 512, true);
    assert!(!whole.is_empty());
    assert_eq!(session_reply(&model, 8, true), whole);
    assert_eq!(engine_reply(&model), whole);
    assert_ne!(session_reply(&model, 512, false), whole);
}
