//! Decoding against what transformers hands its processors (tests/golden/vision/decode.json):
//! Pillow's pixels after `ImageOps.exif_transpose`, with alpha dropped (`load_image`) or
//! composited onto white (the processors' `convert_to_rgb`). Lossless formats must match
//! exactly; lossy ones (JPEG, lossy WebP) come from different decoders and are held to a
//! measured bound.

mod common;

use common::{b64, file, golden, sha256};
use weft_vision::{decode, Alpha, DecodeOptions};

/// Largest difference allowed for lossy formats, in levels. `image` decodes JPEG with
/// zune-jpeg, Pillow with libjpeg-turbo: their IDCT and colour conversion round differently
/// (about 1% of samples, by up to 3 levels, at 4:4:4) and their chroma upsampling differs too
/// (about 27% of samples, up to 4 levels, at Pillow's default 4:2:0). Lossy WebP matches.
const LOSSY_MAX_DIFF: u8 = 6;

#[test]
fn lossless_images_decode_as_pillow_does() {
    let golden = golden("decode.json");
    let mut failures = Vec::new();
    for (name, entry) in golden["images"].as_object().unwrap() {
        for (key, alpha) in [
            ("load_image", Alpha::Drop),
            ("convert_to_rgb", Alpha::CompositeOnWhite),
        ] {
            let want = &entry[key];
            if want["rgb_b64"].is_string() {
                continue; // lossy: below
            }
            let options = DecodeOptions {
                alpha,
                ..DecodeOptions::default()
            };
            let ours = decode(&file(name), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
            let size = (ours.width() as u64, ours.height() as u64);
            let want_size = (
                want["width"].as_u64().unwrap(),
                want["height"].as_u64().unwrap(),
            );
            if size != want_size || sha256(ours.as_raw()) != want["sha256"].as_str().unwrap() {
                failures.push(format!("{name} ({key}): {size:?} vs {want_size:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "differ from Pillow: {failures:#?}");
}

#[test]
fn lossy_decoders_are_close() {
    let golden = golden("decode.json");
    for (name, entry) in golden["images"].as_object().unwrap() {
        let want = &entry["convert_to_rgb"];
        let Some(raw) = want["rgb_b64"].as_str() else {
            continue;
        };
        let ours = decode(&file(name), &DecodeOptions::default()).unwrap();
        assert_eq!(
            (ours.width() as u64, ours.height() as u64),
            (
                want["width"].as_u64().unwrap(),
                want["height"].as_u64().unwrap()
            ),
            "{name}: size (EXIF orientation applied?)"
        );
        let want = b64(raw);
        let diffs: Vec<u8> = ours
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap();
        let differing = diffs.iter().filter(|&&d| d > 0).count();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        eprintln!(
            "{name}: vs Pillow max {max} levels, {differing} of {} samples differ, mean {mean:.4}",
            diffs.len()
        );
        assert!(max <= LOSSY_MAX_DIFF, "{name}: {max} levels from Pillow");
    }
}
