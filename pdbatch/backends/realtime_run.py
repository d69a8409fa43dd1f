"""The async core of the realtime backend: one run of concurrent calls on its own event loop.

:class:`_Run` sends requests through an ``openai.AsyncOpenAI`` client (see
:func:`async_client`), paced by a :class:`~pdbatch.backends.ratelimit.RateLimiter`,
retrying what :class:`~pdbatch.backends.retry.RetryPolicy` says is worth it (each
retry logged on the ``"pdbatch"`` logger), and hands each :class:`~pdbatch.records.Result`
to the calling thread through a queue. :mod:`pdbatch.backends.realtime` drives it.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, Optional

import openai

from ..errors import OptionError
from .ratelimit import estimate_tokens, sleep_unless
from .retry import TRANSIENT_ERRORS, RetryPolicy, error_code
from ..core.records import CHAT_URL, EMBEDDINGS_URL, RESPONSES_URL, Request, Result


__all__ = ["async_client", "FLEX_TIMEOUT", "resource_unavailable"]

#: Seconds a ``service_tier="flex"`` call may take at least (OpenAI recommends about 15 minutes).
FLEX_TIMEOUT = 900.0

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


def resource_unavailable(err: BaseException) -> bool:
    """Whether ``err`` is the flex tier's 429 "resource unavailable" (capacity is short, not a rate limit)."""
    if getattr(err, "status_code", None) != 429:
        return False
    body = getattr(err, "body", None)
    code = body.get("code") if isinstance(body, dict) else None
    message = str(body.get("message") if isinstance(body, dict) else getattr(err, "message", ""))
    return code == "resource_unavailable" or "resource unavailable" in message.lower()


def _flex_timeout(aclient: "openai.AsyncOpenAI") -> Any:
    """The client's timeout, raised to :data:`FLEX_TIMEOUT` when it is a shorter number of seconds."""
    t = aclient.timeout
    return max(float(t), FLEX_TIMEOUT) if isinstance(t, (int, float)) else t


async def _call(aclient: "openai.AsyncOpenAI", req: Request):
    """Send one request by its endpoint; return the SDK's raw response."""
    if req.url == CHAT_URL:
        create = aclient.chat.completions.with_raw_response.create
    elif req.url == EMBEDDINGS_URL:
        create = aclient.embeddings.with_raw_response.create
    elif req.url == RESPONSES_URL:
        create = aclient.responses.with_raw_response.create
    else:
        raise OptionError(f"backend='realtime' sends {CHAT_URL}, {RESPONSES_URL} and {EMBEDDINGS_URL} requests, "
                          f"not {req.url}")
    kwargs = _split(req.url, create, dict(req.body))
    if req.body.get("service_tier") == "flex":  # flex answers slowly: a long timeout
        kwargs["timeout"] = _flex_timeout(aclient)
    return await create(**kwargs)


async def _body(raw: Any) -> dict:
    """The parsed response as the API's JSON dict (embeddings decoded to floats)."""
    parsed = raw.parse()
    if inspect.isawaitable(parsed):
        parsed = await parsed
    return parsed.to_dict() if hasattr(parsed, "to_dict") else parsed.model_dump(mode="json")


def _failure(cid: str, err: "openai.APIError", attempts: int) -> Result:
    """The error cell of a row whose last attempt raised ``err``."""
    after = f" (gave up after {attempts} attempts)" if attempts > 1 else ""
    if not isinstance(err, openai.APIStatusError):
        code = "timeout" if isinstance(err, openai.APITimeoutError) else "connection_error"
        return Result.failure(cid, code, f"{type(err).__name__}: {err}{after}")
    body = err.body if isinstance(err.body, dict) else {}
    code = error_code(err) or f"http_{err.status_code}"
    message = str(body.get("message") or err.message)
    return Result.failure(cid, str(code), message + after, status_code=err.status_code)


class _Run:
    """One pass over a list of requests: an event loop on a worker thread, results on a queue.

    ``stop()`` and ``abort()`` are safe to call from any thread: ``stop`` sends
    nothing new (calls in flight finish), ``abort`` cancels everything now.
    """

    def __init__(self, backend: Any, requests: Iterable[Request]):
        self.backend = backend
        self.policy = RetryPolicy(backend.max_attempts, backend.backoff, backend.max_backoff, backend.max_retry_after)
        self.todo: Deque[Request] = deque(requests)
        self.results: "queue.SimpleQueue[Result]" = queue.SimpleQueue()
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.error: Optional[BaseException] = None
        self.attempts = self.retries = self.limited = self.unavailable = 0
        #: what the run has spent against the job's max_cost (set by the backend), or None
        self.spend: Any = None
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
        aclient = self._client()
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

    # ---------------------------------------------- what another API's run replaces
    def _client(self) -> Any:
        """The async SDK client the calls go through (closed when the run ends)."""
        return async_client(self.backend.client)

    def _errors(self) -> tuple:
        """What one call may raise that the retry policy judges (an API status, a timeout, a lost connection)."""
        return (openai.APIStatusError, *TRANSIENT_ERRORS)

    async def _send(self, aclient: Any, req: Request, ticket: Any) -> Result:
        """Make one call; the limiter sees its response headers."""
        raw = await _call(aclient, req)
        self.backend.limiter.observe(ticket, raw.headers)
        return Result(req.custom_id, body=await _body(raw), status_code=raw.status_code,
                      request_id=raw.headers.get("x-request-id"))

    def _failure(self, cid: str, err: Exception, attempts: int) -> Result:
        """The error cell of a call given up on."""
        return _failure(cid, err, attempts)

    async def _one(self, aclient: "openai.AsyncOpenAI", req: Request) -> Optional[Result]:
        """Answer one request, retrying what is worth it; None leaves the row unanswered (stopped)."""
        lim = self.backend.limiter
        policy = self.policy
        tokens = estimate_tokens(req.body, req.url) if lim.counts_tokens else 0
        attempt = 0
        while True:
            attempt += 1
            if not await lim.acquire(tokens, self._wake):
                return None
            ticket = lim.sent(tokens)
            self.attempts += 1
            try:
                return await self._send(aclient, req, ticket)
            except self._errors() as err:
                status = getattr(err, "status_code", None)
                if resource_unavailable(err):
                    # Flex capacity is short: this row backs off; the limits and the other senders are untouched.
                    self.unavailable += 1
                    wait = policy.delay(err, attempt)
                    if wait is None:
                        return self._failure(req.custom_id, err, attempt)
                    policy.log(f"{req.url} (flex) for row {req.custom_id!r}", err, attempt, wait)
                    if self.stopping.is_set():
                        return None
                    self.retries += 1
                    if await sleep_unless(wait, self._wake):
                        return None
                    continue
                if status is not None:
                    lim.observe(ticket, err.response.headers if err.response is not None else None)
                    if status == 429:
                        self.limited += 1
                wait = policy.delay(err, attempt)
                if wait is None:
                    return self._failure(req.custom_id, err, attempt)
                policy.log(f"{req.url} for row {req.custom_id!r}", err, attempt, wait)
                if status == 429:
                    lim.pause(wait)  # every sender holds, not only this one
                    wait = 0.0
            if self.stopping.is_set():
                return None  # not answered: a later run sends it again
            self.retries += 1
            if wait and await sleep_unless(wait, self._wake):
                return None
