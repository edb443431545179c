//! Transcript renderings with OpenAI's `response_format` names: `text`, `json`
//! (`{"text": …}`), `verbose_json` (task, language, duration, segments), `srt` and `vtt`.

use std::str::FromStr;

use serde_json::json;

use crate::transcribe::Transcript;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFormat {
    Text,
    Json,
    VerboseJson,
    Srt,
    Vtt,
}

impl FromStr for ResponseFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "text" => ResponseFormat::Text,
            "json" => ResponseFormat::Json,
            "verbose_json" => ResponseFormat::VerboseJson,
            "srt" => ResponseFormat::Srt,
            "vtt" => ResponseFormat::Vtt,
            other => {
                return Err(format!(
                    "unknown response format '{other}' (text, json, verbose_json, srt, vtt)"
                ))
            }
        })
    }
}

impl ResponseFormat {
    /// The HTTP content type of the rendering.
    pub fn content_type(self) -> &'static str {
        match self {
            // OpenAI sends all three as plain text, and its clients read them so.
            ResponseFormat::Text | ResponseFormat::Srt | ResponseFormat::Vtt => {
                "text/plain; charset=utf-8"
            }
            ResponseFormat::Json | ResponseFormat::VerboseJson => "application/json",
        }
    }
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (VTT).
fn timestamp(seconds: f64, separator: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Renders `t`; text formats end with a newline, except that no speech renders as nothing.
pub fn render(t: &Transcript, format: ResponseFormat) -> String {
    match format {
        ResponseFormat::Text if t.text.is_empty() => String::new(),
        ResponseFormat::Text => format!("{}\n", t.text),
        ResponseFormat::Json => json!({ "text": t.text }).to_string(),
        ResponseFormat::VerboseJson => json!({
            "task": t.task,
            "language": crate::languages::name(&t.language).unwrap_or(&t.language),
            "duration": t.duration,
            "text": t.text,
            "segments": t.segments.iter().map(|s| json!({
                "id": s.id - 1,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            })).collect::<Vec<_>>(),
        })
        .to_string(),
        ResponseFormat::Srt => t
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{}\n{} --> {}\n{}\n\n",
                    i + 1,
                    timestamp(s.start, ','),
                    timestamp(s.end, ','),
                    s.text.trim()
                )
            })
            .collect(),
        ResponseFormat::Vtt => {
            let mut out = String::from("WEBVTT\n\n");
            for s in &t.segments {
                out.push_str(&format!(
                    "{} --> {}\n{}\n\n",
                    timestamp(s.start, '.'),
                    timestamp(s.end, '.'),
                    s.text.trim()
                ));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcribe::Segment;

    fn sample() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.to_string(),
            tokens: vec![1, 2],
            temperature: 0.0,
            avg_logprob: -0.2,
            compression_ratio: 1.1,
            no_speech_prob: 0.01,
        };
        Transcript {
            task: "transcribe",
            language: "en".into(),
            language_probability: 0.99,
            duration: 3725.5,
            text: "Hello there. General Kenobi.".into(),
            segments: vec![
                seg(1, 0.0, 1.5, " Hello there."),
                seg(2, 3723.25, 3725.5, " General Kenobi."),
            ],
        }
    }

    #[test]
    fn srt_and_vtt_timestamps() {
        let t = sample();
        assert_eq!(
            render(&t, ResponseFormat::Srt),
            "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n\
             2\n01:02:03,250 --> 01:02:05,500\nGeneral Kenobi.\n\n"
        );
        let vtt = render(&t, ResponseFormat::Vtt);
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n"));
    }

    #[test]
    fn json_shapes() {
        let t = sample();
        let j: serde_json::Value = serde_json::from_str(&render(&t, ResponseFormat::Json)).unwrap();
        assert_eq!(j, json!({"text": "Hello there. General Kenobi."}));
        let v: serde_json::Value =
            serde_json::from_str(&render(&t, ResponseFormat::VerboseJson)).unwrap();
        assert_eq!(v["language"], "english");
        assert_eq!(v["segments"][1]["id"], 1);
        assert_eq!(v["segments"][1]["start"], 3723.25);
        assert_eq!("vtt".parse::<ResponseFormat>(), Ok(ResponseFormat::Vtt));
        assert!("xml".parse::<ResponseFormat>().is_err());
    }
}
