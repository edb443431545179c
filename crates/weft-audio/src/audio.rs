//! Audio in: any container/codec symphonia knows (wav, mp3, flac, ogg/vorbis, m4a/aac) decoded
//! to f32, mixed to mono, resampled to 16 kHz with rubato's FFT resampler.

use std::io::Cursor;

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Indexing, Resampler};
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

use crate::error::AudioError;
use crate::mel::SAMPLE_RATE;

/// Decodes a whole file held in memory to 16 kHz mono samples, refusing recordings longer
/// than `max_seconds`. Samples are resampled to 16 kHz as they are decoded, so memory holds
/// the 16 kHz result, not the recording at its own (often three times higher) rate, and the
/// length is checked as decoding goes.
///
/// A panic inside symphonia (the demuxer or codec, on a malformed stream) is returned as
/// [`AudioError::Corrupt`], and the reader and decoder it may have left half-updated are not
/// used again.
pub fn decode(bytes: &[u8], max_seconds: f64) -> Result<Vec<f32>, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let (mut format, mut decoder, track_id) = contained(|| open(bytes))?;
    let mut out: Option<Resampling> = None;
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut mono = Vec::new();
    loop {
        let rate =
            match contained(|| next_block(&mut *format, &mut *decoder, track_id, &mut planes))? {
                Block::End => break,
                Block::Skipped => continue,
                Block::Decoded { rate } => rate,
            };
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

/// Runs symphonia code, turning its panics into [`AudioError::Corrupt`]. What `f` borrows
/// mutably must not be used after an error.
fn contained<T>(f: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(AudioError::Corrupt(format!("the decoder failed: {msg}")))
    })
}

type Opened = (Box<dyn FormatReader>, Box<dyn AudioDecoder>, u32);

/// The container's reader, a decoder for its default audio track, and that track's id.
fn open(bytes: &[u8]) -> Result<Opened, AudioError> {
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(bytes.to_vec())),
        MediaSourceStreamOptions::default(),
    );
    let format = symphonia::default::get_probe()
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
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::NotAudio(format!("unsupported codec: {e}")))?;
    Ok((format, decoder, track_id))
}

enum Block {
    End,
    /// A packet of another track, or one that did not decode.
    Skipped,
    /// `planes` holds the packet's samples, one plane per channel.
    Decoded {
        rate: u32,
    },
}

/// Reads and decodes the next packet into `planes`.
fn next_block(
    format: &mut dyn FormatReader,
    decoder: &mut dyn AudioDecoder,
    track_id: u32,
    planes: &mut Vec<Vec<f32>>,
) -> Result<Block, AudioError> {
    let packet = match format.next_packet() {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(Block::End),
        // A stream cut short ends where the data ends: decode what is there.
        Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Ok(Block::End)
        }
        Err(e) => return Err(AudioError::Corrupt(e.to_string())),
    };
    if packet.track_id != track_id {
        return Ok(Block::Skipped);
    }
    let buf = match decoder.decode(&packet) {
        Ok(b) => b,
        // One bad packet is skipped, as players do.
        Err(SymError::DecodeError(_)) => return Ok(Block::Skipped),
        Err(e) => return Err(AudioError::Corrupt(e.to_string())),
    };
    buf.copy_to_vecs_planar::<f32>(planes);
    Ok(Block::Decoded {
        rate: buf.spec().rate(),
    })
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

/// Largest magnitude a sample keeps (full scale is 1). Floating-point files can hold any
/// value: NaN becomes 0 and the rest is clamped here, far beyond any real recording, so that
/// the resampler's sums stay finite (rubato panics on a spectrum holding NaN).
const MAX_SAMPLE: f32 = 1000.0;

/// Highest input sample rate (the highest in use, 384 kHz, doubled). A header may claim
/// any rate, and the resampler's FFT length grows with the rate divided by its greatest
/// common divisor with 16 kHz: a rate of billions would ask for gigabytes.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-MAX_SAMPLE, MAX_SAMPLE)
    }
}

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
        if rate == 0 || rate > MAX_SAMPLE_RATE {
            return Err(resample_error(
                rate,
                format!("the sample rate must be 1 to {MAX_SAMPLE_RATE} Hz"),
            ));
        }
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
        let samples = samples.iter().map(|&x| sanitize(x));
        if self.fft.is_none() {
            self.out.extend(samples);
            return Ok(());
        }
        self.pending.extend(samples);
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
        v.extend(rate.wrapping_mul(2 * channels as u32).to_le_bytes());
        v.extend(channels.wrapping_mul(2).to_le_bytes());
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

    /// A header's sample rate sizes the resampler's FFT: a rate of billions once asked for
    /// an 11 GB allocation. Rates above the limit are refused; rates below it with no common
    /// factor with 16 kHz stay cheap.
    #[test]
    fn absurd_sample_rates_are_refused() {
        let file = wav(&[100, -100, 200, -200], 2_890_214_161, 1);
        assert!(matches!(
            decode(&file, 60.0),
            Err(AudioError::Resample {
                from: 2_890_214_161,
                ..
            })
        ));
        assert!(resample(&[0.5; 10], MAX_SAMPLE_RATE + 1).is_err());
        assert!(resample(&[0.5; 10], 0).is_err());
        // 767_999 and 16_000 are coprime: the longest FFT the limit allows.
        let out = resample(&vec![0.25; 20_000], 767_999).unwrap();
        assert_eq!(
            out.len(),
            (20_000f64 * 16_000.0 / 767_999.0).ceil() as usize
        );
    }

    /// symphonia's WAV reader multiplies the channel count by the sample size in 16 bits,
    /// which overflows for 32768 channels: a panic where overflow checks are on, which
    /// `decode` must return as an error.
    #[test]
    fn a_panic_in_the_demuxer_is_an_error() {
        let file = wav(&[0; 4], 16_000, 0x8000);
        assert!(decode(&file, 60.0).is_err());
    }

    /// Float files may hold NaN, infinities or huge values; rubato panicked on the NaN they
    /// put in its spectrum. Samples are sanitized before resampling.
    #[test]
    fn non_finite_samples_are_sanitized() {
        let mut samples = vec![0.1f32; 3000];
        samples[10] = f32::NAN;
        samples[20] = f32::INFINITY;
        samples[30] = f32::NEG_INFINITY;
        samples[40] = 3e38;
        for rate in [16_000, 44_100] {
            let out = resample(&samples, rate).unwrap();
            assert!(out.iter().all(|x| x.is_finite()), "{rate} Hz");
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
