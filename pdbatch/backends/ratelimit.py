"""Client-side rate limiting for realtime calls: pacing, server headers, shared pauses.

:class:`RateLimiter` decides when the next call may leave. Three things hold a
call back, and all senders of a run share them:

* **pacing** at ``rpm`` requests and ``tpm`` tokens per ``period`` seconds
  (60 s: OpenAI's minute), evenly spaced, never in bursts, a little under the
  limit (``headroom``) so that clock jitter does not cost a 429;
* **what the server said**: ``x-ratelimit-limit-*`` lowers ``rpm`` / ``tpm``
  (or sets them when none were given); when ``x-ratelimit-remaining-*``, less
  what was sent since, does not cover the next call, nothing leaves before
  ``x-ratelimit-reset-*``;
* a **shared pause** after a 429 (:meth:`RateLimiter.pause`): every sender
  waits, not only the one refused.

The token cost of a call is an estimate (:func:`estimate_tokens`): prompt
tokens as :mod:`pdbatch.tokens` counts them (tiktoken when its encoding can be
loaded, else about 4 characters per token), plus the body's
``max_completion_tokens`` / ``max_tokens``.

The limiter is driven from one event loop at a time; its state is plain
numbers, so a backend keeps one limiter (and what it learned) across runs.

Whether a refused call is tried again, and after how long, is the retry
policy's (:mod:`pdbatch.backends.retry`), not the limiter's.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Mapping, Optional, Tuple

from ..core.records import EMBEDDINGS_URL
from ..pricing.tokens import CHARS_PER_TOKEN, body_tokens, token_counter

__all__ = [
    "RateLimiter",
    "Ticket",
    "parse_duration",
    "estimate_tokens",
    "count_tokens",
    "sleep_unless",
    "CHARS_PER_TOKEN",
]


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration(text: Any) -> Optional[float]:
    """Seconds in a rate-limit duration such as ``"1s"``, ``"6m0s"`` or ``"120ms"``.

    A plain number is read as seconds. Returns ``None`` for anything else.

    Examples
    --------
    >>> parse_duration("6m0s"), parse_duration("120ms"), parse_duration("1h2m3.5s"), parse_duration("2")
    (360.0, 0.12, 3723.5, 2.0)
    >>> parse_duration("soon") is None
    True
    """
    if text is None:
        return None
    s = str(text).strip().lower()
    if not s:
        return None
    try:
        return max(float(s), 0.0)
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(s) else None


def _number(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------ token estimates
def count_tokens(text: str) -> int:
    """Tokens in ``text`` (see :mod:`pdbatch.tokens`: tiktoken, else about 4 characters per token)."""
    return token_counter("gpt-4o").count(text)


def estimate_tokens(body: Mapping[str, Any], url: str = "/v1/chat/completions") -> int:
    """The tokens a call will count against a ``tpm`` limit (an estimate).

    The prompt's tokens as :func:`pdbatch.tokens.body_tokens` counts them
    (images included) plus the completion budget ``max_completion_tokens`` or
    ``max_tokens`` times ``n``.

    Examples
    --------
    >>> body = {"messages": [{"role": "user", "content": "x" * 40}], "max_completion_tokens": 5}
    >>> estimate_tokens(body) >= 5 + 3
    True
    """
    text, _images, image_tokens = body_tokens(body, token_counter(body.get("model")).count)
    total = text + image_tokens
    if url != EMBEDDINGS_URL:
        budget = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or 0
        try:
            total += int(budget) * max(int(body.get("n") or 1), 1)
        except (TypeError, ValueError):
            pass
    return total


# ------------------------------------------------------------------ the limiter
async def sleep_unless(delay: float, stop: Optional[asyncio.Event]) -> bool:
    """Sleep ``delay`` seconds; return True at once if ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(max(delay, 0.0))
        return False
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), max(delay, 0.0))
        return True
    except asyncio.TimeoutError:
        return False


@dataclass(frozen=True)
class Ticket:
    """One call as the limiter saw it leave: its sequence number, send time and token estimate."""

    seq: int
    at: float
    tokens: int = 0


@dataclass
class _Seen:
    """The freshest ``remaining`` / ``reset`` a server reported for one kind of limit."""

    seq: int
    remaining: float
    reset_at: float


