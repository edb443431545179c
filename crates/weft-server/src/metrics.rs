//! Server-side counters and latency histograms, rendered with the engine's live gauges in
//! Prometheus' text format for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use weft_engine::engine::EngineStats;

use crate::audio::AudioService;

/// Bucket upper bounds in seconds: token latencies on a CPU run from milliseconds to seconds.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(&BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// (route, HTTP status) -> count.
    requests: BTreeMap<(String, u16), u64>,
    /// finish reason -> count.
    finished: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    generation_tokens: u64,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    /// Seconds of audio transcribed, and the latency of each transcription.
    audio_seconds: f64,
    transcription: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn request(&self, route: &str, status: u16) {
        self.with(|m| *m.requests.entry((route.to_owned(), status)).or_default() += 1);
    }

    pub fn time_to_first_token(&self, secs: f64) {
        self.with(|m| m.ttft.observe(secs));
    }

    pub fn inter_token(&self, secs: f64) {
        self.with(|m| m.itl.observe(secs));
    }

    /// One finished generation (one choice).
    pub fn finished(&self, reason: &'static str, prompt: usize, generated: usize, secs: f64) {
        self.with(|m| {
            *m.finished.entry(reason).or_default() += 1;
            m.prompt_tokens += prompt as u64;
            m.generation_tokens += generated as u64;
            m.e2e.observe(secs);
        });
    }

    /// One finished transcription of `audio_secs` of audio that took `secs` from arrival.
    pub fn transcribed(&self, audio_secs: f64, secs: f64) {
        self.with(|m| {
            m.audio_seconds += audio_secs;
            m.transcription.observe(secs);
        });
    }

    /// Engine gauges when a text model is served, transcription gauges when a speech model
    /// is, then the HTTP counters and histograms.
    pub fn render(
        &self,
        engine: Option<&EngineStats>,
        audio: Option<&AudioService>,
        model: &str,
    ) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {v}"
            );
        };
        if let Some(engine) = engine {
            render_engine(&mut out, engine, &gauge);
        }
        if let Some(audio) = audio {
            gauge(
                &mut out,
                "weft_audio_requests_running",
                "gauge",
                "Transcriptions running.",
                audio.running() as f64,
            );
            gauge(
                &mut out,
                "weft_audio_requests_waiting",
                "gauge",
                "Transcriptions waiting for their turn.",
                audio.waiting() as f64,
            );
        }
        self.with(|m| {
            let _ = writeln!(out, "# HELP weft_http_requests_total HTTP requests by route and status code.\n# TYPE weft_http_requests_total counter");
            for ((route, status), n) in &m.requests {
                let _ = writeln!(out, "weft_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP weft_request_success_total Finished generations by finish reason.\n# TYPE weft_request_success_total counter");
            for (reason, n) in &m.finished {
                let _ = writeln!(out, "weft_request_success_total{{finished_reason=\"{reason}\"}} {n}");
            }
            gauge(&mut out, "weft_prompt_tokens_total", "counter", "Prompt tokens of finished generations.", m.prompt_tokens as f64);
            gauge(&mut out, "weft_generation_tokens_total", "counter", "Generated tokens of finished generations.", m.generation_tokens as f64);
            m.ttft.render(&mut out, "weft_time_to_first_token_seconds", "Time from request arrival to the first generated token.");
            m.itl.render(&mut out, "weft_inter_token_latency_seconds", "Time between successive tokens of one generation.");
            m.e2e.render(&mut out, "weft_e2e_request_latency_seconds", "Time from request arrival to the end of a generation.");
            if audio.is_some() {
                gauge(&mut out, "weft_audio_seconds_total", "counter", "Seconds of audio transcribed.", m.audio_seconds);
                m.transcription.render(&mut out, "weft_transcription_latency_seconds", "Time from request arrival to the end of a transcription.");
            }
        });
        out
    }
}

/// The engine's live gauges and counters.
fn render_engine(
    out: &mut String,
    engine: &EngineStats,
    gauge: &impl Fn(&mut String, &str, &str, &str, f64),
) {
    let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as f64;
    let load64 = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    gauge(
        out,
        "weft_num_requests_running",
        "gauge",
        "Sequences in the running batch.",
        load(&engine.running),
    );
    gauge(
        out,
        "weft_num_requests_waiting",
        "gauge",
        "Sequences waiting for a slot.",
        load(&engine.waiting),
    );
    gauge(
        out,
        "weft_kv_cache_blocks_total",
        "gauge",
        "KV cache blocks (16 tokens each).",
        load(&engine.kv_blocks_total),
    );
    gauge(
        out,
        "weft_kv_cache_blocks_used",
        "gauge",
        "KV cache blocks held by sequences.",
        load(&engine.kv_blocks_used),
    );
    gauge(
        out,
        "weft_kv_cache_blocks_cached",
        "gauge",
        "KV cache blocks holding a reusable prefix (in use or free).",
        load(&engine.kv_blocks_cached),
    );
    let (queried, hit) = (
        load64(&engine.prefix_queried_tokens),
        load64(&engine.prefix_hit_tokens),
    );
    gauge(
        out,
        "weft_prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        queried,
    );
    gauge(
        out,
        "weft_prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        hit,
    );
    gauge(
        out,
        "weft_prefix_cache_hit_rate",
        "gauge",
        "Prefix cache hits / queries (tokens) since start.",
        if queried > 0.0 { hit / queried } else { 0.0 },
    );
    gauge(
        out,
        "weft_num_preemptions_total",
        "counter",
        "Sequences preempted (recomputed later) for lack of KV blocks.",
        load64(&engine.preemptions),
    );
    gauge(
        out,
        "weft_requests_aborted_total",
        "counter",
        "Sequences aborted (client gone or shutdown).",
        load64(&engine.aborted),
    );
    gauge(
        out,
        "weft_engine_steps_total",
        "counter",
        "Batched forward passes.",
        load64(&engine.steps),
    );
    gauge(
        out,
        "weft_engine_failures_total",
        "counter",
        "Requests failed by an internal engine error (each is logged).",
        load64(&engine.failures),
    );
    gauge(
        out,
        "weft_engine_restarts_total",
        "counter",
        "Scheduler restarts after an internal error outside a forward pass.",
        load64(&engine.restarts),
    );
    gauge(
        out,
        "weft_encoder_runs_total",
        "counter",
        "Media items (images) run through their encoder.",
        load64(&engine.encoder_runs),
    );
    gauge(
        out,
        "weft_encoder_tokens_total",
        "counter",
        "Language-model tokens (rows) the encoders produced.",
        load64(&engine.encoder_tokens),
    );
    gauge(
        out,
        "weft_encoder_seconds_total",
        "counter",
        "Seconds spent in media encoders.",
        load64(&engine.encoder_micros) / 1e6,
    );
    gauge(
        out,
        "weft_encoder_cache_hits_total",
        "counter",
        "Media items whose encoder output was found in the encoder cache.",
        load64(&engine.encoder_cache_hits),
    );
    gauge(
        out,
        "weft_encoder_cache_bytes",
        "gauge",
        "Bytes of encoder outputs kept in the encoder cache.",
        load(&engine.encoder_cache_bytes),
    );
}
