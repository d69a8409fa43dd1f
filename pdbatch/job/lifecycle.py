"""``Job``: one ``map`` call in flight — submit, wait, collect, cancel, resume.

:func:`start_job` is the single path every entry point (``map``, ``submit``, the CLI) goes through: validate,
render, fingerprint, then either attach to the job already made from the same requests (in flight or finished)
or create one, serve what the answer cache holds, and hand the rest to the backend. Jobs, shards, batch ids and
answers live in the job store, never only here: a restarted kernel finds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import pandas as pd

from ..backends.base import Backend, JobState, Progress
from ..core.ids import custom_ids, row_positions
from ..errors import JobError
from ..core.answers import Answers
from ..core.columns import gc_paused
from ..core.memory import in_system_pool
from ..core.fields import Parsed
from ..core.records import Usage
from ..core.spec import MapSpec
from ..pricing.prices import job_cost, paid_usage
from .cache import to_send
from .hashes import RowHashes
from .ingest import store_and_parse
from .host import load_host
from .locks import answers_bar, job_lock
from .status import jobs
from .store import JobRecord, Store, default_store, pdbatch_home

__all__ = ["Job", "pdbatch_home", "jobs"]


@dataclass
class Job:
    """A submitted ``map``: its requests, its backend's state, its results.

    Use :meth:`wait` then :meth:`result`; ``map`` is ``submit`` + ``wait`` +
    ``result``. ``batch_ids`` lists the Batch API batches (one per shard and
    retry). Load a job from another process with :meth:`Job.load`.

    Examples
    --------
    >>> job = df.llm.submit("Summarise: {text}", model="gpt-4o-mini")   # doctest: +SKIP
    >>> job.wait().result()                                             # doctest: +SKIP
    """

    id: str
    host: Union[pd.DataFrame, pd.Series, None]
    spec: MapSpec
    backend: Backend
    ids: List[str]
    skipped: Dict[int, str]
    workdir: str
    store: Store
    record: JobRecord
    overwrite: bool = False
    max_retries: int = 2
    retry_invalid: int = 0
    #: custom_id -> request hash of every sent or cached row; None once :meth:`result` let go of them (in the store)
    hashes: Optional[RowHashes] = field(default_factory=RowHashes)
    #: the backend's typed in-process state of this job (shards, the local queue...)
    state: JobState = field(default_factory=JobState)
    _last: Optional[Progress] = None
    #: answers parsed as they arrived (see :meth:`record_answers`), for the join
    _parsed: List[Parsed] = field(default_factory=list, repr=False)
    #: called once, when the first requests are out (start_job starts the frame's copy then)
    on_sent: Optional[Callable[[], Any]] = field(default=None, repr=False)
    #: requests this process sent (as the backend reported them): ``counts["sent"]`` of the result
    requests_sent: int = 0
    #: how this call found a job it picked up (see :meth:`note_attached`): rows answered, rows cached, rows in flight
    found: Dict[str, int] = field(default_factory=lambda: {"answered": 0, "cached": 0, "in_flight": 0})

    # ------------------------------------------------- what backends report (the Ledger of backends/base.py)
    def record_answers(self, answers: Answers, *, attempt: int = 0) -> None:
        """Store answers a backend produced and parse them now, while later shards run (see :mod:`.ingest`)."""
        early = store_and_parse(self.store, self.id, answers, self._row_hashes(), self.spec.fmt.text_parser(),
                                list(self.spec.fmt.columns or ()), attempt=attempt)
        if early is not None:
            self._parsed.append(early)

    def _row_hashes(self) -> RowHashes:
        """:attr:`hashes`, read back from the store if :meth:`result` let go of them."""
        self.hashes = self.hashes if self.hashes is not None else self.store.row_hashes(self.id)
        return self.hashes

    def record_sent(self, count: int) -> None:
        """``count`` requests went out from this process (a row sent again by a retry round is not counted)."""
        self.requests_sent += count
        hook, self.on_sent = self.on_sent, None  # backends may report from several threads: hooks are idempotent
        if hook is not None:
            hook()

    def record_shard(self, shard: Any) -> None:
        """Persist one piece of the backend's state that must outlive the process (a batch shard)."""
        self.store.put_shard(self.id, shard.index, **shard.fields())

    def record_skipped(self, reasons: Mapping[str, str]) -> None:
        """Rows the backend could not send (custom_id -> reason): they get the reason as their error cell."""
        named = list(reasons)
        rows = row_positions(self.ids, named).tolist()
        self.skipped.update({pos: reasons[cid] for cid, pos in zip(named, rows) if pos >= 0})

    def stored_shards(self) -> List[Dict[str, Any]]:
        """The shards recorded so far (by any process), as :meth:`record_shard` stored them."""
        return self.store.shards(self.id)

    def answered_ids(self, ok_only: bool = False) -> set:
        """custom_ids with a stored answer (with ``ok_only``, a plain success)."""
        return self.store.answered_ids(self.id, ok_only)

    def count_answers(self, ok_only: bool = False) -> int:
        """How many rows have a stored answer (with ``ok_only``, a plain success)."""
        return self.store.count_answers(self.id, ok_only)

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled on purpose (by this process or another)."""
        return self.record.state in ("cancelling", "cancelled")

    def record_written(self) -> None:
        """Record that every request is on disk: rows, hashes, counts, the cached rows' tokens."""
        self.store.put_rows(self.id, self._row_hashes())
        self.record.sent = len(self.ids) - len(self.skipped) - self.record.cached
        self.record.state = "written"
        self.store.update_job(self.id, state="written", sent=self.record.sent, cached=self.record.cached,
                              spec=self.record.spec)

    @property
    def cached_usage(self) -> Usage:
        """Tokens of the rows served from pdbatch's answer cache: an earlier job paid for them, not this one."""
        return Usage(*self.record.spec.get("_cached_usage", ()))

    def add_cached_usage(self, usage: Usage) -> None:
        """Add the tokens of rows just served from the answer cache (stored with the job by :meth:`record_written`)."""
        u = self.cached_usage + usage
        self.record.spec = dict(self.record.spec, _cached_usage=[u.prompt_tokens, u.completion_tokens,
                                                                 u.cached_tokens, u.reasoning_tokens])

    def note_attached(self) -> None:
        """Remember how this call found a job it picked up, before the backend resumes it.

        Rows answered by then came from an earlier run (or the cache): the
        result counts them as ``cached``. Rows an earlier run sent that are
        still unanswered and run remotely (batches) are ``resumed``: this call
        collects them without sending them again.
        """
        answered = self.count_answers()
        pending = self.record.sent - max(0, answered - self.record.cached)
        self.found = {"answered": answered, "cached": self.record.cached,
                      "in_flight": 0 if self.backend.runs_exclusively else max(0, pending)}

    def counts(self, stats: Any) -> Dict[str, int]:
        """``attrs["pdbatch"]["counts"]``: the join's counts, and what this call sent, found answered, resumed.

        ``sent`` is the requests this call sent; ``cached`` the rows answered
        from the answer cache or by an earlier run of the same job (a re-run
        of a finished ``map`` sends nothing: ``sent`` 0, every row
        ``cached``); ``resumed`` the rows an earlier run sent that this call
        picked up in flight; ``unanswered`` the rows sent that never got an
        answer (cancelled, expired, interrupted; ``failed`` counts them too,
        as their error cell is set).
        """
        cached_now = self.record.cached - self.found["cached"]
        return dict(stats.to_dict(), sent=self.requests_sent, cached=self.found["answered"] + cached_now,
                    resumed=self.found["in_flight"], unanswered=stats.unanswered)

    # ----------------------------------------------------------------- status
    @property
    def name(self) -> Optional[str]:
        """What ``pdbatch jobs`` calls the job (``name=`` of ``map``; default the template's first words)."""
        return self.record.spec.get("_name")

    @property
    def max_cost(self) -> Optional[float]:
        """US dollars the job may spend (``max_cost=`` of ``map``), or None."""
        return self.record.spec.get("_max_cost")

    def paid_usage(self) -> Usage:
        """Tokens of the stored answers this job paid for (rows served from the answer cache left out)."""
        return paid_usage(self.stored_answers().usage, self.cached_usage)

    @property
    def batch_ids(self) -> List[str]:
        """Batch API batch ids of this job (empty for other backends)."""
        return self.state.batch_ids

    @property
    def sent(self) -> int:
        return len(self.ids) - len(self.skipped)

    @property
    def cached_rows(self) -> int:
        """Rows answered from pdbatch's answer cache (stored with the job, never sent by it)."""
        return self.record.cached

    def status(self) -> Dict[str, Any]:
        """Refresh and return a summary: state, counts, batch ids, usage so far.

        Returns
        -------
        dict
            ``{"job_id", "name", "backend", "state", "total", "completed", "failed",
            "skipped", "cached", "batch_ids"}``.
        """
        p = self.backend.refresh(self)
        self._last = p
        return {
            "job_id": self.id,
            "name": self.name,
            "backend": self.backend.name,
            "state": p.state,
            "total": p.total,
            "completed": p.completed,
            "failed": p.failed,
            "skipped": len(self.skipped),
            "cached": self.record.cached,
            "batch_ids": self.batch_ids,
        }

    @in_system_pool
    def wait(self, progress: bool = True, timeout: Optional[float] = None) -> "Job":
        """Block until every request is answered, failed or given up.

        Parameters
        ----------
        progress : bool
            Show a tqdm progress bar of completed/failed requests.
        timeout : float, optional
            Seconds to wait at most; :class:`~pdbatch.errors.JobError` after
            that (the job keeps running: call ``wait`` again).

        Returns
        -------
        Job
            ``self``, so that ``job.wait().result()`` reads well.
        """
        self.asked_timeout = timeout  # what a timeout error names (the backend may get less, see below)
        if self.backend.runs_exclusively:
            # Row-by-row backends send from this process: one process at a time per job, so two notebooks
            # running the same cell never pay twice; the second waits, its bar showing the other's answers.
            start, before = time.monotonic(), self.count_answers()
            tick, close = answers_bar(self.sent, self.count_answers, f"pdbatch {self.id[-10:]} (another process)")
            try:
                with job_lock(self.workdir, "run.lock", timeout, tick=tick if progress else None):
                    close()
                    self.found["in_flight"] += max(0, self.count_answers() - before)  # answered by the other
                    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
                    self._last = self.backend.wait(self, progress=progress, timeout=left)
            finally:
                close()
        else:
            self._last = self.backend.wait(self, progress=progress, timeout=timeout)
        return self

    def cancel(self) -> "Job":
        """Cancel what is still running; answers already made are kept."""
        self.backend.cancel(self)
        self.store.update_job(self.id, state="cancelling")
        return self

    # ----------------------------------------------------------------- result
    def answers(self) -> Answers:
        """Every answer stored for this job (cached ones included), column-wise.

        Failed answers are kept too: ``job.answers().to_frame()`` gives one
        row per answer with its ``custom_id`` and raw text (``content``),
        also where the answer was not valid JSON or was cut off; row ``i``
        of the frame has custom_id ``job.ids[i]``. ``raw_column=`` of
        ``map`` puts the same text beside each row.
        """
        return self.store.answers(self.id)

    stored_answers = answers  #: the same, by the name backends use (the Ledger of backends/base.py)

    @in_system_pool
    def result(self, *, overwrite: Optional[bool] = None):
        """Join the answers onto the original object and return a new one.

        Rows that failed, were skipped or never answered carry their reason in
        the error column; the run never raises for a single row.

        Returns
        -------
        DataFrame or Series
            With ``attrs["pdbatch"]`` holding ids, counts and token usage.
        """
        p = self._last if self._last is not None and self._last.done else self.backend.refresh(self)
        if not p.done:
            raise JobError(
                f"job {self.id} is still {p.state} ({p.completed + p.failed}/{p.total} done); "
                f"call job.wait() first"
            )
        if self.host is None:
            raise JobError(
                f"job {self.id}: the original frame could not be stored, so the answers cannot be joined "
                f"back here; use job.answers() or run the same df.llm.map(...) again (it re-attaches)"
            )
        self.backend.collect(self)
        self.hashes = None  # in the store since start_job (read back if asked): the join needs the memory
        self.store.release()
        parsed = Parsed.concat(self._parsed)  # answers parsed on arrival, handed to the join (which empties it)
        self._parsed = []  # a second result() parses again
        spec = self.spec
        with gc_paused():  # the join makes no cycles: a collector pass over a large heap would only cost time
            out, stats, errors = spec.join(
                self.host,
                self.ids,
                self.answers,  # read by the join, which lets go of them before it builds the columns
                skipped=self.skipped,
                unanswered=lambda pos: self.backend.unanswered(self, pos),
                overwrite=self.overwrite if overwrite is None else overwrite,
                hint=f"The answers are kept: call pdbatch.Job.load({self.id!r}).result(overwrite=True).",
                parsed=parsed,
            )
        summary = {
            "job_id": self.id,
            "name": self.name,
            "backend": self.backend.name,
            "model": spec.model,
            "state": p.state,
            "batch_ids": self.batch_ids,
            "counts": self.counts(stats),
            "usage": stats.usage.to_dict(),
            "usage_from_cache": self.cached_usage.to_dict(),
        }
        summary.update(job_cost(paid_usage(stats.usage, self.cached_usage), spec.model, self.backend.name,
                                cached_rows=self.record.cached, provider=self.backend.provider,
                                tier=spec.params.get("service_tier")))
        summary.update(self.state.summary)
        if isinstance(out, pd.Series) and spec.error_column:
            summary["errors"] = {self.ids[i]: e for i, e in enumerate(errors) if e is not None}
        out.attrs = dict(out.attrs)
        out.attrs["pdbatch"] = summary
        stored = self.store.job(self.id)  # a cancel from another process (pdbatch cancel) is in the store only
        if stored is not None:
            self.record.state = stored.state
        if p.state == "cancelled":
            # Cancelled on purpose: never reused, so running the same map again sends the rest.
            # Interrupted (Ctrl-C, a timeout): left as it is, so running it again resumes it.
            new_state = "cancelled" if self.record.state in ("cancelling", "cancelled") else self.record.state
        else:
            new_state = "finished"
        if self.record.state != new_state:
            self.record.state = new_state
            self.store.update_job(self.id, state=new_state)
        return out

    # ------------------------------------------------------------------- load
    @classmethod
    def load(cls, job_id: str, *, client: Any = None, store: Optional[Store] = None) -> "Job":
        """Load a job from the store by id (another process, a restarted kernel).

        Parameters
        ----------
        job_id : str
        client : openai.OpenAI or anthropic.Anthropic, optional
            For batch and realtime jobs; default ``OpenAI()`` from the
            environment (``anthropic.Anthropic()`` for a job Anthropic answered).
        """
        from ..backends import resolve_backend

        store = store or default_store()
        rec = store.job(job_id)
        if rec is None:
            raise JobError(f"no job {job_id!r} in the store at {store.path}; list jobs with pdbatch.jobs()")
        spec = MapSpec.from_source(rec.spec)
        host, ids = load_host(rec.workdir)
        if ids is None:  # a copy made before the custom_ids were stored beside it
            ids = custom_ids(host.index) if host is not None else list(store.row_hashes(job_id))
        rendered = None
        if host is not None:
            frame = host.to_frame(name="value") if isinstance(host, pd.Series) else host
            rendered = spec.render(frame, ids)
        if client is None and str(rec.spec.get("_provider", "")).startswith("anthropic "):  # an Anthropic job
            from ..backends.anthropic import default_anthropic_client

            client = default_anthropic_client()
        backend = resolve_backend(rec.backend, client, model=spec.model)
        job = cls(rec.id, host, spec, backend, ids, rendered.skipped if rendered else {}, rec.workdir, store, rec,
                  max_retries=int(rec.spec.get("_max_retries", 2)),
                  retry_invalid=int(rec.spec.get("_retry_invalid", 0)),
                  hashes=store.row_hashes(job_id), state=backend.new_state())
        # Backends that send row by row (local, realtime) resume the rows still unanswered.
        requests = None if rendered is None else (lambda: to_send(job, rendered, True))
        with job_lock(rec.workdir):  # never heal a shard while its submitter is still at work
            job.record = store.job(job_id) or rec
            job.note_attached()
            backend.attach(job, requests=requests)
        return job

    def __repr__(self) -> str:
        state = self._last.state if self._last else self.record.state
        return (f"<pdbatch.Job {self.id} name={self.name!r} backend={self.backend.name} rows={len(self.ids)} "
                f"sent={self.sent} cached={self.record.cached} state={state}>")

