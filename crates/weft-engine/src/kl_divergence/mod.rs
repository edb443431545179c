//! KL divergence between a model's next-token distributions and a base's, as llama.cpp's
//! `llama-perplexity --kl-divergence` measures it: the base (another engine, or another
//! quantization) is run first and its log-probabilities at every scored position are saved
//! (`write_base`, the file format of `file` and `log_probs`); the model then scores the same
//! tokens in the same chunks and is compared position by position (`compare`, `stats`).
//! Files written by llama.cpp and by weft are interchangeable.

mod file;
mod log_probs;
mod stats;

use std::io::{Read, Write};

pub use file::{open, read, Base, BaseRecords, BaseWriter};
pub use log_probs::{encode, record_bytes, Record};
pub use stats::{Estimate, KldReport, KldStats, Quantile};

use crate::perplexity::{Chunks, NllSum, PerplexityEstimate};
use crate::session::Session;
use crate::EngineError;

#[derive(thiserror::Error, Debug)]
pub enum KldError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("base logits file: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "not a logits file from llama-perplexity --kl-divergence-base (no \"_logits_\" magic)"
    )]
    NotLogitsFile,
    #[error("base logits file: invalid {field} {value}")]
    Header { field: &'static str, value: i64 },
    #[error("base logits file has {actual} bytes, its header describes {expected}: truncated or corrupt")]
    Size { expected: u64, actual: u64 },
    #[error("base logits file: token {token} at index {index} is outside its {n_vocab}-token vocabulary")]
    TokenOutOfRange {
        index: usize,
        token: i64,
        n_vocab: usize,
    },
    #[error("the base was computed with a {base}-token vocabulary, the model has {model}")]
    VocabMismatch { base: usize, model: usize },
}

/// Scores `chunks` as `perplexity::perplexity` does and writes every scored position's
/// log-probabilities to `out` as a base file; returns the perplexity estimate.
pub fn write_base<W: Write>(
    session: &mut Session<'_>,
    chunks: &Chunks<'_>,
    out: W,
    mut on_chunk: impl FnMut(&PerplexityEstimate),
) -> Result<PerplexityEstimate, KldError> {
    let n_vocab = session.model().decoder.vocab_size();
    let mut writer = BaseWriter::new(out, chunks.ctx(), n_vocab, chunks.tokens())?;
    let record = record_bytes(n_vocab);
    let mut records = vec![0u8; chunks.scored_per_chunk() * record];
    let mut nll = NllSum::default();
    let mut estimate = nll.estimate(0, chunks.n_chunks());
    for chunk in 0..chunks.n_chunks() {
        let mut i = 0;
        chunks.score(session, chunk, |logits, target| {
            nll.add(logits, target);
            encode(logits, &mut records[i * record..(i + 1) * record]);
            i += 1;
        })?;
        writer.write_chunk(&records)?;
        estimate = nll.estimate(chunk + 1, chunks.n_chunks());
        on_chunk(&estimate);
    }
    writer.finish()?;
    Ok(estimate)
}

