"""The Responses endpoint on the local server, answered by any chat engine.

An engine answers chat bodies (:mod:`pdbatch.server.engines`); a
``/v1/responses`` request (a batch line or a realtime call) is turned into the
chat body it stands for (:func:`to_chat`: ``instructions`` become the system
message, ``input`` items the messages, ``text.format`` the
``response_format``, ``max_output_tokens`` the ``max_completion_tokens``), and
the engine's chat answer into a Responses body (:func:`from_chat`: ``status``,
``incomplete_details``, ``output`` message items with ``output_text`` or
``refusal`` parts, and the Responses ``usage``). :func:`answer` is what the
worker and the HTTP app call for every request.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Mapping

from ..core.records import CHAT_URL, RESPONSES_URL
from ..errors import EngineError

__all__ = ["answer", "to_chat", "from_chat"]

_PART_TYPES = {"input_text": "text", "output_text": "text"}


def _part(part: Any) -> Any:
    """A Responses content part as a chat one (``input_image`` becomes ``image_url``)."""
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind == "input_image":
        img = {"url": part.get("image_url")}
        if part.get("detail") is not None:
            img["detail"] = part["detail"]
        return {"type": "image_url", "image_url": img}
    if kind in _PART_TYPES:
        return {"type": "text", "text": part.get("text", "")}
    return dict(part)


def to_chat(body: Mapping[str, Any]) -> dict:
    """The chat completions body a Responses body stands for.

    Examples
    --------
    >>> to_chat({"model": "m", "instructions": "be brief", "input": "hi", "max_output_tokens": 5})
    {'model': 'm', 'messages': [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}], 'max_completion_tokens': 5}
    """
    messages = []
    if body.get("instructions") is not None:
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise EngineError(400, "invalid_value", "'input' must be a non-empty string or list of items", param="input")
    for item in items:
        if not isinstance(item, Mapping) or "role" not in item:
            raise EngineError(400, "invalid_value", "each 'input' item must be a message with a role", param="input")
        content = item.get("content")
        if isinstance(content, list):
            content = [_part(p) for p in content]
        messages.append({"role": item["role"], "content": content})
    out: dict = {"model": body.get("model"), "messages": messages}
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": {
            k: v for k, v in fmt.items() if k in ("name", "schema", "strict", "description")}}
    elif isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "service_tier", "metadata", "user"):
        if key in body:
            out[key] = body[key]
    return out


def from_chat(chat: Mapping[str, Any], body: Mapping[str, Any]) -> dict:
    """The Responses body of a chat answer ``chat`` to the Responses request ``body``."""
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    finish = choice.get("finish_reason")
    parts = []
    if msg.get("refusal"):
        parts.append({"type": "refusal", "refusal": msg["refusal"]})
    elif msg.get("content") is not None:
        parts.append({"type": "output_text", "text": msg["content"], "annotations": [], "logprobs": []})
    status, details = "completed", None
    if finish == "length":
        status, details = "incomplete", {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        status, details = "incomplete", {"reason": "content_filter"}
    u = chat.get("usage") or {}
    prompt, completion = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    reasoning = int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    output = [{"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
               "status": status, "content": parts}]
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": int(time.time()),
        "status": status, "incomplete_details": details, "error": None, "model": chat.get("model") or body.get("model"),
        "instructions": body.get("instructions"), "output": output, "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [], "max_output_tokens": body.get("max_output_tokens"),
        "service_tier": body.get("service_tier") or "default", "text": body.get("text") or {"format": {"type": "text"}},
        "usage": {"input_tokens": prompt,
                  "input_tokens_details": {"cached_tokens": int((u.get("prompt_tokens_details") or {}).get(
                      "cached_tokens") or 0)},
                  "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
                  "total_tokens": prompt + completion},
    }


def answer(engine: Callable[[dict, str], dict], body: dict, url: str) -> dict:
    """``engine``'s answer to ``body`` sent to ``url``; a Responses request is answered through its chat form.

    ``body`` has passed :func:`pdbatch.server.validate.check_body` (the
    callers check it first, image URLs included).
    """
    if url != RESPONSES_URL or getattr(engine, "serves_responses", False):  # the upstream engine: as it is
        return engine(body, url)
    chat = engine(to_chat(body), CHAT_URL)
    if not isinstance(chat, Mapping):
        return chat  # the caller reports an engine that returns no dict
    return from_chat(chat, body)
