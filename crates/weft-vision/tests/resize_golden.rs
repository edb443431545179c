//! Resampling against Pillow 13's `Image.resize` and torchvision's uint8 antialiased `resize`
//! (tests/golden/vision/resize.json): every output must be bit-exact. The references themselves
//! differ by up to a few levels, which the golden file records per case.

mod common;

use common::{b64, golden, processor_input, sha256};
use weft_vision::{resize, Filter, Resampler, RgbImage};

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn check(ours: &RgbImage, want: &serde_json::Value, what: &str) -> bool {
    assert_eq!(
        (ours.width() as u64, ours.height() as u64),
        (
            want["width"].as_u64().unwrap(),
            want["height"].as_u64().unwrap()
        ),
        "{what}: size"
    );
    if sha256(ours.as_raw()) == want["sha256"].as_str().unwrap() {
        return true;
    }
    match want["rgb_b64"].as_str() {
        Some(raw) => eprintln!(
            "{what}: differs, max {} levels",
            max_diff(ours.as_raw(), &b64(raw))
        ),
        None => eprintln!("{what}: differs (sha256)"),
    }
    false
}

#[test]
fn resize_is_bit_exact_with_pillow_and_torchvision() {
    let cases = golden("resize.json");
    let mut failed = 0;
    let mut total = 0;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let src = processor_input(name);
        let (h, w) = (
            case["height"].as_u64().unwrap() as u32,
            case["width"].as_u64().unwrap() as u32,
        );
        let filter = match case["filter"].as_str().unwrap() {
            "bicubic" => Filter::Bicubic,
            "bilinear" => Filter::Bilinear,
            other => panic!("filter {other}"),
        };
        for (key, resampler) in [
            ("pil", Resampler::Pillow),
            ("torchvision", Resampler::Torchvision),
        ] {
            let ours = resize(&src, w, h, filter, resampler);
            let what = format!("{name} -> {w}x{h} {filter:?} {key}");
            total += 1;
            if !check(&ours, &case[key], &what) {
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 0, "{failed} of {total} resized images differ");
}

#[test]
fn same_size_is_a_copy() {
    let src = processor_input("grad_100x60.png");
    for resampler in [
        Resampler::Pillow,
        Resampler::PillowBefore13,
        Resampler::Torchvision,
    ] {
        assert_eq!(resize(&src, 100, 60, Filter::Bicubic, resampler), src);
    }
}

#[test]
fn pillow_before_13_differs_only_in_pass_order() {
    // Height shrinking much more than width: Pillow 13 goes vertical first, older Pillow and
    // torch horizontal first. Where the height shrinks less the two Pillows agree.
    let src = processor_input("tall_333x500.png");
    let new = resize(&src, 224, 224, Filter::Bicubic, Resampler::Pillow);
    let old = resize(&src, 224, 224, Filter::Bicubic, Resampler::PillowBefore13);
    assert_ne!(new, old);
    let new = resize(&src, 320, 480, Filter::Bicubic, Resampler::Pillow);
    let old = resize(&src, 320, 480, Filter::Bicubic, Resampler::PillowBefore13);
    assert_eq!(new, old);
}
