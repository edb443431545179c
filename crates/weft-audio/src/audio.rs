//! Audio in: any container/codec symphonia knows (wav, mp3, flac, ogg/vorbis, m4a/aac) decoded
//! to f32, mixed to mono, resampled to 16 kHz with rubato's FFT resampler.

use std::io::Cursor;

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Indexing, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

use crate::error::AudioError;
use crate::mel::SAMPLE_RATE;

/// Decodes a whole file held in memory to 16 kHz mono samples, refusing recordings longer
/// than `max_seconds`. Samples are resampled to 16 kHz as they are decoded, so memory holds
/// the 16 kHz result, not the recording at its own (often three times higher) rate, and the
/// length is checked as decoding goes.
pub fn decode(bytes: &[u8], max_seconds: f64) -> Result<Vec<f32>, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(bytes.to_vec())),
        MediaSourceStreamOptions::default(),
    );
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| AudioError::NotAudio(e.to_string()))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::NotAudio("no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::NotAudio("the audio track has no codec parameters".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::NotAudio(format!("unsupported codec: {e}")))?;
    let mut out: Option<Resampling> = None;
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut mono = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A stream cut short ends where the data ends: decode what is there.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            // One bad packet is skipped, as players do.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        };
        let rate = buf.spec().rate();
        let resampling = match &mut out {
            Some(r) if r.rate == rate => r,
            Some(r) => {
                return Err(AudioError::Corrupt(format!(
                    "the sample rate changes from {} to {rate} Hz",
                    r.rate
                )))
            }
            None if rate == 0 => {
                return Err(AudioError::NotAudio("the sample rate is unknown".into()))
            }
            None => out.insert(Resampling::new(rate)?),
        };
        buf.copy_to_vecs_planar::<f32>(&mut planes);
        let channels = planes.len().max(1) as f32;
        let frames = planes.first().map_or(0, |p| p.len());
        mono.clear();
        mono.extend((0..frames).map(|i| planes.iter().map(|p| p[i]).sum::<f32>() / channels));
        resampling.push(&mono)?;
        let seconds = resampling.input_seconds();
        if seconds > max_seconds {
            return Err(AudioError::TooLong {
                seconds,
                limit: max_seconds,
            });
        }
    }
    let samples = match out {
        Some(r) => r.finish()?,
        None => Vec::new(),
    };
    if samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    Ok(samples)
}

/// Resamples mono audio to 16 kHz (a copy when it already is).
pub fn resample(samples: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    let mut r = Resampling::new(rate)?;
    r.push(samples)?;
    r.finish()
}

/// The chunk size rubato's FFT resampler is built with (the input it takes per call follows
/// from it and the ratio).
const CHUNK: usize = 1024;

/// Mono samples at `rate` in, 16 kHz out, a chunk at a time. The result is the one rubato's
/// `process_all` gives for the whole input at once: the same calls in the same order (full
/// chunks, the last partial chunk, then silence until the output is long enough), with the
/// resampler's startup delay cut from the front and the output cut to `ceil(ratio * input)`.
struct Resampling {
    rate: u32,
    /// `None` at 16 kHz already: samples pass through.
    fft: Option<Fft<f32>>,
    /// Input frames per call.
    chunk: usize,
    /// Input not yet resampled (less than a chunk).
    pending: Vec<f32>,
    input_len: usize,
    /// Output frames still to drop at the front (the resampler's delay).
    to_trim: usize,
    out: Vec<f32>,
    /// One call's output.
    scratch: Vec<Vec<f32>>,
}

impl Resampling {
    fn new(rate: u32) -> Result<Resampling, AudioError> {
        let fft = if rate as usize == SAMPLE_RATE {
            None
        } else {
            Some(
                Fft::<f32>::new(rate as usize, SAMPLE_RATE, CHUNK, 1, FixedSync::Both)
                    .map_err(|e| resample_error(rate, e))?,
            )
        };
        let (chunk, to_trim, scratch) = fft.as_ref().map_or((0, 0, Vec::new()), |f| {
            (
                f.input_frames_next(),
                f.output_delay(),
                vec![vec![0.0; f.output_frames_max()]],
            )
        });
        Ok(Resampling {
            rate,
            fft,
            chunk,
            pending: Vec::new(),
            input_len: 0,
            to_trim,
            out: Vec::new(),
            scratch,
        })
    }

    /// Seconds of input so far.
    fn input_seconds(&self) -> f64 {
        self.input_len as f64 / f64::from(self.rate)
    }

