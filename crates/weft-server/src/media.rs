//! Images, videos and audio in chat requests: where an `image_url`, `video_url` or
//! `audio_url` part's bytes come from (a `data:` URL, an `http(s)` URL fetched within a
//! timeout and a size cap, a `file://` path under `--allowed-local-media-path`), or an
//! `input_audio` part's inline base64, and how decoded media become the engine's media items.
//! Every failure is a 400 that says which medium and why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use weft_engine::blocks::MediaSpan;
use weft_engine::media::{MediaEncoder, MediaItem, RequestMedia};
use weft_kernels::pool::ThreadPool;
use weft_models::media::MediaPositions;
use weft_vision::video::VideoLimits;
use weft_vision::{
    DecodeOptions, MediaKind, ProcessorKwargs, RgbImage, TowerInput, Video, VideoPlan, Vision,
};

use crate::error::ApiError;

/// The content part type that carries a medium by URL (`image_url`, or vLLM's `video_url`
/// and `audio_url`), which is also the key of its URL.
pub fn part_type(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "image_url",
        MediaKind::Video => "video_url",
        MediaKind::Audio => "audio_url",
    }
}

/// OpenAI's inline audio part: `{"type": "input_audio", "input_audio": {"data": BASE64,
/// "format": "wav"}}`.
const INPUT_AUDIO: &str = "input_audio";
/// The formats an `input_audio` part may name (what weft-audio decodes).
const AUDIO_FORMATS: [&str; 4] = ["wav", "mp3", "flac", "ogg"];

/// Bounds on the media of one request (each a `weft serve` flag).
#[derive(Clone, Debug)]
pub struct MediaLimits {
    /// Most images in one prompt (vLLM's `--limit-mm-per-prompt`).
    pub max_images: usize,
    /// Most videos in one prompt (vLLM's `--limit-mm-per-prompt`).
    pub max_videos: usize,
    /// Most audio clips in one prompt (vLLM's `--limit-mm-per-prompt`).
    pub max_audios: usize,
    /// Largest image file, in bytes, however it arrives.
    pub max_image_bytes: usize,
    /// Largest video file, in bytes, however it arrives.
    pub max_video_bytes: usize,
    /// Largest audio file, in bytes, however it arrives.
    pub max_audio_bytes: usize,
    /// Longest audio clip or video audio track, in seconds.
    pub max_audio_seconds: f64,
    /// Largest decoded image or video frame, width x height (checked from the header before
    /// decoding).
    pub max_image_pixels: u64,
    /// How long fetching one URL may take, connection included.
    pub fetch_timeout: Duration,
    /// How long probing, and then decoding, one video may take.
    pub video_decode_timeout: Duration,
    /// `file://` URLs are read only below this directory (none: refused).
    pub allowed_local_media_path: Option<PathBuf>,
}

impl Default for MediaLimits {
    fn default() -> MediaLimits {
        MediaLimits {
            max_images: 4,
            max_videos: 1,
            max_audios: 4,
            max_image_bytes: 20 << 20,
            max_video_bytes: 256 << 20,
            max_audio_bytes: 25 << 20,
            max_audio_seconds: 3600.0,
            max_image_pixels: DecodeOptions::default().max_pixels,
            fetch_timeout: Duration::from_secs(10),
            video_decode_timeout: VideoLimits::default().timeout,
            allowed_local_media_path: None,
        }
    }
}

impl MediaLimits {
    fn max_count(&self, kind: MediaKind) -> usize {
        match kind {
            MediaKind::Image => self.max_images,
            MediaKind::Video => self.max_videos,
            MediaKind::Audio => self.max_audios,
        }
    }

    fn max_bytes(&self, kind: MediaKind) -> usize {
        match kind {
            MediaKind::Image => self.max_image_bytes,
            MediaKind::Video => self.max_video_bytes,
            MediaKind::Audio => self.max_audio_bytes,
        }
    }

