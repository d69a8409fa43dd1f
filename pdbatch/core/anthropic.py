"""Anthropic Messages bodies and answers, translated to and from the chat-completions shapes pdbatch speaks.

pdbatch renders every row as a chat-completions body, and reads every answer
as a chat-completions answer: that is the one path (cache keys, parsing,
validation, retries). The Anthropic backend translates at the edge, with the
pure functions of this module:

* :func:`to_params` turns a chat body into Messages ``params`` (the client side);
* :func:`to_chat` turns a Messages answer into a chat answer, so its text is
  parsed and validated exactly like an OpenAI answer;
* :func:`result_line` turns one Message Batches result line into the output or
  error line the Batch API would have written;
* :func:`from_params` and :func:`to_message` do the reverse, for the local
  server's Messages emulation.

Choices (see the README's "Anthropic" section):

* ``max_tokens`` is required by Anthropic: ``max_completion_tokens`` or
  ``max_tokens`` of the chat body, else :data:`DEFAULT_MAX_TOKENS`.
* A JSON schema (``response_format`` a dict or a pydantic model) goes out as
  structured outputs, ``output_config.format`` of type ``json_schema``: the
  answer is a text block holding the JSON, read by the same parser as an
  OpenAI answer. A forced tool call would also work but returns the object
  as ``tool_use.input`` (already parsed, so a different path) and spends
  tokens on a tool definition.
* ``response_format="json"`` has no Anthropic equivalent: the system prompt
  gets :data:`JSON_INSTRUCTION`, and the answer is parsed as JSON like any
  other (an answer that is not JSON is the row's error cell, and goes again
  with ``retry_invalid``). Nothing forces JSON.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import OptionError

__all__ = ["DEFAULT_MAX_TOKENS", "JSON_INSTRUCTION", "RETRYABLE_TYPES", "COUNT_FIELDS", "to_params", "to_chat",
           "result_line", "from_params", "to_message", "error_status"]

#: ``max_tokens`` of a request that sets neither ``max_completion_tokens`` nor ``max_tokens``.
DEFAULT_MAX_TOKENS = 1024
#: Appended to the system prompt for ``response_format="json"`` (Anthropic has no JSON mode).
JSON_INSTRUCTION = "Answer with one JSON object only: no prose, no code fences."
#: Error types of an errored result worth sending again.
RETRYABLE_TYPES = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
#: The fields a ``POST /v1/messages/count_tokens`` body may hold (no ``max_tokens``, no sampling parameters).
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
                          "cache_control", "mcp_servers"})

_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use"}
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter",
           "tool_use": "tool_calls", "pause_turn": "length", "model_context_window_exceeded": "length"}
#: chat parameters with the same meaning in a Messages body, under their Messages name
_SAME = {"temperature": "temperature", "top_p": "top_p", "metadata": None}
#: HTTP status of each Anthropic error type (and back)
_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
           "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
           "timeout_error": 504, "overloaded_error": 529}


def error_status(kind: str) -> int:
    """The HTTP status Anthropic answers with for an error ``type``."""
    return _STATUS.get(kind, 500)


def error_type(status: int) -> str:
    """The Anthropic error ``type`` of an HTTP status."""
    if status in (503, 529):
        return "overloaded_error"
    for kind, code in _STATUS.items():
        if code == status:
            return kind
    return "api_error" if status >= 500 else "invalid_request_error"


# ------------------------------------------------------------------ chat -> Messages (client side)

def _image_block(part: Mapping[str, Any]) -> dict:
    url = str((part.get("image_url") or {}).get("url", ""))
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> Any:
    if isinstance(content, str):
        return content
    out: List[dict] = []
    for part in content or []:
        kind = part.get("type")
        if kind == "text":
            out.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            out.append(_image_block(part))
        else:
            raise OptionError(f"a {kind!r} message part cannot be sent to Anthropic; use text and images= only")
    return out


def to_params(body: Mapping[str, Any]) -> dict:
    """The Messages ``params`` of a chat-completions ``body``.

    System messages become the top-level ``system``; ``image_url`` parts
    become ``image`` blocks (base64 for ``data:`` URLs, else ``url``).

    Raises
    ------
    OptionError
        A chat parameter with no Anthropic counterpart (``seed``,
        ``logprobs``...), an embeddings body, or a ``response_format`` of
        another type: nothing is sent.

    Examples
    --------
    >>> p = to_params({"model": "claude-haiku-4-5", "messages": [
    ...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    >>> p["system"], p["messages"], p["max_tokens"]
    ('Be brief.', [{'role': 'user', 'content': 'hi'}], 1024)
    """
    if "messages" not in body:
        raise OptionError("Anthropic offers no embeddings: use backend='batch' with an OpenAI client for embed()")
    params: Dict[str, Any] = {"model": body["model"]}
    system: List[str] = []
    messages = []
    for msg in body["messages"]:
        if msg.get("role") == "system":
            system.append(msg["content"] if isinstance(msg["content"], str)
                          else " ".join(p.get("text", "") for p in msg["content"]))
        else:
            messages.append({"role": msg["role"], "content": _blocks(msg.get("content"))})
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    params["max_tokens"] = int(limit) if limit is not None else DEFAULT_MAX_TOKENS
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif kind == "json_object":
            system.append(JSON_INSTRUCTION)
        elif kind != "text":
            raise OptionError(f"response_format type {kind!r} has no Anthropic counterpart")
    if system:
        params["system"] = "\n\n".join(system)
    params["messages"] = messages
    for key, value in body.items():
        if key in ("model", "messages", "max_completion_tokens", "max_tokens", "response_format") or value is None:
            continue
        if key == "temperature" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise OptionError(f"temperature={value!r}: Anthropic takes a temperature from 0 to 1 (OpenAI's go to 2)")
        if key in ("temperature", "top_p", "metadata", "top_k", "tools", "tool_choice", "thinking"):
            params[key] = value
        elif key == "stop":
            params["stop_sequences"] = [value] if isinstance(value, str) else list(value)
        elif key == "n" and value == 1:
            continue
        else:
            raise OptionError(f"{key}={value!r} has no counterpart in Anthropic's Messages API; drop it "
                              f"(Anthropic takes temperature, top_p, top_k, stop, max_tokens)")
    return params


def to_chat(message: Mapping[str, Any]) -> dict:
    """A chat-completions answer holding what a Messages answer says.

    Text blocks are joined; ``stop_reason`` maps to ``finish_reason``
    (``max_tokens`` → ``length``, so a cut answer is the truncation error
    cell; ``refusal`` → a refusal); ``usage`` maps token for token.

    Examples
    --------
    >>> c = to_chat({"id": "msg_1", "model": "m", "content": [{"type": "text", "text": "hi"}],
    ...              "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}})
    >>> c["choices"][0]["message"]["content"], c["choices"][0]["finish_reason"], c["usage"]["total_tokens"]
    ('hi', 'stop', 4)
    """
    blocks = message.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    stop = message.get("stop_reason")
    finish = _FINISH.get(stop or "end_turn", "stop")
    refusal = None
    if stop == "refusal":
        refusal, text = text or "refused", None
    u = message.get("usage") or {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
    completion = int(u.get("output_tokens") or 0)
    return {"id": message.get("id") or "msg", "object": "chat.completion", "created": 0,
            "model": message.get("model"),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


def result_line(custom_id: str, result: Mapping[str, Any]) -> Tuple[Optional[dict], bool]:
    """The Batch API line of one Message Batches result, and whether it goes to the output file.

    ``succeeded`` → an output line with the translated answer; ``errored`` →
    an error line with the API's HTTP status, error type as ``code`` and its
    message (``api_error``/``overloaded_error`` are 5xx, so retried;
    ``invalid_request_error`` is a 400, a permanent error cell); ``expired``
    → a ``batch_expired`` error line (retried); ``canceled`` → ``None`` (the
    row is left unanswered, as a cancelled OpenAI batch leaves it).

    Examples
    --------
    >>> line, ok = result_line("r1", {"type": "errored", "error": {"type": "error", "error": {
    ...     "type": "overloaded_error", "message": "Overloaded"}}})
    >>> ok, line["response"]["status_code"], line["response"]["body"]["error"]["code"]
    (False, 529, 'overloaded_error')
    """
    kind = result.get("type")
    rid = f"batch_req_{uuid.uuid4().hex}"
    if kind == "succeeded":
        body = to_chat(result.get("message") or {})
        return {"id": rid, "custom_id": custom_id, "error": None,
                "response": {"status_code": 200, "request_id": rid, "body": body}}, True
    if kind == "errored":
        err = (result.get("error") or {}).get("error") or {}
        etype = str(err.get("type") or "api_error")
        body = {"error": {"message": str(err.get("message") or etype), "type": etype, "param": None, "code": etype}}
        return {"id": rid, "custom_id": custom_id, "error": None,
                "response": {"status_code": error_status(etype), "request_id": rid, "body": body}}, False
    if kind == "expired":
        return {"id": rid, "custom_id": custom_id, "response": None,
                "error": {"code": "batch_expired",
                          "message": "the Message Batch expired (24 h) before this request ran"}}, False
    return None, False


# ------------------------------------------------------------------ Messages -> chat (server side)

def _parts(content: Any) -> Any:
    if isinstance(content, str):
        return content
    out = []
    for block in content or []:
        if block.get("type") == "text":
            out.append({"type": "text", "text": block.get("text", "")})
        elif block.get("type") == "image":
            src = block.get("source") or {}
            url = src.get("url") if src.get("type") == "url" else \
                f"data:{src.get('media_type')};base64,{src.get('data', '')}"
            out.append({"type": "image_url", "image_url": {"url": url}})
    return out


def from_params(params: Mapping[str, Any]) -> dict:
    """The chat-completions body an engine answers for Messages ``params`` (the local server's side).

    Examples
    --------
    >>> from_params({"model": "m", "max_tokens": 5, "system": "s",
    ...              "messages": [{"role": "user", "content": "hi"}]})["messages"][0]
    {'role': 'system', 'content': 's'}
    """
    messages = []
    system = params.get("system")
    if system:
        text = system if isinstance(system, str) else " ".join(b.get("text", "") for b in system)
        messages.append({"role": "system", "content": text})
    messages += [{"role": m.get("role"), "content": _parts(m.get("content"))} for m in params.get("messages") or []]
    body: Dict[str, Any] = {"model": params.get("model"), "messages": messages,
                            "max_completion_tokens": params.get("max_tokens")}
    fmt = (params.get("output_config") or {}).get("format")
    if fmt and fmt.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": fmt.get("schema") or {}}}
    for key in ("temperature", "top_p"):
        if params.get(key) is not None:
            body[key] = params[key]
    if params.get("stop_sequences"):
        body["stop"] = list(params["stop_sequences"])
    return body


def to_message(answer: Mapping[str, Any], model: str) -> dict:
    """A Messages answer holding what a chat-completions ``answer`` says (the local server's side).

    Examples
    --------
    >>> m = to_message({"choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
    ...                 "usage": {"prompt_tokens": 2, "completion_tokens": 1}}, "m")
    >>> m["content"], m["stop_reason"], m["usage"]["output_tokens"]
    ([{'type': 'text', 'text': 'hi'}], 'max_tokens', 1)
    """
    choice = (answer.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    text = msg.get("content")
    stop = _STOP.get(choice.get("finish_reason") or "stop", "end_turn")
    if msg.get("refusal") and text is None:
        text, stop = msg["refusal"], "refusal"
    u = answer.get("usage") or {}
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}] if text is not None else [],
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": int(u.get("prompt_tokens") or 0),
                      "output_tokens": int(u.get("completion_tokens") or 0),
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
