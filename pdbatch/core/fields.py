"""Answers to fields: parse each usable answer's text, and spread JSON objects into one array per key.

This is the ``parse`` stage between the answers and the join. It can run
early: :func:`preparse` parses one shard's answers as soon as the shard is
collected (while later shards still run) and keeps the result as
:class:`Parsed` columns; :func:`parse_usable`, called by the join, takes the
rows it finds there and parses only the rest. Each answer is parsed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .answers import Answers
from .columns import Column, compact, concat, content_hashes, first_present, gc_paused, merge, nulls, take
from .parsing import as_is, one_by_one

__all__ = ["Parsed", "preparse", "parse_usable", "expand", "gc_paused"]


def expand(values: np.ndarray, columns: Optional[List[str]]) -> Dict[str, np.ndarray]:
    """One object array per top-level key of the parsed dicts (``columns`` first, then keys as met).

    Examples
    --------
    >>> cols = expand(np.array([{"a": 1}, None, {"a": 2, "b": 3}], dtype=object), ["b"])
    >>> {k: v.tolist() for k, v in cols.items()}
    {'b': [None, None, 3], 'a': [1, None, 2]}
    """
    n = len(values)
    present = np.flatnonzero([type(v) is dict for v in values.tolist()]) if n else np.zeros(0, dtype=np.int64)
    objs = values[present].tolist()
    keys = dict.fromkeys(columns or ())
    for shape in dict.fromkeys(map(tuple, objs)):  # each distinct key sequence, in row order
        keys.update(dict.fromkeys(shape))
    out = {}
    for name in keys:
        try:  # every answer has the key (strict schemas): no default to look up
            col = [obj[name] for obj in objs]
        except KeyError:
            col = [obj.get(name) for obj in objs]
        arr = np.full(n, None, dtype=object)
        arr[present] = np.fromiter(col, dtype=object, count=len(objs))
        out[name] = arr
    return out


def _same(n: int, value: Any, dtype: Any) -> np.ndarray:
    """``n`` times ``value`` as a read-only array that holds one value (no memory per row)."""
    return np.broadcast_to(np.array(value, dtype=dtype), (n,))


def _uniform(arr: np.ndarray) -> bool:
    """Whether ``arr`` was made by :func:`_same` (every element the one stored value)."""
    return arr.ndim == 1 and arr.strides == (0,)


def _cat(arrays: List[np.ndarray]) -> np.ndarray:
    """The arrays end to end; still one stored value when they all hold the same one (see :func:`_same`)."""
    if arrays and all(_uniform(a) for a in arrays) and len({a.dtype for a in arrays}) == 1:
        values = {a[0] if a.dtype == object else a[0].item() for a in arrays if a.size}
        if len(values) <= 1:
            return _same(sum(a.size for a in arrays), values.pop() if values else 0, arrays[0].dtype)
    return np.concatenate(arrays)


@dataclass
class Parsed:
    """Answers parsed ahead of the join (see :func:`preparse`), already spread into one column per key.

    ``custom_id`` with ``origin`` (the job store's segment the answers were
    stored in) or, where that is unknown (-1), ``content_hash`` (a 64-bit
    hash of the answer's text) say which answer each row holds: the join
    uses a row only when the stored answer it joins has the same custom_id
    *and* comes from that segment (or has the same text), and parses
    anything else again. The columns are compact (:mod:`pdbatch.core.columns`).
    """

    custom_id: pa.ChunkedArray
    content_hash: np.ndarray
    columns: Dict[str, Column]
    errors: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.errors)

    def clear(self) -> None:
        """Let go of every column and array (the join does, once it has taken its rows): the record is then empty."""
        self.columns.clear()
        self.custom_id = pa.chunked_array([], type=pa.string())
        self.content_hash = np.zeros(0, dtype=np.uint64)
        self.errors = np.zeros(0, dtype=object)
        self.origin = np.zeros(0, dtype=np.int64)

    @classmethod
    def concat(cls, parts: List["Parsed"]) -> Optional["Parsed"]:
        """One record of several (None for none); a key one part lacks is missing in its rows."""
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        keys = dict.fromkeys(k for p in parts for k in p.columns)
        # The parts' chunks, not a copy: the join takes them in row order as slices (see columns.take).
        columns = {k: concat([p.columns[k] if k in p.columns else nulls(len(p)) for p in parts]) for k in keys}
        return cls(pa.chunked_array([c for p in parts for c in p.custom_id.chunks], type=pa.string()),
                   _cat([p.content_hash for p in parts]), columns,
                   _cat([p.errors for p in parts]), _cat([p.origin for p in parts]))


def _many(parse_text: Callable[[str], tuple]) -> Callable[[list], tuple]:
    return getattr(parse_text, "many", None) or (lambda texts: one_by_one(parse_text, texts))


#: Answers :func:`preparse` decodes at a time: a shard's decoded objects (several per answer) are not all alive
#: at once, only a piece's, beside what the job holds.
PARSE_ROWS = 4_096


def _parse_pieces(content: pa.ChunkedArray, parse_text: Callable[[str], tuple],
                  columns: Optional[List[str]]) -> Tuple[Dict[str, Column], list]:
    """``(columns, errors)`` of the answers' texts, decoded :data:`PARSE_ROWS` at a time (see :func:`preparse`).

    Each column is then made one buffer (held for the whole job: made of
    pieces, it would keep the heap's pages around the pieces' freed objects).
    """
    many = _many(parse_text)
    parts: List[Tuple[int, Dict[str, Column]]] = []
    errors: list = []
    for start in range(0, len(content), PARSE_ROWS):
        texts = content.slice(start, PARSE_ROWS).to_pylist()
        values, errs = many(texts)
        spread_out = expand(np.fromiter(values, dtype=object, count=len(texts)), columns)
        parts.append((len(texts), {k: compact(v) for k, v in spread_out.items()}))
        errors += errs
        texts = values = spread_out = None
    keys = dict.fromkeys(k for _n, part in parts for k in part)
    cols = {k: concat([part[k] if k in part else nulls(n) for n, part in parts]) for k in keys}
    return {k: pa.chunked_array([c.combine_chunks()]) if isinstance(c, pa.ChunkedArray) else c
            for k, c in cols.items()}, errors


def preparse(answers: Answers, parse_text: Callable[[str], tuple], columns: Optional[List[str]] = None,
             origin: Union[int, Callable[[], Optional[int]], None] = None) -> Optional[Parsed]:
    """Parse and spread the plain successes of ``answers`` now (one shard's, while later shards still run).

    Returns None when there is nothing to parse (text and embedding answers
    are used as they are). The result goes to the join as ``parsed=``; only
    compact columns are kept, not the decoded objects nor the texts.
    ``origin`` is the job store's segment that holds ``answers``, if any
    (or a function giving it, asked once the answers are parsed, while they
    are being stored): the join then knows its rows by it and no text is hashed.
    """
    if parse_text is as_is or not len(answers):
        return None
    ok_mask = answers.arrow("ok").to_numpy(zero_copy_only=False).astype(bool)
    ok = np.flatnonzero(ok_mask)
    if not len(ok):
        return None
    cid, content = answers.arrow("custom_id"), answers.arrow("content")
    if len(ok) < len(ok_mask):
        rows = pa.array(ok, type=pa.int64())
        cid, content = cid.take(rows), content.take(rows)
    with gc_paused():
        cols, errors = _parse_pieces(content, parse_text, columns)
    cid = cid.cast(pa.string())
    if callable(origin):
        origin = origin()
    # A shard's rows share their origin, and most parse without an error: one stored value each, not one per row.
    if origin is not None and pc.count_distinct(cid).as_py() == len(ok):  # else a row may join another line
        where, hashes = _same(len(ok), origin, np.int32 if origin < 2**31 else np.int64), _same(len(ok), 0, np.uint64)
    else:
        where, hashes = _same(len(ok), -1, np.int32), content_hashes(content.to_pylist())
    errors = np.fromiter(errors, dtype=object, count=len(ok))
    if not np.not_equal(errors, None).any():
        errors = _same(len(ok), None, object)
    return Parsed(cid if isinstance(cid, pa.ChunkedArray) else pa.chunked_array([cid]), hashes, cols, errors, where)


def parse_usable(a: Answers, usable: np.ndarray, parse_text: Callable[[str], tuple], parsed: Optional[Parsed], *,
                 expand_objects: bool, columns: Optional[List[str]] = None) -> Tuple[Any, Sequence]:
    """``(values, errors)`` of the answers at positions ``usable`` of ``a``.

    With ``expand_objects`` the values are a dict of one column per key (over
    ``usable``; see :mod:`pdbatch.core.columns`), taken from ``parsed`` where
    it holds a row's answer and parsed now for the rest: ``columns`` first,
    then the other keys in the order of the first line of ``usable`` that has
    each. Without, a list of parsed values. ``parsed`` is handed over: its
    columns are emptied as they are used. The errors are a list, or with
    ``expand_objects`` an object array (None: no error), or None when no row
    has an error.
    """
    many = _many(parse_text)
    if not expand_objects:
        return many(a.take("content", usable))
    n = len(usable)
    hit = np.zeros(n, dtype=bool)
    at = np.zeros(0, dtype=np.int64)
    if parsed is not None and n and len(parsed):
        # Over every answer in stored order (no gathered copy of a million texts), then picked at ``usable``.
        cid = a.arrow("custom_id").cast(pa.string())
        if len(cid) == len(parsed) and cid.equals(parsed.custom_id):  # every answer parsed, in stored order
            pos = pa.array(np.arange(len(cid), dtype=np.int32))
        else:
            pos = pc.index_in(cid, value_set=parsed.custom_id)
        found = pc.fill_null(pos, 0).to_numpy(zero_copy_only=False)[usable]
        known = parsed.origin[found]
        hit = pos.is_valid().to_numpy(zero_copy_only=False)[usable]
        if a.origin is not None:  # the same segment holds the same answer: no text read
            hit &= (known < 0) | (a.origin[usable] == known)
        check = np.flatnonzero(hit & ((known < 0) | (a.origin is None)))
        if len(check):  # parsed where the segment is unknown: compare the texts' hashes
            hit[check] = content_hashes(a.take("content", usable[check])) == parsed.content_hash[found[check]]
        at = found[hit]
    miss = np.flatnonzero(~hit)
    values, errs = many(a.take("content", usable[miss])) if len(miss) else ([], [])
    fresh = {k: compact(v) for k, v in expand(np.fromiter(values, dtype=object, count=len(miss)), None).items()}
    keys = dict.fromkeys(columns or ())
    keys.update(dict.fromkeys(parsed.columns if parsed is not None and len(at) else ()))
    keys.update(dict.fromkeys(fresh))
    out = {}
    for key in keys:  # each of parsed's columns is let go once taken: a million rows are not held twice
        col = parsed.columns.pop(key, None) if parsed is not None else None
        hits = take(col, at) if len(at) and col is not None else nulls(len(at))
        out[key] = merge(n, hit, hits, fresh[key] if key in fresh else nulls(len(miss)))
    declared = set(columns or ())
    free = [k for k in out if k not in declared]
    if len(free) > 1:  # free keys in the order of the first line (of ``usable``) that has each
        first = {k: first_present(out[k]) for k in free}
        out = {k: out[k] for k in [*(columns or ()), *sorted(free, key=first.__getitem__)]}
    if not len(miss) and (not len(at) or (_uniform(parsed.errors) and parsed.errors[0] is None)):
        return out, None  # no row has an error (the usual): no array of a million Nones
    errors = np.full(n, None, dtype=object)
    if len(at):
        errors[hit] = parsed.errors[at]
    errors[miss] = np.fromiter(errs, dtype=object, count=len(miss))
    return out, errors
