//! The vision side of a model, whichever tower it has: [`Vision`] loads Qwen2.5-VL's or Gemma
//! 3's from a Hugging Face directory or an mmproj file and gives the server and the CLI one
//! interface to a prompt's images and videos (how the prompt text names them, their tokens,
//! their tower inputs and encodings); and the types that interface passes around.

use std::borrow::Cow;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use weft_kernels::pool::ThreadPool;
use weft_models::media::{self, MediaPositions, PromptMedia};
use weft_models::tokenizer::Tokenizer;

use crate::error::{ConfigError, PreprocessError};
use crate::gemma3vl::Gemma3Vision;
use crate::qwen25omni::Qwen25OmniMedia;
use crate::qwen25vl::Qwen25VlVision;
use crate::tower::TowerError;
use crate::video::{VideoError, VideoInfo, VideoLimits};
use crate::{MediaKind, Qwen2VlPixels, RgbImage, SiglipPixels};

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
    #[error("this model does not accept {}s", .0.name())]
    Unsupported(MediaKind),
    #[error("{0}")]
    Layout(String),
}

/// Per-request settings of the processors (vLLM's `mm_processor_kwargs`); `None` keeps the
/// model's. The pixel bounds apply to images and to video frames.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessorKwargs {
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    /// Video frames sampled per second.
    pub fps: Option<f64>,
    /// Qwen2.5-Omni: a video's own audio track goes into the prompt with its frames,
    /// interleaved by time (vLLM's and transformers' `use_audio_in_video`).
    pub use_audio_in_video: bool,
}

/// What the tower reads for one input.
#[derive(Clone, Debug)]
pub enum TowerPixels {
    /// An image, preprocessed.
    Image(Qwen2VlPixels),
    /// A fixed-size image (Gemma 3's SigLIP input), preprocessed.
    Square(SiglipPixels),
    /// One temporal patch of a video: its resized frames, normalized and cut into patches
    /// only when encoded, so that a video waiting for the tower holds bytes, not floats.
    Frames(Vec<RgbImage>),
    /// One chunk of an audio clip's log-mel features (Qwen2.5-Omni's audio tower).
    Audio(weft_audio::mel::LogMel),
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
    /// Its tokens attend to each other both ways in the language model (Gemma 3's images),
    /// not only to the ones before them.
    pub bidirectional: bool,
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
    /// The frames per second the video processor was asked for (Qwen2.5-Omni times
    /// temporal patches by it rather than by the frames it got).
    pub requested_fps: f64,
    /// Its audio track as 16 kHz mono samples, when it was asked for (Qwen2.5-Omni's
    /// `use_audio_in_video`).
    pub audio: Option<Vec<f32>>,
    /// The file's stream.
    pub source: VideoInfo,
}

impl Video {
    /// Seconds of video one temporal patch of `temporal_patch_size` frames spans.
    pub(crate) fn seconds_per_patch(&self, temporal_patch_size: u32) -> f64 {
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
            bidirectional: self
                .inputs
                .iter()
                .filter(|i| i.bidirectional)
                .map(|i| i.start..i.start + i.len)
                .collect(),
        };
        (self.tokens, media)
    }
}

/// A video file's stream and the frames sampled from it.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoPlan {
    pub info: VideoInfo,
    /// Indices of the sampled frames, increasing.
    pub indices: Vec<usize>,
}

/// The media side of a model: its vision tower (and Qwen2.5-Omni's audio tower).
pub enum Vision {
    Qwen25Vl(Qwen25VlVision),
    Gemma3(Gemma3Vision),
    Qwen25Omni(Box<Qwen25OmniMedia>),
}

impl Vision {
    /// The vision side of the Hugging Face directory `dir`, or `None` when its `config.json`
    /// describes no vision tower weft knows.
    pub fn load(dir: &Path) -> Result<Option<Vision>, VisionError> {
        let path = dir.join("config.json");
        let config = read_json(&path)?.ok_or_else(|| VisionError::Model {
            path,
            message: "missing".into(),
        })?;
        let has_tower = config["vision_config"].is_object();
        Ok(match config["model_type"].as_str() {
            Some("qwen2_5_vl") => Some(Vision::Qwen25Vl(Qwen25VlVision::load(dir, &config)?)),
            Some("gemma3") if has_tower => Some(Vision::Gemma3(Gemma3Vision::load(dir, &config)?)),
            Some("qwen2_5_omni" | "qwen2_5_omni_thinker") => Some(Vision::Qwen25Omni(Box::new(
                Qwen25OmniMedia::load(dir, &config)?,
            ))),
            _ => None,
        })
    }

