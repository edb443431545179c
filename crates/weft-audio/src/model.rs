//! Whisper's shape and weights, built from any `TensorSource` (CTranslate2 `model.bin` or
//! Hugging Face safetensors), plus the tokenizer and the special-token ids decoding needs.

use std::path::{Path, PathBuf};

pub use weft_kernels::sgemm::Linear;
use weft_kernels::sgemm::PackedB;
use weft_models::tokenizer::Tokenizer;

use crate::error::ModelError;
use crate::mel::CHUNK_FRAMES;
use crate::tensors::{Tensor, TensorSource};

/// Fewest decoder positions a model may have (Whisper's have 448): the start sequence takes
/// up to four.
pub const MIN_TEXT_CTX: usize = 8;

/// Sizes of one Whisper model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhisperConfig {
    pub n_mels: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Encoder positions (1500: 30 s of 20 ms frames after the stride-2 convolution).
    pub n_audio_ctx: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
    pub n_vocab: usize,
}

pub struct LayerNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

pub struct SelfAttention {
    pub ln: LayerNorm,
    /// Q, K and V fused: `[3d, d]`.
    pub qkv: Linear,
    pub out: Linear,
}

pub struct CrossAttention {
    pub ln: LayerNorm,
    pub q: Linear,
    /// K and V of the encoder output, fused: `[2d, d]`.
    pub kv: Linear,
    pub out: Linear,
}

pub struct Ffn {
    pub ln: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

pub struct EncoderLayer {
    pub attn: SelfAttention,
    pub ffn: Ffn,
}

pub struct DecoderLayer {
    pub attn: SelfAttention,
    pub cross: CrossAttention,
    pub ffn: Ffn,
}

pub struct EncoderWeights {
    /// `[d, n_mels * 3]`: the kernel-3 convolution as a product with im2col rows.
    pub conv1: Linear,
    /// `[d, d * 3]`, applied with stride 2.
    pub conv2: Linear,
    /// `[n_audio_ctx, d]` sinusoidal positions.
    pub positions: Vec<f32>,
    pub layers: Vec<EncoderLayer>,
    pub ln_post: LayerNorm,
}

pub struct DecoderWeights {
    /// `[n_vocab, d]` token embeddings (rows looked up by id).
    pub embed: Vec<f32>,
    /// The same matrix packed: the output projection is tied to the embeddings.
    pub logits: PackedB,
    /// `[n_text_ctx, d]` learned positions.
    pub positions: Vec<f32>,
    pub layers: Vec<DecoderLayer>,
    pub ln: LayerNorm,
}

/// Ids of Whisper's special tokens, found by their text in the tokenizer.
#[derive(Clone, Debug)]
pub struct SpecialTokens {
    pub sot: u32,
    pub eot: u32,
    pub sot_prev: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub no_timestamps: u32,
    pub no_speech: u32,
    /// First timestamp token (`<|0.00|>`); every id from here to the vocabulary end is one,
    /// 20 ms apart.
    pub timestamp_begin: u32,
    /// (code, id) of each language token, in the model's order.
    pub languages: Vec<(String, u32)>,
    /// Tokens never sampled (`suppress_ids`: symbols that are not speech).
    pub suppress: Vec<u32>,
    /// Tokens not sampled first (`suppress_ids_begin`: a blank and end of text).
    pub suppress_begin: Vec<u32>,
}

impl SpecialTokens {
    pub fn is_multilingual(&self) -> bool {
        self.languages.len() > 1
    }
    pub fn language(&self, code: &str) -> Option<u32> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|&(_, id)| id)
    }
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages
            .iter()
            .find(|&&(_, i)| i == id)
            .map(|(c, _)| c.as_str())
    }
}

/// A loaded Whisper model: encoder, decoder, tokenizer.
pub struct Whisper {
    pub config: WhisperConfig,
    pub encoder: EncoderWeights,
    pub decoder: DecoderWeights,
    pub tokenizer: Tokenizer,
    pub tokens: SpecialTokens,
    /// Where it was loaded from (for logs).
    pub source: PathBuf,
}

