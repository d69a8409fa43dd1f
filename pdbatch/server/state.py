"""State of the local Batch API server: fault knobs, counters, errors.

This module holds :class:`Faults` (knobs tests turn), :class:`Stats`
(counters) and :func:`error_body`. The files and batches live in
:class:`pdbatch.server.durable.Store` (in memory and in SQLite under the
data directory); the batch lifecycle runs in :mod:`pdbatch.server.worker`;
the busy-time clock in :mod:`pdbatch.server.busy`.

Server choices where the public contract is silent are collected here:

* File-level validation codes: ``invalid_json_line``, ``duplicate_custom_id``,
  ``url_mismatch``, ``model_mismatch``, ``empty_file``, ``too_many_tasks``
  (more than ``Faults.max_lines`` requests), ``file_too_large`` (more than
  ``Faults.max_bytes``), ``invalid_method`` (``method`` is not ``POST``),
  ``missing_required_parameter`` (no ``custom_id`` or no ``body`` object),
  ``invalid_file`` (the input file was deleted before the batch ran). At most
  :data:`MAX_REPORTED_ERRORS` are reported; blank lines are skipped. What is
  wrong *inside* a body -- a missing or non-string ``model`` included -- is
  that line's 400 in the error file, and the batch goes on; ``model_mismatch``
  compares the lines that name a model.
* ``POST /v1/batches`` answers 400 for an unknown ``input_file_id``, a file
  whose purpose is not ``batch``, an endpoint outside
  :data:`BATCH_ENDPOINTS`, a ``completion_window`` other than ``"24h"`` and
  metadata beyond 16 pairs / 64-character keys / 512-character values.
* Cancelling a finalizing or finished batch answers 400 (``invalid_state``); a
  cancel accepted while the batch runs always ends ``cancelled`` (with the
  answers made so far), never ``completed``; cancelling a
  cancelling or cancelled batch returns it unchanged.
* Unknown ids answer 404; a bad request answers 400; both with the
  ``{"error": {message, type, param, code}}`` body.
* Lists are newest first; an unknown ``after`` cursor gives an empty page.
* ``expires_after`` of an upload must be ``{"anchor": "created_at", "seconds":
  N}`` with N from 3600 to 2592000 (400 ``invalid_value`` naming
  ``expires_after.anchor`` or ``expires_after.seconds`` otherwise); an
  expired file is deleted, but not while a running batch reads it. A batch
  past its 24 h window ends ``expired``; a finished batch is deleted after the
  server's retention period, if it has one (see :mod:`pdbatch.server.durable`).
"""

from __future__ import annotations

import fnmatch
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from .busy import BusyClock

__all__ = ["Faults", "Stats", "error_body", "status_error", "new_id", "page", "parse_duration",
           "BATCH_ENDPOINTS", "FILE_PURPOSES", "MAX_REPORTED_ERRORS"]

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                   "/v1/responses", "/v1/moderations")
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data")
MAX_REPORTED_ERRORS = 100