    /// Bounds on reading one video.
    pub fn video(&self) -> VideoLimits {
        VideoLimits {
            timeout: self.video_decode_timeout,
            max_frame_pixels: self.max_image_pixels,
            max_audio_seconds: self.max_audio_seconds,
        }
    }
}

/// Where one medium's bytes are.
#[derive(Debug)]
pub enum MediaSource {
    /// A `data:` URL, already decoded.
    Inline(Vec<u8>),
    Http(String),
    File(PathBuf),
}

/// The image, video and audio parts of `messages`, in the order the chat template meets them.
pub fn media_sources(
    messages: &[Value],
    limits: &MediaLimits,
) -> Result<Vec<(MediaKind, MediaSource)>, ApiError> {
    let mut sources: Vec<(MediaKind, MediaSource)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(parts) = m.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            let kind = match part.get("type").and_then(Value::as_str) {
                Some("image_url") => MediaKind::Image,
                Some("video_url") => MediaKind::Video,
                Some("audio_url" | INPUT_AUDIO) => MediaKind::Audio,
                _ => continue,
            };
            let param = format!("messages[{i}].content[{j}]");
            let max = limits.max_count(kind);
            if sources.iter().filter(|(k, _)| *k == kind).count() == max {
                return Err(ApiError::invalid(
                    &param,
                    format!(
                        "at most {max} {}s per request (--limit-mm-per-prompt)",
                        kind.name()
                    ),
                ));
            }
            if part.get("type").and_then(Value::as_str) == Some(INPUT_AUDIO) {
                let audio = input_audio(part, limits)
                    .map_err(|e| ApiError::invalid(&param, format!("{param}: {e}")))?;
                sources.push((kind, audio));
                continue;
            }
            let url = media_url(part, kind).ok_or_else(|| {
                ApiError::invalid(
                    &param,
                    format!("{param}.{}.url is missing", part_type(kind)),
                )
            })?;
            let source = source(url, kind, limits)
                .map_err(|e| ApiError::invalid(&param, format!("{param}: {e}")))?;
            sources.push((kind, source));
        }
    }
    Ok(sources)
}

/// An `input_audio` part's bytes.
fn input_audio(part: &Value, limits: &MediaLimits) -> Result<MediaSource, String> {
    let audio = part.get(INPUT_AUDIO).ok_or("input_audio is missing")?;
    let data = audio
        .get("data")
        .and_then(Value::as_str)
        .ok_or("input_audio.data (base64) is missing")?;
    match audio.get("format").and_then(Value::as_str) {
        Some(f) if AUDIO_FORMATS.contains(&f) => {}
        other => {
            return Err(format!(
                "input_audio.format must be one of {} (got {})",
                AUDIO_FORMATS.join(", "),
                other.map_or("nothing".to_string(), |f| format!("'{f}'"))
            ))
        }
    }
    base64_bytes(data, MediaKind::Audio, limits).map(MediaSource::Inline)
}

/// The URL of a part as OpenAI writes it (`{"url": ...}`) or as a bare string.
fn media_url(part: &Value, kind: MediaKind) -> Option<&str> {
    match part.get(part_type(kind))? {
        Value::String(url) => Some(url),
        v => v.get("url")?.as_str(),
    }
}

fn source(url: &str, kind: MediaKind, limits: &MediaLimits) -> Result<MediaSource, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or("a data: URL needs a comma before its data")?;
        if !header.ends_with(";base64") {
            return Err("only base64 data: URLs are accepted (data:image/png;base64,...)".into());
        }
        return base64_bytes(data, kind, limits).map(MediaSource::Inline);
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(MediaSource::Http(url.to_owned()));
    }
    if let Some(path) = url.strip_prefix("file://") {
        let Some(root) = &limits.allowed_local_media_path else {
            return Err(
                "file:// URLs are refused unless the server is started with \
                        --allowed-local-media-path"
                    .into(),
            );
        };
        return Ok(MediaSource::File(local_path(root, Path::new(path))?));
    }
    Err(format!(
        "the {} URL must be data:, http(s):// or file://",
        kind.name()
    ))
}

