//! The flat multi-sequence batch a forward pass consumes (vLLM's "varlen" layout): the new
//! tokens of every scheduled sequence back to back, each with its position, plus one record
//! per sequence saying where its tokens sit, how much of it is already in the KV cache, and
//! which of its rows need logits.

use std::ops::Range;

/// A token's rotary position. Three components (time, height, width) so that multimodal
/// RoPE variants fit; text tokens carry the same value three times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position(pub [u32; 3]);

impl Position {
    /// The position of a text token.
    pub fn text(p: usize) -> Position {
        let p = p as u32;
        Position([p, p, p])
    }

    /// The position along the sequence (the temporal component).
    pub fn index(self) -> u32 {
        self.0[0]
    }
}

/// Where a chunk of a sequence's tokens from index `start`, that may run to `end`, ends so
/// that it splits none of the sequence's bidirectional `spans` (in order, disjoint): before a
/// span that `end` falls inside, or at the end of one the chunk starts in (beyond `end`). The
/// one rule the engine's scheduler and a session cut prompts by, which
/// [`Batch::check`] enforces.
pub fn chunk_end(start: usize, end: usize, spans: impl IntoIterator<Item = Range<usize>>) -> usize {
    match spans.into_iter().find(|s| s.start < end && end < s.end) {
        Some(s) if s.start > start => s.start,
        Some(s) => s.end,
        None => end,
    }
}

/// Which rows of a sequence's new tokens produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// Only the last new token (generation).
    Last,
    /// Every new token (scoring, perplexity).
    All,
}

impl LogitsWanted {
    /// How many logits rows a sequence with `len` new tokens produces.
    pub fn rows(self, len: usize) -> usize {
        match self {
            LogitsWanted::None => 0,
            LogitsWanted::Last => usize::from(len > 0),
            LogitsWanted::All => len,
        }
    }
}

/// One sequence's share of a batch.
#[derive(Clone, Copy, Debug)]
pub struct SeqSlice<'a> {
    /// Offset of its first new token in `Batch::tokens`.
    pub start: usize,
    /// Number of new tokens.
    pub len: usize,
    /// Tokens of this sequence already in the KV cache; the new tokens go to cache
    /// indices `cached..cached + len`.
    pub cached: usize,
    /// KV cache blocks holding this sequence, in order; must cover `cached + len` tokens.
    pub block_table: &'a [u32],
    pub logits: LogitsWanted,
    /// Runs of sequence indices (the index space of `cached`) whose tokens attend to each
    /// other both ways, as Gemma 3's image tokens do; sorted, non-empty, not overlapping;
    /// empty for a causal sequence. A query in a span sees the span's later keys as well as
    /// the earlier ones a causal (or windowed) layer allows. A span that reaches the new
    /// tokens must end within them: its earlier tokens see its later ones, so the rest of it
    /// is computed in the same pass. One that began in the cache is the caller's to vouch
    /// for (its cached K/V must have been computed with the whole span).
    pub bidirectional: &'a [Range<usize>],
}

/// An input row given as an embedding instead of a token id: an image's, a video's or an
/// audio clip's placeholder token, whose row the encoder's projection fills.
#[derive(Clone, Copy, Debug)]
pub struct TokenEmbedding<'a> {
    /// Index of the token in `Batch::tokens`.
    pub token: usize,
    /// `n_embd` values, taken as they are (no embedding scale).
    pub values: &'a [f32],
}

/// All tokens scheduled for one forward pass.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [Position],
    pub seqs: &'a [SeqSlice<'a>],
    /// Rows that replace their token's embedding, in increasing token order.
    pub embeddings: &'a [TokenEmbedding<'a>],
}

/// Why a batch cannot be evaluated.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("the batch has {tokens} tokens but {positions} positions")]
    Positions { tokens: usize, positions: usize },
    #[error("sequence {seq} starts at token {start}, expected {expected} (sequences must tile the tokens in order)")]
    NotTiled {
        seq: usize,
        start: usize,
        expected: usize,
    },
    #[error("the sequences cover {covered} of the batch's {tokens} tokens")]
    Uncovered { covered: usize, tokens: usize },
    #[error("sequence {seq} needs {needed} cache slots but its block table holds {held}")]
    BlockTableShort {
        seq: usize,
        needed: usize,
        held: usize,
    },
    #[error("sequence {seq} names KV block {block}; the cache has {n_blocks}")]
    BlockOutOfRange {
        seq: usize,
        block: u32,
        n_blocks: usize,
    },
    #[error(
        "sequence {seq}: bidirectional span {start}..{end} is empty or not after the previous one"
    )]
    SpanOrder {
        seq: usize,
        start: usize,
        end: usize,
    },
    #[error("sequence {seq}: bidirectional span {start}..{end} reaches the new tokens but ends after them (at {new_end}); a span is computed in one pass")]
    SpanCut {
        seq: usize,
        start: usize,
        end: usize,
        new_end: usize,
    },
    #[error("token id {token} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error(
        "embedding {index} replaces token {token}: not after the previous one, or beyond the batch"
    )]
    EmbeddingOrder { index: usize, token: usize },
    #[error("embedding {index} has {len} values; the model's rows have {n_embd}")]
    EmbeddingWidth {
        index: usize,
        len: usize,
        n_embd: usize,
    },
}

