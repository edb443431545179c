//! Media in a prompt: the embeddings that replace its placeholder tokens, and the multimodal
//! rotary positions (Qwen2-VL, Qwen2.5-VL) of its tokens: where each sits in (time, height,
//! width), as transformers' `get_rope_index` places it. Text advances all three
//! components together; the tokens of an image share the time of their first token and take
//! its position plus their row and column in the merged patch grid; a video's temporal
//! patches advance the time by its step each; the text after a medium resumes one past the
//! largest position it used.

use std::ops::Range;

use crate::batch::Position;

/// Where every token of a sequence sits for the rotary embedding: the prompt's positions as
/// [`positions`] assigns them (empty for a text-only prompt), and the offset of every later
/// token from its index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaPositions {
    /// Every prompt token's position; empty for text positions.
    pub prompt: Vec<Position>,
    /// Tokens after the prompt sit at their index plus this in all three components.
    pub delta: i64,
}

impl MediaPositions {
    /// The position of the token at `index` of a sequence that starts with this prompt.
    pub fn at(&self, index: usize) -> Position {
        match self.prompt.get(index) {
            Some(&p) => p,
            None => Position::text((index as i64 + self.delta).max(0) as usize),
        }
    }
}

/// What a prompt carries besides its token ids.
#[derive(Clone, Debug, Default)]
pub struct PromptMedia {
    /// (prompt index, row of `n_embd` values) replacing those tokens' embeddings, in
    /// increasing index order.
    pub embeddings: Vec<(usize, Vec<f32>)>,
    pub positions: MediaPositions,
    /// Runs of prompt indices whose tokens attend to each other both ways (Gemma 3's
    /// images), sorted and disjoint, as [`crate::batch::SeqSlice::bidirectional`] takes
    /// them; empty when attention is causal throughout (Qwen2.5-VL).
    pub bidirectional: Vec<Range<usize>>,
}

impl PromptMedia {
    /// The position of the token at `index` of a sequence that starts with this prompt.
    pub fn position(&self, index: usize) -> Position {
        self.positions.at(index)
    }

    /// Index of the first token whose embedding is given (no text-only prefix beyond it can
    /// be shared with another prompt), or `usize::MAX`.
    pub fn first_media_token(&self) -> usize {
        self.embeddings.first().map_or(usize::MAX, |e| e.0)
    }
}

/// One image's or video's merged patch grid in the prompt: `frames` grids of rows x columns
/// of language-model tokens, written as a run of `token`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MediaGrid {
    /// The placeholder its tokens carry (an image's and a video's differ).
    pub token: u32,
    /// Temporal patches: 1 for an image.
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
    /// Temporal positions between consecutive temporal patches (Qwen2.5-VL:
    /// `tokens_per_second * second_per_grid_t`); positions are truncated after multiplying,
    /// in f32 as transformers computes them.
    pub time_step: f32,
}

impl MediaGrid {
    /// A still image: one temporal patch.
    pub fn image(token: u32, rows: usize, cols: usize) -> MediaGrid {
        MediaGrid {
            token,
            frames: 1,
            rows,
            cols,
            time_step: 0.0,
        }
    }

    /// Tokens of the whole grid.
    pub fn len(&self) -> usize {
        self.frames * self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Temporal offset of temporal patch `frame` from the grid's start.
    fn time(&self, frame: usize) -> u32 {
        (frame as f32 * self.time_step) as u32
    }
}

/// Why positions could not be assigned.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum PositionError {
    #[error(
        "the prompt has {found} tokens of placeholder {token} where its media need {expected}"
    )]
    TokenCount {
        token: u32,
        found: usize,
        expected: usize,
    },
}