    /// The vision side of a GGUF language model (whose vocabulary is `tokenizer`) from
    /// llama.cpp's mmproj file `path`, by the file's projector type.
    pub fn load_mmproj(path: &Path, tokenizer: &Tokenizer) -> Result<Vision, VisionError> {
        let mmproj = crate::mmproj::MmprojFile::open(path).map_err(|e| VisionError::Model {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let projector = mmproj.projector_type().map_err(|e| VisionError::Model {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        match projector {
            Some(crate::mmproj::GEMMA3_PROJECTOR) => {
                Gemma3Vision::load_mmproj(&mmproj, tokenizer).map(Vision::Gemma3)
            }
            Some(crate::mmproj::QWEN25VL_PROJECTOR) => {
                Qwen25VlVision::load_mmproj(&mmproj, tokenizer).map(Vision::Qwen25Vl)
            }
            Some(crate::mmproj::QWEN25OMNI_PROJECTOR) => {
                Qwen25OmniMedia::load_mmproj(&mmproj, tokenizer)
                    .map(|m| Vision::Qwen25Omni(Box::new(m)))
            }
            other => Err(VisionError::Model {
                path: path.to_path_buf(),
                message: format!(
                    "projector type {} is not supported (weft reads {}, {} and {})",
                    other.unwrap_or("(none)"),
                    crate::mmproj::QWEN25VL_PROJECTOR,
                    crate::mmproj::QWEN25OMNI_PROJECTOR,
                    crate::mmproj::GEMMA3_PROJECTOR,
                ),
            }),
        }
    }

    /// Whether prompts may carry media of `kind`.
    pub fn accepts(&self, kind: MediaKind) -> bool {
        match self {
            Vision::Qwen25Vl(_) => kind != MediaKind::Audio,
            Vision::Gemma3(_) => kind == MediaKind::Image,
            Vision::Qwen25Omni(_) => true,
        }
    }

    /// The text to tokenize for a rendered prompt: Gemma 3's processor writes each image's
    /// whole token run (and the blank lines around it) in place of the template's marker
    /// before tokenizing, so that the newlines merge with their neighbours as the tokenizer
    /// merges them; Qwen2.5-VL expands tokens instead (in [`Vision::plan_with`]).
    pub fn prompt_text<'a>(&self, rendered: &'a str) -> Cow<'a, str> {
        match self {
            Vision::Qwen25Vl(_) | Vision::Qwen25Omni(_) => Cow::Borrowed(rendered),
            Vision::Gemma3(v) => v.prompt_text(rendered),
        }
    }

    /// The language model's input for `tokens` (a tokenized [`Vision::prompt_text`] whose
    /// placeholders stand for `images`, `videos` and `audios` (16 kHz mono samples) in
    /// order), short of running the towers:
    /// the expanded token ids, the tower inputs and the tokens they become, and every
    /// token's position. `kwargs` override the processors' settings where the model has
    /// them (a video's were applied when it was probed and read).
    pub fn plan_with(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
        audios: &[Vec<f32>],
        kwargs: ProcessorKwargs,
    ) -> Result<PreparedPrompt, VisionError> {
        for (kind, given) in [
            (MediaKind::Image, images.len()),
            (MediaKind::Video, videos.len()),
            (MediaKind::Audio, audios.len()),
        ] {
            if given > 0 && !self.accepts(kind) {
                return Err(VisionError::Unsupported(kind));
            }
        }
        match self {
            Vision::Qwen25Vl(v) => v.plan_with(tokens, images, videos, kwargs),
            Vision::Gemma3(v) => v.plan(tokens, images),
            Vision::Qwen25Omni(v) => v.plan_with(tokens, images, videos, audios, kwargs),
        }
    }

    /// [`Vision::plan_with`] with the model's own settings.
    pub fn plan(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
        audios: &[Vec<f32>],
    ) -> Result<PreparedPrompt, VisionError> {
        self.plan_with(tokens, images, videos, audios, ProcessorKwargs::default())
    }

    /// The tower's rows for one tower input: `input.len` rows of
    /// [`Vision::embedding_width`] values.
    pub fn encode(&self, pool: &ThreadPool, input: &TowerInput) -> Vec<f32> {
        match self {
            Vision::Qwen25Vl(v) => v.encode(pool, input),
            Vision::Gemma3(v) => v.encode(pool, input),
            Vision::Qwen25Omni(v) => v.encode(pool, input),
        }
    }

    /// Floating-point operations of [`Vision::encode`] on `input`.
    pub fn encode_flops(&self, input: &TowerInput) -> f64 {
        match self {
            Vision::Qwen25Vl(v) => v.encode_flops(input),
            Vision::Gemma3(v) => v.encode_flops(),
            Vision::Qwen25Omni(v) => v.encode_flops(input),
        }
    }

    /// Values per row the tower gives the language model (its hidden size).
    pub fn embedding_width(&self) -> usize {
        match self {
            Vision::Qwen25Vl(v) => v.embedding_width(),
            Vision::Gemma3(v) => v.embedding_width(),
            Vision::Qwen25Omni(v) => v.vision().embedding_width(),
        }
    }

    /// [`Vision::plan`] with every tower input encoded: the expanded token ids and the media
    /// (tower rows and positions) that go with them.
    pub fn prepare(
        &self,
        pool: &ThreadPool,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
        audios: &[Vec<f32>],
        kwargs: ProcessorKwargs,
    ) -> Result<(Vec<u32>, PromptMedia), VisionError> {
        let plan = self.plan_with(tokens, images, videos, audios, kwargs)?;
        let rows: Vec<Vec<f32>> = plan.inputs.iter().map(|i| self.encode(pool, i)).collect();
        Ok(plan.into_media(rows, self.embedding_width()))
    }

    /// Tokens an image of this size adds to its tokenized prompt text (cheap: nothing is
    /// resized), so that a prompt can be refused before its images are processed: Qwen2.5-VL's
    /// placeholder becomes one token per merged patch; Gemma 3's tokens are in the text
    /// already ([`Vision::prompt_text`]).
    pub fn added_tokens_for(
        &self,
        height: u32,
        width: u32,
        kwargs: ProcessorKwargs,
    ) -> Result<usize, VisionError> {
        match self {
            Vision::Qwen25Vl(v) => Ok(v.tokens_for(height, width, kwargs)?.saturating_sub(1)),
            Vision::Qwen25Omni(v) => Ok(v
                .vision()
                .tokens_for(height, width, kwargs)?
                .saturating_sub(1)),
            Vision::Gemma3(_) => Ok(0),
        }
    }

    /// Tokens an audio clip of `samples` 16 kHz samples adds to its prompt (cheap).
    pub fn audio_tokens_for(&self, samples: usize) -> Result<usize, VisionError> {
        match self {
            Vision::Qwen25Omni(v) => Ok(v.audio_tokens_for(samples)),
            _ => Err(VisionError::Unsupported(MediaKind::Audio)),
        }
    }

    fn qwen_video(&self) -> Result<&Qwen25VlVision, VisionError> {
        match self {
            Vision::Qwen25Vl(v) => Ok(v),
            Vision::Qwen25Omni(v) => Ok(v.vision()),
            Vision::Gemma3(_) => Err(VisionError::Unsupported(MediaKind::Video)),
        }
    }

    /// What a video file holds, and the frames the video processor samples from it.
    pub fn probe_video(
        &self,
        path: &Path,
        kwargs: ProcessorKwargs,
        limits: &VideoLimits,
    ) -> Result<VideoPlan, VisionError> {
        self.qwen_video()?.probe_video(path, kwargs, limits)
    }

    /// Video tokens the language model sees for a probed video (cheap: nothing is decoded),
    /// so that a prompt can be refused before its videos are read.
    pub fn video_tokens_for(
        &self,
        plan: &VideoPlan,
        kwargs: ProcessorKwargs,
    ) -> Result<usize, VisionError> {
        self.qwen_video()?.video_tokens_for(plan, kwargs)
    }

    /// [`Vision::probe_video`] then [`Vision::read_video`], for a caller with nothing to decide
    /// in between: the file's plan and its frames.
    pub fn open_video(
        &self,
        path: &Path,
        kwargs: ProcessorKwargs,
        limits: &VideoLimits,
    ) -> Result<(VideoPlan, Video), VisionError> {
        let plan = self.probe_video(path, kwargs, limits)?;
        let video = self.read_video(path, &plan, kwargs, limits)?;
        Ok((plan, video))
    }

    /// Reads the probed video at `path`: its sampled frames, resized for the tower as they
    /// arrive (a long video never holds more than the frames it keeps), and its audio track
    /// when `kwargs.use_audio_in_video` asks for it.
    pub fn read_video(
        &self,
        path: &Path,
        plan: &VideoPlan,
        kwargs: ProcessorKwargs,
        limits: &VideoLimits,
    ) -> Result<Video, VisionError> {
        let mut video = self.qwen_video()?.read_video(path, plan, kwargs, limits)?;
        if kwargs.use_audio_in_video {
            if !matches!(self, Vision::Qwen25Omni(_)) {
                return Err(VisionError::Unsupported(MediaKind::Audio));
            }
            video.audio = Some(crate::video::read_audio_track(path, limits)?);
        }
        Ok(video)
    }
}

/// Checks that `tokens` hold one placeholder per medium: for each `(kind, token, given)`,
/// `given` tokens `token`.
pub(crate) fn check_placeholders(
    tokens: &[u32],
    expected: &[(MediaKind, u32, usize)],
) -> Result<(), VisionError> {
    for &(kind, token, given) in expected {
        let placeholders = tokens.iter().filter(|&&t| t == token).count();
        if placeholders != given {
            return Err(VisionError::Placeholders {
                kind,
                placeholders,
                given,
            });
        }
    }
    Ok(())
}

/// The hash that names an image's tower input: XXH3-128 over its shape (`dims`: the grid, or
/// the size) and its pixel values, all little-endian. Two inputs that preprocess to the same
/// values have the same hash, whatever their files looked like.
pub(crate) fn pixels_hash(dims: &[u32], values: &[f32]) -> u128 {
    let mut h = Xxh3Default::new();
    for x in dims {
        h.update(&x.to_le_bytes());
    }
    let mut buf = [0u8; 4096];
    for values in values.chunks(buf.len() / 4) {
        for (b, v) in buf.chunks_exact_mut(4).zip(values) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..values.len() * 4]);
    }
    h.digest128()
}

