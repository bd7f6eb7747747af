#!/usr/bin/env python3
"""Soak: the router under ten minutes of mixed traffic and churn, sampled every few
seconds for memory (RSS), open file descriptors and TCP connections. Flat means at most
5% growth from the first minute after warm-up (which is the first minute) to the last.

Traffic: JSON chat completions, SSE streams read to the end, streams the client hangs
up on after the first event, a worker killed (SIGKILL) and restarted every 30 s, and a
third worker added and removed through the admin API every 3 s.

    cargo build --release --workspace
    python3 bench/soak.py --minutes 10 --out target/soak     # CSV, SVG, summary
"""
import argparse, http.client, json, os, random, signal, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import RELEASE, free_port, wait_port  # noqa: E402

WARMUP_S = 60          # allocator pools, connection pools and trees fill in the first minute
GROWTH_LIMIT = 0.05    # "flat": the last minute at most 5% above the first minute after warm-up


def start_mock(port, name):
    p = subprocess.Popen([os.path.join(RELEASE, "mock-vllm"), "--port", str(port), "--name", name,
                          "--token-delay-us", "5000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p, f"mock {name}")
    return p


def sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass
    return rss, fds, sockets


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, k):
        with self.lock:
            self.c[k] = self.c.get(k, 0) + 1

    def snapshot(self):
        with self.lock:
            return dict(self.c)


def chat(stream, words=40):
    return json.dumps({"model": "m", "stream": stream, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "soak " * words}]})


def json_client(port, stop, counts):
    c = None
    while not stop.is_set():
        try:
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/v1/chat/completions", chat(False), {"content-type": "application/json"})
            r = c.getresponse(); r.read()
            counts.add(f"json {r.status}")
        except (OSError, http.client.HTTPException):
            counts.add("json error"); c = None


def stream_client(port, stop, counts, hang_up):
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            body = chat(True).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: s\r\ncontent-type: application/json\r\n"
                      b"content-length: %d\r\n\r\n" % len(body) + body)
            got = b""
            while b"data:" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            if hang_up:
                s.close(); counts.add("hang-up"); continue
            while b"[DONE]" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            s.close()
            counts.add("stream done" if b"[DONE]" in got else "stream cut")
        except OSError:
            counts.add("stream error")


