//! Images, videos and audio in a Qwen2.5-Omni prompt (the thinker's input): Qwen2.5-VL's
//! vision tower and processors, the audio tower of `weft_audio::audio_tower`, and the
//! prompt layout of transformers' `Qwen2_5OmniProcessor` with the positions of its
//! `get_rope_index` (TMRoPE): a temporal patch of video sits `position_id_per_seconds`
//! positions per second after the video's start, audio advances one position per token (25
//! per second), and with `use_audio_in_video` a video's frames and its own audio track are
//! interleaved per `seconds_per_chunk` under one start.

use std::path::Path;

use weft_audio::audio_tower::{self, AudioTower, AudioTowerConfig};
use weft_audio::mel::LogMel;
use weft_kernels::pool::ThreadPool;
use weft_models::arch::hf::reader_config;
use weft_models::media::{self, MediaGrid, MediaPositions, Piece, PositionWriter};
use weft_models::tokenizer::Tokenizer;
use weft_models::weights::{SafetensorsFiles, WeightSource};

use crate::mmproj::MmprojFile;
use crate::qwen25vl::{mmproj_token, token_id, MediaTokens, Medium, Qwen25VlVision};
use crate::vision::{
    check_placeholders, pixels_hash, PreparedPrompt, ProcessorKwargs, TowerInput, TowerPixels,
    Video, VisionError,
};
use crate::{MediaKind, RgbImage};

/// Where a checkpoint keeps the audio tower: a released Qwen2.5-Omni (thinker, talker and
/// speech decoder in one file set), or a thinker alone.
const AUDIO_TOWER_PREFIXES: [&str; 2] = ["thinker.audio_tower", "audio_tower"];

/// The released model's time scales (`position_id_per_seconds`, `seconds_per_chunk`), for
/// mmproj files, which do not record them, and configs that leave them out.
const POSITION_ID_PER_SECONDS: f32 = 25.0;
const SECONDS_PER_CHUNK: f32 = 2.0;

/// The token ids of Qwen2.5-Omni's prompt layout.
#[derive(Clone, Copy, Debug)]
struct OmniTokens {
    audio: u32,
    audio_bos: u32,
    audio_eos: u32,
    vision_bos: u32,
    vision_eos: u32,
}

pub struct Qwen25OmniMedia {
    vision: Qwen25VlVision,
    audio: AudioTower,
    tokens: OmniTokens,
    position_id_per_seconds: f32,
    seconds_per_chunk: f32,
}

