"""`Router(**keywords).start()`: the published package's Python entry point. Keywords are
the command-line flags with underscores (`worker_urls=[...]`, `policy="cache_aware"`,
`port=30000`); the router runs as the `vllm-router` executable, so both take the same
settings and give the same errors."""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from typing import Any, Dict, List, Optional

# Keywords of the published Router whose flag has another name.
RENAMED = {"prefill_urls": "prefill", "decode_urls": "decode"}


def binary() -> str:
    """The `vllm-router` executable: $VLLM_ROUTER_BIN, the one installed beside this
    package, or the first on PATH."""
    override = os.environ.get("VLLM_ROUTER_BIN")
    if override:
        return override
    beside = os.path.join(sysconfig.get_path("scripts"), "vllm-router")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("vllm-router")
    if found is None:
        raise FileNotFoundError("the vllm-router executable is not installed (pip install vllm-router)")
    return found


def _policy_name(value: Any) -> str:
    # The published package passes an enum; ours takes its name or a string.
    name = getattr(value, "name", value)
    return {"RoundRobin": "round_robin", "Random": "random", "CacheAware": "cache_aware",
            "PowerOfTwo": "power_of_two", "ConsistentHash": "consistent_hash", "KvAware": "kv_aware",
            "StickyLeastLoaded": "sticky_least_loaded"}.get(str(name), str(name))


def to_args(keywords: Dict[str, Any]) -> List[str]:
    """The command line for these keywords; None and False leave a flag out."""
    args: List[str] = []
    for key, value in keywords.items():
        if value is None or value is False:
            continue
        flag = "--" + RENAMED.get(key, key).replace("_", "-")
        if key in ("policy", "prefill_policy", "decode_policy"):
            args += [flag, _policy_name(value)]
        elif value is True:
            args.append(flag)
        elif key == "prefill_urls":
            for entry in value:
                url, port = (entry, None) if isinstance(entry, str) else (entry[0], entry[1])
                args += [flag, url, "none" if port is None else str(port)]
        elif key == "decode_urls":
            for url in value:
                args += [flag, url]
        elif isinstance(value, dict):  # selectors: {"app": "vllm"}
            if value:
                args += [flag] + [f"{k}={v}" for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            if value:
                args += [flag] + [str(v) for v in value]
        else:
            args += [flag, str(value)]
    return args


class Router:
    """A router configured by keywords; `start()` runs it until it exits."""

    def __init__(self, router: Optional[List[str]] = None, **keywords: Any):
        # `router`: a ready command line (what `from_args` builds).
        self.args = list(router) if router is not None else to_args(keywords)

    @staticmethod
    def from_args(args: Any) -> "Router":
        """From an argparse namespace or a dict of keywords."""
        keywords = dict(vars(args)) if not isinstance(args, dict) else dict(args)
        return Router(**keywords)

    def start(self) -> None:
        """Runs the router in the foreground; returns when it exits, raising on a
        non-zero exit. SIGINT and SIGTERM reach it (it drains, then exits)."""
        proc = subprocess.Popen([binary()] + self.args)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def forward(signum, _frame):
            proc.send_signal(signum)

        for s in previous:
            signal.signal(s, forward)
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if code != 0:
            raise RuntimeError(f"vllm-router exited with status {code}")


if __name__ == "__main__":
    sys.exit("use `python -m vllm_router.launch_router` or the vllm-router command")