/// How often a weight is applied, which decides how it is packed. Once per 30-second window
/// (the encoder, and cross-attention's K/V of the encoded window) it multiplies 1500 rows and
/// the product is bound by arithmetic: f32 panels. Once per decoder step it multiplies a few
/// rows (the beams) and the product is bound by the bytes read: f16 panels when the file's
/// weights are half precision, which gives the same product.
#[derive(Clone, Copy)]
enum Applied {
    PerWindow,
    PerStep,
}

impl Applied {
    fn pack(self, w: &[f32], out: usize, inp: usize) -> PackedB {
        match self {
            Applied::PerWindow => PackedB::from_rows(w, out, inp),
            Applied::PerStep => PackedB::from_rows_lossless_f16(w, out, inp),
        }
    }
}

fn linear(
    src: &dyn TensorSource,
    applied: Applied,
    scope: &str,
    out: usize,
    inp: usize,
) -> Result<Linear, ModelError> {
    let wname = format!("{scope}/weight");
    let w = src.tensor(&wname)?.expect(&wname, &[out, inp])?;
    let bname = format!("{scope}/bias");
    let b = if src.has(&bname) {
        Some(src.tensor(&bname)?.expect(&bname, &[out])?)
    } else {
        None
    };
    Ok(Linear {
        w: applied.pack(&w, out, inp),
        b,
    })
}

fn layer_norm(src: &dyn TensorSource, scope: &str, d: usize) -> Result<LayerNorm, ModelError> {
    let g = format!("{scope}/gamma");
    let b = format!("{scope}/beta");
    Ok(LayerNorm {
        gamma: src.tensor(&g)?.expect(&g, &[d])?,
        beta: src.tensor(&b)?.expect(&b, &[d])?,
    })
}

fn self_attention(
    src: &dyn TensorSource,
    applied: Applied,
    scope: &str,
    d: usize,
) -> Result<SelfAttention, ModelError> {
    Ok(SelfAttention {
        ln: layer_norm(src, &format!("{scope}/layer_norm"), d)?,
        qkv: linear(src, applied, &format!("{scope}/linear_0"), 3 * d, d)?,
        out: linear(src, applied, &format!("{scope}/linear_1"), d, d)?,
    })
}

fn ffn(src: &dyn TensorSource, applied: Applied, scope: &str, d: usize) -> Result<Ffn, ModelError> {
    let bias = format!("{scope}/linear_0/bias");
    let hidden = match src.tensor(&bias)?.shape[..] {
        [hidden] => hidden,
        ref got => {
            return Err(ModelError::Config(format!(
                "tensor '{bias}' has shape {got:?}, expected one dimension"
            )))
        }
    };
    Ok(Ffn {
        ln: layer_norm(src, &format!("{scope}/layer_norm"), d)?,
        fc1: linear(src, applied, &format!("{scope}/linear_0"), hidden, d)?,
        fc2: linear(src, applied, &format!("{scope}/linear_1"), d, hidden)?,
    })
}

fn count_layers(src: &dyn TensorSource, side: &str) -> usize {
    (0..)
        .take_while(|i| src.has(&format!("{side}/layer_{i}/ffn/linear_0/weight")))
        .count()
}

/// The encoder's first convolution `[d_model, n_mels, 3]`, with those two sizes.
fn conv1(src: &dyn TensorSource) -> Result<(Tensor, usize, usize), ModelError> {
    let conv1 = src.tensor("encoder/conv1/weight")?;
    let [d, n_mels, 3] = conv1.shape[..] else {
        return Err(ModelError::Shape {
            name: "encoder/conv1/weight".into(),
            got: conv1.shape,
            want: vec![0, 80, 3],
        });
    };
    Ok((conv1, d, n_mels))
}

