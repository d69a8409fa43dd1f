"""The small protocol every backend implements.

A backend turns a job's requests into answers. It sees the job through
:class:`Ledger`: plain inputs to read, and ``record_*`` methods through which
it reports what it produced (answers, shards, rows it could not send); the job
alone persists them. Capabilities are attributes (``supports_vision``...),
checked by the accessor before any work, never by ``isinstance``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple, runtime_checkable

import openai

from ..core.answers import Answers
from ..core.records import Request, Result
from ..errors import BackendUnavailableError, OptionError

__all__ = ["Backend", "Ledger", "Progress", "TERMINAL", "RowByRow", "JobState", "RowState", "default_client",
           "check_client", "openai_provider"]

#: Batch statuses after which nothing more will happen.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class Progress:
    """Where a job stands.

    Attributes
    ----------
    state : str
        ``validating``, ``in_progress``, ``finalizing``, ``completed``,
        ``failed``, ``expired``, ``cancelling`` or ``cancelled`` (for several
        shards, the least advanced one).
    total, completed, failed : int
        Requests in all, answered, failed so far.
    """

    state: str
    total: int
    completed: int = 0
    failed: int = 0

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@dataclass
class JobState:
    """What a backend keeps of one job in this process; what must outlive it is in the job store.

    ``summary`` is merged into the result's ``attrs["pdbatch"]``.
    """

    summary: Dict[str, Any] = field(default_factory=dict)

    @property
    def batch_ids(self) -> List[str]:
        """Batch API batch ids of the job (none for backends without batches)."""
        return []


@dataclass
class RowState(JobState):
    """A row-by-row backend's job: the requests to run, and how the last run ended."""

    requests: List[Request] = field(default_factory=list)
    #: pending | interrupted | cancelled
    status: str = "pending"
    stop: threading.Event = field(default_factory=threading.Event)
    model_path: Optional[str] = None
    #: local: the schema the grammar enforces, the answers' own (``uniqueItems`` included)
    schema: Optional[dict] = None
    run: Any = None


