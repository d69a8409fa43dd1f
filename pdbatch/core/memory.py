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
from typing import Any, Callable, Iterator, List

import pyarrow as pa

__all__ = ["give_back", "system_pool", "in_system_pool"]

_log = logging.getLogger("pdbatch")
_LIBC: list = []  # [(malloc_trim, mallopt) or (None, None)], looked up once
_LOCK = threading.Lock()
#: Blocks inside system_pool(), the pool to restore when the last one leaves, whether it set the mmap threshold.
_ENTERED: List[Any] = [0, None, False]

_M_MMAP_THRESHOLD = -3
#: While a job runs, C allocations from this size on get pages of their own, given back the moment they are freed.
MMAP_THRESHOLD = 256 << 10
#: The most glibc raises its threshold to by itself (64-bit), where a process working with large arrays has it:
#: what a job leaves behind, so that the large buffers of the user's later work are reused, not mapped anew.
_GLIBC_THRESHOLD = 32 << 20


def _libc() -> tuple:
    """glibc's ``(malloc_trim, mallopt)``, or ``(None, None)`` where the C library is another (macOS, musl, Windows)."""
    if not _LIBC:
        found = (None, None)
        try:
            name = ctypes.util.find_library("c")
            lib = ctypes.CDLL(name) if name else None
            if lib is not None and hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt"):
                found = (lib.malloc_trim, lib.mallopt)
        except OSError:
            pass
        _LIBC.append(found)
    return _LIBC[0]


def _threshold_is_the_users() -> bool:
    """Whether the user set glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``)."""
    return "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")


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
    trim = _libc()[0]
    if trim is not None:
        trim(0)
        _log.debug("gave freed memory back to the system")


@contextlib.contextmanager
def system_pool() -> Iterator[None]:
    """Inside the block, a job's memory comes from the C library's allocator, and large blocks go back when freed.

    Two settings, both process-wide, for the time of the block, where glibc
    is the C library:

    - Arrow allocates from the C library (``pa.system_memory_pool()``), unless
      the user chose a pool (``ARROW_DEFAULT_MEMORY_POOL``). Arrow's default
      (mimalloc) keeps freed pages in per-thread heaps: a job whose answers are
      read and parsed on short-lived threads, shard after shard, leaves tens of
      MiB per shard that :func:`give_back` cannot return; glibc returns them
      on ``malloc_trim``. Buffers keep the pool that made them, so nothing
      made inside the block is affected by the switch back.
    - Allocations of :data:`MMAP_THRESHOLD` (256 KiB) and more get pages of
      their own (``mallopt(M_MMAP_THRESHOLD)``), unless the user set the
      threshold (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``). glibc
      otherwise raises its threshold as large blocks are freed (up to 32 MiB)
      and serves a shard's buffers from its heaps, where the ones a job keeps
      hold the pages around them resident: 51 MiB at a million rows. On leaving,
      the threshold is set to 32 MiB, the most glibc raises it to by itself
      (it no longer moves it after a ``mallopt``).

    Blocks nest and may run on several threads; when the last block leaves,
    the pool it replaced comes back and the threshold is set as said.
    """
    trim, mallopt = _libc()
    switch = trim is not None and not os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    tune = mallopt is not None and not _threshold_is_the_users()
    if not (switch or tune):
        yield
        return
    with _LOCK:
        if not _ENTERED[0]:
            if switch:
                _ENTERED[1] = pa.default_memory_pool()
                pa.set_memory_pool(pa.system_memory_pool())
            if tune:
                _ENTERED[2] = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        _ENTERED[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _ENTERED[0] -= 1
            if not _ENTERED[0]:
                if _ENTERED[1] is not None:
                    pa.set_memory_pool(_ENTERED[1])
                if _ENTERED[2]:
                    mallopt(_M_MMAP_THRESHOLD, _GLIBC_THRESHOLD)
                _ENTERED[1], _ENTERED[2] = None, False


def in_system_pool(fn: Callable) -> Callable:
    """``fn`` run inside :func:`system_pool` (a decorator for a job's phases)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with system_pool():
            return fn(*args, **kwargs)
    return run
