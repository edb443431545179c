//! Images and videos in a Qwen2.5-VL prompt: the processors, the vision tower and the token
//! ids of a Hugging Face model directory (or of a GGUF language model and its mmproj), and
//! what turns a tokenized prompt with one placeholder per image or video (as the chat
//! template writes it) into the language model's input: each placeholder repeated once per
//! merged patch, the tower inputs behind those tokens (an image, or one temporal patch of a
//! video: the tower never mixes them), and every token's multimodal position.

use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use weft_kernels::pool::ThreadPool;
use weft_models::media::{self, MediaGrid};
use weft_models::tokenizer::Tokenizer;
use weft_models::weights::SafetensorsFiles;

use crate::mmproj::MmprojFile;
use crate::qwen25vl_tower::{self, Grid, Qwen25VisionTower, TowerConfig};
use crate::video::{self, VideoLimits};
use crate::vision::{
    check_placeholders, image_processor_json, pixels_hash, processor_json, PreparedPrompt,
    ProcessorKwargs, TowerInput, TowerPixels, Video, VideoPlan, VisionError,
};
use crate::{
    Backend, MediaKind, Qwen2VlConfig, Qwen2VlProcessor, Qwen2VlVideoConfig, Qwen2VlVideoProcessor,
    RgbImage,
};

/// The tokens Qwen2.5-VL's chat template writes once per image and once per video.
const IMAGE_PLACEHOLDER: &str = "<|image_pad|>";
const VIDEO_PLACEHOLDER: &str = "<|video_pad|>";
/// Temporal positions per second of video of every released Qwen2.5-VL (`vision_config.
/// tokens_per_second`), for mmproj files, which do not record it.
const TOKENS_PER_SECOND: f32 = 2.0;

pub struct Qwen25VlVision {
    tower: Qwen25VisionTower,
    processor: Qwen2VlProcessor,
    video_processor: Qwen2VlVideoProcessor,
    /// `<|image_pad|>` and `<|video_pad|>`: the placeholders the template writes once per
    /// image and once per video.
    image_token: u32,
    video_token: u32,
    tokens_per_second: f32,
}

/// The placeholder ids and time scale of a Qwen2.5-VL language model.
pub(crate) struct MediaTokens {
    pub image: u32,
    pub video: u32,
    pub tokens_per_second: f32,
}

/// The id of token `text` in the vocabulary of the language model an mmproj file serves.
pub(crate) fn mmproj_token(
    mmproj: &MmprojFile,
    tokenizer: &Tokenizer,
    text: &str,
) -> Result<u32, VisionError> {
    tokenizer.token_id(text).ok_or_else(|| VisionError::Model {
        path: mmproj.path().to_path_buf(),
        message: format!("the language model's vocabulary has no {text} token"),
    })
}

