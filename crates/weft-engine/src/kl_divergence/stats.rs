//! The statistics `llama-perplexity --kl-divergence` prints, computed as it computes them
//! (f32 per position, f64 sums, its error formulas and percentile interpolation), so that a
//! figure from either tool means the same thing.

use super::log_probs::{sum_exp, Record, RANGE_NATS};

/// A mean (or a quantity derived from means) and its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub err: f64,
}

/// One point of a sorted distribution: `fraction` 0 is the minimum, 0.5 the median, 1 the
/// maximum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantile {
    pub fraction: f64,
    pub value: f64,
}

/// The quantiles llama.cpp prints for the per-position KL divergence.
const KLD_FRACTIONS: [f64; 11] = [
    1.0, 0.999, 0.99, 0.95, 0.9, 0.5, 0.1, 0.05, 0.01, 0.001, 0.0,
];
/// ... and for Δp, the change in probability of the text's next token.
const P_DIFF_FRACTIONS: [f64; 13] = [
    1.0, 0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001, 0.0,
];

/// The comparison of a model ("Q") with a base over the positions seen so far.
#[derive(Clone, Debug)]
pub struct KldReport {
    pub count: usize,
    pub ppl: Estimate,
    pub ppl_base: Estimate,
    /// Correlation of the two per-token log-likelihoods.
    pub ln_ppl_correlation: f64,
    /// ln(PPL(Q) / PPL(base)).
    pub ln_ppl_ratio: Estimate,
    pub ppl_ratio: Estimate,
    pub ppl_diff: Estimate,
    /// Mean KL(base || Q) per position, in nats.
    pub kld: Estimate,
    pub kld_quantiles: Vec<Quantile>,
    /// p(Q) - p(base) of the text's next token.
    pub p_diff: Estimate,
    pub p_diff_quantiles: Vec<Quantile>,
    pub rms_p_diff: Estimate,
    /// Fraction of positions where both have the same most likely token.
    pub same_top: Estimate,
}

/// Running sums over positions, and the per-position values the quantiles need.
#[derive(Default)]
pub struct KldStats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld: Vec<f32>,
    p_diff: Vec<f32>,
}

impl KldStats {
    /// Adds one position: the model's `logits`, the base's record for the same position and
    /// the text's next token.
    pub fn add(&mut self, logits: &[f32], base: &Record<'_>, target: u32) {
        let target = target as usize;
        let (top, max) = argmax(logits);
        let log_norm = max + sum_exp(logits, max).ln() as f32;
        let nll = log_norm - logits[target];
        let nll_base = -base.log_prob(target);
        let mut kld = 0.0f64;
        let (mut top_base, mut max_base) = (0, f32::NEG_INFINITY);
        for (i, (lp_base, &l)) in base.log_probs().zip(logits).enumerate() {
            if lp_base > max_base {
                (top_base, max_base) = (i, lp_base);
            }
            // Tokens the record leaves unresolved weigh less than e^-16.
            if lp_base > -RANGE_NATS {
                kld += f64::from(lp_base.exp() * (lp_base - l + log_norm));
            }
        }
        let p_diff = (-nll).exp() - (-nll_base).exp();

        let (nll, nll_base) = (f64::from(nll), f64::from(nll_base));
        self.sum_nll += nll;
        self.sum_nll2 += nll * nll;
        self.sum_nll_base += nll_base;
        self.sum_nll_base2 += nll_base * nll_base;
        self.sum_nll_nll_base += nll * nll_base;
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        let d2 = f64::from(p_diff) * f64::from(p_diff);
        self.sum_p_diff += f64::from(p_diff);
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.n_same_top += usize::from(top == top_base);
        self.kld.push(kld as f32);
        self.p_diff.push(p_diff);
    }

    pub fn count(&self) -> usize {
        self.kld.len()
    }

