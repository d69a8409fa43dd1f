"""Request lines and their cache keys, spliced from a body serialized once.

A ``map`` call's requests share everything but their custom_id and a few
values (the user text, a per-row system text). :class:`LineTemplate`
serializes the shared body once, with markers where those values go, and
splices each row's values in with one bytes ``%`` format: a line is byte for
byte what :meth:`~pdbatch.core.records.Request.to_line` writes for the same
body, and its hash is what :func:`~pdbatch.core.records.request_hash` gives,
at a fraction of the cost. This is the one writer of request lines: ``map``
on every backend and ``to_batch_file`` use it.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import orjson

from .records import Request, key_prefix, request_hash

__all__ = ["LineTemplate"]

_SORT = orjson.OPT_SORT_KEYS
_ID = "\x00pdbatch:custom_id\x00"


def slot(k: int) -> str:
    """The marker that stands for value ``k`` in a body given to :meth:`LineTemplate.build`."""
    return f"\x00pdbatch:slot:{k}\x00"


def _pieces(data: bytes, marks: Sequence[str]) -> Optional[List[bytes]]:
    """``data`` cut at each of ``marks`` (serialized, present once, in order): the bytes around them; None otherwise."""
    encoded = [orjson.dumps(m) for m in marks]
    at = [data.find(m) for m in encoded]
    if any(data.count(m) != 1 for m in encoded) or at != sorted(at):
        return None
    pieces, start = [], 0
    for m, i in zip(encoded, at):
        pieces.append(data[start:i])
        start = i + len(m)
    pieces.append(data[start:])
    return pieces


def _format(pieces: List[bytes]) -> bytes:
    """A bytes ``%`` format that puts one value between each two ``pieces``."""
    return b"%s".join(p.replace(b"%", b"%%") for p in pieces)


class LineTemplate:
    """Request lines (and their request hashes) that share everything but a custom_id and a few values.

    Use :meth:`build`, which returns None when the body cannot be spliced
    (then serialize each :class:`~pdbatch.core.records.Request` whole).
    ``t.line(custom_id, values)`` gives the JSONL line (with its newline) of
    one request; ``t.hash(values)`` its cache key; ``t.encode(custom_id,
    values)`` both at once.

    Examples
    --------
    >>> from pdbatch.core.records import CHAT_URL, request_hash
    >>> body = {"model": "m", "messages": [{"role": "user", "content": LineTemplate.slot(0)}]}
    >>> t = LineTemplate.build(CHAT_URL, body, 1)
    >>> req = Request("7", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    >>> t.line("7", ("hi",)) == req.to_line(), t.hash(("hi",)) == request_hash(req)
    (True, True)
    >>> t.encode("7", ("hi",)) == (req.to_line(), request_hash(req))
    True
    """

    __slots__ = ("line", "hash", "encode")
    slot = staticmethod(slot)

    def __init__(self, line_format: bytes, hash_pieces: List[bytes], slots: int) -> None:
        dumps, blake = orjson.dumps, hashlib.blake2b

        def canonical(v: Any) -> bytes:
            return dumps(v, option=_SORT)

        # What comes before the first value is hashed once; each row's hash goes on from a copy of that state.
        start = blake(hash_pieces[0], digest_size=16)
        if slots == 1:  # the common shape, without building an argument list per line
            suffix = hash_pieces[1]
            self.line = lambda custom_id, values: line_format % (dumps(custom_id), dumps(values[0]))

            def hash_one(values) -> str:
                h = start.copy()
                h.update(canonical(values[0]))
                h.update(suffix)
                return h.hexdigest()

            self.hash = hash_one

            def encode_one(custom_id, values) -> Tuple[bytes, str]:
                value = values[0]
                text = dumps(value)  # a string's JSON is its canonical form too: serialized once for both
                h = start.copy()
                h.update(text if type(value) is str else canonical(value))
                h.update(suffix)
                return line_format % (dumps(custom_id), text), h.hexdigest()

            self.encode = encode_one
        else:
            self.line = lambda custom_id, values: line_format % (dumps(custom_id), *map(dumps, values))
            rest = _format([b""] + hash_pieces[1:])  # every value, with what follows each

            def hash_many(values) -> str:
                h = start.copy()
                h.update(rest % tuple(map(canonical, values)))
                return h.hexdigest()

            self.hash = hash_many
            self.encode = lambda custom_id, values: (self.line(custom_id, values), hash_many(values))

    @classmethod
    def build(cls, url: str, body: Mapping[str, Any], slots: int, provider: str = "") -> Optional["LineTemplate"]:
        """A template from a body holding the markers ``slot(0)`` ... ``slot(slots - 1)`` in that order.

        ``provider`` goes into the hashes as :func:`~pdbatch.core.records.request_hash` puts it.
        """
        marks = [slot(k) for k in range(slots)]
        line = _pieces(Request(_ID, body, url).to_line(), [_ID] + marks)
        key = _pieces(key_prefix(provider, url) + orjson.dumps(body, option=_SORT), marks)
        if line is None or key is None:
            return None
        return cls(_format(line), key, slots)


def encode_one(custom_id: str, body: Mapping[str, Any], url: str, provider: str = "") -> Tuple[bytes, str]:
    """The line and request hash of one request serialized whole (the fallback of :class:`LineTemplate`)."""
    req = Request(custom_id, body, url)
    return req.to_line(), request_hash(req, provider)
