"""vllm-router as a Python package: the same entry points as the published package
(`from vllm_router import Router`, `python -m vllm_router.launch_router`), each running
the `vllm-router` executable this wheel installed."""

from vllm_router.router import Router, binary

__version__ = "0.1.0"
__all__ = ["Router", "binary", "__version__"]
