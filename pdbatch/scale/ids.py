"""custom_ids unique across a Dask collection's partitions, checked without gathering the index.

Each partition runs as its own job, whose custom_ids are its index labels as
strings; the pandas path refuses a partition whose own labels repeat. Across
partitions:

* **Known divisions** (sorted, strictly increasing: ``ddf.known_divisions``)
  put each label value in one partition only, and different values of one
  sortable type give different strings, so nothing more is checked and
  nothing extra is computed. A partition whose own labels repeat is refused
  by its own task, before it sends anything; the other partitions still run.
* **Unknown divisions** (``read_parquet`` without an index, ``from_pandas(...,
  sort=False)``, ``clear_divisions()``...): the graph gets one more step that
  every partition's task waits for: each partition's custom_ids are hashed
  (128 bits, 16 bytes a row; the index alone is read) and one task looks for
  a hash seen twice. A repeat, within a partition or across, refuses the
  whole compute before any partition sends a request; the error names the
  partitions and rows. Cost: one pass over the index, and the hashes of every
  row in one task's memory (160 MB for 10 million rows).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..core.ids import custom_ids
from ..errors import DuplicateIdError, InputError

__all__ = ["divisions_unique", "unique_ids_check", "CrossPartitionDuplicateError"]

_KEYS = ("pdbatch-ids-0001", "pdbatch-ids-0002")  # pandas' hash_array takes 16-character keys
_SHOWN = 5


class CrossPartitionDuplicateError(DuplicateIdError):
    """Index labels of a Dask collection give the same custom_id twice (in one partition or two)."""

    def __init__(self, pairs: Sequence[tuple], total: int):
        self.duplicates = [f"partition {p} row {r} = partition {q} row {s}" for p, r, q, s in pairs]
        shown = "; ".join(self.duplicates[:_SHOWN]) + (f"; and {total - _SHOWN} more" if total > _SHOWN else "")
        InputError.__init__(
            self,
            f"the index labels become each request's custom_id and must be unique across the whole Dask "
            f"collection, but {total} label(s) repeat ({shown}); nothing was sent. Give every row its own label, "
            f"e.g. ddf = ddf.set_index('id') on a column of unique ids (sorted=True if the data is sorted by it, "
            f"which also lets pdbatch skip this check), or read_parquet(..., index='id', calculate_divisions=True); "
            f"note that reset_index() on a Dask frame numbers each partition from 0")


def divisions_unique(divisions: Sequence[Any]) -> bool:
    """Whether known divisions keep every label value in one partition (strictly increasing).

    Examples
    --------
    >>> divisions_unique((0, 5, 10)), divisions_unique((0, 5, 5, 10)), divisions_unique((None, None))
    (True, False, False)
    """
    if any(d is None for d in divisions):
        return False
    inner = list(divisions[:-1])  # the last division closes the last partition: it may equal the one before
    try:
        return all(a < b for a, b in zip(inner, inner[1:])) and (len(divisions) < 2 or divisions[-2] <= divisions[-1])
    except TypeError:
        return False


def id_hashes(index: pd.Index) -> pd.DataFrame:
    """Two 64-bit hashes of each row's custom_id (one row per label; runs on a partition's index)."""
    ids = np.array(list(custom_ids(index)), dtype=object)
    return pd.DataFrame({"a": pd.util.hash_array(ids, categorize=False, hash_key=_KEYS[0]),
                         "b": pd.util.hash_array(ids, categorize=False, hash_key=_KEYS[1])})


def check_hashes(parts: List[pd.DataFrame]) -> bool:
    """Raise :class:`CrossPartitionDuplicateError` when two rows of ``parts`` share both hashes; else True."""
    sizes = [len(p) for p in parts]
    if not sum(sizes):
        return True
    a = np.concatenate([p["a"].to_numpy() for p in parts])
    b = np.concatenate([p["b"].to_numpy() for p in parts])
    order = np.lexsort((b, a))
    same = (a[order][1:] == a[order][:-1]) & (b[order][1:] == b[order][:-1])
    hits = np.flatnonzero(same)
    if not len(hits):
        return True
    starts = np.cumsum([0] + sizes)

    def where(flat: int) -> tuple:
        part = int(np.searchsorted(starts, flat, side="right") - 1)
        return part, int(flat - starts[part])

    first, second = np.minimum(order[hits], order[hits + 1]), np.maximum(order[hits], order[hits + 1])
    shown = np.argsort(first, kind="stable")[:_SHOWN]  # in row order, so the message is the same on every run
    pairs = [where(int(first[k])) + where(int(second[k])) for k in shown]
    raise CrossPartitionDuplicateError(pairs, len(hits))


def unique_ids_check(collection: Any) -> Optional[Any]:
    """None when known divisions settle uniqueness; else the Delayed check every partition's task must wait for."""
    if collection.known_divisions and divisions_unique(collection.divisions):
        return None
    import dask

    meta = pd.DataFrame({"a": pd.Series([], dtype="uint64"), "b": pd.Series([], dtype="uint64")})
    hashes = collection.index.map_partitions(id_hashes, meta=meta, token="pdbatch-id-hashes")
    return dask.delayed(check_hashes, pure=True)(hashes.to_delayed())
