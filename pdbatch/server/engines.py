"""Engines: the functions that answer requests inside the local server.

An *engine* is any callable ``engine(body: dict, url: str) -> dict`` that takes
the request body sent to an endpoint (``url`` is ``"/v1/chat/completions"``,
``"/v1/embeddings"``, ...) and returns that endpoint's normal response body.
Raising :class:`EngineError` makes the request fail with an OpenAI-shaped
error (an error-file line inside a batch, an HTTP error for a realtime call).

This module ships two engines that need no model at all:

* :func:`echo_engine`, deterministic: chat replies echo the last user message,
  JSON modes return JSON (a schema-valid object for ``json_schema``), and
  embeddings are hash-seeded unit vectors;
* :class:`SlowEcho`, :func:`echo_engine` after a fixed sleep per request
  (``pdbatch serve --engine echo --latency SECONDS``), to test clients
  against slow batches;
* :class:`ScriptedEngine`, which asks a Python callable what to reply.

and the builders :func:`chat_response` and :func:`embedding_response` for
writing your own.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import threading
import time
import uuid
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import orjson

from ..core.records import CHAT_URL, EMBEDDINGS_URL
from ..errors import EngineError
from .schema_example import example_from_schema

__all__ = [
    "EngineError",
    "Engine",
    "ScriptedEngine",
    "SlowEcho",
    "echo_engine",
    "chat_response",
    "embedding_response",
    "example_from_schema",
    "estimate_tokens",
    "user_text",
]

Engine = Callable[[dict, str], dict]

#: Tokens counted for one image part by :func:`estimate_tokens`.
IMAGE_TOKENS = 85


def _parts_text(content: Any) -> tuple[str, int]:
    """Text of a message ``content`` (str or list of parts) and its image count."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts, images = [], 0
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") in ("text", "input_text"):
            texts.append(str(part.get("text", "")))
        elif part.get("type") in ("image_url", "input_image"):
            images += 1
    return " ".join(texts), images