def admin(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", path); r = c.getresponse(); r.read(); c.close()
    return r.status


def svg(rows, path):
    """RSS (MiB) and fds against time, one panel each."""
    w, h, pad = 720, 200, 40
    t_max = max(r["t"] for r in rows) or 1

    def panel(key, scale, label, y0):
        vals = [r[key] * scale for r in rows]
        lo, hi = 0, max(vals) * 1.2 or 1
        pts = " ".join(f"{pad + (r['t'] / t_max) * (w - 2 * pad):.1f},"
                       f"{y0 + h - pad - (v - lo) / (hi - lo) * (h - 2 * pad):.1f}" for r, v in zip(rows, vals))
        return (f'<text x="{pad}" y="{y0 + 20}" font-size="13">{label} (max {max(vals):.1f})</text>'
                f'<line x1="{pad}" y1="{y0 + h - pad}" x2="{w - pad}" y2="{y0 + h - pad}" stroke="#999"/>'
                f'<text x="{w - pad}" y="{y0 + h - pad + 15}" font-size="11" text-anchor="end">{t_max:.0f} s</text>'
                f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>')
    body = panel("rss_kib", 1 / 1024, "router RSS, MiB", 0) + panel("fds", 1, "router open fds", h) + \
        panel("sockets", 1, "router sockets", 2 * h)
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{3 * h}" font-family="sans-serif">'
                f'<rect width="100%" height="100%" fill="white"/>{body}</svg>\n')


def verdict(rows):
    """Flat: the last minute's mean at most GROWTH_LIMIT above the mean of the first
    minute after warm-up (means, because sockets come and go with the traffic)."""
    first = [r for r in rows if WARMUP_S <= r["t"] < WARMUP_S + 60]
    last = [r for r in rows if r["t"] >= rows[-1]["t"] - 60]
    if not first or rows[-1]["t"] < WARMUP_S + 120:
        print("too short to judge: run at least three minutes")
        return False
    flat = True
    for key in ("rss_kib", "fds", "sockets"):
        base = sum(r[key] for r in first) / len(first)
        end = sum(r[key] for r in last) / len(last)
        growth = (end - base) / base if base else 0.0
        flat &= growth <= GROWTH_LIMIT
        print(f"{key}: {base:.0f} in the first minute after warm-up, {end:.0f} in the last ({growth:+.1%}), "
              f"max {max(r[key] for r in rows)}")
    print("flat" if flat else f"NOT flat: more than {GROWTH_LIMIT:.0%} growth after warm-up")
    return flat


def from_csv(path):
    with open(path) as f:
        next(f)
        return [dict(zip(("t", "rss_kib", "fds", "sockets"), (float(x) for x in line.split(",")))) for line in f]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=5, help="seconds between samples")
    ap.add_argument("--out", default=os.path.join(ROOT, "target/soak"))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--judge", help="only judge the samples of an earlier run (its soak.csv)")
    args = ap.parse_args()
    if args.judge:
        sys.exit(0 if verdict(from_csv(args.judge)) else 1)
    os.makedirs(args.out, exist_ok=True)
    ports = [free_port() for _ in range(3)]
    mocks = {0: start_mock(ports[0], "w0"), 1: start_mock(ports[1], "w1"), 2: start_mock(ports[2], "w2")}
    port, metrics = free_port(), free_port()
    log = open(os.path.join(args.out, "router.log"), "w")
    router = subprocess.Popen([os.path.join(RELEASE, "vllm-router"), "--port", str(port), "--prometheus-port",
                               str(metrics), "--policy", "cache_aware", "--shards", str(args.shards),
                               "--health-check-interval-secs", "2", "--worker-urls",
                               f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"],
                              stdout=subprocess.DEVNULL, stderr=log)
    wait_port(port, router, "router")
    stop, counts = threading.Event(), Counts()
    threads = [threading.Thread(target=json_client, args=(port, stop, counts)) for _ in range(4)]
    threads += [threading.Thread(target=stream_client, args=(port, stop, counts, False)) for _ in range(2)]
    threads += [threading.Thread(target=stream_client, args=(port, stop, counts, True))]
    for t in threads:
        t.start()
    rows, start = [], time.time()
    end = start + args.minutes * 60
    next_kill, next_admin, next_sample, added = start + 30, start + 3, start, False
    killed_at = None
    try:
        while time.time() < end:
            now = time.time()
            if router.poll() is not None:
                sys.exit(f"the router exited ({router.returncode}); see {log.name}")
            if killed_at is None and now >= next_kill:
                mocks[1].send_signal(signal.SIGKILL); mocks[1].wait(); killed_at = now; counts.add("worker killed")
            if killed_at is not None and now >= killed_at + 5:
                mocks[1] = start_mock(ports[1], "w1"); killed_at = None; next_kill = now + 25
            if now >= next_admin:
                url = f"http://127.0.0.1:{ports[2]}"
                status = admin(port, f"/{'remove' if added else 'add'}_worker?url={url}")
                counts.add(f"admin {'remove' if added else 'add'} {status}")
                added = not added; next_admin = now + 3
            if now >= next_sample:
                rss, fds, sockets = sample(router.pid)
                rows.append({"t": round(now - start, 1), "rss_kib": rss, "fds": fds, "sockets": sockets})
                print(f"{rows[-1]['t']:7.1f}s  rss {rss / 1024:7.1f} MiB  fds {fds:5d}  sockets {sockets:5d}  "
                      f"{counts.snapshot()}", flush=True)
                next_sample = now + args.every
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
        router.terminate(); router.wait(timeout=40)
        for m in mocks.values():
            m.kill()
    with open(os.path.join(args.out, "soak.csv"), "w") as f:
        f.write("t_s,rss_kib,fds,sockets\n")
        for r in rows:
            f.write(f"{r['t']},{r['rss_kib']},{r['fds']},{r['sockets']}\n")
    svg(rows, os.path.join(args.out, "soak.svg"))
    print(f"\n{args.minutes:g} min, {len(rows)} samples; counts: {counts.snapshot()}")
    flat = verdict(rows)
    print(f"outputs: {args.out}/soak.csv, soak.svg, router.log")
    sys.exit(0 if flat else 1)


if __name__ == "__main__":
    main()
