//! Qwen2.5-Omni's audio tower: Whisper's encoder (here with 128 mel bins) run over chunks of
//! `2 * n_window` mel frames (2 seconds), each chunk attending only to itself with positions
//! from its own start; then every two rows averaged, layer-normed and projected to the
//! language model's width. A chunk's rows depend on that chunk alone, so a recording is
//! encoded chunk by chunk (25 rows per second of audio).

use std::ops::Range;

use weft_kernels::pool::ThreadPool;
use weft_kernels::sgemm::{Linear, PackedB};
use weft_models::weights::SafetensorsFiles;

use crate::encoder::{conv_rows, encode_layers, layer_norm_rows};
use crate::error::ModelError;
use crate::load_hf::{HfLayout, SafetensorsFile};
use crate::mel::{LogMel, MelExtractor, CHUNK_SAMPLES, HOP};
use crate::model::{sinusoids, EncoderWeights, LayerNorm};
use crate::tensors::TensorSource;

/// The tower's settings (`audio_config` of a Qwen2.5-Omni thinker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioTowerConfig {
    pub n_mels: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub layers: usize,
    /// Half the mel frames of one chunk.
    pub n_window: usize,
    /// Positions one chunk may use (1500 as Whisper's).
    pub max_source_positions: usize,
    /// Width of the rows given to the language model.
    pub output_dim: usize,
}

impl AudioTowerConfig {
    /// Reads `audio_config` of a `config.json`.
    pub fn from_hf(c: &serde_json::Value) -> Result<AudioTowerConfig, ModelError> {
        let need = |key: &str| {
            c[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config(format!("audio_config has no {key}")))
        };
        let config = AudioTowerConfig {
            n_mels: need("num_mel_bins")?,
            d_model: need("d_model")?,
            n_heads: need("encoder_attention_heads")?,
            layers: need("encoder_layers")?,
            n_window: need("n_window")?,
            max_source_positions: need("max_source_positions")?,
            output_dim: need("output_dim")?,
        };
        if let Some(act) = c["activation_function"].as_str().filter(|a| *a != "gelu") {
            return Err(ModelError::Config(format!(
                "audio_config activation_function {act}: weft's audio tower applies GELU"
            )));
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.n_heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ModelError::Config(format!(
                "audio_config: {} heads do not divide d_model {}",
                self.n_heads, self.d_model
            )));
        }
        // Pooling pairs rows within a chunk only when a whole chunk has an even number of
        // rows after the stride-2 convolution (n_window of them).
        if self.n_window == 0 || !self.n_window.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "audio_config n_window {} must be even and positive",
                self.n_window
            )));
        }
        if self.n_window > self.max_source_positions {
            return Err(ModelError::Config(format!(
                "audio_config n_window {} exceeds max_source_positions {}",
                self.n_window, self.max_source_positions
            )));
        }
        Ok(())
    }

    /// Mel frames of one chunk.
    pub fn chunk_frames(&self) -> usize {
        2 * self.n_window
    }
}

/// Rows the tower gives the language model for `frames` mel frames (transformers'
/// `_get_feat_extract_output_lengths`: the stride-2 convolution, then pairs).
pub fn tokens_for_frames(frames: usize) -> usize {
    conv_rows(frames) / 2
}

/// Qwen2.5-Omni's audio tower and its feature extractor.
pub struct AudioTower {
    config: AudioTowerConfig,
    encoder: EncoderWeights,
    proj: Linear,
    mel: MelExtractor,
}

impl AudioTower {
    /// The tower whose tensors lie under `prefix` (`thinker.audio_tower` in a released
    /// checkpoint, `audio_tower` in a thinker alone) in `files`.
    pub fn load(
        files: &SafetensorsFiles,
        prefix: &'static str,
        config: AudioTowerConfig,
    ) -> Result<AudioTower, ModelError> {
        let src = SafetensorsFile::with_layout(
            files,
            HfLayout {
                encoder: prefix,
                encoder_norm: "ln_post",
            },
        );
        AudioTower::build(&src, config)
    }

