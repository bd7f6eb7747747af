//! The recent window a summary's quantiles cover.
//!
//! 0.1.17 exports some P/D families as Prometheus summaries, whose quantiles its
//! metrics exporter computes over the last 40-60 s (three buckets of 20 s). The shards
//! send cumulative sums; this keeps a copy of them every 20 s, and a window is what
//! came after the newest copy at least 40 s old.

use shards::metrics::sketch::Sketch;
use shards::metrics::ShardMetrics;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often the sums are copied.
const EVERY: Duration = Duration::from_secs(20);

/// The least age of the copy a window starts from: windows then span 40-60 s.
const SPAN: Duration = Duration::from_secs(40);

/// The sums behind the summaries, all shards together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SummarySums {
    pub decode_pending: Sketch,
    pub new_prefill_tokens: Sketch,
    pub prepare: Sketch,
}

impl SummarySums {
    /// The sums of these counters together: every shard's copy, or their merged total.
    pub fn of<'a>(metrics: impl IntoIterator<Item = &'a ShardMetrics>) -> SummarySums {
        let mut sums = SummarySums::default();
        for m in metrics {
            sums.decode_pending.merge(&m.pd_decode_pending);
            sums.new_prefill_tokens.merge(&m.pd_new_prefill_tokens);
            sums.prepare.merge(&m.kv_prepare_all);
        }
        sums
    }

    fn since(&self, earlier: &SummarySums) -> SummarySums {
        SummarySums {
            decode_pending: self.decode_pending.since(&earlier.decode_pending),
            new_prefill_tokens: self.new_prefill_tokens.since(&earlier.new_prefill_tokens),
            prepare: self.prepare.since(&earlier.prepare),
        }
    }
}

/// Copies of the sums, oldest first.
#[derive(Default)]
pub struct SummaryWindow {
    copies: VecDeque<(Instant, SummarySums)>,
}

impl SummaryWindow {
    /// Whether a copy is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.copies
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= EVERY)
    }

    /// Keeps a copy of the sums as of `now`, and forgets copies no window starts from.
    pub fn keep(&mut self, now: Instant, sums: SummarySums) {
        self.copies.push_back((now, sums));
        // The oldest copy is needed while the next one is younger than SPAN.
        while self
            .copies
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= SPAN)
        {
            self.copies.pop_front();
        }
    }

    /// What `current` holds beyond the newest copy at least SPAN old (all of it while
    /// there is none: the router started less than SPAN ago).
    pub fn recent(&self, now: Instant, current: &SummarySums) -> SummarySums {
        let base =
            (self.copies.iter().rev()).find(|(at, _)| now.saturating_duration_since(*at) >= SPAN);
        match base {
            Some((_, earlier)) => current.since(earlier),
            None => current.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(values: &[f64]) -> SummarySums {
        let mut s = SummarySums::default();
        values.iter().for_each(|v| s.decode_pending.observe(*v));
        s
    }

    #[test]
    fn a_window_covers_the_last_40_to_60_seconds() {
        let t0 = Instant::now();
        let mut w = SummaryWindow::default();
        assert!(w.due(t0));
        w.keep(t0, sums(&[1.0]));
        assert!(!w.due(t0 + Duration::from_secs(19)));
        // Before 40 s, everything counts.
        let now = sums(&[1.0, 2.0]);
        assert_eq!(w.recent(t0 + Duration::from_secs(30), &now), now);
        w.keep(t0 + EVERY, sums(&[1.0, 2.0]));
        w.keep(t0 + 2 * EVERY, sums(&[1.0, 2.0, 3.0]));
        // At 50 s: what came after the copy of 0 s.
        let now = sums(&[1.0, 2.0, 3.0, 4.0]);
        let recent = w.recent(t0 + Duration::from_secs(50), &now);
        assert_eq!(recent.decode_pending.count, 3);
        // At 65 s: after the copy of 20 s; the copy of 0 s is forgotten.
        w.keep(t0 + Duration::from_secs(65), now.clone());
        assert_eq!(w.copies.len(), 3);
        let recent = w.recent(t0 + Duration::from_secs(65), &now);
        assert_eq!(recent.decode_pending.count, 2);
    }
}