/// The JSON file at `path`, or `None` when there is none.
pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>, VisionError> {
    if !path.is_file() {
        return Ok(None);
    }
    let error = |message: String| VisionError::Model {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    Ok(Some(
        serde_json::from_str(&text).map_err(|e| error(e.to_string()))?,
    ))
}

/// One processor's settings in the model directory `dir`: its own file `own`
/// (`preprocessor_config.json`, `video_preprocessor_config.json`), or the `key` entry of
/// `processor_config.json`, as transformers 5 saves a processor; `None` when neither is there.
pub(crate) fn processor_json(
    dir: &Path,
    own: &str,
    key: &str,
) -> Result<Option<serde_json::Value>, VisionError> {
    if let Some(v) = read_json(&dir.join(own))? {
        return Ok(Some(v));
    }
    Ok(read_json(&dir.join("processor_config.json"))?
        .map(|c| c[key].clone())
        .filter(|v| v.is_object()))
}

/// The image processor's settings of the model directory `dir` ([`processor_json`]), which
/// every vision model has.
pub(crate) fn image_processor_json(dir: &Path) -> Result<serde_json::Value, VisionError> {
    processor_json(dir, "preprocessor_config.json", "image_processor")?.ok_or_else(|| {
        VisionError::Model {
            path: dir.join("preprocessor_config.json"),
            message: "missing (and processor_config.json has no image_processor)".into(),
        }
    })
}
