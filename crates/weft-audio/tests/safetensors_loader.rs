//! The Hugging Face loader against the CTranslate2 one: the packaged whisper-base's weights are
//! rewritten here in the `openai/whisper-*` safetensors layout (separate Q/K/V, HF names, f16,
//! config.json, generation_config.json), loaded through `Whisper::load`, and must transcribe
//! espeak-ng speech token for token as the CTranslate2 model does. (No HF checkpoint ships in
//! a package; this derives one from the same weights, so both loaders see the same numbers.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use weft_audio::ct2::Ct2Model;
use weft_audio::tensors::TensorSource;
use weft_audio::{TranscribeOptions, Transcriber, Whisper};

/// HF names for one CTranslate2 variable, and how many equal row blocks it splits into
/// (fused Q/K/V). `None` names a block HF does not store (K's bias, always zero).
fn hf_names(ct2: &str) -> Option<Vec<Option<String>>> {
    let fixed = |s: &str| Some(vec![Some(s.to_string())]);
    match ct2 {
        "encoder/position_encodings/encodings" => {
            return fixed("model.encoder.embed_positions.weight")
        }
        "decoder/position_encodings/encodings" => {
            return fixed("model.decoder.embed_positions.weight")
        }
        "decoder/embeddings/weight" => return fixed("model.decoder.embed_tokens.weight"),
        _ => {}
    }
    let p: Vec<&str> = ct2.split('/').collect();
    let leaf = match *p.last()? {
        "gamma" | "weight" => "weight",
        "beta" | "bias" => "bias",
        _ => return None,
    };
    let side = p[0];
    match p.len() {
        3 => Some(vec![Some(format!("model.{side}.{}.{leaf}", p[1]))]),
        5 => {
            let i = p[1].strip_prefix("layer_")?;
            let base = format!("model.{side}.layers.{i}");
            let one = |m: &str| Some(vec![Some(format!("{base}.{m}.{leaf}"))]);
            let split = |attn: &str, parts: &[&str]| {
                Some(
                    parts
                        .iter()
                        .map(|q| {
                            (leaf == "weight" || *q != "k_proj")
                                .then(|| format!("{base}.{attn}.{q}.{leaf}"))
                        })
                        .collect(),
                )
            };
            match (p[2], p[3]) {
                ("self_attention", "layer_norm") => one("self_attn_layer_norm"),
                ("self_attention", "linear_0") => {
                    split("self_attn", &["q_proj", "k_proj", "v_proj"])
                }
                ("self_attention", "linear_1") => one("self_attn.out_proj"),
                ("attention", "layer_norm") => one("encoder_attn_layer_norm"),
                ("attention", "linear_0") => one("encoder_attn.q_proj"),
                ("attention", "linear_1") => split("encoder_attn", &["k_proj", "v_proj"]),
                ("attention", "linear_2") => one("encoder_attn.out_proj"),
                ("ffn", "layer_norm") => one("final_layer_norm"),
                ("ffn", "linear_0") => one("fc1"),
                ("ffn", "linear_1") => one("fc2"),
                _ => None,
            }
        }
        _ => None,
    }
}

fn write_hf_copy(ct2_dir: &Path, out: &Path) {
    let model = Ct2Model::open(&ct2_dir.join("model.bin")).unwrap();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, shape) in model.variables() {
        if shape.is_empty() || name == "decoder/projection/weight" {
            continue;
        }
        let Some(names) = hf_names(name) else {
            panic!("no HF name for {name}")
        };
        let t = model.tensor(name).unwrap();
        let rows = t.shape[0] / names.len();
        let per = t.data.len() / names.len();
        for (k, hf) in names.into_iter().enumerate() {
            let block = &t.data[k * per..(k + 1) * per];
            let Some(hf) = hf else {
                assert!(
                    block.iter().all(|&v| v == 0.0),
                    "{name}: K bias is not zero"
                );
                continue;
            };
            let mut shape = t.shape.clone();
            shape[0] = rows;
            let bytes = block
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            tensors.insert(hf, (shape, bytes));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (shape, bytes))| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let data = safetensors::serialize(views, None).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("model.safetensors"), data).unwrap();
    std::fs::copy(ct2_dir.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    let ct2_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct2_dir.join("config.json")).unwrap())
            .unwrap();
    let heads = model.scalar_int("encoder/num_heads").unwrap();
    let config = serde_json::json!({
        "model_type": "whisper",
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "num_mel_bins": 80,
    });
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    let generation = serde_json::json!({
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
    });
    std::fs::write(out.join("generation_config.json"), generation.to_string()).unwrap();
}

#[test]
fn safetensors_model_transcribes_like_the_ctranslate2_one() {
    let Some(model_bin) = weft_test_support::model_path("whisper-base/model.bin") else {
        return;
    };
    if !weft_test_support::commands(&["espeak-ng"]) {
        return;
    }
    let ct2_dir = model_bin.parent().expect("model.bin is in a folder");
    let scratch = std::env::temp_dir().join(format!("weft-hf-whisper-{}", std::process::id()));
    let hf_dir = scratch.join("hf");
    write_hf_copy(ct2_dir, &hf_dir);
    let wav = scratch.join("speech.wav");
    let spoke = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg("Two loaders read the same weights and must hear the same words.")
        .status();
    assert!(spoke.is_ok_and(|s| s.success()), "espeak-ng speaks");
    let bytes = std::fs::read(&wav).unwrap();
    let opts = TranscribeOptions {
        language: Some("en".into()),
        beam_size: 1,
        ..TranscribeOptions::default()
    };
    let hf = Whisper::load(&hf_dir).expect("the safetensors copy loads");
    let ct2 = Whisper::load(ct2_dir).unwrap();
    assert_eq!(hf.config, ct2.config);
    assert_eq!(hf.tokens.suppress, ct2.tokens.suppress);
    let a = Transcriber::new(hf, 2)
        .transcribe_bytes(&bytes, &opts)
        .unwrap();
    let b = Transcriber::new(ct2, 2)
        .transcribe_bytes(&bytes, &opts)
        .unwrap();
    let tokens = |t: &weft_audio::Transcript| -> Vec<u32> {
        t.segments.iter().flat_map(|s| s.tokens.clone()).collect()
    };
    assert!(!a.text.is_empty());
    assert_eq!(a.text, b.text);
    assert_eq!(tokens(&a), tokens(&b));
    std::fs::remove_dir_all(&scratch).ok();
}