impl Qwen25VlVision {
    /// The vision side of the Hugging Face directory `dir`, whose `config.json` (`config`)
    /// is a Qwen2.5-VL model's.
    pub fn load(dir: &Path, config: &serde_json::Value) -> Result<Qwen25VlVision, VisionError> {
        let weights = SafetensorsFiles::open_dir(dir).map_err(|e| VisionError::Model {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::load_from(dir, config, &weights)
    }

    /// [`Qwen25VlVision::load`] with the directory's tensors already open (a larger model
    /// that holds this tower among others).
    pub(crate) fn load_from(
        dir: &Path,
        config: &serde_json::Value,
        weights: &SafetensorsFiles,
    ) -> Result<Qwen25VlVision, VisionError> {
        let model_error = |path: &Path, message: String| VisionError::Model {
            path: path.to_path_buf(),
            message,
        };
        let config_path = dir.join("config.json");
        let token = |name: &str| {
            token_id(config, name)
                .ok_or_else(|| model_error(&config_path, format!("no {name}_token_id")))
        };
        let tokens = MediaTokens {
            image: token("image")?,
            video: token("video")?,
            tokens_per_second: config["vision_config"]["tokens_per_second"]
                .as_f64()
                .map_or(TOKENS_PER_SECOND, |t| t as f32),
        };
        let tower_config = TowerConfig::from_hf(&config["vision_config"])?;
        let tower = Qwen25VisionTower::load(&qwen25vl_tower::hf_weights(weights)?, tower_config)?;
        let (image, video) = processor_configs(dir)?;
        Self::new(tower, image, video, tokens).map_err(|message| model_error(dir, message))
    }

    /// The vision side of a GGUF language model from llama.cpp's mmproj file (projector type
    /// [`crate::mmproj::QWEN25VL_PROJECTOR`]); the placeholder is the language model's
    /// `<|image_pad|>` token.
    pub fn load_mmproj(
        mmproj: &MmprojFile,
        tokenizer: &Tokenizer,
    ) -> Result<Qwen25VlVision, VisionError> {
        let image = mmproj_token(mmproj, tokenizer, IMAGE_PLACEHOLDER)?;
        let video = mmproj_token(mmproj, tokenizer, VIDEO_PLACEHOLDER)?;
        let tokens = MediaTokens {
            image,
            video,
            tokens_per_second: TOKENS_PER_SECOND,
        };
        Self::load_mmproj_with(mmproj, tokens)
    }

    /// The vision tower of an mmproj file with the placeholders and time scale of `tokens`.
    pub(crate) fn load_mmproj_with(
        mmproj: &MmprojFile,
        tokens: MediaTokens,
    ) -> Result<Qwen25VlVision, VisionError> {
        let model_error = |message: String| VisionError::Model {
            path: mmproj.path().to_path_buf(),
            message,
        };
        let config = mmproj
            .qwen25vl_config()
            .map_err(|e| model_error(e.to_string()))?;
        let processor = mmproj
            .qwen2vl_processor(&config)
            .map_err(|e| model_error(e.to_string()))?;
        // The video processor's defaults, with the image processor's normalization.
        let mut video = Qwen2VlVideoConfig::default();
        video.frame = Qwen2VlConfig {
            min_pixels: video.frame.min_pixels,
            max_pixels: video.frame.max_pixels,
            ..processor.clone()
        };
        let tower = Qwen25VisionTower::load(mmproj, config)?;
        Self::new(tower, processor, video, tokens).map_err(model_error)
    }

    fn new(
        tower: Qwen25VisionTower,
        image: Qwen2VlConfig,
        video: Qwen2VlVideoConfig,
        tokens: MediaTokens,
    ) -> Result<Qwen25VlVision, String> {
        let c = tower.config();
        let tower_sizes = (
            c.patch_size as u32,
            c.temporal_patch_size as u32,
            c.merge_size as u32,
        );
        for (kind, p) in [("image", &image), ("video", &video.frame)] {
            if (p.patch_size, p.temporal_patch_size, p.merge_size) != tower_sizes {
                return Err(format!(
                    "the {kind} processor's patch sizes differ from the vision tower's"
                ));
            }
        }
        if !(tokens.tokens_per_second.is_finite() && tokens.tokens_per_second >= 0.0) {
            return Err(format!("tokens_per_second = {}", tokens.tokens_per_second));
        }
        Ok(Qwen25VlVision {
            tower,
            processor: Qwen2VlProcessor::new(image, Backend::default()),
            video_processor: Qwen2VlVideoProcessor::new(video, Backend::default()),
            image_token: tokens.image,
            video_token: tokens.video,
            tokens_per_second: tokens.tokens_per_second,
        })
    }

    /// [`crate::Vision::plan_with`] for Qwen2.5-VL: one placeholder token per image and per
    /// video, each repeated once per merged patch.
    pub fn plan_with(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
        bounds: ProcessorKwargs,
    ) -> Result<PreparedPrompt, VisionError> {
        let processor = self.processor_for(bounds)?;
        check_placeholders(
            tokens,
            &[
                (MediaKind::Image, self.image_token, images.len()),
                (MediaKind::Video, self.video_token, videos.len()),
            ],
        )?;
        let t = self.video_processor.config.frame.temporal_patch_size;
        let mut images = images
            .iter()
            .map(|image| self.image_medium(&processor, image));
        let mut videos = videos.iter().map(|video| {
            // transformers carries `second_per_grid_t` as an f32 tensor and scales it in f32.
            let seconds = video.seconds_per_patch(t) as f32;
            self.video_medium(video, self.tokens_per_second * seconds)
        });
        let mut expanded = Vec::with_capacity(tokens.len());
        let mut inputs = Vec::new();
        let mut grids = Vec::new();
        for &token in tokens {
            let medium = if token == self.image_token {
                images.next().expect("one image per placeholder, counted")?
            } else if token == self.video_token {
                videos.next().expect("one video per placeholder, counted")
            } else {
                expanded.push(token);
                continue;
            };
            grids.push(medium.grid);
            medium.place(grids.len() - 1, &mut expanded, &mut inputs);
        }
        let positions = media::positions(&expanded, &grids)?;
        Ok(PreparedPrompt {
            tokens: expanded,
            inputs,
            positions,
        })
    }

    /// An image's grid in the prompt and its tower input.
    pub(crate) fn image_medium(
        &self,
        processor: &Qwen2VlProcessor,
        image: &RgbImage,
    ) -> Result<Medium, VisionError> {
        let m = self.tower.config().merge_size;
        let pixels = processor.preprocess(image)?;
        let grid = MediaGrid::image(
            self.image_token,
            pixels.grid_thw[1] as usize / m,
            pixels.grid_thw[2] as usize / m,
        );
        let patch = (
            pixels.grid_thw,
            pixels_hash(&pixels.grid_thw, &pixels.pixel_values),
            TowerPixels::Image(pixels),
        );
        Ok(Medium {
            grid,
            patches: vec![patch],
        })
    }

    /// A video's grid in the prompt, its temporal patches `time_step` temporal positions
    /// apart, and its tower inputs (one per temporal patch).
    pub(crate) fn video_medium(&self, video: &Video, time_step: f32) -> Medium {
        let m = self.tower.config().merge_size;
        let t = self.video_processor.config.frame.temporal_patch_size;
        let p = self.video_processor.config.frame.patch_size;
        let (h, w) = video
            .frames
            .first()
            .map_or((0, 0), |f| (f.height() / p, f.width() / p));
        let patches: Vec<_> = video
            .frames
            .chunks(t as usize)
            .map(|group| {
                let grid = [1, h, w];
                (
                    grid,
                    frames_hash(grid, group),
                    TowerPixels::Frames(group.to_vec()),
                )
            })
            .collect();
        let grid = MediaGrid {
            token: self.video_token,
            frames: patches.len(),
            rows: h as usize / m,
            cols: w as usize / m,
            time_step,
        };
        Medium { grid, patches }
    }

    pub(crate) fn video_processor(&self) -> &Qwen2VlVideoProcessor {
        &self.video_processor
    }

    pub(crate) fn image_token(&self) -> u32 {
        self.image_token
    }

    pub(crate) fn video_token(&self) -> u32 {
        self.video_token
    }

    /// The tower's rows for one tower input: `image.len` rows of
    /// [`Qwen25VlVision::embedding_width`] values.
    pub fn encode(&self, pool: &ThreadPool, image: &TowerInput) -> Vec<f32> {
        let [t, h, w] = image.grid.map(|x| x as usize);
        let frames;
        let pixels = match &image.pixels {
            TowerPixels::Image(pixels) => pixels,
            TowerPixels::Frames(group) => {
                frames = self.video_processor.patch(group);
                &frames
            }
            TowerPixels::Square(_) | TowerPixels::Audio(_) => {
                unreachable!("Qwen2.5-VL's tower reads only its own images and frames")
            }
        };
        self.tower
            .encode(pool, &pixels.pixel_values, &[Grid { t, h, w }])
    }

    /// Floating-point operations of [`Qwen25VlVision::encode`] on `image`.
    pub fn encode_flops(&self, image: &TowerInput) -> f64 {
        let [t, h, w] = image.grid.map(|x| x as usize);
        self.tower.flops(&[Grid { t, h, w }])
    }

    /// Values per row the tower gives the language model (its hidden size).
    pub fn embedding_width(&self) -> usize {
        self.tower.config().out_hidden
    }

    /// Image tokens the language model sees for an image of this size (cheap: nothing is
    /// resized), so that a prompt can be refused before its images are processed.
    pub fn tokens_for(
        &self,
        height: u32,
        width: u32,
        bounds: ProcessorKwargs,
    ) -> Result<usize, VisionError> {
        let processor = self.processor_for(bounds)?;
        let (h, w) = processor.target_size(height, width)?;
        let side = processor.config.patch_size * processor.config.merge_size;
        Ok(((h / side) * (w / side)) as usize)
    }

    /// The processor with `bounds` applied.
    pub(crate) fn processor_for(
        &self,
        bounds: ProcessorKwargs,
    ) -> Result<Qwen2VlProcessor, VisionError> {
        let mut config = self.processor.config.clone();
        bounds.apply(&mut config)?;
        Ok(Qwen2VlProcessor::new(config, self.processor.backend))
    }

    /// The video processor with `bounds` applied (its pixel bounds to every frame).
    fn video_processor_for(
        &self,
        bounds: ProcessorKwargs,
    ) -> Result<Qwen2VlVideoProcessor, VisionError> {
        let mut processor = self.video_processor.clone();
        bounds.apply(&mut processor.config.frame)?;
        if let Some(fps) = bounds.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(VisionError::Fps(fps));
            }
            processor.config.fps = fps;
        }
        Ok(processor)
    }