    pub fn report(&self) -> KldReport {
        let n = self.count();
        let ln_ppl = mean_and_err(self.sum_nll, self.sum_nll2, n);
        let ln_ppl_base = mean_and_err(self.sum_nll_base, self.sum_nll_base2, n);
        let cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n);
        let exp_of = |ln: Estimate| {
            let value = ln.value.exp();
            Estimate {
                value,
                err: value * ln.err,
            }
        };
        let (ppl, ppl_base) = (exp_of(ln_ppl), exp_of(ln_ppl_base));
        // Rounding can leave a tiny negative variance when the two models nearly agree.
        let diff_err = |a: f64, b: f64, cov: f64| (a * a + b * b - 2.0 * cov).max(0.0).sqrt();
        let ln_ppl_ratio = Estimate {
            value: ln_ppl.value - ln_ppl_base.value,
            err: diff_err(ln_ppl.err, ln_ppl_base.err, cov),
        };
        let p_diff2 = mean_and_err(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms = p_diff2.value.sqrt();
        let same = self.n_same_top as f64 / n as f64;
        KldReport {
            count: n,
            ppl,
            ppl_base,
            ln_ppl_correlation: cov / (ln_ppl.err * ln_ppl_base.err),
            ln_ppl_ratio,
            ppl_ratio: exp_of(ln_ppl_ratio),
            ppl_diff: Estimate {
                value: ppl.value - ppl_base.value,
                err: diff_err(ppl.err, ppl_base.err, ppl.value * ppl_base.value * cov),
            },
            kld: mean_and_err(self.sum_kld, self.sum_kld2, n),
            kld_quantiles: quantiles(&self.kld, &KLD_FRACTIONS),
            p_diff: mean_and_err(self.sum_p_diff, self.sum_p_diff2, n),
            p_diff_quantiles: quantiles(&self.p_diff, &P_DIFF_FRACTIONS),
            rms_p_diff: Estimate {
                value: rms,
                err: if rms > 0.0 {
                    0.5 / rms * p_diff2.err
                } else {
                    0.0
                },
            },
            same_top: Estimate {
                value: same,
                err: if n > 1 {
                    (same * (1.0 - same) / (n - 1) as f64).sqrt()
                } else {
                    0.0
                },
            },
        }
    }
}

/// Index and value of the first largest element.
fn argmax(values: &[f32]) -> (usize, f32) {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
}

/// Mean of `count` values from their sum and sum of squares; llama.cpp reports no error
/// for ten values or fewer.
fn mean_and_err(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate {
            value: 0.0,
            err: 0.0,
        };
    }
    let n = count as f64;
    let value = sum / n;
    let var = sum2 / n - value * value;
    let err = if var > 0.0 && count > 10 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Estimate { value, err }
}

/// Covariance of two means (0 under ten values, as in llama.cpp).
fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1.0)
}

/// Linearly interpolated quantiles of `values`; none when there are no values.
fn quantiles(values: &[f32], fractions: &[f64]) -> Vec<Quantile> {
    if values.is_empty() {
        return Vec::new();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let last = sorted.len() - 1;
    fractions
        .iter()
        .map(|&fraction| {
            let p = fraction.clamp(0.0, 1.0) * last as f64;
            let i = p as usize;
            let t = p - i as f64;
            let (a, b) = (f64::from(sorted[i]), f64::from(sorted[(i + 1).min(last)]));
            Quantile {
                fraction,
                value: (1.0 - t) * a + t * b,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_as_llama_cpp() {
        let q = quantiles(&[4.0, 1.0, 3.0, 2.0], &[0.0, 0.5, 0.9, 1.0]);
        let v: Vec<f64> = q.iter().map(|q| q.value).collect();
        // 0.9 * 3 = 2.7: 0.3 * 3 + 0.7 * 4.
        for (got, want) in v.iter().zip([1.0, 2.5, 3.7, 4.0]) {
            assert!((got - want).abs() < 1e-12, "{v:?}");
        }
        assert!(quantiles(&[], &[0.5]).is_empty());
    }

    #[test]
    fn errors_need_more_than_ten_values() {
        assert_eq!(mean_and_err(10.0, 30.0, 10).err, 0.0);
        let e = mean_and_err(11.0, 31.0, 11);
        let var: f64 = 31.0 / 11.0 - 1.0;
        assert!((e.err - (var / 10.0).sqrt()).abs() < 1e-15);
    }
}
