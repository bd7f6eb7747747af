#!/usr/bin/env python3
"""Streaming latency through each proxy at a moderate rate: direct to a mock worker,
this router, nginx proxy_pass (proxy_buffering off) and the published router, all in
one interleaved vllm-router-bench run. The mock stamps each SSE event
(`x-mock-timestamps`), so the table also shows each event's delivery delay.

    python3 bench/latency.py [--published PATH] [--rate R] [--duration S] [--relay]
        [--baseline-router PATH]

`--relay` adds bench's `tcp-relay` (a blocking TCP relay that parses nothing): what a
proxy hop itself costs here, the floor under any HTTP proxy's numbers.
"""
import argparse, os, subprocess, sys, tempfile
sys.path.insert(0, os.path.dirname(__file__))
from benchlib import free_port, nginx_conf, starter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from benchlib import RELEASE as REL  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--published", default=os.environ.get("PUBLISHED_ROUTER", ""))
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s per target")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--token-delay-us", type=int, default=10000)
    ap.add_argument("--baseline-router", default=None, help="another build measured alongside (A/B)")
    ap.add_argument("--relay", action="store_true",
                    help="add bench's tcp-relay (a blocking TCP relay, no HTTP): the floor a proxy hop costs here")
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench-latency"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    run = tempfile.mkdtemp(prefix="vr-lat-")
    procs = []

    # Each in its own process group, stopped whole below: nginx's worker outlived a
    # killed master, one more idle process after every run.
    start = starter(run, procs)

    try:
        worker = free_port()
        # The worker gets CPU 1; the proxies share CPU 0 (one at a time is loaded).
        start(["taskset", "-c", "1", os.path.join(REL, "mock-vllm"), "--port", str(worker),
               "--token-delay-us", str(args.token_delay_us), "--threads", "1"], worker, "mock")
        targets = [f"direct=http://127.0.0.1:{worker}"]
        ours = free_port()
        start(["taskset", "-c", "0", os.path.join(REL, "vllm-router"), "--port", str(ours),
               "--prometheus-port", str(free_port()), "--shards", "1", "--policy", "round_robin",
               "--worker-urls", f"http://127.0.0.1:{worker}"], ours, "router")
        targets.append(f"router=http://127.0.0.1:{ours}")
        if args.baseline_router:
            base = free_port()
            start(["taskset", "-c", "0", args.baseline_router, "--port", str(base),
                   "--prometheus-port", str(free_port()), "--shards", "1", "--policy", "round_robin",
                   "--worker-urls", f"http://127.0.0.1:{worker}"], base, "baseline")
            targets.append(f"baseline=http://127.0.0.1:{base}")
        ngx = free_port()
        path = nginx_conf(run, "proxy.conf", BACKEND_PORT=worker, PROXY_PORT=ngx, WORKERS=1)
        start(["taskset", "-c", "0", "nginx", "-p", run, "-c", path], ngx, "nginx")
        targets.append(f"nginx=http://127.0.0.1:{ngx}")
        if args.relay:
            relay = free_port()
            start(["taskset", "-c", "0", os.path.join(REL, "tcp-relay"), "--port", str(relay),
                   "--upstream", f"127.0.0.1:{worker}"], relay, "relay")
            targets.append(f"relay=http://127.0.0.1:{relay}")
        if args.published:
            pub = free_port()
            start(["taskset", "-c", "0", args.published, "--port", str(pub), "--prometheus-port", str(free_port()),
                   "--policy", "round_robin", "--worker-urls", f"http://127.0.0.1:{worker}"],
                  pub, "published")
            targets.append(f"published=http://127.0.0.1:{pub}")
        cmd = [os.path.join(REL, "vllm-router-bench"), "--rate", str(args.rate), "--duration", str(args.duration),
               "--warmup", "3", "--stream", "--max-tokens", str(args.tokens), "--prompt-words", "64-256",
               "--header", "x-mock-timestamps: 1",
               "--json", os.path.join(args.out, "latency.json"), "--svg", os.path.join(args.out, "latency.svg")]
        for t in targets:
            cmd += ["--target", t]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(["taskset", "-c", "1"] + cmd, check=True)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9) if p.pid and os.getpgid(p.pid) == p.pid else p.kill()
            except Exception:
                p.kill()


if __name__ == "__main__":
    main()
