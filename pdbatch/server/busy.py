"""How long the local server was busy: the union of its busy periods.

:class:`BusyClock` is what :attr:`pdbatch.server.Stats.busy_seconds` reads. A
busy period is opened and closed around a piece of work (an HTTP call, a batch
run by the worker); periods may overlap and come from several threads. The
clock counts the wall time during which *at least one* period is open, so
overlapping work is counted once and the total never exceeds the wall time
elapsed.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["BusyClock"]


class BusyClock:
    """Thread-safe wall-clock time during which at least one busy period is open.

    Examples
    --------
    >>> clock = BusyClock()
    >>> clock.seconds
    0.0
    >>> with clock.busy():
    ...     with clock.busy():      # an overlapping period adds nothing more
    ...         time.sleep(0.01)
    ...     with clock.idle():      # a sleep inside a period is not counted
    ...         time.sleep(0.05)
    >>> 0.01 <= clock.seconds < 0.05
    True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0.0
        self._open = 0  # periods open now
        self._since = 0.0  # perf_counter() when _open last rose from 0

    @property
    def seconds(self) -> float:
        """Busy seconds so far, including the part of a period still open."""
        with self._lock:
            if self._open:
                return self._total + (time.perf_counter() - self._since)
            return self._total

    def enter(self) -> None:
        """Open one busy period (pair it with :meth:`leave`)."""
        with self._lock:
            if not self._open:
                self._since = time.perf_counter()
            self._open += 1

    def leave(self) -> None:
        """Close one busy period opened by :meth:`enter`."""
        with self._lock:
            if self._open <= 0:
                raise RuntimeError("BusyClock.leave() without a matching enter()")
            self._open -= 1
            if not self._open:
                self._total += time.perf_counter() - self._since

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the ``with`` block as busy."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def idle(self) -> Iterator[None]:
        """Inside a :meth:`busy` block, leave the ``with`` block (a sleep) uncounted."""
        self.leave()
        try:
            yield
        finally:
            self.enter()
