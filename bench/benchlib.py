"""Helpers shared by the benchmark scripts: ports, process start-up, where the release
binaries are."""
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# cargo puts its output under CARGO_TARGET_DIR when set (relative to where cargo ran).
RELEASE = os.path.join(os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")),
                       "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, name, timeout=60, host="127.0.0.1"):
    """Waits until something listens on `port`; exits if `proc` dies first."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"{name} exited: {proc.returncode}")
            time.sleep(0.05)
    sys.exit(f"{name} did not listen on {port}")
