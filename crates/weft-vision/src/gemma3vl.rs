//! Images in a Gemma 3 prompt: the SigLIP processor, the vision tower and the token strings
//! of a Hugging Face model directory (or of a GGUF language model and its mmproj), and what
//! turns a prompt into the language model's input. As transformers' `Gemma3Processor`, each
//! `<start_of_image>` the chat template writes becomes, in the text, a blank line, the marker,
//! one `<image_soft_token>` per image token and `<end_of_image>`, then a blank line, all
//! before tokenization; every image has the same number of tokens, its tokens attend to each
//! other both ways in the language model, and positions stay one-dimensional.

use std::borrow::Cow;
use std::path::Path;

use weft_kernels::pool::ThreadPool;
use weft_models::media::MediaPositions;
use weft_models::tokenizer::Tokenizer;
use weft_models::weights::SafetensorsFiles;

use crate::gemma3_tower::{self, Gemma3TowerConfig, Gemma3VisionTower};
use crate::mmproj::MmprojFile;
use crate::vision::{
    image_processor_json, pixels_hash, read_json, PreparedPrompt, TowerInput, TowerPixels,
    VisionError,
};
use crate::{Backend, MediaKind, RgbImage, SiglipConfig, SiglipProcessor};

/// Gemma 3's token strings (its tokenizer's `boi_token`, `image_token`, `eoi_token`).
const BOI: &str = "<start_of_image>";
const IMAGE: &str = "<image_soft_token>";
const EOI: &str = "<end_of_image>";

pub struct Gemma3Vision {
    tower: Gemma3VisionTower,
    processor: SiglipProcessor,
    /// The marker the template writes once per image.
    boi: String,
    /// What the processor writes in its place.
    image_sequence: String,
    /// `<image_soft_token>`: the tokens the tower's rows replace.
    image_token: u32,
}

impl Gemma3Vision {
    /// The vision side of the Hugging Face directory `dir`, whose `config.json` (`config`)
    /// is a Gemma 3 vision-language model's.
    pub fn load(dir: &Path, config: &serde_json::Value) -> Result<Gemma3Vision, VisionError> {
        let model_error = |path: &Path, message: String| VisionError::Model {
            path: path.to_path_buf(),
            message,
        };
        let config_path = dir.join("config.json");
        let image_token = config["image_token_index"]
            .as_u64()
            .or(config["image_token_id"].as_u64())
            .ok_or_else(|| model_error(&config_path, "no image_token_index".into()))?
            as u32;
        let tower_config = Gemma3TowerConfig::from_hf(config)?;
        let weights =
            SafetensorsFiles::open_dir(dir).map_err(|e| model_error(dir, e.to_string()))?;
        let (encoder, projector) = gemma3_tower::hf_weights(&weights)?;
        let tower = Gemma3VisionTower::load(&encoder, &projector, tower_config)?;
        let processor = processor_config(dir)?;
        // The tokenizer names the strings; Gemma 3's own are the fallback.
        let strings = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let string = |key: &str, default: &str| {
            strings[key]
                .as_str()
                .or(strings["extra_special_tokens"][key].as_str())
                .unwrap_or(default)
                .to_owned()
        };
        let tokens = Strings {
            boi: string("boi_token", BOI),
            image: string("image_token", IMAGE),
            eoi: string("eoi_token", EOI),
        };
        Ok(Self::new(tower, processor, tokens, image_token))
    }

    /// The vision side of a GGUF language model from llama.cpp's mmproj file (projector type
    /// [`crate::mmproj::GEMMA3_PROJECTOR`]); the image token is the language model's
    /// `<image_soft_token>`.
    pub fn load_mmproj(
        mmproj: &MmprojFile,
        tokenizer: &Tokenizer,
    ) -> Result<Gemma3Vision, VisionError> {
        let model_error = |message: String| VisionError::Model {
            path: mmproj.path().to_path_buf(),
            message,
        };
        let image_token = tokenizer.token_id(IMAGE).ok_or_else(|| {
            model_error(format!(
                "the language model's vocabulary has no {IMAGE} token"
            ))
        })?;
        let config = mmproj
            .gemma3_config()
            .map_err(|e| model_error(e.to_string()))?;
        let processor = mmproj
            .siglip_processor(&config)
            .map_err(|e| model_error(e.to_string()))?;
        let weights = mmproj.gemma3_weights();
        let tower = Gemma3VisionTower::load(&weights, &weights, config)?;
        let strings = Strings {
            boi: BOI.into(),
            image: IMAGE.into(),
            eoi: EOI.into(),
        };
        Ok(Self::new(tower, processor, strings, image_token))
    }

