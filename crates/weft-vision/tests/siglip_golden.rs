//! `Gemma3ImageProcessor` (torchvision backend, transformers' default) and
//! `Gemma3ImageProcessorPil` against tests/golden/vision/gemma3.json, to within 1e-6.

mod common;

use common::{backend, case_config, compare_summary, golden, processor_input};
use weft_vision::{SiglipConfig, SiglipProcessor};

#[test]
fn defaults_are_transformers_defaults() {
    let d = &golden("gemma3.json")["defaults"];
    let c = SiglipConfig::default();
    assert_eq!(u64::from(c.height), d["size"]["height"].as_u64().unwrap());
    assert_eq!(u64::from(c.width), d["size"]["width"].as_u64().unwrap());
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
    let golden = golden("gemma3.json");
    for case in golden["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let image = processor_input(name);
        let config = SiglipConfig::from_json(&case_config(case)).unwrap();
        for key in ["torchvision", "pil"] {
            let want = &case[key];
            let out = SiglipProcessor::new(config.clone(), backend(key))
                .preprocess(&image)
                .unwrap();
            let chw: Vec<u64> = want["chw"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                vec![3, u64::from(out.height), u64::from(out.width)],
                chw,
                "{name} {key}"
            );
            compare_summary(
                &out.pixel_values,
                out.width as usize,
                &want["pixel_values"],
                &format!("gemma3 {name} {} {key}", case["settings"]),
            );
        }
    }
}

#[test]
fn configs_resolve_as_transformers_resolves_them() {
    let golden = golden("gemma3.json");
    for case in golden["configs"].as_array().unwrap() {
        let json = case["json"].as_str().unwrap();
        let want = &case["resolved"];
        let c = SiglipConfig::from_json(json).unwrap();
        assert_eq!(
            u64::from(c.height),
            want["size"]["height"].as_u64().unwrap(),
            "{json}"
        );
        assert_eq!(
            u64::from(c.width),
            want["size"]["width"].as_u64().unwrap(),
            "{json}"
        );
        common::assert_normalization(&c.normalization, want, json);
        assert_eq!(c.do_resize, want["do_resize"].as_bool().unwrap());
        assert_eq!(
            Some(c.resample),
            weft_vision::Filter::from_pil(want["resample"].as_u64().unwrap() as u32)
        );
    }
}

#[test]
fn pan_and_scan_is_refused_rather_than_ignored() {
    let err = SiglipConfig::from_json(r#"{"do_pan_and_scan": true}"#).unwrap_err();
    assert!(
        matches!(err, weft_vision::ConfigError::Unsupported(_)),
        "{err}"
    );
    assert!(
        SiglipConfig::from_json(r#"{"resample": 1}"#).is_err(),
        "LANCZOS is not implemented"
    );
    assert!(SiglipConfig::from_json(r#"{"size": {"height": 0, "width": 4}}"#).is_err());
}
