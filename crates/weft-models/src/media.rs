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
    let mut writer = PositionWriter::default();
    let mut i = 0;
    let mut grids = grids.iter().peekable();
    while i < tokens.len() {
        match grids.next_if(|g| g.token == tokens[i]) {
            Some(g) => {
                writer.grid(g);
                i += g.len();
            }
            None => {
                writer.text(1);
                i += 1;
            }
        }
    }
    Ok(writer.finish())
}

/// Writes a prompt's positions run by run, as transformers' `get_rope_index` of Qwen2-VL,
/// Qwen2.5-VL and Qwen2.5-Omni does: each run starts one past the largest position of the
/// run before it; text advances all three components by one per token.
#[derive(Clone, Debug, Default)]
pub struct PositionWriter {
    out: Vec<Position>,
    /// Where the next run starts.
    next: u32,
    /// One past the largest position so far (for the generated tokens' offset).
    end: u32,
}

impl PositionWriter {
    /// `n` text tokens (or tokens placed like text: Qwen2.5-Omni's audio).
    pub fn text(&mut self, n: usize) {
        for _ in 0..n {
            self.push_run(&[Position([self.next; 3])]);
        }
    }

    /// `n` tokens at one position (Qwen2.5-Omni's `<|vision_bos|><|audio_bos|>` before a
    /// video with its audio, and the two end tokens after it).
    pub fn shared(&mut self, n: usize) {
        let run = vec![Position([self.next; 3]); n];
        self.push_run(&run);
    }

    /// A medium's whole grid.
    pub fn grid(&mut self, g: &MediaGrid) {
        let start = self.next;
        let run: Vec<Position> = (0..g.frames)
            .flat_map(|f| grid_frame(g, f, start))
            .collect();
        self.push_run(&run);
    }

    /// A video and its audio track interleaved per chunk of time (Qwen2.5-Omni with
    /// `use_audio_in_video`): `pieces` in prompt order, video pieces ranges of the grid's
    /// tokens, audio pieces ranges of the audio's tokens, which advance one position per
    /// token from the same start as the video. The next run starts one past the largest
    /// position of the last piece, as transformers' code has it.
    pub fn interleaved(&mut self, g: &MediaGrid, pieces: &[Piece]) {
        let start = self.next;
        let video: Vec<Position> = (0..g.frames)
            .flat_map(|f| grid_frame(g, f, start))
            .collect();
        for piece in pieces {
            let run: Vec<Position> = match piece {
                Piece::Video(r) => video[r.clone()].to_vec(),
                Piece::Audio(r) => r.clone().map(|k| Position([start + k as u32; 3])).collect(),
            };
            self.push_run(&run);
        }
    }

    /// Positions written, and every later token's offset.
    pub fn finish(self) -> MediaPositions {
        MediaPositions {
            delta: i64::from(self.end) - self.out.len() as i64,
            prompt: self.out,
        }
    }

    fn push_run(&mut self, run: &[Position]) {
        let Some(max) = run.iter().flat_map(|p| p.0).max() else {
            return;
        };
        self.out.extend_from_slice(run);
        self.next = max + 1;
        self.end = self.end.max(max + 1);
    }
}

/// The positions of temporal patch `frame` of grid `g` starting at `start`.
fn grid_frame(g: &MediaGrid, frame: usize, start: u32) -> impl Iterator<Item = Position> + '_ {
    let t = start + g.time(frame);
    (0..g.rows as u32)
        .flat_map(move |r| (0..g.cols as u32).map(move |c| Position([t, start + r, start + c])))
}

/// One run of a video interleaved with its audio ([`PositionWriter::interleaved`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Tokens of the video's grid, in grid order.
    Video(Range<usize>),
    /// Tokens of its audio.
    Audio(Range<usize>),
}

