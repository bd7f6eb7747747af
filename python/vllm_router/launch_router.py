"""`python -m vllm_router.launch_router ARGS`: the published package's launcher; it
becomes the `vllm-router` executable with the same arguments (exec, so signals and the
exit status are the router's own)."""

import os
import sys

from vllm_router.router import binary


def main() -> None:
    exe = binary()
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    main()
