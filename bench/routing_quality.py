#!/usr/bin/env python3
"""Routing quality: a simulated cluster of mock vLLM workers with a bounded prefix cache
and a prefill cost per uncached block, driven by a multi-turn chat workload over a few
shared system prompts (each turn resends the whole conversation). For each policy it
reports the workers' prefix-cache hit rate (from their own counters), max/mean
requests per worker, and mean and p99 latency.

    bench/routing_quality.sh            # builds, then runs this with the defaults
"""
import argparse, http.client, json, os, random, socket, statistics, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import free_port, wait_port  # noqa: E402


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path); r = c.getresponse(); body = r.read(); c.close(); return body.decode()


def metric(text, name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def run_policy(policy, args, binroot):
    procs = []
    try:
        ports = [free_port() for _ in range(args.workers)]
        for i, p in enumerate(ports):
            m = subprocess.Popen([os.path.join(binroot, "mock-vllm"), "--port", str(p), "--name", f"w{i}",
                                  "--cache-blocks", str(args.cache_blocks), "--block-chars", "64",
                                  "--prefill-us-per-block", str(args.prefill_us_per_block),
                                  "--token-delay-us", str(args.token_delay_us), "--threads", "1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(m); wait_port(p, m, "mock")
        rport = free_port()
        r = subprocess.Popen([os.path.join(binroot, "vllm-router"), "--port", str(rport),
                              "--prometheus-port", str(free_port()), "--policy", policy,
                              "--worker-urls"] + [f"http://127.0.0.1:{p}" for p in ports],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(r); wait_port(rport, r, "router")

        rng = random.Random(args.seed)
        systems = [f"System prompt {k}: you are an expert assistant for topic {k}. " * 40 for k in range(args.system_prompts)]
        sessions = [(f"session-{s}", rng.randrange(args.system_prompts)) for s in range(args.sessions)]
        latencies, lock = [], threading.Lock()
        queue = list(sessions)

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", rport, timeout=60)
            while True:
                with lock:
                    if not queue:
                        break
                    sid, k = queue.pop()
                messages = [{"role": "system", "content": systems[k]}]
                for turn in range(args.turns):
                    messages.append({"role": "user", "content": f"{sid} turn {turn}: " + "please explain more. " * 8})
                    body = json.dumps({"model": "m", "messages": messages, "max_tokens": args.tokens})
                    t0 = time.perf_counter()
                    conn.request("POST", "/v1/chat/completions", body,
                                 {"content-type": "application/json", "x-session-id": sid})
                    resp = conn.getresponse(); data = resp.read()
                    dt = time.perf_counter() - t0
                    if resp.status != 200:
                        raise SystemExit(f"{policy}: status {resp.status}: {data[:200]}")
                    with lock:
                        latencies.append(dt)
                    answer = json.loads(data)["choices"][0]["message"]["content"]
                    messages.append({"role": "assistant", "content": answer})
            conn.close()

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads: t.start()
        for t in threads: t.join()
        wall = time.perf_counter() - start

        hits = queries = 0.0
        counts = []
        for p in ports:
            text = get(p, "/metrics")
            hits += metric(text, "vllm:prefix_cache_hits_total")
            queries += metric(text, "vllm:prefix_cache_queries_total")
            counts.append(json.loads(get(p, "/mock/stats"))["generation_requests"])
        latencies.sort()
        return {
            "policy": policy, "hit_rate": hits / queries if queries else 0.0,
            "max_over_mean": max(counts) / (sum(counts) / len(counts)), "per_worker": counts,
            "mean_ms": statistics.mean(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "requests": len(latencies), "wall_s": wall,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", default="round_robin,random,consistent_hash,power_of_two,cache_aware")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--system-prompts", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--cache-blocks", type=int, default=160, help="per worker, 64 chars a block")
    ap.add_argument("--prefill-us-per-block", type=int, default=300)
    ap.add_argument("--token-delay-us", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"))
    args = ap.parse_args()
    rows = [run_policy(p, args, args.bin) for p in args.policies.split(",")]
    print(f"\n{args.workers} mock workers (prefix cache {args.cache_blocks} blocks of 64 chars, "
          f"{args.prefill_us_per_block} us prefill per uncached block, {args.token_delay_us} us per token, "
          f"{args.tokens} tokens); {args.sessions} sessions x {args.turns} turns over {args.system_prompts} "
          f"shared system prompts, {args.concurrency} concurrent clients\n")
    print("| policy | prefix-cache hit rate | max/mean requests per worker | requests per worker | mean ms | p99 ms |")
    print("|---|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['hit_rate']:.1%} | {r['max_over_mean']:.2f} | {r['per_worker']} | "
              f"{r['mean_ms']:.1f} | {r['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
