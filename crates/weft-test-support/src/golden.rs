//! Reading the golden files the generator scripts write.

use serde_json::Value;

/// Every number of a JSON value (a number, or arrays of them nested to any depth), in order.
pub fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        _ => vec![v.as_f64().expect("a number")],
    }
}

/// [`floats`] as f32.
pub fn floats_f32(v: &Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

/// Largest |a - b| relative to the largest |b|.
pub fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
