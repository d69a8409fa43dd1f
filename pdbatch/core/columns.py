"""Answer columns kept compact: Arrow arrays where the values allow, object arrays where they do not.

Parsed JSON answers are Python objects: a million rows of ``{"categories":
[...], "summary": "..."}`` are some 300 MB of small lists and strings. A
:data:`Column` holds one key's values over some rows as an Arrow array when
every value fits one simple Arrow type (text, integers, floats, booleans, or a
list of text, integers or booleans) and as an object array otherwise (dicts,
mixed types, lists of floats). Each shard's answers are made compact as soon
as they are parsed, so only one shard's Python objects exist at a time; the
join turns the columns into pandas columns with the dtypes the object path
gives (see :func:`to_series`).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa

from .memory import give_back

__all__ = ["Column", "compact", "concat", "take", "merge", "nulls", "objects", "spread", "first_present", "to_series",
           "content_hashes", "gc_paused", "paused_steps"]

#: One key's values over some rows.
Column = Union[pa.ChunkedArray, np.ndarray]

_SCALARS = (pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.null())
_ITEMS = (pa.string(), pa.int64(), pa.bool_())
#: Texts hashed at a time by :func:`content_hashes` (bounds the Python strings made at once).
_STEP = 65536
#: Columns of lists this long give back what the chunks made into lists held (a few ms each time) ...
GIVE_BACK_LISTS = 65536
#: ... once at least this many rows were made since the last time (however small the chunks: few calls).
GIVE_BACK_EVERY = 32768
#: Rows per run (on average) from which :func:`take` slices the column instead of gathering a copy.
RUN_ROWS = 1024


def _simple(t: pa.DataType) -> bool:
    """Whether values of Arrow type ``t`` come back as the same Python values (a float list would not: 1 -> 1.0)."""
    return t in _SCALARS or (pa.types.is_list(t) and t.value_type in _ITEMS)


def compact(values: np.ndarray) -> Column:
    """``values`` (an object array of parsed JSON values, None for missing) as Arrow when that is lossless."""
    try:
        arr = pa.array(values, from_pandas=False)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError):
        return values
    if not _simple(arr.type):
        return values
    if arr.type == pa.string():  # as pandas keeps text: the column becomes a pandas one as it is, not converted
        arr = arr.cast(pa.large_string())
    return pa.chunked_array([arr])


def _arrow(col: Column) -> bool:
    return isinstance(col, pa.ChunkedArray)


def objects(col: Column) -> np.ndarray:
    """``col`` as an object array of Python values."""
    if not _arrow(col):
        return col
    out = np.empty(len(col), dtype=object)
    out[:] = col.to_pylist() if len(col) else []
    return out


def _common(cols: List[Column]) -> Optional[pa.DataType]:
    """The one Arrow type of ``cols`` (null-typed ones fit any), or None when they cannot be one Arrow column."""
    if not all(_arrow(c) for c in cols):
        return None
    types = {c.type for c in cols} - {pa.null()}
    if len(types) > 1:
        return None
    return types.pop() if types else pa.null()


def concat(cols: List[Column]) -> Column:
    """One column of several, in order (Arrow when they share a type, else objects)."""
    t = _common(cols)
    if t is None:
        return np.concatenate([objects(c) for c in cols]) if cols else np.zeros(0, dtype=object)
    return pa.chunked_array([ch for c in cols for ch in (c.cast(t) if c.type != t else c).chunks], type=t)


def nulls(n: int) -> Column:
    return pa.chunked_array([pa.nulls(n)])


def _identity(rows: np.ndarray, n: int) -> bool:
    """Whether ``rows`` is ``0, 1, ..., n - 1`` (strictly increasing from 0 to n - 1, n of them)."""
    return len(rows) == n and (n == 0 or (rows[0] == 0 and rows[-1] == n - 1 and bool((rows[1:] > rows[:-1]).all())))


def _runs(rows: np.ndarray) -> Optional[List[Tuple[int, int]]]:
    """``rows`` as ``(first position, length)`` runs of consecutive positions (first -1: a run of missing rows).

    None when the runs are short (fewer than :data:`RUN_ROWS` rows each on
    average): a gather is then cheaper than that many slices.
    """
    n = len(rows)
    if n < RUN_ROWS:
        return None
    missing = rows < 0
    same_run = ((np.diff(rows) == 1) & ~missing[:-1]) | (missing[1:] & missing[:-1])
    starts = np.r_[0, np.flatnonzero(~same_run) + 1]
    if len(starts) * RUN_ROWS > n:
        return None
    lengths = np.diff(np.r_[starts, n])
    return [(-1 if missing[s] else int(rows[s]), int(k)) for s, k in zip(starts.tolist(), lengths.tolist())]


def take(col: Column, rows: np.ndarray) -> Column:
    """The values at positions ``rows`` (-1: missing); ``col`` itself when that is every row in order.

    Rows made of long runs of consecutive positions (the shards of a job,
    stored out of order) give slices of ``col``, no copy; anything else is
    gathered into a new column.
    """
    if _identity(rows, len(col)):  # a million rows' copy saved (the join's usual case)
        return col
    if not _arrow(col):
        out = np.full(len(rows), None, dtype=object)
        have = rows >= 0
        out[have] = col[rows[have]]
        return out
    runs = _runs(rows)
    if runs is not None and all(first + k <= len(col) for first, k in runs):  # else the gather says which row is out
        return pa.chunked_array([piece for first, k in runs
                                 for piece in (col.slice(first, k).chunks if first >= 0 else [pa.nulls(k, col.type)])],
                                type=col.type)
    idx = pa.array(rows, type=pa.int64(), mask=rows < 0)
    return col.take(idx)


def merge(n: int, hit: np.ndarray, hits: Column, misses: Column) -> Column:
    """A column of ``n`` rows: ``hits`` where ``hit`` is True, ``misses`` elsewhere, each in order."""
    if len(hits) == n:  # every row a hit
        return hits
    src = np.empty(n, dtype=np.int64)
    nh = int(hit.sum())
    src[hit] = np.arange(nh)
    src[~hit] = nh + np.arange(n - nh)
    return take(concat([hits, misses]), src)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while answers are decoded or turned into Python objects.

    Decoding makes a few objects per answer, none in a reference cycle, and
    every one of them survives; with the collector on, its repeated passes over
    the growing heap cost more than the decoding itself (about 40% of a
    200,000-row JSON join). The previous state is restored on exit.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def paused_steps(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, each made with the cyclic collector paused; it may run while the caller holds an item.

    For loops that make a few objects per row that reference counting frees
    (request lines, their tuples): on a large heap (a notebook's) the
    collector's passes cost more than the loop itself.
    """
    while True:
        with gc_paused():
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


