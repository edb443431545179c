//! Robustness of the CTranslate2 reader and of building Whisper from what it reads: a tiny
//! WhisperSpec `model.bin` written here, its deterministic mutations (bytes, and variables
//! with changed shapes, ranks, types or missing), none of which may panic. The `ct2_model`
//! fuzz target (fuzz/) does the same with coverage guidance.

use std::path::{Path, PathBuf};

use weft_audio::ct2::Ct2Model;
use weft_audio::model::SpecialTokens;
use weft_audio::tensors::TensorSource;
use weft_audio::{ModelError, TranscribeOptions, Transcriber, Whisper};
use weft_models::tokenizer::Tokenizer;

const D: u32 = 4;
const HEADS: i32 = 2;
const MELS: u32 = 2;
const HIDDEN: u32 = 8;
const VOCAB: u32 = 10;

#[derive(Clone)]
struct Var {
    name: String,
    shape: Vec<u32>,
    /// 0 f32, 3 i32, 4 f16.
    dtype: u8,
}

/// The variables of a one-layer Whisper (d_model 4, 2 heads, 2 mel bins).
/// A linear layer: its name, output and input widths.
type Linear<'a> = (&'a str, u32, u32);
/// One change to a variable list.
type Mutation<'a> = dyn Fn(&mut Vec<Var>) + 'a;

fn variables() -> Vec<Var> {
    let mut vars = Vec::new();
    let mut var = |name: &str, shape: &[u32], dtype: u8| {
        vars.push(Var {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype,
        })
    };
    var("encoder/num_heads", &[], 3);
    var("encoder/conv1/weight", &[D, MELS, 3], 4);
    var("encoder/conv1/bias", &[D], 4);
    var("encoder/conv2/weight", &[D, D, 3], 4);
    var("encoder/conv2/bias", &[D], 4);
    var("encoder/position_encodings/encodings", &[1500, D], 4);
    let blocks: [(&str, &[Linear]); 5] = [
        (
            "encoder/layer_0/self_attention",
            &[("linear_0", 3 * D, D), ("linear_1", D, D)],
        ),
        (
            "encoder/layer_0/ffn",
            &[("linear_0", HIDDEN, D), ("linear_1", D, HIDDEN)],
        ),
        (
            "decoder/layer_0/self_attention",
            &[("linear_0", 3 * D, D), ("linear_1", D, D)],
        ),
        (
            "decoder/layer_0/attention",
            &[
                ("linear_0", D, D),
                ("linear_1", 2 * D, D),
                ("linear_2", D, D),
            ],
        ),
        (
            "decoder/layer_0/ffn",
            &[("linear_0", HIDDEN, D), ("linear_1", D, HIDDEN)],
        ),
    ];
    for (scope, linears) in blocks {
        var(&format!("{scope}/layer_norm/gamma"), &[D], 4);
        var(&format!("{scope}/layer_norm/beta"), &[D], 4);
        for &(name, out, inp) in linears {
            var(&format!("{scope}/{name}/weight"), &[out, inp], 4);
            var(&format!("{scope}/{name}/bias"), &[out], 4);
        }
    }
    var("encoder/layer_norm/gamma", &[D], 0);
    var("encoder/layer_norm/beta", &[D], 0);
    var("decoder/embeddings/weight", &[VOCAB, D], 4);
    var("decoder/position_encodings/encodings", &[8, D], 0);
    var("decoder/layer_norm/gamma", &[D], 4);
    var("decoder/layer_norm/beta", &[D], 4);
    vars
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u16 + 1).to_le_bytes());
    b.extend(s.as_bytes());
    b.push(0);
}

