//! Images and videos in a Qwen2.5-VL prompt: the processors, the vision tower and the token
//! ids of a Hugging Face model directory (or of a GGUF language model and its mmproj), and
//! what turns a tokenized prompt with one placeholder per image or video (as the chat
//! template writes it) into the language model's input: each placeholder repeated once per
//! merged patch, the tower inputs behind those tokens (an image, or one temporal patch of a
//! video: the tower never mixes them), and every token's multimodal position.

use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use weft_kernels::pool::ThreadPool;
use weft_models::media::{self, MediaGrid, MediaPositions, PromptMedia};
use weft_models::tokenizer::Tokenizer;
use weft_models::weights::SafetensorsFiles;

use crate::error::{ConfigError, PreprocessError};
use crate::mmproj::{MmprojFile, QWEN25VL_PROJECTOR};
use crate::qwen25vl_tower::{Grid, HfTowerWeights, Qwen25VisionTower, TowerConfig, TowerError};
use crate::video::{self, VideoError, VideoInfo, VideoLimits};
use crate::{
    Backend, MediaKind, Qwen2VlConfig, Qwen2VlPixels, Qwen2VlProcessor, Qwen2VlVideoConfig,
    Qwen2VlVideoProcessor, RgbImage,
};

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
    #[error("the prompt has {placeholders} {} placeholders for {given} {}s", kind.name(), kind.name())]
    Placeholders {
        kind: MediaKind,
        placeholders: usize,
        given: usize,
    },
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Positions(#[from] media::PositionError),
    #[error(
        "min_pixels {min_pixels} and max_pixels {max_pixels}: need 0 < min_pixels <= max_pixels"
    )]
    Bounds { min_pixels: u64, max_pixels: u64 },
    #[error("fps {0}: need a positive number of frames per second")]
    Fps(f64),
}

/// Per-request settings of the processors (vLLM's `mm_processor_kwargs`); `None` keeps the
/// model's. The pixel bounds apply to images and to video frames.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessorKwargs {
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    /// Video frames sampled per second.
    pub fps: Option<f64>,
}

/// The tokens Qwen2.5-VL's chat template writes once per image and once per video.
const IMAGE_PLACEHOLDER: &str = "<|image_pad|>";
const VIDEO_PLACEHOLDER: &str = "<|video_pad|>";
/// Temporal positions per second of video of every released Qwen2.5-VL (`vision_config.
/// tokens_per_second`), for mmproj files, which do not record it.
const TOKENS_PER_SECOND: f32 = 2.0;

/// What the tower reads for one input.
#[derive(Clone, Debug)]
pub enum TowerPixels {
    /// An image, preprocessed.
    Image(Qwen2VlPixels),
    /// One temporal patch of a video: its resized frames, normalized and cut into patches
    /// only when encoded, so that a video waiting for the tower holds bytes, not floats.
    Frames(Vec<RgbImage>),
}

/// One tower input of a prompt (an image, or one temporal patch of a video), ready for the
/// tower.
#[derive(Clone, Debug)]
pub struct TowerInput {
    pub pixels: TowerPixels,
    /// `[t, h, w]` patches (`t` is 1: a temporal patch is one grid).
    pub grid: [u32; 3],
    /// The image or video it belongs to: its index among the prompt's media, in token order.
    pub medium: usize,
    /// Its first token in the expanded prompt.
    pub start: usize,
    /// Its tokens (merged patches): rows of the tower's output.
    pub len: usize,
    /// XXH3-128 of the pixel values and grid the tower reads: two inputs that preprocess to
    /// the same values have the same hash, whatever their files looked like.
    pub hash: u128,
}

/// A video's sampled frames, resized for the tower.
#[derive(Clone, Debug)]
pub struct Video {
    pub frames: Vec<RgbImage>,
    /// Sampled frames per second of video (transformers' `VideoMetadata.sampled_fps`).
    pub sampled_fps: f64,
    /// The file's stream.
    pub source: VideoInfo,
}

