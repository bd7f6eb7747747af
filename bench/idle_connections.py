#!/usr/bin/env python3
"""Memory per idle keep-alive connection: vllm-router (ours), nginx proxy_pass and the
published vllm-router side by side in one run, in front of an nginx `return 200`
backend. Each client connection sends one small chat completion, reads the answer and
stays open (what a chat client or an agent between turns looks like). The table shows
each proxy's RSS growth per idle client connection once they have sat idle for
`--idle-secs`, and the latency of requests made
on another connection while they stay open (against the same without them).

    python3 bench/idle_connections.py --connections 10000,100000
    python3 bench/idle_connections.py --pooled 600     # idle pooled upstream connections

With `--pooled N` it measures the other side instead: N requests at once through each
proxy to a mock worker that answers after `--hold-ms`, so each proxy opens about N
upstream connections; the clients then leave, and once the proxy has sat idle for a
second the table shows its upstream connections still open (its keep-alive pool: both
keep at most 256 idle per worker process or shard) and its RSS growth per connection.

Linux only. The clients and every proxy run with the file-descriptor limit raised to
the hard limit (as root, past it): more connections than that limit cannot be held
(on the bench machine the hard limit is 20,000 and cannot be raised)."""
import argparse, os, resource, socket, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import RELEASE, free_port, nginx_conf, starter, stop_groups  # noqa: E402

BODY = b'{"model":"m","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":1}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
# Loopback source addresses: each gives ~28k ephemeral ports towards one listener.
PER_SOURCE = 25000
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h; not exported by Python's socket module


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree(pid):
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [q for k in kids for q in tree(int(k))]