/// Splits tokens by the time they stand for, as transformers' `get_chunked_index`: `times`
/// (each token's temporal position from the medium's start, non-decreasing) into runs, a new
/// run starting at the first token at or past the next multiple of `per_chunk` (one step per
/// token, so a token that jumps several chunks ends one run each time).
pub fn chunked_index(times: &[u32], per_chunk: u32) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut chunk) = (0, 1u64);
    for (i, &t) in times.iter().enumerate() {
        if u64::from(t) >= chunk * u64::from(per_chunk) {
            runs.push(start..i);
            start = i;
            chunk += 1;
        }
    }
    runs.push(start..times.len());
    runs
}

/// The prompt order of a video's tokens (grid `g`) and its audio's `audio_tokens` (one per
/// temporal position) interleaved per `per_chunk` temporal positions: the video's run of
/// each chunk, then the audio's (transformers' Qwen2.5-Omni processor).
pub fn interleave(g: &MediaGrid, audio_tokens: usize, per_chunk: u32) -> Vec<Piece> {
    let per_frame = g.rows * g.cols;
    let video_times: Vec<u32> = (0..g.frames)
        .flat_map(|f| std::iter::repeat_n(g.time(f), per_frame))
        .collect();
    let audio_times: Vec<u32> = (0..audio_tokens as u32).collect();
    let video = chunked_index(&video_times, per_chunk);
    let audio = chunked_index(&audio_times, per_chunk);
    let mut pieces = Vec::new();
    for j in 0..video.len().max(audio.len()) {
        if let Some(r) = video.get(j) {
            pieces.push(Piece::Video(r.clone()));
        }
        if let Some(r) = audio.get(j) {
            pieces.push(Piece::Audio(r.clone()));
        }
    }
    pieces
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

    /// transformers' `get_chunked_index`, including its one-run-per-token step over a gap
    /// and the empty run of no tokens.
    #[test]
    fn chunks_split_by_time_as_transformers() {
        let times = [0, 0, 25, 25, 50, 50, 75, 75, 100];
        assert_eq!(chunked_index(&times, 50), [0..4, 4..8, 8..9]);
        assert_eq!(chunked_index(&[0, 125, 125], 50), [0..1, 1..2, 2..3]);
        assert_eq!(chunked_index(&[], 50), vec![0..0]);
    }

    /// A video of three temporal patches 25 positions apart (2 x 1 tokens each) with 60
    /// audio tokens, per 50 positions: video 0-1, audio 0-49, video 2, audio 50-59; both
    /// start at the same position, and the next run starts after the last piece.
    #[test]
    fn audio_interleaves_with_video_by_time() {
        let g = MediaGrid {
            token: 9,
            frames: 3,
            rows: 2,
            cols: 1,
            time_step: 25.0,
        };
        let pieces = interleave(&g, 60, 50);
        assert_eq!(
            pieces,
            [
                Piece::Video(0..4),
                Piece::Audio(0..50),
                Piece::Video(4..6),
                Piece::Audio(50..60)
            ]
        );
        let mut w = PositionWriter::default();
        w.text(2);
        w.shared(2);
        w.interleaved(&g, &pieces);
        w.shared(2);
        let got = w.finish();
        let p = |i: usize| got.prompt[i].0;
        assert_eq!(p(2), [2, 2, 2]);
        assert_eq!(p(3), [2, 2, 2]);
        assert_eq!(p(4), [3, 3, 3]); // first video token
        assert_eq!(p(5), [3, 4, 3]);
        assert_eq!(p(8), [3, 3, 3]); // first audio token
        assert_eq!(p(58), [53, 3, 3]); // third temporal patch
        assert_eq!(p(60), [53, 53, 53]); // audio token 50
        assert_eq!(p(69), [62, 62, 62]);
        assert_eq!(p(70), [63, 63, 63]); // the end tokens, after the last piece
        assert_eq!(p(71), [63, 63, 63]);
        assert_eq!(got.delta, 64 - 72);
    }
}
