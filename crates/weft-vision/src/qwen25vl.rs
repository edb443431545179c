//! Images in a Qwen2.5-VL prompt: the processor, the vision tower and the token ids of a
//! Hugging Face model directory, and what turns a tokenized prompt with one image
//! placeholder per image (as the chat template writes it) into the language model's input:
//! each placeholder repeated once per merged patch, the tower's rows for those tokens, and
//! every token's multimodal position.

use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use weft_kernels::pool::ThreadPool;
use weft_models::media::{self, MediaGrid, MediaPositions, PromptMedia};
use weft_models::tokenizer::Tokenizer;
use weft_models::weights::SafetensorsFiles;

use crate::error::{ConfigError, PreprocessError};
use crate::mmproj::{MmprojFile, QWEN25VL_PROJECTOR};
use crate::qwen25vl_tower::{Grid, HfTowerWeights, Qwen25VisionTower, TowerConfig, TowerError};
use crate::{Backend, Qwen2VlConfig, Qwen2VlPixels, Qwen2VlProcessor, RgbImage};

/// Why the vision side of a model, or a prompt's images, could not be used.
#[derive(thiserror::Error, Debug)]
pub enum VisionError {
    #[error("{}: {message}", path.display())]
    Model {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tower(#[from] TowerError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("the prompt has {placeholders} image placeholders for {images} images")]
    Placeholders { placeholders: usize, images: usize },
    #[error(transparent)]
    Positions(#[from] media::PositionError),
    #[error(
        "min_pixels {min_pixels} and max_pixels {max_pixels}: need 0 < min_pixels <= max_pixels"
    )]
    Bounds { min_pixels: u64, max_pixels: u64 },
}

/// Per-request pixel bounds of the processor (vLLM's `mm_processor_kwargs`); `None` keeps
/// the model's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PixelBounds {
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
}

/// The token Qwen2.5-VL's chat template writes once per image.
const IMAGE_PLACEHOLDER: &str = "<|image_pad|>";

/// One image of a prompt, ready for the tower.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    pub pixels: Qwen2VlPixels,
    /// Its first token in the expanded prompt.
    pub start: usize,
    /// Its tokens (merged patches): rows of the tower's output.
    pub len: usize,
    /// XXH3-128 of the pixel values and grid the tower reads: two images that preprocess to
    /// the same input have the same hash, whatever their files looked like.
    pub hash: u128,
}

/// A prompt with its images placed, before any of them is encoded.
#[derive(Clone, Debug)]
pub struct PreparedPrompt {
    /// Token ids with each image's placeholder repeated once per merged patch.
    pub tokens: Vec<u32>,
    /// The prompt's images, in token order.
    pub images: Vec<PreparedImage>,
    pub positions: MediaPositions,
}

impl PreparedPrompt {
    /// The token ids and media of this prompt, given each image's tower rows (rows of
    /// `width` values) in order.
    pub fn into_media(self, rows: Vec<Vec<f32>>, width: usize) -> (Vec<u32>, PromptMedia) {
        let mut embeddings = Vec::with_capacity(self.images.iter().map(|i| i.len).sum());
        for (image, rows) in self.images.iter().zip(&rows) {
            embeddings.extend(
                rows.chunks_exact(width)
                    .enumerate()
                    .map(|(k, row)| (image.start + k, row.to_vec())),
            );
        }
        let media = PromptMedia {
            embeddings,
            positions: self.positions,
        };
        (self.tokens, media)
    }
}

pub struct Qwen25VlVision {
    tower: Qwen25VisionTower,
    processor: Qwen2VlProcessor,
    /// `<|image_pad|>`: the placeholder the template writes once per image.
    image_token: u32,
}

impl Qwen25VlVision {
    /// The vision side of the Hugging Face directory `dir`, or `None` when its `config.json`
    /// describes no Qwen2.5-VL vision tower.
    pub fn load(dir: &Path) -> Result<Option<Qwen25VlVision>, VisionError> {
        let model_error = |path: &Path, message: String| VisionError::Model {
            path: path.to_path_buf(),
            message,
        };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| model_error(&config_path, e.to_string()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| model_error(&config_path, e.to_string()))?;
        if !matches!(config["model_type"].as_str(), Some("qwen2_5_vl")) {
            return Ok(None);
        }
        let image_token = config["image_token_id"]
            .as_u64()
            .ok_or_else(|| model_error(&config_path, "no image_token_id".into()))?
            as u32;
        let tower_config = TowerConfig::from_hf(&config["vision_config"])?;
        let weights =
            SafetensorsFiles::open_dir(dir).map_err(|e| model_error(dir, e.to_string()))?;
        let tower = Qwen25VisionTower::load(&HfTowerWeights::new(&weights)?, tower_config)?;
        Self::new(tower, processor_config(dir)?, image_token)
            .map(Some)
            .map_err(|message| model_error(dir, message))
    }