/// A `model.bin` (binary version 6) holding `vars` and `aliases`.
fn model_bin(vars: &[Var], aliases: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(6u32.to_le_bytes());
    put_str(&mut b, "WhisperSpec");
    b.extend(3u32.to_le_bytes());
    b.extend((vars.len() as u32).to_le_bytes());
    for (k, v) in vars.iter().enumerate() {
        put_str(&mut b, &v.name);
        b.push(v.shape.len() as u8);
        for &d in &v.shape {
            b.extend(d.to_le_bytes());
        }
        b.push(v.dtype);
        let n: usize = v.shape.iter().map(|&d| d as usize).product();
        let size = if v.dtype == 4 { 2 } else { 4 };
        b.extend(((n * size) as u32).to_le_bytes());
        for j in 0..n {
            let x = ((k * 7 + j) % 13) as f32 / 8.0 - 0.75;
            match v.dtype {
                0 => b.extend(x.to_le_bytes()),
                3 => b.extend(HEADS.to_le_bytes()),
                _ => b.extend(half::f16::from_f32(x).to_le_bytes()),
            }
        }
    }
    b.extend((aliases.len() as u32).to_le_bytes());
    for (alias, target) in aliases {
        put_str(&mut b, alias);
        put_str(&mut b, target);
    }
    b
}

/// Whisper's special tokens at ids 0-7, timestamps from 8.
fn tokenizer() -> Tokenizer {
    let specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        "<|0.00|>",
    ];
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, t)| serde_json::json!({"id": id, "content": t, "special": true}))
        .collect();
    let json = serde_json::json!({
        "model": {"type": "BPE", "vocab": {"a": 9}, "merges": []},
        "added_tokens": added,
    });
    Tokenizer::from_hf_json(&json.to_string()).expect("stand-in tokenizer")
}

fn tokens() -> SpecialTokens {
    SpecialTokens {
        sot: 1,
        eot: 0,
        sot_prev: 5,
        transcribe: 4,
        translate: 3,
        no_timestamps: 7,
        no_speech: 6,
        timestamp_begin: 8,
        languages: vec![("en".into(), 2)],
        suppress: vec![9],
        suppress_begin: vec![0],
    }
}

/// Parses `bytes` and, when they parse, reads every variable and builds the model.
fn load(bytes: &[u8]) -> Result<Whisper, ModelError> {
    let model = Ct2Model::from_bytes(bytes, Path::new("test/model.bin"))?;
    let names: Vec<(String, Vec<usize>)> = model
        .variables()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect();
    for (name, shape) in &names {
        if let Ok(t) = model.tensor(name) {
            assert_eq!(&t.shape, shape);
            assert_eq!(t.data.len(), shape.iter().product::<usize>());
        }
        let _ = model.scalar_int(name);
    }
    let heads = usize::try_from(model.scalar_int("encoder/num_heads")?).unwrap_or(0);
    Whisper::build(&model, heads, tokenizer(), tokens(), PathBuf::new())
}

