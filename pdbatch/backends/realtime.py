"""The realtime backend: concurrent Chat Completions and Embeddings calls, paced and retried.

``submit`` only keeps the requests (so ``wait=False`` returns at once);
``wait`` runs every unanswered request on an ``openai.AsyncOpenAI`` client in
an event loop of its own, on a worker thread, so that it works the same from a
script and from inside Jupyter's running loop. The calling thread stores each
answer in the job store as it arrives, drives the progress bar, and handles
Ctrl-C and the timeout.

At most ``max_concurrency`` calls are in flight; a
:class:`~pdbatch.ratelimit.RateLimiter` paces them to ``rpm`` / ``tpm`` and to
what the server's ``x-ratelimit-*`` headers say, and holds every sender after a
429.

Retry policy: the SDK's retries are off (``max_retries=0`` on the async
client); pdbatch retries 408, 409, 429, 5xx, timeouts and connection errors,
waiting ``retry-after-ms`` / ``retry-after`` when the server gives it (at most
``max_retry_after`` s) and exponential backoff with jitter otherwise, up to
``max_attempts`` attempts per row; then the row gets an error cell. Any other
4xx (a 400...) is final at once.

Interrupting ``wait`` (Ctrl-C) or hitting its ``timeout`` stops sending, lets
the calls in flight finish (for a bounded time) and keeps every answer;
waiting again (or re-running the same ``map``) sends only the rows still
unanswered.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional

import openai

from ..errors import OptionError, PdbatchError
from ..ratelimit import RateLimiter, backoff_delay, estimate_tokens, retry_after, sleep_unless
from ..records import CHAT_URL, EMBEDDINGS_URL, Request, Result
from ..progress import progress_bar
from .base import RowByRow, Progress
from .batch import default_client

__all__ = ["RealtimeBackend", "async_client", "INTERRUPTED", "CANCELLED", "RETRY_STATUSES", "FINAL_CODES"]

#: Error cell of a row the run never answered after Ctrl-C or a timeout.
INTERRUPTED = "interrupted: the realtime run stopped before this row was answered; run again to resume"
#: Error cell of a row the run never answered after ``job.cancel()``.
CANCELLED = "cancelled: the realtime run was cancelled before this row was answered"
#: HTTP statuses worth another attempt (with every 5xx).
RETRY_STATUSES = frozenset({408, 409, 429})
#: Error codes never worth another attempt, whatever their status (a 429 for an empty account).
FINAL_CODES = frozenset({"insufficient_quota"})

# Longest wait for calls in flight after a stop, in seconds.
_DRAIN_SECONDS = 30.0
_TICK = 0.1
#: SDK parameters of each endpoint's ``create``, by endpoint.
_PARAMS: Dict[str, frozenset] = {}
_SDK_HEADERS = ("user-agent", "accept", "content-type", "openai-organization", "openai-project")


def async_client(client: Any) -> "openai.AsyncOpenAI":
    """An ``AsyncOpenAI`` with ``client``'s endpoint, credentials, timeout and headers, without SDK retries.

    Reads ``base_url``, ``api_key``, ``organization``, ``project``,
    ``timeout`` and the headers / query parameters the user set from the
    (sync) client. A custom ``http_client`` (proxies, certificates) is not
    carried over.

    Examples
    --------
    >>> sync = openai.OpenAI(api_key="sk-x", base_url="http://127.0.0.1:1/v1", timeout=7.0)
    >>> a = async_client(sync)
    >>> (str(a.base_url), a.timeout, a.max_retries)
    ('http://127.0.0.1:1/v1/', 7.0, 0)
    """
    azure = tuple(c for c in (getattr(openai, "AzureOpenAI", None), getattr(openai, "AsyncAzureOpenAI", None)) if c)
    if (azure and isinstance(client, azure)) or getattr(client, "_provider", None) is not None \
            or getattr(client, "workload_identity", None) is not None:
        raise OptionError(
            "backend='realtime' needs a plain openai.OpenAI(api_key=..., base_url=...) client; Azure, provider "
            "and workload-identity clients are not supported here: use backend='batch'"
        )
    api_key: Any = client.api_key
    refresh = getattr(client, "_api_key_provider", None)
    if refresh is not None:  # a callable that returns a fresh key
        if inspect.iscoroutinefunction(refresh):
            api_key = refresh
        else:
            async def api_key() -> str:
                return await asyncio.to_thread(refresh)
    headers = getattr(client, "_custom_headers", None)
    if headers is None:
        headers = {k: v for k, v in (client.default_headers or {}).items()
                   if k.lower() not in _SDK_HEADERS and not k.lower().startswith("x-stainless")}
    query = getattr(client, "_custom_query", None)
    return openai.AsyncOpenAI(
        api_key=api_key,
        organization=client.organization,
        project=client.project,
        base_url=client.base_url,
        timeout=client.timeout,
        max_retries=0,
        default_headers=dict(headers) or None,
        default_query=dict(query) if query else None,
    )


def _split(url: str, method: Any, body: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments for an SDK ``create``: known parameters as is, the rest in ``extra_body``."""
    known = _PARAMS.get(url)
    if known is None:
        names = set(inspect.signature(method).parameters)
        known = _PARAMS[url] = frozenset(names - {"extra_headers", "extra_query", "extra_body", "timeout"})
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


