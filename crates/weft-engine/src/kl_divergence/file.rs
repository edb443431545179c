//! The base file of `llama-perplexity --kl-divergence-base`, read and written byte for byte as
//! llama.cpp lays it out. llama.cpp writes its machine's byte order; weft always uses
//! little-endian, the order of the x86 and ARM machines both run on.
//!
//! ```text
//! "_logits_"   8 bytes
//! n_ctx        i32
//! n_vocab      i32
//! n_chunk      i32
//! tokens       n_chunk * n_ctx i32, the text's tokens (no BOS substituted)
//! records      per chunk, one `log_probs` record per scored position (ctx - 1 - ctx/2)
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use super::log_probs::record_bytes;
use super::KldError;
use crate::perplexity::scored_per_chunk;

const MAGIC: &[u8; 8] = b"_logits_";
const HEADER_BYTES: u64 = 8 + 3 * 4;

/// Writes a base file: the header and tokens first, then one chunk of records at a time.
pub struct BaseWriter<W: Write> {
    out: W,
}

impl<W: Write> BaseWriter<W> {
    /// Writes the header for `tokens.len() / ctx` chunks of `ctx` tokens.
    pub fn new(mut out: W, ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<Self, KldError> {
        let field = |name: &'static str, value: usize| {
            i32::try_from(value).map_err(|_| KldError::Header {
                field: name,
                value: value as i64,
            })
        };
        out.write_all(MAGIC)?;
        for v in [
            field("n_ctx", ctx)?,
            field("n_vocab", n_vocab)?,
            field("n_chunk", tokens.len() / ctx)?,
        ] {
            out.write_all(&v.to_le_bytes())?;
        }
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        out.write_all(&bytes)?;
        Ok(BaseWriter { out })
    }

    /// Appends one chunk's records (`log_probs::encode` output, one after another).
    pub fn write_chunk(&mut self, records: &[u8]) -> Result<(), KldError> {
        Ok(self.out.write_all(records)?)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, KldError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A base file's header and tokens.
#[derive(Clone, Debug)]
pub struct Base {
    pub ctx: usize,
    pub n_vocab: usize,
    pub n_chunks: usize,
    /// The tokens the base was computed on (`n_chunks * ctx`).
    pub tokens: Vec<u32>,
}

impl Base {
    /// The first index where `tokens` (a tokenization of the same text) differs from the
    /// file's tokens or ends before them; None when they agree.
    pub fn first_mismatch(&self, tokens: &[u32]) -> Option<usize> {
        (0..self.tokens.len()).find(|&i| tokens.get(i) != Some(&self.tokens[i]))
    }
}

/// The records of a base file, read one chunk at a time after its header.
pub struct BaseRecords<R: Read> {
    input: R,
    chunk_bytes: usize,
}

impl<R: Read> BaseRecords<R> {
    /// Reads the next chunk's records into `records` (resized to fit).
    pub fn read_chunk(&mut self, records: &mut Vec<u8>) -> Result<(), KldError> {
        records.resize(self.chunk_bytes, 0);
        Ok(self.input.read_exact(records)?)
    }
}

/// Opens a base file: its header and tokens, and a reader positioned at its records.
pub fn open(path: &Path) -> Result<(Base, BaseRecords<BufReader<File>>), KldError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    read(BufReader::new(file), len)
}

/// Reads the header and tokens of a base file of `len` bytes. The header is checked against
/// `len` before anything is allocated, so a truncated or foreign file is an error up front,
/// never a panic.
pub fn read<R: Read>(mut input: R, len: u64) -> Result<(Base, BaseRecords<R>), KldError> {
    if len < HEADER_BYTES {
        return Err(KldError::Size {
            expected: HEADER_BYTES,
            actual: len,
        });
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    input.read_exact(&mut header)?;
    if &header[..8] != MAGIC {
        return Err(KldError::NotLogitsFile);
    }
    let field = |i: usize, name: &'static str, least: i32| {
        let v = i32::from_le_bytes(header[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        if v < least {
            return Err(KldError::Header {
                field: name,
                value: i64::from(v),
            });
        }
        Ok(v as usize)
    };
    // ctx >= 4 leaves at least one scored position per chunk.
    let ctx = field(0, "n_ctx", 4)?;
    let n_vocab = field(1, "n_vocab", 1)?;
    let n_chunks = field(2, "n_chunk", 1)?;
    let expected = expected_len(ctx, n_vocab, n_chunks);
    if expected != Some(len) {
        return Err(KldError::Size {
            expected: expected.unwrap_or(u64::MAX),
            actual: len,
        });
    }
    let mut bytes = vec![0u8; 4 * ctx * n_chunks];
    input.read_exact(&mut bytes)?;
    let tokens = bytes
        .chunks_exact(4)
        .enumerate()
        .map(|(index, b)| {
            let t = i32::from_le_bytes(b.try_into().unwrap());
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < n_vocab)
                .ok_or(KldError::TokenOutOfRange {
                    index,
                    token: i64::from(t),
                    n_vocab,
                })
        })
        .collect::<Result<_, _>>()?;
    let base = Base {
        ctx,
        n_vocab,
        n_chunks,
        tokens,
    };
    let records = BaseRecords {
        input,
        chunk_bytes: scored_per_chunk(ctx) * record_bytes(n_vocab),
    };
    Ok((base, records))
}

/// Total bytes of a file with this header, None if that overflows.
fn expected_len(ctx: usize, n_vocab: usize, n_chunks: usize) -> Option<u64> {
    let tokens = 4u64.checked_mul(ctx as u64)?.checked_mul(n_chunks as u64)?;
    let records = (scored_per_chunk(ctx) as u64)
        .checked_mul(record_bytes(n_vocab) as u64)?
        .checked_mul(n_chunks as u64)?;
    HEADER_BYTES.checked_add(tokens)?.checked_add(records)
}