    fn push(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        self.input_len += samples.len();
        if self.fft.is_none() {
            self.out.extend_from_slice(samples);
            return Ok(());
        }
        self.pending.extend_from_slice(samples);
        let mut used = 0;
        while self.pending.len() - used >= self.chunk {
            let chunk = self.pending[used..used + self.chunk].to_vec();
            self.process(&chunk, None)?;
            used += self.chunk;
        }
        self.pending.drain(..used);
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        let Some(fft) = &self.fft else {
            return Ok(self.out);
        };
        let expected = (fft.resample_ratio() * self.input_len as f64).ceil() as usize;
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            let mut chunk = rest.clone();
            chunk.resize(self.chunk, 0.0);
            self.process(&chunk, Some(rest.len()))?;
        }
        let silence = vec![0.0; self.chunk];
        while self.out.len() < expected {
            self.process(&silence, Some(0))?;
        }
        self.out.truncate(expected);
        Ok(self.out)
    }

    /// Resamples one chunk (`valid` frames of it when partial) and appends the output,
    /// less what is still to trim.
    fn process(&mut self, chunk: &[f32], valid: Option<usize>) -> Result<(), AudioError> {
        let rate = self.rate;
        let fft = self.fft.as_mut().expect("resampling");
        let input = [chunk.to_vec()];
        let adapter = SequentialSliceOfVecs::new(&input, 1, chunk.len())
            .map_err(|e| resample_error(rate, e))?;
        let frames = self.scratch[0].len();
        let mut output = SequentialSliceOfVecs::new_mut(&mut self.scratch, 1, frames)
            .map_err(|e| resample_error(rate, e))?;
        let indexing = Indexing {
            partial_len: valid,
            ..Indexing::default()
        };
        let (_, produced) = fft
            .process_into_buffer(&adapter, &mut output, Some(&indexing))
            .map_err(|e| resample_error(rate, e))?;
        let trim = self.to_trim.min(produced);
        self.to_trim -= trim;
        self.out.extend_from_slice(&self.scratch[0][trim..produced]);
        Ok(())
    }
}

fn resample_error(from: u32, e: impl std::fmt::Display) -> AudioError {
    AudioError::Resample {
        from,
        msg: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit PCM WAV file in memory.
    fn wav(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
        let data_len = (samples.len() * 2) as u32;
        let mut v = Vec::new();
        v.extend(b"RIFF");
        v.extend((36 + data_len).to_le_bytes());
        v.extend(b"WAVEfmt ");
        v.extend(16u32.to_le_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend(channels.to_le_bytes());
        v.extend(rate.to_le_bytes());
        v.extend((rate * 2 * channels as u32).to_le_bytes());
        v.extend((2 * channels).to_le_bytes());
        v.extend(16u16.to_le_bytes());
        v.extend(b"data");
        v.extend(data_len.to_le_bytes());
        for s in samples {
            v.extend(s.to_le_bytes());
        }
        v
    }

    #[test]
    fn stereo_is_mixed_and_resampled() {
        // 1 s of 48 kHz stereo: left +0.5, right -0.25 -> mono 0.125.
        let frames: Vec<i16> = (0..48_000).flat_map(|_| [16384i16, -8192]).collect();
        let out = decode(&wav(&frames, 48_000, 2), 60.0).unwrap();
        assert!(
            (out.len() as i64 - 16_000).abs() <= 2,
            "{} samples",
            out.len()
        );
        let mid = out[8_000];
        assert!((mid - 0.125).abs() < 1e-3, "{mid}");
    }

    /// rubato's whole-clip resampling, which the streaming version must reproduce.
    fn resample_at_once(samples: &[f32], rate: u32) -> Vec<f32> {
        let mut fft =
            Fft::<f32>::new(rate as usize, SAMPLE_RATE, CHUNK, 1, FixedSync::Both).unwrap();
        let input = [samples.to_vec()];
        let adapter = SequentialSliceOfVecs::new(&input, 1, samples.len()).unwrap();
        fft.process_all(&adapter, samples.len(), None)
            .unwrap()
            .take_data()
    }

    #[test]
    fn streamed_resampling_equals_resampling_the_whole_clip() {
        let mut seed = 7u32;
        let mut noise = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for rate in [8_000, 22_050, 44_100, 48_000] {
            for len in [1, 500, 1323, 1324, 5 * CHUNK + 77, 48_000] {
                let samples: Vec<f32> = (0..len).map(|_| noise()).collect();
                let mut streamed = Resampling::new(rate).unwrap();
                // Uneven pieces, as codec packets come.
                for piece in samples.chunks(333) {
                    streamed.push(piece).unwrap();
                }
                let streamed = streamed.finish().unwrap();
                assert_eq!(
                    streamed,
                    resample_at_once(&samples, rate),
                    "{rate} Hz, {len}"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(decode(&[], 60.0), Err(AudioError::Empty)));
        assert!(matches!(
            decode(b"this is plain text, not audio at all", 60.0),
            Err(AudioError::NotAudio(_))
        ));
        let empty = wav(&[], 16_000, 1);
        assert!(matches!(decode(&empty, 60.0), Err(AudioError::NoSamples)));
        let long = wav(&vec![0i16; 16_000 * 3], 16_000, 1);
        assert!(matches!(
            decode(&long, 2.0),
            Err(AudioError::TooLong { .. })
        ));
    }
}