/// Scores the base's tokens in its chunks (at most `max_chunks` of them) and compares every
/// scored position with the base's record, calling `on_chunk(chunks done, chunks, report so
/// far)`; returns the final report.
pub fn compare<R: Read>(
    session: &mut Session<'_>,
    base: &Base,
    records: &mut BaseRecords<R>,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize, &KldReport),
) -> Result<KldReport, KldError> {
    let n_vocab = session.model().decoder.vocab_size();
    if base.n_vocab != n_vocab {
        return Err(KldError::VocabMismatch {
            base: base.n_vocab,
            model: n_vocab,
        });
    }
    let n_chunks = base.n_chunks.min(max_chunks.unwrap_or(usize::MAX)).max(1);
    let chunks = Chunks::new(session, &base.tokens, base.ctx, n_chunks);
    let record = record_bytes(n_vocab);
    let mut bytes = Vec::new();
    let mut stats = KldStats::default();
    for chunk in 0..n_chunks {
        records.read_chunk(&mut bytes)?;
        let mut positions = bytes.chunks_exact(record);
        chunks.score(session, chunk, |logits, target| {
            // read_chunk holds exactly one record per scored position.
            let base = Record::new(positions.next().unwrap(), n_vocab);
            stats.add(logits, &base, target);
        })?;
        on_chunk(chunk + 1, n_chunks, &stats.report());
    }
    Ok(stats.report())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A base file of `n_chunks` chunks of `ctx` tokens over a vocabulary of `n_vocab`, whose
    /// records encode `logits(chunk, position)`.
    fn base_file(
        ctx: usize,
        n_vocab: usize,
        n_chunks: usize,
        logits: impl Fn(usize, usize) -> Vec<f32>,
    ) -> Vec<u8> {
        let tokens: Vec<u32> = (0..ctx * n_chunks).map(|i| (i % n_vocab) as u32).collect();
        let mut w = BaseWriter::new(Vec::new(), ctx, n_vocab, &tokens).unwrap();
        let record = record_bytes(n_vocab);
        let scored = ctx - 1 - ctx / 2;
        for c in 0..n_chunks {
            let mut recs = vec![0u8; scored * record];
            for p in 0..scored {
                encode(&logits(c, p), &mut recs[p * record..(p + 1) * record]);
            }
            w.write_chunk(&recs).unwrap();
        }
        w.finish().unwrap()
    }

    /// Deterministic, varied logits, all within the 16 nats a record resolves.
    fn logits(n_vocab: usize, seed: usize) -> Vec<f32> {
        (0..n_vocab)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32) / 70.0 - 8.0)
            .collect()
    }

    #[test]
    fn a_base_compared_with_its_own_logits_has_no_divergence() {
        let (ctx, n_vocab, n_chunks) = (16, 101, 20);
        let bytes = base_file(ctx, n_vocab, n_chunks, |c, p| logits(n_vocab, c * 100 + p));
        let (base, mut records) = read(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(
            (base.ctx, base.n_vocab, base.n_chunks),
            (ctx, n_vocab, n_chunks)
        );
        assert_eq!(base.tokens.len(), ctx * n_chunks);
        assert_eq!(base.first_mismatch(&base.tokens), None);
        assert_eq!(base.first_mismatch(&base.tokens[..5]), Some(5));
        let mut stats = KldStats::default();
        let mut buf = Vec::new();
        let record = record_bytes(n_vocab);
        for c in 0..n_chunks {
            records.read_chunk(&mut buf).unwrap();
            for (p, rec) in buf.chunks_exact(record).enumerate() {
                let target = base.tokens[c * ctx + ctx / 2 + p + 1];
                stats.add(
                    &logits(n_vocab, c * 100 + p),
                    &Record::new(rec, n_vocab),
                    target,
                );
            }
        }
        let r = stats.report();
        assert_eq!(r.count, n_chunks * (ctx - 1 - ctx / 2));
        // Only the u16 rounding of the base (up to half a step, 1.1e-4 nats, per
        // log-probability) and f32 arithmetic separate the two: a few 1e-6 nats.
        assert!(r.kld.value.abs() < 1e-5, "{r:?}");
        assert_eq!(r.same_top.value, 1.0);
        assert!(r.ln_ppl_ratio.value.abs() < 1.1e-4, "{r:?}");
        assert!(r.rms_p_diff.value < 1e-5, "{r:?}");
        // No bytes beyond the last chunk.
        assert!(records.read_chunk(&mut buf).is_err());
    }

    #[test]
    fn a_different_distribution_diverges() {
        let (ctx, n_vocab) = (8, 50);
        let bytes = base_file(ctx, n_vocab, 1, |_, p| logits(n_vocab, p));
        let (base, mut records) = read(Cursor::new(&bytes), bytes.len() as u64).unwrap();
        let mut buf = Vec::new();
        records.read_chunk(&mut buf).unwrap();
        let mut stats = KldStats::default();
        for (p, rec) in buf.chunks_exact(record_bytes(n_vocab)).enumerate() {
            let other = logits(n_vocab, p + 1);
            stats.add(&other, &Record::new(rec, n_vocab), base.tokens[p + 5]);
        }
        let r = stats.report();
        assert!(r.kld.value > 0.1, "{r:?}");
        assert!(r.kld_quantiles.iter().all(|q| q.value >= -1e-6));
    }

    fn read_err(bytes: &[u8]) -> KldError {
        match read(Cursor::new(bytes), bytes.len() as u64) {
            Ok(_) => panic!("accepted a bad file"),
            Err(e) => e,
        }
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors() {
        let good = base_file(8, 10, 2, |_, p| logits(10, p));
        for len in [0, 7, 12, 19, 20, 40, good.len() - 1] {
            let e = read_err(&good[..len]);
            assert!(matches!(e, KldError::Size { .. }), "{len}: {e}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(read_err(&longer), KldError::Size { .. }));

        let mut magic = good.clone();
        magic[0] = b'x';
        assert!(matches!(read_err(&magic), KldError::NotLogitsFile));

        for (field, value) in [(8, 3i32), (8, -512), (12, 0), (16, -1)] {
            let mut bad = good.clone();
            bad[field..field + 4].copy_from_slice(&value.to_le_bytes());
            assert!(matches!(read_err(&bad), KldError::Header { .. }), "{field}");
        }
        // A header whose sizes overflow is a size mismatch, not an allocation.
        let mut huge = good.clone();
        for field in [8, 12, 16] {
            huge[field..field + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        }
        assert!(matches!(read_err(&huge), KldError::Size { .. }));

        for token in [-1i32, 10] {
            let mut bad = good.clone();
            bad[20 + 4 * 3..24 + 4 * 3].copy_from_slice(&token.to_le_bytes());
            let e = read_err(&bad);
            assert!(
                matches!(e, KldError::TokenOutOfRange { index: 3, .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn a_file_shorter_than_it_said_is_an_error_while_reading() {
        let good = base_file(8, 10, 2, |_, p| logits(10, p));
        // Claimed length right, actual stream short: read_exact fails, no panic.
        let short = &good[..good.len() - 3];
        let (_, mut records) = read(Cursor::new(short), good.len() as u64).unwrap();
        let mut buf = Vec::new();
        records.read_chunk(&mut buf).unwrap();
        assert!(matches!(records.read_chunk(&mut buf), Err(KldError::Io(_))));
    }
}
