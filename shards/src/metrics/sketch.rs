//! Counts of observations in logarithmic buckets, for the quantiles of a Prometheus
//! summary (0.1.17 exports some P/D families as summaries: `..{quantile="0.99"}`).
//!
//! A summary's quantiles must cover a recent window, not the whole run, and come from
//! several shards: exact samples would not merge, and a fixed-bucket histogram is too
//! coarse to read a quantile from. Buckets that grow by a fixed ratio do both: shards
//! add their counts, the control core subtracts an older copy of the sums to get the
//! window, and a quantile read from a bucket is off by at most half a bucket's ratio.

use std::collections::BTreeMap;

/// Buckets per doubling: each bucket spans a ratio of 2^(1/32), about 2.2%, and a
/// quantile reads as the bucket's geometric middle, within 1.1% of any value in it.
const PER_DOUBLING: f64 = 32.0;

/// The bucket of zero and of anything not above it (a duration never is; a count of
/// tokens could be).
const ZERO: i32 = i32::MIN;

/// Observations per bucket, with their sum and number.
///
/// Memory: one entry per bucket seen. Durations from a microsecond to a day, or counts
/// from 1 to 10^9, span under 1,000 buckets, and a workload's values cluster in a few.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sketch {
    counts: BTreeMap<i32, u64>,
    pub sum: f64,
    pub count: u64,
}

impl Sketch {
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        *self.counts.entry(bucket_of(value)).or_default() += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Adds another shard's counts.
    pub fn merge(&mut self, other: &Sketch) {
        for (b, n) in &other.counts {
            *self.counts.entry(*b).or_default() += n;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// What was observed since `earlier`, a copy of these same sums taken before.
    pub fn since(&self, earlier: &Sketch) -> Sketch {
        let counts = (self.counts.iter())
            .filter_map(|(b, n)| {
                let left = n.saturating_sub(earlier.counts.get(b).copied().unwrap_or(0));
                (left > 0).then_some((*b, left))
            })
            .collect();
        Sketch {
            counts,
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The `q` quantile (0: the least value, 1: the greatest) by nearest rank, or None
    /// with no observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.values().sum();
        if total == 0 {
            return None;
        }
        // The rank of the q quantile among `total` values, 1-based.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Some(middle_of(*b));
            }
        }
        None
    }
}

fn bucket_of(value: f64) -> i32 {
    if value <= 0.0 {
        return ZERO;
    }
    (value.log2() * PER_DOUBLING).floor() as i32
}

/// The geometric middle of a bucket.
fn middle_of(bucket: i32) -> f64 {
    if bucket == ZERO {
        return 0.0;
    }
    ((f64::from(bucket) + 0.5) / PER_DOUBLING).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a / b - 1.0).abs() <= 0.011
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_values() {
        let mut s = Sketch::default();
        for v in 1..=1000 {
            s.observe(f64::from(v) / 1000.0);
        }
        assert!(close(s.quantile(0.0).unwrap(), 0.001));
        assert!(
            close(s.quantile(0.5).unwrap(), 0.5),
            "{:?}",
            s.quantile(0.5)
        );
        assert!(close(s.quantile(0.99).unwrap(), 0.99));
        assert!(close(s.quantile(1.0).unwrap(), 1.0));
        assert_eq!(s.count, 1000);
        assert!((s.sum - 500.5).abs() < 1e-9);
    }

    #[test]
    fn shards_merge_and_a_window_subtracts() {
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        a.observe(4.0);
        b.observe(100.0);
        let mut total = a.clone();
        total.merge(&b);
        let earlier = total.clone();
        total.observe(16.0);
        total.observe(16.0);
        let window = total.since(&earlier);
        assert_eq!((window.count, window.sum), (2, 32.0));
        assert!(close(window.quantile(0.0).unwrap(), 16.0));
        assert!(close(window.quantile(1.0).unwrap(), 16.0));
        assert!(close(total.quantile(1.0).unwrap(), 100.0));
    }

    #[test]
    fn zero_and_nothing() {
        let mut s = Sketch::default();
        assert_eq!(s.quantile(0.5), None);
        s.observe(0.0);
        s.observe(f64::NAN);
        assert_eq!((s.count, s.quantile(1.0)), (1, Some(0.0)));
    }
}
