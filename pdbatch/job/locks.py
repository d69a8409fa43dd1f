"""Cross-process locks on a job's directory: one submitter, one healer, one row-by-row runner at a time.

A process that has to wait for another says so at once (a ``UserWarning``
and the ``pdbatch`` log, naming the job and the process holding it), never
waits in silence; with a progress bar it shows the other process's progress
(:func:`answers_bar`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Tuple

from ..errors import JobError

__all__ = ["job_lock", "holder", "answers_bar", "TICK_SECONDS"]

log = logging.getLogger("pdbatch")

#: Seconds between two calls of a waiting lock's ``tick`` (a progress bar's refresh).
TICK_SECONDS = 0.5


def holder(path: str) -> Optional[int]:
    """The process id written in lock file ``path`` by its holder; None if none is written yet."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _notice(job_id: str, pid: Optional[int]) -> None:
    who = f"process {pid}" if pid is not None else "another process"
    msg = (f"pdbatch: job {job_id} is being run by {who}; waiting for it -- Ctrl-C stops only this wait and "
           f"leaves the job running there")
    log.info(msg)
    warnings.warn(msg, UserWarning, stacklevel=4)


@contextmanager
def job_lock(workdir: str, name: str = "lock", timeout: Optional[float] = None,
             tick: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """An exclusive lock on a file of the job's directory (submitting, healing, running).

    The kernel drops it when the holder dies (even by SIGKILL), so a second
    process waits for a live holder and takes over from a dead one. The
    holder writes its process id into the file; a process that finds the
    lock taken says at once which process it waits for. With a
    ``timeout``, :class:`~pdbatch.errors.JobError` once it has passed.

    Parameters
    ----------
    workdir : str
        The job's directory.
    name : str
        The lock file's name: ``"lock"`` (submit, heal) or ``"run.lock"`` (send rows).
    timeout : float, optional
        Seconds to wait at most.
    tick : callable, optional
        Called every :data:`TICK_SECONDS` while waiting (to show the other process's progress).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    fh = open(path, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            fcntl = None
        if fcntl is not None:
            def take() -> bool:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            if not take():
                job_id, pid = os.path.basename(workdir), holder(path)
                _notice(job_id, pid)
                deadline = None if timeout is None else time.monotonic() + timeout
                ticked = 0.0
                while not take():
                    if deadline is not None and time.monotonic() >= deadline:
                        raise JobError(
                            f"job {job_id} is being run by {f'process {pid}' if pid else 'another process'}; it "
                            f"goes on there: call job.wait() again later, or run the same map once it is done"
                        ) from None
                    if tick is not None and time.monotonic() - ticked >= TICK_SECONDS:
                        tick()
                        ticked = time.monotonic()
                    time.sleep(0.05)
            os.ftruncate(fh.fileno(), 0)
            fh.write(str(os.getpid()))
            fh.flush()
        yield
    finally:
        fh.close()


def answers_bar(total: int, count: Callable[[], int], desc: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    """``(tick, close)``: a progress bar of another process's answers, made on the first tick.

    ``count()`` gives the answers stored so far; ``tick`` is given to
    :func:`job_lock`, ``close`` is called once the lock is taken.
    """
    from ..backends.progress import progress_bar

    bar: Any = None

    def tick() -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total=total, unit="row", desc=desc, leave=False)
        bar.n = min(count(), total)
        bar.refresh()

    def close() -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None

    return tick, close
