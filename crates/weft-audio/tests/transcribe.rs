//! Whisper end to end on the packaged whisper-base (`$WEFT_TEST_MODELS/whisper-base`, as
//! scripts/test.sh pulls it) and speech made here with espeak-ng (converted with ffmpeg):
//! faster-whisper's output on the same model.bin (tests/golden/whisper/transcripts.json, made
//! by scripts/gen_whisper_golden.py), long audio, other containers, language detection, and
//! bad input. Without the model or espeak-ng/ffmpeg the tests say so and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use weft_audio::{AudioError, Task, TranscribeError, TranscribeOptions, Transcriber, Whisper};

fn transcriber() -> Option<&'static Transcriber> {
    static T: OnceLock<Option<Transcriber>> = OnceLock::new();
    T.get_or_init(|| {
        let path = weft_test_support::model_path("whisper-base/model.bin")?;
        let path = path
            .parent()
            .expect("model.bin is in a folder")
            .to_path_buf();
        if !weft_test_support::commands(&["espeak-ng", "ffmpeg"]) {
            return None;
        }
        Some(Transcriber::new(
            Whisper::load(&path).expect("whisper-base loads"),
            2,
        ))
    })
    .as_ref()
}

fn golden() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/whisper/transcripts.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json")
}

/// A test's own directory for the audio files it makes, removed when the test ends (also
/// when it fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("weft-audio-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Speaks the golden entry's text with its espeak-ng voice and speed into `dir`.
fn speak(entry: &serde_json::Value, dir: &Scratch, name: &str) -> PathBuf {
    let out = dir.0.join(format!("{name}.wav"));
    let status = Command::new("espeak-ng")
        .args(["-v", entry["voice"].as_str().unwrap()])
        .args(["-s", &entry["wpm"].to_string()])
        .arg("-w")
        .arg(&out)
        .arg(entry["text"].as_str().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn convert(wav: &Path, ext: &str, codec_args: &[&str]) -> PathBuf {
    let out = wav.with_extension(ext);
    let status = Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-i"])
        .arg(wav)
        .args(codec_args)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg -> {ext}");
    out
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Word error rate of `hyp` against `reference` (Levenshtein over words).
fn wer(reference: &str, hyp: &str) -> f64 {
    let (r, h) = (words(reference), words(hyp));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j + 1] + 1)
                .min(cur[j] + 1)
                .min(prev[j] + usize::from(rw != hw));
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len() as f64
}

fn english(beam: usize) -> TranscribeOptions {
    TranscribeOptions {
        language: Some("en".into()),
        beam_size: beam,
        ..TranscribeOptions::default()
    }
}

#[test]
fn greedy_and_beam_match_faster_whisper() {
    let Some(t) = transcriber() else { return };
    let g = &golden()["kitchen"];
    let dir = Scratch::new("greedy");
    let bytes = std::fs::read(speak(g, &dir, "kitchen")).unwrap();
    for beam in [1, 5] {
        let want = &g[format!("beam{beam}")];
        let got = t.transcribe_bytes(&bytes, &english(beam)).unwrap();
        let tokens: Vec<u64> = got
            .segments
            .iter()
            .flat_map(|s| s.tokens.iter().map(|&t| t as u64))
            .collect();
        let want_tokens: Vec<u64> = want["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got.text, want["text"].as_str().unwrap(), "beam {beam}");
        assert_eq!(tokens, want_tokens, "beam {beam}");
    }
}

#[test]
fn long_audio_is_transcribed_across_windows() {
    let Some(t) = transcriber() else { return };
    let g = &golden()["long"];
    let dir = Scratch::new("long");
    let bytes = std::fs::read(speak(g, &dir, "long")).unwrap();
    let got = t.transcribe_bytes(&bytes, &english(1)).unwrap();
    assert!(got.duration > 30.0, "{} s", got.duration);
    assert!(
        got.segments.iter().any(|s| s.seek > 0),
        "a second window ran"
    );
    assert!(
        got.segments
            .windows(2)
            .all(|w| w[0].end <= w[1].start + 1e-9),
        "segments in order"
    );
    let last = got.segments.last().unwrap();
    assert!(last.end > got.duration - 3.0 && last.end <= got.duration + 1.0);
    let ours = wer(g["text"].as_str().unwrap(), &got.text);
    let peer = wer(
        g["text"].as_str().unwrap(),
        g["beam1"]["text"].as_str().unwrap(),
    );
    eprintln!("long: WER {ours:.3} (faster-whisper {peer:.3})");
    assert!(ours <= peer + 0.01, "WER {ours} vs faster-whisper {peer}");
}

#[test]
fn compressed_containers_transcribe_like_wav() {
    let Some(t) = transcriber() else { return };
    let g = &golden()["kitchen"];
    let dir = Scratch::new("formats");
    let wav = speak(g, &dir, "formats");
    let reference = g["text"].as_str().unwrap();
    let wav_len = weft_audio::audio::decode(&std::fs::read(&wav).unwrap(), 60.0)
        .unwrap()
        .len() as f64;
    let formats: [(&str, &[&str]); 4] = [
        ("mp3", &["-c:a", "libmp3lame", "-b:a", "96k"]),
        ("flac", &["-c:a", "flac"]),
        ("ogg", &["-c:a", "libvorbis", "-q:a", "4"]),
        ("m4a", &["-c:a", "aac", "-b:a", "96k"]),
    ];
    for (ext, args) in formats {
        let file = convert(&wav, ext, args);
        let bytes = std::fs::read(&file).unwrap();
        let samples = weft_audio::audio::decode(&bytes, 60.0).unwrap();
        // Encoder delay/padding may add a frame or two, no more.
        let drift = (samples.len() as f64 - wav_len).abs() / 16_000.0;
        assert!(
            drift < 0.1,
            "{ext}: {drift} s longer or shorter than the wav"
        );
        if ext == "mp3" || ext == "m4a" {
            let got = t.transcribe(&samples, &english(1)).unwrap();
            let e = wer(reference, &got.text);
            assert!(e <= 0.1, "{ext}: WER {e}: {}", got.text);
        }
    }
}

#[test]
fn detects_the_spoken_language_and_translates() {
    let Some(t) = transcriber() else { return };
    let german = serde_json::json!({
        "voice": "de", "wpm": 150,
        "text": "Guten Morgen. Heute ist das Wetter schön, und wir gehen zusammen in den Park."
    });
    let dir = Scratch::new("language");
    let bytes = std::fs::read(speak(&german, &dir, "german")).unwrap();
    let samples = weft_audio::audio::decode(&bytes, 60.0).unwrap();
    let probs = t.detect_language(&samples).unwrap();
    assert_eq!(probs[0].0, "de", "{:?}", &probs[..3]);
    let opts = TranscribeOptions {
        task: Task::Translate,
        beam_size: 1,
        ..TranscribeOptions::default()
    };
    let got = t.transcribe(&samples, &opts).unwrap();
    assert_eq!(got.language, "de");
    let english_words = ["good", "morning", "weather", "today", "park", "the"];
    let found = words(&got.text)
        .iter()
        .filter(|w| english_words.contains(&w.as_str()))
        .count();
    assert!(found >= 2, "not English: {}", got.text);
}

#[test]
fn bad_input_is_a_clear_error() {
    let Some(t) = transcriber() else { return };
    let opts = english(1);
    let err = |bytes: &[u8], opts: &TranscribeOptions| t.transcribe_bytes(bytes, opts).unwrap_err();
    assert!(matches!(
        err(&[], &opts),
        TranscribeError::Audio(AudioError::Empty)
    ));
    assert!(matches!(
        err(b"{\"not\": \"audio\"}", &opts),
        TranscribeError::Audio(AudioError::NotAudio(_))
    ));
    let dir = Scratch::new("bad");
    let wav = std::fs::read(speak(&golden()["kitchen"], &dir, "bad")).unwrap();
    // Cut inside the header: not audio. Cut inside the data: what is there is transcribed.
    assert!(matches!(
        err(&wav[..30], &opts),
        TranscribeError::Audio(AudioError::NotAudio(_))
    ));
    let half = t.transcribe_bytes(&wav[..wav.len() / 2], &opts).unwrap();
    assert!(!half.text.is_empty() && half.duration < 4.0);
    // Silence is not an error: OpenAI's API answers it with empty text.
    let silence = vec![0.0f32; 16_000 * 5];
    let quiet = t.transcribe(&silence, &opts).unwrap();
    assert_eq!(quiet.text, "");
    assert!(quiet.segments.is_empty());
    assert_eq!((quiet.language.as_str(), quiet.duration), ("en", 5.0));
    let short_limit = TranscribeOptions {
        max_seconds: 2.0,
        ..english(1)
    };
    let e = err(&wav, &short_limit);
    assert!(matches!(
        e,
        TranscribeError::Audio(AudioError::TooLong { .. })
    ));
    assert!(e.to_string().contains("limit is 2 s"), "{e}");
    let unknown = TranscribeOptions {
        language: Some("xx".into()),
        ..english(1)
    };
    assert!(matches!(
        err(&wav, &unknown),
        TranscribeError::UnknownLanguage(_)
    ));
}
