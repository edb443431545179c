//! Reading videos through ffmpeg on files made here with ffmpeg: many sampled frames at once
//! (as a 10-minute video asks for), each equal to the frame ffmpeg gives alone, and files
//! that cannot be read failing with the reason, within the deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_vision::video::{self, VideoError, VideoLimits};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-video-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A `seconds` long H.264 test pattern of `size` (WxH) at `rate` frames per second.
fn test_pattern(name: &str, size: &str, rate: u32, seconds: u32) -> PathBuf {
    let path = scratch(name);
    let source = format!("testsrc2=size={size}:rate={rate}:duration={seconds}");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            &source,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
        &path,
    );
    path
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Frame `n` of `path` as ffmpeg decodes it alone.
fn single_frame(path: &Path, n: usize) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-vf",
            &format!("select=eq(n\\,{n})"),
            "-fps_mode",
            "passthrough",
        ])
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn hundreds_of_sampled_frames_come_back_in_order() {
    if !weft_test_support::commands(&["ffmpeg", "ffprobe"]) {
        return;
    }
    let path = test_pattern("long.mp4", "64x48", 30, 30);
    let limits = VideoLimits::default();
    let info = video::probe(&path, &limits).unwrap();
    assert_eq!((info.width, info.height, info.frames), (64, 48, 900));
    assert!((info.fps - 30.0).abs() < 1e-9);
    let indices: Vec<usize> = (0..768).map(|i| i * 900 / 768).collect();
    let mut frames = Vec::new();
    video::read_frames(&path, &info, &indices, &limits, |f| frames.push(f)).unwrap();
    assert_eq!(frames.len(), 768);
    for k in [0, 1, 400, 767] {
        assert_eq!(
            frames[k].as_raw(),
            single_frame(&path, indices[k]),
            "frame {}",
            indices[k]
        );
    }
    // Frames past the end: the stream ends first.
    let past = [0, 899, 950];
    let e = video::read_frames(&path, &info, &past, &limits, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            VideoError::Truncated {
                decoded: 2,
                expected: 3
            }
        ),
        "{e}"
    );
}

#[test]
fn unreadable_files_fail_with_the_reason() {
    if !weft_test_support::commands(&["ffmpeg", "ffprobe"]) {
        return;
    }
    let limits = VideoLimits::default();
    let garbage = scratch("garbage.mp4");
    std::fs::write(&garbage, b"not a video at all, just bytes").unwrap();
    let e = video::probe(&garbage, &limits).unwrap_err();
    assert!(matches!(e, VideoError::Undecodable(_)), "{e}");

    let audio = scratch("tone.wav");
    ffmpeg(
        &["-f", "lavfi", "-i", "sine=frequency=440:duration=1"],
        &audio,
    );
    let e = video::probe(&audio, &limits).unwrap_err();
    assert!(matches!(e, VideoError::NoVideoStream), "{e}");

    let big = test_pattern("big.mp4", "640x480", 1, 1);
    let small = VideoLimits {
        max_frame_pixels: 100_000,
        ..limits
    };
    let e = video::probe(&big, &small).unwrap_err();
    assert!(matches!(e, VideoError::TooLarge { .. }), "{e}");

    // A deadline shorter than the work: the child is killed and the error says so.
    let long = test_pattern("slow.mp4", "320x240", 30, 60);
    let info = video::probe(&long, &limits).unwrap();
    let hurried = VideoLimits {
        timeout: Duration::from_millis(50),
        ..limits
    };
    let started = Instant::now();
    let e = video::read_frames(&long, &info, &[0, info.frames - 1], &hurried, |_| {}).unwrap_err();
    assert!(matches!(e, VideoError::Timeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A video's audio track comes back as 16 kHz mono samples: a 3-second 440 Hz tone at
/// 44.1 kHz stereo beside the picture, resampled by ffmpeg; a track longer than the limit
/// and a video without audio are refused with the reason.
#[test]
fn audio_tracks_are_read_resampled_and_bounded() {
    let path = scratch("with-audio.mkv");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=10:duration=3",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100:duration=3",
            "-ac",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "pcm_s16le",
        ],
        &path,
    );
    let samples = video::read_audio_track(&path, &VideoLimits::default()).unwrap();
    assert!(
        (samples.len() as i64 - 48_000).abs() <= 160,
        "{}",
        samples.len()
    );
    // Still 440 Hz: two zero crossings per period.
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    assert!(
        (crossings as i64 - 2 * 440 * 3).abs() <= 10,
        "{crossings} zero crossings"
    );
    let short = VideoLimits {
        max_audio_seconds: 1.0,
        ..VideoLimits::default()
    };
    assert!(matches!(
        video::read_audio_track(&path, &short),
        Err(VideoError::AudioTooLong { .. })
    ));
    let silent = test_pattern("no-audio.mp4", "64x48", 10, 1);
    assert!(matches!(
        video::read_audio_track(&silent, &VideoLimits::default()),
        Err(VideoError::NoAudioStream)
    ));
}
