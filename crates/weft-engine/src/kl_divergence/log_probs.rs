//! llama.cpp's compact record of one position's log-probabilities (`llama-perplexity
//! --kl-divergence-base`): the f32 `scale` and `min` (little-endian, in the place of four u16
//! words), then one u16 `q` per vocabulary entry, padded to an even count, with
//! log p = min + scale * q. Only the 16 nats below the top logit are kept: lower entries are
//! stored as 0 and ignored when the divergence is computed, where they weigh below e^-16.

/// Nats below the most likely token that a record resolves.
pub(crate) const RANGE_NATS: f32 = 16.0;

/// Bytes of one record for a vocabulary of `n_vocab` tokens.
pub fn record_bytes(n_vocab: usize) -> usize {
    2 * (2 * n_vocab.div_ceil(2) + 4)
}

/// Writes the record of `logits` into `record` (`record_bytes(logits.len())` long), with
/// llama.cpp's arithmetic: f32 logits, f32 `exp` summed in f64, ties to even.
pub fn encode(logits: &[f32], record: &mut [u8]) {
    let max = logits.iter().copied().fold(logits[0], f32::max);
    let min = logits.iter().copied().fold(logits[0], f32::min);
    let min = min.max(max - RANGE_NATS);
    let log_sum_exp = sum_exp(logits, max).ln() as f32;
    let scale = (max - min) / 65535.0;
    let (head, q) = record.split_at_mut(8);
    head[..4].copy_from_slice(&scale.to_le_bytes());
    head[4..].copy_from_slice(&(min - max - log_sum_exp).to_le_bytes());
    q.fill(0);
    if scale == 0.0 {
        return; // every logit is equal: min alone is each log-probability
    }
    let inv_scale = 1.0 / scale;
    for (&l, out) in logits.iter().zip(q.chunks_exact_mut(2)) {
        if l > min {
            let v = (inv_scale * (l - min)).round_ties_even() as u16;
            out.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// sum(exp(l - max)), each term in f32 as llama.cpp computes it.
pub(crate) fn sum_exp(logits: &[f32], max: f32) -> f64 {
    logits.iter().map(|&l| f64::from((l - max).exp())).sum()
}

/// A record read back.
pub struct Record<'a> {
    scale: f32,
    min: f32,
    q: &'a [u8],
}

impl<'a> Record<'a> {
    /// `record` is `record_bytes(n_vocab)` long.
    pub fn new(record: &'a [u8], n_vocab: usize) -> Record<'a> {
        let f32_at = |i: usize| f32::from_le_bytes(record[i..i + 4].try_into().unwrap());
        Record {
            scale: f32_at(0),
            min: f32_at(4),
            q: &record[8..8 + 2 * n_vocab],
        }
    }

    /// The stored log-probability of token `i`.
    pub fn log_prob(&self, i: usize) -> f32 {
        self.decode([self.q[2 * i], self.q[2 * i + 1]])
    }

    /// Every token's stored log-probability, in order.
    pub fn log_probs(&self) -> impl Iterator<Item = f32> + '_ {
        self.q.chunks_exact(2).map(|b| self.decode([b[0], b[1]]))
    }

    fn decode(&self, q: [u8; 2]) -> f32 {
        self.scale * f32::from(u16::from_le_bytes(q)) + self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_size_pads_the_vocabulary_to_an_even_count() {
        assert_eq!(record_bytes(4), 2 * (4 + 4));
        assert_eq!(record_bytes(5), 2 * (6 + 4));
        assert_eq!(record_bytes(49152), 2 * (49152 + 4));
    }

    #[test]
    fn encodes_as_worked_out_by_hand() {
        // max - min = 65535/4096, so scale = 1/4096 and q = 4096 * (l - min) exactly, before
        // rounding: 1.5 and 2.5 are ties (to even: 2 and 2).
        let top = 65535.0f32 / 4096.0;
        let logits = [top, 1.0, 0.0, 1.5 / 4096.0, 2.5 / 4096.0];
        let sum: f64 = logits.iter().map(|&l| f64::from((l - top).exp())).sum();
        let log_sum_exp = sum.ln() as f32;
        let mut rec = vec![0xAAu8; record_bytes(5)];
        encode(&logits, &mut rec);
        assert_eq!(&rec[..4], &(1.0f32 / 4096.0).to_le_bytes());
        assert_eq!(&rec[4..8], &(-top - log_sum_exp).to_le_bytes());
        let q: Vec<u16> = rec[8..]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(q, [65535, 4096, 0, 2, 2, 0]);
        let r = Record::new(&rec, 5);
        for (i, &l) in logits.iter().enumerate() {
            let exact = l - top - log_sum_exp;
            assert!((r.log_prob(i) - exact).abs() <= 1e-3, "token {i}");
        }
        assert_eq!(r.log_probs().count(), 5);
    }

    #[test]
    fn keeps_only_sixteen_nats_below_the_top() {
        let logits = [30.0f32, 20.0, 0.0, -100.0];
        let mut rec = vec![0u8; record_bytes(4)];
        encode(&logits, &mut rec);
        let r = Record::new(&rec, 4);
        // min is clamped to max - 16 = 14: tokens at 0 and -100 store q = 0, i.e. min.
        assert_eq!(r.log_prob(2), r.log_prob(3));
        assert!((r.log_prob(2) - r.log_prob(0) + 16.0).abs() < 1e-3);
        assert!((r.log_prob(1) - r.log_prob(0) + 10.0).abs() < 1e-3);
    }

    #[test]
    fn equal_logits_store_zero_scale() {
        let mut rec = vec![0xFFu8; record_bytes(3)];
        encode(&[1.5; 3], &mut rec);
        let r = Record::new(&rec, 3);
        for i in 0..3 {
            assert!((r.log_prob(i) - (1.0f32 / 3.0).ln()).abs() < 1e-6);
        }
        assert!(rec[8..].iter().all(|&b| b == 0));
    }
}
