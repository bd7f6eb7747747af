#!/usr/bin/env python3
"""Latency added by each proxy against the offered rate: direct to an nginx `return 200`
backend, this router, nginx proxy_pass and the published router, driven open loop
(vllm-router-bench: latency counts from each request's due time, so a stall is not
hidden) at several fixed rates. At each rate the four targets are interleaved in one
run (request k goes to target k mod 4), so they share the same moments of machine
noise. Prints a table of added p50/p99 per rate and writes an SVG plot.

    python3 bench/latency_vs_rate.py [--rates 500,2000,8000] [--published PATH]

`--pairs N`: instead, at each rate each proxy runs beside direct alone, the pairs taking
turns, N rounds, and the table shows each proxy's median over its rounds. Four targets
at 8000 req/s each (three proxies' forwarding, the backend and the load generator)
need more than this 2-CPU machine has; a pair needs about three quarters of it.
"""
import argparse, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import RELEASE, free_port, nginx_conf, starter, stop_groups  # noqa: E402

COLORS = {"router": "#1f77b4", "baseline": "#9467bd", "nginx": "#2ca02c", "published": "#d62728"}


def svg(rows, rates, path):
    """Added p50 (solid) and p99 (dashed) in microseconds against the rate (log x)."""
    import math
    w, h, left, right, top, bottom = 760, 420, 70, 150, 30, 50
    names = [n for n in COLORS if any(n in r for r in rows.values())]
    ys = [rows[rate][n][q] for rate in rates for n in names if n in rows[rate] for q in ("p50", "p99")]
    ymax = max(max(ys), 1.0) * 1.1
    ymin = min(0.0, min(ys) * 1.1)
    lx0, lx1 = math.log10(min(rates)), math.log10(max(rates))
    x_of = lambda r: left + (w - left - right) * ((math.log10(r) - lx0) / max(lx1 - lx0, 1e-9))
    y_of = lambda v: top + (h - top - bottom) * (1 - (v - ymin) / (ymax - ymin))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="18">Latency added over direct, open loop (us): p50 solid, p99 dashed</text>']
    for i in range(6):
        v = ymin + (ymax - ymin) * i / 5
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y_of(v):.1f}" y2="{y_of(v):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 8}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    for r in rates:
        out.append(f'<text x="{x_of(r):.1f}" y="{h - bottom + 18}" text-anchor="middle">{r:g}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">offered rate per target (req/s)</text>')
    for k, n in enumerate(names):
        for q, dash in (("p50", ""), ("p99", ' stroke-dasharray="6 4"')):
            pts = " ".join(f"{x_of(r):.1f},{y_of(rows[r][n][q]):.1f}" for r in rates if n in rows[r])
            out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS[n]}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{w - right + 10}" y="{top + 20 + 18 * k}" fill="{COLORS[n]}">{n}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


def measure(targets, rate, args, doc):
    """One interleaved run of `targets` at `rate` each: added p50/p99 per proxy (us)."""
    cmd = [os.path.join(RELEASE, "vllm-router-bench"), "--rate", str(rate), "--duration", str(args.duration),
           "--warmup", "2", "--max-tokens", "1", "--prompt-words", "8", "--json", doc]
    for t in targets:
        cmd += ["--target", t]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.load(open(doc))["targets"]
    direct = result["direct"]["e2e_ms"]
    row = {}
    for name, r in result.items():
        if name == "direct":
            continue
        e2e = r["e2e_ms"]
        row[name] = {q: (e2e[q] - direct[q]) * 1000 for q in ("p50", "p99")}
        row[name]["errors"] = r["errors"] + r["non_2xx"]
    row["direct"] = {q: direct[q] * 1000 for q in ("p50", "p99")}
    return row


