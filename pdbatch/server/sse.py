"""Streamed realtime chat on the local server: ``stream: true`` as server-sent events.

The engine answers the whole request first (an error is then still an ordinary
HTTP error the SDK raises); :func:`chat_chunks` cuts that ``chat.completion``
into the ``chat.completion.chunk`` objects the hosted API streams: per choice a
first delta with the role, the content (or refusal) a word at a time, tool
calls in one delta, and a last delta carrying ``finish_reason``. When the
request asks ``stream_options: {"include_usage": true}``, every chunk has
``usage: null`` and a final chunk with no choices carries the usage.
:func:`event_stream` wraps the chunks as ``data: {...}`` events closed by
``data: [DONE]``, the framing the SDK's ``Stream`` reads.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Optional

import orjson
from starlette.responses import StreamingResponse

__all__ = ["chat_chunks", "event_stream"]

_PIECE = re.compile(r"\S*\s*")


def _pieces(text: str) -> list[str]:
    """``text`` in pieces of one word and the spaces after it; joined they give ``text`` back."""
    return [p for p in _PIECE.findall(text) if p] or [""]


def chat_chunks(answer: Mapping[str, Any], include_usage: bool = False) -> Iterator[dict]:
    """The ``chat.completion.chunk`` objects streaming ``answer`` (a ``chat.completion`` body).

    Examples
    --------
    >>> from pdbatch.server.engines import chat_response
    >>> chunks = list(chat_chunks(chat_response("hi there", model="m"), include_usage=True))
    >>> [c["choices"][0]["delta"].get("content") for c in chunks[:-2]]
    ['', 'hi ', 'there']
    >>> chunks[-2]["choices"][0]["finish_reason"], chunks[-1]["choices"], chunks[-1]["usage"]["total_tokens"]
    ('stop', [], 2)
    """
    head = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"),
            "model": answer.get("model"), "system_fingerprint": answer.get("system_fingerprint")}
    if answer.get("service_tier") is not None:
        head["service_tier"] = answer["service_tier"]
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict, finish: Optional[str] = None) -> dict:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}]}

    for choice in answer.get("choices") or []:
        index, msg = choice.get("index", 0), choice.get("message") or {}
        yield chunk(index, {"role": msg.get("role", "assistant"), "content": "", "refusal": None})
        if msg.get("refusal"):
            for piece in _pieces(msg["refusal"]):
                yield chunk(index, {"refusal": piece})
        elif msg.get("content"):
            for piece in _pieces(msg["content"]):
                yield chunk(index, {"content": piece})
        if msg.get("tool_calls"):
            yield chunk(index, {"tool_calls": [{"index": i, **call}
                                               for i, call in enumerate(msg["tool_calls"])]})
        yield chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage:
        yield {**head, "choices": [], "usage": answer.get("usage")}


def event_stream(answer: Mapping[str, Any], body: Mapping[str, Any],
                 headers: Optional[dict] = None) -> StreamingResponse:
    """The ``text/event-stream`` response streaming ``answer`` to the chat request ``body``."""
    options = body.get("stream_options") or {}
    chunks = chat_chunks(answer, include_usage=bool(options.get("include_usage")))

    async def events() -> Any:
        for item in chunks:
            yield b"data: " + orjson.dumps(item) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**(headers or {}), "cache-control": "no-cache"})