    /// What a video file holds, and the frames the video processor samples from it.
    pub fn probe_video(
        &self,
        path: &Path,
        bounds: ProcessorKwargs,
        limits: &VideoLimits,
    ) -> Result<VideoPlan, VisionError> {
        let processor = self.video_processor_for(bounds)?;
        let info = video::probe(path, limits)?;
        let indices = processor.sample_indices(info.frames, info.fps);
        Ok(VideoPlan { info, indices })
    }

    /// Video tokens the language model sees for a probed video (cheap: nothing is decoded),
    /// so that a prompt can be refused before its videos are read.
    pub fn video_tokens_for(
        &self,
        plan: &VideoPlan,
        bounds: ProcessorKwargs,
    ) -> Result<usize, VisionError> {
        let processor = self.video_processor_for(bounds)?;
        let sampled = plan.indices.len();
        let (h, w) = processor.frame_size(plan.info.height, plan.info.width, sampled)?;
        let c = &processor.config.frame;
        let side = c.patch_size * c.merge_size;
        let patches = sampled.div_ceil(c.temporal_patch_size as usize);
        Ok(patches * ((h / side) * (w / side)) as usize)
    }

    /// Reads the probed video at `path`: its sampled frames, resized for the tower as they
    /// arrive (a long video never holds more than the frames it keeps).
    pub fn read_video(
        &self,
        path: &Path,
        plan: &VideoPlan,
        bounds: ProcessorKwargs,
        limits: &VideoLimits,
    ) -> Result<Video, VisionError> {
        let processor = self.video_processor_for(bounds)?;
        let VideoPlan { info, indices } = plan;
        let (h, w) = processor.frame_size(info.height, info.width, indices.len())?;
        let mut frames = Vec::with_capacity(indices.len());
        video::read_frames(path, info, indices, limits, |frame| {
            frames.push(processor.resize_frame(&frame, h, w));
        })?;
        Ok(Video {
            sampled_fps: indices.len() as f64 / info.frames as f64 * info.fps,
            requested_fps: processor.config.fps,
            audio: None,
            frames,
            source: *info,
        })
    }
}