class _Pace:
    """Evenly spaced slots at ``rate`` units per second (no bursts)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.next_at = 0.0

    def take(self, at: float, cost: float) -> None:
        self.next_at = max(self.next_at, at) + cost / self.rate


class RateLimiter:
    """When may the next call leave? Pacing, server headers and shared pauses.

    Parameters
    ----------
    rpm, tpm : float, optional
        Requests and tokens allowed per ``period``; None: unlimited until a
        server's ``x-ratelimit-limit-*`` header says otherwise.
    period : float
        Seconds the limits refer to (60: per minute).
    headroom : float
        Fraction kept below the limits (0.03: pace at 97 %).
    clock : callable
        Monotonic seconds (for tests).

    Examples
    --------
    >>> import asyncio
    >>> lim = RateLimiter(rpm=600)                       # one call every 0.1 s (and a bit)
    >>> async def three():
    ...     t0 = time.monotonic()
    ...     for _ in range(3):
    ...         await lim.acquire()
    ...         lim.sent()
    ...     return time.monotonic() - t0
    >>> 0.19 < asyncio.run(three()) < 1.0
    True
    """

    def __init__(self, rpm: Optional[float] = None, tpm: Optional[float] = None, *, period: float = 60.0,
                 headroom: float = 0.03, clock: Callable[[], float] = time.monotonic):
        self.period = float(period)
        self.headroom = float(headroom)
        self.clock = clock
        self.limits: Dict[str, Optional[float]] = {"requests": None, "tokens": None}
        self._pace: Dict[str, Optional[_Pace]] = {"requests": None, "tokens": None}
        self.learned: Dict[str, float] = {}
        self._seen: Dict[str, Optional[_Seen]] = {"requests": None, "tokens": None}
        self._sends: Deque[Tuple[int, int]] = deque()
        self._seq = 0
        self.pause_until = 0.0
        self.pauses = 0
        self._set_limit("requests", rpm)
        self._set_limit("tokens", tpm)

    # --------------------------------------------------------------- limits
    def _set_limit(self, kind: str, limit: Optional[float]) -> None:
        self.limits[kind] = limit
        if not limit:
            self._pace[kind] = None
            return
        rate = float(limit) * (1.0 - self.headroom) / self.period
        pace = self._pace[kind]
        if pace is None:
            self._pace[kind] = _Pace(rate)
        else:
            pace.rate = rate

    @property
    def rpm(self) -> Optional[float]:
        """Requests per ``period`` currently paced to (given, or learned from the server)."""
        return self.limits["requests"]

    @property
    def tpm(self) -> Optional[float]:
        """Tokens per ``period`` currently paced to (given, or learned from the server)."""
        return self.limits["tokens"]

    @property
    def counts_tokens(self) -> bool:
        """True when calls need a token estimate (a token limit is known)."""
        return self.limits["tokens"] is not None or self._seen["tokens"] is not None

    # -------------------------------------------------------------- sending
    def _gate(self, kind: str, cost: float, now: float) -> float:
        """The time before which the server's own counters say no (0 if they allow)."""
        seen = self._seen[kind]
        if seen is None or seen.reset_at <= now:
            return 0.0
        used = 0
        for seq, tokens in self._sends:
            if seq > seen.seq:
                used += 1 if kind == "requests" else tokens
        return seen.reset_at if seen.remaining - used < cost else 0.0

    def _hold(self, tokens: int, now: float) -> float:
        return max(self.pause_until, self._gate("requests", 1, now), self._gate("tokens", tokens, now))

    async def acquire(self, tokens: int = 0, stop: Optional[asyncio.Event] = None) -> bool:
        """Wait until a call of ``tokens`` may leave; False if ``stop`` was set meanwhile.

        Call :meth:`sent` right after, before the call goes out.
        """
        while True:
            if stop is not None and stop.is_set():
                return False
            now = self.clock()
            hold = self._hold(tokens, now)
            if hold > now:
                if await sleep_unless(hold - now, stop):
                    return False
                continue
            at = now
            for kind in ("requests", "tokens"):
                pace = self._pace[kind]
                if pace is not None:
                    at = max(at, pace.next_at)
            for kind, cost in (("requests", 1), ("tokens", tokens)):
                pace = self._pace[kind]
                if pace is not None:
                    pace.take(at, cost)
            if at <= now:
                return True
            if await sleep_unless(at - now, stop):
                return False
            now = self.clock()
            if self._hold(tokens, now) <= now:
                return True
            # a 429 or a spent budget arrived while this call waited for its slot: queue again

    def sent(self, tokens: int = 0) -> Ticket:
        """Record that a call is leaving now; pass the ticket to :meth:`observe` with its headers."""
        self._seq += 1
        self._sends.append((self._seq, tokens))
        if len(self._sends) > 100_000:
            self._sends.popleft()
        return Ticket(self._seq, self.clock(), tokens)

    # ------------------------------------------------------------- feedback
    def observe(self, ticket: Ticket, headers: Optional[Mapping[str, str]]) -> None:
        """Learn from the ``x-ratelimit-*`` headers of the answer to ``ticket``'s call."""
        if not headers:
            return
        for kind in ("requests", "tokens"):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit is not None and limit > 0:
                current = self.limits[kind]
                if current is None or limit < current:
                    self._set_limit(kind, limit)
                    self.learned[kind] = limit
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining is not None and reset is not None:
                seen = self._seen[kind]
                if seen is None or ticket.seq >= seen.seq:  # the server counted this call at about its send time
                    self._seen[kind] = _Seen(ticket.seq, remaining, ticket.at + reset)
        oldest = min((s.seq for s in self._seen.values() if s is not None), default=self._seq)
        while self._sends and self._sends[0][0] <= oldest:
            self._sends.popleft()

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds`` from now (after a 429)."""
        until = self.clock() + max(seconds, 0.0)
        if until > self.pause_until:
            self.pause_until = until
            self.pauses += 1