/// Positions of `tokens`, whose runs of the grids' placeholder tokens are `grids`' media in
/// order (each run exactly as long as its grid), and the offset of every later position from
/// its index (transformers' `rope_deltas`): generated token `i` sits at `i + delta` in all
/// components.
///
/// The text after a medium resumes one past the largest position the medium used, its
/// temporal ones included, as Qwen's released code, vLLM and transformers before 5.3 do.
/// transformers 5.3 and later resume after the spatial extent only, so for a video their
/// in-prompt text positions fall back below the video's while their `rope_deltas` (taken
/// from the largest position) still continue after it; weft keeps the consistent rule.
pub fn positions(tokens: &[u32], grids: &[MediaGrid]) -> Result<MediaPositions, PositionError> {
    let mut placeholders: Vec<u32> = grids.iter().map(|g| g.token).collect();
    placeholders.sort_unstable();
    placeholders.dedup();
    for &token in &placeholders {
        let expected: usize = grids
            .iter()
            .filter(|g| g.token == token)
            .map(|g| g.len())
            .sum();
        let found = tokens.iter().filter(|&&t| t == token).count();
        if found != expected {
            return Err(PositionError::TokenCount {
                token,
                found,
                expected,
            });
        }
    }
    let mut out = Vec::with_capacity(tokens.len());
    let (mut next, mut i) = (0u32, 0);
    let mut grids = grids.iter().peekable();
    while i < tokens.len() {
        let Some(&g) = grids.next_if(|g| g.token == tokens[i]) else {
            out.push(Position([next; 3]));
            next += 1;
            i += 1;
            continue;
        };
        let mut last = 0;
        for f in 0..g.frames {
            let t = g.time(f);
            last = last.max(t);
            for r in 0..g.rows {
                for c in 0..g.cols {
                    out.push(Position([next + t, next + r as u32, next + c as u32]));
                }
            }
        }
        i += g.len();
        let spatial = g.rows.max(g.cols).saturating_sub(1) as u32;
        next += last.max(spatial) + 1;
    }
    Ok(MediaPositions {
        delta: i64::from(next) - tokens.len() as i64,
        prompt: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' positions for the golden prompts of tests/data/hf-tiny-vl.
    #[test]
    fn positions_match_transformers() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/hf-tiny-vl/golden.json"
        );
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ints = |v: &serde_json::Value| -> Vec<u64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect()
        };
        for case in golden["cases"].as_array().unwrap() {
            let tokens: Vec<u32> = ints(&case["input_ids"]).iter().map(|&t| t as u32).collect();
            let grids: Vec<MediaGrid> = case["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|name| {
                    let g = ints(&golden["images"][name.as_str().unwrap()]["image_grid_thw"]);
                    MediaGrid::image(409, g[1] as usize / 2, g[2] as usize / 2)
                })
                .collect();
            let MediaPositions { prompt: got, delta } = positions(&tokens, &grids).unwrap();
            let want = case["position_ids"].as_array().unwrap();
            for (i, p) in got.iter().enumerate() {
                for (c, (&ours, theirs)) in p.0.iter().zip(want).enumerate() {
                    assert_eq!(
                        u64::from(ours),
                        theirs[i].as_u64().unwrap(),
                        "{} {i} {c}",
                        case["name"]
                    );
                }
            }
            assert_eq!(delta, case["rope_deltas"].as_i64().unwrap());
        }
        assert_eq!(
            positions(&[1, 409, 2], &[MediaGrid::image(409, 1, 2)]),
            Err(PositionError::TokenCount {
                token: 409,
                found: 1,
                expected: 2
            })
        );
    }

    /// A video of three temporal patches, 4 time positions apart, between text: the text after
    /// it resumes past its last temporal position.
    #[test]
    fn video_positions_advance_with_time() {
        let mut tokens = vec![1, 2, 3];
        tokens.extend([9; 12]);
        tokens.extend([4, 5]);
        let grid = MediaGrid {
            token: 9,
            frames: 3,
            rows: 2,
            cols: 2,
            time_step: 4.0,
        };
        let got = positions(&tokens, &[grid]).unwrap();
        let component = |c: usize| -> Vec<u32> { got.prompt.iter().map(|p| p.0[c]).collect() };
        assert_eq!(
            component(0),
            [0, 1, 2, 3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11, 11, 12, 13]
        );
        assert_eq!(
            component(1),
            [0, 1, 2, 3, 3, 4, 4, 3, 3, 4, 4, 3, 3, 4, 4, 12, 13]
        );
        assert_eq!(
            component(2),
            [0, 1, 2, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 12, 13]
        );
        assert_eq!(got.delta, 14 - 17);
        // A fractional step is truncated after multiplying: 0, 2.5, 5 -> 0, 2, 5.
        let half = MediaGrid {
            time_step: 2.5,
            ..grid
        };
        let got = positions(&tokens, &[half]).unwrap();
        let times: Vec<u32> = got.prompt[3..15]
            .iter()
            .step_by(4)
            .map(|p| p.0[0])
            .collect();
        assert_eq!(times, [3, 5, 8]);
    }
}
