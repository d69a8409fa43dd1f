"""The batch lifecycle of the local server: validation, execution, output files.

One :class:`BatchWorker` thread per server takes batches in creation order: ``validating``
(``Faults.validating_delay``) → file-level validation (:func:`validate_input`) → ``failed`` with
``errors`` and no output file, or ``in_progress`` → one engine call per line, ``request_counts``
updated live → ``finalizing`` → ``completed``. An engine that ``runs_batches`` (the upstream) gets whole
batches; one with a ``concurrency`` (the local model) that many lines at once (:mod:`pdbatch.server.lines`).

* ``Faults.expire_after`` ends the batch ``expired``: finished answers stay in
  the output file and every line that never ran gets an error line
  ``{"response": null, "error": {"code": "batch_expired", ...}}``; those
  lines count as ``failed`` in ``request_counts``.
* Cancelling (``cancelling``) stops before the next line; the batch becomes
  ``cancelled`` with the finished answers in the output file. Lines that
  never ran are **not** reported at all (no line in either file), as the
  hosted service does: join by ``custom_id`` and treat absent ids as not run.
* The batch's 24 h window (``expires_at``) is checked before each line: past
  it the batch ends ``expired`` as above.
* Answers are appended to the batch's :class:`~pdbatch.server.answers.AnswerLog`
  files as they are produced; every :data:`SYNC_LINES` lines or
  :data:`SYNC_SECONDS` seconds they are handed to the OS (so a killed server
  keeps them; ``fsync`` at most every :data:`FSYNC_SECONDS`) and the batch
  (its live ``request_counts``) is stored. When the batch ends those files become its
  output and error files. The input is read line by line, keeping only the
  byte offsets of its lines in memory.
* A batch that had not ended when the server stopped (or died) is submitted
  again at start (:meth:`BatchWorker.resume`): it is validated again (its
  input is unchanged), the lines already answered are skipped and the others
  run, so each line is answered once.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import orjson

from .answers import AnswerLog
from .engines import EngineError
from ..core.records import Usage
from .durable import Store
from .state import MAX_REPORTED_ERRORS, Faults, Stats, error_body, new_id
from .responses import answer as answer_with
from .validate import check_body
from .upstream import run_batch
from .lines import batch_ending, lines_at_once, run_lines

__all__ = ["BatchWorker", "validate_input", "SYNC_LINES", "SYNC_SECONDS", "FSYNC_SECONDS"]

#: A batch's answers are handed to the OS every SYNC_LINES lines or SYNC_SECONDS seconds
#: (then its counts are stored), and fsync'd at most every FSYNC_SECONDS and at its end.
SYNC_LINES, SYNC_SECONDS, FSYNC_SECONDS = 2048, 0.25, 1.0
#: Seconds between two sweeps of expired files and batches while idle.
SWEEP_SECONDS = 30.0

_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def _err(code: str, message: str, line: Optional[int] = None, param: Optional[str] = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def validate_input(path: Optional[Path], endpoint: str, faults: Faults
                   ) -> tuple[list[tuple[int, int]], Optional[str], list[dict]]:
    """Check a batch input file line by line.

    Returns
    -------
    offsets : list of (int, int)
        Byte offset and length of every request line.
    model : str or None
        The one ``body.model`` of the file.
    errors : list of dict
        ``{code, message, param, line}`` items (line numbers start at 1);
        empty when the file is valid.
    """
    if path is None or not path.exists():
        return [], None, [_err("invalid_file", "The input file no longer exists.")]
    size = path.stat().st_size
    if size > faults.max_bytes:
        return [], None, [_err("file_too_large", f"The input file has {size} bytes; at most "
                                                 f"{faults.max_bytes} are allowed.")]
    offsets: list[tuple[int, int]] = []
    errors: list[dict] = []
    seen: set[str] = set()
    model: Optional[str] = None
    pos = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            start, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            if len(offsets) >= faults.max_lines:
                errors.append(_err("too_many_tasks", f"The input file has more than "
                                                     f"{faults.max_lines} requests.", lineno))
                break
            offsets.append((start, len(raw)))
            line_errors, line_model = _check_line(raw, lineno, endpoint, seen, model)
            errors.extend(line_errors)
            model = model or line_model
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if not offsets and not errors:
        errors.append(_err("empty_file", "The input file contains no requests."))
    return offsets, model, errors[:MAX_REPORTED_ERRORS]


def _check_line(raw: bytes, lineno: int, endpoint: str, seen: set,
                model: Optional[str]) -> tuple[list, Optional[str]]:
    """Errors of one input line, and its ``body.model`` when it has one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        return [_err("invalid_json_line", "This line is not parseable as valid JSON.", lineno)], None
    out = []
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        out.append(_err("missing_required_parameter", "Each line needs a string 'custom_id'.",
                        lineno, "custom_id"))
    elif cid in seen:
        out.append(_err("duplicate_custom_id", f"The custom_id {cid!r} is a duplicate of an "
                        "earlier line; custom_id must be unique within a batch.", lineno,
                        "custom_id"))
    else:
        seen.add(cid)
    if obj.get("method") != "POST":
        out.append(_err("invalid_method", "The method must be 'POST'.", lineno, "method"))
    if obj.get("url") != endpoint:
        out.append(_err("url_mismatch", f"The url {obj.get('url')!r} does not match the batch "
                        f"endpoint {endpoint!r}.", lineno, "url"))
    body = obj.get("body")
    if not isinstance(body, dict):
        out.append(_err("missing_required_parameter", "Each line needs a 'body' object.", lineno, "body"))
        return out, None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return out, None  # that line's own 400 in the error file (check_body); the batch goes on
    if model is not None and body["model"] != model:
        out.append(_err("model_mismatch", f"The model {body['model']!r} differs from {model!r} "
                        "used by earlier lines; a batch serves one model.", lineno, "body.model"))
    return out, body["model"]


