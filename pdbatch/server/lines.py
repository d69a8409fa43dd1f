"""A batch's lines run several at a time, for engines that answer many calls at once (the local model).

An engine with a ``concurrency`` above 1 that does not run whole batches
itself (the local model's :class:`~pdbatch.local_model.ModelPool`: instances
times slots) gets up to that many of a batch's lines in flight at once
(:func:`run_lines`), so its batched decoding fills every slot the way
realtime calls do. Each line goes through the worker's own
:meth:`~pdbatch.server.worker.BatchWorker._run_line` (faults, the API's
checks, the engine, errors shaped as the API shapes them) in one of
``concurrency`` daemon threads; only the worker's thread writes the answer
files, appending each answer as it arrives (in whatever order the lines
finish; the output file is joined by ``custom_id``) and handing the files
to the OS every :data:`~pdbatch.server.worker.SYNC_SECONDS`.

* A cancel, the end of the window or ``Faults.expire_after`` (counted in lines
  started) stops new lines; the lines in flight finish (up to
  :data:`DRAIN_SECONDS`) and are kept, then the batch ends as the serial worker
  ends it (an expired batch gets an error line for every line not answered).
* A server stop does the same within :data:`STOP_DRAIN_SECONDS` and returns
  None: the batch resumes at the next start with the lines still unanswered
  (a line cut short in flight runs again).
* ``Faults.request_delay`` holds each line that long after its answer, in its
  own thread (lines in flight wait side by side).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Optional

import orjson

from ..core.records import Usage

__all__ = ["batch_ending", "lines_at_once", "run_lines", "DRAIN_SECONDS", "STOP_DRAIN_SECONDS"]

#: Seconds the lines in flight may take to finish after a cancel or the end of the window, and after a server stop
#: (within the 5 s the server gives its worker).
DRAIN_SECONDS, STOP_DRAIN_SECONDS = 60.0, 4.0
_TICK = 0.05


def batch_ending(worker: Any, batch_id: str, batch: dict, ran: int) -> Optional[str]:
    """What ends a running batch now: ``"stop"`` (the server stops), ``"cancelled"``, ``"expired"``, or None.

    ``ran`` is the lines run so far, as the caller counts them, against
    ``Faults.expire_after``; past the batch's ``expires_at`` it is expired
    too. The one rule of the worker's serial loop, :func:`run_lines` and
    :func:`pdbatch.server.upstream.run_batch`.
    """
    if worker._stop_event.is_set():
        return "stop"
    if worker._cancelling(batch_id):
        return "cancelled"
    cap = worker.faults.expire_after
    return "expired" if (cap is not None and ran >= cap) or worker.store.now() >= batch["expires_at"] else None


def lines_at_once(engine: Any) -> int:
    """Lines of a batch to keep in flight for ``engine``: its ``concurrency`` (1 without one).

    Examples
    --------
    >>> from pdbatch.server.engines import echo_engine
    >>> lines_at_once(echo_engine)
    1
    """
    if getattr(engine, "runs_batches", False):
        return 1
    try:
        return max(1, int(getattr(engine, "concurrency", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _answer(worker: Any, batch_id: str, endpoint: str, inbox: "queue.Queue", answers: "queue.Queue") -> None:
    """One feeding thread: run lines from ``inbox`` until it hands out None."""
    while True:
        line = inbox.get()
        if line is None:
            return
        try:
            result, ok = worker._run_line(line, endpoint)
        except BaseException as exc:  # _run_line shapes engine failures; anything else ends the batch
            answers.put((line, exc, False))
            return
        delay = worker.faults.request_delay
        if delay:
            worker._sleep(delay, batch_id)
        answers.put((line, result, ok))


def run_lines(worker: Any, batch_id: str, batch: dict, offsets: list, order: list, done: set,
              out: Any, err: Any, usage: Usage, width: int) -> Optional[tuple[str, Usage]]:
    """Answer a batch's unanswered lines with up to ``width`` in flight; see the module docstring.

    Returns
    -------
    (outcome, usage) or None
        ``outcome`` is ``"completed"``, ``"cancelled"`` or ``"expired"``;
        None when the server stops (the batch resumes at its next start).
    """
    endpoint = batch["endpoint"]
    inbox: "queue.Queue" = queue.Queue()
    answers: "queue.Queue" = queue.Queue()
    threads = [threading.Thread(target=_answer, args=(worker, batch_id, endpoint, inbox, answers),
                                name=f"pdbatch-batch-line-{k}", daemon=True) for k in range(width)]
    for t in threads:
        t.start()
    result: Optional[str] = "completed"
    ran, in_flight, pos, stop_by = len(done), 0, 0, None
    synced = time.monotonic()
    try:
        with open(worker.store.path(batch["input_file_id"]) or "", "rb") as fh:
            while pos < len(order) or in_flight:
                if stop_by is None:
                    ending = batch_ending(worker, batch_id, batch, ran)  # ran: lines started
                    if ending is not None:  # nothing new starts; the lines in flight may finish
                        result = None if ending == "stop" else ending
                        pos = len(order)
                        stop_by = time.monotonic() + (DRAIN_SECONDS if result else STOP_DRAIN_SECONDS)
                elif time.monotonic() > stop_by:
                    break  # what is still in flight is not written: it runs again at the next start
                if pos < len(order) and in_flight < width:
                    index, pos = order[pos], pos + 1
                    fh.seek(offsets[index][0])
                    line = orjson.loads(fh.read(offsets[index][1]))
                    if line["custom_id"] not in done:
                        inbox.put(line)
                        in_flight, ran = in_flight + 1, ran + 1
                    continue
                try:
                    line, answer, ok = answers.get(timeout=_TICK)
                except queue.Empty:
                    continue
                in_flight -= 1
                if isinstance(answer, BaseException):
                    raise answer
                (out if ok else err).write(answer)
                done.add(line["custom_id"])
                if ok:
                    usage = usage + Usage.from_body(answer["response"]["body"])
                worker.store.count(batch_id, completed=int(ok), failed=int(not ok))
                if time.monotonic() - synced >= worker.sync_seconds:
                    worker._sync(batch_id, out, err)
                    synced = time.monotonic()
            if result == "expired":
                worker._expire_rest(batch_id, fh, offsets, order, done, err)
    finally:
        for _ in threads:
            inbox.put(None)
    if result is None:
        worker._sync(batch_id, out, err)
        return None
    return result, usage