def read_answer(s):
    """Reads one HTTP answer with a Content-Length; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed before the answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed mid-answer")
        rest += chunk
    return int(head.split(b" ", 2)[1])


def open_idle(port, n, first_source):
    """n connections, each after one answered request, from loopback addresses
    127.0.`first_source`.1 and up."""
    conns = []
    for i in range(n):
        src = f"127.0.{first_source + i // PER_SOURCE}.1"
        s = socket.socket()
        # The port is picked at connect (per destination), not at bind.
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(REQUEST)
        status = read_answer(s)
        if status != 200:
            sys.exit(f"port {port}: connection {i} was answered {status}")
        conns.append(s)
    return conns


def pooled_upstream(port, backend_port, n, hold_ms):
    """Sends n requests at once, each held `hold_ms` by the worker, reads the answers,
    closes the client connections; returns the proxy's open connections to the worker
    after a second."""
    held = REQUEST.replace(b"\r\n\r\n", f"\r\nx-mock-token-delay-us: {hold_ms * 1000}\r\n\r\n".encode(), 1)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for s in conns:
        s.sendall(held)
    for i, s in enumerate(conns):
        if read_answer(s) != 200:
            sys.exit(f"port {port}: pooled request {i} failed")
    for s in conns:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(1.0)  # the definition of idle, not a synchronisation
    return upstream_open(backend_port)


def upstream_open(backend_port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"dst 127.0.0.1:{backend_port}"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def active_latency(port, n=400):
    """p50 and p99 in microseconds of n sequential requests on one connection."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(REQUEST)
        read_answer(s)
        times.append((time.perf_counter() - t0) * 1e6)
    s.close()
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", default="10000", help="comma separated counts")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--router", default=os.path.join(RELEASE, "vllm-router"))
    ap.add_argument("--baseline-router", default=None, help="another build measured alongside (A/B)")
    ap.add_argument("--published", default=os.environ.get("PUBLISHED_ROUTER", os.path.join(
        ROOT, "target/published-venv/bin/vllm-router")), help="empty: skip it")
    ap.add_argument("--no-nginx-proxy", action="store_true")
    ap.add_argument("--pooled", type=int, default=0,
                    help="measure N idle pooled upstream connections instead (see above)")
    ap.add_argument("--hold-ms", type=int, default=500, help="--pooled: how long the worker holds each request")
    ap.add_argument("--idle-secs", type=float, default=3.0,
                    help="how long the connections sit idle before RSS is read again (ours sets a "
                         "connection's task aside after 1 s of silence)")
    args = ap.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    limit = max(counts) + 10000
    raise_nofile(limit)

    run = tempfile.mkdtemp(prefix="vr-idle-")
    procs = []

    start = starter(run, procs, preexec_fn=lambda: raise_nofile(limit))

    def room_for_everyone(text):
        # Room for every client connection in one worker (reuseport spreads them).
        text = text.replace("worker_connections 4096;", f"worker_connections {limit};")
        return text.replace("daemon off;", f"daemon off;\nworker_rlimit_nofile {limit};")

    try:
        backend = free_port()
        if args.pooled:
            start([os.path.join(RELEASE, "mock-vllm"), "--port", str(backend)], backend, "backend")
        else:
            start(["nginx", "-p", run, "-c", nginx_conf(run, "backend.conf", room_for_everyone, BACKEND_PORT=backend)],
                  backend, "backend")
        upstream = f"http://127.0.0.1:{backend}"
        # (name, command for a port): each count gets fresh processes, so memory the
        # allocator kept from a larger count does not hide the next one's growth.
        targets = []
        for name, exe in [("vllm-router (this project)", args.router), ("vllm-router (baseline build)", args.baseline_router)]:
            if exe:
                targets.append((name, lambda port, exe=exe: [
                    exe, "--port", str(port), "--prometheus-port", str(free_port()), "--shards", str(args.shards),
                    "--policy", "round_robin", "--worker-urls", upstream]))
        if not args.no_nginx_proxy:
            targets.append((f"nginx proxy_pass ({args.shards} workers)", lambda port: [
                "nginx", "-p", run, "-c", nginx_conf(run, "proxy.conf", room_for_everyone, BACKEND_PORT=backend, PROXY_PORT=port,
                                                     WORKERS=args.shards)]))
        if args.published and os.path.exists(args.published):
            targets.append(("published vllm-router", lambda port: [
                args.published, "--port", str(port), "--prometheus-port", str(free_port()),
                "--policy", "round_robin", "--worker-urls", upstream]))

        if args.pooled:
            print("| requests at once | proxy | RSS before | after, idle 1 s | upstream connections open | per connection "
                  "| idle 6 s: RSS, upstream connections open |")
            print("|---:|---|---:|---:|---:|---:|---|")
            for name, command in targets:
                port = free_port()
                proc = start(command(port), port, name)
                pids = tree(proc.pid)
                active_latency(port, 200)  # warm: code paged in
                before = rss_kib(pids)
                pooled = pooled_upstream(port, backend, args.pooled, args.hold_ms)
                after = rss_kib(pids)
                # Ours closes a connection idle for 4 s; nginx keeps its for 60 s.
                time.sleep(5.0)
                later, still = rss_kib(pids), upstream_open(backend)
                os.killpg(proc.pid, 15)
                proc.wait()
                each = (after - before) / pooled if pooled else 0.0
                print(f"| {args.pooled:,} | {name} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {pooled} | {each:.2f} KiB "
                      f"| {later / 1024:.1f} MiB, {still} |")
            return
        rows = []
        source = 1
        for n in counts:
            for name, command in targets:
                port = free_port()
                proc = start(command(port), port, name)
                pids = tree(proc.pid)
                active_latency(port, 200)  # warm: pools filled, code paged in
                quiet = active_latency(port)
                before = rss_kib(pids)
                conns = open_idle(port, n, source)
                source += n // PER_SOURCE + 1
                opened = rss_kib(pids)
                time.sleep(args.idle_secs)  # the definition of idle, not a synchronisation
                after = rss_kib(pids)
                busy = active_latency(port)
                for s in conns:
                    # A reset, not a FIN: no TIME_WAIT left holding the client's ports.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
                os.killpg(proc.pid, 15)
                proc.wait()
                row = (n, name, before, opened, after, (after - before) / n, quiet, busy)
                rows.append(row)
                print(f"{n} {name}: RSS {before} -> {opened} -> {after} KiB, {row[5]:.2f} KiB each; "
                      f"p50/p99 {quiet[0]:.0f}/{quiet[1]:.0f} -> {busy[0]:.0f}/{busy[1]:.0f} us", file=sys.stderr)
        print(f"| idle connections | proxy | RSS before | RSS once they are open | after {args.idle_secs:g} s idle "
              "| per idle connection | active p50 / p99 alone | active p50 / p99 with them open |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for n, name, before, opened, after, each, quiet, busy in rows:
            print(f"| {n:,} | {name} | {before / 1024:.1f} MiB | {opened / 1024:.1f} MiB | {after / 1024:.1f} MiB | {each:.2f} KiB "
                  f"| {quiet[0]:.0f} / {quiet[1]:.0f} us | {busy[0]:.0f} / {busy[1]:.0f} us |")
    finally:
        stop_groups(procs)


if __name__ == "__main__":
    main()