class BatchWorker(threading.Thread):
    """Runs submitted batches one after another in a daemon thread.

    ``host`` (the :class:`~pdbatch.server.BatchServer`) provides ``engine``,
    ``faults`` and ``stats``, read at each use.
    """

    sync_seconds = SYNC_SECONDS  # for run_batch

    def __init__(self, store: Store, host: Any) -> None:
        super().__init__(name="pdbatch-batch-worker", daemon=True)
        self.store, self.host = store, host
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stop_event = threading.Event()
        self._fsynced = 0.0  # when the running batch's answers were last fsync'd

    def submit(self, batch_id: str) -> None:
        """Queue a batch (status ``validating``) for processing."""
        self._queue.put(batch_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish and wait at most ``timeout`` seconds."""
        self._stop_event.set()
        self._queue.put(None)
        if self.is_alive():
            self.join(timeout)

    def resume(self) -> list[str]:
        """Submit every batch that had not ended, oldest first; return their ids."""
        ids = self.store.unfinished()
        for batch_id in ids:
            self.submit(batch_id)
        return ids

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                batch_id = self._queue.get(timeout=SWEEP_SECONDS)
            except queue.Empty:
                self.store.maybe_sweep()
                continue
            if batch_id is None:
                break
            with self.stats.clock.busy():  # Stats.busy_seconds; _pause sleeps are idle
                try:
                    self._process(batch_id)
                except Exception as exc:  # keep the worker alive whatever happens
                    if self._stop_event.is_set():
                        continue  # stopping: the batch resumes at the next start
                    self.store.update_batch(batch_id, status="failed", failed_at=self._now(),
                                            errors={"object": "list", "data": [
                                                _err("server_error", f"internal error: {exc!r}")]})

    # -- helpers -------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self.host.faults

    @property
    def stats(self) -> Stats:
        return self.host.stats

    def _now(self) -> int:
        return int(self.store.now())

    def _cancelling(self, batch_id: str) -> bool:
        return self.store.status(batch_id) == "cancelling"

    def _pause(self, seconds: float, batch_id: str) -> None:
        """Sleep, waking early on cancel or stop; the sleep is not busy time."""
        if seconds > 0:
            with self.stats.clock.idle():
                self._sleep(seconds, batch_id)

    def _sleep(self, seconds: float, batch_id: str) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_event.is_set() and not self._cancelling(batch_id):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop_event.wait(min(left, 0.01))

    def _order(self, batch_id: str, n: int) -> list[int]:
        order = list(range(n))
        if self.faults.shuffle_output and n > 1:
            random.Random(batch_id).shuffle(order)
            if order == sorted(order):
                order.reverse()
        return order

    # -- lifecycle -----------------------------------------------------------
    def _process(self, batch_id: str) -> None:
        with self.store.lock:
            batch = dict(self.store.batches[batch_id])
        started = batch["in_progress_at"] is not None  # a resumed batch was validated before
        if not started:
            self._pause(self.faults.validating_delay, batch_id)
            if self._stop_event.is_set():
                return
            if self._cancelling(batch_id):
                self.store.update_batch(batch_id, status="cancelled", cancelled_at=self._now())
                return
        offsets, model, errors = validate_input(self.store.path(batch["input_file_id"]),
                                                batch["endpoint"], self.faults)
        refused = None if started else self.faults.pop_batch_failure()
        if refused is not None and not errors:
            errors = [_err(refused, f"injected failure: {refused} (Faults.batch_failures)")]
        if errors:
            self.store.update_batch(batch_id, status="failed", failed_at=self._now(),
                                    errors={"object": "list", "data": errors})
            return
        with self.store.lock:
            live = self.store.batches[batch_id]
            if live["status"] == "validating":
                live["status"] = "in_progress"
            live.update(in_progress_at=live["in_progress_at"] or self._now(), model=model)
            live["request_counts"]["total"] = len(offsets)
            self.store.save_batch(batch_id)
        self._execute(batch_id, batch, offsets)

    def _execute(self, batch_id: str, batch: dict, offsets: list[tuple[int, int]]) -> None:
        work = self.store.work_dir(batch_id)
        out, err = AnswerLog(work / "output.jsonl"), AnswerLog(work / "error.jsonl")
        answered, usage = out.recover(usage=True)
        failed, _ = err.recover()
        done = answered | failed
        with self.store.lock:
            self.store.batches[batch_id]["request_counts"].update(completed=out.lines,
                                                                  failed=err.lines)
        outcome, ran, pending, synced = "completed", len(done), 0, time.monotonic()
        self._fsynced = synced
        order, endpoint = self._order(batch_id, len(offsets)), batch["endpoint"]
        try:
            width = lines_at_once(self.host.engine)  # many lines at once: upstream.py, lines.py
            if width > 1 or getattr(self.host.engine, "runs_batches", False):
                ended = run_lines(self, batch_id, batch, offsets, order, done, out, err, usage, width) if width > 1 \
                    else run_batch(self, batch_id, batch, offsets, order, done, out, err, usage)
                return None if ended is None else self._finish(batch_id, ended[0], out, err, ended[1])
            with open(self.store.path(batch["input_file_id"]) or "", "rb") as fh:
                for pos, index in enumerate(order):
                    ending = batch_ending(self, batch_id, batch, ran)
                    if ending == "stop":
                        self._sync(batch_id, out, err)
                        return
                    if ending is not None:
                        outcome = ending
                        if ending == "expired":
                            self._expire_rest(batch_id, fh, offsets, order[pos:], done, err)
                        break
                    fh.seek(offsets[index][0])
                    line = orjson.loads(fh.read(offsets[index][1]))
                    if line["custom_id"] in done:
                        continue
                    result, ok = self._run_line(line, endpoint)
                    (out if ok else err).write(result)
                    if ok:
                        usage = usage + Usage.from_body(result["response"]["body"])
                    self.store.count(batch_id, completed=int(ok), failed=int(not ok))
                    ran, pending = ran + 1, pending + 1
                    if pending >= SYNC_LINES or time.monotonic() - synced >= SYNC_SECONDS:
                        self._sync(batch_id, out, err)
                        pending, synced = 0, time.monotonic()
                    self._pause(self.faults.request_delay, batch_id)
            self._finish(batch_id, outcome, out, err, usage)
        finally:
            out.close()
            err.close()

    def _sync(self, batch_id: str, out: AnswerLog, err: AnswerLog) -> None:
        """Answers to the OS (to the disk now and then) first, then the batch and its counts."""
        fsync = time.monotonic() - self._fsynced >= FSYNC_SECONDS
        out.sync(fsync)
        err.sync(fsync)
        if fsync:
            self._fsynced = time.monotonic()
        self.store.save_batch(batch_id)

    def _expire_rest(self, batch_id: str, fh: Any, offsets: list, rest: list, done: set,
                     err: AnswerLog) -> None:
        expired = 0
        for index in rest:
            fh.seek(offsets[index][0])
            cid = orjson.loads(fh.read(offsets[index][1])).get("custom_id")
            if cid not in done:
                err.write({"id": new_id("batch_req_"), "custom_id": cid, "response": None,
                           "error": {"code": "batch_expired", "message": _EXPIRED_MESSAGE}})
                expired += 1
        self.store.count(batch_id, failed=expired)

    def refusal(self, line: dict, endpoint: str) -> Optional[dict]:
        """The error line of a request line the API refuses (or a fault hits); None if it may be sent."""
        try:
            if not (self.faults.error_for and self.faults.error_for(line["custom_id"], line["body"])):
                return check_body(line["body"], endpoint)  # None: it may be sent
        except EngineError:
            pass
        return self._run_line(line, endpoint)[0]

    def _run_line(self, line: dict, endpoint: str) -> tuple[dict, bool]:
        cid, body = line["custom_id"], line["body"]
        status, answer = 200, None
        fault = self.faults.error_for(cid, body) if self.faults.error_for else None
        if fault:
            status, code, message = fault
            answer = error_body(message, type="server_error" if status >= 500
                                else "invalid_request_error", code=code)
        else:
            try:
                check_body(body, endpoint)  # a request the API refuses never reaches the engine
                self.stats.bump("requests_executed")
                answer = answer_with(self.host.engine, body, endpoint)
                if not isinstance(answer, dict):
                    raise TypeError(f"engine returned {type(answer).__name__}, not dict")
            except EngineError as exc:
                status, answer = exc.status_code, exc.to_body()
            except Exception as exc:
                status = 500
                answer = error_body(f"engine failed: {exc!r}", type="server_error",
                                    code="server_error")
        result = {"id": new_id("batch_req_"), "custom_id": cid,
                  "response": {"status_code": int(status), "request_id": f"req_{uuid.uuid4().hex}",
                               "body": answer}, "error": None}
        return result, status < 400

    def _finish(self, batch_id: str, outcome: str, out: AnswerLog, err: AnswerLog,
                usage: Usage) -> None:
        with self.store.lock:  # a cancel accepted before this point always ends "cancelled", never "completed"
            batch = self.store.batches[batch_id]
            if batch["status"] == "cancelling":
                outcome = "cancelled"
            elif outcome == "completed":  # from here on a cancel is refused (400 invalid_state)
                self.store.update_batch(batch_id, status="finalizing",
                                        finalizing_at=batch["finalizing_at"] or self._now())
        output, error = out.final(), err.final()
        stamp = {"completed": "completed_at", "expired": "expired_at",
                 "cancelled": "cancelled_at"}[outcome]
        with self.store.lock:
            if self.store.status(batch_id) == "cancelling":
                outcome, stamp = "cancelled", "cancelled_at"
            self.store.finish_batch(
                batch_id, output, error, status=outcome,
                usage={"input_tokens": usage.prompt_tokens,
                       "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                       "output_tokens": usage.completion_tokens,
                       "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                       "total_tokens": usage.total_tokens},
                **{stamp: self._now()})
