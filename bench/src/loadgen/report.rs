//! Output: a table per metric with p50/p90/p99/p99.9 per target and what each target
//! adds over `direct`; JSON for machines; an SVG latency-percentile plot.

use super::{Results, Stats, Target};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The percentiles reported.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

/// The latency metrics, by name.
pub fn metrics(s: &Stats) -> [(&'static str, &Histogram<u64>); 4] {
    [
        ("ttft", &s.ttft),
        ("itl", &s.itl),
        ("e2e", &s.e2e),
        ("event_delivery", &s.delivery),
    ]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The text table.
pub fn table(targets: &[Target], r: &Results) -> String {
    let mut out = String::new();
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    out.push_str("| target | ok | errors | non-2xx | req/s |\n|---|---:|---:|---:|---:|\n");
    for (t, s) in targets.iter().zip(&r.stats) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} |\n",
            t.name,
            s.ok,
            s.errors,
            s.bad_status,
            s.ok as f64 / secs
        ));
    }
    let direct = targets.iter().position(|t| t.name == "direct");
    for m in 0..4 {
        let name = metrics(&r.stats[0])[m].0;
        if r.stats.iter().all(|s| metrics(s)[m].1.is_empty()) {
            continue;
        }
        out.push_str(&format!(
            "\n{} (ms)\n\n| target | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|\n",
            describe(name)
        ));
        for (t, s) in targets.iter().zip(&r.stats) {
            let h = metrics(s)[m].1;
            out.push_str(&format!("| {} |", t.name));
            for (q, _) in QUANTILES {
                out.push_str(&format!(" {:.3} |", ms(h.value_at_quantile(q))));
            }
            out.push_str(&format!(" {:.3} |\n", ms(h.max())));
        }
        if let Some(d) = direct {
            let base = metrics(&r.stats[d])[m].1;
            for (t, s) in targets.iter().zip(&r.stats) {
                if t.name == "direct" {
                    continue;
                }
                let h = metrics(s)[m].1;
                out.push_str(&format!("| {} added over direct |", t.name));
                for (q, _) in QUANTILES {
                    let added = h.value_at_quantile(q) as f64 - base.value_at_quantile(q) as f64;
                    out.push_str(&format!(" {:+.3} |", added / 1000.0));
                }
                out.push_str(" |\n");
            }
        }
    }
    out
}

fn describe(metric: &str) -> &'static str {
    match metric {
        "ttft" => "Time to first token (first SSE event, or first body byte), from the scheduled send",
        "itl" => "Inter-token gap (between SSE events)",
        "event_delivery" => {
            "Event delivery: worker send to client arrival, per stamped SSE event (mock --x-mock-timestamps)"
        }
        _ => "End to end, from the scheduled send",
    }
}

/// The JSON document.
pub fn json(targets: &[Target], r: &Results, config: Value) -> Value {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let mut out = serde_json::Map::new();
    for (t, s) in targets.iter().zip(&r.stats) {
        let mut m = serde_json::Map::new();
        for (name, h) in metrics(s) {
            let mut q = serde_json::Map::new();
            for (p, label) in QUANTILES {
                q.insert(label.to_string(), json!(ms(h.value_at_quantile(p))));
            }
            q.insert("max".into(), json!(ms(h.max())));
            q.insert("mean".into(), json!(h.mean() / 1000.0));
            q.insert("count".into(), json!(h.len()));
            m.insert(format!("{name}_ms"), Value::Object(q));
        }
        m.insert("ok".into(), json!(s.ok));
        m.insert("errors".into(), json!(s.errors));
        m.insert("non_2xx".into(), json!(s.bad_status));
        m.insert("throughput_rps".into(), json!(s.ok as f64 / secs));
        out.insert(t.name.clone(), Value::Object(m));
    }
    json!({"config": config, "targets": out})
}

/// A latency-by-percentile plot (HdrHistogram style: the x axis stretches the tail),
/// one line per target, one panel per metric that has data.
pub fn svg(targets: &[Target], r: &Results) -> String {
    const W: f64 = 760.0;
    const PANEL_H: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    // x: log10(1 / (1 - q)), from q = 0 to 99.99%.
    let xmax = 4.0;
    let x_of = |q: f64| LEFT + (W - LEFT - RIGHT) * ((1.0 / (1.0 - q)).log10() / xmax).min(1.0);
    let panels: Vec<usize> = (0..4)
        .filter(|&m| r.stats.iter().any(|s| !metrics(s)[m].1.is_empty()))
        .collect();
    let h_total = 30.0 + PANEL_H * panels.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h_total}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, t) in targets.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        s.push_str(&format!(
            "<rect x=\"{}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"18\">{}</text>\n",
            LEFT + 140.0 * i as f64,
            LEFT + 16.0 + 140.0 * i as f64,
            escape(&t.name)
        ));
    }
    for (p, &m) in panels.iter().enumerate() {
        let top = 30.0 + PANEL_H * p as f64;
        let (y0, y1) = (top + 20.0, top + PANEL_H - 40.0);
        let name = metrics(&r.stats[0])[m].0;
        let ymax = r
            .stats
            .iter()
            .map(|s| metrics(s)[m].1.value_at_quantile(0.9999))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            / 1000.0
            * 1.1;
        let y_of = |v_ms: f64| y1 - (y1 - y0) * (v_ms / ymax).min(1.0);
        s.push_str(&format!(
            "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{} (ms) by percentile</text>\n",
            top + 12.0,
            name
        ));
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{y1}\" x2=\"{}\" y2=\"{y1}\" stroke=\"black\"/><line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{LEFT}\" y2=\"{y1}\" stroke=\"black\"/>\n",
            W - RIGHT
        ));
        for (q, label) in [
            (0.0, "0%"),
            (0.9, "90%"),
            (0.99, "99%"),
            (0.999, "99.9%"),
            (0.9999, "99.99%"),
        ] {
            let x = x_of(q);
            s.push_str(&format!(
                "<line x1=\"{x}\" y1=\"{y0}\" x2=\"{x}\" y2=\"{y1}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
                y1 + 16.0
            ));
        }
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let y = y_of(v);
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.2}</text>\n",
                LEFT - 6.0,
                y + 4.0,
                v
            ));
        }
        for (i, st) in r.stats.iter().enumerate() {
            let h = metrics(st)[m].1;
            if h.is_empty() {
                continue;
            }
            let points: Vec<String> = (0..=200)
                .map(|k| {
                    let q = 1.0 - 10f64.powf(-xmax * k as f64 / 200.0);
                    let v = ms(h.value_at_quantile(q.min(0.99999)));
                    format!("{:.1},{:.1}", x_of(q), y_of(v))
                })
                .collect();
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                COLORS[i % COLORS.len()],
                points.join(" ")
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
