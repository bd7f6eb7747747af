#!/usr/bin/env python3
"""Routing quality: a simulated cluster of mock vLLM workers with a bounded prefix cache
and a prefill cost per uncached block, driven by a multi-turn chat workload over a few
shared system prompts (each turn resends the whole conversation). For each router and
policy it reports the workers' prefix-cache hit rate (from their own counters),
max/mean requests per worker, and mean and p99 latency, side by side in one run:

- oracle: no router; each session goes straight to the worker its system prompt is
  pinned to (prompt k -> worker k mod workers), the placement a router that knew the
  workload would make;
- ours and the published vllm-router, each policy with one replica, and with two
  replicas over the same workers (turns of a session alternate between them, as
  behind a Kubernetes Service).

    bench/routing_quality.sh            # builds, then runs this with the defaults
    bench/routing_quality.sh --kv-events --policies kv_aware --published "" --seeds 41-80 --fixed-port 31000
                                        # one policy over 40 runs: averages and the spread
    bench/routing_quality.sh --sessions 256 --seeds 41-52 --fixed-port 31000
                                        # four times longer: the first wave of conversations, placed
                                        # before any prompt is known to be shared, is a sixteenth of it
    python3 bench/routing_quality.py --published target/published-venv/bin/vllm-router
"""
import argparse, http.client, json, os, random, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import RELEASE, free_port, wait_port  # noqa: E402

DEFAULT_PUBLISHED = os.path.join(ROOT, "target/published-venv/bin/vllm-router")


def get(url, path):
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("GET", path); r = c.getresponse(); body = r.read(); c.close(); return body.decode()


