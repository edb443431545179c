//! The flat multi-sequence batch a forward pass consumes (vLLM's "varlen" layout): the new
//! tokens of every scheduled sequence back to back, each with its position, plus one record
//! per sequence saying where its tokens sit, how much of it is already in the KV cache, and
//! which of its rows need logits.

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
}

/// All tokens scheduled for one forward pass.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [Position],
    pub seqs: &'a [SeqSlice<'a>],
}

impl Batch<'_> {
    /// Total logits rows the forward pass returns, in sequence order.
    pub fn logits_rows(&self) -> usize {
        self.seqs.iter().map(|s| s.logits.rows(s.len)).sum()
    }
}
