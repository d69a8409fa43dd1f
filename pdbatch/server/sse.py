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

A ``/v1/responses`` call with ``stream: true`` is answered the same way, whole
first, then cut by :func:`response_events` into the Responses API's semantic
events, each sent as ``event: <type>`` and ``data: {...}`` with a growing
``sequence_number`` and no ``[DONE]``: ``response.created`` and
``response.in_progress`` (the response ``in_progress``, no output yet), per
output item ``response.output_item.added``, per content part
``response.content_part.added``, the text a word at a time
(``response.output_text.delta``, or ``response.refusal.delta``),
``response.output_text.done`` (``response.refusal.done``),
``response.content_part.done`` and ``response.output_item.done``, and last
``response.completed`` (``response.incomplete`` when the answer was cut
short) carrying the whole response with its ``usage``.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Iterator, Mapping, Optional

import orjson
from starlette.responses import StreamingResponse

__all__ = ["chat_chunks", "response_events", "event_stream"]

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


def _part_events(event: Any, part: Mapping[str, Any], ids: dict) -> Iterator[dict]:
    """The events of one content part of a message item, from ``content_part.added`` to ``content_part.done``."""
    kind = part.get("type")
    key = {"output_text": "text", "refusal": "refusal"}.get(kind)
    if key is None:  # a part with no text to stream
        yield event("response.content_part.added", **ids, part=dict(part))
    else:
        extra = {"logprobs": []} if kind == "output_text" else {}
        yield event("response.content_part.added", **ids, part={**part, key: ""})
        for piece in _pieces(part.get(key) or ""):
            yield event(f"response.{kind}.delta", **ids, delta=piece, **extra)
        yield event(f"response.{kind}.done", **ids, **{key: part.get(key) or ""}, **extra)
    yield event("response.content_part.done", **ids, part=dict(part))


def response_events(answer: Mapping[str, Any]) -> Iterator[dict]:
    """The Responses API streaming events of ``answer`` (a ``response`` body), in order.

    Examples
    --------
    >>> from pdbatch.server.engines import chat_response
    >>> from pdbatch.server.responses import from_chat
    >>> events = list(response_events(from_chat(chat_response("hi there", model="m"), {"model": "m"})))
    >>> [e["type"] for e in events][:4]
    ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']
    >>> [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    ['hi ', 'there']
    >>> events[-1]["type"], events[-1]["response"]["usage"]["total_tokens"], events[-1]["sequence_number"]
    ('response.completed', 2, 9)
    """
    numbers = itertools.count()

    def event(kind: str, **fields: Any) -> dict:
        return {"type": kind, "sequence_number": next(numbers), **fields}

    begun = {**answer, "status": "in_progress", "output": [], "incomplete_details": None, "usage": None}
    yield event("response.created", response=begun)
    yield event("response.in_progress", response=begun)
    for at, item in enumerate(answer.get("output") or []):
        if item.get("type") != "message":
            yield event("response.output_item.added", output_index=at, item=dict(item))
        else:
            yield event("response.output_item.added", output_index=at,
                        item={**item, "status": "in_progress", "content": []})
            for index, part in enumerate(item.get("content") or []):
                yield from _part_events(event, part, {"item_id": item.get("id"), "output_index": at,
                                                      "content_index": index})
        yield event("response.output_item.done", output_index=at, item=dict(item))
    ending = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(answer.get("status"))
    yield event(ending or "response.completed", response=dict(answer))


def event_stream(answer: Mapping[str, Any], body: Mapping[str, Any], headers: Optional[dict] = None,
                 url: str = "/v1/chat/completions") -> StreamingResponse:
    """The ``text/event-stream`` response streaming ``answer`` to ``body``, a request to ``url``
    (chat completions: chunks closed by ``[DONE]``; ``/v1/responses``: named events)."""
    if url == "/v1/responses":
        async def events() -> Any:
            for item in response_events(answer):
                yield b"event: " + item["type"].encode() + b"\ndata: " + orjson.dumps(item) + b"\n\n"
    else:
        options = body.get("stream_options") or {}
        chunks = chat_chunks(answer, include_usage=bool(options.get("include_usage")))

        async def events() -> Any:
            for item in chunks:
                yield b"data: " + orjson.dumps(item) + b"\n\n"
            yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**(headers or {}), "cache-control": "no-cache"})