/// Base64 `data` decoded, refused before decoding when it would be too big (4 characters per
/// 3 bytes).
fn base64_bytes(data: &str, kind: MediaKind, limits: &MediaLimits) -> Result<Vec<u8>, String> {
    if data.len() / 4 * 3 > limits.max_bytes(kind) + 3 {
        return Err(too_big(kind, limits));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim_end())
        .map_err(|e| format!("the {} data is not valid base64: {e}", kind.name()))
}

/// `path` if it names a file under `root` once links and `..` are resolved.
fn local_path(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "{} is not under the allowed local media path",
            path.display()
        )
    };
    let resolved = path.canonicalize().map_err(|_| outside())?;
    if !resolved.starts_with(root) || !resolved.is_file() {
        return Err(outside());
    }
    Ok(resolved)
}

fn too_big(kind: MediaKind, limits: &MediaLimits) -> String {
    format!(
        "the {} is larger than {} bytes",
        kind.name(),
        limits.max_bytes(kind)
    )
}

/// The bytes of a request's media, each kind in prompt order.
#[derive(Debug, Default)]
pub struct FetchedMedia {
    pub images: Vec<Vec<u8>>,
    pub videos: Vec<Vec<u8>>,
    pub audios: Vec<Vec<u8>>,
}

impl FetchedMedia {
    /// The list of `kind`'s files.
    pub fn of(&mut self, kind: MediaKind) -> &mut Vec<Vec<u8>> {
        match kind {
            MediaKind::Image => &mut self.images,
            MediaKind::Video => &mut self.videos,
            MediaKind::Audio => &mut self.audios,
        }
    }
}

/// Fetches what `sources` point at, all at once, each within the limits.
pub async fn fetch(
    client: &reqwest::Client,
    sources: Vec<(MediaKind, MediaSource)>,
    limits: &MediaLimits,
) -> Result<FetchedMedia, ApiError> {
    let jobs = sources.into_iter().map(|(kind, s)| async move {
        let bytes = match s {
            MediaSource::Inline(bytes) => Ok(bytes),
            MediaSource::Http(url) => fetch_url(client, &url, kind, limits).await,
            MediaSource::File(path) => read_file(path, kind, limits).await,
        };
        (kind, bytes)
    });
    let mut fetched = FetchedMedia::default();
    for (kind, bytes) in futures_util::future::join_all(jobs).await {
        let list = fetched.of(kind);
        let n = list.len() + 1;
        list.push(
            bytes
                .map_err(|e| ApiError::invalid("messages", format!("{} {n}: {e}", kind.name())))?,
        );
    }
    Ok(fetched)
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
    kind: MediaKind,
    limits: &MediaLimits,
) -> Result<Vec<u8>, String> {
    let cap = limits.max_bytes(kind);
    let download = async {
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_big(kind, limits));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("fetching {url}: {e}"))?;
            if body.len() + chunk.len() > cap {
                return Err(too_big(kind, limits));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(limits.fetch_timeout, download)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "fetching {url} took longer than {:.1} s",
                limits.fetch_timeout.as_secs_f64()
            ))
        })
}

async fn read_file(
    path: PathBuf,
    kind: MediaKind,
    limits: &MediaLimits,
) -> Result<Vec<u8>, String> {
    let cap = limits.max_bytes(kind);
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use std::io::Read;
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(cap as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(bytes)
    });
    let bytes = read.await.map_err(|e| e.to_string())??;
    if bytes.len() > cap {
        return Err(too_big(kind, limits));
    }
    Ok(bytes)
}

