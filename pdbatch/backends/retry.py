"""The one retry policy of pdbatch: what is worth another attempt, and after how long.

Both API backends ask the same :class:`RetryPolicy`:

* the realtime backend, for every Chat Completions / Embeddings call;
* the Batch backend, for ``batches.create`` (its other calls keep the SDK's
  own retries; pdbatch never stacks its retries on the SDK's), bounded by
  total time (``max_elapsed``) rather than by a count of attempts.

Polling (``batches.retrieve``, downloading a file) asks :func:`transient`
whether an exception is worth another poll.

What is retried:

* HTTP **408, 409, 429 and every 5xx** (:func:`retryable_status`); never a 400
  nor any other 4xx;
* **transient errors**: :data:`TRANSIENT_ERRORS` (connection errors and
  timeouts, which the SDK raises without a status);
* but never an error whose code is in :data:`FINAL_CODES`
  (``insufficient_quota`` is a 429 that waiting does not cure).

How long to wait: what the server asks (:func:`retry_after`: ``retry-after-ms``,
else ``retry-after`` in seconds or as an HTTP-date) when it asks at most
``max_retry_after`` seconds; otherwise jittered exponential backoff
(:func:`backoff_delay`). How long to keep trying: at most ``max_attempts``
attempts and, when ``max_elapsed`` is set, no attempt starts later than
``max_elapsed`` seconds after the first one.

Rows of a finished batch that failed with a code in :data:`RETRYABLE_CODES`
(or with a 429 / 5xx status) are sent again in a new batch by the Batch
backend.

Each retry is logged on the ``"pdbatch"`` logger (:meth:`RetryPolicy.log`).
"""

from __future__ import annotations

import email.utils
import importlib
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, Callable, Mapping, Optional

import openai

from ..errors import OptionError, PdbatchError

__all__ = [
    "RetryPolicy",
    "call",
    "create_once",
    "RETRY_STATUSES",
    "FINAL_CODES",
    "RETRYABLE_CODES",
    "TRANSIENT_ERRORS",
    "retryable_status",
    "retryable",
    "transient",
    "error_code",
    "retry_after",
    "backoff_delay",
]

log = logging.getLogger("pdbatch")

#: HTTP statuses worth another attempt, besides every 5xx.
RETRY_STATUSES = frozenset({408, 409, 429})
#: Error codes never worth another attempt, whatever their status (a 429 for an empty account).
FINAL_CODES = frozenset({"insufficient_quota"})
#: Error codes of batch rows worth sending again in a new batch.
#: ``corrupt_line``: the line of the output file could not be read (see :mod:`pdbatch.core.batchfile`).
RETRYABLE_CODES = frozenset({"batch_expired", "server_error", "rate_limit_exceeded", "token_limit_exceeded",
                             "internal_error", "timeout", "service_unavailable", "corrupt_line"})
#: Exceptions raised without an HTTP status that are worth another attempt.
TRANSIENT_ERRORS = (openai.APIConnectionError, openai.APITimeoutError)


def retryable_status(status: Optional[int]) -> bool:
    """True for an HTTP status worth another attempt: 408, 409, 429 or 5xx.

    Examples
    --------
    >>> [s for s in (400, 401, 404, 408, 409, 422, 429, 500, 503) if retryable_status(s)]
    [408, 409, 429, 500, 503]
    """
    return status is not None and (status in RETRY_STATUSES or 500 <= status <= 599)


def error_code(err: BaseException) -> Optional[str]:
    """The machine-readable ``code`` of an SDK error (``"insufficient_quota"``...), or None."""
    body = getattr(err, "body", None)
    code = body.get("code") if isinstance(body, dict) else None
    return code or getattr(err, "code", None)


def retryable(err: BaseException) -> bool:
    """True when the call that raised ``err`` is worth another attempt (whatever the attempt count).

    See :class:`RetryPolicy` for an example with the SDK's errors.

    Examples
    --------
    >>> retryable(ValueError("a bug is not transient"))
    False
    """
    if isinstance(err, openai.APIStatusError):
        return retryable_status(err.status_code) and error_code(err) not in FINAL_CODES
    other = sys.modules.get("anthropic")  # the [anthropic] extra's SDK, when a backend loaded it
    if other is not None and isinstance(err, other.APIStatusError):
        return retryable_status(err.status_code)
    if other is not None and isinstance(err, other.APIConnectionError):  # timeouts included
        return True
    return isinstance(err, TRANSIENT_ERRORS)


def _transport_errors() -> tuple:
    """Timeouts, network errors and a connection closed mid-body, of the HTTP library under the SDK.

    The ``openai`` SDK is built on ``httpx`` (``httpx2`` in recent releases):
    the classes of whichever is installed, and the built-in ones.
    """
    found: list = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in ("TimeoutException", "NetworkError", "RemoteProtocolError")
                  if isinstance(getattr(mod, n, None), type)]
    return tuple(found)


