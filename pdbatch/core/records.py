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
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Request", "request_hash", "Result", "Usage", "Answers", "usage_counts", "embedding_of", "RECORD_VERSION", "CHAT_URL", "EMBEDDINGS_URL"]

RECORD_VERSION = 1
NO_RESPONSE = "the line carried neither a response nor an error"
CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"


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


def request_hash(req: Request) -> str:
    """The cache key of a request: a hash of its endpoint and canonical body.

    Examples
    --------
    >>> a = Request("1", {"model": "m", "messages": [], "temperature": 0})
    >>> b = Request("2", {"temperature": 0, "messages": [], "model": "m"})
    >>> request_hash(a) == request_hash(b)
    True
    """
    data = req.url.encode() + b"\n" + orjson.dumps(req.body, option=orjson.OPT_SORT_KEYS)
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


_ANSWER_FIELDS = ("custom_id", "status_code", "content", "finish_reason", "refusal", "has_choice", "error_code",
                  "error_message", "ok", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


def _answer_column(name: str) -> property:
    def get(self) -> list:
        col = self._cols[name]
        if not isinstance(col, list):  # an Arrow column becomes a list the first time it is read as one
            col = self._cols[name] = col.to_pylist()
        return col

    def set(self, value) -> None:
        self._cols[name] = value if isinstance(value, (list, pa.Array, pa.ChunkedArray)) else list(value)

    return property(get, set, doc=f"The ``{name}`` of every result line, as a list.")


class Answers:
    """Many results, column-wise: the input of the join.

    Column ``i`` of every column describes one result line. Built from output
    files by :func:`pdbatch.batchfile.read_answers` (Arrow, no per-line
    objects), from :class:`Result` records by :meth:`from_results`, or from
    the job store's rows by :meth:`from_rows`.

    Each column is held either as a list or as an Arrow array. Reading an
    attribute (``a.content``) always gives a list, converted once on first
    use; :meth:`arrow` gives an Arrow array without making Python objects,
    which is how the join reads the columns it needs in bulk.

    ``ok`` is True where the answer is a plain success (status < 400, no
    error, a choice with content, finish_reason "stop", no refusal): the
    join's fast path. For embeddings, ``content`` holds the float32 vector and
    ``has_choice`` says one came back.

    Examples
    --------
    >>> a = Answers.from_results([Result("1", {"choices": [{"message": {"content": "hi"},
    ...                                         "finish_reason": "stop"}]})])
    >>> a.custom_id, a.arrow("content").to_pylist(), len(a)
    (['1'], ['hi'], 1)
    """

    #: The per-row columns, in the order the job store keeps them.
    COLUMNS = _ANSWER_FIELDS[1:]
    __slots__ = ("_cols",)

    def __init__(self, **columns: Any) -> None:
        unknown = set(columns) - set(_ANSWER_FIELDS)
        if unknown:
            raise TypeError(f"Answers() got unknown columns {sorted(unknown)}; known: {list(_ANSWER_FIELDS)}")
        self._cols: dict = {}
        for name in _ANSWER_FIELDS:
            setattr(self, name, columns.get(name, []))
        lengths = {name: len(col) for name, col in self._cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Answers() columns must all have one length, got {lengths}")

    def __len__(self) -> int:
        return len(self._cols["custom_id"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answers):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _ANSWER_FIELDS)

    def __repr__(self) -> str:
        return f"Answers({len(self)} rows)"

    def arrow(self, name: str) -> pa.ChunkedArray:
        """Column ``name`` as an Arrow array (no Python objects when it was read by Arrow)."""
        col = self._cols[name]
        if isinstance(col, pa.ChunkedArray):
            return col
        if isinstance(col, pa.Array):
            return pa.chunked_array([col])
        return pa.chunked_array([pa.array(col)]) if col else pa.chunked_array([], type=pa.null())

    def is_arrow(self, name: str) -> bool:
        """Whether column ``name`` is held as Arrow (not yet turned into a list)."""
        return not isinstance(self._cols[name], list)

    def take(self, name: str, rows: np.ndarray) -> list:
        """Column ``name`` at row positions ``rows``, as a list."""
        col = self._cols[name]
        if isinstance(col, list):
            return [col[i] for i in rows.tolist()]
        return col.take(pa.array(rows, type=pa.int64())).to_pylist()

    @property
    def usage(self) -> Usage:
        """Token usage summed over every row."""
        def total(name: str) -> int:
            col = self._cols[name]
            return sum(col) if isinstance(col, list) else int(pc.sum(col).as_py() or 0)
        return Usage(total("prompt_tokens"), total("completion_tokens"), total("cached_tokens"),
                     total("reasoning_tokens"))

    def columns(self) -> list:
        """The per-row lists named in :attr:`COLUMNS`, in that order."""
        return [getattr(self, name) for name in self.COLUMNS]

    def extend(self, other: "Answers") -> None:
        """Append ``other``'s rows (Arrow columns stay Arrow when both sides are)."""
        for name in _ANSWER_FIELDS:
            mine, theirs = self._cols[name], other._cols[name]
            if not len(theirs):
                continue
            if isinstance(mine, list) and not mine:
                self._cols[name] = theirs if not isinstance(theirs, list) else list(theirs)
            elif not isinstance(mine, list) and not isinstance(theirs, list):
                self._cols[name] = pa.chunked_array(self.arrow(name).chunks + other.arrow(name).chunks)
            else:
                getattr(self, name).extend(getattr(other, name))

    @classmethod
    def from_rows(cls, rows) -> "Answers":
        """Build from ``(custom_id, *COLUMNS)`` tuples (the store's rows)."""
        a = cls()
        cols = [a.custom_id] + a.columns()
        for row in rows:
            for col, v in zip(cols, row):
                col.append(v)
        # The store keeps an embedding as float32 bytes in the content column.
        a.content[:] = [np.frombuffer(v, dtype=np.float32).copy() if isinstance(v, (bytes, memoryview)) else v
                        for v in a.content]
        a.has_choice[:] = [bool(v) for v in a.has_choice]
        a.ok[:] = [bool(v) for v in a.ok]
        return a

    @classmethod
    def from_results(cls, results) -> "Answers":
        """Collect :class:`Result` records into columns.

        Examples
        --------
        >>> a = Answers.from_results([Result("1", {"choices": [{"message": {"content": "hi"},
        ...                                         "finish_reason": "stop"}]}, status_code=200)])
        >>> a.custom_id, a.content, a.error_code
        (['1'], ['hi'], [None])
        """
        a = cls()
        for r in results:
            a.custom_id.append(r.custom_id)
            a.status_code.append(r.status_code)
            err = r.error
            if err is not None:
                code = err.get("code") or err.get("type")
                if code is None and err.get("message") is None and not (r.status_code or 0) >= 400:
                    code = "error"  # an error with nothing in it is still an error
                a.error_code.append(None if code is None else str(code))
                a.error_message.append(None if err.get("message") is None else str(err.get("message")))
            else:
                a.error_code.append(None)
                a.error_message.append(None)
            choice = None
            body = r.body
            p, c, k, t = usage_counts(body)
            a.prompt_tokens.append(p)
            a.completion_tokens.append(c)
            a.cached_tokens.append(k)
            a.reasoning_tokens.append(t)
            if body is not None:
                choices = body.get("choices") if isinstance(body, Mapping) else None
                if choices:
                    choice = choices[0]
                elif isinstance(body, Mapping) and "data" in body:
                    # An embeddings answer: the vector stands in the content column.
                    vec = embedding_of(body)
                    choice = {"message": {"content": vec}, "finish_reason": "stop" if vec is not None else None}
            if choice is not None:
                msg = choice.get("message") or {}
                content = msg.get("content")
                content = content if content is None or isinstance(content, (str, np.ndarray)) else str(content)
                a.content.append(content)
                a.refusal.append(msg.get("refusal"))
                a.finish_reason.append(choice.get("finish_reason"))
                a.has_choice.append(True)
                a.ok.append(
                    err is None and content is not None and msg.get("refusal") is None
                    and choice.get("finish_reason") == "stop" and (r.status_code is None or r.status_code < 400)
                )
            else:
                a.content.append(None)
                a.refusal.append(None)
                a.finish_reason.append(None)
                a.has_choice.append(False)
                a.ok.append(False)
        return a


for _name in _ANSWER_FIELDS:
    setattr(Answers, _name, _answer_column(_name))
del _name