impl Qwen25OmniMedia {
    /// The media side of the Hugging Face directory `dir`, whose `config.json` (`config`)
    /// is a Qwen2.5-Omni model's (released, with `thinker_config`, or a thinker alone).
    pub fn load(dir: &Path, config: &serde_json::Value) -> Result<Qwen25OmniMedia, VisionError> {
        let config_path = dir.join("config.json");
        let model_error = |message: String| VisionError::Model {
            path: config_path.clone(),
            message,
        };
        let thinker = reader_config(config);
        let token = |name: &str| {
            token_id(thinker, name).ok_or_else(|| model_error(format!("no {name}_token_id")))
        };
        let tokens = OmniTokens {
            audio: token("audio")?,
            audio_bos: token("audio_start")?,
            audio_eos: token("audio_end")?,
            vision_bos: token("vision_start")?,
            vision_eos: token("vision_end")?,
        };
        let float = |key: &str, default: f32| thinker[key].as_f64().map_or(default, |v| v as f32);
        let files = SafetensorsFiles::open_dir(dir).map_err(|e| VisionError::Model {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let vision = Qwen25VlVision::load_from(dir, thinker, &files)?;
        let audio_config = AudioTowerConfig::from_hf(&thinker["audio_config"])
            .map_err(|e| model_error(e.to_string()))?;
        let prefix = AUDIO_TOWER_PREFIXES
            .into_iter()
            .find(|p| files.tensor(&format!("{p}.conv1.weight")).is_some())
            .ok_or_else(|| model_error("no audio tower tensors (thinker.audio_tower.*)".into()))?;
        let audio = AudioTower::load(&files, prefix, audio_config)
            .map_err(|e| model_error(e.to_string()))?;
        Self::new(
            vision,
            audio,
            tokens,
            float("position_id_per_seconds", POSITION_ID_PER_SECONDS),
            float("seconds_per_chunk", SECONDS_PER_CHUNK),
        )
        .map_err(model_error)
    }

    /// The media side of a GGUF thinker from llama.cpp's mmproj file (projector type
    /// [`crate::mmproj::QWEN25OMNI_PROJECTOR`]: both towers); the placeholders are the
    /// language model's tokens of those names, the time scales the released model's.
    pub fn load_mmproj(
        mmproj: &MmprojFile,
        tokenizer: &Tokenizer,
    ) -> Result<Qwen25OmniMedia, VisionError> {
        let token = |text: &str| mmproj_token(mmproj, tokenizer, text);
        let tokens = OmniTokens {
            audio: token("<|AUDIO|>")?,
            audio_bos: token("<|audio_bos|>")?,
            audio_eos: token("<|audio_eos|>")?,
            vision_bos: token("<|vision_bos|>")?,
            vision_eos: token("<|vision_eos|>")?,
        };
        let vision = Qwen25VlVision::load_mmproj_with(
            mmproj,
            MediaTokens {
                image: token("<|IMAGE|>")?,
                video: token("<|VIDEO|>")?,
                tokens_per_second: POSITION_ID_PER_SECONDS,
            },
        )?;
        let model_error = |message: String| VisionError::Model {
            path: mmproj.path().to_path_buf(),
            message,
        };
        let config = mmproj
            .omni_audio_config()
            .map_err(|e| model_error(e.to_string()))?;
        let audio = AudioTower::build(&mmproj.omni_audio_weights(), config)
            .map_err(|e| model_error(e.to_string()))?;
        Self::new(
            vision,
            audio,
            tokens,
            POSITION_ID_PER_SECONDS,
            SECONDS_PER_CHUNK,
        )
        .map_err(model_error)
    }

    fn new(
        vision: Qwen25VlVision,
        audio: AudioTower,
        tokens: OmniTokens,
        position_id_per_seconds: f32,
        seconds_per_chunk: f32,
    ) -> Result<Qwen25OmniMedia, String> {
        if !(position_id_per_seconds > 0.0 && seconds_per_chunk > 0.0) {
            return Err(format!(
                "position_id_per_seconds {position_id_per_seconds} and seconds_per_chunk \
                 {seconds_per_chunk} must be positive"
            ));
        }
        if audio.output_dim() != vision.embedding_width() {
            return Err(format!(
                "the audio tower gives rows of {} values, the vision tower of {}",
                audio.output_dim(),
                vision.embedding_width()
            ));
        }
        Ok(Qwen25OmniMedia {
            vision,
            audio,
            tokens,
            position_id_per_seconds,
            seconds_per_chunk,
        })
    }

    pub fn vision(&self) -> &Qwen25VlVision {
        &self.vision
    }

    /// Audio tokens per interleaving chunk (transformers' `int(position_id_per_seconds *
    /// seconds_per_chunk)`).
    fn tokens_per_chunk(&self) -> u32 {
        (self.position_id_per_seconds * self.seconds_per_chunk) as u32
    }

    /// [`crate::Vision::plan_with`] for Qwen2.5-Omni: `<|IMAGE|>`, `<|VIDEO|>` and
    /// `<|AUDIO|>` placeholders (one per medium) expanded, or, with
    /// `kwargs.use_audio_in_video`, each video's `<|vision_bos|><|VIDEO|><|vision_eos|>`
    /// made into its frames and audio track interleaved between `<|audio_bos|>` and
    /// `<|audio_eos|>`, as the processor writes them.
    pub fn plan_with(
        &self,
        tokens: &[u32],
        images: &[RgbImage],
        videos: &[Video],
        audios: &[Vec<f32>],
        kwargs: ProcessorKwargs,
    ) -> Result<PreparedPrompt, VisionError> {
        let v = &self.vision;
        check_placeholders(
            tokens,
            &[
                (MediaKind::Image, v.image_token(), images.len()),
                (MediaKind::Video, v.video_token(), videos.len()),
                (MediaKind::Audio, self.tokens.audio, audios.len()),
            ],
        )?;
        let processor = v.processor_for(kwargs)?;
        let (mut images, mut videos, mut audios) = (images.iter(), videos.iter(), audios.iter());
        let mut prompt = OmniPrompt::default();
        let mut i = 0;
        while i < tokens.len() {
            let token = tokens[i];
            i += 1;
            if token == v.image_token() {
                let image = images.next().expect("one image per placeholder, counted");
                prompt.medium(v.image_medium(&processor, image)?);
            } else if token == self.tokens.audio {
                let samples = audios.next().expect("one audio per placeholder, counted");
                let (len, chunks) = self.audio_inputs(samples);
                prompt.audio(token, len, chunks);
            } else if token == v.video_token() {
                let video = videos.next().expect("one video per placeholder, counted");
                let medium = v.video_medium(video, self.video_time_step(video));
                if !kwargs.use_audio_in_video {
                    prompt.medium(medium);
                    continue;
                }
                if prompt.tokens.last() != Some(&self.tokens.vision_bos)
                    || tokens.get(i) != Some(&self.tokens.vision_eos)
                {
                    return Err(VisionError::Layout(
                        "use_audio_in_video needs each video written as \
                         <|vision_bos|><|VIDEO|><|vision_eos|>"
                            .into(),
                    ));
                }
                let samples = video.audio.as_deref().ok_or_else(|| {
                    VisionError::Layout("use_audio_in_video: the video's audio was not read".into())
                })?;
                i += 1; // <|vision_eos|> is written with the block.
                self.video_with_audio(&mut prompt, medium, samples)?;
            } else {
                prompt.text(token);
            }
        }
        Ok(prompt.finish())
    }

    /// Temporal positions between a video's temporal patches: `position_id_per_seconds`
    /// times the seconds one spans at the fps the processor was asked for (f32, as
    /// transformers computes `second_per_grid`).
    fn video_time_step(&self, video: &Video) -> f32 {
        let t = self
            .vision
            .video_processor()
            .config
            .frame
            .temporal_patch_size;
        let seconds = (f64::from(t) / video.requested_fps) as f32;
        seconds * self.position_id_per_seconds
    }

    /// An audio clip's tokens and its tower inputs: one per chunk of the tower, each with
    /// its first token relative to the clip's.
    fn audio_inputs(&self, samples: &[f32]) -> (usize, Vec<AudioChunk>) {
        let mel = self.audio.features(samples);
        let mut offset = 0;
        let chunks: Vec<AudioChunk> = self
            .audio
            .chunks(mel.frames)
            .into_iter()
            .map(|range| {
                let frames = range.len();
                let mut data = Vec::with_capacity(mel.n_mels * frames);
                for row in mel.data.chunks_exact(mel.frames) {
                    data.extend_from_slice(&row[range.clone()]);
                }
                let len = audio_tower::tokens_for_frames(frames);
                let hash = pixels_hash(&[mel.n_mels as u32, frames as u32], &data);
                let chunk = AudioChunk {
                    offset,
                    len,
                    hash,
                    mel: LogMel {
                        n_mels: mel.n_mels,
                        frames,
                        data,
                    },
                };
                offset += len;
                chunk
            })
            .collect();
        (offset, chunks)
    }

    /// A video and its audio track interleaved per chunk of time under one start.
    fn video_with_audio(
        &self,
        prompt: &mut OmniPrompt,
        medium: Medium,
        samples: &[f32],
    ) -> Result<(), VisionError> {
        let (audio_len, chunks) = self.audio_inputs(samples);
        let grid = medium.grid;
        let pieces = media::interleave(&grid, audio_len, self.tokens_per_chunk());
        // Each piece must be whole tower inputs: whole temporal patches of the video, whole
        // chunks of the audio tower.
        let per_patch = grid.rows * grid.cols;
        let whole = |p: &Piece| match p {
            Piece::Video(r) => r.start % per_patch.max(1) == 0 && r.end % per_patch.max(1) == 0,
            Piece::Audio(r) => {
                let starts = |t: usize| t == audio_len || chunks.iter().any(|c| c.offset == t);
                starts(r.start) && starts(r.end)
            }
        };
        if !pieces.iter().all(whole) {
            return Err(VisionError::Layout(format!(
                "use_audio_in_video needs a temporal patch at least every {} s and audio \
                 chunks of {} s",
                self.seconds_per_chunk, self.seconds_per_chunk
            )));
        }
        // `<|vision_bos|>` was written as text; it shares its position with `<|audio_bos|>`.
        prompt.runs.pop_text();
        let medium_index = prompt.media;
        prompt.media += 1;
        prompt.runs.push(Run::Shared(2));
        prompt.tokens.push(self.tokens.audio_bos);
        let mut patches = medium.patches.into_iter();
        let mut audio = chunks.into_iter().peekable();
        for piece in &pieces {
            match piece {
                Piece::Video(r) => {
                    for _ in 0..r.len() / per_patch.max(1) {
                        let (grid3, hash, pixels) =
                            patches.next().expect("pieces cover the video's patches");
                        prompt.push_input(grid.token, per_patch, medium_index, grid3, hash, pixels);
                    }
                }
                Piece::Audio(r) => {
                    while let Some(chunk) = audio.next_if(|c| c.offset < r.end) {
                        prompt.push_input(
                            self.tokens.audio,
                            chunk.len,
                            medium_index,
                            [1, 0, 0],
                            chunk.hash,
                            TowerPixels::Audio(chunk.mel),
                        );
                    }
                }
            }
        }
        prompt.runs.push(Run::Interleaved(grid, pieces));
        prompt.runs.push(Run::Shared(2));
        prompt
            .tokens
            .extend([self.tokens.audio_eos, self.tokens.vision_eos]);
        Ok(())
    }

    /// The tower's rows for one tower input.
    pub fn encode(&self, pool: &ThreadPool, input: &TowerInput) -> Vec<f32> {
        match &input.pixels {
            TowerPixels::Audio(mel) => self.audio.encode(pool, mel),
            _ => self.vision.encode(pool, input),
        }
    }

    /// Floating-point operations of [`Qwen25OmniMedia::encode`] on `input`.
    pub fn encode_flops(&self, input: &TowerInput) -> f64 {
        match &input.pixels {
            TowerPixels::Audio(mel) => self.audio.flops(mel.frames),
            _ => self.vision.encode_flops(input),
        }
    }

    /// Audio tokens the language model sees for `samples` 16 kHz samples (cheap), so that a
    /// prompt can be refused before its audio is processed.
    pub fn audio_tokens_for(&self, samples: usize) -> usize {
        let frames = samples.div_ceil(weft_audio::mel::HOP);
        self.audio
            .chunks(frames)
            .iter()
            .map(|c| audio_tower::tokens_for_frames(c.len()))
            .sum()
    }
}

/// One chunk of an audio clip for the tower.
struct AudioChunk {
    /// Its first token from the clip's first.
    offset: usize,
    len: usize,
    hash: u128,
    mel: LogMel,
}

/// A prompt's layout as it is expanded: runs of positions, written at the end.
#[derive(Debug)]
enum Run {
    Text(usize),
    Grid(MediaGrid),
    Shared(usize),
    Interleaved(MediaGrid, Vec<Piece>),
}

/// The runs of a prompt, text tokens merged.
#[derive(Debug, Default)]
struct Runs(Vec<Run>);

impl Runs {
    fn push(&mut self, run: Run) {
        match (self.0.last_mut(), &run) {
            (Some(Run::Text(n)), Run::Text(m)) => *n += m,
            _ => self.0.push(run),
        }
    }

    /// Takes back the last text token.
    fn pop_text(&mut self) {
        match self.0.last_mut() {
            Some(Run::Text(n)) if *n > 1 => *n -= 1,
            Some(Run::Text(_)) => {
                self.0.pop();
            }
            _ => unreachable!("the caller checked that a text token came last"),
        }
    }
}

#[derive(Default)]
struct OmniPrompt {
    tokens: Vec<u32>,
    inputs: Vec<TowerInput>,
    runs: Runs,
    media: usize,
}

impl OmniPrompt {
    fn text(&mut self, token: u32) {
        self.tokens.push(token);
        self.runs.push(Run::Text(1));
    }

    fn medium(&mut self, medium: Medium) {
        self.runs.push(Run::Grid(medium.grid));
        self.media += 1;
        medium.place(self.media - 1, &mut self.tokens, &mut self.inputs);
    }

    /// A standalone audio clip: its tokens are placed like text.
    fn audio(&mut self, token: u32, len: usize, chunks: Vec<AudioChunk>) {
        let medium = self.media;
        self.media += 1;
        for chunk in chunks {
            self.push_input(
                token,
                chunk.len,
                medium,
                [1, 0, 0],
                chunk.hash,
                TowerPixels::Audio(chunk.mel),
            );
        }
        self.runs.push(Run::Text(len));
    }

    fn push_input(
        &mut self,
        token: u32,
        len: usize,
        medium: usize,
        grid: [u32; 3],
        hash: u128,
        pixels: TowerPixels,
    ) {
        self.inputs.push(TowerInput {
            pixels,
            grid,
            medium,
            start: self.tokens.len(),
            len,
            bidirectional: false,
            hash,
        });
        self.tokens.extend(std::iter::repeat_n(token, len));
    }

    fn finish(self) -> PreparedPrompt {
        let mut writer = PositionWriter::default();
        for run in &self.runs.0 {
            match run {
                Run::Text(n) => writer.text(*n),
                Run::Grid(g) => writer.grid(g),
                Run::Shared(n) => writer.shared(*n),
                Run::Interleaved(g, pieces) => writer.interleaved(g, pieces),
            }
        }
        let positions: MediaPositions = writer.finish();
        debug_assert_eq!(positions.prompt.len(), self.tokens.len());
        PreparedPrompt {
            tokens: self.tokens,
            inputs: self.inputs,
            positions,
        }
    }
}
