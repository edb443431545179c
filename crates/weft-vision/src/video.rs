//! Videos in: what a file holds (`ffprobe`) and its chosen frames as upright RGB (`ffmpeg`),
//! both run as subprocesses of the Debian `ffmpeg` package.
//!
//! A subprocess rather than bindings to libavformat/libavcodec: a hostile or broken file can
//! crash or stall a decoder, and a child process takes that with it (it is killed at a
//! deadline) instead of the server; nothing links against a particular FFmpeg ABI at build
//! time; and the cost, piping the few sampled frames as raw RGB, is small next to the vision
//! tower's work on them. Only the frames asked for leave ffmpeg (`select`), so a long video
//! costs decoding time, not memory or pipe traffic.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::rgb::RgbImage;

/// Why a video could not be read.
#[derive(thiserror::Error, Debug)]
pub enum VideoError {
    #[error("cannot run {program} (install the ffmpeg package): {message}")]
    Spawn {
        program: &'static str,
        message: String,
    },
    #[error("the video could not be decoded: {0}")]
    Undecodable(String),
    #[error("the file has no video stream")]
    NoVideoStream,
    #[error("reading the video took longer than {0:?}")]
    Timeout(Duration),
    #[error("the video's frames are {width}x{height} = {pixels} pixels; the limit is {limit}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the video ended after {decoded} of the {expected} frames it announced")]
    Truncated { decoded: usize, expected: usize },
    #[error("the video has no audio track")]
    NoAudioStream,
    #[error("the video's audio is longer than the limit of {limit:.0} s")]
    AudioTooLong { limit: f64 },
}

/// What `ffprobe` says about a file's first video stream, as displayed (rotation applied).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Average frames per second.
    pub fps: f64,
    /// Frames in the stream (counted packets, as decoders see them).
    pub frames: usize,
}

impl VideoInfo {
    /// Seconds of video.
    pub fn duration(&self) -> f64 {
        self.frames as f64 / self.fps
    }
}

/// Bounds on reading one video.
#[derive(Clone, Copy, Debug)]
pub struct VideoLimits {
    /// Wall-clock time for probing, and again for decoding.
    pub timeout: Duration,
    /// Largest frame, width x height.
    pub max_frame_pixels: u64,
    /// Longest audio track read from a video.
    pub max_audio_seconds: f64,
}

impl Default for VideoLimits {
    fn default() -> VideoLimits {
        VideoLimits {
            timeout: Duration::from_secs(120),
            max_frame_pixels: 8192 * 8192,
            max_audio_seconds: 3600.0,
        }
    }
}

/// The first video stream of the file at `path`.
pub fn probe(path: &Path, limits: &VideoLimits) -> Result<VideoInfo, VideoError> {
    let mut args: Vec<std::ffi::OsString> = [
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-count_packets",
        "-show_entries",
        "stream=width,height,avg_frame_rate,r_frame_rate,nb_read_packets:stream_side_data=rotation",
        "-of",
        "json",
    ]
    .map(Into::into)
    .to_vec();
    args.push(path.into());
    let mut json = Vec::new();
    run("ffprobe", &args, limits.timeout, |out| {
        out.read_to_end(&mut json)
            .map(drop)
            .map_err(|e| VideoError::Undecodable(e.to_string()))
    })?;
    let root: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| VideoError::Undecodable(format!("ffprobe's answer: {e}")))?;
    let stream = root["streams"]
        .as_array()
        .and_then(|s| s.first())
        .ok_or(VideoError::NoVideoStream)?;
    let int = |key: &str| {
        stream[key]
            .as_u64()
            .or_else(|| stream[key].as_str()?.parse().ok())
            .unwrap_or(0)
    };
    let (mut width, mut height) = (int("width") as u32, int("height") as u32);
    let frames = int("nb_read_packets") as usize;
    let fps = [&stream["avg_frame_rate"], &stream["r_frame_rate"]]
        .into_iter()
        .filter_map(|v| rational(v.as_str()?))
        .find(|&f| f.is_finite() && f > 0.0)
        .ok_or_else(|| VideoError::Undecodable("the stream has no frame rate".into()))?;
    if width == 0 || height == 0 || frames == 0 {
        return Err(VideoError::Undecodable(format!(
            "the stream has {width}x{height} frames, {frames} of them"
        )));
    }
    let rotation = stream["side_data_list"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["rotation"].as_i64())
        .unwrap_or(0);
    // ffmpeg turns frames upright while decoding: a quarter turn swaps the sides.
    if rotation.rem_euclid(180) == 90 {
        std::mem::swap(&mut width, &mut height);
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_frame_pixels {
        return Err(VideoError::TooLarge {
            width,
            height,
            pixels,
            limit: limits.max_frame_pixels,
        });
    }
    Ok(VideoInfo {
        width,
        height,
        fps,
        frames,
    })
}

/// `"num/den"` as a number.
fn rational(text: &str) -> Option<f64> {
    let (num, den) = text.split_once('/').unwrap_or((text, "1"));
    Some(num.parse::<f64>().ok()? / den.parse::<f64>().ok()?)
}

