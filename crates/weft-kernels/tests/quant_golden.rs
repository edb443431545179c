//! `dequantize_row` is bit-exact with the `gguf` Python package's reference dequantizer on the
//! golden blocks in tests/golden/quant (made by scripts/gen_quant_golden.py).

use std::path::PathBuf;

use weft_kernels::quant::{dequantize_row, GgmlType};

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/quant")
}

fn hex_bytes(s: &str) -> Vec<u8> {
    let pairs = s.as_bytes().chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "odd hex length");
    pairs
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

#[test]
fn dequantize_matches_gguf_reference() {
    for name in TYPES {
        let path = golden_dir().join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run scripts/gen_quant_golden.py)", path.display())
        });
        let doc: serde_json::Value = serde_json::from_str(&text).expect("golden JSON");
        assert_eq!(doc["type"], name);
        let id = doc["ggml_id"].as_u64().expect("ggml_id") as u32;
        let ty = GgmlType::from_ggml_id(id).expect("known type");
        assert_eq!(ty.name(), name);

        let raw = hex_bytes(doc["raw_hex"].as_str().expect("raw_hex"));
        let want: Vec<u32> = doc["f32_bits"]
            .as_array()
            .expect("f32_bits")
            .iter()
            .map(|v| v.as_u64().expect("u32") as u32)
            .collect();
        let n = doc["n_elements"].as_u64().expect("n_elements") as usize;
        assert_eq!(want.len(), n);
        assert_eq!(ty.row_bytes(n), Some(raw.len()), "{name}: golden size");

        let mut got = vec![0.0f32; n];
        dequantize_row(ty, &raw, &mut got);
        let mismatches: Vec<String> = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (g, w))| g.to_bits() != **w)
            .take(5)
            .map(|(i, (g, w))| {
                format!(
                    "[{i}] got {g:e} ({:#010x}) want {:e} ({w:#010x})",
                    g.to_bits(),
                    f32::from_bits(*w)
                )
            })
            .collect();
        assert!(mismatches.is_empty(), "{name}: {}", mismatches.join("; "));

        // Dequantizing block by block gives the same values.
        let (bl, bb) = (ty.block_len(), ty.block_bytes());
        let mut one = vec![0.0f32; bl];
        for (b, (src, want)) in raw.chunks_exact(bb).zip(want.chunks_exact(bl)).enumerate() {
            dequantize_row(ty, src, &mut one);
            let bits: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, want, "{name} block {b}");
        }
    }
}