impl Batch<'_> {
    /// Total logits rows the forward pass returns, in sequence order.
    pub fn logits_rows(&self) -> usize {
        self.seqs.iter().map(|s| s.logits.rows(s.len)).sum()
    }

    /// Checks that the batch can be evaluated against a cache of `n_blocks` blocks of
    /// `block_size` tokens and a model of `vocab_size` tokens and `n_embd` wide rows: one
    /// position per token, the sequences tiling the tokens in order (so that each writes its
    /// own output rows, which the forward pass fills from several threads), block tables that
    /// cover every cache slot written and name only existing blocks, bidirectional spans in
    /// order and not cut by the end of the new tokens, token ids in the vocabulary, and
    /// embeddings of the model's width for distinct tokens in order.
    pub fn check(
        &self,
        n_blocks: usize,
        block_size: usize,
        vocab_size: usize,
        n_embd: usize,
    ) -> Result<(), BatchError> {
        self.check_embeddings(n_embd)?;
        let tokens = self.tokens.len();
        if self.positions.len() != tokens {
            return Err(BatchError::Positions {
                tokens,
                positions: self.positions.len(),
            });
        }
        let mut next = 0usize;
        for (i, seq) in self.seqs.iter().enumerate() {
            if seq.start != next {
                return Err(BatchError::NotTiled {
                    seq: i,
                    start: seq.start,
                    expected: next,
                });
            }
            next = seq.start.saturating_add(seq.len);
            let needed = seq.cached.saturating_add(seq.len);
            let held = seq.block_table.len().saturating_mul(block_size);
            if needed > held {
                return Err(BatchError::BlockTableShort {
                    seq: i,
                    needed,
                    held,
                });
            }
            if let Some(&block) = seq.block_table.iter().find(|&&b| b as usize >= n_blocks) {
                return Err(BatchError::BlockOutOfRange {
                    seq: i,
                    block,
                    n_blocks,
                });
            }
            check_spans(i, seq)?;
        }
        if next != tokens {
            return Err(BatchError::Uncovered {
                covered: next,
                tokens,
            });
        }
        match self.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            Some(&token) => Err(BatchError::TokenOutOfRange { token, vocab_size }),
            None => Ok(()),
        }
    }

    fn check_embeddings(&self, n_embd: usize) -> Result<(), BatchError> {
        let mut next = 0;
        for (index, e) in self.embeddings.iter().enumerate() {
            if e.token < next || e.token >= self.tokens.len() {
                return Err(BatchError::EmbeddingOrder {
                    index,
                    token: e.token,
                });
            }
            if e.values.len() != n_embd {
                return Err(BatchError::EmbeddingWidth {
                    index,
                    len: e.values.len(),
                    n_embd,
                });
            }
            next = e.token + 1;
        }
        Ok(())
    }
}