#[test]
fn the_tiny_model_builds_from_bytes_and_from_a_file() {
    let bytes = model_bin(
        &variables(),
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    let w = load(&bytes).expect("tiny model");
    assert_eq!(
        (w.config.d_model, w.config.n_heads, w.config.n_mels),
        (4, 2, 2)
    );
    assert_eq!((w.config.encoder_layers, w.config.decoder_layers), (1, 1));
    assert_eq!(
        (w.config.n_audio_ctx, w.config.n_text_ctx, w.config.n_vocab),
        (1500, 8, 10)
    );
    let dir = std::env::temp_dir().join(format!("weft-ct2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bin");
    std::fs::write(&path, &bytes).unwrap();
    let from_file = Ct2Model::open(&path).unwrap();
    let from_bytes = Ct2Model::from_bytes(&bytes, &path).unwrap();
    let mut a: Vec<_> = from_file.variables().collect();
    let mut b: Vec<_> = from_bytes.variables().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let name = "decoder/projection/weight";
    assert_eq!(
        from_file.tensor(name).unwrap().data,
        from_bytes.tensor(name).unwrap().data
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What builds must run: the transcriber relies on the 1500 encoder positions and the
/// decoder's positions that the build checks (a model with 3 encoder positions once built,
/// then failed an assertion on its first window).
#[test]
fn a_model_that_builds_transcribes() {
    let bytes = model_bin(&variables(), &[]);
    let t = Transcriber::new(load(&bytes).expect("tiny model"), 1);
    let noise: Vec<f32> = (0..16_000u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 16) as f32 / 65_536.0 - 0.5) * 0.2)
        .collect();
    let opts = TranscribeOptions {
        beam_size: 1,
        best_of: 1,
        temperatures: vec![0.0],
        ..TranscribeOptions::default()
    };
    t.transcribe(&noise, &opts)
        .expect("a transcript, however meaningless");
    for (name, shape) in [
        ("encoder/position_encodings/encodings", vec![3, D]),
        ("decoder/position_encodings/encodings", vec![1, D]),
        ("decoder/position_encodings/encodings", vec![0, D]),
    ] {
        let mut vars = variables();
        vars.iter_mut().find(|v| v.name == name).unwrap().shape = shape.clone();
        let err = load(&model_bin(&vars, &[])).err().expect("refused");
        assert!(
            err.to_string().contains("positions"),
            "{name} {shape:?}: {err}"
        );
    }
}

/// Each variable in turn with another rank, a zero or huge dimension, an integer type, or
/// missing: the build must refuse (or accept) the file, not panic.
#[test]
fn every_variable_with_a_wrong_shape_or_type_is_refused() {
    let vars = variables();
    let mut refused = 0;
    for i in 0..vars.len() {
        let variants: [&Mutation; 7] = [
            &|v| v[i].shape.clear(),
            &|v| v[i].shape.push(1),
            &|v| v[i].shape.insert(0, 2),
            &|v| v[i].shape.iter_mut().for_each(|d| *d = 0),
            &|v| v[i].shape.iter_mut().take(1).for_each(|d| *d += 1),
            &|v| v[i].dtype = 3,
            &|v| {
                v.remove(i);
            },
        ];
        for change in variants {
            let mut v = vars.clone();
            change(&mut v);
            if load(&model_bin(&v, &[])).is_err() {
                refused += 1;
            }
        }
    }
    assert!(refused > vars.len() * 5, "{refused}");
}

use weft_test_support::Rng;

#[test]
fn byte_mutations_never_panic() {
    let seed = model_bin(
        &variables(),
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    // Offsets outside the encoder positions' 12 kB of values, where the structure is.
    let name = b"encoder/position_encodings/encodings\0";
    let at = seed.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let values = at + 1 + 8 + 1 + 4; // rank, 2 dims, dtype, byte count
    let structure: Vec<usize> = (0..seed.len())
        .filter(|p| !(values..values + 1500 * D as usize * 2).contains(p))
        .collect();
    let interesting: [u32; 8] = [0, 1, 2, 3, 0xff, 0xffff, 0x7fff_ffff, u32::MAX];
    let mut rng = Rng(0x0c72_0de1_5eed_0001);
    let (mut built, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut b = seed.clone();
        for _ in 0..1 + rng.below(3) {
            let p = match structure.get(rng.below(structure.len())) {
                Some(&p) if p < b.len() && rng.below(8) != 0 => p,
                _ => rng.below(b.len()),
            };
            match rng.below(5) {
                0 => b[p] ^= 1 << rng.below(8),
                1 => b[p] = rng.next_u64() as u8,
                2 => b.truncate(p),
                3 => {
                    let v = interesting[rng.below(interesting.len())].to_le_bytes();
                    if p + 4 <= b.len() {
                        b[p..p + 4].copy_from_slice(&v);
                    }
                }
                _ => b[p] = b[p].wrapping_add(rng.below(5) as u8).wrapping_sub(2),
            }
            if b.is_empty() {
                break;
            }
        }
        match load(&b) {
            Ok(_) => built += 1,
            Err(_) => refused += 1,
        }
    }
    println!("mutations: {built} built, {refused} refused");
    assert!(built > 0 && refused > 0);
}
