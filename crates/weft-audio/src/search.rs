//! Decoding one 30-second window, with CTranslate2's rules (what faster-whisper runs): beam
//! search keeping `2 * beam` candidates per step and `beam` finished hypotheses, or
//! temperature sampling of `best_of` independent hypotheses; suppressed tokens; Whisper's
//! timestamp rules; the no-speech probability read at the start-of-transcript position.

use weft_kernels::pool::ThreadPool;

use crate::decoder::{CrossKv, DecoderState};
use crate::model::Whisper;
use weft_kernels::float_ops::log_softmax_inplace;

#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// Beams for temperature 0 (1 is greedy).
    pub beam_size: usize,
    /// Hypotheses sampled at temperatures above 0.
    pub best_of: usize,
    pub temperature: f32,
    /// Forbid a blank or end of text as the first token.
    pub suppress_blank: bool,
    /// Apply the timestamp rules (the prompt does not end in `<|notimestamps|>`).
    pub timestamps: bool,
    /// The first timestamp is at most this many 20 ms steps.
    pub max_initial_timestamp_index: usize,
    pub length_penalty: f32,
    pub seed: u64,
}

/// The best hypothesis of one window.
#[derive(Clone, Debug)]
pub struct DecodeResult {
    /// Generated tokens, without the end of text.
    pub tokens: Vec<u32>,
    /// Sum of log-probabilities, end of text included.
    pub sum_logprob: f64,
    /// `sum_logprob / (tokens + 1)`, as faster-whisper reports it.
    pub avg_logprob: f64,
    pub no_speech_prob: f32,
    pub temperature: f32,
}

struct Hypothesis {
    tokens: Vec<u32>,
    score: f64,
}

/// Token masks and timestamp rules applied to one row of logits before the log-softmax.
struct Rules<'a> {
    model: &'a Whisper,
    opts: &'a DecodeOptions,
}

impl Rules<'_> {
    fn apply(&self, step: usize, generated: &[u32], logits: &mut [f32]) {
        let t = &self.model.tokens;
        let ninf = f32::NEG_INFINITY;
        for &id in &t.suppress {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = ninf;
            }
        }
        if step == 0 && self.opts.suppress_blank {
            for &id in &t.suppress_begin {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = ninf;
                }
            }
        }
        if !self.opts.timestamps {
            return;
        }
        let tb = t.timestamp_begin as usize;
        let eot = t.eot as usize;
        logits[t.no_timestamps as usize] = ninf;
        let mut check_prob = false;
        if step == 0 {
            // The first token is a timestamp, not later than the initial limit.
            logits[..tb].fill(ninf);
            let last_allowed = tb + self.opts.max_initial_timestamp_index;
            if last_allowed + 1 < logits.len() {
                logits[last_allowed + 1..].fill(ninf);
            }
        } else {
            let last = *generated.last().expect("step > 0");
            if last as usize >= tb {
                let penultimate = if generated.len() >= 2 {
                    generated[generated.len() - 2]
                } else {
                    last
                };
                if penultimate as usize >= tb {
                    // A pair closed a segment: text (or the end) must follow.
                    logits[tb..].fill(ninf);
                } else {
                    // An opening timestamp after text: another timestamp or the end, and
                    // timestamps do not go back.
                    logits[..eot].fill(ninf);
                    logits[tb..last as usize].fill(ninf);
                    check_prob = true;
                }
            } else {
                check_prob = true;
                if let Some(&ts) = generated.iter().rev().find(|&&g| g as usize >= tb) {
                    logits[tb..=ts as usize].fill(ninf);
                }
            }
        }
        if check_prob {
            // If all timestamps together are more likely than any single text token, emit a
            // timestamp.
            let mut lp = logits.to_vec();
            log_softmax_inplace(&mut lp);
            let text_max = lp[..tb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let ts_max = lp[tb..].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let ts_sum: f64 = lp[tb..].iter().map(|&v| ((v - ts_max) as f64).exp()).sum();
            let ts_lse = ts_max as f64 + ts_sum.ln();
            if ts_lse > text_max as f64 {
                logits[..tb].fill(ninf);
            }
        }
    }
}

