//! Shared by the golden tests: the files made by scripts/gen_vision_preprocess_golden.py and
//! the comparisons of float outputs with their summaries.

#![allow(dead_code)]

use serde_json::Value;
use weft_vision::{decode, Alpha, DecodeOptions, RgbImage};

pub fn golden_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/vision")
}

pub fn golden(name: &str) -> Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("golden JSON")
}

pub fn file(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Standard base64 (the script's `base64.b64encode`).
pub fn b64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut value = [255u8; 256];
    for (i, &c) in ALPHABET.iter().enumerate() {
        value[c as usize] = i as u8;
    }
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value[c as usize];
            assert!(v < 64, "bad base64 digit {c}");
            acc |= u32::from(v) << (18 - 6 * i);
        }
        out.extend(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

pub fn f32s(text: &str) -> Vec<f32> {
    b64(text)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn f64s(text: &str) -> Vec<f64> {
    b64(text)
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pixels transformers' processors received for golden image `name`: lossless files
/// decoded here (the decode test holds them equal to Pillow's), lossy ones as Pillow decoded
/// them (`decode.json`), so that preprocessing is tested apart from JPEG decoding.
pub fn processor_input(name: &str) -> RgbImage {
    let entry = &golden("decode.json")["images"][name]["convert_to_rgb"];
    let (w, h) = (
        entry["width"].as_u64().unwrap() as u32,
        entry["height"].as_u64().unwrap() as u32,
    );
    if let Some(raw) = entry["rgb_b64"].as_str() {
        return RgbImage::new(w, h, b64(raw)).expect("golden RGB size");
    }
    let options = DecodeOptions {
        alpha: Alpha::CompositeOnWhite,
        ..DecodeOptions::default()
    };
    let image = decode(&file(name), &options).expect("decode golden image");
    assert_eq!(
        sha256(image.as_raw()),
        entry["sha256"].as_str().unwrap(),
        "{name}"
    );
    image
}

/// Largest absolute differences found against a summary.
#[derive(Debug, Default)]
pub struct Diff {
    pub values: f64,
    pub row_sums: f64,
}

/// Compares `values` (rows of `row_len`) with a `summary()` of the script and asserts them
/// equal to within 1e-6 (values) and 1e-4 (row sums: f64 sums of the f32 values in numpy's
/// pairwise order; one pixel one level off moves a sum by more than 1e-2).
pub fn compare_summary(values: &[f32], row_len: usize, summary: &Value, what: &str) -> Diff {
    let diff = summary_diff(values, row_len, summary, what);
    eprintln!(
        "{what}: max |diff| {:.3e} (values), {:.3e} (row sums)",
        diff.values, diff.row_sums
    );
    assert!(
        diff.values <= 1e-6,
        "{what}: values differ by {:e}",
        diff.values
    );
    assert!(
        diff.row_sums <= 1e-4,
        "{what}: row sums differ by {:e}",
        diff.row_sums
    );
    diff
}

/// The largest differences of `values` (rows of `row_len`) from a `summary()` of the script.
pub fn summary_diff(values: &[f32], row_len: usize, summary: &Value, what: &str) -> Diff {
    let shape: Vec<usize> = summary["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        values.len(),
        shape.iter().product::<usize>(),
        "{what}: size, golden shape {shape:?}"
    );
    let mut diff = Diff::default();
    let check = |ours: f64, want: f64, field: &mut f64| {
        *field = field.max((ours - want).abs());
    };
    if let Some(full) = summary["values_f32le_b64"].as_str() {
        let want = f32s(full);
        for (&a, &b) in values.iter().zip(&want) {
            check(f64::from(a), f64::from(b), &mut diff.values);
        }
    }
    let rows: Vec<&[f32]> = values.chunks_exact(row_len).collect();
    let sums = f64s(summary["row_sums_f64le_b64"].as_str().unwrap());
    let weighted = f64s(summary["row_weighted_sums_f64le_b64"].as_str().unwrap());
    assert_eq!(rows.len(), sums.len(), "{what}: rows");
    for ((row, &s), &ws) in rows.iter().zip(&sums).zip(&weighted) {
        let ours: f64 = row.iter().map(|&v| f64::from(v)).sum();
        let ours_w: f64 = row
            .iter()
            .enumerate()
            .map(|(j, &v)| f64::from(v) * ((j % 13) + 1) as f64)
            .sum();
        check(ours, s, &mut diff.row_sums);
        check(ours_w, ws, &mut diff.row_sums);
    }
    for (&a, &b) in rows[0]
        .iter()
        .zip(&f32s(summary["first_row_f32le_b64"].as_str().unwrap()))
    {
        check(f64::from(a), f64::from(b), &mut diff.values);
    }
    let index = summary["sample_index"].as_array().unwrap();
    let sample = f32s(summary["sample_value_f32le_b64"].as_str().unwrap());
    for (i, &b) in index.iter().zip(&sample) {
        check(
            f64::from(values[i.as_u64().unwrap() as usize]),
            f64::from(b),
            &mut diff.values,
        );
    }
    diff
}

/// A case's `preprocessor_config.json`: its `size` and other settings.
pub fn case_config(case: &Value) -> String {
    let mut config = case["settings"].as_object().cloned().unwrap_or_default();
    config.insert("size".into(), case["size"].clone());
    Value::Object(config).to_string()
}

pub fn backend(name: &str) -> weft_vision::Backend {
    match name {
        "torchvision" => weft_vision::Backend::Torchvision,
        "pil" => weft_vision::Backend::Pil,
        other => panic!("backend {other}"),
    }
}

/// The rescale/normalize settings equal a processor's resolved attributes.
pub fn assert_normalization(n: &weft_vision::Normalization, want: &Value, what: &str) {
    assert_eq!(
        n.do_rescale,
        want["do_rescale"].as_bool().unwrap(),
        "{what}"
    );
    assert_eq!(
        n.do_normalize,
        want["do_normalize"].as_bool().unwrap(),
        "{what}"
    );
    assert_eq!(
        n.rescale_factor,
        want["rescale_factor"].as_f64().unwrap(),
        "{what}"
    );
    for k in 0..3 {
        assert_eq!(n.mean[k], want["image_mean"][k].as_f64().unwrap(), "{what}");
        assert_eq!(n.std[k], want["image_std"][k].as_f64().unwrap(), "{what}");
    }
}
