#!/usr/bin/env python3
"""The router's own time in a P/D request: for each request, the time through the
router minus the time the same prefill and decode requests take sent straight to the
same mock workers (measured back to back, on keep-alive connections).

    cargo build --release --workspace && python3 bench/pd_overhead.py [--requests N]
"""
import argparse, http.client, json, os, statistics, subprocess, sys, time
sys.path.insert(0, os.path.dirname(__file__))
from benchlib import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from benchlib import RELEASE as REL  # noqa: E402


def post(conn, path, body):
    data = json.dumps(body)
    t = time.perf_counter()
    conn.request("POST", path, body=data, headers={"content-type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    dt = time.perf_counter() - t
    assert r.status == 200, (r.status, payload[:200])
    return dt, payload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--stream", action="store_true", help="decode leg streamed (SSE)")
    args = ap.parse_args()
    procs = []
    try:
        pp, dp, rp = free_port(), free_port(), free_port()
        for port, name in [(pp, "p"), (dp, "d")]:
            p = subprocess.Popen([os.path.join(REL, "mock-vllm"), "--port", str(port), "--name", name],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p); wait_port(port, p, name)
        r = subprocess.Popen([os.path.join(REL, "vllm-router"), "--port", str(rp), "--prometheus-port", str(free_port()),
                              "--vllm-pd-disaggregation", "--prefill", f"http://127.0.0.1:{pp}",
                              "--decode", f"http://127.0.0.1:{dp}", "--policy", "round_robin", "--shards", "1",
                              "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(r); wait_port(rp, r, "router")
        cp, cd, cr = (http.client.HTTPConnection("127.0.0.1", p) for p in (pp, dp, rp))
        base = {"model": "mock-model", "messages": [{"role": "user", "content": "hello " * 50}],
                "max_tokens": 8, "stream": args.stream}
        prefill = dict(base, max_tokens=1, stream=False, kv_transfer_params={
            "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
            "remote_block_ids": None, "remote_host": None, "remote_port": None})
        own = []
        for i in range(args.requests + 200):
            body = dict(base, messages=[{"role": "user", "content": f"q{i} " + "hello " * 50}])
            pre = dict(prefill, messages=body["messages"])
            tp, answer = post(cp, "/v1/chat/completions", pre)
            dec = dict(body, kv_transfer_params=json.loads(answer)["kv_transfer_params"])
            td, _ = post(cd, "/v1/chat/completions", dec)
            tr, _ = post(cr, "/v1/chat/completions", body)
            if i >= 200:  # warm-up
                own.append((tr - tp - td) * 1e6)
        own.sort()
        q = lambda f: own[min(len(own) - 1, int(f * len(own)))]
        print(f"router's own time per P/D request over {len(own)} requests "
              f"({'SSE' if args.stream else 'JSON'} decode): p50 {q(0.5):.0f} us, p90 {q(0.9):.0f} us, "
              f"p99 {q(0.99):.0f} us, mean {statistics.mean(own):.0f} us")
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