impl EncoderWeights {
    /// The encoder's weights from tensors under CTranslate2 names (`encoder/...`): `layers`
    /// layers, and `positions` (`[n, d]`, n the most positions a window may have). Its
    /// width and mel bins are those of `encoder/conv1/weight`.
    pub fn build(
        src: &dyn TensorSource,
        layers: usize,
        positions: Vec<f32>,
    ) -> Result<EncoderWeights, ModelError> {
        let (conv1, d, n_mels) = conv1(src)?;
        if d == 0 || !positions.len().is_multiple_of(d) {
            return Err(ModelError::Config(format!(
                "{} position values are not rows of d_model {d}",
                positions.len()
            )));
        }
        let conv1_w = conv1.expect("encoder/conv1/weight", &[d, n_mels, 3])?;
        let conv2_w = src
            .tensor("encoder/conv2/weight")?
            .expect("encoder/conv2/weight", &[d, d, 3])?;
        Ok(EncoderWeights {
            conv1: Linear {
                w: PackedB::from_rows(&conv1_w, d, n_mels * 3),
                b: Some(
                    src.tensor("encoder/conv1/bias")?
                        .expect("encoder/conv1/bias", &[d])?,
                ),
            },
            conv2: Linear {
                w: PackedB::from_rows(&conv2_w, d, d * 3),
                b: Some(
                    src.tensor("encoder/conv2/bias")?
                        .expect("encoder/conv2/bias", &[d])?,
                ),
            },
            positions,
            layers: (0..layers)
                .map(|i| {
                    let s = format!("encoder/layer_{i}");
                    Ok(EncoderLayer {
                        attn: self_attention(
                            src,
                            Applied::PerWindow,
                            &format!("{s}/self_attention"),
                            d,
                        )?,
                        ffn: ffn(src, Applied::PerWindow, &format!("{s}/ffn"), d)?,
                    })
                })
                .collect::<Result<_, ModelError>>()?,
            ln_post: layer_norm(src, "encoder/layer_norm", d)?,
        })
    }

    /// Width of the encoder's rows.
    pub fn d_model(&self) -> usize {
        self.ln_post.gamma.len()
    }

    /// Mel bins it reads.
    pub fn n_mels(&self) -> usize {
        self.conv1.w.k() / 3
    }

    /// Most positions one window may have.
    pub fn max_positions(&self) -> usize {
        self.positions.len() / self.d_model()
    }
}

/// Whisper's fixed sinusoidal positions, `[length, channels]`: sines of the first half of
/// the channels then cosines, timescales from 1 to 10,000 (Whisper's `sinusoids`).
pub fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let increment = (10_000f64).ln() / (half.max(2) - 1) as f64;
    // Computed in f32 as the reference does (torch's float32 exp and products).
    let inv: Vec<f32> = (0..half)
        .map(|i| (-(increment as f32) * i as f32).exp())
        .collect();
    let mut out = vec![0.0f32; length * channels];
    for (t, row) in out.chunks_exact_mut(channels).enumerate() {
        for (i, &f) in inv.iter().enumerate() {
            let x = t as f32 * f;
            row[i] = x.sin();
            row[half + i] = x.cos();
        }
    }
    out
}

