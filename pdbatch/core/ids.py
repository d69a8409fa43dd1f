"""custom_id from the index, and the checks that keep answers on the right rows.

A request's ``custom_id`` is its row's index label turned into a string; a
MultiIndex label joins its parts with :data:`SEP`. Output files come back in
any order, so results are joined by custom_id only, through :func:`positions`.
Every custom_id must be non-empty and encodable as UTF-8 (no lone surrogates);
:func:`custom_ids` refuses labels that break this before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Iterator, List, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DuplicateIdError, EmptyIdError, TemplateError

__all__ = ["SEP", "RangeIds", "custom_ids", "check_unique", "unique_ids", "ids_arrow", "row_positions"]

#: Separator between the parts of a MultiIndex label in a custom_id.
SEP = "|"
#: Labels checked per join in :func:`check_ids` (bounds the memory of the check).
_CHUNK = 65536


#: How a number is written by ``str(int)``: no sign but a minus, no leading zero; at most 18 digits (fits int64).
_NUMBER = r"^(0|-?[1-9][0-9]{0,17})$"


class RangeIds(Sequence):
    """The custom_ids of a ``RangeIndex``: ``str(start + k * step)`` for ``k < n``, made when asked, none kept.

    A million rows' ids as Python strings are some 60 MiB that a job would
    hold from its start to its join; these are computed from three numbers,
    and an id is looked up by reading the number it names (:meth:`positions`).
    It compares equal to the list of the same ids.

    Examples
    --------
    >>> ids = RangeIds(10, 2, 3)
    >>> list(ids), ids[1], ids[-1], ids[1:], len(ids), "12" in ids, "13" in ids
    (['10', '12', '14'], '12', '14', ['12', '14'], 3, True, False)
    >>> ids.positions(pa.array(["14", "13", "010", "x", None, "10"])).tolist()
    [2, -1, -1, -1, -1, 0]
    """

    __slots__ = ("start", "step", "n")

    def __init__(self, start: int, step: int, n: int) -> None:
        self.start, self.step, self.n = int(start), int(step), int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: Union[int, slice]) -> Union[str, List[str]]:
        if isinstance(item, slice):
            return [str(self.start + k * self.step) for k in range(*item.indices(self.n))]
        k = item + self.n if item < 0 else item
        if not 0 <= k < self.n:
            raise IndexError(f"custom_id {item} out of range for {self.n} rows")
        return str(self.start + k * self.step)

    def __iter__(self) -> Iterator[str]:
        return map(str, range(self.start, self.start + self.n * self.step, self.step))

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and self.positions(pa.array([cid]))[0] >= 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RangeIds):  # the same ids: same count, first and (from two ids on) step
            return self.n == other.n and (self.n == 0 or (self.start == other.start
                                                          and (self.n == 1 or self.step == other.step)))
        if isinstance(other, (list, tuple)):
            return len(other) == self.n and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"RangeIds(start={self.start}, step={self.step}, n={self.n})"

    def arrow(self) -> pa.Array:
        """Every id, as an Arrow string array (no Python string each)."""
        return pa.array(np.arange(self.n, dtype=np.int64) * self.step + self.start).cast(pa.string())

    def positions(self, cid: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
        """The row of each of ``cid`` (Arrow strings), -1 for one that is not an id of these rows."""
        if isinstance(cid, pa.ChunkedArray):  # a chunk at a time: no combined copy of a million ids
            return np.concatenate([np.zeros(0, dtype=np.int64)] + [self.positions(c) for c in cid.chunks])
        if cid.type != pa.string():
            cid = cid.cast(pa.string())
        number = pc.fill_null(pc.match_substring_regex(cid, _NUMBER), False)
        value = pc.cast(pc.if_else(number, cid, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        k = (value - self.start) // self.step
        ok = number.to_numpy(zero_copy_only=False) & (k >= 0) & (k < self.n) & (value == self.start + k * self.step)
        return np.where(ok, k, -1).astype(np.int64)


def ids_arrow(ids: Sequence) -> pa.Array:
    """``ids`` (a list of custom_ids, a :class:`RangeIds` or already Arrow strings) as an Arrow string array."""
    if isinstance(ids, pa.Array):
        return ids
    return ids.arrow() if isinstance(ids, RangeIds) else pa.array(ids, type=pa.string())


def row_positions(ids: Sequence, cid: Union[pa.Array, pa.ChunkedArray, List[str]]) -> np.ndarray:
    """The position in ``ids`` of each of ``cid`` (-1 for one not there); ``ids`` holds no id twice."""
    if isinstance(cid, list):
        cid = pa.array(cid, type=pa.string())
    if isinstance(ids, RangeIds):
        return ids.positions(cid)
    return pc.fill_null(pc.index_in(cid, value_set=ids_arrow(ids)), -1).to_numpy().astype(np.int64)


def _level_strings(index: pd.Index) -> List[str]:
    if isinstance(index, pd.DatetimeIndex):
        # Timestamps render as their ISO text; midnight-only indexes as plain dates.
        out = index.astype(str).tolist()
    elif index.dtype == object:
        # str() per label keeps 1 and "1" colliding, as they would in the output file.
        return [str(v) for v in index.tolist()]
    else:
        out = index.astype(str).tolist()
    # A missing label (NaN, NaT, None) still needs a string id.
    return [v if isinstance(v, str) else str(v) for v in out]


def custom_ids(index: pd.Index) -> Union[List[str], RangeIds]:
    """Return the custom_id of every row, in row order (for a ``RangeIndex``, a :class:`RangeIds`).

    Parameters
    ----------
    index : pandas.Index
        The frame's index. A MultiIndex label's parts are joined by ``SEP``.

    Returns
    -------
    list of str, or RangeIds
        A ``RangeIndex`` gives a :class:`RangeIds`, which makes each id when
        asked and equals the list of the same ids.

    Raises
    ------
    EmptyIdError
        A label gives an empty custom_id (see :func:`check_ids`).
    TemplateError
        A label holds a lone surrogate, which cannot be sent as UTF-8.

    Examples
    --------
    >>> custom_ids(pd.Index([3, 1, 2]))
    ['3', '1', '2']
    >>> custom_ids(pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
    ['a|1', 'b|2']
    >>> custom_ids(pd.DatetimeIndex(["2024-01-01", "2024-01-02"]))
    ['2024-01-01', '2024-01-02']
    """
    if isinstance(index, pd.RangeIndex):
        return RangeIds(index.start, index.step, len(index))
    if isinstance(index, pd.MultiIndex):
        levels = [_level_strings(index.get_level_values(i)) for i in range(index.nlevels)]
        ids = [SEP.join(parts) for parts in zip(*levels)]
    else:
        ids = _level_strings(index)
    if index.dtype.kind not in "biufcmM":
        check_ids(ids, index)
    return ids


def check_ids(ids: List[str], index: pd.Index) -> None:
    """Raise if a custom_id is empty or holds a lone surrogate (``ids`` made from ``index``).

    The check is one containment test and one C-level ASCII scan; only
    non-ASCII ids are joined and encoded per chunk, and the offending row is
    looked for once a chunk fails.

    Examples
    --------
    >>> check_ids(["a", "b"], pd.Index(["a", "b"]))
    >>> check_ids(["a", ""], pd.Index(["a", ""]))
    Traceback (most recent call last):
    ...
    pdbatch.errors.EmptyIdError: the index label '' at row 1 turns into an empty custom_id, ...
    """
    if "" in ids:
        pos = ids.index("")
        raise EmptyIdError(index[pos:pos + 1].tolist()[0], pos)
    if all(map(str.isascii, ids)):
        return
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        joined = "".join(chunk)
        if joined.isascii():
            continue
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            pos = start + next(i for i, cid in enumerate(chunk) if not _encodable(cid))
            label = index[pos:pos + 1].tolist()[0]
            raise TemplateError(
                f"the index label {label!r} at row {pos} holds a lone surrogate, which cannot be sent as "
                f"UTF-8 in the request's custom_id. Call df.reset_index() to use a plain row number, or clean the "
                f"labels, e.g. df.index = df.index.map(lambda s: str(s).encode('utf-8', 'replace').decode())"
            ) from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unique(ids: List[str]) -> None:
    """Raise :class:`~pdbatch.errors.DuplicateIdError` if any custom_id repeats.

    Labels that differ as Python values but not as strings (``1`` and ``"1"``)
    collide, because the answer could not be joined back to one row.

    Examples
    --------
    >>> check_unique(["a", "b"])
    >>> check_unique(["1", "2", "1"])
    Traceback (most recent call last):
    ...
    pdbatch.errors.DuplicateIdError: the index must be unique once turned into strings ...
    """
    s = pd.Series(ids, dtype=object)
    dup = s.duplicated(keep="first")
    if dup.any():
        repeated = pd.unique(s[dup])
        raise DuplicateIdError([str(d) for d in repeated[:10]], len(repeated))


def unique_ids(index: pd.Index) -> Union[List[str], RangeIds]:
    """:func:`custom_ids` of ``index``, checked by :func:`check_unique`.

    A ``RangeIndex`` is unique by construction, so its check is skipped.

    Examples
    --------
    >>> unique_ids(pd.RangeIndex(3)) == ['0', '1', '2']
    True
    """
    ids = custom_ids(index)
    if not isinstance(index, pd.RangeIndex):
        check_unique(ids)
    return ids