/// `mm_processor_kwargs` as the processors take them: `min_pixels` and `max_pixels`
/// (positive integers), `fps` (a positive number), `use_audio_in_video` (a boolean);
/// anything else is refused rather than ignored.
pub fn processor_kwargs(kwargs: Option<&Map<String, Value>>) -> Result<ProcessorKwargs, ApiError> {
    let invalid = |message: String| ApiError::invalid("mm_processor_kwargs", message);
    let mut bounds = ProcessorKwargs::default();
    for (key, value) in kwargs.into_iter().flatten() {
        let slot = match key.as_str() {
            "min_pixels" => &mut bounds.min_pixels,
            "max_pixels" => &mut bounds.max_pixels,
            "fps" => {
                let fps = value.as_f64().filter(|v| *v > 0.0 && v.is_finite());
                bounds.fps = Some(fps.ok_or_else(|| {
                    invalid("mm_processor_kwargs.fps must be a positive number".into())
                })?);
                continue;
            }
            "use_audio_in_video" => {
                bounds.use_audio_in_video = value.as_bool().ok_or_else(|| {
                    invalid("mm_processor_kwargs.use_audio_in_video must be a boolean".into())
                })?;
                continue;
            }
            other => {
                return Err(invalid(format!(
                    "unknown mm_processor_kwargs key `{other}` (min_pixels, max_pixels, fps, \
                     use_audio_in_video)"
                )))
            }
        };
        *slot = Some(value.as_u64().filter(|&v| v > 0).ok_or_else(|| {
            invalid(format!(
                "mm_processor_kwargs.{key} must be a positive integer"
            ))
        })?);
    }
    Ok(bounds)
}

/// Decodes fetched images (upright RGB) within the pixel limit.
pub fn decode_images(files: &[Vec<u8>], limits: &MediaLimits) -> Result<Vec<RgbImage>, ApiError> {
    let options = DecodeOptions {
        max_pixels: limits.max_image_pixels,
        ..DecodeOptions::default()
    };
    files
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            weft_vision::decode(bytes, &options)
                .map_err(|e| ApiError::invalid("messages", format!("image {}: {e}", i + 1)))
        })
        .collect()
}

/// Decodes fetched audio files to 16 kHz mono samples within the length limit.
pub fn decode_audios(files: &[Vec<u8>], limits: &MediaLimits) -> Result<Vec<Vec<f32>>, ApiError> {
    files
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            weft_audio::audio::decode(bytes, limits.max_audio_seconds)
                .map_err(|e| ApiError::invalid("messages", format!("audio {}: {e}", i + 1)))
        })
        .collect()
}

/// A fetched video in a temporary file for ffmpeg to read; removed when dropped.
struct VideoFile {
    path: PathBuf,
}

impl VideoFile {
    fn write(bytes: &[u8]) -> std::io::Result<VideoFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "weft-video-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, bytes)?;
        Ok(VideoFile { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for VideoFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A fetched video, written out and probed: what it holds and the frames the video processor
/// samples from it, before any frame is decoded.
pub struct ProbedVideo {
    file: VideoFile,
    pub plan: VideoPlan,
}

/// Writes each fetched video to a temporary file and probes it (`kwargs` set the sampling).
pub fn probe_videos(
    vision: &Vision,
    files: &[Vec<u8>],
    kwargs: ProcessorKwargs,
    limits: &MediaLimits,
) -> Result<Vec<ProbedVideo>, ApiError> {
    files
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let file = VideoFile::write(bytes).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("writing video {} to a temporary file: {e}", i + 1),
                )
            })?;
            let plan = vision
                .probe_video(file.path(), kwargs, &limits.video())
                .map_err(|e| ApiError::invalid("messages", format!("video {}: {e}", i + 1)))?;
            Ok(ProbedVideo { file, plan })
        })
        .collect()
}