def default_client() -> Any:
    """``openai.OpenAI()`` from the environment, or a clear error naming ``OPENAI_API_KEY``."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise BackendUnavailableError(
            "no OpenAI client: set the OPENAI_API_KEY environment variable (and OPENAI_BASE_URL for "
            "another provider), or pass client=openai.OpenAI(api_key=..., base_url=...)"
        )
    return openai.OpenAI()


def check_client(client: Any) -> None:
    """Raise :class:`OptionError` unless ``client`` is None or a synchronous OpenAI-style client.

    A client is an ``openai.OpenAI`` (or an object with its ``files``,
    ``batches`` and ``chat`` resources); a URL string, an ``AsyncOpenAI`` or
    anything else is refused before anything is rendered or sent.

    Examples
    --------
    >>> check_client("http://localhost:8000/v1")
    Traceback (most recent call last):
    ...
    pdbatch.errors.OptionError: client must be an openai.OpenAI client, got the string ...; to use another
    server pass client=openai.OpenAI(base_url='http://localhost:8000/v1', api_key=...)
    """
    if client is None or type(client).__module__.split(".")[0] == "anthropic":  # AnthropicBatch checks its own
        return
    if isinstance(client, openai.AsyncOpenAI):
        raise OptionError("client must be a synchronous openai.OpenAI client, got an openai.AsyncOpenAI; pass "
                          "client=openai.OpenAI(base_url=..., api_key=...) (the realtime backend makes its own "
                          "async client from it)")
    if isinstance(client, openai.OpenAI) or all(hasattr(client, a) for a in ("files", "batches", "chat")):
        return
    if isinstance(client, str):
        raise OptionError(f"client must be an openai.OpenAI client, got the string {client!r}; to use another "
                          f"server pass client=openai.OpenAI(base_url={client!r}, api_key=...)")
    shown = repr(client)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise OptionError(f"client must be an openai.OpenAI client, got {type(client).__name__} {shown}; pass "
                      f"client=openai.OpenAI(base_url=..., api_key=...), or leave it out to use OPENAI_API_KEY "
                      f"and OPENAI_BASE_URL")


def openai_provider(client: Any = None) -> str:
    """Who answers an OpenAI-style client, as the answer cache and job fingerprints see it.

    The client's base URL, and its organisation and project where set (from
    the environment, ``OPENAI_BASE_URL`` / ``OPENAI_ORG_ID`` /
    ``OPENAI_PROJECT_ID``, without a client); never its API key.

    Examples
    --------
    >>> import openai
    >>> openai_provider(openai.OpenAI(api_key="k", base_url="http://127.0.0.1:8000/v1/"))
    'openai http://127.0.0.1:8000/v1'
    """
    if client is None:
        base = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        org, project = os.environ.get("OPENAI_ORG_ID"), os.environ.get("OPENAI_PROJECT_ID")
    else:
        base = str(getattr(client, "base_url", "") or "")
        org, project = getattr(client, "organization", None), getattr(client, "project", None)
    parts = ["openai", base.rstrip("/")]
    parts += [f"org={org}"] if org else []
    parts += [f"project={project}"] if project else []
    return " ".join(parts)


class Ledger(Protocol):
    """What a backend sees of a job (:class:`pdbatch.job.Job` implements it): plain inputs, and the one way to report.

    A backend never writes the job store nor a field of the job: it reports
    what it produced through the ``record_*`` methods, and the job persists
    it, in the order reported (a shard is on disk before the call that
    depends on it is made). Its own typed state is ``state`` (made by its
    ``new_state``).
    """

    id: str
    ids: List[str]
    spec: Any
    workdir: str
    state: Any
    max_retries: int
    retry_invalid: int

    @property
    def sent(self) -> int:
        """Rows to send (every row but the skipped ones)."""

    @property
    def cached_rows(self) -> int:
        """Rows answered from the answer cache: stored answers the job never sent."""

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled on purpose."""

    @property
    def max_cost(self) -> Optional[float]:
        """US dollars the job may spend (``max_cost=``), or None."""

    def paid_usage(self) -> Any:
        """Tokens of the stored answers the job paid for (a :class:`~pdbatch.core.records.Usage`)."""

    def record_answers(self, answers: Answers, *, attempt: int = 0) -> None:
        """Answers produced (stored, and parsed for the join)."""

    def record_sent(self, count: int) -> None:
        """``count`` requests went out from this process (first sends only)."""

    def record_shard(self, shard: Any) -> None:
        """A piece of state to persist before going on (``shard.index``, ``shard.fields()``)."""

    def record_skipped(self, reasons: Dict[str, str]) -> None:
        """Rows that cannot be sent, custom_id -> reason."""

    def record_written(self) -> None:
        """Every request of the job is on disk."""

    def stored_shards(self) -> List[Dict[str, Any]]:
        """The pieces recorded so far, by any process."""

    def stored_answers(self) -> Answers:
        """Every stored answer of the job."""

    def answered_ids(self, ok_only: bool = False) -> set:
        """custom_ids with a stored answer."""

    def count_answers(self, ok_only: bool = False) -> int:
        """How many rows have a stored answer."""


@runtime_checkable
class Backend(Protocol):
    """What :class:`~pdbatch.job.Job` needs from a backend."""

    name: str
    #: who answers (an API's base URL, organisation and project; or the local model): part of every cache key
    provider: str
    supports_vision: bool
    supports_json_schema: bool
    supports_embeddings: bool
    #: True where the backend sends from the calling process row by row: one process at a time runs a job
    runs_exclusively: bool

    def new_state(self) -> JobState:
        """The empty in-process state of a job on this backend."""

    def submit(self, job: Ledger, lines: Iterator[Tuple[str, bytes]]) -> None:
        """Start the work for ``lines``: ``(custom_id, JSONL line)`` pairs, consumed once, streaming."""

    def refresh(self, job: Ledger) -> Progress:
        """Update and return the job's progress without blocking for long."""

    def wait(self, job: Ledger, *, progress: bool, timeout: Optional[float]) -> Progress:
        """Block until the job is done (or ``timeout`` seconds pass); store answers as they arrive."""

    def attach(self, job: Ledger, requests: Optional[Callable[[], Iterator[Tuple[str, bytes]]]] = None) -> None:
        """Pick up a job found in the store (a re-run, ``Job.load``); ``requests`` regenerates its lines."""

    def collect(self, job: Ledger) -> None:
        """Store whatever finished work has not been stored yet (before the job's answers are read)."""

    def cancel(self, job: Ledger) -> None:
        """Stop the work; answers already made are kept."""

    def unanswered(self, job: Ledger, pos: int) -> str:
        """The error-cell reason for a sent row that has no result."""


