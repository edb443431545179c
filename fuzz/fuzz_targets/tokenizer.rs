//! Encodes arbitrary text (the input after its first byte, as lossy UTF-8) with the
//! tokenizers of the packaged GGUF models: SmolLM2 and Qwen2.5-Coder (byte-level BPE) and
//! gemma-3 (SentencePiece). The first byte picks the model (bits 2-3; 3 = all) and the flags
//! (bit 0 `add_special`, bit 1 `parse_special`). Encoding must not panic or hang, ids must be
//! in the vocabulary, and decoding the ids gives the text back: every byte-level BPE text
//! round-trips (less the bytes the vocabulary has no token for, which llama.cpp drops too),
//! and SentencePiece text does with `▁` read as a space (and the space it prefixes
//! removed).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_models::gguf::GgufFile;
use weft_models::tokenizer::Tokenizer;

const MODELS: [&str; 3] = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m-q4_k_m.gguf",
];

struct Model {
    name: &'static str,
    tokenizer: Tokenizer,
    /// Byte-level BPE: whether each byte has a token of its own.
    byte_has_token: Option<[bool; 256]>,
    add_space_prefix: bool,
    add_eos: bool,
}

fn models() -> &'static [Model] {
    static MODELS_LOADED: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS_LOADED.get_or_init(|| {
        MODELS
            .iter()
            .map(|&name| {
                let path = weft_test_support::model_path(name)
                    .unwrap_or_else(|| panic!("the tokenizer target needs {name}"));
                let file = GgufFile::open(&path).expect("open model");
                let spm = file.get_str("tokenizer.ggml.model").unwrap() == Some("llama");
                let flag =
                    |key: &str, default: bool| file.get_bool(key).unwrap().unwrap_or(default);
                let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
                let byte_has_token = (!spm).then(|| {
                    std::array::from_fn(|b| {
                        tokenizer
                            .token_id(&gpt2_byte_char(b as u8).to_string())
                            .is_some()
                    })
                });
                Model {
                    name,
                    tokenizer,
                    byte_has_token,
                    add_space_prefix: spm && flag("tokenizer.ggml.add_space_prefix", true),
                    add_eos: flag("tokenizer.ggml.add_eos_token", false),
                }
            })
            .collect()
    })
}

/// GPT-2's printable stand-in for a byte in byte-level BPE vocabularies: printable Latin-1
/// bytes stand for themselves, the others for U+0100 onwards in byte order.
fn gpt2_byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn check(m: &Model, text: &str, add_special: bool, parse_special: bool) {
    let t = &m.tokenizer;
    let ids = t.encode(text, add_special, parse_special);
    assert!(
        ids.iter().all(|&i| (i as usize) < t.vocab_size()),
        "{}: id out of range",
        m.name
    );
    let mut body = ids.as_slice();
    if add_special {
        if t.add_bos() {
            if let Some(bos) = t.bos() {
                assert_eq!(body.first(), Some(&bos), "{}: BOS", m.name);
                body = &body[1..];
            }
        }
        if m.add_eos {
            if let Some(eos) = t.eos() {
                assert_eq!(body.last(), Some(&eos), "{}: EOS", m.name);
                body = &body[..body.len() - 1];
            }
        }
    }
    let decoded = t.decode(body, parse_special);
    let ok = if let Some(has_token) = &m.byte_has_token {
        // A byte with no token in the vocabulary is dropped, as llama.cpp drops it (SmolLM2
        // has none for 0x1D, for one): compare bytes, less those.
        let expected: Vec<u8> = text.bytes().filter(|&b| has_token[b as usize]).collect();
        let got: Vec<u8> = body
            .iter()
            .flat_map(|&i| t.token_bytes(i, parse_special))
            .collect();
        got == expected
    } else {
        let expected = text.replace('\u{2581}', " ");
        // The prefixed space goes before the first text that is not a special token.
        decoded == expected
            || (m.add_space_prefix
                && decoded.len() == expected.len() + 1
                && decoded.match_indices(' ').any(|(i, _)| {
                    decoded[..i] == expected[..i] && decoded[i + 1..] == expected[i..]
                }))
    };
    assert!(
        ok,
        "{}: {text:?} (add_special {add_special}, parse_special {parse_special}) encodes to \
         {ids:?}, which decodes to {decoded:?}",
        m.name
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (add_special, parse_special) = (flags & 1 != 0, flags & 2 != 0);
    let models = models();
    match (flags >> 2) & 3 {
        3 => models
            .iter()
            .for_each(|m| check(m, &text, add_special, parse_special)),
        i => check(&models[i as usize], &text, add_special, parse_special),
    }
});