/// A small deterministic generator (SplitMix64) for temperature sampling.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Decodes one window given its prompt (`<|startofprev|>` context, the start-of-transcript
/// sequence, maybe `<|notimestamps|>`).
pub fn decode_window(
    model: &Whisper,
    pool: &ThreadPool,
    cross: &CrossKv,
    prompt: &[u32],
    opts: &DecodeOptions,
    rng: &mut Rng,
) -> DecodeResult {
    let t = &model.tokens;
    let sot_index = prompt
        .iter()
        .position(|&p| p == t.sot)
        .expect("the prompt holds <|startoftranscript|>");
    let mut state = DecoderState::new(model, cross, 1);
    // Everything but the last prompt token is context; the last one starts decoding.
    let context: Vec<(usize, u32)> = prompt[..prompt.len() - 1].iter().map(|&p| (0, p)).collect();
    let sot_in_context = sot_index < context.len();
    let mut no_speech_prob = 0.0;
    if !context.is_empty() {
        let want: Vec<usize> = if sot_in_context {
            vec![sot_index]
        } else {
            Vec::new()
        };
        let logits = state.forward(pool, &context, &want);
        if sot_in_context {
            no_speech_prob = no_speech(&logits, t.no_speech);
        }
    }
    let start = *prompt.last().expect("a non-empty prompt");
    let max_steps = (model.config.n_text_ctx / 2)
        .min(model.config.n_text_ctx.saturating_sub(context.len()))
        .max(1);
    let rules = Rules { model, opts };
    let mut out = if opts.temperature > 0.0 {
        sample(
            &mut state,
            pool,
            start,
            max_steps,
            &rules,
            rng,
            !sot_in_context,
            &mut no_speech_prob,
        )
    } else {
        beam_search(
            &mut state,
            pool,
            start,
            max_steps,
            &rules,
            !sot_in_context,
            &mut no_speech_prob,
        )
    };
    let lp = opts.length_penalty as f64;
    for h in &mut out {
        h.score /= (h.tokens.len().max(1) as f64).powf(lp);
        tracing::debug!("hypothesis {:.5} {:?}", h.score, h.tokens);
    }
    let best = out
        .into_iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .expect("decoding yields at least one hypothesis");
    let len = best.tokens.len();
    let sum = best.score * (len.max(1) as f64).powf(lp);
    DecodeResult {
        tokens: best.tokens,
        sum_logprob: sum,
        avg_logprob: sum / (len + 1) as f64,
        no_speech_prob,
        temperature: opts.temperature,
    }
}

fn no_speech(logits: &[f32], id: u32) -> f32 {
    let mut lp = logits.to_vec();
    log_softmax_inplace(&mut lp);
    lp[id as usize].exp()
}

