//! Long-form transcription as faster-whisper does it: the whole recording's log-mel is cut
//! into 30-second windows; each window is encoded, its language detected (once, on the first
//! window, unless given), decoded with temperature fallback (re-decoded hotter when the text
//! compresses too well — a repetition loop — or is too unlikely), split into segments at
//! timestamp pairs, and the next window starts where the last complete segment ended. Text of
//! earlier windows is given as context unless the decode needed a high temperature.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use weft_kernels::pool::ThreadPool;

use crate::audio;
use crate::decoder::{CrossKv, DecoderState};
use crate::encoder::encode;
use crate::error::{AudioError, TranscribeError};
use crate::mel::{MelExtractor, CHUNK_FRAMES, HOP, SAMPLE_RATE};
use crate::model::Whisper;
use crate::search::{decode_window, DecodeOptions, DecodeResult, Rng};
use weft_kernels::float_ops::softmax_inplace;

/// Seconds per timestamp token and per mel frame.
const TIME_PRECISION: f64 = 0.02;
const FRAME_SECONDS: f64 = HOP as f64 / SAMPLE_RATE as f64;
/// Peak amplitude below which a recording counts as silent (-80 dBFS).
const SILENCE: f32 = 1e-4;
/// Mel frames per timestamp step (the encoder halves the frame rate).
const INPUT_STRIDE: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    /// Speech in any language to English text.
    Translate,
}

impl Task {
    /// The name OpenAI's `verbose_json` reports.
    pub fn name(self) -> &'static str {
        match self {
            Task::Transcribe => "transcribe",
            Task::Translate => "translate",
        }
    }
}

