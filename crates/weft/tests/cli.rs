//! The `weft` binary as users run it, on the packaged models in `$WEFT_TEST_MODELS`.

use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_HOME", std::env::temp_dir().join("weft-cli-test-home"))
        .output()
        .expect("running weft")
}

fn model(file: &str) -> Option<String> {
    weft_test_support::model_path(file).map(|p| p.to_string_lossy().into_owned())
}

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn greedy_raw_run_is_deterministic_and_stdout_is_only_text() {
    let Some(m) = model(SMOL) else { return };
    let args = [
        "run",
        &m,
        "The capital of France is",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "12",
    ];
    let a = weft(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = weft(&args);
    assert_eq!(stdout(&a), stdout(&b));
    let text = stdout(&a);
    assert!(!text.trim().is_empty());
    assert!(
        !text.contains("loaded") && !text.contains("t/s"),
        "logs leaked to stdout: {text:?}"
    );
}

#[test]
fn same_seed_same_sample() {
    let Some(m) = model(SMOL) else { return };
    let args = [
        "run",
        &m,
        "Write a word:",
        "--temperature",
        "1.0",
        "--seed",
        "42",
        "-n",
        "16",
    ];
    let (a, b) = (weft(&args), weft(&args));
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn stop_string_ends_the_reply_before_it() {
    let Some(m) = model(SMOL) else { return };
    let full = weft(&[
        "run",
        &m,
        "1, 2, 3, 4,",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "16",
    ]);
    let text = stdout(&full);
    let stop = text
        .trim_start()
        .split(',')
        .nth(1)
        .map(|s| format!(",{s}"))
        .expect("a comma in the continuation");
    let cut = weft(&[
        "run",
        &m,
        "1, 2, 3, 4,",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "16",
        "--stop",
        &stop,
    ]);
    let got = stdout(&cut);
    assert!(!got.contains(&stop), "{got:?} still holds stop {stop:?}");
    assert!(
        text.starts_with(got.trim_end_matches('\n')),
        "{got:?} is not a prefix of {text:?}"
    );
}

#[test]
fn tokenize_prints_a_json_array_last() {
    let Some(m) = model(SMOL) else { return };
    let o = weft(&["tokenize", &m, "<|im_start|>user", "--special"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = stdout(&o).lines().last().unwrap().to_string();
    let ids: Vec<u32> = serde_json::from_str(&last).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is special token 1 in SmolLM2");
}

#[test]
fn prompt_longer_than_context_is_a_clear_error() {
    let Some(m) = model(SMOL) else { return };
    let long = "word ".repeat(200);
    let o = weft(&["run", &m, &long, "--raw", "-c", "64"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    // Both numbers: the prompt's length (200 words, at least 200 tokens) and the context.
    let n: usize = err
        .split("prompt has ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(n >= 200 && err.contains("context holds 64"), "{err}");
}

#[test]
fn base_model_without_template_says_so_in_chat_mode_and_works_raw() {
    let Some(m) = model(GEMMA) else { return };
    let o = weft(&["run", &m, "Hello"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no chat template"), "{}", stderr(&o));
    let o = weft(&["run", &m, "Hello", "--raw", "--temperature", "0", "-n", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn unknown_model_lists_the_packaged_ones() {
    let o = weft(&["run", "no-such-model", "hi"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for name in ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn corrupt_model_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("weft-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00truncated").unwrap();
    let o = weft(&["run", path.to_str().unwrap(), "hi"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("broken.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// llama.cpp's running estimates after 2 chunks of 512 on tests/data/gpl-3.0.txt (from the
/// `llama-perplexity` logs that scripts/compare_perplexity.sh prints).
#[test]
fn perplexity_matches_llama_cpp_within_half_a_percent() {
    let Some(m) = model(SMOL) else { return };
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/gpl-3.0.txt");
    let o = weft(&["perplexity", &m, text, "--ctx", "512", "--chunks", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("Final estimate: PPL = "))
        .expect(&out);
    let ppl: f64 = line["Final estimate: PPL = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let llama_cpp = 17.7185;
    assert!(
        (ppl / llama_cpp - 1.0).abs() < 0.005,
        "weft {ppl} vs llama.cpp {llama_cpp}"
    );
}

/// A base written by `--kl-divergence-base` and read back by the same model: no divergence,
/// the same top token everywhere; a damaged or foreign base is a clear error.
#[test]
fn kl_divergence_against_its_own_base_is_zero() {
    let Some(m) = model(SMOL) else { return };
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/gpl-3.0.txt");
    let dir = std::env::temp_dir().join(format!("weft-cli-kld-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.bin");
    let base_arg = base.to_str().unwrap();
    let common = ["perplexity", &m, text, "--chunks", "2", "-t", "2"];
    let o = weft(
        &[
            &common[..],
            &["--ctx", "128", "--kl-divergence-base", base_arg],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = weft(
        &[
            &common[..],
            &["--kl-divergence-base", base_arg, "--kl-divergence"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let value = |prefix: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(prefix)).expect(&out);
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("Mean    KLD:").abs() < 1e-4, "{out}");
    assert_eq!(value("Same top p:"), 100.0, "{out}");

    let bytes = std::fs::read(&base).unwrap();
    std::fs::write(&base, &bytes[..bytes.len() - 100]).unwrap();
    let o = weft(
        &[
            &common[..],
            &["--kl-divergence-base", base_arg, "--kl-divergence"],
        ]
        .concat(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    std::fs::write(&base, &bytes).unwrap();
    let gemma = model(GEMMA).unwrap();
    let o = weft(&[
        "perplexity",
        &gemma,
        text,
        "--kl-divergence-base",
        base_arg,
        "--kl-divergence",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("vocabulary"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_prints_llama_bench_records_and_table() {
    let Some(m) = model(SMOL) else { return };
    let args = [
        "bench", &m, "-p", "16", "-n", "4", "-d", "0,8", "-r", "2", "-t", "1", "-o", "json",
    ];
    let o = weft(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let records: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("a JSON array");
    let records = records.as_array().expect("array");
    let tests: Vec<(u64, u64, u64)> = records
        .iter()
        .map(|r| {
            assert_eq!(r["n_threads"], 1);
            assert_eq!(r["samples_ns"].as_array().unwrap().len(), 2);
            let ts = r["avg_ts"].as_f64().unwrap();
            assert!(ts > 0.0 && r["stddev_ts"].as_f64().unwrap() >= 0.0);
            let n = |k: &str| r[k].as_u64().unwrap();
            (n("n_prompt"), n("n_gen"), n("n_depth"))
        })
        .collect();
    assert_eq!(tests, [(16, 0, 0), (0, 4, 0), (16, 0, 8), (0, 4, 8)]);

    let o = weft(&["bench", &m, "-p", "8", "-n", "0", "-r", "1", "-t", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("| model") && lines[0].contains("t/s"),
        "{table}"
    );
    assert!(
        lines[2].contains("llama 135M Q4_1") && lines[2].contains("pp8"),
        "{table}"
    );

    let o = weft(&["bench", &m, "-r", "0"]);
    assert!(!o.status.success() && stderr(&o).contains("-r must be at least 1"));
}