def metric(text, name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def start_workers(args, procs):
    """The workers' URLs: free ports on 127.0.0.1, or with --fixed-port the same URLs
    every run (127.0.0.2, .3, ... on one port), so that placement by URL is repeatable."""
    if args.fixed_port:
        hosts = [f"127.0.0.{2 + i}" for i in range(args.workers)]
        ports = [args.fixed_port] * args.workers
    else:
        hosts = ["127.0.0.1"] * args.workers
        ports = [free_port() for _ in range(args.workers)]
    for i, (h, p) in enumerate(zip(hosts, ports)):
        cache = ["--cache-blocks", str(args.cache_blocks), "--block-chars", "64",
                 "--prefill-us-per-block", str(args.prefill_us_per_block)]
        if args.kv_events:
            # Token blocks of 16 one-byte tokens: four times the blocks of 64 characters
            # hold the same text, and each costs a quarter of the prefill.
            cache = ["--cache-blocks", str(args.cache_blocks * 4), "--kv-block-size", "16",
                     "--prefill-us-per-block", str(args.prefill_us_per_block // 4),
                     "--kv-events-port", str(free_port()), "--kv-event-sources-form", "object",
                     "--kv-events-encoding", args.kv_encoding]
        m = subprocess.Popen([os.path.join(args.bin, "mock-vllm"), "--host", h, "--port", str(p), "--name", f"w{i}",
                              "--token-delay-us", str(args.token_delay_us), "--threads", "1"] + cache,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(m); wait_port(p, m, "mock", host=h)
    return [f"http://{h}:{p}" for h, p in zip(hosts, ports)]


def start_router(exe, policy, worker_urls, procs):
    # "kv_aware:--flag=value --other=value": a policy with flags of its own.
    policy, _, extra = policy.partition(":")
    port = free_port()
    # A 1 s health-check interval: a worker that missed the start-up probe joins in
    # seconds instead of a minute.
    log = tempfile.NamedTemporaryFile(prefix="vr-quality-", suffix=".log", delete=False)
    r = subprocess.Popen([exe, "--port", str(port), "--prometheus-port", str(free_port()), "--policy", policy,
                          "--health-check-interval-secs", "1"] + extra.split() + ["--worker-urls"] + worker_urls,
                         stdout=subprocess.DEVNULL, stderr=log)
    procs.append(r); wait_port(port, r, f"router {exe}")
    prometheus = port_of_flag(r.args, "--prometheus-port")
    # A router serves once one worker is healthy; measure only once every worker is
    # (both routers say so in /workers).
    end = time.time() + 60
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/workers"); resp = c.getresponse(); body = resp.read(); c.close()
            if resp.status == 200:
                v = json.loads(body)
                # Ours: "healthy"; the published router: "is_healthy" per worker.
                healthy = v.get("healthy", sum(1 for w in v.get("workers", []) if w.get("is_healthy")))
                if healthy == len(worker_urls):
                    return port, prometheus
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    sys.exit(f"router {exe}: not every worker became healthy; its log: {log.name}")


def port_of_flag(argv, flag):
    return int(argv[argv.index(flag) + 1])


def sole_sender(prometheus):
    """Our cache_aware router's verdict on whether it sends all of its workers'
    requests (None until the workers' counters have said enough)."""
    try:
        text = get(f"http://127.0.0.1:{prometheus}", "/metrics")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("vllm_router_sole_sender "):
            return float(line.split()[1]) == 1.0
    return None


def warm_up(args, routers, verdicts):
    """Requests that are not the workload (short prompts, each its own), spread over the
    routers, until every one of `verdicts` (our cache_aware routers' Prometheus
    ports) says whether it is its workers' sole sender, and at least --warmup
    requests: a router that has just started has not seen the workers' counters
    grow. Every router gets the same warm-up, whatever its policy."""
    sent, lock = [0], threading.Lock()
    done = threading.Event()
    deadline = time.time() + 30

    def client(n):
        conns = {}
        while not done.is_set():
            with lock:
                i = sent[0]; sent[0] += 1
            url = routers[i % len(routers)]
            if url not in conns:
                host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
                conns[url] = http.client.HTTPConnection(host, int(port), timeout=60)
            body = json.dumps({"model": "m", "max_tokens": 1,
                               "messages": [{"role": "user", "content": f"warm-up {args.seed} {i}"}]})
            conns[url].request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            conns[url].getresponse().read()
        for c in conns.values():
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads: t.start()
    try:
        while time.time() < deadline:
            if sent[0] >= args.warmup and all(sole_sender(p) is not None for p in verdicts):
                break
            time.sleep(0.1)
        else:
            sys.exit("warm-up: a router never said whether it is the sole sender")
    finally:
        done.set()
        for t in threads: t.join()


def stream_text(data):
    """The content of an SSE chat completion."""
    text = []
    for line in data.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def drive(args, route):
    """Runs the sessions; `route(k, turn)` gives the port for system prompt k's turn."""
    rng = random.Random(args.seed)
    systems = [f"System prompt {k}: you are an expert assistant for topic {k}. " * 40 for k in range(args.system_prompts)]
    # As many sessions per system prompt (as far as they divide), in a random order.
    sessions = [(f"session-{s}", s % args.system_prompts) for s in range(args.sessions)]
    rng.shuffle(sessions)
    latencies, lock = [], threading.Lock()
    placed = []  # (system prompt, session, turn, worker name)
    queue = list(sessions)

    def client():
        conns = {}
        while True:
            with lock:
                if not queue:
                    break
                sid, k = queue.pop()
            messages = [{"role": "system", "content": systems[k]}]
            for turn in range(args.turns):
                messages.append({"role": "user", "content": f"{sid} turn {turn}: " + "please explain more. " * 8})
                body = json.dumps({"model": "m", "messages": messages, "max_tokens": args.tokens,
                                   "stream": args.stream})
                url = route(k, turn)
                if url not in conns:
                    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
                    conns[url] = http.client.HTTPConnection(host, int(port), timeout=60)
                conn = conns[url]
                t0 = time.perf_counter()
                conn.request("POST", "/v1/chat/completions", body,
                             {"content-type": "application/json", "x-session-id": sid})
                resp = conn.getresponse(); data = resp.read()
                dt = time.perf_counter() - t0
                if resp.status != 200:
                    raise SystemExit(f"status {resp.status}: {data[:200]}")
                with lock:
                    latencies.append(dt)
                with lock:
                    placed.append((k, sid, turn, resp.getheader("x-mock-worker", "?")))
                answer = stream_text(data) if args.stream else json.loads(data)["choices"][0]["message"]["content"]
                messages.append({"role": "assistant", "content": answer})
        for c in conns.values():
            c.close()

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads: t.start()
    for t in threads: t.join()
    if args.trace or args.trace_sessions:
        trace(placed, args.trace_sessions)
    return latencies


def trace(placed, sessions=False):
    """Where each system prompt's requests went, and how many sessions moved."""
    by_prompt, by_session = {}, {}
    for k, sid, turn, w in placed:
        by_prompt.setdefault(k, {}).setdefault(w, 0)
        by_prompt[k][w] += 1
        by_session.setdefault(sid, []).append((turn, w))
    moves = sum(1 for turns in by_session.values() for a, b in zip(sorted(turns), sorted(turns)[1:]) if a[1] != b[1])
    print("  per prompt:", {k: dict(sorted(v.items())) for k, v in sorted(by_prompt.items())}, file=sys.stderr)
    print(f"  moves mid-session: {moves}", file=sys.stderr)
    if sessions:
        # In the order they started: the prompt, then the worker of each turn.
        starts = [(sid, k) for k, sid, turn, _ in placed if turn == 0]
        for i, (sid, k) in enumerate(starts):
            ws = " ".join(w for _, w in sorted(by_session[sid]))
            print(f"  #{i:<2} prompt {k}: {ws}", file=sys.stderr)


def run(args, name, exe=None, policy=None, replicas=1):
    procs = []
    try:
        workers = start_workers(args, procs)
        if exe is None:  # the oracle: pinned by system prompt, no router
            route = lambda k, turn: workers[k % len(workers)]
        else:
            started = [start_router(exe, policy, workers, procs) for _ in range(replicas)]
            routers = [f"http://127.0.0.1:{port}" for port, _ in started]
            ours_cache_aware = name == "ours" and policy.partition(":")[0] == "cache_aware"
            if args.warmup:
                warm_up(args, routers, [p for _, p in started] if ours_cache_aware else [])
            route = lambda k, turn: routers[turn % len(routers)]
        before = worker_counters(workers)
        latencies = drive(args, route)
        after = worker_counters(workers)
        hits, queries = (after[i] - before[i] for i in range(2))
        counts = [a - b for a, b in zip(after[2], before[2])]
        latencies.sort()
        return {
            "router": name, "policy": policy or "pinned by system prompt", "replicas": replicas,
            "hit_rate": hits / queries if queries else 0.0,
            "max_over_mean": max(counts) / (sum(counts) / len(counts)), "per_worker": counts,
            "mean_ms": statistics.mean(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "requests": len(latencies),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def worker_counters(workers):
    """The workers' prefix-cache hits and queries (tokens, summed) and requests each."""
    hits = queries = 0.0
    counts = []
    for p in workers:
        text = get(p, "/metrics")
        hits += metric(text, "vllm:prefix_cache_hits_total")
        queries += metric(text, "vllm:prefix_cache_queries_total")
        counts.append(json.loads(get(p, "/mock/stats"))["generation_requests"])
    return hits, queries, counts


def table(args):
    """One run of every row: the oracle, then each router, policy and replica count."""
    replicas = [int(r) for r in args.replicas.split(",")]
    rows = [run(args, "oracle")]
    for n in replicas:
        for p in args.policies.split(","):
            rows.append(run(args, "ours", os.path.join(args.bin, "vllm-router"), p, n))
        if args.published:
            for p in args.published_policies.split(","):
                rows.append(run(args, "published", args.published, p, n))
    return rows


def seed_list(spec):
    """'41-80' or '1,5,9'."""
    if "-" in spec:
        a, b = spec.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in spec.split(",")]


def over_seeds(args):
    """The table once per seed; per row, the averages over the runs. A single run's
    balance depends on where the first wave of conversations lands, so one run says
    little about a policy: docs/kv-aware.md reads 40 or more."""
    base = args.fixed_port
    runs = {}
    for seed in seed_list(args.seeds):
        args.seed = seed
        args.fixed_port = base + seed if base else 0
        rows = table(args)
        oracle = rows[0]["hit_rate"]
        for r in rows[1:]:
            key = (r["router"], r["policy"], r["replicas"])
            share = r["hit_rate"] / oracle if oracle else 0.0
            runs.setdefault(key, []).append((share, r["max_over_mean"], r["mean_ms"]))
            print(f"seed {seed}: {key[0]} {key[1]} x{key[2]}: {share:.1%} of oracle, max/mean "
                  f"{r['max_over_mean']:.2f}", file=sys.stderr)
    print(f"\n{len(seed_list(args.seeds))} runs (seeds {args.seeds}); hit rate as a share of each run's oracle\n")
    print("| router | policy | replicas | of oracle, mean (least) | max/mean, mean (most) | runs at most 1.10 | mean ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (router, policy, n), v in runs.items():
        k = len(v)
        share, bal, ms = (sum(x[i] for x in v) / k for i in range(3))
        within = sum(1 for x in v if x[1] <= 1.10) / k
        print(f"| {router} | {policy} | {n} | {share:.1%} ({min(x[0] for x in v):.1%}) | "
              f"{bal:.3f} ({max(x[1] for x in v):.2f}) | {within:.0%} | {ms:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{r}|{p}|{n}": v for (r, p, n), v in runs.items()}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", default="round_robin,consistent_hash,power_of_two,cache_aware",
                    help="comma separated; a policy may carry flags: kv_aware:--kv-provisional-ttl-secs=0")
    ap.add_argument("--replicas", default="1,2", help="router replicas to run each policy with")
    ap.add_argument("--published", default=DEFAULT_PUBLISHED if os.path.exists(DEFAULT_PUBLISHED) else "",
                    help="the published vllm-router executable (empty: skip it)")
    ap.add_argument("--published-policies", default="round_robin,consistent_hash,power_of_two,cache_aware")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--system-prompts", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--cache-blocks", type=int, default=160, help="per worker, 64 chars a block")
    ap.add_argument("--prefill-us-per-block", type=int, default=300)
    ap.add_argument("--token-delay-us", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=64,
                    help="requests (short prompts, each its own) through each run's routers before the "
                         "workload, at least; and until our cache_aware knows whether it is its workers' "
                         "sole sender. 0: none")
    ap.add_argument("--bin", default=RELEASE)
    ap.add_argument("--fixed-port", type=int, default=0,
                    help="workers on 127.0.0.2, .3, ... at this port: the same URLs every run")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--stream", action="store_true", help="stream the answers (SSE)")
    ap.add_argument("--trace", action="store_true", help="print where each system prompt's requests went")
    ap.add_argument("--trace-sessions", action="store_true",
                    help="--trace, and each session's worker per turn, in the order sessions started")
    ap.add_argument("--kv-events", action="store_true",
                    help="workers cache token blocks and publish vLLM KV events (for kv_aware)")
    ap.add_argument("--kv-encoding", default="tagged", choices=["tagged", "map", "positional"],
                    help="tagged: 0.1.17 reads only this; positional: what vLLM itself sends")
    ap.add_argument("--seeds", help="run the whole table once per seed (41-80, or 1,5,9) and print "
                    "each policy's averages over the runs; with --fixed-port P, seed N's workers use port P+N")
    args = ap.parse_args()
    if args.seeds:
        return over_seeds(args)
    rows = table(args)
    oracle = rows[0]["hit_rate"]
    print(f"\n{args.workers} mock workers (prefix cache {args.cache_blocks} blocks of 64 chars, "
          f"{args.prefill_us_per_block} us prefill per uncached block, {args.token_delay_us} us per token, "
          f"{args.tokens} tokens); {args.sessions} sessions x {args.turns} turns over {args.system_prompts} "
          f"shared system prompts, {args.concurrency} concurrent clients\n")
    print("| router | policy | replicas | hit rate | of oracle | max/mean | requests per worker | mean ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        share = r["hit_rate"] / oracle if oracle else 0.0
        print(f"| {r['router']} | {r['policy']} | {r['replicas']} | {r['hit_rate']:.1%} | {share:.1%} | "
              f"{r['max_over_mean']:.2f} | {r['per_worker']} | {r['mean_ms']:.1f} | {r['p99_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
