"""The one options model: every option of a ``map`` call, its type, its range and its owner.

An option is owned by the spec (what is asked), the job (how it is run and
joined) or one backend (``"batch"``, ``"realtime"``, ``"local"``). Each value
is checked once, here, before anything is rendered or sent:
:func:`check` names the option and says what is allowed. An option given to
a backend that does not take it raises :class:`~pdbatch.errors.OptionError`
naming the backend that does (:func:`check_owner`).

Examples
--------
>>> check("poll_interval", 0.5)
0.5
>>> check("poll_interval", -1)
Traceback (most recent call last):
...
pdbatch.errors.OptionError: poll_interval must be a number of seconds > 0, got -1
>>> JobOptions(max_retries=1).max_retries
1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import OptionError

__all__ = ["Option", "OPTIONS", "BACKEND_NAMES", "check", "check_owner", "JobOptions", "RunOptions"]

BACKEND_NAMES = ("batch", "realtime", "local")


@dataclass(frozen=True)
class Option:
    """One option: who owns it, what kind of value it takes, and what it means."""

    name: str
    owner: str  # "job", "run", or a backend name
    kind: str  # see _KINDS
    help: str


#: What each kind of value allows, and how a bad value is described.
_KINDS: Dict[str, str] = {
    "count>=1": "a whole number >= 1",
    "count>=0": "a whole number >= 0",
    "count>=1|None": "a whole number >= 1 or None",
    "seconds>0": "a number of seconds > 0",
    "seconds>=0": "a number of seconds >= 0",
    "seconds>0|None": "a number of seconds > 0, or None",
    "rate>0|None": "a number > 0 (per minute), or None",
    "bool": "True or False",
    "column|None": "a column name (a non-empty string) or None",
    "text|None": "a non-empty string or None",
    "usd>0|None": "an amount in US dollars > 0, or None",
}

_TABLE: Tuple[Tuple[str, str, str, str], ...] = (
    ("overwrite", "job", "bool", "replace new columns that already exist"),
    ("cache", "job", "bool", "serve rows answered before from the job store"),
    ("max_retries", "job", "count>=0", "rounds of resending rows that failed for a retryable reason"),
    ("retry_invalid", "job", "count>=0", "rounds of resending answers that fail to parse or validate"),
    ("name", "job", "text|None", "what pdbatch jobs calls the job (default: the template's first words)"),
    ("max_cost", "job", "usd>0|None", "US dollars the job may spend: checked against the estimate before sending"),
    ("wait", "run", "bool", "block until the job is done"),
    ("progress", "run", "bool", "show a progress bar while waiting"),
    ("timeout", "run", "seconds>0|None", "seconds to wait at most"),
    ("show", "run", "bool", "write an estimate's summary to standard output"),
    ("embeddings", "job", "bool", "the results files answer embeddings requests"),
    ("raw_column", "job", "column|None", "a column of every row's answer text as it came back, failed or not"),
    ("shard_size", "batch", "count>=1", "requests per batch input file"),
    ("shard_bytes", "batch", "count>=1", "bytes per batch input file"),
    ("poll_interval", "batch", "seconds>0", "first pause between status polls"),
    ("max_poll_interval", "batch", "seconds>0", "longest pause between status polls"),
    ("create_attempts", "batch", "count>=1|None", "tries of batches.create for one shard (None: bounded by time)"),
    ("create_timeout", "batch", "seconds>0", "seconds pdbatch keeps retrying batches.create (429, 5xx) for one shard"),
    ("max_concurrency", "realtime", "count>=1", "calls in flight at most"),
    ("rpm", "realtime", "rate>0|None", "requests per minute to stay under"),
    ("tpm", "realtime", "rate>0|None", "tokens per minute to stay under"),
    ("max_attempts", "realtime", "count>=1", "attempts per row for retryable failures"),
    ("rate_period", "realtime", "seconds>0", "seconds rpm and tpm refer to"),
    ("backoff", "realtime", "seconds>=0", "first backoff when the server gives no retry-after"),
    ("max_backoff", "realtime", "seconds>=0", "longest backoff"),
    ("max_retry_after", "realtime", "seconds>=0", "longest retry-after honoured"),
    ("workers", "local", "count>=1|None", "model instances answering in parallel"),
    ("threads_per_worker", "local", "count>=1|None", "CPU threads per model instance"),
)

#: Every option by name.
OPTIONS: Dict[str, Option] = {name: Option(name, owner, kind, text) for name, owner, kind, text in _TABLE}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ok(kind: str, value: Any) -> bool:
    if kind.endswith("|None"):
        if value is None:
            return True
        kind = kind[:-5]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "column":
        return isinstance(value, str) and value != ""
    if kind == "text":
        return isinstance(value, str) and value.strip() != ""
    if kind.startswith("count"):
        return _whole(value) and value >= int(kind[-1])
    if kind in ("seconds>0", "rate>0", "usd>0"):
        return _number(value) and value > 0
    if kind == "seconds>=0":
        return _number(value) and value >= 0
    raise AssertionError(kind)  # pragma: no cover - a kind missing from this function


def check(name: str, value: Any, label: Optional[str] = None) -> Any:
    """Return ``value`` if it is allowed for option ``name``; else raise :class:`OptionError`.

    ``label`` is how the message names the option, e.g. the command-line flag
    ``"--poll-interval"``; default ``name``.

    Examples
    --------
    >>> check("timeout", 0, label="--timeout")
    Traceback (most recent call last):
    ...
    pdbatch.errors.OptionError: --timeout must be a number of seconds > 0, or None, got 0
    """
    opt = OPTIONS[name]
    if not _ok(opt.kind, value):
        raise OptionError(f"{label or name} must be {_KINDS[opt.kind]}, got {value!r}")
    return float(value) if opt.kind.startswith(("seconds", "rate", "usd")) and value is not None else value


def check_owner(backend: str, given: Mapping[str, Any]) -> None:
    """Raise :class:`OptionError` for an option in ``given`` that backend ``backend`` does not take.

    Examples
    --------
    >>> check_owner("batch", {"workers": 4})
    Traceback (most recent call last):
    ...
    pdbatch.errors.OptionError: workers= is an option of backend='local' (model instances answering in parallel), not of backend='batch'; drop it, or pass backend='local' (or pdbatch.Local(workers=...))
    """
    for name in given:
        opt = OPTIONS.get(name)
        if opt is None or opt.owner == backend or opt.owner not in BACKEND_NAMES:
            continue
        cls = opt.owner.capitalize()
        raise OptionError(
            f"{name}= is an option of backend={opt.owner!r} ({opt.help}), not of backend={backend!r}; "
            f"drop it, or pass backend={opt.owner!r} (or pdbatch.{cls}({name}=...))"
        )


@dataclass(frozen=True)
class JobOptions:
    """How a job is run and joined (checked on creation)."""

    overwrite: bool = False
    cache: bool = True
    max_retries: int = 2
    retry_invalid: int = 0
    #: what ``pdbatch jobs`` shows; None: the template's first words (never part of the job's fingerprint)
    name: Optional[str] = None
    #: US dollars the job may spend (None: no cap); not part of the job's fingerprint either
    max_cost: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("overwrite", "cache", "max_retries", "retry_invalid", "name", "max_cost"):
            object.__setattr__(self, name, check(name, getattr(self, name)))


@dataclass(frozen=True)
class RunOptions:
    """How the caller waits for a job (checked on creation)."""

    wait: bool = True
    progress: bool = True
    timeout: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("wait", "progress", "timeout"):
            object.__setattr__(self, name, check(name, getattr(self, name)))
