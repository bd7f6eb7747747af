"""Helpers shared by the benchmark scripts: ports, process start-up, where the release
binaries are."""
import os
import socket
import subprocess
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


def nginx_conf(run, template, edit=None, **subs):
    """bench/nginx/`template` with __KEY__ placeholders filled from `subs` (and the
    text passed through `edit` when given), written under `run`; returns its path."""
    text = open(os.path.join(ROOT, "bench/nginx", template)).read()
    for k, v in subs.items():
        text = text.replace(f"__{k}__", str(v))
    if edit:
        text = edit(text)
    path = os.path.join(run, template)
    open(path, "w").write(text)
    return path


def stop_groups(procs):
    """Stops processes started with start_new_session=True, with their children."""
    for p in procs:
        try:
            os.killpg(p.pid, 15)
        except OSError:
            pass


def starter(run, procs, **popen):
    """`start(cmd, port, name)`: runs `cmd` in a session of its own (stop_groups stops it
    with its children), its stderr in `run`/NAME.log, appended to `procs`, and returns
    once it listens on `port`. `popen`: more arguments for every `subprocess.Popen`."""
    def start(cmd, port, name):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(run, name + ".log"), "w"),
                             start_new_session=True, **popen)
        procs.append(p)
        wait_port(port, p, name)
        return p
    return start