impl Whisper {
    /// Builds the model from tensors under CTranslate2 names. `n_heads` comes from the file's
    /// metadata (it is not visible in any shape).
    pub fn build(
        src: &dyn TensorSource,
        n_heads: usize,
        tokenizer: Tokenizer,
        tokens: SpecialTokens,
        source: PathBuf,
    ) -> Result<Whisper, ModelError> {
        let (_, d, n_mels) = conv1(src)?;
        let enc_pos = src.tensor("encoder/position_encodings/encodings")?;
        let dec_pos = src.tensor("decoder/position_encodings/encodings")?;
        let embed = src.tensor("decoder/embeddings/weight")?;
        if n_heads == 0 || d % n_heads != 0 {
            return Err(ModelError::Config(format!(
                "{n_heads} heads do not divide d_model {d}"
            )));
        }
        let config = WhisperConfig {
            n_mels,
            d_model: d,
            n_heads,
            encoder_layers: count_layers(src, "encoder"),
            decoder_layers: count_layers(src, "decoder"),
            n_audio_ctx: enc_pos.shape.first().copied().unwrap_or(0),
            n_text_ctx: dec_pos.shape.first().copied().unwrap_or(0),
            n_vocab: embed.shape.first().copied().unwrap_or(0),
        };
        if config.encoder_layers == 0 || config.decoder_layers == 0 {
            return Err(ModelError::Config("no encoder or decoder layers".into()));
        }
        if d == 0 || n_mels == 0 {
            return Err(ModelError::Config(format!(
                "d_model {d} and {n_mels} mel bins must be positive"
            )));
        }
        // The shapes the transcriber relies on: the encoder takes 30-second windows, and the
        // decoder needs room for the start sequence and some text.
        if config.n_audio_ctx != CHUNK_FRAMES / 2 {
            return Err(ModelError::Config(format!(
                "{} encoder positions; a 30-second window needs {}",
                config.n_audio_ctx,
                CHUNK_FRAMES / 2
            )));
        }
        if config.n_text_ctx < MIN_TEXT_CTX {
            return Err(ModelError::Config(format!(
                "{} decoder positions; at least {MIN_TEXT_CTX} are needed",
                config.n_text_ctx
            )));
        }
        if (tokens.timestamp_begin as usize) >= config.n_vocab {
            return Err(ModelError::Config(format!(
                "timestamp tokens start at {} but the vocabulary has {} entries",
                tokens.timestamp_begin, config.n_vocab
            )));
        }
        let positions = enc_pos.expect(
            "encoder/position_encodings/encodings",
            &[config.n_audio_ctx, d],
        )?;
        let encoder = EncoderWeights::build(src, config.encoder_layers, positions)?;
        let embed = embed.expect("decoder/embeddings/weight", &[config.n_vocab, d])?;
        let decoder = DecoderWeights {
            logits: Applied::PerStep.pack(&embed, config.n_vocab, d),
            embed,
            positions: dec_pos.expect(
                "decoder/position_encodings/encodings",
                &[config.n_text_ctx, d],
            )?,
            layers: (0..config.decoder_layers)
                .map(|i| {
                    let s = format!("decoder/layer_{i}");
                    Ok(DecoderLayer {
                        attn: self_attention(
                            src,
                            Applied::PerStep,
                            &format!("{s}/self_attention"),
                            d,
                        )?,
                        cross: CrossAttention {
                            ln: layer_norm(src, &format!("{s}/attention/layer_norm"), d)?,
                            q: linear(
                                src,
                                Applied::PerStep,
                                &format!("{s}/attention/linear_0"),
                                d,
                                d,
                            )?,
                            kv: linear(
                                src,
                                Applied::PerWindow,
                                &format!("{s}/attention/linear_1"),
                                2 * d,
                                d,
                            )?,
                            out: linear(
                                src,
                                Applied::PerStep,
                                &format!("{s}/attention/linear_2"),
                                d,
                                d,
                            )?,
                        },
                        ffn: ffn(src, Applied::PerStep, &format!("{s}/ffn"), d)?,
                    })
                })
                .collect::<Result<_, ModelError>>()?,
            ln: layer_norm(src, "decoder/layer_norm", d)?,
        };
        Ok(Whisper {
            config,
            encoder,
            decoder,
            tokenizer,
            tokens,
            source,
        })
    }

    /// Loads a model from a CTranslate2 directory (`model.bin`, `config.json`,
    /// `tokenizer.json`), a path to its `model.bin`, or a Hugging Face directory
    /// (`model.safetensors`, `config.json`, `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Whisper, ModelError> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let is_ct2 = if path.is_dir() {
            dir.join("model.bin").is_file()
        } else {
            path.extension().is_some_and(|e| e == "bin")
        };
        if is_ct2 {
            crate::load_ct2::load(&dir)
        } else {
            crate::load_hf::load(&dir)
        }
    }
}

/// Reads a file the model directory must hold.
pub(crate) fn read_text(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Special tokens from the tokenizer, with the suppression lists the model's config gives.
pub(crate) fn special_tokens(
    tok: &Tokenizer,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
) -> Result<SpecialTokens, ModelError> {
    let id = |text: &str| {
        tok.token_id(text)
            .ok_or_else(|| ModelError::Config(format!("the tokenizer has no {text} token")))
    };
    let sot = id("<|startoftranscript|>")?;
    let translate = id("<|translate|>")?;
    let no_timestamps = id("<|notimestamps|>")?;
    let no_speech = id("<|nospeech|>").or_else(|_| id("<|nocaptions|>"))?;
    let languages = (sot + 1..translate)
        .filter_map(|i| {
            let t = tok.token_text(i);
            let code = t.strip_prefix("<|")?.strip_suffix("|>")?;
            Some((code.to_string(), i))
        })
        .collect();
    Ok(SpecialTokens {
        sot,
        eot: id("<|endoftext|>")?,
        sot_prev: id("<|startofprev|>")?,
        transcribe: id("<|transcribe|>")?,
        translate,
        no_timestamps,
        no_speech,
        timestamp_begin: no_timestamps + 1,
        languages,
        suppress,
        suppress_begin,
    })
}
