//! `Qwen2VLImageProcessor` (torchvision backend, transformers' default) and
//! `Qwen2VLImageProcessorPil` against tests/golden/vision/qwen2vl.json: `smart_resize` on a
//! table of sizes, `image_grid_thw`, and `pixel_values` (whole for the smallest image, summaries
//! otherwise) to within 1e-6.

mod common;

use common::{backend, case_config, compare_summary, golden, processor_input, summary_diff};
use weft_vision::{smart_resize, PreprocessError, Qwen2VlConfig, Qwen2VlProcessor};

#[test]
fn smart_resize_matches_transformers() {
    let golden = golden("qwen2vl.json");
    for case in golden["smart_resize"].as_array().unwrap() {
        let i: Vec<u64> = case["in"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let got = smart_resize(i[0] as u32, i[1] as u32, i[2] as u32, i[3], i[4]);
        match case["out"].as_array() {
            Some(out) => assert_eq!(
                got,
                Ok((
                    out[0].as_u64().unwrap() as u32,
                    out[1].as_u64().unwrap() as u32
                )),
                "smart_resize{i:?}"
            ),
            None => assert!(
                matches!(got, Err(PreprocessError::AspectRatio { .. })),
                "smart_resize{i:?}: {got:?}, transformers: {}",
                case["error"]
            ),
        }
    }
}

#[test]
fn defaults_are_transformers_defaults() {
    let d = &golden("qwen2vl.json")["defaults"];
    let c = Qwen2VlConfig::default();
    assert_eq!(c.min_pixels, d["size"]["shortest_edge"].as_u64().unwrap());
    assert_eq!(c.max_pixels, d["size"]["longest_edge"].as_u64().unwrap());
    assert_eq!(u64::from(c.patch_size), d["patch_size"].as_u64().unwrap());
    assert_eq!(
        u64::from(c.temporal_patch_size),
        d["temporal_patch_size"].as_u64().unwrap()
    );
    assert_eq!(u64::from(c.merge_size), d["merge_size"].as_u64().unwrap());
    assert_eq!(
        c.normalization.rescale_factor,
        d["rescale_factor"].as_f64().unwrap()
    );
    for k in 0..3 {
        assert_eq!(
            c.normalization.mean[k],
            d["image_mean"][k].as_f64().unwrap()
        );
        assert_eq!(c.normalization.std[k], d["image_std"][k].as_f64().unwrap());
    }
    assert_eq!(
        Some(c.resample),
        weft_vision::Filter::from_pil(d["resample"].as_u64().unwrap() as u32)
    );
}

#[test]
fn pixel_values_match_transformers() {
    let golden = golden("qwen2vl.json");
    for case in golden["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let image = processor_input(name);
        let config = Qwen2VlConfig::from_json(&case_config(case)).unwrap();
        let what = format!("qwen2vl {name} {}", case["settings"]);
        for key in ["torchvision", "pil"] {
            let want = &case[key];
            let processor = Qwen2VlProcessor::new(config.clone(), backend(key));
            let out = processor.preprocess(&image).unwrap();
            let grid: Vec<u64> = want["grid_thw"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                out.grid_thw.map(u64::from).to_vec(),
                grid,
                "{name} {key}: grid_thw"
            );
            assert_eq!(out.patch_dim, 1176);
            assert_eq!(out.num_patches() * out.patch_dim, out.pixel_values.len());
            compare_summary(
                &out.pixel_values,
                out.patch_dim,
                &want["pixel_values"],
                &format!("{what} {key}"),
            );
        }
    }
}

#[test]
fn tokens_are_merged_groups_of_patches() {
    let image = processor_input("grad_100x60.png");
    let out = Qwen2VlProcessor::default().preprocess(&image).unwrap();
    assert_eq!(out.grid_thw, [1, 4, 8]);
    assert_eq!(out.num_tokens(), 8);
}

#[test]
fn the_comparison_sees_the_backends_differ() {
    // The torchvision and PIL backends resize differently (row sums move by whole levels) and
    // normalize with different roundings (sampled values move by an ulp): each must fail the
    // other's golden, or the comparison above would prove nothing.
    let golden = golden("qwen2vl.json");
    let case = &golden["cases"].as_array().unwrap()[4];
    assert_eq!(case["image"], "tall_333x500.png");
    let config = Qwen2VlConfig::from_json(&case_config(case)).unwrap();
    let image = processor_input("tall_333x500.png");
    let pil = Qwen2VlProcessor::new(config, weft_vision::Backend::Pil)
        .preprocess(&image)
        .unwrap();
    let diff = summary_diff(
        &pil.pixel_values,
        pil.patch_dim,
        &case["torchvision"]["pixel_values"],
        "swapped",
    );
    assert!(diff.values > 0.0 && diff.row_sums > 1e-2, "{diff:?}");
}

#[test]
fn configs_resolve_as_transformers_resolves_them() {
    let golden = golden("qwen2vl.json");
    for case in golden["configs"].as_array().unwrap() {
        let json = case["json"].as_str().unwrap();
        let want = &case["resolved"];
        let c = Qwen2VlConfig::from_json(json).unwrap();
        assert_eq!(
            c.min_pixels,
            want["size"]["shortest_edge"].as_u64().unwrap(),
            "{json}"
        );
        assert_eq!(
            c.max_pixels,
            want["size"]["longest_edge"].as_u64().unwrap(),
            "{json}"
        );
        assert_eq!(
            u64::from(c.patch_size),
            want["patch_size"].as_u64().unwrap()
        );
        assert_eq!(
            u64::from(c.merge_size),
            want["merge_size"].as_u64().unwrap()
        );
        assert_eq!(
            u64::from(c.temporal_patch_size),
            want["temporal_patch_size"].as_u64().unwrap()
        );
        common::assert_normalization(&c.normalization, want, json);
        assert_eq!(c.do_resize, want["do_resize"].as_bool().unwrap());
        assert_eq!(
            Some(c.resample),
            weft_vision::Filter::from_pil(want["resample"].as_u64().unwrap() as u32)
        );
    }
}
