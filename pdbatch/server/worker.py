"""The batch lifecycle of the local server: validation, execution, output files.

One :class:`BatchWorker` thread per server takes batches in creation order:

``validating`` (``Faults.validating_delay``) → file-level validation
(:func:`validate_input`) → ``failed`` with ``errors`` and no output file, or
``in_progress`` → one engine call per line, ``request_counts`` updated live →
``finalizing`` → ``completed``.

* ``Faults.expire_after`` ends the batch ``expired``: finished answers stay in
  the output file and every line that never ran gets an error line
  ``{"response": null, "error": {"code": "batch_expired", ...}}``; those
  lines count as ``failed`` in ``request_counts``.
* Cancelling (``cancelling``) stops before the next line; the batch becomes
  ``cancelled`` with the finished answers in the output file. Lines that
  never ran are **not** reported at all (no line in either file), as the
  hosted service does: join by ``custom_id`` and treat absent ids as not run.
* Output and error files are written line by line; the input is read line by
  line, keeping only the byte offsets of its lines in memory.
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

from .engines import EngineError
from ..core.records import Usage
from .state import MAX_REPORTED_ERRORS, Faults, Stats, Store, error_body, new_id
from .responses import answer as answer_with
from .validate import check_body

__all__ = ["BatchWorker", "validate_input"]

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
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        out.append(_err("missing_required_parameter", "Each line needs a 'body' object with a "
                        "'model'.", lineno, "body.model"))
        return out, None
    if model is not None and body["model"] != model:
        out.append(_err("model_mismatch", f"The model {body['model']!r} differs from {model!r} "
                        "used by earlier lines; a batch serves one model.", lineno, "body.model"))
    return out, body["model"]


class _Sink:
    """An output or error file written lazily, line by line."""

    def __init__(self, store: Store) -> None:
        self.store, self.path, self.fh, self.lines = store, store.incoming_path(), None, 0

    def write(self, line: dict) -> None:
        if self.fh is None:
            self.fh = open(self.path, "wb")
        self.fh.write(orjson.dumps(line) + b"\n")
        self.lines += 1

    def adopt(self, filename: str) -> Optional[str]:
        """Close and register as a ``batch_output`` file; ``None`` if empty."""
        if self.fh is None:
            return None
        self.fh.close()
        self.fh = None
        return self.store.add_file(self.path, filename, "batch_output")["id"]

    def discard(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.path.unlink(missing_ok=True)


class BatchWorker(threading.Thread):
    """Runs submitted batches one after another in a daemon thread.

    ``host`` (the :class:`~pdbatch.server.BatchServer`) provides ``engine``,
    ``faults`` and ``stats``, read at each use.
    """

    def __init__(self, store: Store, host: Any) -> None:
        super().__init__(name="pdbatch-batch-worker", daemon=True)
        self.store, self.host = store, host
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stop_event = threading.Event()

    def submit(self, batch_id: str) -> None:
        """Queue a batch (status ``validating``) for processing."""
        self._queue.put(batch_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish and wait at most ``timeout`` seconds."""
        self._stop_event.set()
        self._queue.put(None)
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            batch_id = self._queue.get()
            if batch_id is None:
                break
            with self.stats.clock.busy():  # Stats.busy_seconds; _pause sleeps are idle
                try:
                    self._process(batch_id)
                except Exception as exc:  # keep the worker alive whatever happens
                    now = int(time.time())
                    self.store.update_batch(batch_id, status="failed", failed_at=now, errors={
                        "object": "list", "data": [_err("server_error", f"internal error: {exc!r}")]})

    # -- helpers -------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self.host.faults

    @property
    def stats(self) -> Stats:
        return self.host.stats

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
        self._pause(self.faults.validating_delay, batch_id)
        if self._stop_event.is_set():
            return
        if self._cancelling(batch_id):
            self.store.update_batch(batch_id, status="cancelled", cancelled_at=int(time.time()))
            return
        offsets, model, errors = validate_input(self.store.path(batch["input_file_id"]),
                                                batch["endpoint"], self.faults)
        refused = self.faults.pop_batch_failure()
        if refused is not None and not errors:
            errors = [_err(refused, f"injected failure: {refused} (Faults.batch_failures)")]
        if errors:
            self.store.update_batch(batch_id, status="failed", failed_at=int(time.time()),
                                    errors={"object": "list", "data": errors})
            return
        with self.store.lock:
            if self.store.batches[batch_id]["status"] == "validating":
                self.store.batches[batch_id]["status"] = "in_progress"
            self.store.batches[batch_id].update(in_progress_at=int(time.time()), model=model)
            self.store.batches[batch_id]["request_counts"]["total"] = len(offsets)
        self._execute(batch_id, batch["endpoint"], batch["input_file_id"], offsets)

    def _execute(self, batch_id: str, endpoint: str, input_id: str,
                 offsets: list[tuple[int, int]]) -> None:
        out, err = _Sink(self.store), _Sink(self.store)
        usage, outcome, done = Usage(), "completed", 0
        order = self._order(batch_id, len(offsets))
        try:
            with open(self.store.path(input_id) or "", "rb") as fh:
                for done, index in enumerate(order):
                    if self._stop_event.is_set():
                        return
                    if self._cancelling(batch_id):
                        outcome = "cancelled"
                        break
                    if self.faults.expire_after is not None and done >= self.faults.expire_after:
                        outcome = "expired"
                        self._expire_rest(batch_id, fh, offsets, order[done:], err)
                        break
                    fh.seek(offsets[index][0])
                    line = orjson.loads(fh.read(offsets[index][1]))
                    result, ok = self._run_line(line, endpoint)
                    (out if ok else err).write(result)
                    if ok:
                        usage = usage + Usage.from_body(result["response"]["body"])
                    self.store.count(batch_id, completed=int(ok), failed=int(not ok))
                    self._pause(self.faults.request_delay, batch_id)
            self._finish(batch_id, outcome, out, err, usage)
        finally:
            out.discard()
            err.discard()

    def _expire_rest(self, batch_id: str, fh: Any, offsets: list, rest: list, err: _Sink) -> None:
        for index in rest:
            fh.seek(offsets[index][0])
            cid = orjson.loads(fh.read(offsets[index][1])).get("custom_id")
            err.write({"id": new_id("batch_req_"), "custom_id": cid, "response": None,
                       "error": {"code": "batch_expired", "message": _EXPIRED_MESSAGE}})
        self.store.count(batch_id, failed=len(rest))

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

    def _finish(self, batch_id: str, outcome: str, out: _Sink, err: _Sink, usage: Usage) -> None:
        now = int(time.time())
        with self.store.lock:  # a cancel accepted before this point always ends "cancelled", never "completed"
            batch = self.store.batches[batch_id]
            if batch["status"] == "cancelling":
                outcome = "cancelled"
            elif outcome == "completed":  # from here on a cancel is refused (400 invalid_state)
                batch.update(status="finalizing", finalizing_at=now)
        output_id = out.adopt(f"{batch_id}_output.jsonl")
        error_id = err.adopt(f"{batch_id}_error.jsonl")
        stamp = {"completed": "completed_at", "expired": "expired_at",
                 "cancelled": "cancelled_at"}[outcome]
        self.store.update_batch(
            batch_id, status=outcome, output_file_id=output_id, error_file_id=error_id,
            usage={"input_tokens": usage.prompt_tokens,
                   "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                   "output_tokens": usage.completion_tokens,
                   "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                   "total_tokens": usage.total_tokens},
            **{stamp: int(time.time())})
