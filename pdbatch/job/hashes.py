"""The request hash of each row of a job, held compactly.

Every answer is stored under its request hash (the cache key), so a job keeps
custom_id -> hash for each row it sent or found in the cache. A dict of a
million hex strings is some 90 MB; :class:`RowHashes` keeps the hashes as one
fixed-width byte array beside the custom_ids and looks ids up through a
pandas index built when first needed; each hash is held as its 16 raw bytes
(hex is made when a hash is asked for). The ids of a job over a ``RangeIndex``
(``"0"``, ``"1"``, ... in order) are kept as a
:class:`~pdbatch.core.ids.RangeIds`, three numbers, and looked up by the
number they name: no string is kept per row and no index is built.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa

from ..core.ids import RangeIds, ids_arrow
from ..errors import JobError

__all__ = ["RowHashes"]

#: Hex digits in a request hash (blake2b, 16 bytes).
WIDTH = 32
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[_HEX] = np.arange(16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _not_hex(value: object) -> JobError:
    return JobError(f"request hash {value!r} is not {WIDTH} hex digits: a job's hashes come from pdbatch's request "
                    "hasher or its job store, so the store (under PDBATCH_HOME) may be damaged; run the map with "
                    "cache=False to start the job afresh")


def _raw(hex_bytes: np.ndarray) -> np.ndarray:
    """``(n, 16)`` raw bytes of ``n`` hashes given as their hex digits (``(n, 32)`` ASCII codes)."""
    nibbles = _NIBBLE[hex_bytes]
    if (nibbles == 255).any():
        bad = int(np.flatnonzero((nibbles == 255).any(axis=1))[0])
        raise _not_hex(hex_bytes[bad].tobytes().decode("latin-1"))
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def _from_hex(hashes: Sequence[str]) -> np.ndarray:
    """``(n, 16)`` raw bytes of hex strings."""
    if not len(hashes):
        return np.zeros((0, WIDTH // 2), dtype=np.uint8)
    for x in hashes:
        if not isinstance(x, str) or len(x) != WIDTH or not x.isascii():
            raise _not_hex(x)
    return _raw(np.frombuffer("".join(hashes).encode("ascii"), dtype=np.uint8).reshape(-1, WIDTH))


def _to_hex(raw: np.ndarray) -> np.ndarray:
    """``(n, 32)`` hex digits (ASCII codes) of ``(n, 16)`` raw bytes."""
    out = np.empty((len(raw), WIDTH), dtype=np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return out


def _hex_strings(raw: np.ndarray) -> List[str]:
    """Hex strings of ``(n, 16)`` raw bytes."""
    return _to_hex(raw).view(f"S{WIDTH}").ravel().astype(str).tolist()


#: Ids added after the index was built that are looked up in a dict before a new index is built.
_FOLD = 65536


class RowHashes:
    """custom_id -> request hash (hex) of a job's rows, in the order they were added.

    Examples
    --------
    >>> h = RowHashes()
    >>> h.add(["a", "b"], ["0" * 32, "f" * 32])
    >>> h.get("b"), h.get("c"), len(h)
    ('ffffffffffffffffffffffffffffffff', None, 2)
    >>> h.get_many(["c", "a"])
    [None, '00000000000000000000000000000000']
    >>> h.get_arrow(["b", "c"]).to_pylist()
    ['ffffffffffffffffffffffffffffffff', None]
    """

    def __init__(self) -> None:
        self._ids: Union[List[str], RangeIds] = RangeIds(0, 1, 0)  # a list once the ids stop counting up
        self._parts: List[np.ndarray] = []
        self._hashes = np.zeros((0, WIDTH // 2), dtype=np.uint8)  # one row of raw bytes per hash
        self._index: Optional[pd.Index] = None
        self._first: Optional[np.ndarray] = None
        #: positions of ids added since the index was built (looked up after it; folded in when it grows)
        self._recent: Dict[str, int] = {}

    @classmethod
    def from_arrow(cls, ids: pa.ChunkedArray, hashes: pa.ChunkedArray) -> "RowHashes":
        """From the two string columns the job store keeps."""
        out = cls()
        counted = _as_range(ids)  # an empty RangeIds is falsy: compared with None
        out._ids = counted if counted is not None else ids.to_pylist()
        out._hashes = _stored(hashes)
        return out

    def add(self, ids: Sequence[str], hashes: Sequence[str]) -> None:
        """Append rows (an id added twice keeps its first hash for lookups).

        Lookups between adds (answers arriving while later rows are still
        being sent) stay cheap: ids added since the index was built are kept
        in a small dict, folded into a new index once it holds a quarter of
        the rows.
        """
        self._parts.append(_from_hex(list(hashes)))
        if isinstance(self._ids, RangeIds):
            counted = _counted(self._ids, ids)
            if counted is not None:
                self._ids = counted
                return
            self._ids = list(self._ids)  # the ids stop counting up: kept one by one from here
        start = len(self._ids)
        self._ids.extend(ids)
        if self._index is not None:
            for k, cid in enumerate(ids):
                self._recent.setdefault(cid, start + k)
            if len(self._recent) > max(_FOLD, len(self._ids) // 4):
                self._index = None

    def release(self) -> None:
        """Let go of the lookup index (tens of MB for a million rows); the next lookup builds it again."""
        self._index, self._first, self._recent = None, None, {}

    def __setitem__(self, cid: str, h: str) -> None:
        self.add([cid], [h])

    def _all(self) -> np.ndarray:
        if self._parts:
            self._hashes = np.concatenate([self._hashes, *self._parts])
            self._parts = []
        return self._hashes

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __contains__(self, cid: object) -> bool:
        return self.get(cid) is not None  # type: ignore[arg-type]

    def positions(self, ids: Union[Iterable[str], pa.Array, pa.ChunkedArray]) -> np.ndarray:
        """The position of each of ``ids`` in the order rows were added (-1 for an id not here)."""
        if isinstance(self._ids, RangeIds):
            return self._ids.positions(ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else
                                       pa.array(list(ids), type=pa.string()))
        ids = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        if self._index is None:
            self._recent = {}
            self._index = pd.Index(np.array(self._ids, dtype=object), dtype=object)
            if not self._index.is_unique:
                self._index = self._index[~self._index.duplicated(keep="first")]
                self._first = np.flatnonzero(~pd.Index(np.array(self._ids, dtype=object)).duplicated(keep="first"))
            else:
                self._first = None
        pos = self._index.get_indexer(np.array(ids, dtype=object))
        if self._first is not None:
            pos = np.where(pos >= 0, self._first[np.maximum(pos, 0)], -1)
        if self._recent:
            for i in np.flatnonzero(pos < 0).tolist():
                pos[i] = self._recent.get(ids[i], -1)
        return pos

    def get_arrow(self, ids: Iterable[str]) -> pa.Array:
        """The hash of each of ``ids`` as an Arrow string array (null for an id not here), no Python strings."""
        return self.arrow_at(self.positions(ids))

    def arrow_at(self, pos: np.ndarray) -> pa.Array:
        """The hashes at positions ``pos`` (of :meth:`positions`; -1 gives null) as an Arrow string array."""
        n = len(pos)
        found = pos >= 0
        data = _to_hex(self._all()[np.maximum(pos, 0)]) if n else np.zeros((0, WIDTH), dtype=np.uint8)
        lengths = np.where(found, WIDTH, 0).astype(np.int32)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        validity = None if found.all() else pa.py_buffer(np.packbits(found, bitorder="little").tobytes())
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data[found].tobytes()),
                                           validity)

    def get_many(self, ids: Iterable[str]) -> List[Optional[str]]:
        """The hash of each of ``ids`` (None for an id not here)."""
        pos = self.positions(ids)
        if not len(pos):
            return []
        found = _hex_strings(self._all()[np.maximum(pos, 0)])
        return [h if p >= 0 else None for h, p in zip(found, pos.tolist())]

    def get(self, cid: str, default: Optional[str] = None) -> Optional[str]:
        """The hash of ``cid`` (``default`` if it is not here)."""
        h = self.get_many([cid])[0]
        return default if h is None else h

    def values(self) -> List[str]:
        """Every hash, in the order the rows were added."""
        return _hex_strings(self._all())

    def arrow(self) -> pa.Table:
        """``custom_id`` and ``hash`` as two string columns (made from the byte array, no Python string per hash)."""
        hashes = _to_hex(self._all())
        n = len(hashes)
        offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * WIDTH).tobytes())
        column = pa.StringArray.from_buffers(n, offsets, pa.py_buffer(hashes))
        return pa.table({"custom_id": ids_arrow(self._ids), "hash": column})


def _counted(have: RangeIds, ids: Sequence[str]) -> Optional[RangeIds]:
    """``have`` then ``ids`` as one :class:`RangeIds` when ``ids`` count on from it by one (else None)."""
    if not len(ids):
        return have
    try:
        first = have.start + have.n if have.n else int(ids[0])
    except (TypeError, ValueError):
        return None
    if list(ids) != [str(i) for i in range(first, first + len(ids))]:  # "007", "+7", " 7" do not count
        return None
    return RangeIds(first if not have.n else have.start, 1, have.n + len(ids))


def _as_range(ids: pa.ChunkedArray) -> Optional[RangeIds]:
    """The stored ids as a :class:`RangeIds` when they count up by one from their first (else None)."""
    if not len(ids):
        return RangeIds(0, 1, 0)
    try:
        counted = RangeIds(int(ids[0].as_py()), 1, len(ids))
    except (TypeError, ValueError):
        return None
    return counted if counted.arrow().equals(ids.combine_chunks().cast(pa.string())) else None


def _stored(hashes: pa.ChunkedArray) -> np.ndarray:
    """The store's hex column as ``(n, 16)`` raw bytes, from Arrow's buffers where every hash is 32 digits."""
    parts = []
    for chunk in hashes.chunks:
        chunk = chunk.cast(pa.string())
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        if chunk.null_count or not len(chunk) or (np.diff(offsets) != WIDTH).any():
            parts.append(_from_hex(chunk.to_pylist()))  # an empty chunk, or a malformed one: the error names it
            continue
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        parts.append(_raw(data.reshape(-1, WIDTH)))
    return np.concatenate(parts) if parts else np.zeros((0, WIDTH // 2), dtype=np.uint8)
