//! Media in a prompt: the embeddings that replace its placeholder tokens, and the multimodal
//! rotary positions (Qwen2-VL, Qwen2.5-VL) of its tokens: where each sits in (time, height,
//! width), as transformers' `get_rope_index` places it. Text advances all three
//! components together; the tokens of an image share the time of their first token and take
//! its position plus their row and column in the merged patch grid; the text after an image
//! resumes at that first position plus the grid's longer side.

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

/// One image's merged patch grid in the prompt (rows x columns of language-model tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaGrid {
    pub rows: usize,
    pub cols: usize,
}

/// Why positions could not be assigned.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum PositionError {
    #[error("the prompt has {found} image tokens where its images need {expected}")]
    TokenCount { found: usize, expected: usize },
}

/// Positions of `tokens`, whose runs of `image_token` are `grids`' images in order (each run
/// exactly `rows * cols` long), and the offset of every later position from its index
/// (transformers' `rope_deltas`): generated token `i` sits at `i + delta` in all components.
pub fn positions(
    tokens: &[u32],
    image_token: u32,
    grids: &[MediaGrid],
) -> Result<MediaPositions, PositionError> {
    let expected: usize = grids.iter().map(|g| g.rows * g.cols).sum();
    let found = tokens.iter().filter(|&&t| t == image_token).count();
    if found != expected {
        return Err(PositionError::TokenCount { found, expected });
    }
    let mut out = Vec::with_capacity(tokens.len());
    let (mut next, mut i) = (0u32, 0);
    let mut grids = grids.iter();
    while i < tokens.len() {
        if tokens[i] != image_token {
            out.push(Position([next; 3]));
            next += 1;
            i += 1;
            continue;
        }
        // Counted above: a run of image tokens always has its grid, and the grid's size.
        let g = grids.next().expect("image tokens counted");
        for r in 0..g.rows {
            for c in 0..g.cols {
                out.push(Position([next, next + r as u32, next + c as u32]));
            }
        }
        i += g.rows * g.cols;
        next += g.rows.max(g.cols) as u32;
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
                    MediaGrid {
                        rows: g[1] as usize / 2,
                        cols: g[2] as usize / 2,
                    }
                })
                .collect();
            let MediaPositions { prompt: got, delta } = positions(&tokens, 409, &grids).unwrap();
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
            positions(&[1, 409, 2], 409, &[]),
            Err(PositionError::TokenCount {
                found: 1,
                expected: 0
            })
        );
    }
}