class RowByRow:
    """Bookkeeping shared by backends that answer row by row (local, realtime).

    Answers go to the job store as they arrive (:meth:`_arrived`, the one
    place); progress is read back from the store; a resumed job sends only the
    rows without an answer. Subclasses set :attr:`INTERRUPTED` and
    :attr:`CANCELLED`, the error cells of rows a stopped run never reached.
    """

    #: Only one process at a time runs a job's rows (see :meth:`pdbatch.job.Job.wait`).
    runs_exclusively = True

    @staticmethod
    def new_state() -> RowState:
        return RowState()
    INTERRUPTED = "interrupted: the run stopped before this row; run again to resume"
    CANCELLED = "cancelled: the run was cancelled before this row"

    def attach(self, job: Any, requests: Optional[Callable[[], Iterator[Tuple[str, bytes]]]] = None) -> None:
        """Resume a stored job: its unanswered rows go on the next ``wait``."""
        done = job.answered_ids()
        todo = list(requests()) if requests is not None else []
        self.submit(job, ((cid, line) for cid, line in todo if cid not in done))
        if job.cancelled:
            job.state.status = "cancelled"

    @staticmethod
    def _requests(lines: Iterator[Tuple[str, bytes]]) -> List[Request]:
        """The requests of ``(custom_id, line)`` pairs, bodies decoded (row-by-row backends send dicts)."""
        return [Request.from_line(line) for _cid, line in lines]

    def refresh(self, job: Any) -> Progress:
        total = job.sent
        answered = job.count_answers()
        ok = job.count_answers(ok_only=True)
        if answered >= total:
            state = "completed"
        elif job.state.status in ("interrupted", "cancelled", "budget_exhausted"):
            state = "cancelled"
        else:
            state = "in_progress"
        return Progress(state, total, ok, answered - ok)

    def _arrived(self, job: Any, result: Result) -> None:
        """Record one answer in the job store (the single place answers are stored)."""
        job.record_answers(Answers.from_results([result]))
        job.record_sent(1)

    def collect(self, job: Any) -> None:
        """Nothing to fetch: each answer was stored as it arrived."""

    def unanswered(self, job: Any, pos: int) -> str:
        return self.CANCELLED if job.state.status == "cancelled" else self.INTERRUPTED

    def _timed_out(self, job: Any, timeout: Optional[float]) -> Exception:
        """The error ``wait`` raises when its timeout stopped the run (answers kept)."""
        from ..errors import JobError

        p = self.refresh(job)
        timeout = getattr(job, "asked_timeout", None) or timeout  # the user's figure, not what the lock wait left
        return JobError(
            f"job {job.id} stopped at its {round(timeout, 2):g} s timeout with {p.completed + p.failed} of "
            f"{p.total} rows answered; the answers are kept: send the rest with "
            f"pdbatch.Job.load({job.id!r}).wait(), then .result()"
            f"{' (give Job.load the client= you gave map, if any)' if self.name != 'local' else ''}, "
            f"or call job.wait(), or run the same map again"
        )

    def _interrupted(self, job: Any) -> Progress:
        """After Ctrl-C: say what was kept; ``map`` then returns the partial frame."""
        import warnings

        p = self.refresh(job)
        warnings.warn(f"pdbatch: interrupted: {p.completed + p.failed} of {p.total} rows answered; "
                      f"the rest are marked 'interrupted' (run the same map again to resume)", UserWarning)
        return p
