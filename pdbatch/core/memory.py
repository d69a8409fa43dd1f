"""Giving freed memory back to the system between the phases of a job, and between the steps of a large join.

Arrow's allocator and the C library's keep what a phase freed for reuse;
on a million-row job, the submission phase (request lines, the upload
buffers, the pickled copy of the frame) leaves a few hundred MiB of such
memory behind, and the join would count it on top of the frame it builds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from typing import Any, Callable, Iterator, List, Optional

import pyarrow as pa

__all__ = ["give_back", "system_pool", "in_system_pool"]

_log = logging.getLogger("pdbatch")
_TRIM: list = []  # [malloc_trim or None], looked up once
_LOCK = threading.Lock()
_ENTERED: List[Any] = [0, None]  # blocks inside system_pool(), the pool to restore when the last one leaves


def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    if not _TRIM:
        trim = None
        try:
            name = ctypes.util.find_library("c")
            trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        except OSError:
            trim = None
        _TRIM.append(trim)
    return _TRIM[0]


def give_back() -> None:
    """Return the memory Arrow's pool and the C heap hold free to the system.

    It costs a few milliseconds and never changes a result: only memory
    already freed is returned. Called where a job moves from one phase to the
    next (after the submission, before the join).
    """
    pa.default_memory_pool().release_unused()
    saved = _ENTERED[1]  # inside system_pool(): what the pool it replaced holds free too
    if saved is not None:
        saved.release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
        _log.debug("gave freed memory back to the system")


@contextlib.contextmanager
def system_pool() -> Iterator[None]:
    """Arrow allocates from the C library's allocator inside the block, where that one gives memory back.

    Arrow's default pool (mimalloc) keeps freed pages in per-thread heaps: a
    job whose answers are read and parsed on short-lived threads, shard after
    shard, leaves tens of MiB per shard that :func:`give_back` cannot
    return. glibc's allocator returns them on ``malloc_trim``. Applies only
    where glibc is the C library and the user has not chosen a pool
    (``ARROW_DEFAULT_MEMORY_POOL``); blocks nest, and the default pool is
    restored when the last one leaves. Buffers keep the pool that made them,
    so nothing made inside the block is affected by the switch back.
    """
    if _malloc_trim() is None or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    with _LOCK:
        if not _ENTERED[0]:
            _ENTERED[1] = pa.default_memory_pool()
            pa.set_memory_pool(pa.system_memory_pool())
        _ENTERED[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _ENTERED[0] -= 1
            if not _ENTERED[0]:
                pa.set_memory_pool(_ENTERED[1])
                _ENTERED[1] = None


def in_system_pool(fn: Callable) -> Callable:
    """``fn`` run inside :func:`system_pool` (a decorator for a job's phases)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with system_pool():
            return fn(*args, **kwargs)
    return run
