//! Gemma 3's vision tower against transformers on the tiny random checkpoint of
//! tests/data/hf-tiny-gemma3-vl (scripts/gen_hf_tiny_gemma3_vl.py): the test images through
//! weft's SigLIP processor, encoder and pooling projector must give transformers' projector
//! output within 1e-4 relative; the same checkpoint converted to an mmproj file by llama.cpp's
//! converter (tests/data/hf-tiny-gemma3-vl-gguf) must give the same tower.

use std::path::PathBuf;

use serde_json::Value;
use weft_kernels::pool::ThreadPool;
use weft_test_support::{floats_f32, relative_diff};
use weft_vision::mmproj::MmprojFile;
use weft_vision::{PreparedPrompt, RgbImage, Vision};

const MAX_TOWER_DIFF: f32 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/hf-tiny-gemma3-vl")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn image(golden: &Value, name: &str) -> RgbImage {
    let file = golden["images"][name]["file"].as_str().unwrap();
    let bytes = std::fs::read(dir().join(file)).unwrap();
    weft_vision::decode(&bytes, &Default::default()).unwrap()
}

/// A prompt of one image, as the processor expands it, planned by `vision`.
fn plan_one(vision: &Vision, image: &RgbImage) -> PreparedPrompt {
    let Vision::Gemma3(gemma) = vision else {
        panic!("not a Gemma 3 vision side")
    };
    let n = gemma.tokens_per_image();
    // <bos> <start_of_image> <image_soft_token> x n <end_of_image>
    let mut tokens = vec![399, 402];
    tokens.extend(std::iter::repeat_n(404, n));
    tokens.push(403);
    vision
        .plan(&tokens, std::slice::from_ref(image), &[], &[])
        .unwrap()
}

#[test]
fn processor_and_tower_match_transformers() {
    let golden = json("golden.json");
    let vision = Vision::load(&dir()).unwrap().expect("a vision tower");
    let pool = ThreadPool::new(2);
    for name in ["small", "wide", "large"] {
        let plan = plan_one(&vision, &image(&golden, name));
        let input = &plan.inputs[0];
        assert_eq!((input.start, input.len), (2, 16), "{name}: image span");
        assert!(
            input.bidirectional,
            "{name}: Gemma 3's image tokens see each other"
        );
        let weft_vision::TowerPixels::Square(pixels) = &input.pixels else {
            panic!("{name}: not a SigLIP input")
        };
        let expected = floats_f32(&golden["images"][name]["pixel_values"]);
        let d = relative_diff(&pixels.pixel_values, &expected);
        eprintln!("{name}: pixel values relative difference {d:.2e}");
        assert!(d < 1e-6, "{name}: preprocessing differs by {d:.2e}");
        let out = vision.encode(&pool, input);
        let d = relative_diff(
            &out,
            &floats_f32(&golden["images"][name]["projector_output"]),
        );
        eprintln!("{name}: projector output relative difference {d:.2e}");
        assert!(d < MAX_TOWER_DIFF, "{name}: tower differs by {d:.2e}");
    }
}

#[test]
fn prompt_text_expands_each_image_marker_as_the_processor_does() {
    let golden = json("golden.json");
    let vision = Vision::load(&dir()).unwrap().unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            vision.prompt_text(text),
            case["expanded_text"].as_str().unwrap(),
            "{}",
            case["name"]
        );
    }
}

#[test]
fn the_mmproj_conversion_is_the_same_tower() {
    let golden = json("golden.json");
    let path = dir().join("../hf-tiny-gemma3-vl-gguf/mmproj-f32.gguf");
    let config = MmprojFile::open(&path).unwrap().gemma3_config().unwrap();
    assert_eq!(
        config,
        weft_vision::gemma3_tower::Gemma3TowerConfig::from_hf(&json("config.json")).unwrap()
    );
    let tokenizer = weft_models::TextModel::load(&dir()).unwrap().tokenizer;
    let from_gguf = Vision::load_mmproj(&path, &tokenizer).unwrap();
    let from_hf = Vision::load(&dir()).unwrap().unwrap();
    let pool = ThreadPool::new(2);
    for name in ["small", "wide", "large"] {
        let image = image(&golden, name);
        let (a, b) = (plan_one(&from_gguf, &image), plan_one(&from_hf, &image));
        assert_eq!(a.inputs[0].hash, b.inputs[0].hash, "{name}: preprocessing");
        let (a, b) = (
            from_gguf.encode(&pool, &a.inputs[0]),
            from_hf.encode(&pool, &b.inputs[0]),
        );
        // The file stores the soft embedding norm as 1 + w: w comes back within an f32 ulp
        // of 1.
        let d = relative_diff(&a, &b);
        eprintln!("{name}: mmproj vs Hugging Face relative difference {d:.2e}");
        assert!(d < 1e-6, "{name}: {d:.2e}");
    }
}
