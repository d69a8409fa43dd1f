"""custom_id from the index, and the checks that keep answers on the right rows.

A request's ``custom_id`` is its row's index label turned into a string; a
MultiIndex label joins its parts with :data:`SEP`. Output files come back in
any order, so results are joined by custom_id only, through :func:`positions`.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import pandas as pd

from ..errors import DuplicateIdError

__all__ = ["SEP", "custom_ids", "check_unique", "unique_ids", "positions"]

#: Separator between the parts of a MultiIndex label in a custom_id.
SEP = "|"


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
        return [SEP.join(parts) for parts in zip(*levels)]
    return _level_strings(index)


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
