//! Whisper's log-mel spectrogram: 25 ms Hann windows every 10 ms (n_fft 400, hop 160 at
//! 16 kHz), centred with reflect padding, power spectrum, Slaney-normalised mel filters
//! (librosa's defaults, as Whisper's feature extractors use), log10, clamped to 8 below the
//! maximum, scaled to about [-1, 1]. The last STFT frame is dropped, as the reference does.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// Samples in one 30-second window.
pub const CHUNK_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one 30-second window.
pub const CHUNK_FRAMES: usize = CHUNK_SAMPLES / HOP;

/// A log-mel spectrogram, `n_mels` rows of `frames` values.
#[derive(Clone, Debug)]
pub struct LogMel {
    pub n_mels: usize,
    pub frames: usize,
    pub data: Vec<f32>,
}

impl LogMel {
    /// Frames `start..start + CHUNK_FRAMES` as one encoder input; frames past the end are
    /// zero, as faster-whisper pads a window (in log-mel space).
    pub fn window(&self, start: usize, len: usize) -> LogMel {
        let mut data = vec![0.0f32; self.n_mels * CHUNK_FRAMES];
        let len = len.min(CHUNK_FRAMES).min(self.frames.saturating_sub(start));
        for m in 0..self.n_mels {
            let src = &self.data[m * self.frames + start..m * self.frames + start + len];
            data[m * CHUNK_FRAMES..m * CHUNK_FRAMES + len].copy_from_slice(src);
        }
        LogMel {
            n_mels: self.n_mels,
            frames: CHUNK_FRAMES,
            data,
        }
    }
}

/// One mel filter: its first FFT bin and its weights from there on.
struct Filter {
    start: usize,
    weights: Vec<f32>,
}

pub struct MelExtractor {
    n_mels: usize,
    filters: Vec<Filter>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= MIN_LOG_HZ {
        MIN_LOG_HZ / F_SP + (f / MIN_LOG_HZ).ln() / logstep
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let logstep = 6.4f64.ln() / 27.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    if m >= min_log_mel {
        MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
    } else {
        m * F_SP
    }
}

/// librosa.filters.mel(sr=16000, n_fft=400, n_mels, fmin=0, fmax=8000, htk=False,
/// norm="slaney"): triangles between mel-spaced points, each scaled to unit area.
fn mel_filters(n_mels: usize) -> Vec<Filter> {
    let bins = N_FFT / 2 + 1;
    let max_mel = hz_to_mel(SAMPLE_RATE as f64 / 2.0);
    let points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|m| {
            let (lo, mid, hi) = (points[m], points[m + 1], points[m + 2]);
            let norm = 2.0 / (hi - lo);
            let w: Vec<f64> = (0..bins)
                .map(|b| {
                    let f = b as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
                    let lower = (f - lo) / (mid - lo);
                    let upper = (hi - f) / (hi - mid);
                    lower.min(upper).max(0.0) * norm
                })
                .collect();
            let start = w.iter().position(|&v| v > 0.0).unwrap_or(0);
            let end = w.iter().rposition(|&v| v > 0.0).map_or(start, |e| e + 1);
            Filter {
                start,
                weights: w[start..end].iter().map(|&v| v as f32).collect(),
            }
        })
        .collect()
}

impl MelExtractor {
    pub fn new(n_mels: usize) -> MelExtractor {
        let window = (0..N_FFT)
            .map(|i| {
                let x = 2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        MelExtractor {
            n_mels,
            filters: mel_filters(n_mels),
            window,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The log-mel spectrogram of 16 kHz mono `samples` (`samples.len() / 160` frames).
    /// Callers pad first: faster-whisper appends 160 zeros to a whole recording, Hugging
    /// Face's extractor pads each clip to 30 s.
    pub fn extract(&self, samples: &[f32]) -> LogMel {
        let frames = samples.len() / HOP;
        let pad = N_FFT / 2;
        // numpy's "reflect" padding (the edge sample is not repeated).
        let at = |i: isize| -> f32 {
            let n = samples.len() as isize;
            if n == 1 {
                return samples[0];
            }
            let mut i = i;
            if i < 0 {
                i = -i;
            }
            if i >= n {
                i = 2 * (n - 1) - i;
            }
            samples[i.clamp(0, n - 1) as usize]
        };
        let mut power = vec![0.0f32; frames * (N_FFT / 2 + 1)];
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        for f in 0..frames {
            let start = (f * HOP) as isize - pad as isize;
            for (i, x) in input.iter_mut().enumerate() {
                *x = at(start + i as isize) * self.window[i];
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("buffers come from the plan");
            let row = &mut power[f * (N_FFT / 2 + 1)..(f + 1) * (N_FFT / 2 + 1)];
            for (p, c) in row.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
        }
        let mut data = vec![0.0f32; self.n_mels * frames];
        let mut max = f32::NEG_INFINITY;
        for (m, filter) in self.filters.iter().enumerate() {
            let out = &mut data[m * frames..(m + 1) * frames];
            for (f, o) in out.iter_mut().enumerate() {
                let row = &power[f * (N_FFT / 2 + 1) + filter.start..];
                let e: f32 = filter.weights.iter().zip(row).map(|(w, p)| w * p).sum();
                *o = e.max(1e-10).log10();
                max = max.max(*o);
            }
        }
        for v in &mut data {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        LogMel {
            n_mels: self.n_mels,
            frames,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_cover_the_spectrum_in_order() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80);
        assert!(f.windows(2).all(|w| w[0].start <= w[1].start));
        assert!(f.iter().all(|f| !f.weights.is_empty()));
    }

    #[test]
    fn frame_count_and_range() {
        let ex = MelExtractor::new(80);
        let samples: Vec<f32> = (0..16_000)
            .map(|i| (i as f32 * 440.0 * 2.0 * std::f32::consts::PI / 16_000.0).sin() * 0.3)
            .collect();
        let mel = ex.extract(&samples);
        assert_eq!(mel.frames, 100);
        let max = mel.data.iter().copied().fold(f32::MIN, f32::max);
        let min = mel.data.iter().copied().fold(f32::MAX, f32::min);
        assert!(
            (max - min - 2.0).abs() < 1e-5,
            "dynamic range is clamped to 8 decades"
        );
    }
}