# status -> (type, code, message) of injected or generic errors
_STATUS_ERRORS = {
    400: ("invalid_request_error", "invalid_request", "Bad request (injected by pdbatch faults)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "forbidden", "Forbidden."),
    404: ("invalid_request_error", "not_found", "Not found."),
    408: ("timeout", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached; please try again later."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The server is overloaded or not ready yet."),
}


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds or a number with a unit ``s m h d w``.

    Examples
    --------
    >>> parse_duration("7d"), parse_duration("36h"), parse_duration("90"), parse_duration("1.5m")
    (604800.0, 129600.0, 90.0, 90.0)
    """
    raw = str(text).strip().lower()
    unit = _UNITS.get(raw[-1:], None)
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 1)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a duration; write seconds (3600) or a number with a "
                         "unit s, m, h, d or w (90m, 36h, 7d)")
    return value


def new_id(prefix: str) -> str:
    """A fresh id such as ``file-0f3c...`` or ``batch_9ab1...``."""
    return f"{prefix}{uuid.uuid4().hex}"


def page(items: list[dict], after: Optional[str], limit: int) -> dict:
    """One page of a list answer: the items after id ``after`` (none if unknown), at most ``limit``."""
    if after is not None:
        ids = [o["id"] for o in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def error_body(message: str, *, type: str = "invalid_request_error",
               param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """The OpenAI error body ``{"error": {message, type, param, code}}``.

    Examples
    --------
    >>> error_body("No such File object: file-x", param="id")["error"]["type"]
    'invalid_request_error'
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def status_error(status: int, retry_after: float = 0.05) -> tuple[dict, dict]:
    """Body and headers of a generic error with HTTP ``status``.

    429 carries ``retry-after-ms`` and ``retry-after`` headers.
    """
    default = ("server_error", "server_error", "Server error.") if status >= 500 else \
        ("invalid_request_error", None, f"HTTP {status}.")
    type_, code, message = _STATUS_ERRORS.get(status, default)
    headers = {}
    if status == 429:
        headers = {"retry-after-ms": str(int(retry_after * 1000)),
                   "retry-after": str(max(0, round(retry_after)))}
    return error_body(message, type=type_, code=code), headers


@dataclass
class Faults:
    """Mutable knobs that make the server misbehave on purpose (all off).

    Attributes
    ----------
    error_for : callable, optional
        ``error_for(custom_id, body)`` returning ``(status, code, message)``
        or ``None``; a tuple makes that batch line fail with an error-file
        line (the engine is not called).
    expire_after : int, optional
        After this many requests of a batch ran, the batch ends ``expired``;
        the other lines get ``batch_expired`` error lines.
    request_delay : float
        Seconds slept after each request inside a batch.
    validating_delay : float
        Seconds a batch stays ``validating``.
    http_errors : dict of str to list of int
        ``"METHOD /path"`` patterns (``*`` is a wildcard, e.g.
        ``"GET /v1/batches/*"``) to status codes; each matching call pops the
        first code and fails with it, doing nothing else.
    max_lines, max_bytes : int
        Validation limits of an input file.
    shuffle_output : bool
        Run (and so write) the lines in a deterministic order, seeded by the
        batch id, that differs from the input order.
    retry_after : float
        Seconds advertised by 429 answers (``retry-after-ms``/``retry-after``).
    realtime_latency : float
        Seconds slept before each realtime call is answered.
    realtime_errors : list of int
        Status codes popped, one per realtime call, and answered as errors.
    realtime_rpm : int, optional
        Requests allowed per ``rate_window`` seconds on the realtime
        endpoints; beyond it 429. When set, answers carry
        ``x-ratelimit-*-requests`` headers.
    rate_window : float
        Window of ``realtime_rpm`` in seconds (60 by default).
    batch_failures : list of str
        Error codes popped, one per batch validated: that batch ends
        ``failed`` with the code (e.g. ``token_limit_exceeded``).
    time_shift : float
        Seconds added to the server's clock (timestamps and deadlines): a test
        moves time forward to see uploads expire, a batch reach the end of
        its 24 h window or leave after the retention period.
    on_response : callable, optional
        ``on_response(method, path, status)`` runs after the server did the
        work of a call and *before* the client sees the answer: a test can kill
        its client there (e.g. between "batch created" and "batch id recorded").
    """

    error_for: Optional[Callable[[str, dict], Optional[tuple[int, str, str]]]] = None
    expire_after: Optional[int] = None
    request_delay: float = 0.0
    validating_delay: float = 0.0
    http_errors: dict[str, list[int]] = field(default_factory=dict)
    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    shuffle_output: bool = True
    retry_after: float = 0.05
    realtime_latency: float = 0.0
    realtime_errors: list[int] = field(default_factory=list)
    realtime_rpm: Optional[int] = None
    rate_window: float = 60.0
    time_shift: float = 0.0
    on_response: Optional[Callable[[str, str, int], None]] = None
    batch_failures: list[str] = field(default_factory=list)
    _stamps: deque = field(default_factory=deque, init=False, repr=False, compare=False)
    # one lock for all Faults objects keeps them copyable (deepcopy, asdict)
    _lock = threading.Lock()

    def pop_http_error(self, method: str, path: str) -> Optional[int]:
        """Pop the injected status for ``method path``, if one is queued."""
        key = f"{method} {path}"
        with self._lock:
            for pattern, codes in self.http_errors.items():
                if codes and (pattern == key or fnmatch.fnmatchcase(key, pattern)):
                    return int(codes.pop(0))
        return None

    def pop_batch_failure(self) -> Optional[str]:
        """Pop the next injected batch-level failure code, if any."""
        with self._lock:
            return self.batch_failures.pop(0) if self.batch_failures else None

    def pop_realtime_error(self) -> Optional[int]:
        """Pop the next queued realtime error status, if any."""
        with self._lock:
            return int(self.realtime_errors.pop(0)) if self.realtime_errors else None

    def take_rate(self) -> Optional[tuple[bool, int, float]]:
        """Count one realtime call against ``realtime_rpm``.

        Returns ``None`` when no limit is set, else ``(allowed, remaining,
        seconds_until_a_slot_frees)``.
        """
        if not self.realtime_rpm:
            return None
        now = time.monotonic()
        with self._lock:
            while self._stamps and self._stamps[0] <= now - self.rate_window:
                self._stamps.popleft()
            allowed = len(self._stamps) < self.realtime_rpm
            if allowed:
                self._stamps.append(now)
            reset = (self._stamps[0] + self.rate_window - now) if self._stamps else 0.0
            return allowed, self.realtime_rpm - len(self._stamps), max(reset, 0.0)


class Stats:
    """Thread-safe counters of what the server did.

    Attributes
    ----------
    uploads : int
        Successful ``POST /v1/files`` calls.
    batches_created : int
        Successful ``POST /v1/batches`` calls.
    requests_executed : int
        Engine calls made for batch lines.
    realtime_calls : int
        Calls to the realtime endpoints that passed the fault gate.
    log : list of tuple
        ``(method, path, status_code)`` of every HTTP call, in order. Headers
        (and so API keys) are never recorded.
    busy_seconds : float
        Wall-clock seconds the server was busy (read-only), exactly ``0.0``
        until the first call or batch; :attr:`clock` keeps it.
    clock : BusyClock
        The server opens a busy period on it around each piece of work.

    Notes
    -----
    ``busy_seconds`` is the length of the *union* of the busy periods:
    overlapping work (two calls at once, a poll answered while the worker
    runs a batch) is counted once. A period is

    * an HTTP call, any route, from the moment the app is called (uvicorn
      has parsed the request line and headers) until it returns: reading the
      body (an upload streamed to disk), the handler and writing the whole
      response (a download streamed from disk);
    * a batch run by the worker: validating the input file, the engine calls
      over its lines, writing and registering the output and error files.
      Injected sleeps (``Faults.validating_delay``, ``Faults.request_delay``)
      and waiting for the next batch are not counted.

    A period still open counts up to the moment of reading.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.uploads = 0
        self.batches_created = 0
        self.requests_executed = 0
        self.realtime_calls = 0
        self.log: list[tuple[str, str, int]] = []
        self.clock = BusyClock()

    @property
    def busy_seconds(self) -> float:
        """Seconds the server was busy, overlapping work counted once."""
        return self.clock.seconds

    def bump(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def record(self, method: str, path: str, status: int) -> None:
        """Append one HTTP call to :attr:`log`."""
        with self._lock:
            self.log.append((method, path, int(status)))

    def calls(self, method: str, pattern: str) -> int:
        """How many logged calls match ``method`` and the path ``pattern``."""
        with self._lock:
            return sum(1 for m, p, _ in self.log if m == method and fnmatch.fnmatchcase(p, pattern))

    def __repr__(self) -> str:
        return (f"Stats(uploads={self.uploads}, batches_created={self.batches_created}, "
                f"requests_executed={self.requests_executed}, "
                f"realtime_calls={self.realtime_calls}, busy_seconds={self.busy_seconds:.3f}, "
                f"log=<{len(self.log)} calls>)")
