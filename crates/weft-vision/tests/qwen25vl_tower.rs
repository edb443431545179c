//! Qwen2.5-VL's vision tower against transformers on the tiny random checkpoint of
//! tests/data/hf-tiny-vl (scripts/gen_hf_tiny_vl.py): the test images through weft's
//! processor and tower must give transformers' merged embeddings within 1e-4 relative, alone
//! and two images in one call (windows never cross an image); the same checkpoint converted
//! to an mmproj file by llama.cpp's converter (tests/data/hf-tiny-vl-gguf,
//! scripts/gen_tiny_vl_gguf.py) must give the same tower, value for value.

use std::path::PathBuf;

use serde_json::Value;
use weft_kernels::pool::ThreadPool;
use weft_models::weights::SafetensorsFiles;
use weft_test_support::{floats_f32 as floats, relative_diff};
use weft_vision::mmproj::MmprojFile;
use weft_vision::qwen25vl_tower::{hf_weights, Grid, Qwen25VisionTower, TowerConfig};
use weft_vision::Vision;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/hf-tiny-vl")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn tower() -> Qwen25VisionTower {
    let config = TowerConfig::from_hf(&json("config.json")["vision_config"]).unwrap();
    let weights = SafetensorsFiles::open_dir(&dir()).unwrap();
    Qwen25VisionTower::load(&hf_weights(&weights).unwrap(), config).unwrap()
}

fn grid(image: &Value) -> Grid {
    let g: Vec<usize> = floats(&image["image_grid_thw"])
        .iter()
        .map(|&v| v as usize)
        .collect();
    Grid {
        t: g[0],
        h: g[1],
        w: g[2],
    }
}

#[test]
fn tower_matches_transformers_on_its_own_pixel_values() {
    let golden = json("golden.json");
    let image = &golden["images"]["small"];
    let pixels = floats(&image["pixel_values"]["values"]);
    let out = tower().encode(&ThreadPool::new(2), &pixels, &[grid(image)]);
    let d = relative_diff(&out, &floats(&image["tower_output"]));
    eprintln!("small: tower output relative difference {d:.2e}");
    assert!(d < 1e-4, "{d}");
}

/// The test images from their PNG files through the processor and the tower (one call per
/// image, then two images in one call), via `Vision::prepare`.
#[test]
fn images_through_processor_and_tower_match_transformers() {
    let golden = json("golden.json");
    let vision = Vision::load(&dir()).unwrap().expect("a vision tower");
    let pool = ThreadPool::new(2);
    let load = |name: &str| {
        let file = golden["images"][name]["file"].as_str().unwrap();
        let bytes = std::fs::read(dir().join(file)).unwrap();
        weft_vision::decode(&bytes, &Default::default()).unwrap()
    };
    let (start, pad, end) = (406, 409, 407);
    for names in [&["small"][..], &["wide"], &["large"], &["small", "large"]] {
        let images: Vec<_> = names.iter().map(|n| load(n)).collect();
        let tokens: Vec<u32> = names.iter().flat_map(|_| [start, pad, end]).collect();
        let (expanded, media) = vision
            .prepare(&pool, &tokens, &images, &[], &[], Default::default())
            .unwrap();
        let want: Vec<f32> = names
            .iter()
            .flat_map(|n| floats(&golden["images"][*n]["tower_output"]))
            .collect();
        let got: Vec<f32> = media
            .embeddings
            .iter()
            .flat_map(|(_, r)| r.clone())
            .collect();
        let d = relative_diff(&got, &want);
        eprintln!("{names:?}: tower output relative difference {d:.2e}");
        assert!(d < 1e-4, "{names:?}: {d}");
        assert_eq!(
            expanded.len(),
            tokens.len() - names.len() + media.embeddings.len()
        );
        assert!(media.embeddings.iter().all(|(i, _)| expanded[*i] == pad));
    }
}

/// The mmproj file holds the same tower: the same settings (window size and full-attention
/// blocks recovered from llama.cpp's keys), the same preprocessing and the same outputs, bit
/// for bit.
#[test]
fn the_mmproj_conversion_is_the_same_tower() {
    let golden = json("golden.json");
    let path = dir().join("../hf-tiny-vl-gguf/mmproj-f32.gguf");
    let config = MmprojFile::open(&path).unwrap().qwen25vl_config().unwrap();
    assert_eq!(
        config,
        TowerConfig::from_hf(&json("config.json")["vision_config"]).unwrap()
    );
    let tokenizer = weft_models::TextModel::load(&dir()).unwrap().tokenizer;
    let from_gguf = Vision::load_mmproj(&path, &tokenizer).unwrap();
    let from_hf = Vision::load(&dir()).unwrap().unwrap();
    let pool = ThreadPool::new(2);
    for name in ["small", "wide", "large"] {
        let file = golden["images"][name]["file"].as_str().unwrap();
        let image = weft_vision::decode(
            &std::fs::read(dir().join(file)).unwrap(),
            &Default::default(),
        )
        .unwrap();
        let tokens = [406, 409, 407];
        let (a, b) = (
            from_gguf
                .plan(&tokens, std::slice::from_ref(&image), &[], &[])
                .unwrap(),
            from_hf
                .plan(&tokens, std::slice::from_ref(&image), &[], &[])
                .unwrap(),
        );
        assert_eq!(
            (&a.tokens, &a.positions),
            (&b.tokens, &b.positions),
            "{name}"
        );
        assert_eq!(a.inputs[0].hash, b.inputs[0].hash, "{name}: preprocessing");
        assert_eq!(
            from_gguf.encode(&pool, &a.inputs[0]),
            from_hf.encode(&pool, &b.inputs[0]),
            "{name}"
        );
    }
}
