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

from typing import Any

from ..core.anthropic import to_chat, to_params
from ..core.records import Request, Result
from ..errors import OptionError
from .anthropic import default_anthropic_client, anthropic_provider, check_spec, is_anthropic
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
    """A realtime run whose calls go to ``messages.create``: the pacing, retries and stops are :class:`_Run`'s."""

    def _client(self) -> Any:
        return async_anthropic(self.backend.client)

    def _errors(self) -> tuple:
        import anthropic

        return (anthropic.APIStatusError, anthropic.APIConnectionError)

    async def _send(self, aclient: Any, req: Request, ticket: Any) -> Result:
        raw = await aclient.messages.with_raw_response.create(**to_params(req.body))
        self.backend.limiter.observe(ticket, raw.headers)
        message = await raw.parse()
        return Result(req.custom_id, body=to_chat(message.to_dict()), status_code=raw.status_code,
                      request_id=raw.headers.get("request-id"))

    def _failure(self, cid: str, err: Exception, attempts: int) -> Result:
        return _failure(cid, err, attempts)


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

    def _take_client(self, client: Any) -> tuple:
        """An ``anthropic.Anthropic`` client (default: from ``ANTHROPIC_API_KEY``) and its provider."""
        if client is None:
            client = default_anthropic_client()
        elif not is_anthropic(client) or type(client).__name__.startswith("Async"):
            raise OptionError(f"client must be a synchronous anthropic.Anthropic client, got "
                              f"{type(client).__name__}; pass client=anthropic.Anthropic(api_key=...)")
        return client, anthropic_provider(client)