def paired(targets, rate, args):
    """Each proxy beside direct alone, the pairs in turns for `args.pairs` rounds; per
    proxy the median of its rounds' added p50 and p99, direct's the median of all."""
    import statistics
    runs = {}
    for rnd in range(args.pairs):
        for t in targets[1:]:
            name = t.split("=", 1)[0]
            row = measure([targets[0], t], rate, args, os.path.join(args.out, f"rate-{rate:g}-{name}-{rnd}.json"))
            runs.setdefault(name, []).append(row[name])
            runs.setdefault("direct", []).append(row["direct"])
            print(f"  round {rnd + 1}: {name} {row[name]['p50']:+.0f}/{row[name]['p99']:+.0f} us "
                  f"(direct {row['direct']['p50']:.0f}/{row['direct']['p99']:.0f})", file=sys.stderr)
    out = {}
    for name, rs in runs.items():
        out[name] = {q: statistics.median(r[q] for r in rs) for q in ("p50", "p99")}
        out[name]["errors"] = sum(r.get("errors", 0) for r in rs)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="500,2000,8000", help="requests/s per target, comma separated")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--published", default=os.environ.get("PUBLISHED_ROUTER", os.path.join(
        ROOT, "target/published-venv/bin/vllm-router")), help="empty: skip it")
    ap.add_argument("--router", default=os.path.join(RELEASE, "vllm-router"))
    ap.add_argument("--baseline-router", default=None, help="another build measured alongside (A/B)")
    ap.add_argument("--pairs", type=int, default=0, metavar="ROUNDS",
                    help="each proxy beside direct alone, in turns, this many rounds (rates too high for all at once)")
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench-latency-vs-rate"))
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    os.makedirs(args.out, exist_ok=True)
    run = tempfile.mkdtemp(prefix="vr-rate-")
    procs = []

    start = starter(run, procs)

    try:
        backend = free_port()
        start(["nginx", "-p", run, "-c", nginx_conf(run, "backend.conf", BACKEND_PORT=backend)], backend, "backend")
        upstream = f"http://127.0.0.1:{backend}"
        targets = [f"direct={upstream}"]
        ours = free_port()
        start([args.router, "--port", str(ours), "--prometheus-port", str(free_port()), "--shards", str(args.shards),
               "--policy", "round_robin", "--worker-urls", upstream], ours, "router")
        targets.append(f"router=http://127.0.0.1:{ours}")
        if args.baseline_router:
            base = free_port()
            start([args.baseline_router, "--port", str(base), "--prometheus-port", str(free_port()), "--shards",
                   str(args.shards), "--policy", "round_robin", "--worker-urls", upstream], base, "baseline")
            targets.append(f"baseline=http://127.0.0.1:{base}")
        ngx = free_port()
        start(["nginx", "-p", run, "-c", nginx_conf(run, "proxy.conf", BACKEND_PORT=backend, PROXY_PORT=ngx,
                                                    WORKERS=args.shards)], ngx, "nginx")
        targets.append(f"nginx=http://127.0.0.1:{ngx}")
        if args.published and os.path.exists(args.published):
            pub = free_port()
            start([args.published, "--port", str(pub), "--prometheus-port", str(free_port()),
                   "--policy", "round_robin", "--worker-urls", upstream], pub, "published")
            targets.append(f"published=http://127.0.0.1:{pub}")
        rows = {}
        for rate in rates:
            if args.pairs:
                rows[rate] = paired(targets, rate, args)
            else:
                rows[rate] = measure(targets, rate, args, os.path.join(args.out, f"rate-{rate:g}.json"))
            print(f"{rate:g} req/s: " + ", ".join(f"{n} {v['p50']:+.0f}/{v['p99']:+.0f} us"
                                                for n, v in rows[rate].items() if n != "direct"), file=sys.stderr)
        names = [n for n in COLORS if n in rows[rates[0]]]
        print("| rate per target | direct p50 / p99 | " + " | ".join(f"{n}: added p50 / p99" for n in names) + " |")
        print("|---:|---:|" + "---:|" * len(names))
        for rate in rates:
            d = rows[rate]["direct"]
            cells = []
            for n in names:
                v = rows[rate][n]
                errs = f" ({v['errors']} errors)" if v["errors"] else ""
                cells.append(f"{v['p50']:+.0f} / {v['p99']:+.0f} us{errs}")
            print(f"| {rate:g} req/s | {d['p50']:.0f} / {d['p99']:.0f} us | " + " | ".join(cells) + " |")
        plot = os.path.join(args.out, "latency-vs-rate.svg")
        svg({r: {n: rows[r][n] for n in names} for r in rates}, rates, plot)
        print(f"plot: {plot}", file=sys.stderr)
    finally:
        stop_groups(procs)


if __name__ == "__main__":
    main()