impl Video {
    /// Seconds of video one temporal patch of `temporal_patch_size` frames spans.
    fn seconds_per_patch(&self, temporal_patch_size: u32) -> f64 {
        f64::from(temporal_patch_size) / self.sampled_fps
    }
}

/// A prompt with its media placed, before any of them is encoded.
#[derive(Clone, Debug)]
pub struct PreparedPrompt {
    /// Token ids with each placeholder repeated once per merged patch.
    pub tokens: Vec<u32>,
    /// The prompt's tower inputs, in token order.
    pub inputs: Vec<TowerInput>,
    pub positions: MediaPositions,
}

impl PreparedPrompt {
    /// The token ids and media of this prompt, given each tower input's rows (rows of
    /// `width` values) in order.
    pub fn into_media(self, rows: Vec<Vec<f32>>, width: usize) -> (Vec<u32>, PromptMedia) {
        let mut embeddings = Vec::with_capacity(self.inputs.iter().map(|i| i.len).sum());
        for (image, rows) in self.inputs.iter().zip(&rows) {
            embeddings.extend(
                rows.chunks_exact(width)
                    .enumerate()
                    .map(|(k, row)| (image.start + k, row.to_vec())),
            );
        }
        let media = PromptMedia {
            embeddings,
            positions: self.positions,
            bidirectional: Vec::new(),
        };
        (self.tokens, media)
    }
}

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
struct MediaTokens {
    image: u32,
    video: u32,
    tokens_per_second: f32,
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
        let token = |key: &str| {
            config[key]
                .as_u64()
                .map(|t| t as u32)
                .ok_or_else(|| model_error(&config_path, format!("no {key}")))
        };
        let tokens = MediaTokens {
            image: token("image_token_id")?,
            video: token("video_token_id")?,
            tokens_per_second: config["vision_config"]["tokens_per_second"]
                .as_f64()
                .map_or(TOKENS_PER_SECOND, |t| t as f32),
        };
        let tower_config = TowerConfig::from_hf(&config["vision_config"])?;
        let weights =
            SafetensorsFiles::open_dir(dir).map_err(|e| model_error(dir, e.to_string()))?;
        let tower = Qwen25VisionTower::load(&HfTowerWeights::new(&weights)?, tower_config)?;
        let (image, video) = processor_configs(dir)?;
        Self::new(tower, image, video, tokens)
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
        let token = |text: &str| {
            tokenizer.token_id(text).ok_or_else(|| {
                model_error(format!(
                    "the language model's vocabulary has no {text} token"
                ))
            })
        };
        let tokens = MediaTokens {
            image: token(IMAGE_PLACEHOLDER)?,
            video: token(VIDEO_PLACEHOLDER)?,
            tokens_per_second: TOKENS_PER_SECOND,
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
        let tower = Qwen25VisionTower::load(&mmproj, config)?;
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

    /// The language model's input for `tokens` (a tokenized prompt whose placeholders, one
    /// per image and one per video, stand for `images` and `videos` in order), short of
    /// running the tower: the expanded token ids, the tower inputs and the tokens they
    /// become, and every token's position.
    pub fn plan(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
    ) -> Result<PreparedPrompt, VisionError> {
        self.plan_with(tokens, images, videos, ProcessorKwargs::default())
    }

    /// [`Qwen25VlVision::plan`] with the processors' settings overridden (`mm_processor_kwargs`;
    /// a video's were applied when it was probed and read).
    pub fn plan_with(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
        bounds: ProcessorKwargs,
    ) -> Result<PreparedPrompt, VisionError> {
        let processor = self.processor_for(bounds)?;
        for (kind, token, given) in [
            (MediaKind::Image, self.image_token, images.len()),
            (MediaKind::Video, self.video_token, videos.len()),
        ] {
            let placeholders = tokens.iter().filter(|&&t| t == token).count();
            if placeholders != given {
                return Err(VisionError::Placeholders {
                    kind,
                    placeholders,
                    given,
                });
            }
        }
        let m = self.tower.config().merge_size;
        let t = self.video_processor.config.frame.temporal_patch_size;
        // Each medium: its grid in the prompt and its tower inputs.
        let mut images = images.iter().map(|image| {
            let pixels = processor.preprocess(image)?;
            let grid = MediaGrid::image(
                self.image_token,
                pixels.grid_thw[1] as usize / m,
                pixels.grid_thw[2] as usize / m,
            );
            let input = (
                pixels.grid_thw,
                content_hash(&pixels),
                TowerPixels::Image(pixels),
            );
            Ok::<_, VisionError>((grid, vec![input]))
        });
        let mut videos = videos.iter().map(|video| {
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
            // transformers carries `second_per_grid_t` as an f32 tensor and scales it in f32.
            let seconds = video.seconds_per_patch(t) as f32;
            let grid = MediaGrid {
                token: self.video_token,
                frames: patches.len(),
                rows: h as usize / m,
                cols: w as usize / m,
                time_step: self.tokens_per_second * seconds,
            };
            (grid, patches)
        });
        let mut expanded = Vec::with_capacity(tokens.len());
        let mut inputs = Vec::new();
        let mut grids = Vec::new();
        for &token in tokens {
            let (grid, patches) = if token == self.image_token {
                images.next().expect("one image per placeholder, counted")?
            } else if token == self.video_token {
                videos.next().expect("one video per placeholder, counted")
            } else {
                expanded.push(token);
                continue;
            };
            for (patch_grid, hash, pixels) in patches {
                let len = grid.rows * grid.cols;
                inputs.push(TowerInput {
                    medium: grids.len(),
                    start: expanded.len(),
                    len,
                    hash,
                    grid: patch_grid,
                    pixels,
                });
                expanded.extend(std::iter::repeat_n(token, len));
            }
            grids.push(grid);
        }
        let positions = media::positions(&expanded, &grids)?;
        Ok(PreparedPrompt {
            tokens: expanded,
            inputs,
            positions,
        })
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

    /// [`Qwen25VlVision::plan`] with every tower input encoded: the expanded token ids and
    /// the media (tower rows and positions) that go with them.
    pub fn prepare(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
    ) -> Result<(Vec<u32>, PromptMedia), VisionError> {
        let plan = self.plan(tokens, images, videos)?;
        let rows: Vec<Vec<f32>> = plan.inputs.iter().map(|i| self.encode(pool, i)).collect();
        Ok(plan.into_media(rows, self.embedding_width()))
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
    fn processor_for(&self, bounds: ProcessorKwargs) -> Result<Qwen2VlProcessor, VisionError> {
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
            frames,
            source: *info,
        })
    }
}

/// A video file's stream and the frames sampled from it.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoPlan {
    pub info: VideoInfo,
    /// Indices of the sampled frames, increasing.
    pub indices: Vec<usize>,
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
    let read = |name: &str| -> Result<Option<serde_json::Value>, VisionError> {
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| VisionError::Model {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(
            serde_json::from_str(&text).map_err(ConfigError::Json)?,
        ))
    };
    let combined = read("processor_config.json")?;
    let part = |own: &str, key: &str| -> Result<Option<String>, VisionError> {
        Ok(match read(own)? {
            Some(v) => Some(v.to_string()),
            None => combined
                .as_ref()
                .map(|c| &c[key])
                .filter(|v| v.is_object())
                .map(|v| v.to_string()),
        })
    };
    let image_json =
        part("preprocessor_config.json", "image_processor")?.ok_or_else(|| VisionError::Model {
            path: dir.join("preprocessor_config.json"),
            message: "missing (and processor_config.json has no image_processor)".into(),
        })?;
    let image = Qwen2VlConfig::from_json(&image_json)?;
    let video = match part("video_preprocessor_config.json", "video_processor")? {
        Some(json) => Qwen2VlVideoConfig::from_json(&json)?,
        None => {
            let mut video = Qwen2VlVideoConfig::default();
            video.frame.normalization = image.normalization;
            video.frame.resample = image.resample;
            video
        }
    };
    Ok((image, video))
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