/// Decodes the frames at `indices` (increasing, below `info.frames`) of the video at `path`,
/// handing each to `on_frame` in order as it arrives.
pub fn read_frames(
    path: &Path,
    info: &VideoInfo,
    indices: &[usize],
    limits: &VideoLimits,
    mut on_frame: impl FnMut(RgbImage),
) -> Result<(), VideoError> {
    debug_assert!(indices.windows(2).all(|w| w[0] < w[1]));
    let mut args: Vec<std::ffi::OsString> =
        ["-v", "error", "-nostdin", "-i"].map(Into::into).to_vec();
    args.push(path.into());
    for a in [
        "-map",
        "0:v:0",
        "-vf",
        &format!("select='{}'", select_expression(indices)),
        "-fps_mode",
        "passthrough",
        // Stop at the last frame wanted rather than decode the rest of the file.
        "-frames:v",
        &indices.len().to_string(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ] {
        args.push(a.into());
    }
    let frame_bytes = info.width as usize * info.height as usize * 3;
    let mut decoded = 0;
    run("ffmpeg", &args, limits.timeout, |out| {
        while decoded < indices.len() {
            let mut data = vec![0u8; frame_bytes];
            if let Err(e) = out.read_exact(&mut data) {
                return match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Ok(()),
                    _ => Err(VideoError::Undecodable(e.to_string())),
                };
            }
            let frame = RgbImage::new(info.width, info.height, data)
                .expect("the buffer holds width x height RGB pixels");
            on_frame(frame);
            decoded += 1;
        }
        Ok(())
    })?;
    if decoded < indices.len() {
        return Err(VideoError::Truncated {
            decoded,
            expected: indices.len(),
        });
    }
    Ok(())
}

/// The first audio track of the video at `path` as 16 kHz mono samples (ffmpeg's
/// resampler, 16-bit samples scaled by 1/32768 as a WAV file's are read).
pub fn read_audio_track(path: &Path, limits: &VideoLimits) -> Result<Vec<f32>, VideoError> {
    const RATE: f64 = 16_000.0;
    if !has_audio_stream(path, limits)? {
        return Err(VideoError::NoAudioStream);
    }
    let mut args: Vec<std::ffi::OsString> =
        ["-v", "error", "-nostdin", "-i"].map(Into::into).to_vec();
    args.push(path.into());
    let limit = limits.max_audio_seconds;
    for a in [
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", "pipe:1",
    ] {
        args.push(a.into());
    }
    let max_bytes = (limit * RATE) as u64 * 2;
    let mut bytes = Vec::new();
    let read = run("ffmpeg", &args, limits.timeout, |out| {
        out.take(max_bytes + 2)
            .read_to_end(&mut bytes)
            .map_err(|e| VideoError::Undecodable(e.to_string()))?;
        Ok(())
    });
    // A reader that stopped at the limit closed the pipe under ffmpeg: that failure is the
    // limit's.
    if bytes.len() as u64 <= max_bytes {
        read?;
    }
    if bytes.len() as u64 > max_bytes {
        return Err(VideoError::AudioTooLong { limit });
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect())
}

/// Whether the file at `path` has an audio stream (`ffprobe`).
fn has_audio_stream(path: &Path, limits: &VideoLimits) -> Result<bool, VideoError> {
    let mut args: Vec<std::ffi::OsString> = [
        "-v",
        "error",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=codec_type",
        "-of",
        "csv=p=0",
    ]
    .map(Into::into)
    .to_vec();
    args.push(path.into());
    let mut text = String::new();
    run("ffprobe", &args, limits.timeout, |out| {
        out.read_to_string(&mut text)
            .map_err(|e| VideoError::Undecodable(e.to_string()))?;
        Ok(())
    })?;
    Ok(text.trim() == "audio")
}

/// An ffmpeg expression true for frame numbers `n` in `indices` (not empty): a balanced tree
/// of sums, because ffmpeg's expression parser fails on a flat sum of a few hundred terms
/// (it nests one level per term).
fn select_expression(indices: &[usize]) -> String {
    match indices {
        [i] => format!("eq(n\\,{i})"),
        _ => {
            let (left, right) = indices.split_at(indices.len() / 2);
            format!("({}+{})", select_expression(left), select_expression(right))
        }
    }
}

/// Runs `program` with `args`, handing its standard output to `read`; kills it at `timeout`.
/// Fails with what it wrote to standard error when it exits unsuccessfully.
fn run(
    program: &'static str,
    args: &[std::ffi::OsString],
    timeout: Duration,
    read: impl FnOnce(&mut dyn Read) -> Result<(), VideoError>,
) -> Result<(), VideoError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| VideoError::Spawn {
            program,
            message: e.to_string(),
        })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Standard error is drained on its own thread so that a chatty child never blocks on it.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = matches!(
            finished.recv_timeout(timeout),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            let _ = child.kill();
        }
        (child.wait(), timed_out)
    });
    let result = read(&mut stdout);
    // A reader that stopped early closes the pipe: the child ends on its next write.
    drop(stdout);
    let _ = done.send(());
    let (status, timed_out) = watchdog.join().expect("the watchdog does not panic");
    let errors = errors.join().unwrap_or_default();
    if timed_out {
        return Err(VideoError::Timeout(timeout));
    }
    let status = status.map_err(|e| VideoError::Undecodable(e.to_string()))?;
    result?;
    if !status.success() {
        let message = errors.lines().last().unwrap_or("").trim();
        return Err(VideoError::Undecodable(if message.is_empty() {
            format!("{program} exited with {status}")
        } else {
            message.to_owned()
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_expressions_nest_by_halves() {
        assert_eq!(select_expression(&[7]), "eq(n\\,7)");
        assert_eq!(
            select_expression(&[1, 2, 3]),
            "(eq(n\\,1)+(eq(n\\,2)+eq(n\\,3)))"
        );
        let many: Vec<usize> = (0..768).collect();
        let depth = select_expression(&many)
            .chars()
            .scan(0i32, |d, c| {
                *d += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                Some(*d)
            })
            .max();
        // 768 leaves: 10 levels of sums, each leaf's own parentheses one more.
        assert_eq!(depth, Some(11));
    }
}
