//! Throughput measurement the way llama-bench does it, so the two can be compared directly:
//! each repetition starts from an empty cache, optionally fills `n_depth` tokens untimed, then
//! times a prompt of `n_prompt` random tokens evaluated in batches and/or `n_gen` random tokens
//! evaluated one at a time. Tokens are random ids (not sampled) because only speed is measured.

use std::time::Instant;

use crate::session::Session;
use crate::EngineError;

/// One row of a benchmark: llama-bench's `pp512`, `tg128`, `tg128 @ d4096`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchCase {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
}

impl BenchCase {
    /// Context the case needs.
    pub fn ctx_size(&self) -> usize {
        self.n_depth + self.n_prompt + self.n_gen
    }

    /// llama-bench's test name: `pp512`, `tg128`, `pp512+tg128`, with ` @ d4096` for depth.
    pub fn name(&self) -> String {
        let mut name = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        if self.n_depth > 0 {
            name.push_str(&format!(" @ d{}", self.n_depth));
        }
        name
    }
}

/// The timed repetitions of one case.
#[derive(Clone, Debug)]
pub struct BenchSamples {
    pub case: BenchCase,
    pub samples_ns: Vec<u64>,
}

impl BenchSamples {
    fn tokens(&self) -> f64 {
        (self.case.n_prompt + self.case.n_gen) as f64
    }

    /// Tokens per second of each repetition.
    pub fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| self.tokens() * 1e9 / ns as f64)
            .collect()
    }

    pub fn avg_ns(&self) -> f64 {
        mean(
            &self
                .samples_ns
                .iter()
                .map(|&n| n as f64)
                .collect::<Vec<_>>(),
        )
    }

    pub fn stddev_ns(&self) -> f64 {
        stddev(
            &self
                .samples_ns
                .iter()
                .map(|&n| n as f64)
                .collect::<Vec<_>>(),
        )
    }

    pub fn avg_ts(&self) -> f64 {
        mean(&self.samples_ts())
    }

    pub fn stddev_ts(&self) -> f64 {
        stddev(&self.samples_ts())
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n - 1), as llama-bench reports it.
fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Random token ids: a xorshift generator, seeded so runs are repeatable.
struct TokenSource {
    state: u64,
    vocab: u64,
}

impl TokenSource {
    fn next(&mut self) -> u32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.vocab) as u32
    }

    fn take(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Runs `case` `reps` times on `session` (whose context must hold `case.ctx_size()`), after one
/// untimed warm-up pass unless `warmup` is false.
pub fn run_case(
    session: &mut Session<'_>,
    case: BenchCase,
    reps: usize,
    warmup: bool,
) -> Result<BenchSamples, EngineError> {
    let mut tokens = TokenSource {
        state: 0x9E37_79B9_7F4A_7C15,
        vocab: session.model().decoder.vocab_size() as u64,
    };
    if warmup {
        session.reset();
        if case.n_prompt > 0 {
            session.append(&tokens.take(case.n_prompt))?;
        }
        if case.n_gen > 0 {
            session.append(&tokens.take(1))?;
        }
    }
    let mut samples_ns = Vec::with_capacity(reps);
    for _ in 0..reps {
        session.reset();
        if case.n_depth > 0 {
            session.append(&tokens.take(case.n_depth))?;
        }
        let prompt = tokens.take(case.n_prompt);
        let gen = tokens.take(case.n_gen);
        let t0 = Instant::now();
        if !prompt.is_empty() {
            session.append(&prompt)?;
        }
        for &token in &gen {
            session.append(&[token])?;
        }
        samples_ns.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(BenchSamples { case, samples_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_bench() {
        let case = |n_prompt, n_gen, n_depth| BenchCase {
            n_prompt,
            n_gen,
            n_depth,
        };
        assert_eq!(case(512, 0, 0).name(), "pp512");
        assert_eq!(case(0, 128, 4096).name(), "tg128 @ d4096");
        assert_eq!(case(512, 128, 0).name(), "pp512+tg128");
    }

    #[test]
    fn statistics_match_hand_computation() {
        let s = BenchSamples {
            case: BenchCase {
                n_prompt: 0,
                n_gen: 100,
                n_depth: 0,
            },
            samples_ns: vec![1_000_000_000, 500_000_000],
        };
        assert_eq!(s.samples_ts(), vec![100.0, 200.0]);
        assert_eq!(s.avg_ts(), 150.0);
        assert!((s.stddev_ts() - 70.710678).abs() < 1e-4);
    }
}
