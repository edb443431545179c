//! Byte-for-byte comparison of weft's chat-template rendering with Python jinja2 as
//! transformers configures it. The expected strings come from
//! `scripts/gen_chat_template_golden.py`, stored in `tests/golden/chat_template/*.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weft_models::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, RenderOptions};

#[derive(Deserialize)]
struct Golden {
    name: String,
    bos_token: String,
    eos_token: String,
    template: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    #[serde(default)]
    tools: Option<serde_json::Value>,
    #[serde(default)]
    expected: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/chat_template")
}

fn load(name: &str) -> Golden {
    let path = golden_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let golden: Golden = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
    assert_eq!(golden.name, name);
    assert!(!golden.cases.is_empty());
    golden
}

/// Renders every case of one golden file and returns a description of each mismatch.
fn check(name: &str) -> usize {
    let golden = load(name);
    let template = ChatTemplate::new(&golden.template, &golden.bos_token, &golden.eos_token)
        .unwrap_or_else(|e| panic!("{name}: template does not compile: {e}"));
    let mut failures = Vec::new();
    for case in &golden.cases {
        let got = match &case.tools {
            None => template.render(&case.messages, case.add_generation_prompt),
            Some(tools) => template.render_with(
                &case.messages,
                &RenderOptions {
                    add_generation_prompt: case.add_generation_prompt,
                    tools: Some(tools.clone()),
                    ..Default::default()
                },
            ),
        };
        match (&case.expected, &case.error, got) {
            (Some(want), None, Ok(got)) if *want == got => {}
            (None, Some(want), Err(ChatTemplateError::Raised(got))) if *want == got => {}
            (want, want_err, got) => failures.push(format!(
                "{name}/{}:\n  want: {:?}\n  want error: {:?}\n  got:  {:?}",
                case.name, want, want_err, got
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from jinja2:\n{}",
        failures.len(),
        golden.cases.len(),
        failures.join("\n")
    );
    golden.cases.len()
}

#[test]
fn smollm2_matches_jinja2() {
    assert!(check("smollm2") >= 10);
}

#[test]
fn qwen2_5_coder_matches_jinja2() {
    assert!(check("qwen2_5_coder") >= 10);
}

#[test]
fn gemma3_matches_jinja2() {
    assert!(check("gemma3") >= 10);
}

#[test]
fn llama3_matches_jinja2() {
    assert!(check("llama3") >= 10);
}

#[test]
fn jinja2_feature_probe_matches() {
    assert!(check("features") >= 10);
}

#[test]
fn every_golden_file_is_tested() {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "json" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["features", "gemma3", "llama3", "qwen2_5_coder", "smollm2"]
    );
}
