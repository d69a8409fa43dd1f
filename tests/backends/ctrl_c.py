"""A backend that presses Ctrl-C (a real SIGINT to this process) when its first answer is stored."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator


def ctrl_c_after_first(backend_class: type) -> type:
    """A subclass of ``backend_class`` that raises SIGINT once, right after the first answer is stored."""

    class CtrlCAfterFirst(backend_class):
        def _arrived(self, job, result):
            super()._arrived(job, result)
            if not getattr(self, "_fired", False):
                self._fired = True
                signal.raise_signal(signal.SIGINT)

    return CtrlCAfterFirst


@contextmanager
def python_ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handler for the block, even where the test runner was started with SIGINT ignored
    (a background job of a non-interactive shell), so that a raised SIGINT becomes KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