/// faster-whisper's `transcribe` options and defaults.
#[derive(Clone, Debug)]
pub struct TranscribeOptions {
    /// ISO code ("en"); `None` detects it on the first window.
    pub language: Option<String>,
    pub task: Task,
    pub beam_size: usize,
    pub best_of: usize,
    /// Tried in order until a decode passes the thresholds.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f64>,
    pub log_prob_threshold: Option<f64>,
    pub no_speech_threshold: Option<f64>,
    pub condition_on_previous_text: bool,
    pub prompt_reset_on_temperature: f32,
    /// Text that precedes the recording (names, spelling, style).
    pub initial_prompt: Option<String>,
    /// Predict segment timestamps (otherwise one segment per window).
    pub timestamps: bool,
    pub max_initial_timestamp: f64,
    pub suppress_blank: bool,
    pub length_penalty: f32,
    /// Recordings longer than this are refused.
    pub max_seconds: f64,
    pub seed: u64,
    /// Checked before each 30-second window: once set, the transcription stops with
    /// `TranscribeError::Cancelled` (a server sets it when the client has gone).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            language: None,
            task: Task::Transcribe,
            beam_size: 5,
            best_of: 5,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            prompt_reset_on_temperature: 0.5,
            initial_prompt: None,
            timestamps: true,
            max_initial_timestamp: 1.0,
            suppress_blank: true,
            length_penalty: 1.0,
            max_seconds: 3.0 * 3600.0,
            seed: 0,
            cancel: None,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Segment {
    pub id: usize,
    /// Mel frame where the window that produced it started.
    pub seek: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub temperature: f32,
    pub avg_logprob: f64,
    pub compression_ratio: f64,
    pub no_speech_prob: f32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Transcript {
    pub task: &'static str,
    /// ISO code; empty when silence left nothing to detect it from.
    pub language: String,
    pub language_probability: f32,
    /// Seconds of audio.
    pub duration: f64,
    pub text: String,
    pub segments: Vec<Segment>,
}

/// A model with its thread pool and feature extractor, ready to transcribe.
pub struct Transcriber {
    model: Whisper,
    pool: ThreadPool,
    mel: MelExtractor,
}

impl Transcriber {
    pub fn new(model: Whisper, threads: usize) -> Transcriber {
        let mel = MelExtractor::new(model.config.n_mels);
        Transcriber {
            model,
            pool: ThreadPool::new(threads),
            mel,
        }
    }

    pub fn model(&self) -> &Whisper {
        &self.model
    }

    /// Transcribes an audio file's bytes (any format `audio::decode` reads).
    pub fn transcribe_bytes(
        &self,
        bytes: &[u8],
        opts: &TranscribeOptions,
    ) -> Result<Transcript, TranscribeError> {
        let samples = audio::decode(bytes, opts.max_seconds)?;
        self.transcribe(&samples, opts)
    }

    /// Language probabilities of the first window of `samples`, most likely first.
    pub fn detect_language(&self, samples: &[f32]) -> Result<Vec<(String, f32)>, TranscribeError> {
        if !self.model.tokens.is_multilingual() {
            return Err(TranscribeError::EnglishOnly("detect a language"));
        }
        let mel = self.features(samples)?;
        let cross = self.encode_window(&mel, 0, CHUNK_FRAMES);
        Ok(self.language_probs(&cross))
    }

    /// Transcribes 16 kHz mono samples.
    pub fn transcribe(
        &self,
        samples: &[f32],
        opts: &TranscribeOptions,
    ) -> Result<Transcript, TranscribeError> {
        let tokens = &self.model.tokens;
        if opts.temperatures.is_empty() || opts.beam_size == 0 || opts.best_of == 0 {
            return Err(TranscribeError::Option(
                "temperatures, beam_size and best_of must be non-empty/positive".into(),
            ));
        }
        let duration = samples.len() as f64 / SAMPLE_RATE as f64;
        if duration > opts.max_seconds {
            return Err(AudioError::TooLong {
                seconds: duration,
                limit: opts.max_seconds,
            }
            .into());
        }
        let language_id = match &opts.language {
            Some(code) => Some(
                tokens
                    .language(code)
                    .ok_or_else(|| TranscribeError::UnknownLanguage(code.clone()))?,
            ),
            None => None,
        };
        if !tokens.is_multilingual() && opts.task == Task::Translate {
            return Err(TranscribeError::EnglishOnly("translate"));
        }
        // Digital silence would be decoded into invented words by the fallbacks; like
        // OpenAI's API, it is a transcript with no text.
        if !samples.is_empty() && samples.iter().all(|s| s.abs() < SILENCE) {
            let language = match (&opts.language, tokens.is_multilingual()) {
                (Some(code), _) => code.clone(),
                (None, false) => "en".to_string(),
                // Nothing to detect a language from.
                (None, true) => String::new(),
            };
            return Ok(Transcript {
                task: opts.task.name(),
                language,
                language_probability: 0.0,
                duration,
                text: String::new(),
                segments: Vec::new(),
            });
        }
        let mel = self.features(samples)?;
        // faster-whisper counts the frame added by its 160-sample padding out of the content.
        let content_frames = mel.frames.saturating_sub(1);
        let mut rng = Rng::new(opts.seed);
        let mut language: Option<(u32, f32)> = language_id.map(|id| (id, 1.0));
        let mut all_tokens: Vec<u32> = Vec::new();
        if let Some(p) = &opts.initial_prompt {
            let text = format!(" {}", p.trim());
            all_tokens.extend(self.model.tokenizer.encode(&text, false, false));
        }
        let mut prompt_reset_since = 0;
        let mut segments = Vec::new();
        let mut seek = 0usize;
        while seek < content_frames {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(TranscribeError::Cancelled);
            }
            let time_offset = seek as f64 * FRAME_SECONDS;
            let segment_size = CHUNK_FRAMES.min(content_frames - seek);
            let segment_duration = segment_size as f64 * FRAME_SECONDS;
            let t0 = std::time::Instant::now();
            let cross = self.encode_window(&mel, seek, segment_size);
            tracing::debug!(
                "window at {time_offset:.2}s encoded in {:.2}s",
                t0.elapsed().as_secs_f64()
            );
            if tokens.is_multilingual() && language.is_none() {
                let probs = self.language_probs(&cross);
                let (code, p) = &probs[0];
                language = Some((tokens.language(code).expect("a model language"), *p));
            }
            let prompt = self.prompt(&all_tokens[prompt_reset_since..], language, opts);
            let t0 = std::time::Instant::now();
            let (result, compression_ratio) =
                self.decode_with_fallback(&cross, &prompt, opts, &mut rng);
            tracing::debug!(
                "decoded {} tokens in {:.2}s (temperature {})",
                result.tokens.len(),
                t0.elapsed().as_secs_f64(),
                result.temperature
            );
            if let Some(threshold) = opts.no_speech_threshold {
                let silent = result.no_speech_prob as f64 > threshold
                    && !opts
                        .log_prob_threshold
                        .is_some_and(|lp| result.avg_logprob > lp);
                if silent {
                    seek += segment_size;
                    continue;
                }
            }
            let previous_seek = seek;
            let (pieces, next_seek) = self.split_by_timestamps(
                &result.tokens,
                time_offset,
                segment_size,
                segment_duration,
                seek,
            );
            seek = next_seek;
            for (start, end, toks) in pieces {
                let text = self
                    .model
                    .tokenizer
                    .decode(&text_only(&toks, tokens.eot), false);
                if start == end || text.trim().is_empty() {
                    continue;
                }
                all_tokens.extend(&toks);
                segments.push(Segment {
                    id: segments.len() + 1,
                    seek: previous_seek,
                    start,
                    end,
                    text,
                    tokens: toks,
                    temperature: result.temperature,
                    avg_logprob: result.avg_logprob,
                    compression_ratio,
                    no_speech_prob: result.no_speech_prob,
                });
            }
            if !opts.condition_on_previous_text
                || result.temperature > opts.prompt_reset_on_temperature
            {
                prompt_reset_since = all_tokens.len();
            }
        }
        let (lang_id, language_probability) = language.unwrap_or((0, 1.0));
        let language = tokens.language_code(lang_id).unwrap_or("en").to_string();
        let text = segments.iter().map(|s| s.text.as_str()).collect::<String>();
        Ok(Transcript {
            task: opts.task.name(),
            language,
            language_probability,
            duration,
            text: text.trim().to_string(),
            segments,
        })
    }

    /// The recording's log-mel with faster-whisper's padding (160 zero samples).
    fn features(&self, samples: &[f32]) -> Result<crate::mel::LogMel, TranscribeError> {
        if samples.is_empty() {
            return Err(AudioError::NoSamples.into());
        }
        let mut padded = Vec::with_capacity(samples.len() + HOP);
        padded.extend_from_slice(samples);
        padded.extend(std::iter::repeat_n(0.0, HOP));
        Ok(self.mel.extract(&padded))
    }

    fn encode_window(&self, mel: &crate::mel::LogMel, seek: usize, len: usize) -> CrossKv {
        let window = mel.window(seek, len);
        let encoded = encode(&self.model.config, &self.model.encoder, &self.pool, &window);
        CrossKv::new(&self.model, &self.pool, &encoded)
    }

    /// Softmax over the language tokens after `<|startoftranscript|>`, most likely first.
    fn language_probs(&self, cross: &CrossKv) -> Vec<(String, f32)> {
        let t = &self.model.tokens;
        let mut state = DecoderState::new(&self.model, cross, 1);
        let logits = state.forward(&self.pool, &[(0, t.sot)], &[0]);
        let mut scores: Vec<f32> = t
            .languages
            .iter()
            .map(|&(_, id)| logits[id as usize])
            .collect();
        softmax_inplace(&mut scores);
        let mut probs: Vec<(String, f32)> = t
            .languages
            .iter()
            .zip(scores)
            .map(|((code, _), p)| (code.clone(), p))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        probs
    }

    /// `[<|startofprev|> context…] <|startoftranscript|> [language task] [<|notimestamps|>]`.
    fn prompt(
        &self,
        previous: &[u32],
        language: Option<(u32, f32)>,
        opts: &TranscribeOptions,
    ) -> Vec<u32> {
        let t = &self.model.tokens;
        let mut prompt = Vec::new();
        if !previous.is_empty() {
            prompt.push(t.sot_prev);
            let keep = self.model.config.n_text_ctx / 2 - 1;
            prompt.extend(&previous[previous.len().saturating_sub(keep)..]);
        }
        prompt.push(t.sot);
        if t.is_multilingual() {
            if let Some((lang, _)) = language {
                prompt.push(lang);
            }
            prompt.push(match opts.task {
                Task::Transcribe => t.transcribe,
                Task::Translate => t.translate,
            });
        }
        if !opts.timestamps {
            prompt.push(t.no_timestamps);
        }
        prompt
    }

    /// Decodes at each temperature in turn until the result is neither repetitive nor
    /// improbable (or is silence); otherwise keeps the most probable non-repetitive result.
    fn decode_with_fallback(
        &self,
        cross: &CrossKv,
        prompt: &[u32],
        opts: &TranscribeOptions,
        rng: &mut Rng,
    ) -> (DecodeResult, f64) {
        let mut all: Vec<(DecodeResult, f64)> = Vec::new();
        let mut below_cr: Vec<usize> = Vec::new();
        for &temperature in &opts.temperatures {
            let d = DecodeOptions {
                beam_size: opts.beam_size,
                best_of: opts.best_of,
                temperature,
                suppress_blank: opts.suppress_blank,
                timestamps: opts.timestamps,
                max_initial_timestamp_index: (opts.max_initial_timestamp / TIME_PRECISION).round()
                    as usize,
                length_penalty: opts.length_penalty,
                seed: opts.seed,
            };
            let result = decode_window(&self.model, &self.pool, cross, prompt, &d, rng);
            let text = self
                .model
                .tokenizer
                .decode(&text_only(&result.tokens, self.model.tokens.eot), false);
            let ratio = compression_ratio(text.trim());
            let mut fallback = false;
            if opts.compression_ratio_threshold.is_some_and(|t| ratio > t) {
                fallback = true;
            } else {
                below_cr.push(all.len());
            }
            let improbable = opts
                .log_prob_threshold
                .is_some_and(|t| result.avg_logprob < t);
            if improbable {
                fallback = true;
            }
            if improbable
                && opts
                    .no_speech_threshold
                    .is_some_and(|t| result.no_speech_prob as f64 > t)
            {
                fallback = false;
            }
            all.push((result, ratio));
            if !fallback {
                return all.pop().expect("just pushed");
            }
        }
        let last_temperature = *opts.temperatures.last().expect("non-empty");
        let pool: Vec<usize> = if below_cr.is_empty() {
            (0..all.len()).collect()
        } else {
            below_cr
        };
        let best = pool
            .into_iter()
            .max_by(|&a, &b| all[a].0.avg_logprob.total_cmp(&all[b].0.avg_logprob))
            .expect("at least one decode");
        let (mut result, ratio) = all.swap_remove(best);
        result.temperature = last_temperature;
        (result, ratio)
    }

    /// Cuts a window's tokens into (start, end, tokens) segments at consecutive timestamp
    /// pairs and says where the next window starts.
    fn split_by_timestamps(
        &self,
        toks: &[u32],
        time_offset: f64,
        segment_size: usize,
        segment_duration: f64,
        seek: usize,
    ) -> (Vec<(f64, f64, Vec<u32>)>, usize) {
        let tb = self.model.tokens.timestamp_begin;
        let is_ts = |t: u32| t >= tb;
        let n = toks.len();
        let single_ending = n >= 2 && !is_ts(toks[n - 2]) && is_ts(toks[n - 1]);
        let mut slices: Vec<usize> = (1..n)
            .filter(|&i| is_ts(toks[i]) && is_ts(toks[i - 1]))
            .collect();
        let mut out = Vec::new();
        if !slices.is_empty() {
            if single_ending {
                slices.push(n);
            }
            let mut last = 0;
            for &cut in &slices {
                let piece = &toks[last..cut];
                let start = time_offset + (piece[0] - tb) as f64 * TIME_PRECISION;
                let end = time_offset + (piece[piece.len() - 1] - tb) as f64 * TIME_PRECISION;
                out.push((start, end, piece.to_vec()));
                last = cut;
            }
            let next = if single_ending {
                seek + segment_size
            } else {
                seek + (toks[last - 1] - tb) as usize * INPUT_STRIDE
            };
            (out, next)
        } else {
            let mut duration = segment_duration;
            if let Some(&last_ts) = toks.iter().rev().find(|&&t| is_ts(t)) {
                if last_ts != tb {
                    duration = (last_ts - tb) as f64 * TIME_PRECISION;
                }
            }
            out.push((time_offset, time_offset + duration, toks.to_vec()));
            (out, seek + segment_size)
        }
    }
}

/// The tokens that are text (timestamps and other special tokens dropped).
fn text_only(toks: &[u32], eot: u32) -> Vec<u32> {
    toks.iter().copied().filter(|&t| t < eot).collect()
}

/// Bytes of text over bytes of its zlib compression: repetition loops compress very well.
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(text.as_bytes()).expect("writing to memory");
    let compressed = z.finish().expect("writing to memory");
    text.len() as f64 / compressed.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcriber_can_be_shared_by_server_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Transcriber>();
    }

    #[test]
    fn repetition_compresses_well() {
        let normal = "The quick brown fox jumps over the lazy dog near the river bank.";
        let looped = "I am here. ".repeat(30);
        assert!(compression_ratio(normal) < 2.4);
        assert!(compression_ratio(&looped) > 2.4);
    }
}
