//! The arithmetic behind the figures: percentiles of a sample, and the RSS slope of the soak.

/// The `q` quantile of `v` (sorted in place): the sample at rank round((n − 1) · q).
/// Panics on an empty sample (a scenario with no samples has already failed).
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

/// The median: the sample at index n / 2 of the sorted sample (the upper one of the two
/// middle samples when n is even), which is `percentile(v, 0.5)`.
pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// The median of a sample left as it is.
pub fn median_of(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

/// A time series without its first fifth (warm-up: allocators and pools grow there).
pub fn after_warmup<T>(samples: &[T]) -> &[T] {
    &samples[samples.len() / 5..]
}

/// Least-squares slope of (seconds, KiB) samples, in KiB per minute, after the warm-up
/// ([`after_warmup`]). 0 when undefined.
pub fn slope_per_min_after_warmup(samples: &[(f64, f64)]) -> f64 {
    let kept = after_warmup(samples);
    let n = kept.len() as f64;
    if kept.is_empty() {
        return 0.0;
    }
    let (sx, sy) = kept
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = kept.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_picks_the_nearest_rank_of_the_sorted_sample() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
        // rank round(99 × 0.99) = round(98.01) = 98 → the 99th smallest.
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        // rank round(99 × 0.9) = round(89.1) = 89.
        assert_eq!(percentile(&mut v, 0.9), 90.0);
        assert_eq!(v[0], 1.0, "sorted in place");
    }

    #[test]
    fn percentile_of_one_sample_is_that_sample() {
        assert_eq!(percentile(&mut [7.5], 0.99), 7.5);
        assert_eq!(percentile(&mut [7.5], 0.0), 7.5);
    }

    #[test]
    fn median_is_the_middle_or_the_upper_middle() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0]), 5.0);
    }

    #[test]
    fn median_equals_v_at_half_the_length_for_every_size() {
        // The report's medians were taken as sorted[n / 2] before this module existed.
        for n in 1..50 {
            let v: Vec<f64> = (0..n).map(|i| f64::from((i * 37) % n)).collect();
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            assert_eq!(median_of(&v), sorted[sorted.len() / 2], "n = {n}");
        }
    }

    #[test]
    fn median_of_leaves_the_sample_alone() {
        let v = vec![3.0, 1.0, 2.0];
        assert_eq!(median_of(&v), 2.0);
        assert_eq!(v, [3.0, 1.0, 2.0]);
    }

    #[test]
    #[should_panic]
    fn percentile_of_nothing_panics() {
        percentile(&mut [], 0.5);
    }

    #[test]
    fn slope_of_a_steady_line_is_its_rate_per_minute() {
        // 2 KiB per second → 120 KiB/min.
        let samples: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let t = f64::from(i) * 0.25;
                (t, 1000.0 + 2.0 * t)
            })
            .collect();
        let s = slope_per_min_after_warmup(&samples);
        assert!((s - 120.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn slope_ignores_the_warm_up_fifth() {
        // Growth in the first fifth only, flat after it.
        let samples: Vec<(f64, f64)> = (0..50)
            .map(|i| {
                (
                    f64::from(i),
                    if i < 10 { f64::from(i) * 100.0 } else { 5000.0 },
                )
            })
            .collect();
        assert_eq!(slope_per_min_after_warmup(&samples), 0.0);
    }

    #[test]
    fn warm_up_is_the_first_fifth() {
        let v: Vec<u32> = (0..10).collect();
        assert_eq!(after_warmup(&v), &v[2..]);
        assert_eq!(after_warmup(&v[..4]), &v[..4], "under 5 samples: all kept");
    }

    #[test]
    fn slope_of_too_few_samples_is_zero() {
        assert_eq!(slope_per_min_after_warmup(&[]), 0.0);
        assert_eq!(slope_per_min_after_warmup(&[(1.0, 5.0)]), 0.0);
    }
}
