#!/usr/bin/env python3
"""Where a streamed request's first token waits, hop by hop: a loopback capture
(tcpdump) of each request through each proxy, timed from the client's first request
byte to the proxy's request to the worker, the worker's answer head and first event,
and the proxy's first bytes to the client.

The layout is bench/latency.py's: the mock worker and the client on CPU 1, each proxy
on CPU 0 with one shard or worker. Requests come 50 ms apart, one at a time, each
streaming 2 tokens, so every request meets an idle proxy (the case issue 25's
"time to first token" asks about). Needs tcpdump and the right to capture on `lo`.

    python3 bench/hop_timing.py [--rounds 2] [--baseline-router PATH] [--published PATH]

Per target, medians (and p90) in us from the client's first request byte:
  to_worker    the proxy's request reaches the worker's socket
  worker_head  the worker's answer head leaves it
  worker_event the worker's first SSE event leaves it
  to_client    the proxy's first answer bytes reach the client
"""
import argparse, os, statistics, struct, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(__file__))
from benchlib import RELEASE as REL, free_port, nginx_conf, starter, stop_groups  # noqa: E402

# Bytes of each packet kept: the payload's first bytes tell a head from an event.
SNAPLEN = 256


def packets(path):
    """(time, src port, dst port, payload) of every TCP segment with a payload."""
    d = open(path, "rb").read()
    link = struct.unpack("<I", d[20:24])[0]
    off, out = 24, []
    while off + 16 <= len(d):
        sec, usec, incl, _ = struct.unpack("<IIII", d[off:off + 16])
        off += 16
        pkt, off = d[off:off + incl], off + incl
        ip = pkt[14:] if link == 1 else pkt[16:]  # Ethernet, or Linux cooked capture
        ihl, total = (ip[0] & 15) * 4, struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            out.append((sec + usec / 1e6, sport, dport, payload))
    return out


def hops(pkts, port, worker, direct):
    """One dict per request: the first time of each hop, from the client's POST."""
    reqs, cur = [], None
    for t, sport, dport, pl in pkts:
        if dport == port and pl[:4] == b"POST":
            cur = {"start": t}
            reqs.append(cur)
        elif cur is None:
            continue
        elif dport == worker and not direct:
            cur.setdefault("to_worker", t)
        elif sport == worker:
            if pl[:4] == b"HTTP":
                cur.setdefault("worker_head", t)
            if b"data:" in pl:
                cur.setdefault("worker_event", t)
        if sport == port and not direct:
            cur.setdefault("to_client", t)
    if direct:
        for r in reqs:
            if "worker_head" in r:
                r["to_client"] = r["worker_head"]
    return reqs


def measure(name, port, worker, run, tag):
    pcap = os.path.join(run, f"{name}-{tag}.pcap")
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", str(SNAPLEN), "-B", "16384", "-w", pcap,
                             f"tcp port {port} or tcp port {worker}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # tcpdump opens the capture asynchronously; nothing to poll
    subprocess.run(["taskset", "-c", "1", os.path.join(REL, "vllm-router-bench"), "--rate", "20",
                    "--duration", "6", "--warmup", "1", "--stream", "--max-tokens", "2",
                    "--prompt-words", "64-256", "--target", f"{name}=http://127.0.0.1:{port}",
                    "--json", os.path.join(run, f"{name}-{tag}.json")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    dump.terminate()
    dump.wait()
    return hops(packets(pcap), port, worker, name == "direct")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--router", default=os.path.join(REL, "vllm-router"))
    ap.add_argument("--baseline-router", default=None)
    ap.add_argument("--published", default="")
    args = ap.parse_args()
    run = tempfile.mkdtemp(prefix="vr-hops-")
    procs = []

    start = starter(run, procs)

    try:
        worker = free_port()
        start(["taskset", "-c", "1", os.path.join(REL, "mock-vllm"), "--port", str(worker),
               "--token-delay-us", "10000", "--threads", "1"], worker, "mock")
        up = f"http://127.0.0.1:{worker}"
        targets = [("direct", worker)]
        routers = [("router", args.router), ("baseline", args.baseline_router), ("published", args.published)]
        for name, binary in routers:
            if not binary:
                continue
            port = free_port()
            extra = ["--shards", "1"] if name != "published" else []
            start(["taskset", "-c", "0", binary, "--port", str(port), "--prometheus-port", str(free_port()),
                   "--policy", "round_robin", "--worker-urls", up] + extra, port, name)
            targets.append((name, port))
        ngx = free_port()
        path = nginx_conf(run, "proxy.conf", BACKEND_PORT=worker, PROXY_PORT=ngx, WORKERS=1)
        start(["taskset", "-c", "0", "nginx", "-p", run, "-c", path], ngx, "nginx")
        targets.append(("nginx", ngx))
        relay = free_port()
        start(["taskset", "-c", "0", os.path.join(REL, "tcp-relay"), "--port", str(relay),
               "--upstream", f"127.0.0.1:{worker}"], relay, "relay")
        targets.append(("relay", relay))
        keys = ["to_worker", "worker_head", "worker_event", "to_client"]
        print("| target | round | requests | " + " | ".join(keys) + " |")
        print("|---|---:|---:|" + "---:|" * len(keys))
        for rnd in range(args.rounds):
            for name, port in targets:
                reqs = measure(name, port, worker, run, str(rnd))
                cells = []
                for k in keys:
                    v = sorted((r[k] - r["start"]) * 1e6 for r in reqs if k in r)
                    cells.append(f"{statistics.median(v):.0f} ({v[int(len(v) * 0.9)]:.0f})" if v else "-")
                print(f"| {name} | {rnd + 1} | {len(reqs)} | " + " | ".join(cells) + " |", flush=True)
    finally:
        stop_groups(procs)


if __name__ == "__main__":
    main()