impl ProcessorKwargs {
    /// `config` with these bounds over its own.
    fn apply(self, config: &mut Qwen2VlConfig) -> Result<(), VisionError> {
        config.min_pixels = self.min_pixels.unwrap_or(config.min_pixels);
        config.max_pixels = self.max_pixels.unwrap_or(config.max_pixels);
        if config.min_pixels == 0 || config.min_pixels > config.max_pixels {
            return Err(VisionError::Bounds {
                min_pixels: config.min_pixels,
                max_pixels: config.max_pixels,
            });
        }
        Ok(())
    }
}

/// The image and video processors' settings: `preprocessor_config.json` and
/// `video_preprocessor_config.json`, or the `image_processor` and `video_processor` entries
/// of `processor_config.json` (as transformers 5 saves a processor). Without video settings
/// (as most Hub Qwen2.5-VL checkpoints ship), the video processor's defaults with the image
/// processor's normalization.
fn processor_configs(dir: &Path) -> Result<(Qwen2VlConfig, Qwen2VlVideoConfig), VisionError> {
    let image_json = image_processor_json(dir)?.to_string();
    let image = Qwen2VlConfig::from_json(&image_json)?;
    let video = match processor_json(dir, "video_preprocessor_config.json", "video_processor")? {
        Some(json) => Qwen2VlVideoConfig::from_json(&json.to_string())?,
        None => {
            let mut video = Qwen2VlVideoConfig::default();
            video.frame.normalization = image.normalization;
            video.frame.resample = image.resample;
            video
        }
    };
    Ok((image, video))
}

/// The id `config.json` gives the `name` token (`{name}_token_id`, or Qwen2.5-Omni's
/// `{name}_token_index`).
pub(crate) fn token_id(config: &serde_json::Value, name: &str) -> Option<u32> {
    ["token_id", "token_index"]
        .iter()
        .find_map(|suffix| config[format!("{name}_{suffix}")].as_u64())
        .map(|t| t as u32)
}

/// One image or video of a prompt, short of its encoding: its grid of language-model tokens
/// and its tower inputs in order (one per temporal patch: a patch grid, the content hash and
/// what the tower reads).
pub(crate) struct Medium {
    pub grid: MediaGrid,
    pub patches: Vec<([u32; 3], u128, TowerPixels)>,
}

impl Medium {
    /// Appends the medium's placeholder tokens to `expanded` and its tower inputs (as the
    /// prompt's medium number `medium`) to `inputs`.
    pub fn place(self, medium: usize, expanded: &mut Vec<u32>, inputs: &mut Vec<TowerInput>) {
        let len = self.grid.rows * self.grid.cols;
        for (grid, hash, pixels) in self.patches {
            inputs.push(TowerInput {
                bidirectional: false,
                medium,
                start: expanded.len(),
                len,
                hash,
                grid,
                pixels,
            });
            expanded.extend(std::iter::repeat_n(self.grid.token, len));
        }
    }
}

/// The hash that names a video's temporal patch: XXH3-128 over the grid (three u32, then
/// the frame count) and the frames' RGB bytes. (A different domain from images' hashes,
/// which cover f32 values: the two never name the same input.)
fn frames_hash(grid: [u32; 3], frames: &[RgbImage]) -> u128 {
    let mut h = Xxh3Default::new();
    for x in grid {
        h.update(&x.to_le_bytes());
    }
    h.update(&(frames.len() as u32).to_le_bytes());
    for frame in frames {
        h.update(frame.as_raw());
    }
    h.digest128()
}
