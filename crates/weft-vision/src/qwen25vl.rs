//! Images in a Qwen2.5-VL prompt: the processor, the vision tower and the token ids of a
//! Hugging Face model directory, and what turns a tokenized prompt with one image
//! placeholder per image (as the chat template writes it) into the language model's input:
//! each placeholder repeated once per merged patch, the tower's rows for those tokens, and
//! every token's multimodal position.

use std::path::Path;

use weft_kernels::pool::ThreadPool;
use weft_models::media::{self, MediaGrid, PromptMedia};
use weft_models::weights::SafetensorsFiles;

use crate::error::{ConfigError, PreprocessError};
use crate::qwen25vl_tower::{Grid, Qwen25VisionTower, TowerConfig, TowerError};
use crate::{Backend, Qwen2VlConfig, Qwen2VlProcessor, RgbImage};

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
        let tower = Qwen25VisionTower::load(&weights, tower_config)?;
        let processor = Qwen2VlProcessor::new(processor_config(dir)?, Backend::default());
        let c = tower.config();
        let p = &processor.config;
        if (p.patch_size, p.temporal_patch_size, p.merge_size)
            != (
                c.patch_size as u32,
                c.temporal_patch_size as u32,
                c.merge_size as u32,
            )
        {
            return Err(model_error(
                dir,
                "the preprocessor's patch sizes differ from the vision tower's".into(),
            ));
        }
        Ok(Some(Qwen25VlVision {
            tower,
            processor,
            image_token,
        }))
    }

    /// The language model's input for `tokens` (a tokenized prompt whose image placeholders,
    /// one per image, stand for `images` in order): the expanded token ids and the media
    /// (tower rows and positions) that go with them.
    pub fn prepare(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        images: &[RgbImage],
    ) -> Result<(Vec<u32>, PromptMedia), VisionError> {
        let placeholders = tokens.iter().filter(|&&t| t == self.image_token).count();
        if placeholders != images.len() {
            return Err(VisionError::Placeholders {
                placeholders,
                images: images.len(),
            });
        }
        let pixels = images
            .iter()
            .map(|image| self.processor.preprocess(image))
            .collect::<Result<Vec<_>, _>>()?;
        let grids: Vec<Grid> = pixels
            .iter()
            .map(|p| Grid {
                t: p.grid_thw[0] as usize,
                h: p.grid_thw[1] as usize,
                w: p.grid_thw[2] as usize,
            })
            .collect();
        let values: Vec<f32> = pixels
            .iter()
            .flat_map(|p| p.pixel_values.iter().copied())
            .collect();
        let rows = self.tower.encode(pool, &values, &grids);
        let m = self.tower.config().merge_size;
        let media_grids: Vec<MediaGrid> = grids
            .iter()
            .map(|g| MediaGrid {
                rows: g.h / m,
                cols: g.w / m,
            })
            .collect();
        let mut expanded = Vec::with_capacity(tokens.len() + rows.len());
        let mut per_image = media_grids.iter();
        for &t in tokens {
            let n = match t == self.image_token {
                true => per_image.next().map_or(1, |g| g.rows * g.cols),
                false => 1,
            };
            expanded.extend(std::iter::repeat_n(t, n));
        }
        let (positions, position_delta) =
            media::positions(&expanded, self.image_token, &media_grids)?;
        let width = self.tower.config().out_hidden;
        let slots = expanded
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == self.image_token)
            .map(|(i, _)| i);
        let embeddings = slots
            .zip(rows.chunks_exact(width))
            .map(|(i, row)| (i, row.to_vec()))
            .collect();
        Ok((
            expanded,
            PromptMedia {
                embeddings,
                positions,
                position_delta,
            },
        ))
    }

    /// Image tokens the language model sees for an image of this size.
    pub fn tokens_for(&self, height: u32, width: u32) -> Result<usize, VisionError> {
        let (h, w) = self.processor.target_size(height, width)?;
        let side = self.processor.config.patch_size * self.processor.config.merge_size;
        Ok(((h / side) * (w / side)) as usize)
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