/// Checks that a sequence's bidirectional spans are sorted, non-empty and disjoint, and that
/// none reaching its new tokens ends after them.
fn check_spans(seq: usize, s: &SeqSlice<'_>) -> Result<(), BatchError> {
    let new = s.cached..s.cached.saturating_add(s.len);
    let mut next = 0;
    for span in s.bidirectional {
        let (start, end) = (span.start, span.end);
        if start < next || start >= end {
            return Err(BatchError::SpanOrder { seq, start, end });
        }
        if start < new.end && end > new.start && end > new.end {
            return Err(BatchError::SpanCut {
                seq,
                start,
                end,
                new_end: new.end,
            });
        }
        next = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(start: usize, len: usize, cached: usize, table: &[u32]) -> SeqSlice<'_> {
        SeqSlice {
            start,
            len,
            cached,
            block_table: table,
            logits: LogitsWanted::Last,
            bidirectional: &[],
        }
    }

    #[test]
    fn check_accepts_a_tiled_batch_and_names_each_fault() {
        let tokens = [1u32, 2, 3, 4, 5];
        let positions: Vec<Position> = (0..5).map(Position::text).collect();
        let (a, b) = ([0u32], [1u32, 2]);
        let check = |seqs: &[SeqSlice<'_>], positions: &[Position], tokens: &[u32]| {
            Batch {
                tokens,
                positions,
                seqs,
                embeddings: &[],
            }
            .check(3, 16, 10, 4)
        };
        let good = [seq(0, 2, 0, &a), seq(2, 3, 14, &b)];
        assert_eq!(check(&good, &positions, &tokens), Ok(()));
        assert!(matches!(
            check(&good, &positions[..4], &tokens),
            Err(BatchError::Positions { .. })
        ));
        let overlapping = [seq(0, 3, 0, &a), seq(2, 3, 14, &b)];
        assert!(matches!(
            check(&overlapping, &positions, &tokens),
            Err(BatchError::NotTiled { seq: 1, .. })
        ));
        assert!(matches!(
            check(&good[..1], &positions, &tokens),
            Err(BatchError::Uncovered { covered: 2, .. })
        ));
        let short = [seq(0, 2, 0, &a), seq(2, 3, 30, &b)];
        assert!(matches!(
            check(&short, &positions, &tokens),
            Err(BatchError::BlockTableShort { seq: 1, .. })
        ));
        let missing = [9u32];
        let out_of_range = [seq(0, 2, 0, &missing), seq(2, 3, 14, &b)];
        assert!(matches!(
            check(&out_of_range, &positions, &tokens),
            Err(BatchError::BlockOutOfRange { block: 9, .. })
        ));
        assert!(matches!(
            check(&good, &positions, &[1, 2, 3, 4, 10]),
            Err(BatchError::TokenOutOfRange { token: 10, .. })
        ));
        let row = [0.0f32; 4];
        let with = |embeddings: &[TokenEmbedding<'_>]| {
            Batch {
                tokens: &tokens,
                positions: &positions,
                seqs: &good,
                embeddings,
            }
            .check(3, 16, 10, 4)
        };
        let e = |token: usize, values: &'static [f32]| TokenEmbedding { token, values };
        assert_eq!(with(&[e(1, &[0.0; 4]), e(3, &[0.0; 4])]), Ok(()));
        assert!(matches!(
            with(&[e(3, &[0.0; 4]), e(3, &[0.0; 4])]),
            Err(BatchError::EmbeddingOrder { index: 1, .. })
        ));
        assert!(matches!(
            with(&[e(5, &[0.0; 4])]),
            Err(BatchError::EmbeddingOrder { index: 0, .. })
        ));
        assert!(matches!(
            with(&[TokenEmbedding {
                token: 0,
                values: &row[..3]
            }]),
            Err(BatchError::EmbeddingWidth { len: 3, .. })
        ));
    }

    /// Spans must be sorted and non-empty, and one that reaches the new tokens (here cache
    /// indices 14..17) must end within them; one that began in the cache may end in them.
    #[test]
    fn check_names_bad_bidirectional_spans() {
        let tokens = [1u32, 2, 3];
        let positions: Vec<Position> = (0..3).map(Position::text).collect();
        let table = [0u32, 1];
        let check = |spans: &[(usize, usize)]| {
            let spans: Vec<Range<usize>> = spans.iter().map(|&(s, e)| s..e).collect();
            let seqs = [SeqSlice {
                bidirectional: &spans,
                ..seq(0, 3, 14, &table)
            }];
            Batch {
                tokens: &tokens,
                positions: &positions,
                seqs: &seqs,
                embeddings: &[],
            }
            .check(2, 16, 10, 4)
        };
        let good: [&[(usize, usize)]; 5] = [
            &[],
            &[(2, 5), (14, 17)],
            &[(10, 16)],
            &[(15, 16), (16, 17)],
            &[(0, 14), (17, 30)],
        ];
        for spans in good {
            assert_eq!(check(spans), Ok(()), "{spans:?}");
        }
        let bad: [&[(usize, usize)]; 3] = [&[(5, 5)], &[(6, 8), (7, 9)], &[(8, 9), (2, 4)]];
        for spans in bad {
            assert!(
                matches!(check(spans), Err(BatchError::SpanOrder { .. })),
                "{spans:?}"
            );
        }
        for (start, end) in [(16, 18), (10, 18), (14, 20)] {
            assert_eq!(
                check(&[(start, end)]),
                Err(BatchError::SpanCut {
                    seq: 0,
                    start,
                    end,
                    new_end: 17
                })
            );
        }
    }

    #[test]
    fn chunks_split_no_span() {
        let spans = || [4..10, 12..40];
        // Ends outside spans, or at their edges, stay.
        assert_eq!(chunk_end(0, 4, spans()), 4);
        assert_eq!(chunk_end(0, 11, spans()), 11);
        assert_eq!(chunk_end(4, 12, spans()), 12);
        // An end inside a span moves before it, or past it when the chunk starts in it.
        assert_eq!(chunk_end(0, 8, spans()), 4);
        assert_eq!(chunk_end(10, 20, spans()), 12);
        assert_eq!(chunk_end(12, 20, spans()), 40);
        assert_eq!(chunk_end(4, 6, spans()), 10);
        assert_eq!(chunk_end(5, 6, spans()), 10);
        assert_eq!(chunk_end(0, 8, []), 8);
    }
}
