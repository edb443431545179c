//! Audio in: any container/codec symphonia knows (wav, mp3, flac, ogg/vorbis, m4a/aac) decoded
//! to f32, mixed to mono, resampled to 16 kHz with rubato's FFT resampler.

use std::io::Cursor;

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

use crate::error::AudioError;
use crate::mel::SAMPLE_RATE;

/// Decodes a whole file held in memory to 16 kHz mono samples, refusing recordings longer
/// than `max_seconds` (checked on the decoded length, before resampling).
pub fn decode(bytes: &[u8], max_seconds: f64) -> Result<Vec<f32>, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let (samples, rate) = decode_native(bytes, max_seconds)?;
    if samples.is_empty() {
        return Err(AudioError::NoSamples);
    }
    resample(&samples, rate)
}

/// Decoded mono samples at the file's own rate.
fn decode_native(bytes: &[u8], max_seconds: f64) -> Result<(Vec<f32>, u32), AudioError> {
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
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut mono = Vec::new();
    let mut planes: Vec<Vec<f32>> = Vec::new();
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
        rate = buf.spec().rate();
        buf.copy_to_vecs_planar::<f32>(&mut planes);
        let channels = planes.len().max(1) as f32;
        let frames = planes.first().map_or(0, |p| p.len());
        mono.extend((0..frames).map(|i| planes.iter().map(|p| p[i]).sum::<f32>() / channels));
        if rate > 0 && mono.len() as f64 / rate as f64 > max_seconds {
            return Err(AudioError::TooLong {
                seconds: mono.len() as f64 / rate as f64,
                limit: max_seconds,
            });
        }
    }
    if rate == 0 {
        return Err(AudioError::NotAudio("the sample rate is unknown".into()));
    }
    Ok((mono, rate))
}

/// Resamples mono audio to 16 kHz (a copy when it already is).
pub fn resample(samples: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    if rate as usize == SAMPLE_RATE {
        return Ok(samples.to_vec());
    }
    let err = |msg: String| AudioError::Resample { from: rate, msg };
    let mut resampler = Fft::<f32>::new(rate as usize, SAMPLE_RATE, 1024, 1, FixedSync::Both)
        .map_err(|e| err(e.to_string()))?;
    let input = [samples.to_vec()];
    let adapter =
        SequentialSliceOfVecs::new(&input, 1, samples.len()).map_err(|e| err(e.to_string()))?;
    let out = resampler
        .process_all(&adapter, samples.len(), None)
        .map_err(|e| err(e.to_string()))?;
    Ok(out.take_data())
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
