"""Cross-process locks on a job's directory: one submitter, one healer, one row-by-row runner at a time."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import JobError

__all__ = ["job_lock"]


@contextmanager
def job_lock(workdir: str, name: str = "lock", timeout: Optional[float] = None) -> Iterator[None]:
    """An exclusive lock on a file of the job's directory (submitting, healing, running).

    The kernel drops it when the holder dies (even by SIGKILL), so a second
    process waits for a live holder and takes over from a dead one. With a
    ``timeout``, :class:`~pdbatch.errors.JobError` once it has passed.
    """
    os.makedirs(workdir, exist_ok=True)
    fh = open(os.path.join(workdir, name), "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            fcntl = None
        if fcntl is not None:
            if timeout is None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise JobError(
                                f"job {os.path.basename(workdir)} is being run by another process; it goes on "
                                f"there: call job.wait() again later, or run the same map once it is done"
                            ) from None
                        time.sleep(0.1)
        yield
    finally:
        fh.close()