#: Transport errors raised outside the SDK's wrapping (reading a streamed body), besides :data:`TRANSIENT_ERRORS`.
_TRANSPORT_ERRORS = _transport_errors()


def transient(err: BaseException) -> bool:
    """True when a poll or a download that raised ``err`` is worth trying again later.

    :func:`retryable` (408, 409, 429 and 5xx statuses, the SDK's connection
    errors and timeouts, but never ``insufficient_quota``), plus the transport
    errors raised while a streamed body is read, which the SDK does not wrap
    (``files.with_streaming_response.content(...).stream_to_file``): the
    HTTP library's timeouts, network errors and a connection closed
    mid-body, and the built-in ``ConnectionError`` / ``TimeoutError``.

    Examples
    --------
    >>> transient(ConnectionResetError()), transient(TimeoutError())
    (True, True)
    >>> transient(KeyError("status"))
    False
    """
    return retryable(err) or isinstance(err, _TRANSPORT_ERRORS)


def _headers(err: BaseException) -> Optional[Mapping[str, str]]:
    response = getattr(err, "response", None)
    return getattr(response, "headers", None)


def _seconds(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def retry_after(headers: Optional[Mapping[str, str]], now: Optional[float] = None) -> Optional[float]:
    """Seconds the server asks to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP-date).

    Parameters
    ----------
    headers : mapping, optional
        Response headers (the SDK's case-insensitive ones, or a dict with lower-case keys).
    now : float, optional
        The current Unix time, for an HTTP-date (default ``time.time()``).

    Returns
    -------
    float or None
        Seconds, never negative (a date in the past is 0); None when the
        headers ask nothing or cannot be read.

    Examples
    --------
    >>> retry_after({"retry-after-ms": "250", "retry-after": "1"})
    0.25
    >>> retry_after({"retry-after": "3"}), retry_after({}) is None, retry_after({"retry-after": "soon"}) is None
    (3.0, True, True)
    >>> retry_after({"retry-after": "Thu, 01 Jan 1970 00:01:00 GMT"}, now=30.0)
    30.0
    """
    if not headers:
        return None
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None and ms >= 0:
        return ms / 1000.0
    raw = headers.get("retry-after")
    secs = _seconds(raw)
    if secs is not None:
        return max(secs, 0.0) if secs == secs else None  # NaN asks nothing
    if raw:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        return max(when.timestamp() - (time.time() if now is None else now), 0.0)
    return None


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 8.0, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)`` capped at ``cap``, times 0.5-1.

    Examples
    --------
    >>> [backoff_delay(a, rng=lambda: 1.0) for a in (1, 2, 3, 6)]
    [0.5, 1.0, 2.0, 8.0]
    >>> backoff_delay(3, rng=lambda: 0.0)
    1.0
    """
    d = min(cap, base * 2 ** max(attempt - 1, 0))
    return d * (0.5 + 0.5 * rng())


@dataclass(frozen=True)
class RetryPolicy:
    """Whether, and after how long, to try a failed call again.

    Parameters
    ----------
    max_attempts : int or None
        Attempts in all, the first included (1: never retry); None for no
        count (then ``max_elapsed`` must bound the attempts).
    max_elapsed : float or None
        Seconds, counted from the start of the first attempt, after which no
        attempt starts: a server-asked wait that ends later gives up at once,
        a backoff is shortened to end at the deadline. None: no time bound.
        The caller measures the time and passes it to :meth:`delay`.
    backoff, max_backoff : float
        First and longest backoff in seconds, used when the server gives no
        ``retry-after`` (doubling from ``backoff``, with jitter).
    max_retry_after : float
        Longest ``retry-after`` honoured, in seconds; a longer one falls back
        to the backoff.
    rng : callable
        Uniform numbers in [0, 1) for the jitter (for tests).

    Examples
    --------
    >>> import openai
    >>> from pdbatch.server import BatchServer, Faults
    >>> errors = []
    >>> with BatchServer(faults=Faults(http_errors={"GET /v1/files": [429, 400]}, retry_after=0.2)) as srv:
    ...     client = srv.client(max_retries=0)
    ...     for _ in range(2):
    ...         try:
    ...             client.files.list()
    ...         except openai.APIStatusError as err:
    ...             errors.append(err)
    >>> limited, bad = errors
    >>> policy = RetryPolicy(max_attempts=3)
    >>> policy.delay(limited, 1), policy.delay(limited, 3) is None      # retry-after-ms: 200
    (0.2, True)
    >>> policy.delay(bad, 1) is None                                    # a 400: never
    True

    Bounded by time, not by count: the server's 200 ms are honoured as long
    as the next attempt starts within ``max_elapsed`` of the first.

    >>> timed = RetryPolicy(max_attempts=None, max_elapsed=60.0)
    >>> timed.delay(limited, 500, elapsed=10.0), timed.delay(limited, 2, elapsed=59.9) is None
    (0.2, True)
    """

    max_attempts: Optional[int] = 6
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    max_elapsed: Optional[float] = None

    def __post_init__(self) -> None:
        if self.max_attempts is None and self.max_elapsed is None:
            raise OptionError("RetryPolicy needs max_attempts or max_elapsed (or both): it would retry forever")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise OptionError(f"RetryPolicy max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_elapsed is not None and not self.max_elapsed >= 0:
            raise OptionError(f"RetryPolicy max_elapsed must be >= 0 seconds, got {self.max_elapsed}")

    def delay(self, err: BaseException, attempt: int, elapsed: Optional[float] = None) -> Optional[float]:
        """Seconds to wait before trying again after ``err`` ended attempt number ``attempt`` (1-based).

        ``elapsed`` is the time in seconds since the first attempt started
        (``time.monotonic()`` differences); it only matters with ``max_elapsed``.

        Returns None when the call must not be tried again: ``err`` is not
        :func:`retryable`, ``attempt`` was the last of ``max_attempts``, or
        the next attempt could not start within ``max_elapsed`` (a
        ``retry-after`` that ends later, or no time left).
        """
        if (self.max_attempts is not None and attempt >= self.max_attempts) or not retryable(err):
            return None
        wait = retry_after(_headers(err))
        asked = wait is not None and wait <= self.max_retry_after
        if not asked:
            wait = backoff_delay(attempt, self.backoff, self.max_backoff, self.rng)
        if self.max_elapsed is not None and elapsed is not None:
            left = self.max_elapsed - elapsed
            if left <= 0 or (asked and wait > left):
                return None
            wait = min(wait, left)
        return wait

    def log(self, what: str, err: BaseException, attempt: int, wait: float, level: int = logging.DEBUG) -> None:
        """Log one retry on the ``"pdbatch"`` logger: what failed, how, which attempt, and the wait.

        The record carries ``what``, ``attempt``, ``max_attempts`` (None when
        only time bounds the attempts), ``wait`` and ``status`` (None for a
        transient error) as attributes.
        """
        status = getattr(err, "status_code", None)
        how = f"HTTP {status}" if status is not None else type(err).__name__
        of = f" of {self.max_attempts}" if self.max_attempts is not None else ""
        within = f", giving up {self.max_elapsed:g} s after the first" if self.max_elapsed is not None else ""
        log.log(level, "retrying %s after %s (attempt %d%s failed%s); next attempt in %.3g s",
                what, how, attempt, of, within, wait,
                extra={"what": what, "attempt": attempt, "max_attempts": self.max_attempts,
                       "wait": wait, "status": status})


def create_once(create: Callable[[], Any], find: Callable[[], Any], policy: RetryPolicy, errors: tuple, *,
                what: str, refused: Callable[[BaseException], str], given_up: Callable[[BaseException, int], str],
                sleep: Callable[[float], None] = time.sleep) -> Any:
    """``create()`` of a batch, retried for as long as ``policy`` allows, never creating it twice.

    An error the API will not change its mind about (:func:`retryable` is
    false) raises :class:`~pdbatch.errors.PdbatchError` with ``refused(err)``.
    After any other failure the create may still have gone through, so
    ``find()`` looks for the batch first and returns it when it exists; only
    then is the create tried again, and ``given_up(err, attempts)`` is raised
    when the policy says stop.
    """
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            return create()
        except errors as err:
            if not retryable(err):
                raise PdbatchError(refused(err)) from err
            found = find()
            if found is not None:
                return found
            wait = policy.delay(err, attempt, elapsed=time.monotonic() - started)
            if wait is None:
                raise PdbatchError(given_up(err, attempt)) from err
            policy.log(what, err, attempt, wait, logging.INFO)
            sleep(wait)


def call(fn: Callable[[], Any], policy: RetryPolicy, what: str, *, level: int = logging.INFO,
         sleep: Callable[[float], None] = time.sleep) -> Any:
    """``fn()``, tried again after each :func:`transient` failure for as long as ``policy`` allows.

    Polls and downloads go through it with an SDK client whose own retries
    are off, so that they survive 5xx answers, timeouts and connection resets
    whatever the caller's client does. The last error is raised as it is.
    """
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as err:
            if not transient(err):
                raise
            wait = policy.delay(err, attempt, elapsed=time.monotonic() - started)
            if wait is None:
                raise
            policy.log(what, err, attempt, wait, level)
            sleep(wait)