def spread(col: Column, rows: np.ndarray, n: int, blank: np.ndarray) -> Column:
    """``col`` (one value per entry of ``rows``) placed at those row positions of ``n`` rows; ``blank`` rows missing."""
    src = np.full(n, -1, dtype=np.int64)
    src[rows] = np.arange(len(rows))
    src[blank] = -1
    return take(col, src)


def first_present(col: Column) -> int:
    """Position of the first present value (0 when there is none)."""
    if _arrow(col):
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        return int(np.argmax(valid)) if len(valid) else 0
    return int(np.argmax(np.not_equal(col, None))) if len(col) else 0


def _lists(arr: pa.Array) -> np.ndarray:
    """A list array as an object array of Python lists whose equal text items are one shared object."""
    n = len(arr)
    out = np.full(n, None, dtype=object)
    if not n:
        return out
    flat = arr.flatten()
    if pa.types.is_string(flat.type):
        enc = flat.dictionary_encode()
        words = np.array(enc.dictionary.to_pylist() + [None], dtype=object)
        idx = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)
        items = words[idx].tolist()
    else:
        items = flat.to_pylist()
    offsets = arr.offsets.to_numpy(zero_copy_only=False)
    offsets = (offsets - offsets[0]).tolist()
    with gc_paused():  # a list per row: with the collector on, its passes cost 3-4x the building
        if not arr.null_count:  # every row a list: built in place, no gather
            return np.fromiter(map(items.__getitem__, map(slice, offsets[:-1], offsets[1:])), dtype=object, count=n)
        rows = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False)).tolist()
        out[rows] = np.fromiter((items[offsets[r]:offsets[r + 1]] for r in rows), dtype=object, count=len(rows))
    return out


def to_series(col: Union[pa.ChunkedArray, List[pa.Array]], index: pd.Index, name: Any) -> pd.Series:
    """A pandas column from an Arrow one, with the dtype the object path gives the same values.

    Text takes pandas' default string dtype; integers and booleans beside
    gaps ``Int64`` / ``boolean``; lists become Python lists (an object
    column, as pandas keeps lists) — their text items shared, so a million
    rows of three labels hold three strings, not three million.

    ``col`` may be a list of its chunks, which is then emptied as they are
    used: each chunk of lists is let go once its rows are Python lists (a
    million rows' Arrow lists are not all held until the last list is made).
    """
    chunks = col if isinstance(col, list) else col.chunks
    t = chunks[0].type if chunks else col.type
    if pa.types.is_list(t):  # a chunk at a time: the chunks are not joined into one copy first
        lists, start = np.empty(sum(len(c) for c in chunks), dtype=object), 0
        col = None  # the caller's list (if given) holds the chunks: each goes below once made into lists
        trim, made = len(lists) >= GIVE_BACK_LISTS, 0
        while chunks:
            chunk = chunks.pop(0)
            lists[start:start + len(chunk)] = _lists(chunk)
            start, made = start + len(chunk), made + len(chunk)
            chunk = None
            if trim and made >= GIVE_BACK_EVERY:  # what the chunks held goes back, not kept beside the new lists
                give_back()
                made = 0
        return pd.Series(lists, index=index, name=name, dtype=object, copy=False)  # pandas 3 copies arrays unless told
    if isinstance(col, list):
        col = pa.chunked_array(col, type=t)
    if t == pa.null():
        return pd.Series(np.full(len(col), None, dtype=object), index=index, name=name, dtype=object, copy=False)
    if col.null_count and t in (pa.int64(), pa.bool_()):
        dtype = "Int64" if t == pa.int64() else "boolean"
        return pd.Series(pd.array(col, dtype=pd.ArrowDtype(t)).astype(dtype), index=index, name=name)
    s = col.to_pandas()
    s.index, s.name = index, name
    return s


def content_hashes(texts: Union[list, pa.ChunkedArray, pa.Array]) -> np.ndarray:
    """64-bit hashes of answer texts (a list, or Arrow hashed a slice at a time)."""
    if isinstance(texts, list):
        return pd.util.hash_array(np.array(texts, dtype=object), categorize=False)
    out = np.empty(len(texts), dtype=np.uint64)
    for start in range(0, len(texts), _STEP):
        part = texts.slice(start, _STEP).to_pylist()
        out[start:start + len(part)] = pd.util.hash_array(np.array(part, dtype=object), categorize=False)
    return out