    /// The tower from tensors under CTranslate2's encoder names, its output projection as
    /// `encoder/projection/{weight,bias}`.
    pub fn build(
        src: &dyn TensorSource,
        config: AudioTowerConfig,
    ) -> Result<AudioTower, ModelError> {
        config.check()?;
        let d = config.d_model;
        let positions = sinusoids(config.max_source_positions, d);
        let encoder = EncoderWeights::build(src, config.layers, positions)?;
        if encoder.d_model() != d || encoder.n_mels() != config.n_mels {
            return Err(ModelError::Config(format!(
                "the audio tower's first convolution is [{}, {}, 3]; its config says d_model \
                 {d}, {} mel bins",
                encoder.d_model(),
                encoder.n_mels(),
                config.n_mels
            )));
        }
        let out = config.output_dim;
        let (weight, bias) = ("encoder/projection/weight", "encoder/projection/bias");
        let proj = Linear {
            w: PackedB::from_rows(&src.tensor(weight)?.expect(weight, &[out, d])?, out, d),
            b: Some(src.tensor(bias)?.expect(bias, &[out])?),
        };
        Ok(AudioTower {
            mel: MelExtractor::new(config.n_mels),
            config,
            encoder,
            proj,
        })
    }

    pub fn config(&self) -> &AudioTowerConfig {
        &self.config
    }

    /// The log-mel features of 16 kHz mono `samples` as Whisper's feature extractor makes
    /// them for this model: the clip zero-padded to 30 seconds (a longer one to whole hops)
    /// before the spectrogram, then only the frames the clip covers (`ceil(len / 160)`,
    /// transformers' `feature_attention_mask`).
    pub fn features(&self, samples: &[f32]) -> LogMel {
        let frames = samples.len().div_ceil(HOP);
        let mut padded = samples.to_vec();
        padded.resize(CHUNK_SAMPLES.max(frames * HOP), 0.0);
        let full = self.mel.extract(&padded);
        let mut data = Vec::with_capacity(full.n_mels * frames);
        for row in full.data.chunks_exact(full.frames) {
            data.extend_from_slice(&row[..frames]);
        }
        LogMel {
            n_mels: full.n_mels,
            frames,
            data,
        }
    }

    /// The chunks the tower encodes separately: frame ranges of `2 * n_window` frames, the
    /// last one shorter.
    pub fn chunks(&self, frames: usize) -> Vec<Range<usize>> {
        let step = self.config.chunk_frames();
        (0..frames)
            .step_by(step)
            .map(|start| start..(start + step).min(frames))
            .collect()
    }

    /// The tower's rows for one chunk of mel frames ([`AudioTower::chunks`]):
    /// [`tokens_for_frames`]`(chunk.frames)` rows of [`AudioTower::output_dim`] values.
    pub fn encode(&self, pool: &ThreadPool, chunk: &LogMel) -> Vec<f32> {
        assert!(
            chunk.frames <= self.config.chunk_frames(),
            "a chunk holds at most 2 * n_window frames"
        );
        let d = self.config.d_model;
        let x = encode_layers(&self.encoder, self.config.n_heads, pool, chunk);
        let pairs = x.len() / d / 2;
        let mut pooled = vec![0.0f32; pairs * d];
        for (p, out) in pooled.chunks_exact_mut(d).enumerate() {
            let (a, b) = (
                &x[2 * p * d..(2 * p + 1) * d],
                &x[(2 * p + 1) * d..(2 * p + 2) * d],
            );
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = (a + b) / 2.0;
            }
        }
        let mut normed = vec![0.0f32; pooled.len()];
        layer_norm_rows(pool, &pooled, self.ln_post(), &mut normed);
        self.proj.apply(pool, &normed, pairs)
    }

    fn ln_post(&self) -> &LayerNorm {
        &self.encoder.ln_post
    }

    /// Width of the rows it gives the language model.
    pub fn output_dim(&self) -> usize {
        self.config.output_dim
    }

    /// Floating-point operations of [`AudioTower::encode`] on a chunk of `frames` frames.
    pub fn flops(&self, frames: usize) -> f64 {
        let c = &self.config;
        let (d, rows) = (c.d_model as f64, conv_rows(frames) as f64);
        let ffn = self
            .encoder
            .layers
            .first()
            .map_or(0.0, |l| l.ffn.fc1.w.n() as f64);
        let convs = 2.0 * frames as f64 * (c.n_mels * 3) as f64 * d + 2.0 * rows * 3.0 * d * d;
        let layer = 2.0 * rows * (4.0 * d * d + 2.0 * d * ffn) + 4.0 * rows * rows * d;
        let proj = 2.0 * (rows / 2.0).floor() * d * c.output_dim as f64;
        convs + c.layers as f64 * layer + proj
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_follow_transformers() {
        // ((frames - 1) // 2 + 1 - 2) // 2 + 1, for the lengths a chunk can have.
        for frames in 1..=600usize {
            let after = (frames as i64 - 1).div_euclid(2) + 1;
            let want = (after - 2).div_euclid(2) + 1;
            assert_eq!(tokens_for_frames(frames) as i64, want, "{frames}");
        }
    }
}
