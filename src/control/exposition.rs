//! Prometheus families built by hand from summed shard counters (the shards count in
//! plain integers; the prometheus crate only encodes the text format here).

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary,
};
use shards::metrics::sketch::Sketch;
use shards::metrics::{RatioHistogram, LATENCY_BUCKETS, RATIO_BUCKETS, ROUTES};
use std::collections::HashMap;

/// One sample: its labels and value.
pub type Sample<'a> = (Vec<(&'a str, String)>, f64);

/// Label pairs sorted by name, as the prometheus crate orders them for its own
/// collectors.
pub fn labels(mut pairs: Vec<(&str, String)>) -> Vec<LabelPair> {
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs
        .into_iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v);
            l
        })
        .collect()
}

pub fn family(name: &str, help: &str, kind: MetricType, samples: Vec<Sample<'_>>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    for (l, v) in samples {
        let mut m = Metric::default();
        m.set_label(labels(l));
        if kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
        f.mut_metric().push(m);
    }
    f
}

pub fn histograms<'a>(
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (&'a str, &'a shards::metrics::Histogram)>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(MetricType::HISTOGRAM);
    for (route, h) in rows {
        let mut m = Metric::default();
        m.set_label(labels(vec![("route", route.to_string())]));
        let hist = buckets(&LATENCY_BUCKETS, &h.counts, h.count, h.sum);
        m.set_histogram(hist);
        f.mut_metric().push(m);
    }
    f
}

/// A histogram of counts per bucket (not cumulative) with these upper bounds.
fn buckets(bounds: &[f64], counts: &[u64], count: u64, sum: f64) -> Histogram {
    let mut hist = Histogram::default();
    let mut cumulative = 0;
    let buckets = (bounds.iter().zip(counts))
        .map(|(&bound, &n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    hist.set_bucket(buckets);
    hist.set_sample_count(count);
    hist.set_sample_sum(sum);
    hist
}

/// One unlabelled histogram of fractions.
pub fn ratio_histogram(name: &str, help: &str, h: &RatioHistogram) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(MetricType::HISTOGRAM);
    let mut m = Metric::default();
    m.set_histogram(buckets(&RATIO_BUCKETS, &h.counts, h.count, h.sum));
    f.mut_metric().push(m);
    f
}

/// The quantiles 0.1.17's summaries show (its metrics exporter's defaults).
const QUANTILES: [f64; 7] = [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0];

/// One unlabelled summary: quantiles of `window` (recent observations; NaN when there
/// were none), count and sum of `total` (all of them, as a summary's are).
pub fn summary(name: &str, help: &str, window: &Sketch, total: &Sketch) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(MetricType::SUMMARY);
    let mut s = Summary::default();
    let quantiles = QUANTILES.iter().map(|&q| {
        let mut x = Quantile::default();
        x.set_quantile(q);
        x.set_value(window.quantile(q).unwrap_or(f64::NAN));
        x
    });
    s.set_quantile(quantiles.collect());
    s.set_sample_count(total.count);
    s.set_sample_sum(total.sum);
    let mut m = Metric::default();
    m.set_summary(s);
    f.mut_metric().push(m);
    f
}

/// One sample per route with a non-zero count.
pub fn by_route(counts: &[u64; ROUTES.len()]) -> Vec<Sample<'static>> {
    (0..ROUTES.len())
        .filter(|&r| counts[r] > 0)
        .map(|r| (vec![("route", ROUTES[r].to_string())], counts[r] as f64))
        .collect()
}

pub fn count_of<K: Eq + std::hash::Hash>(map: &HashMap<K, u64>, k: &K) -> u64 {
    map.get(k).copied().unwrap_or(0)
}