/// Decodes the sampled frames of probed videos, resized for the tower.
pub fn read_videos(
    vision: &Vision,
    videos: &[ProbedVideo],
    kwargs: ProcessorKwargs,
    limits: &MediaLimits,
) -> Result<Vec<Video>, ApiError> {
    videos
        .iter()
        .enumerate()
        .map(|(i, v)| {
            vision
                .read_video(v.file.path(), &v.plan, kwargs, &limits.video())
                .map_err(|e| ApiError::invalid("messages", format!("video {}: {e}", i + 1)))
        })
        .collect()
}

/// A prompt's tower inputs as the engine's media items, each encoded by `vision` when the
/// engine gets to it (a video's temporal patches one by one, so that a long video is
/// encoded step by step within the encoder budget).
pub fn request_media(
    vision: &Arc<Vision>,
    inputs: Vec<TowerInput>,
    positions: MediaPositions,
) -> RequestMedia {
    let items = inputs
        .into_iter()
        .map(|input| MediaItem {
            span: MediaSpan {
                start: input.start,
                len: input.len,
                hash: input.hash,
                bidirectional: input.bidirectional,
            },
            encoder: Arc::new(TowerEncoder {
                vision: Arc::clone(vision),
                input,
            }),
        })
        .collect();
    RequestMedia { items, positions }
}

/// One tower input waiting for the vision tower.
struct TowerEncoder {
    vision: Arc<Vision>,
    input: TowerInput,
}

impl MediaEncoder for TowerEncoder {
    fn encode(&self, pool: &ThreadPool) -> Result<Vec<f32>, String> {
        Ok(self.vision.encode(pool, &self.input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> MediaLimits {
        MediaLimits {
            max_images: 2,
            max_image_bytes: 8,
            ..MediaLimits::default()
        }
    }

    fn part(url: &str) -> Value {
        json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]})
    }

    fn image_sources(
        messages: &[Value],
        limits: &MediaLimits,
    ) -> Result<Vec<MediaSource>, ApiError> {
        let sources = media_sources(messages, limits)?;
        assert!(sources.iter().all(|(k, _)| *k == MediaKind::Image));
        Ok(sources.into_iter().map(|(_, s)| s).collect())
    }

    #[test]
    fn data_urls_are_decoded_and_bounded() {
        let got = image_sources(&[part("data:image/png;base64,AAECAw==")], &limits()).unwrap();
        assert!(matches!(&got[..], [MediaSource::Inline(b)] if b == &[0, 1, 2, 3]));
        for bad in [
            "data:image/png;base64,@@@@",
            "data:image/png,abc",
            "data:image/png;base64",
            "data:image/png;base64,AAAAAAAAAAAAAAAAAAAA",
            "ftp://example/x.png",
            "file:///etc/passwd",
        ] {
            let e = image_sources(&[part(bad)], &limits()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        let one = "data:image/png;base64,AA==";
        let three = [part(one), part(one), part(one)];
        let e = image_sources(&three, &limits()).unwrap_err();
        assert!(e.message.contains("at most 2 images"), "{}", e.message);
    }

    #[test]
    fn local_files_only_under_the_allowed_path() {
        let dir = std::env::temp_dir().join(format!("weft-media-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("inside")).unwrap();
        std::fs::write(dir.join("inside/a.png"), b"x").unwrap();
        std::fs::write(dir.join("b.png"), b"x").unwrap();
        let root = dir.join("inside").canonicalize().unwrap();
        let limits = MediaLimits {
            allowed_local_media_path: Some(root.clone()),
            ..limits()
        };
        let ok = format!("file://{}", root.join("a.png").display());
        assert!(matches!(
            &image_sources(&[part(&ok)], &limits).unwrap()[..],
            [MediaSource::File(p)] if p == &root.join("a.png")
        ));
        for bad in [
            format!("file://{}/../b.png", root.display()),
            format!("file://{}", dir.join("b.png").display()),
            format!("file://{}/missing.png", root.display()),
        ] {
            assert!(image_sources(&[part(&bad)], &limits).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
