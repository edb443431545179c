//! Parses arbitrary bytes as a CTranslate2 `model.bin` and, when they parse, converts every
//! variable and builds a Whisper model from them (with a tiny stand-in tokenizer), so that
//! every shape and dimension check is exercised. Nothing may panic, abort or allocate beyond
//! what the input's own tensors hold.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use weft_audio::ct2::Ct2Model;
use weft_audio::model::SpecialTokens;
use weft_audio::tensors::TensorSource;
use weft_audio::Whisper;
use weft_models::tokenizer::Tokenizer;

/// Whisper's special tokens at ids 0-7, timestamps from 8.
const TOKENIZER: &str = r#"{
  "model": {"type": "BPE", "vocab": {"a": 9, "b": 10}, "merges": []},
  "added_tokens": [
    {"id": 0, "content": "<|endoftext|>", "special": true},
    {"id": 1, "content": "<|startoftranscript|>", "special": true},
    {"id": 2, "content": "<|en|>", "special": true},
    {"id": 3, "content": "<|translate|>", "special": true},
    {"id": 4, "content": "<|transcribe|>", "special": true},
    {"id": 5, "content": "<|startofprev|>", "special": true},
    {"id": 6, "content": "<|nospeech|>", "special": true},
    {"id": 7, "content": "<|notimestamps|>", "special": true},
    {"id": 8, "content": "<|0.00|>", "special": true}
  ]
}"#;

fn tokens() -> SpecialTokens {
    SpecialTokens {
        sot: 1,
        eot: 0,
        sot_prev: 5,
        transcribe: 4,
        translate: 3,
        no_timestamps: 7,
        no_speech: 6,
        timestamp_begin: 8,
        languages: vec![("en".into(), 2)],
        suppress: vec![9],
        suppress_begin: vec![0],
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Ct2Model::from_bytes(data, Path::new("fuzz/model.bin")) else {
        return;
    };
    let mut names: Vec<(String, Vec<usize>)> = model
        .variables()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect();
    names.sort();
    for (name, shape) in &names {
        assert!(model.has(name));
        if let Ok(t) = model.tensor(name) {
            assert_eq!(&t.shape, shape);
            assert_eq!(t.data.len(), shape.iter().product::<usize>());
        }
        std::hint::black_box(model.scalar_int(name).ok());
    }
    let heads = model.scalar_int("encoder/num_heads").unwrap_or(1);
    let tokenizer = Tokenizer::from_hf_json(TOKENIZER).expect("stand-in tokenizer");
    let heads = usize::try_from(heads).unwrap_or(0);
    if let Ok(w) = Whisper::build(&model, heads, tokenizer, tokens(), PathBuf::new()) {
        let c = &w.config;
        assert!(c.d_model > 0 && c.n_mels > 0 && c.d_model % c.n_heads == 0);
        assert!(c.n_vocab > 8 && c.n_audio_ctx == 1500 && c.n_text_ctx >= 8);
    }
});
