"""The realtime backend: concurrent Chat Completions and Embeddings calls, paced and retried.

``submit`` only keeps the requests (so ``wait=False`` returns at once);
``wait`` runs every unanswered request on an ``openai.AsyncOpenAI`` client in
an event loop of its own, on a worker thread, so that it works the same from a
script and from inside Jupyter's running loop. The calling thread stores each
answer in the job store as it arrives, drives the progress bar, and handles
Ctrl-C and the timeout.

At most ``max_concurrency`` calls are in flight; a
:class:`~pdbatch.backends.ratelimit.RateLimiter` paces them to ``rpm`` / ``tpm`` and to
what the server's ``x-ratelimit-*`` headers say, and holds every sender after a
429.

Retry policy (:mod:`pdbatch.backends.retry`, shared with the Batch backend):
the SDK's retries are off (``max_retries=0`` on the async client); pdbatch
retries 408, 409, 429, 5xx, timeouts and connection errors, waiting
``retry-after-ms`` / ``retry-after`` when the server gives it (at most
``max_retry_after`` s) and exponential backoff with jitter otherwise, up to
``max_attempts`` attempts per row; then the row gets an error cell. Any other
4xx (a 400...) is final at once, and so is ``insufficient_quota``. Each retry
is logged on the ``"pdbatch"`` logger (debug level).

Interrupting ``wait`` (Ctrl-C) or hitting its ``timeout`` stops sending, lets
the calls in flight finish (for a bounded time) and keeps every answer;
waiting again (or re-running the same ``map``) sends only the rows still
unanswered.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Dict, Iterable, List, Optional

import openai

from ..errors import PdbatchError
from ..options import check
from ..pricing.budget import Spend, api_provider, format_usd
from ..pricing.prices import batch_priced
from .ratelimit import RateLimiter
from ..core.records import EMBEDDINGS_URL, Request, Result  # noqa: F401  (EMBEDDINGS_URL: for the examples)
from .progress import progress_bar
from .base import RowByRow, Progress, check_client, default_client, openai_provider
from .pickling import PicklesWithoutClient
from .realtime_run import _Run, async_client

__all__ = ["Realtime", "RealtimeBackend", "async_client", "INTERRUPTED", "CANCELLED", "BUDGET_EXHAUSTED"]

#: Error cell of a row the run never answered after Ctrl-C or a timeout.
INTERRUPTED = "interrupted: the realtime run stopped before this row was answered; run again to resume"
#: Error cell of a row the run did not send because ``max_cost=`` was reached.
BUDGET_EXHAUSTED = ("budget_exhausted: the job's spend reached max_cost={cap} before this row was sent; run the "
                    "same map with a higher max_cost= to send the rest")
#: Error cell of a row the run never answered after ``job.cancel()``.
CANCELLED = "cancelled: the realtime run was cancelled before this row was answered"
# Longest wait for calls in flight after a stop, in seconds.
_DRAIN_SECONDS = 30.0
_TICK = 0.1
class Realtime(RowByRow, PicklesWithoutClient):
    """Answer requests with concurrent realtime API calls (Chat Completions, Embeddings).

    Parameters
    ----------
    client : openai.OpenAI, optional
        Where to send the calls; default ``openai.OpenAI()`` from
        ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``. An ``AsyncOpenAI`` with the
        same settings (and no SDK retries) is derived from it; the key is
        never written anywhere.
    max_concurrency : int
        Calls in flight at most (default 16).
    rpm, tpm : float, optional
        Requests and tokens per minute (per ``rate_period``) to stay under;
        the server's ``x-ratelimit-*`` headers lower them, or set them when
        not given.
    max_attempts : int
        Attempts per row for retryable failures (default 6).
    rate_period : float
        Seconds ``rpm`` / ``tpm`` and the server's limits refer to (60).
    backoff, max_backoff : float
        First and longest backoff in seconds when the server gives no
        ``retry-after`` (0.5 doubling to 8).
    max_retry_after : float
        Longest ``retry-after`` honoured, in seconds (60); longer ones fall
        back to the backoff.
    progress : bool
        False hides the progress bar even when ``wait(progress=True)``.

    Examples
    --------
    >>> import pandas as pd, pdbatch
    >>> from pdbatch.server import BatchServer
    >>> with BatchServer() as srv:
    ...     df = pd.DataFrame({"city": ["Paris", "Lima"]}, index=["fr", "pe"])
    ...     out = df.llm.map("Country of {city}?", model="gpt-4o-mini", client=srv.client(),
    ...                      backend="realtime", progress=False, cache=False)
    >>> out["llm_output"].tolist()
    ['Country of Paris?', 'Country of Lima?']
    >>> out.attrs["pdbatch"]["realtime"]["attempts"]
    2
    """

    name = "realtime"
    Run = _Run  # the async run; another API's subclass brings its own
    INTERRUPTED = INTERRUPTED
    CANCELLED = CANCELLED
    supports_vision = True
    supports_json_schema = True
    supports_embeddings = True
    supports_responses = True

    def __init__(
        self,
        client: Optional["openai.OpenAI"] = None,
        *,
        max_concurrency: int = 16,
        rpm: Optional[float] = None,
        tpm: Optional[float] = None,
        max_attempts: int = 6,
        rate_period: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        progress: bool = True,
    ):
        max_concurrency, max_attempts = check("max_concurrency", max_concurrency), check("max_attempts", max_attempts)
        rpm, tpm, rate_period = check("rpm", rpm), check("tpm", tpm), check("rate_period", rate_period)
        backoff, max_backoff = check("backoff", backoff), check("max_backoff", max_backoff)
        max_retry_after = check("max_retry_after", max_retry_after)
        self.client, self.provider = self._take_client(client)
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.progress = bool(progress)
        self.limiter = RateLimiter(rpm, tpm, period=rate_period)

    def _take_client(self, client: Any) -> tuple:
        """``(client, provider)``: the client to send through, checked now, before any work.

        A subclass for another API (:class:`~pdbatch.backends.anthropic_realtime.AnthropicRealtime`)
        checks its own kind of client here; the options are checked without one.
        """
        check_client(client)
        client = client if client is not None else default_client()
        async_client(client)  # refuse an unsupported client now, before any work
        return client, openai_provider(client)

    # ----------------------------------------------------------------- submit
    def submit(self, job, lines) -> None:
        job.state.requests, job.state.status = self._requests(lines), "pending"

    # ------------------------------------------------------------------- wait
    def wait(self, job, *, progress: bool, timeout: Optional[float]) -> Progress:
        """Send every unanswered row and store each answer as it arrives.

        Parameters
        ----------
        job : Job
        progress : bool
            Show a tqdm bar (rows/s, failures, 429s, retries).
        timeout : float, optional
            Seconds; then sending stops, calls in flight finish and are kept,
            and :class:`~pdbatch.errors.JobError` is raised (wait again to resume).

        Returns
        -------
        Progress
            ``completed``, or ``cancelled`` after Ctrl-C or :meth:`cancel`
            (the answered rows are kept; the others get an error cell).
        """
        self._counts(job)
        if job.state.status == "cancelled":
            return self.refresh(job)
        answered = job.answered_ids()
        todo = [r for r in job.state.requests if r.custom_id not in answered]
        if not todo:
            return self.refresh(job)
        job.state.status = "pending"
        spend = self._spend(job)
        if spend is not None and spend.exhausted:
            job.state.status = "budget_exhausted"
            self._counts(job).update(max_cost=spend.cap, spent=round(spend.spent, 10), budget_exhausted=True)
            return self.refresh(job)
        run = job.state.run = self.Run(self, todo)
        run.spend = spend
        bar = None
        if progress and self.progress:

            total = job.sent
            bar = progress_bar(total=total, initial=total - len(todo), unit="row", desc=f"pdbatch realtime {job.id[-10:]}")
        deadline = None if timeout is None else time.monotonic() + timeout
        failed = [0]
        try:
            try:
                run.start()
                while not run.finished():
                    if job.state.status == "cancelled":
                        run.stop()
                        self._drain(job, run, bar, failed)
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        run.stop()
                        self._drain(job, run, bar, failed)
                        raise self._timed_out(job, timeout)
                    tick = _TICK if deadline is None else max(0.0, min(_TICK, deadline - time.monotonic()))
                    self._take(job, run, bar, failed, tick)
            except KeyboardInterrupt:
                run.stop()
                job.state.status = "interrupted"
                try:
                    self._drain(job, run, bar, failed)
                except KeyboardInterrupt:
                    run.abort()  # a second Ctrl-C: give up on the calls in flight
                if bar is not None:
                    bar.close()
                    bar = None
                return self._interrupted(job)
        finally:
            run.abort()
            run.thread.join(5.0)
            self._summarise(job, run)
            if bar is not None:
                bar.close()
        if run.error is not None:
            raise PdbatchError(f"the realtime run of job {job.id} failed: {run.error!r}") from run.error
        return self.refresh(job)

    def _take(self, job, run: _Run, bar, failed: List[int], wait_for: float) -> int:
        """Store what has arrived (waiting up to ``wait_for`` s for the first); return how many."""
        got = 0
        try:
            res = run.results.get(timeout=wait_for) if wait_for > 0 else run.results.get_nowait()
        except queue.Empty:
            return 0
        while True:
            self._arrived(job, res)
            if run.spend is not None:
                run.spend.add(res.usage)
                if run.spend.exhausted and job.state.status == "pending":  # send nothing more; in flight are kept
                    job.state.status = "budget_exhausted"
                    run.stop()
            got += 1
            failed[0] += not res.ok
            try:
                res = run.results.get_nowait()
            except queue.Empty:
                break
        if bar is not None:  # the postfix first: whatever line update() draws carries it
            bar.set_postfix_str(f"failed={failed[0]}, 429s={run.limited}, retries={run.retries}", refresh=False)
            bar.update(got)
        return got

    def _drain(self, job, run: _Run, bar, failed: List[int]) -> None:
        """After a stop: keep the answers of the calls in flight, for at most ``_DRAIN_SECONDS``."""
        limit = time.monotonic() + _DRAIN_SECONDS
        while not run.finished():
            if time.monotonic() >= limit:
                run.abort()
                limit = time.monotonic() + 5.0
            self._take(job, run, bar, failed, _TICK)

    def _spend(self, job) -> Optional[Spend]:
        """What the job has spent against its ``max_cost`` (None without a cap)."""
        cap = job.max_cost
        if cap is None:
            return None
        flex_rate = batch_priced(False, job.spec.params.get("service_tier"))  # flex pays the Batch API's price
        return Spend(cap, job.spec.model, batch=flex_rate, provider=api_provider(self.provider), usage=job.paid_usage())

    def unanswered(self, job, pos: int) -> str:
        if job.state.status == "budget_exhausted":
            return BUDGET_EXHAUSTED.format(cap=format_usd(job.max_cost))
        return super().unanswered(job, pos)

    @staticmethod
    def _counts(job) -> Dict[str, Any]:
        """``job.state.summary["realtime"]``: merged into ``attrs["pdbatch"]`` by ``Job.result``."""
        return job.state.summary.setdefault(
            "realtime", {"attempts": 0, "retries": 0, "429s": 0, "seconds": 0.0})

    def _summarise(self, job, run: _Run) -> None:
        """Add this run's counts to the job's summary."""
        s = self._counts(job)
        s["attempts"] += run.attempts
        s["retries"] += run.retries
        s["429s"] += run.limited
        if run.unavailable:  # flex "resource unavailable" 429s: retried with backoff, not counted as rate limits
            s["flex_unavailable"] = s.get("flex_unavailable", 0) + run.unavailable
        if run.started:
            s["seconds"] = round(s["seconds"] + max((run.ended or time.monotonic()) - run.started, 0.0), 3)
        if run.spend is not None:  # what the budget cap saw: the job's spend so far, and the cap
            s.update(max_cost=run.spend.cap, spent=round(run.spend.spent, 10),
                     budget_exhausted=job.state.status == "budget_exhausted")
        lim = run.backend.limiter
        if lim.learned:
            s["server_limits"] = dict(lim.learned)

    # ----------------------------------------------------------- without a job
    def answer(self, requests: Iterable[Request]) -> List[Result]:
        """Send ``requests`` now and return their results, in arrival order (no job, no store).

        Rows stopped by Ctrl-C are left out.

        Examples
        --------
        >>> from pdbatch.server import BatchServer
        >>> with BatchServer() as srv:
        ...     res = Realtime(srv.client()).answer(
        ...         [Request("a", {"model": "e", "input": "hi"}, url=EMBEDDINGS_URL)])
        >>> len(res[0].body["data"][0]["embedding"])
        8
        """
        run = self.Run(self, requests).start()
        out: List[Result] = []
        try:
            while not run.finished():
                try:
                    out.append(run.results.get(timeout=_TICK))
                except queue.Empty:
                    pass
        except KeyboardInterrupt:
            run.stop()
            while not run.finished():
                try:
                    out.append(run.results.get(timeout=_TICK))
                except queue.Empty:
                    pass
        finally:
            run.abort()
            run.thread.join(5.0)
        if run.error is not None:
            raise PdbatchError(f"the realtime run failed: {run.error!r}") from run.error
        return out

    # ----------------------------------------------------------------- cancel
    def cancel(self, job) -> None:
        """Send nothing more (calls in flight finish and are kept); unsent rows get a ``cancelled`` cell."""
        job.state.status = "cancelled"
        run = job.state.run
        if run is not None:
            run.stop()


#: The name of earlier releases.
RealtimeBackend = Realtime