async def _call(aclient: "openai.AsyncOpenAI", req: Request):
    """Send one request by its endpoint; return the SDK's raw response."""
    if req.url == CHAT_URL:
        create = aclient.chat.completions.with_raw_response.create
    elif req.url == EMBEDDINGS_URL:
        create = aclient.embeddings.with_raw_response.create
    else:
        raise OptionError(f"backend='realtime' sends {CHAT_URL} and {EMBEDDINGS_URL} requests, not {req.url}")
    return await create(**_split(req.url, create, dict(req.body)))


async def _body(raw: Any) -> dict:
    """The parsed response as the API's JSON dict (embeddings decoded to floats)."""
    parsed = raw.parse()
    if inspect.isawaitable(parsed):
        parsed = await parsed
    return parsed.to_dict() if hasattr(parsed, "to_dict") else parsed.model_dump(mode="json")


def _code(err: "openai.APIStatusError") -> Optional[str]:
    body = err.body if isinstance(err.body, dict) else {}
    return body.get("code") or getattr(err, "code", None)


def _status_failure(cid: str, err: "openai.APIStatusError", attempts: int) -> Result:
    body = err.body if isinstance(err.body, dict) else {}
    code = _code(err) or f"http_{err.status_code}"
    message = str(body.get("message") or err.message)
    if attempts > 1:
        message += f" (gave up after {attempts} attempts)"
    return Result.failure(cid, str(code), message, status_code=err.status_code)


