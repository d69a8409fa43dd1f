"""The upstream engine: ``pdbatch serve --upstream URL`` in front of any OpenAI-compatible server.

:class:`UpstreamEngine` answers every request (batch lines and realtime calls)
with the upstream's realtime endpoints (chat completions, embeddings,
responses) through pdbatch's realtime machinery: the calls leave through a
:class:`~pdbatch.backends.realtime.Realtime` backend (whose run keeps each
answer's JSON body as the upstream sent it), so they are paced by its
:class:`~pdbatch.backends.ratelimit.RateLimiter` (``rpm`` / ``tpm``, the
upstream's ``x-ratelimit-*`` headers, a shared pause after a 429) and retried
by the one :class:`~pdbatch.backends.retry.RetryPolicy` (408, 409, 429, 5xx,
timeouts, lost connections; never a 400). At most ``max_concurrency`` calls are
in flight.

The engine runs whole batches (``runs_batches``; up to ``concurrency`` lines at once), so
the batch worker hands it a batch's unanswered lines at once
(:func:`run_batch`): each answer is appended to the batch's answer files and
handed to the OS as it arrives (so even ``kill -9`` loses none), and a server
started again sends only the lines still unanswered: a line answered once is
never sent again. (A call in flight when the server dies is sent again.)

Realtime calls to the server go through the same backend, limiter and retry
policy, on one long-lived event loop (see :meth:`UpstreamEngine.__call__`),
while a batch's lines go through a run of their own: the limiter is then
driven from two loops, which it tolerates (its state is plain numbers) at the
cost of a rare slot taken twice. The bodies of a batch's unanswered lines are
held in memory while it runs.

The upstream's API key is read from an environment variable (default
``OPENAI_API_KEY``), never taken from the command line, and never written to
the data directory or the logs.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from typing import Any, Iterable, Mapping, Optional

import orjson

from ..backends.realtime import Realtime
from ..backends.realtime_run import _Run, _call
from ..core.records import Request, Result, Usage
from ..errors import EngineError
from .lines import batch_ending
from .state import error_body, new_id

__all__ = ["UpstreamEngine", "run_batch", "parse_model_map", "MODELS_URL"]

#: The upstream's model list, asked for by :meth:`UpstreamEngine.list_models`.
MODELS_URL = "/v1/models"

#: Seconds the calls in flight may take to finish after a cancel or the end of the window, and after a
#: server stop (within the 5 s the server gives its worker; a call cut short goes again at the next start).
DRAIN_SECONDS, STOP_DRAIN_SECONDS = 30.0, 4.0
_TICK = 0.05


def parse_model_map(pairs: Optional[Iterable[str]]) -> dict:
    """``["served=upstream", ...]`` as a dict; a ``ValueError`` names the bad pair.

    Examples
    --------
    >>> parse_model_map(["gpt-4o-mini=qwen2.5:7b"])
    {'gpt-4o-mini': 'qwen2.5:7b'}
    """
    out = {}
    for pair in pairs or ():
        served, sep, upstream = str(pair).partition("=")
        if not sep or not served.strip() or not upstream.strip():
            raise ValueError(f"{pair!r} is not SERVED=UPSTREAM (e.g. gpt-4o-mini=llama3.1:8b)")
        out[served.strip()] = upstream.strip()
    return out


class _ProxyRun(_Run):
    """A realtime run that keeps the upstream's answer as it came (the JSON body, not the SDK's reading of it).

    A request to :data:`MODELS_URL` is a ``GET`` of the upstream's model list.
    """

    async def _send(self, aclient: Any, req: Request, ticket: Any) -> Result:
        if req.url == MODELS_URL:  # the SDK's own raw response, as _call gives (no HTTP library named here)
            raw = await aclient.models.with_raw_response.list()
        else:
            raw = await _call(aclient, req)
        self.backend.limiter.observe(ticket, raw.headers)
        return Result(req.custom_id, body=orjson.loads(raw.content), status_code=raw.status_code,
                      request_id=raw.headers.get("x-request-id"))


class _Proxy(Realtime):
    Run = _ProxyRun


class UpstreamEngine:
    """An engine that forwards each request to an OpenAI-compatible server.

    Parameters
    ----------
    base_url : str
        The upstream's OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``.
    api_key_env : str
        Environment variable holding the upstream's key (read once, here);
        local servers that check no key work with it unset.
    rpm, tpm : float, optional
        Requests and tokens per minute to stay under; the upstream's
        ``x-ratelimit-*`` headers lower them (or set them when not given).
    max_concurrency : int
        Calls in flight at most (for a batch's lines and realtime calls alike).
    model_map : dict, optional
        ``{served name: upstream name}``: a request for a served name is sent
        with the upstream name. Other names are sent as they are.
    max_attempts : int
        Attempts per request for retryable failures (the retry policy's).
    timeout : float
        Seconds one upstream call may take.

    Examples
    --------
    >>> from pdbatch.server import BatchServer
    >>> with BatchServer() as up:
    ...     eng = UpstreamEngine(up.base_url, model_map={"gpt-4o-mini": "echo"})
    ...     body = eng({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    ...                "/v1/chat/completions")
    ...     eng.close()
    >>> body["choices"][0]["message"]["content"], up.stats.realtime_calls
    ('hi', 1)
    """

    name = "upstream"
    #: the batch worker hands it whole batches (:func:`run_batch`), not a line at a time
    runs_batches = True
    #: ``/v1/responses`` goes to the upstream as it is (not through its chat form).
    serves_responses = True

    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", rpm: Optional[float] = None,
                 tpm: Optional[float] = None, max_concurrency: int = 16, model_map: Optional[Mapping] = None,
                 max_attempts: int = 6, timeout: float = 600.0) -> None:
        import openai

        self.base_url, self.api_key_env = str(base_url), str(api_key_env)
        key = os.environ.get(self.api_key_env) or "no-key"  # servers that check no key need some value
        client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=0)
        self.backend = _Proxy(client, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
                                max_attempts=max_attempts, progress=False)
        self.concurrency = int(max_concurrency)
        self.model_map = dict(model_map or {})
        self._lock = threading.Lock()
        self._rt: Optional[tuple] = None

    @property
    def has_key(self) -> bool:
        """Whether the key's environment variable was set (the key itself is never shown)."""
        return bool(os.environ.get(self.api_key_env))

    def list_models(self) -> list:
        """The model objects of ``GET /v1/models``: the upstream's own list, asked for through the
        limiter and the retry policy, each served name of the model map first (as a copy of its target's
        entry, when the upstream lists that target).

        Raises
        ------
        EngineError
            502 ``upstream_models_unavailable`` when the upstream cannot list its models.
        """
        status, answer = outcome(self._ask(Request("models", {}, url=MODELS_URL)))
        data = answer.get("data") if status < 400 and isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            why = (answer.get("error") or {}).get("message") if status >= 400 else "no 'data' list of models"
            raise EngineError(502, "upstream_models_unavailable", f"the upstream {self.base_url} could not list "
                              f"its models (HTTP {status}: {why}); check that it serves GET /models, or ask for a "
                              "model by name: requests are sent upstream whatever this list says", type="server_error")
        listed = {m["id"]: m for m in data}
        served = [dict(listed[up], id=name) for name, up in self.model_map.items() if up in listed]
        return served + [m for m in data if m["id"] not in self.model_map]

    @property
    def limiter(self) -> Any:
        """The rate limiter every call goes through (what it learned from the upstream included)."""
        return self.backend.limiter

    def request(self, custom_id: str, body: Mapping[str, Any], url: str) -> Request:
        """The request sent upstream for ``body``: its model renamed by the model map."""
        body = dict(body)
        if body.get("model") in self.model_map:
            body["model"] = self.model_map[body["model"]]
        return Request(custom_id, body, url=url)

    def run(self, requests: Iterable[Request]) -> Any:
        """Start sending ``requests`` (a realtime run); read results from ``run.results`` as they arrive."""
        return self.backend.Run(self.backend, requests).start()

    def _realtime(self) -> tuple:
        """The event loop (on a thread of its own), run, client and semaphore of the realtime calls; made once."""
        with self._lock:
            if self._rt is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="pdbatch-upstream", daemon=True).start()
                run = self.backend.Run(self.backend, [])  # never started: its _one() answers each call

                async def setup() -> tuple:
                    run._wake = asyncio.Event()  # what a stop would set; never set here
                    return loop, run, run._client(), asyncio.Semaphore(self.concurrency)

                self._rt = asyncio.run_coroutine_threadsafe(setup(), loop).result()
            return self._rt

    def _ask(self, req: Request) -> Result:
        """Send ``req`` upstream now: the same limiter and retry policy as the batch lines, in one long-lived loop."""
        loop, run, aclient, slots = self._realtime()

        async def one() -> Optional[Result]:
            async with slots:
                return await run._one(aclient, req)

        try:
            res = asyncio.run_coroutine_threadsafe(one(), loop).result()
        except Exception as err:  # not an API answer: a bug or a broken request
            raise EngineError(502, "upstream_error", f"the upstream call failed: {type(err).__name__}: {err}",
                              type="server_error") from err
        if res is None:
            raise EngineError(503, "service_unavailable", "the upstream call was stopped before it was answered")
        return res

    def __call__(self, body: dict, url: str) -> dict:
        """Answer one realtime call (see :meth:`_ask`)."""
        status, answer = outcome(self._ask(self.request("realtime", body, url)))
        if status >= 400:
            err = answer["error"]
            raise EngineError(status, err.get("code") or "upstream_error", err.get("message") or "upstream error",
                              type=err.get("type"))
        return answer

    def close(self) -> None:
        """Close the HTTP clients and stop the realtime calls' loop."""
        with self._lock:
            rt, self._rt = self._rt, None
        if rt is not None:
            loop, _, aclient, _ = rt
            asyncio.run_coroutine_threadsafe(aclient.close(), loop).result(5.0)
            loop.call_soon_threadsafe(loop.stop)
        self.backend.client.close()

    def __repr__(self) -> str:  # never the key
        return (f"UpstreamEngine({self.base_url!r}, key from ${self.api_key_env}, "
                f"max_concurrency={self.concurrency}, rpm={self.limiter.rpm})")


def outcome(res: Result) -> tuple[int, dict]:
    """HTTP status and body of a batch line for an upstream result (an error body when it failed)."""
    if res.ok:
        return int(res.status_code or 200), dict(res.body)
    err = dict(res.error or {})
    code = str(err.get("code") or "upstream_error")
    status = res.status_code or (504 if code == "timeout" else 502)
    return int(status), error_body(str(err.get("message") or "the upstream failed"),
                                   type="server_error" if status >= 500 else "invalid_request_error", code=code)


def _line(cid: str, status: int, answer: dict) -> tuple[dict, bool]:
    return {"id": new_id("batch_req_"), "custom_id": cid,
            "response": {"status_code": status, "request_id": f"req_{new_id('')}", "body": answer},
            "error": None}, status < 400


def run_batch(worker: Any, batch_id: str, batch: dict, offsets: list, order: list, done: set,
              out: Any, err: Any, usage: Usage) -> Optional[tuple[str, Usage]]:
    """Answer a batch's unanswered lines through the worker's engine, many at once.

    Lines the API would refuse (or that a fault hits) get their error line at
    once and are never sent. The others go upstream in one realtime run; each
    answer is written to ``out`` / ``err`` as it arrives. A cancel or the end
    of the batch's window stops sending (calls in flight finish and are
    kept); a server stop does the same and returns None (the batch resumes at
    the next start). Returns the outcome and the usage otherwise.
    """
    engine, endpoint, stats = worker.host.engine, batch["endpoint"], worker.stats
    requests = []
    with open(worker.store.path(batch["input_file_id"]) or "", "rb") as fh:
        for index in order:
            fh.seek(offsets[index][0])
            line = orjson.loads(fh.read(offsets[index][1]))
            if line["custom_id"] in done:
                continue
            refused = worker.refusal(line, endpoint)
            if refused is None:
                requests.append(engine.request(line["custom_id"], line["body"], endpoint))
                continue
            err.write(refused)
            done.add(line["custom_id"])
            worker.store.count(batch_id, failed=1)
    result, ran = "completed", len(done)
    run, synced = engine.run(requests), time.monotonic()
    stop_by: Optional[float] = None
    try:
        while not run.finished():
            if stop_by is None:
                ending = batch_ending(worker, batch_id, batch, ran)  # ran: lines answered
                if ending is not None:
                    result = None if ending == "stop" else ending
                    run.stop()  # nothing new leaves; the calls in flight finish and are kept
                    stop_by = time.monotonic() + (DRAIN_SECONDS if result else STOP_DRAIN_SECONDS)
            elif time.monotonic() > stop_by:
                run.abort()
            try:
                res = run.results.get(timeout=_TICK)
            except queue.Empty:
                continue
            status, answer = outcome(res)
            line, ok = _line(res.custom_id, status, answer)
            log = out if ok else err
            log.write(line)
            log.sync(False)  # to the OS at once: a killed server keeps every answer paid for
            done.add(res.custom_id)
            stats.bump("requests_executed")
            if ok:
                usage = usage + Usage.from_body(answer)
            worker.store.count(batch_id, completed=int(ok), failed=int(not ok))
            ran += 1
            if time.monotonic() - synced >= worker.sync_seconds:
                worker._sync(batch_id, out, err)
                synced = time.monotonic()
    finally:
        run.abort()
        run.thread.join(5.0)
    if run.error is not None:
        raise run.error
    if result is None:
        worker._sync(batch_id, out, err)
        return None
    if result == "expired":
        with open(worker.store.path(batch["input_file_id"]) or "", "rb") as fh:
            worker._expire_rest(batch_id, fh, offsets, order, done, err)
    return result, usage
