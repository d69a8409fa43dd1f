"""Frozen records that flow through the pipeline.

``Request`` (what is sent), ``Result`` (what came back for one custom_id) and
``Usage`` (token counts). Each round-trips through a plain dict that carries a
version field, so it can be persisted and read back by a later release.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import base64

import numpy as np
import orjson

__all__ = ["Request", "request_hash", "key_prefix", "Result", "Usage", "usage_counts", "embedding_of", "RECORD_VERSION", "CHAT_URL", "EMBEDDINGS_URL", "RESPONSES_URL"]

RECORD_VERSION = 1
NO_RESPONSE = "the line carried neither a response nor an error"
CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"
RESPONSES_URL = "/v1/responses"


def embedding_of(body: Optional[Mapping[str, Any]]) -> Optional[np.ndarray]:
    """The first vector of an embeddings response body as float32, or None.

    Handles both encodings the API returns: a list of floats, or base64 of
    little-endian float32.

    Examples
    --------
    >>> embedding_of({"data": [{"embedding": [0.5, 1.0]}]})
    array([0.5, 1. ], dtype=float32)
    """
    data = body.get("data") if isinstance(body, Mapping) else None
    if not data or not isinstance(data, list):
        return None
    emb = data[0].get("embedding") if isinstance(data[0], Mapping) else None
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4").astype(np.float32)
    if isinstance(emb, list):
        return np.asarray(emb, dtype=np.float32)
    return None


def usage_counts(body: Optional[Mapping[str, Any]]) -> tuple:
    """``(prompt, completion, cached, reasoning)`` tokens of a response body; zeros if absent."""
    u = body.get("usage") if body else None
    if not u:
        return (0, 0, 0, 0)
    details = u.get("prompt_tokens_details") or u.get("input_tokens_details")
    out_details = u.get("completion_tokens_details") or u.get("output_tokens_details")
    return (
        int(u.get("prompt_tokens") or u.get("input_tokens") or 0),
        int(u.get("completion_tokens") or u.get("output_tokens") or 0),
        int(details.get("cached_tokens") or 0) if details else 0,
        int(out_details.get("reasoning_tokens") or 0) if out_details else 0,
    )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one or more responses.

    Examples
    --------
    >>> Usage(10, 2) + Usage(5, 1, cached_tokens=4)
    Usage(prompt_tokens=15, completion_tokens=3, cached_tokens=4, reasoning_tokens=0)
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @classmethod
    def from_body(cls, body: Optional[Mapping[str, Any]]) -> "Usage":
        """Read the ``usage`` block of a chat or embeddings response body."""
        return cls(*usage_counts(body))

    def to_dict(self) -> dict:
        return {
            "input_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class Request:
    """One request line of a batch: ``custom_id``, endpoint ``url`` and ``body``.

    Examples
    --------
    >>> r = Request("7", {"model": "m", "messages": []})
    >>> r.to_line()
    b'{"custom_id":"7","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}\\n'
    >>> Request.from_dict(r.to_dict()) == r
    True
    """

    custom_id: str
    body: Mapping[str, Any]
    url: str = CHAT_URL

    def to_line(self) -> bytes:
        """The JSONL line (with its newline) the Batch API expects."""
        return orjson.dumps(
            {"custom_id": self.custom_id, "method": "POST", "url": self.url, "body": self.body},
            option=orjson.OPT_APPEND_NEWLINE,
        )

    def to_dict(self) -> dict:
        return {"v": RECORD_VERSION, "custom_id": self.custom_id, "url": self.url, "body": self.body}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Request":
        return cls(str(d["custom_id"]), d["body"], d.get("url", CHAT_URL))

    @classmethod
    def from_line(cls, line: bytes) -> "Request":
        """The request of one JSONL line (as :meth:`to_line` writes it)."""
        return cls.from_dict(orjson.loads(line))


def key_prefix(provider: str, url: str) -> bytes:
    """What a cache key hashes before the body: the provider (when named) and the endpoint."""
    return (provider.encode("utf-8", "surrogatepass") + b"\n" if provider else b"") + url.encode() + b"\n"


def request_hash(req: Request, provider: str = "") -> str:
    """The cache key of a request: a hash of where it goes (``provider``), its endpoint and canonical body.

    ``provider`` names who answers (see :attr:`pdbatch.backends.base.Backend.provider`:
    an API's base URL, organisation and project, or the local model), so that
    one provider's answers never answer for another.

    Examples
    --------
    >>> a = Request("1", {"model": "m", "messages": [], "temperature": 0})
    >>> b = Request("2", {"temperature": 0, "messages": [], "model": "m"})
    >>> request_hash(a) == request_hash(b)
    True
    """
    data = key_prefix(provider, req.url) + orjson.dumps(req.body, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Result:
    """What came back for one ``custom_id``.

    ``body`` is the endpoint's normal response on success (status 200);
    otherwise ``error`` is a dict with at least ``code`` and ``message``.

    Examples
    --------
    >>> ok = Result.from_line({"custom_id": "1", "response": {"status_code": 200, "body": {"x": 1}}, "error": None})
    >>> ok.ok, ok.body
    (True, {'x': 1})
    >>> bad = Result.from_line({"custom_id": "2", "response": None,
    ...                         "error": {"code": "batch_expired", "message": "expired"}})
    >>> bad.ok, bad.error["code"]
    (False, 'batch_expired')
    """

    custom_id: str
    body: Optional[Mapping[str, Any]] = None
    error: Optional[Mapping[str, Any]] = None
    status_code: Optional[int] = None
    request_id: Optional[str] = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.body is not None

    @property
    def usage(self) -> Usage:
        return Usage.from_body(self.body)

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> "Result":
        """Build from one decoded line of a batch output or error file."""
        cid = str(line.get("custom_id"))
        resp = line.get("response")
        err = line.get("error")
        if resp is not None:
            status = resp.get("status_code")
            try:
                status = None if status is None else int(status)
            except (TypeError, ValueError):
                status = None
            body = resp.get("body")
            if err:  # a top-level error wins, as in the Arrow reader; the body still counts its usage
                return cls(cid, body if isinstance(body, dict) else None, dict(err), status, resp.get("request_id"))
            if status is not None and status >= 400:
                e = body.get("error") if isinstance(body, dict) else None
                if isinstance(e, dict):
                    e = dict(e)
                else:  # no error object: the status code alone says what happened
                    e = {"message": body if isinstance(body, str) and body else None}
                e.setdefault("code", None)
                e["status_code"] = status
                return cls(cid, None, e, status, resp.get("request_id"))
            return cls(cid, body, None, status, resp.get("request_id"))
        if not err:
            err = {"code": "no_response", "message": NO_RESPONSE}
        return cls(cid, None, dict(err), None, None)

    @classmethod
    def failure(cls, custom_id: str, code: str, message: str, status_code: Optional[int] = None) -> "Result":
        """A result that records a failure produced locally (not by the API)."""
        e = {"code": code, "message": message}
        if status_code is not None:
            e["status_code"] = status_code
        return cls(custom_id, None, e, status_code)

    def to_dict(self) -> dict:
        return {
            "v": RECORD_VERSION,
            "custom_id": self.custom_id,
            "status_code": self.status_code,
            "body": self.body,
            "error": self.error,
            "request_id": self.request_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Result":
        return cls(d["custom_id"], d.get("body"), d.get("error"), d.get("status_code"), d.get("request_id"))