class _Run:
    """One pass over a list of requests: an event loop on a worker thread, results on a queue.

    ``stop()`` and ``abort()`` are safe to call from any thread: ``stop`` sends
    nothing new (calls in flight finish), ``abort`` cancels everything now.
    """

    def __init__(self, backend: "RealtimeBackend", requests: Iterable[Request]):
        self.backend = backend
        self.todo: Deque[Request] = deque(requests)
        self.results: "queue.SimpleQueue[Result]" = queue.SimpleQueue()
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.error: Optional[BaseException] = None
        self.attempts = self.retries = self.limited = 0
        self.started = self.ended = 0.0
        self._aborted = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name="pdbatch-realtime", daemon=True)

    # ---------------------------------------------------------- thread side
    def start(self) -> "_Run":
        self.started = time.monotonic()
        self.thread.start()
        return self

    def finished(self) -> bool:
        return self.done.is_set() and self.results.empty()

    def stop(self) -> None:
        self.stopping.set()
        self._poke(lambda: self._wake.set())

    def abort(self) -> None:
        self.stop()
        with self._lock:
            self._aborted = True
        self._poke(lambda: self._task.cancel())

    def _poke(self, fn) -> None:
        with self._lock:
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:  # the loop has closed meanwhile
                pass

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except asyncio.CancelledError:
            pass
        except BaseException as err:  # reported to the calling thread
            self.error = err
        finally:
            self.ended = time.monotonic()
            self.done.set()

    # ----------------------------------------------------------- loop side
    async def _amain(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.current_task()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            if self._aborted:
                return
        if self.stopping.is_set():
            self._wake.set()
        aclient = async_client(self.backend.client)
        try:
            n = min(self.backend.max_concurrency, len(self.todo))
            await asyncio.gather(*(self._worker(aclient) for _ in range(n)))
        finally:
            await aclient.close()

    async def _worker(self, aclient: "openai.AsyncOpenAI") -> None:
        while self.todo and not self.stopping.is_set():
            req = self.todo.popleft()
            try:
                res = await self._one(aclient, req)
            except Exception as err:  # one bad row never stops the run
                res = Result.failure(req.custom_id, "client_error", f"{type(err).__name__}: {err}")
            if res is not None:
                self.results.put(res)

    async def _one(self, aclient: "openai.AsyncOpenAI", req: Request) -> Optional[Result]:
        """Answer one request, retrying what is worth it; None leaves the row unanswered (stopped)."""
        be, lim = self.backend, self.backend.limiter
        tokens = estimate_tokens(req.body, req.url) if lim.counts_tokens else 0
        attempt = 0
        while True:
            attempt += 1
            if not await lim.acquire(tokens, self._wake):
                return None
            ticket = lim.sent(tokens)
            self.attempts += 1
            try:
                raw = await _call(aclient, req)
                lim.observe(ticket, raw.headers)
                return Result(req.custom_id, body=await _body(raw), status_code=raw.status_code,
                              request_id=raw.headers.get("x-request-id"))
            except openai.APIStatusError as err:
                headers = err.response.headers if err.response is not None else None
                lim.observe(ticket, headers)
                status = err.status_code
                if status == 429:
                    self.limited += 1
                if (status not in RETRY_STATUSES and status < 500) or _code(err) in FINAL_CODES:
                    return _status_failure(req.custom_id, err, attempt)
                if attempt >= be.max_attempts:
                    return _status_failure(req.custom_id, err, attempt)
                wait = retry_after(headers)
                if wait is None or wait > be.max_retry_after:
                    wait = backoff_delay(attempt, be.backoff, be.max_backoff)
                if status == 429:
                    lim.pause(wait)  # every sender holds, not only this one
                    wait = 0.0
            except openai.APIConnectionError as err:
                if attempt >= be.max_attempts:
                    code = "timeout" if isinstance(err, openai.APITimeoutError) else "connection_error"
                    return Result.failure(req.custom_id, code,
                                          f"{type(err).__name__}: {err} (gave up after {attempt} attempts)")
                wait = backoff_delay(attempt, be.backoff, be.max_backoff)
            if self.stopping.is_set():
                return None  # not answered: a later run sends it again
            self.retries += 1
            if wait and await sleep_unless(wait, self._wake):
                return None


class RealtimeBackend(RowByRow):
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
    INTERRUPTED = INTERRUPTED
    CANCELLED = CANCELLED
    supports_vision = True
    supports_json_schema = True
    supports_embeddings = True

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
        for key, value in (("max_concurrency", max_concurrency), ("max_attempts", max_attempts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{key} must be a positive integer, got {value!r}")
        for key, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise OptionError(f"{key} must be a positive number or None, got {value!r}")
        for key, value in (("rate_period", rate_period), ("backoff", backoff), ("max_backoff", max_backoff),
                           ("max_retry_after", max_retry_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise OptionError(f"{key} must be a number of seconds >= 0, got {value!r}")
        if rate_period <= 0:
            raise OptionError(f"rate_period must be > 0 seconds, got {rate_period!r}")
        self.client = client if client is not None else default_client()
        async_client(self.client)  # refuse an unsupported client now, before any work
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.progress = bool(progress)
        self.limiter = RateLimiter(rpm, tpm, period=rate_period)

    # ----------------------------------------------------------------- submit
    def submit(self, job, requests: Iterator[Request]) -> None:
        job.state.update(requests=list(requests), status="pending")  # pending | interrupted | cancelled

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
        if job.state.get("status") == "cancelled":
            return self.refresh(job)
        answered = job.store.answered_ids(job.id)
        todo = [r for r in job.state.get("requests", []) if r.custom_id not in answered]
        if not todo:
            return self.refresh(job)
        job.state["status"] = "pending"
        run = job.state["run"] = _Run(self, todo)
        bar = None
        if progress and self.progress:

            total = len(job.ids) - len(job.skipped)
            bar = progress_bar(total=total, initial=total - len(todo), unit="row", desc=f"pdbatch realtime {job.id[-10:]}")
        deadline = None if timeout is None else time.monotonic() + timeout
        failed = [0]
        try:
            try:
                run.start()
                while not run.finished():
                    if job.state.get("status") == "cancelled":
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
                job.state["status"] = "interrupted"
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
            got += 1
            failed[0] += not res.ok
            try:
                res = run.results.get_nowait()
            except queue.Empty:
                break
        if bar is not None:
            bar.update(got)
            bar.set_postfix_str(f"failed={failed[0]}, 429s={run.limited}, retries={run.retries}", refresh=False)
        return got

    def _drain(self, job, run: _Run, bar, failed: List[int]) -> None:
        """After a stop: keep the answers of the calls in flight, for at most ``_DRAIN_SECONDS``."""
        limit = time.monotonic() + _DRAIN_SECONDS
        while not run.finished():
            if time.monotonic() >= limit:
                run.abort()
                limit = time.monotonic() + 5.0
            self._take(job, run, bar, failed, _TICK)

    @staticmethod
    def _counts(job) -> Dict[str, Any]:
        """``job.state["summary"]["realtime"]``: merged into ``attrs["pdbatch"]`` by ``Job.result``."""
        return job.state.setdefault("summary", {}).setdefault(
            "realtime", {"attempts": 0, "retries": 0, "429s": 0, "seconds": 0.0})

    def _summarise(self, job, run: _Run) -> None:
        """Add this run's counts to the job's summary."""
        s = self._counts(job)
        s["attempts"] += run.attempts
        s["retries"] += run.retries
        s["429s"] += run.limited
        if run.started:
            s["seconds"] = round(s["seconds"] + max((run.ended or time.monotonic()) - run.started, 0.0), 3)
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
        ...     res = RealtimeBackend(srv.client()).answer(
        ...         [Request("a", {"model": "e", "input": "hi"}, url=EMBEDDINGS_URL)])
        >>> len(res[0].body["data"][0]["embedding"])
        8
        """
        run = _Run(self, requests).start()
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
        job.state["status"] = "cancelled"
        run = job.state.get("run")
        if run is not None:
            run.stop()
