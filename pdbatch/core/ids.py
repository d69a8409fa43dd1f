"""custom_id from the index, and the checks that keep answers on the right rows.

A request's ``custom_id`` is its row's index label turned into a string; a
MultiIndex label joins its parts with :data:`SEP`. Output files come back in
any order, so results are joined by custom_id only, through :func:`positions`.
Every custom_id must be non-empty and encodable as UTF-8 (no lone surrogates);
:func:`custom_ids` refuses labels that break this before anything is sent.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import pandas as pd

from ..errors import DuplicateIdError, EmptyIdError, TemplateError

__all__ = ["SEP", "custom_ids", "check_unique", "unique_ids", "positions"]

#: Separator between the parts of a MultiIndex label in a custom_id.
SEP = "|"
#: Labels checked per join in :func:`check_ids` (bounds the memory of the check).
_CHUNK = 65536


def _level_strings(index: pd.Index) -> List[str]:
    if isinstance(index, pd.RangeIndex):
        return [str(i) for i in range(index.start, index.stop, index.step)]
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


def custom_ids(index: pd.Index) -> List[str]:
    """Return the custom_id of every row, in row order.

    Parameters
    ----------
    index : pandas.Index
        The frame's index. A MultiIndex label's parts are joined by ``SEP``.

    Returns
    -------
    list of str

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
    if isinstance(index, pd.MultiIndex):
        levels = [_level_strings(index.get_level_values(i)) for i in range(index.nlevels)]
        ids = [SEP.join(parts) for parts in zip(*levels)]
    else:
        ids = _level_strings(index)
    if not isinstance(index, pd.RangeIndex) and index.dtype.kind not in "biufcmM":
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


def unique_ids(index: pd.Index) -> List[str]:
    """:func:`custom_ids` of ``index``, checked by :func:`check_unique`.

    A ``RangeIndex`` is unique by construction, so its check is skipped.

    Examples
    --------
    >>> unique_ids(pd.RangeIndex(3))
    ['0', '1', '2']
    """
    ids = custom_ids(index)
    if not isinstance(index, pd.RangeIndex):
        check_unique(ids)
    return ids


def positions(ids: Iterable[str]) -> Dict[str, int]:
    """Map each custom_id to its row position (the join key of every result)."""
    return {cid: i for i, cid in enumerate(ids)}