/// Beam search as CTranslate2 runs it: the first step expands the single prompt; each step
/// keeps the best `2 * beam` (sequence, token) pairs; a finished pair is recorded and its slot
/// taken by the next unfinished candidate; it stops once `beam` hypotheses are finished.
fn beam_search(
    state: &mut DecoderState,
    pool: &ThreadPool,
    start: u32,
    max_steps: usize,
    rules: &Rules,
    sot_is_start: bool,
    no_speech_prob: &mut f32,
) -> Vec<Hypothesis> {
    let beam = rules.opts.beam_size.max(1);
    let eot = rules.model.tokens.eot;
    let vocab = rules.model.config.n_vocab;
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new()];
    let mut scores: Vec<f64> = vec![0.0];
    let mut last: Vec<u32> = vec![start];
    let mut finished: Vec<Hypothesis> = Vec::new();
    for step in 0..max_steps {
        let inputs: Vec<(usize, u32)> = last.iter().copied().enumerate().collect();
        let rows: Vec<usize> = (0..inputs.len()).collect();
        let mut logits = state.forward(pool, &inputs, &rows);
        if step == 0 && sot_is_start {
            *no_speech_prob = no_speech(&logits[..vocab], rules.model.tokens.no_speech);
        }
        // (score, sequence, token) candidates.
        let mut cands: Vec<(f64, usize, u32)> = Vec::with_capacity(seqs.len() * 2 * beam);
        for (b, row) in logits.chunks_exact_mut(vocab).enumerate() {
            rules.apply(step, &seqs[b], row);
            log_softmax_inplace(row);
            let mut top: Vec<(f64, usize, u32)> = Vec::with_capacity(2 * beam + 1);
            for (id, &lp) in row.iter().enumerate() {
                if lp == f32::NEG_INFINITY {
                    continue;
                }
                let s = scores[b] + lp as f64;
                if top.len() < 2 * beam || s > top[top.len() - 1].0 {
                    let at = top.partition_point(|c| c.0 >= s);
                    top.insert(at, (s, b, id as u32));
                    top.truncate(2 * beam);
                }
            }
            cands.extend(top);
        }
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        cands.truncate(2 * beam);
        let last_step = step + 1 == max_steps;
        let mut parents = Vec::with_capacity(beam);
        let mut next_seqs = Vec::with_capacity(beam);
        let mut next_scores = Vec::with_capacity(beam);
        let mut next_last = Vec::with_capacity(beam);
        let mut spare = beam;
        for k in 0..beam.min(cands.len()) {
            let mut pick = cands[k];
            if pick.2 == eot || last_step {
                let mut tokens = seqs[pick.1].clone();
                if pick.2 != eot {
                    tokens.push(pick.2);
                }
                finished.push(Hypothesis {
                    tokens,
                    score: pick.0,
                });
                // Replace it by the next candidate that does not end.
                match (spare..cands.len()).find(|&j| cands[j].2 != eot) {
                    Some(j) => {
                        spare = j + 1;
                        pick = cands[j];
                    }
                    None => continue,
                }
            }
            let mut s = seqs[pick.1].clone();
            s.push(pick.2);
            parents.push(pick.1);
            next_seqs.push(s);
            next_scores.push(pick.0);
            next_last.push(pick.2);
        }
        if finished.len() >= beam || last_step || next_seqs.is_empty() {
            break;
        }
        state.reorder(&parents);
        seqs = next_seqs;
        scores = next_scores;
        last = next_last;
    }
    if finished.is_empty() {
        finished.push(Hypothesis {
            tokens: seqs.swap_remove(0),
            score: scores[0],
        });
    }
    finished
}

/// Temperature sampling of `best_of` hypotheses from the full distribution.
#[allow(clippy::too_many_arguments)]
fn sample(
    state: &mut DecoderState,
    pool: &ThreadPool,
    start: u32,
    max_steps: usize,
    rules: &Rules,
    rng: &mut Rng,
    sot_is_start: bool,
    no_speech_prob: &mut f32,
) -> Vec<Hypothesis> {
    let n = rules.opts.best_of.max(1);
    let temp = rules.opts.temperature as f64;
    let eot = rules.model.tokens.eot;
    let vocab = rules.model.config.n_vocab;
    state.reorder(&vec![0; n]);
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut scores = vec![0.0f64; n];
    let mut alive: Vec<usize> = (0..n).collect();
    let mut last = vec![start; n];
    let mut done = Vec::new();
    for step in 0..max_steps {
        let inputs: Vec<(usize, u32)> = alive.iter().map(|&i| (i, last[i])).collect();
        let rows: Vec<usize> = (0..inputs.len()).collect();
        let mut logits = state.forward(pool, &inputs, &rows);
        if step == 0 && sot_is_start {
            *no_speech_prob = no_speech(&logits[..vocab], rules.model.tokens.no_speech);
        }
        let mut still = Vec::with_capacity(alive.len());
        for (row, &i) in logits.chunks_exact_mut(vocab).zip(&alive) {
            rules.apply(step, &seqs[i], row);
            log_softmax_inplace(row);
            // Draw from softmax(logprob / T) by inverse transform.
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let weights: Vec<f64> = row
                .iter()
                .map(|&lp| ((lp as f64 - max) / temp).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            let mut u = rng.next_f64() * total;
            let mut tok = weights.len() - 1;
            for (id, &w) in weights.iter().enumerate() {
                if u < w {
                    tok = id;
                    break;
                }
                u -= w;
            }
            scores[i] += row[tok] as f64;
            last[i] = tok as u32;
            if tok as u32 == eot || step + 1 == max_steps {
                if tok as u32 != eot {
                    seqs[i].push(tok as u32);
                }
                done.push(Hypothesis {
                    tokens: std::mem::take(&mut seqs[i]),
                    score: scores[i],
                });
            } else {
                seqs[i].push(tok as u32);
                still.push(i);
            }
        }
        if still.is_empty() {
            break;
        }
        alive = still;
    }
    done
}