    /// The vision side of a GGUF language model from llama.cpp's mmproj file `path`; the
    /// placeholder is the language model's `<|image_pad|>` token.
    pub fn load_mmproj(path: &Path, tokenizer: &Tokenizer) -> Result<Qwen25VlVision, VisionError> {
        let model_error = |message: String| VisionError::Model {
            path: path.to_path_buf(),
            message,
        };
        let mmproj = MmprojFile::open(path).map_err(|e| model_error(e.to_string()))?;
        match mmproj
            .projector_type()
            .map_err(|e| model_error(e.to_string()))?
        {
            Some(QWEN25VL_PROJECTOR) => {}
            other => {
                return Err(model_error(format!(
                    "projector type {} is not supported (weft reads {QWEN25VL_PROJECTOR})",
                    other.unwrap_or("(none)")
                )))
            }
        }
        let image_token = tokenizer.token_id(IMAGE_PLACEHOLDER).ok_or_else(|| {
            model_error(format!(
                "the language model's vocabulary has no {IMAGE_PLACEHOLDER} token"
            ))
        })?;
        let config = mmproj
            .qwen25vl_config()
            .map_err(|e| model_error(e.to_string()))?;
        let processor = mmproj
            .qwen2vl_processor(&config)
            .map_err(|e| model_error(e.to_string()))?;
        let tower = Qwen25VisionTower::load(&mmproj, config)?;
        Self::new(tower, processor, image_token).map_err(model_error)
    }

    fn new(
        tower: Qwen25VisionTower,
        processor: Qwen2VlConfig,
        image_token: u32,
    ) -> Result<Qwen25VlVision, String> {
        let c = tower.config();
        if (
            processor.patch_size,
            processor.temporal_patch_size,
            processor.merge_size,
        ) != (
            c.patch_size as u32,
            c.temporal_patch_size as u32,
            c.merge_size as u32,
        ) {
            return Err("the preprocessor's patch sizes differ from the vision tower's".into());
        }
        Ok(Qwen25VlVision {
            tower,
            processor: Qwen2VlProcessor::new(processor, Backend::default()),
            image_token,
        })
    }

    /// The language model's input for `tokens` (a tokenized prompt whose image placeholders,
    /// one per image, stand for `images` in order), short of running the tower: the expanded
    /// token ids, each image's pixels and the tokens they become, and every token's position.
    pub fn plan(&self, tokens: &[u32], images: &[RgbImage]) -> Result<PreparedPrompt, VisionError> {
        self.plan_with(tokens, images, PixelBounds::default())
    }

    /// [`Qwen25VlVision::plan`] with the processor's pixel bounds overridden.
    pub fn plan_with(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        bounds: PixelBounds,
    ) -> Result<PreparedPrompt, VisionError> {
        let processor = self.processor_for(bounds)?;
        let placeholders = tokens.iter().filter(|&&t| t == self.image_token).count();
        if placeholders != images.len() {
            return Err(VisionError::Placeholders {
                placeholders,
                images: images.len(),
            });
        }
        let pixels = images
            .iter()
            .map(|image| processor.preprocess(image))
            .collect::<Result<Vec<_>, _>>()?;
        let m = self.tower.config().merge_size;
        let grids: Vec<MediaGrid> = pixels
            .iter()
            .map(|p| MediaGrid {
                rows: p.grid_thw[1] as usize / m,
                cols: p.grid_thw[2] as usize / m,
            })
            .collect();
        let mut expanded = Vec::with_capacity(tokens.len());
        let mut prepared = Vec::with_capacity(images.len());
        let mut pixels = pixels.into_iter().zip(&grids);
        for &t in tokens {
            if t != self.image_token {
                expanded.push(t);
                continue;
            }
            let (pixels, grid) = pixels.next().expect("one image per placeholder, counted");
            let len = grid.rows * grid.cols;
            prepared.push(PreparedImage {
                start: expanded.len(),
                len,
                hash: content_hash(&pixels),
                pixels,
            });
            expanded.extend(std::iter::repeat_n(t, len));
        }
        let positions = media::positions(&expanded, self.image_token, &grids)?;
        Ok(PreparedPrompt {
            tokens: expanded,
            images: prepared,
            positions,
        })
    }

