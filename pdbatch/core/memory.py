"""Giving freed memory back to the system between the phases of a job, and between the steps of a large join.

Arrow's allocator and the C library's keep what a phase freed for reuse;
on a million-row job, the submission phase (request lines, the upload
buffers, the pickled copy of the frame) leaves a few hundred MiB of such
memory behind, and the join would count it on top of the frame it builds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Callable, Optional

import pyarrow as pa

__all__ = ["give_back"]

_log = logging.getLogger("pdbatch")
_TRIM: list = []  # [malloc_trim or None], looked up once


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
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
        _log.debug("gave freed memory back to the system")
