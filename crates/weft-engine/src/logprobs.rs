//! Log-probabilities of a sampled token and of the most likely alternatives, from one raw
//! logits row (log-softmax, summed in f64).

/// The chosen token's log-probability and the `top` most likely tokens with theirs.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// Computes [`TokenLogprobs`] for `token` and the `top` best tokens of `logits`.
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |l: f32| -> f32 {
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            (f64::from(l) - log_z) as f32
        }
    };
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if l.is_nan() || (best.len() == top && l <= best[top - 1].1) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (id as u32, l));
            best.truncate(top);
        }
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best.into_iter().map(|(id, l)| (id, lp(l))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_softmax() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let want = |i: usize| (f64::from(logits[i]).exp() / z).ln() as f32;
        let r = token_logprobs(&logits, 2, 3);
        assert!((r.logprob - want(2)).abs() < 1e-6);
        let ids: Vec<u32> = r.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        for (id, l) in r.top {
            assert!((l - want(id as usize)).abs() < 1e-6);
        }
        let total: f64 = (0..5).map(|i| f64::from(want(i)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn zero_top_gives_only_the_chosen_token() {
        let r = token_logprobs(&[0.0, 0.0], 1, 0);
        assert!(r.top.is_empty());
        assert!((r.logprob - 0.5f32.ln()).abs() < 1e-6);
    }
}