    /// The tower's rows for one prepared image: `image.len` rows of
    /// [`Qwen25VlVision::embedding_width`] values.
    pub fn encode(&self, pool: &ThreadPool, image: &PreparedImage) -> Vec<f32> {
        let [t, h, w] = image.pixels.grid_thw.map(|x| x as usize);
        self.tower
            .encode(pool, &image.pixels.pixel_values, &[Grid { t, h, w }])
    }

    /// Floating-point operations of [`Qwen25VlVision::encode`] on `image`.
    pub fn encode_flops(&self, image: &PreparedImage) -> f64 {
        let [t, h, w] = image.pixels.grid_thw.map(|x| x as usize);
        self.tower.flops(&[Grid { t, h, w }])
    }

    /// Values per row the tower gives the language model (its hidden size).
    pub fn embedding_width(&self) -> usize {
        self.tower.config().out_hidden
    }

    /// [`Qwen25VlVision::plan`] with every image encoded: the expanded token ids and the
    /// media (tower rows and positions) that go with them.
    pub fn prepare(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        images: &[RgbImage],
    ) -> Result<(Vec<u32>, PromptMedia), VisionError> {
        let plan = self.plan(tokens, images)?;
        let rows: Vec<Vec<f32>> = plan.images.iter().map(|i| self.encode(pool, i)).collect();
        Ok(plan.into_media(rows, self.embedding_width()))
    }

    /// Image tokens the language model sees for an image of this size (cheap: nothing is
    /// resized), so that a prompt can be refused before its images are processed.
    pub fn tokens_for(
        &self,
        height: u32,
        width: u32,
        bounds: PixelBounds,
    ) -> Result<usize, VisionError> {
        let processor = self.processor_for(bounds)?;
        let (h, w) = processor.target_size(height, width)?;
        let side = processor.config.patch_size * processor.config.merge_size;
        Ok(((h / side) * (w / side)) as usize)
    }

    /// The processor with `bounds` applied.
    fn processor_for(&self, bounds: PixelBounds) -> Result<Qwen2VlProcessor, VisionError> {
        let mut config = self.processor.config.clone();
        config.min_pixels = bounds.min_pixels.unwrap_or(config.min_pixels);
        config.max_pixels = bounds.max_pixels.unwrap_or(config.max_pixels);
        if config.min_pixels == 0 || config.min_pixels > config.max_pixels {
            return Err(VisionError::Bounds {
                min_pixels: config.min_pixels,
                max_pixels: config.max_pixels,
            });
        }
        Ok(Qwen2VlProcessor::new(config, self.processor.backend))
    }
}

/// The image processor's settings: `preprocessor_config.json`, or the `image_processor`
/// entry of `processor_config.json` (as transformers 5 saves a processor).
fn processor_config(dir: &Path) -> Result<Qwen2VlConfig, VisionError> {
    let legacy = dir.join("preprocessor_config.json");
    if legacy.is_file() {
        return Ok(Qwen2VlConfig::from_file(&legacy)?);
    }
    let path = dir.join("processor_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| VisionError::Model {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let root: serde_json::Value = serde_json::from_str(&text).map_err(ConfigError::Json)?;
    Ok(Qwen2VlConfig::from_json(
        &root["image_processor"].to_string(),
    )?)
}

/// The hash that names an image's tower input: XXH3-128 over the grid (three u32) and the
/// pixel values (f32), all little-endian.
fn content_hash(pixels: &Qwen2VlPixels) -> u128 {
    let mut h = Xxh3Default::new();
    for x in pixels.grid_thw {
        h.update(&x.to_le_bytes());
    }
    let mut buf = [0u8; 4096];
    for values in pixels.pixel_values.chunks(buf.len() / 4) {
        for (b, v) in buf.chunks_exact_mut(4).zip(values) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..values.len() * 4]);
    }
    h.digest128()
}
