//! Feeds arbitrary bytes to the chat endpoint's request preparation (`prepare_chat_body`):
//! JSON parsing, limits, tools and response-format grammars, the chat template, tokenization
//! and sampling parameters, with SmolLM2-135M-Instruct's tokenizer and template. It must
//! never panic, hang or allocate without bound; an accepted request's prompt must fit the
//! context and hold only ids of the vocabulary, and a refusal must have a 4xx status.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use weft_models::TextModel;
use weft_server::{prepare_chat_body, Limits, PromptContext};

const MAX_MODEL_LEN: usize = 512;

fn context() -> &'static (PromptContext, Limits) {
    static CTX: OnceLock<(PromptContext, Limits)> = OnceLock::new();
    CTX.get_or_init(|| {
        let path = weft_test_support::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")
            .expect("the chat_request target needs $WEFT_TEST_MODELS with SmolLM2");
        let model = TextModel::load(&path).expect("load SmolLM2");
        (
            PromptContext::new(Arc::new(model), MAX_MODEL_LEN),
            Limits::default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (ctx, limits) = context();
    match prepare_chat_body(ctx, limits, data) {
        Ok(prompt) => {
            assert!(!prompt.is_empty() && prompt.len() < MAX_MODEL_LEN);
            let vocab = ctx.model.tokenizer.vocab_size();
            assert!(prompt.iter().all(|&t| (t as usize) < vocab));
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{} {}", e.status, e.message);
            std::hint::black_box(e.body().to_string());
        }
    }
});