def user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message of a chat body.

    List contents have their text parts joined by a space; images are
    mentioned as ``[N image(s)]`` at the end.

    Examples
    --------
    >>> user_text({"messages": [{"role": "user", "content": [
    ...     {"type": "text", "text": "what is this?"},
    ...     {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]})
    'what is this? [1 image]'
    """
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            text, images = _parts_text(msg.get("content"))
            if images:
                text = f"{text} [{images} image{'s' if images != 1 else ''}]".strip()
            return text
    return ""


def estimate_tokens(obj: Any) -> int:
    """A cheap, deterministic token estimate: whitespace-separated words.

    Accepts a string, a list of chat messages (3 tokens of overhead per
    message, :data:`IMAGE_TOKENS` per image) or a list of strings.

    Examples
    --------
    >>> estimate_tokens("three little words")
    3
    >>> estimate_tokens([{"role": "user", "content": "hi there"}])
    5
    """
    if obj is None:
        return 0
    if isinstance(obj, str):
        return len(obj.split())
    total = 0
    for item in obj:
        if isinstance(item, Mapping):
            text, images = _parts_text(item.get("content"))
            total += 3 + len(text.split()) + IMAGE_TOKENS * images
        elif isinstance(item, str):
            total += len(item.split())
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item) if isinstance(item, Sequence) else 1
    return total


def chat_response(content: Optional[str], *, model: str, finish_reason: str = "stop",
                  refusal: Optional[str] = None, prompt_tokens: Optional[int] = None,
                  completion_tokens: Optional[int] = None,
                  messages: Optional[list] = None) -> dict:
    """Build a ``chat.completion`` response body with one choice.

    Parameters
    ----------
    content : str or None
        The assistant message text.
    model : str
        Model name echoed in the body.
    finish_reason : str
        ``"stop"``, ``"length"``, ``"content_filter"`` or ``"tool_calls"``.
    refusal : str, optional
        A refusal message (``content`` is then usually ``None``).
    prompt_tokens, completion_tokens : int, optional
        Token counts. ``completion_tokens`` defaults to the word count of
        ``content`` (or ``refusal``); ``prompt_tokens`` to
        ``estimate_tokens(messages)``, i.e. 0 without ``messages``.
    messages : list, optional
        The request's messages, only used for the prompt-token estimate.

    Returns
    -------
    dict
        A body the ``openai`` SDK parses as ``ChatCompletion``.

    Examples
    --------
    >>> b = chat_response("hello world", model="m", prompt_tokens=4)
    >>> b["choices"][0]["message"]["content"], b["usage"]["total_tokens"]
    ('hello world', 6)
    """
    if completion_tokens is None:
        completion_tokens = estimate_tokens(content if content is not None else refusal)
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens(messages)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal,
                        "annotations": []},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "total_tokens": int(prompt_tokens) + int(completion_tokens),
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": "fp_pdbatch",
    }


def embedding_response(vectors: list[list[float]], *, model: str, prompt_tokens: int,
                       encoding_format: str = "float") -> dict:
    """Build an embeddings response body.

    Parameters
    ----------
    vectors : list of list of float
        One vector per input, in input order.
    model : str
        Model name echoed in the body.
    prompt_tokens : int
        Tokens of all inputs.
    encoding_format : {"float", "base64"}
        ``"base64"`` packs each vector as little-endian float32, as the API
        does (the ``openai`` SDK asks for it by default and decodes it).

    Examples
    --------
    >>> embedding_response([[1.0, 0.0]], model="e", prompt_tokens=2)["data"][0]["embedding"]
    [1.0, 0.0]
    """
    def enc(vec: list[float]) -> Any:
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        return list(vec)

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": enc(v)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": int(prompt_tokens), "total_tokens": int(prompt_tokens)},
    }


# --------------------------------------------------------------------------- engines

def _echo_chat(body: Mapping[str, Any]) -> dict:
    model = str(body.get("model") or "echo")
    text = user_text(body)
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        content = orjson.dumps(example_from_schema(schema, text)).decode()
    elif fmt.get("type") == "json_object":
        content = orjson.dumps({"echo": text}).decode()
    else:
        content = text
    finish = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and estimate_tokens(content) > int(limit):
        content, finish = " ".join(content.split()[: max(int(limit), 0)]), "length"
    out = chat_response(content, model=model, finish_reason=finish,
                        messages=body.get("messages"))
    n = int(body.get("n") or 1)
    if n > 1:
        first = out["choices"][0]
        out["choices"] = [dict(first, index=i) for i in range(n)]
        out["usage"]["completion_tokens"] *= n
        out["usage"]["total_tokens"] = out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    return out


def _vector(item: Any, dims: int) -> list[float]:
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend((b - 127.5) / 127.5 for b in block)
        counter += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _echo_embeddings(body: Mapping[str, Any]) -> dict:
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise EngineError(400, "invalid_value", "'input' must be a non-empty string or list",
                          param="input")
    dims = int(body.get("dimensions") or 8)
    return embedding_response([_vector(x, dims) for x in inputs],
                              model=str(body.get("model") or "echo-embedding"),
                              prompt_tokens=max(estimate_tokens(inputs), 1),
                              encoding_format=body.get("encoding_format") or "float")


def echo_engine(body: dict, url: str) -> dict:
    """Deterministic engine for tests and demos; no model involved.

    * Chat: replies with the last user message's text (text parts joined,
      images counted as ``[N images]``). ``response_format`` ``json_schema``
      yields an instance of the schema (see :func:`example_from_schema`),
      ``json_object`` yields ``{"echo": <text>}``. A reply longer than
      ``max_completion_tokens`` words is cut with ``finish_reason="length"``.
      ``n > 1`` repeats the choice.
    * Embeddings: one hash-seeded unit vector per input, of length
      ``dimensions`` (default 8), honouring ``encoding_format``.
    * Other endpoints raise :class:`EngineError` (HTTP 400).

    Examples
    --------
    >>> b = echo_engine({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    ...                 "/v1/chat/completions")
    >>> b["choices"][0]["message"]["content"]
    'hi'
    """
    if url == CHAT_URL:
        return _echo_chat(body)
    if url == EMBEDDINGS_URL:
        return _echo_embeddings(body)
    raise EngineError(400, "unsupported_endpoint", f"echo_engine does not serve {url}")


class SlowEcho:
    """:func:`echo_engine` that sleeps ``latency`` seconds before each answer.

    Parameters
    ----------
    latency : float
        Seconds per request (a batch runs its lines one after another, so a
        batch of N lines takes about ``N * latency`` seconds).

    Examples
    --------
    >>> eng = SlowEcho(0.01)
    >>> eng({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    ...     "/v1/chat/completions")["choices"][0]["message"]["content"]
    'hi'
    """

    name = "echo"

    def __init__(self, latency: float) -> None:
        if not latency >= 0:
            raise ValueError(f"latency must be a number of seconds >= 0, not {latency!r}")
        self.latency = float(latency)

    def __call__(self, body: dict, url: str) -> dict:
        time.sleep(self.latency)
        return echo_engine(body, url)

    def __repr__(self) -> str:
        return f"SlowEcho(latency={self.latency})"


class ScriptedEngine:
    """An engine whose chat replies come from a Python callable.

    Parameters
    ----------
    reply : callable
        ``reply(user_text, body)`` returning a ``str`` (the message content),
        a ``dict`` with ``"choices"`` (a full response body, returned as is)
        or another ``dict`` (keyword arguments of :func:`chat_response`, e.g.
        ``{"content": "...", "finish_reason": "length"}`` or
        ``{"refusal": "no"}``). It may raise :class:`EngineError`.
        Non-chat endpoints are answered by :func:`echo_engine`.

    Attributes
    ----------
    calls : int
        Number of chat requests answered so far (thread-safe).
    bodies : list of dict
        The chat request bodies seen, in call order.

    Examples
    --------
    >>> eng = ScriptedEngine(lambda text, body: text.upper())
    >>> eng({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    ...     "/v1/chat/completions")["choices"][0]["message"]["content"]
    'HI'
    >>> eng.calls
    1
    """

    def __init__(self, reply: Callable[[str, dict], Union[str, dict]]):
        self.reply = reply
        self.bodies: list[dict] = []
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    def __call__(self, body: dict, url: str) -> dict:
        if url != CHAT_URL:
            return echo_engine(body, url)
        with self._lock:
            self._calls += 1
            self.bodies.append(body)
        out = self.reply(user_text(body), body)
        model = str(body.get("model") or "scripted")
        if isinstance(out, str):
            return chat_response(out, model=model, messages=body.get("messages"))
        if isinstance(out, Mapping) and "choices" in out:
            return dict(out)
        if isinstance(out, Mapping):
            kw = {"model": model, "messages": body.get("messages"), **out}
            return chat_response(kw.pop("content", None), **kw)
        raise TypeError(f"ScriptedEngine reply returned {type(out).__name__}; "
                        "return a str or a dict (or raise EngineError)")
