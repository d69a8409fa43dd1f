"""Anthropic's ``messages.create`` as the realtime backend: concurrent calls under the same rate limiter.

:class:`AnthropicRealtime` is :class:`~pdbatch.backends.realtime.Realtime`
with its run sending each row's chat body, translated by
:func:`pdbatch.core.anthropic.to_params`, through an ``anthropic.AsyncAnthropic``
made from the caller's client (its key, base URL and timeout; SDK retries
off), and storing the answer translated back by
:func:`~pdbatch.core.anthropic.to_chat`. Pacing (``max_concurrency``,
``rpm``, ``tpm``), the retry policy (429 / 5xx / 529 / timeouts, honouring
``retry-after``; never a 400), interrupts, resume and the answer store are
the realtime backend's. Anthropic's ``anthropic-ratelimit-*`` headers are not
read: give ``rpm=`` / ``tpm=`` to pace below your tier's limits.
"""

from __future__ import annotations

from typing import Any, Optional

from ..core.anthropic import to_chat, to_params
from ..core.records import Request, Result
from ..errors import OptionError
from .anthropic import default_anthropic_client, anthropic_provider, check_spec, is_anthropic
from .ratelimit import estimate_tokens, sleep_unless
from .realtime import Realtime
from .realtime_run import _Run

__all__ = ["AnthropicRealtime"]


def async_anthropic(client: Any) -> Any:
    """An ``anthropic.AsyncAnthropic`` with ``client``'s credentials, endpoint and timeout, without SDK retries."""
    import anthropic

    return anthropic.AsyncAnthropic(api_key=client.api_key, auth_token=getattr(client, "auth_token", None),
                                    base_url=str(client.base_url), timeout=client.timeout, max_retries=0)


def _failure(cid: str, err: Exception, attempts: int) -> Result:
    import anthropic

    after = f" (gave up after {attempts} attempts)" if attempts > 1 else ""
    if not isinstance(err, anthropic.APIStatusError):
        code = "timeout" if isinstance(err, anthropic.APITimeoutError) else "connection_error"
        return Result.failure(cid, code, f"{type(err).__name__}: {err}{after}")
    body = err.body if isinstance(err.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else {}
    code = inner.get("type") or f"http_{err.status_code}"
    return Result.failure(cid, str(code), str(inner.get("message") or err.message) + after,
                          status_code=err.status_code)


class _AnthropicRun(_Run):
    """A realtime run whose calls go to ``messages.create``."""

    async def _amain(self) -> None:  # as _Run's, with an AsyncAnthropic
        import asyncio

        self._wake = asyncio.Event()
        self._task = asyncio.current_task()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            if self._aborted:
                return
        if self.stopping.is_set():
            self._wake.set()
        aclient = async_anthropic(self.backend.client)
        try:
            n = min(self.backend.max_concurrency, len(self.todo))
            await asyncio.gather(*(self._worker(aclient) for _ in range(n)))
        finally:
            await aclient.close()

    async def _one(self, aclient: Any, req: Request) -> Optional[Result]:
        import anthropic

        lim, policy = self.backend.limiter, self.policy
        tokens = estimate_tokens(req.body, req.url) if lim.counts_tokens else 0
        params = to_params(req.body)
        attempt = 0
        while True:
            attempt += 1
            if not await lim.acquire(tokens, self._wake):
                return None
            ticket = lim.sent(tokens)
            self.attempts += 1
            try:
                raw = await aclient.messages.with_raw_response.create(**params)
                lim.observe(ticket, raw.headers)
                message = await raw.parse()
                return Result(req.custom_id, body=to_chat(message.to_dict()), status_code=raw.status_code,
                              request_id=raw.headers.get("request-id"))
            except (anthropic.APIStatusError, anthropic.APIConnectionError) as err:
                status = getattr(err, "status_code", None)
                if status is not None:
                    lim.observe(ticket, err.response.headers if err.response is not None else None)
                    if status == 429:
                        self.limited += 1
                wait = policy.delay(err, attempt)
                if wait is None:
                    return _failure(req.custom_id, err, attempt)
                policy.log(f"messages.create for row {req.custom_id!r}", err, attempt, wait)
                if status == 429:
                    lim.pause(wait)  # every sender holds, not only this one
                    wait = 0.0
            if self.stopping.is_set():
                return None  # not answered: a later run sends it again
            self.retries += 1
            if wait and await sleep_unless(wait, self._wake):
                return None


class AnthropicRealtime(Realtime):
    """Answer requests with concurrent ``messages.create`` calls.

    Parameters
    ----------
    client : anthropic.Anthropic, optional
        Defaults to ``anthropic.Anthropic()`` from ``ANTHROPIC_API_KEY``.
    **options
        As for :class:`pdbatch.backends.realtime.Realtime` (``max_concurrency``,
        ``rpm``, ``tpm``, ``max_attempts``...).
    """

    Run = _AnthropicRun
    supports_embeddings = False
    check_spec = staticmethod(check_spec)

    def __init__(self, client: Any = None, **options: Any):
        if client is None:
            client = default_anthropic_client()
        elif not is_anthropic(client) or type(client).__name__.startswith("Async"):
            raise OptionError(f"client must be a synchronous anthropic.Anthropic client, got "
                              f"{type(client).__name__}; pass client=anthropic.Anthropic(api_key=...)")
        import openai

        # Realtime checks its options on an OpenAI client; a stand-in that is never used (no network) takes
        # its place there, then the Anthropic client replaces it.
        super().__init__(openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1"), **options)
        self.client = client
        self.provider = anthropic_provider(client)
