#!/usr/bin/env python3
"""Throughput and CPU per request: direct, vllm-router (ours), nginx proxy_pass, and
the published vllm-router, side by side in one run against an nginx `return 200`
backend. Prints a markdown table. Run through bench/throughput.sh, which installs the
tools first."""
import argparse, os, re, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import RELEASE, free_port, nginx_conf, wait_port  # noqa: E402
HZ = os.sysconf("SC_CLK_TCK")


def tree(pid):
    """pid and all its descendants."""
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        kids = []
    for k in kids:
        out += tree(int(k))
    return out


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def wrk(port, secs, conns, threads, prefix=()):
    cmd = list(prefix) + ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency",
           "-s", os.path.join(ROOT, "bench/nginx/post.lua"), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    def lat(q):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"reqs": reqs, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": lat(50), "p99": lat(99), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--published", default=os.environ.get("PUBLISHED_ROUTER", ""),
                    help="path of the published vllm-router executable")
    ap.add_argument("--router", default=os.path.join(RELEASE, "vllm-router"))
    ap.add_argument("--baseline-router", default=None,
                    help="another vllm-router build measured alongside (A/B of a change)")
    ap.add_argument("--no-nginx-proxy", action="store_true", help="skip the nginx proxy_pass target")
    ap.add_argument("--rounds", type=int, default=3,
                    help="targets are measured in turn, this many times; the table shows medians")
    ap.add_argument("--pin", action="store_true",
                    help="proxies on CPU 0 (one shard / one worker), backend and wrk on CPU 1")
    args = ap.parse_args()
    if args.pin:
        args.shards = 1
    proxy_cpu = ["taskset", "-c", "0"] if args.pin else []
    load_cpu = ["taskset", "-c", "1"] if args.pin else []

    run = tempfile.mkdtemp(prefix="vr-bench-")
    procs = []
    def start(cmd, port, name, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(run, name + ".log"), "w"), **kw)
        procs.append(p); wait_port(port, p, name); return p


    try:
        backend = free_port()
        start(load_cpu + ["nginx", "-p", run, "-c", nginx_conf(run, "backend.conf", BACKEND_PORT=backend)], backend, "backend")
        targets = [("direct (nginx return 200)", backend, None)]

        ours = free_port()
        p = start(proxy_cpu + [args.router, "--port", str(ours), "--prometheus-port", str(free_port()),
                               "--shards", str(args.shards), "--policy", "round_robin",
                   "--worker-urls", f"http://127.0.0.1:{backend}"], ours, "vllm-router")
        targets.append(("vllm-router (this project)", ours, p.pid))

        if args.baseline_router:
            base = free_port()
            p = start(proxy_cpu + [args.baseline_router, "--port", str(base), "--prometheus-port", str(free_port()),
                                   "--shards", str(args.shards), "--policy", "round_robin",
                       "--worker-urls", f"http://127.0.0.1:{backend}"], base, "baseline")
            targets.append(("vllm-router (baseline build)", base, p.pid))

        if not args.no_nginx_proxy:
            ngx = free_port()
            p = start(proxy_cpu + ["nginx", "-p", run, "-c", nginx_conf(run, "proxy.conf", BACKEND_PORT=backend, PROXY_PORT=ngx,
                                                            WORKERS=args.shards)], ngx, "nginx-proxy")
            targets.append((f"nginx proxy_pass ({args.shards} workers)", ngx, p.pid))

        if args.published:
            pub = free_port()
            p = start(proxy_cpu + [args.published, "--port", str(pub), "--prometheus-port", str(free_port()),
                                   "--policy", "round_robin",
                       "--worker-urls", f"http://127.0.0.1:{backend}"], pub, "published", start_new_session=True)
            targets.append(("published vllm-router 0.1.x", pub, p.pid))

        for name, port, pid in targets:
            wrk(port, 2, args.connections, args.wrk_threads, load_cpu)  # warm-up
        runs = {name: [] for name, _, _ in targets}
        for rnd in range(args.rounds):
            for name, port, pid in targets:
                pids = tree(pid) if pid else []
                before = cpu_ticks(pids)
                r = wrk(port, args.seconds, args.connections, args.wrk_threads, load_cpu)
                used = cpu_ticks(pids) - before
                r["cpu_us"] = used / HZ / r["reqs"] * 1e6 if pid else None
                runs[name].append(r)
                print(f"round {rnd + 1} {name}: {r}", file=sys.stderr)
        def median(xs):
            xs = sorted(xs); return xs[len(xs) // 2]
        rows = []
        for name, _, pid in targets:
            rs = runs[name]
            rows.append((name, {
                "rps": median([r["rps"] for r in rs]), "p50": median([r["p50"] for r in rs]),
                "p99": median([r["p99"] for r in rs]),
                "cpu_us": median([r["cpu_us"] for r in rs]) if pid else None,
                "non2xx": sum(r["non2xx"] for r in rs),
                "errors": "; ".join(r["errors"] for r in rs if r["errors"])}))

        where = ("proxy pinned to CPU 0, backend and wrk on CPU 1" if args.pin
                 else f"{os.cpu_count()} CPUs shared by everything, {args.shards} shards/workers")
        print(f"\nmedian of {args.rounds} rounds x {args.seconds}s per target, wrk -t{args.wrk_threads} "
              f"-c{args.connections}, small POST /v1/chat/completions, {where}\n")
        print("| target | req/s | p50 ms | p99 ms | proxy CPU us/req | non-2xx | socket errors |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for name, r in rows:
            cpu = f"{r['cpu_us']:.1f}" if r["cpu_us"] is not None else "-"
            print(f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {cpu} | {r['non2xx']} | {r['errors'] or '-'} |")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM) if p.pid == os.getpgid(p.pid) else p.terminate()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
