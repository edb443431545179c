//! Log-mel features against the references in tests/golden/whisper/mel.json (made by
//! scripts/gen_whisper_golden.py with transformers' WhisperFeatureExtractor and faster-whisper's
//! FeatureExtractor on the same deterministic signal).

use weft_audio::mel::{MelExtractor, CHUNK_SAMPLES, HOP};

fn golden() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/whisper/mel.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json")
}

/// The script's test signal, computed the same way (f64, then f32).
fn test_signal(n: usize) -> Vec<f32> {
    use std::f64::consts::PI;
    (0..n)
        .map(|i| {
            let t = i as f64 / 16000.0;
            let f1 = 220.0 + 400.0 * t;
            let f2 = 1800.0 - 900.0 * t;
            let mut x = 0.3 * (2.0 * PI * f1 * t).sin() * (0.6 + 0.4 * (2.0 * PI * 3.0 * t).sin());
            x += 0.15 * (2.0 * PI * f2 * t).sin();
            if i % 1600 < 8 {
                x += 0.2;
            }
            x as f32
        })
        .collect()
}

fn values(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(got: impl Iterator<Item = f32>, want: &[f32]) -> f32 {
    got.zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matches_transformers_feature_extractor() {
    let g = golden();
    let n = g["samples"].as_u64().unwrap() as usize;
    let frames = g["frames"].as_u64().unwrap() as usize;
    let want = values(&g["hf"]);
    // Transformers pads every clip with zeros to 30 s.
    let mut x = test_signal(n);
    x.resize(CHUNK_SAMPLES, 0.0);
    let mel = MelExtractor::new(80).extract(&x);
    assert_eq!(mel.frames as u64, g["hf_frames_total"].as_u64().unwrap());
    let got = (0..80).flat_map(|m| mel.data[m * mel.frames..m * mel.frames + frames].to_vec());
    let err = max_abs_diff(got, &want);
    eprintln!("max abs error vs transformers: {err:e}");
    assert!(err < 1e-4, "max abs error {err}");
}

#[test]
fn matches_faster_whisper_feature_extractor() {
    let g = golden();
    let n = g["samples"].as_u64().unwrap() as usize;
    let want = values(&g["fw"]);
    // faster-whisper appends one hop of zeros to the whole recording.
    let mut x = test_signal(n);
    x.resize(n + HOP, 0.0);
    let mel = MelExtractor::new(80).extract(&x);
    assert_eq!(mel.frames as u64, g["fw_frames_total"].as_u64().unwrap());
    let err = max_abs_diff(mel.data.iter().copied(), &want);
    eprintln!("max abs error vs faster-whisper: {err:e}");
    assert!(err < 1e-4, "max abs error {err}");
}
