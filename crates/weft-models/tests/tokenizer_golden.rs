//! Token ids identical to llama.cpp's `llama-tokenize` (tests/golden/tokenizer, made by
//! scripts/gen_tokenizer_golden.py) on a broad set of strings, for each packaged model.

use std::path::PathBuf;

use serde_json::Value;
use weft_models::gguf::GgufFile;
use weft_models::tokenizer::Tokenizer;

fn check(model_name: &str) {
    let Some(dir) = weft_test_support::models_dir() else {
        return;
    };
    let golden_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/tokenizer")
        .join(format!("{model_name}.json"));
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    let file = GgufFile::open(dir.join(golden["file"].as_str().unwrap())).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "at least 200 cases");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tokenizer.encode(text, case["add_special"].as_bool().unwrap(), parse_special);
        if got != want {
            failures.push(format!("{text:?} (parse_special {parse_special}):\n  llama.cpp {want:?}\n  weft      {got:?}"));
        }
        // Plain text (no special-token text) decodes back to itself.
        if !parse_special && !text.contains('<') {
            let bos = usize::from(tokenizer.add_bos());
            assert_eq!(tokenizer.decode(&got[bos..], false), text, "round trip");
        }
    }
    eprintln!(
        "{model_name}: {}/{} cases identical",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_tokenizes_like_llama_cpp() {
    check("smollm2-135m");
}

#[test]
fn gemma3_tokenizes_like_llama_cpp() {
    check("gemma3-270m");
}

#[test]
fn qwen2_tokenizes_like_llama_cpp() {
    check("qwen2.5-coder-0.5b");
}