    fn new(
        tower: Gemma3VisionTower,
        processor: SiglipConfig,
        strings: Strings,
        image_token: u32,
    ) -> Gemma3Vision {
        let n = tower.config().tokens_per_image;
        let image_sequence = format!(
            "\n\n{}{}{}\n\n",
            strings.boi,
            strings.image.repeat(n),
            strings.eoi
        );
        Gemma3Vision {
            tower,
            processor: SiglipProcessor::new(processor, Backend::default()),
            boi: strings.boi,
            image_sequence,
            image_token,
        }
    }

    /// The rendered prompt with every image marker replaced by the image's token run.
    pub fn prompt_text<'a>(&self, rendered: &'a str) -> Cow<'a, str> {
        match rendered.contains(&self.boi) {
            true => Cow::Owned(rendered.replace(&self.boi, &self.image_sequence)),
            false => Cow::Borrowed(rendered),
        }
    }

    /// Tokens of one image in the language model.
    pub fn tokens_per_image(&self) -> usize {
        self.tower.config().tokens_per_image
    }

    /// The language model's input for `tokens` (a tokenized [`Gemma3Vision::prompt_text`]):
    /// each run of image tokens is one of `images`, in order.
    pub fn plan(&self, tokens: &[u32], images: &[RgbImage]) -> Result<PreparedPrompt, VisionError> {
        let n = self.tokens_per_image();
        let mut runs = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] != self.image_token {
                i += 1;
                continue;
            }
            let len = tokens[i..]
                .iter()
                .take_while(|&&t| t == self.image_token)
                .count();
            runs.push((i, len));
            i += len;
        }
        if runs.len() != images.len() || runs.iter().any(|&(_, len)| len != n) {
            return Err(VisionError::Placeholders {
                kind: MediaKind::Image,
                placeholders: runs.len(),
                given: images.len(),
            });
        }
        let inputs = runs
            .iter()
            .zip(images)
            .enumerate()
            .map(|(medium, (&(start, len), image))| {
                let pixels = self.processor.preprocess(image)?;
                Ok(TowerInput {
                    grid: [1, pixels.height, pixels.width],
                    medium,
                    start,
                    len,
                    bidirectional: true,
                    hash: pixels_hash(&[pixels.height, pixels.width], &pixels.pixel_values),
                    pixels: TowerPixels::Square(pixels),
                })
            })
            .collect::<Result<_, VisionError>>()?;
        Ok(PreparedPrompt {
            tokens: tokens.to_vec(),
            inputs,
            positions: MediaPositions::default(),
        })
    }

    /// The tower's rows for one image.
    pub fn encode(&self, pool: &ThreadPool, input: &TowerInput) -> Vec<f32> {
        let TowerPixels::Square(pixels) = &input.pixels else {
            unreachable!("Gemma 3 plans only SigLIP inputs")
        };
        self.tower.encode(pool, &pixels.pixel_values)
    }

    /// Floating-point operations of one image's [`Gemma3Vision::encode`].
    pub fn encode_flops(&self) -> f64 {
        self.tower.flops()
    }

    /// Values per row the tower gives the language model (its hidden size).
    pub fn embedding_width(&self) -> usize {
        self.tower.config().out_hidden
    }
}

/// The token strings around and in an image's run.
struct Strings {
    boi: String,
    image: String,
    eoi: String,
}

/// The image processor's settings.
fn processor_config(dir: &Path) -> Result<SiglipConfig, VisionError> {
    Ok(SiglipConfig::from_json(
        &image_processor_json(dir)?.to_string(),
    )?)
}
