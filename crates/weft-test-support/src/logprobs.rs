/// log softmax of one row of logits, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    logits
        .iter()
        .map(|&l| f64::from(l - max) - sum.ln())
        .collect()
}

/// Largest |ours - theirs| over the entries where the reference `theirs` is at least
/// `min_logprob` (tokens with any probability mass), and over all entries.
pub fn logprob_diff(ours: &[f64], theirs: &[f64], min_logprob: f64) -> (f64, f64) {
    assert_eq!(ours.len(), theirs.len(), "vocabulary sizes");
    ours.iter()
        .zip(theirs)
        .fold((0.0, 0.0), |(likely, all), (a, &b)| {
            let d = (a - b).abs();
            let likely = if b >= min_logprob {
                likely.max(d)
            } else {
                likely
            };
            (likely, all.max(d))
        })
}
