"""Rows to prompt texts, chunk by chunk: checked once up front, rendered again as they are sent.

:func:`render` makes one pass over the frame before anything is sent: it finds
the rows that cannot be sent (a missing value), raises on a value no request
can carry (a lone surrogate, a format spec that refuses a value, a list that is
not JSON), and hashes the columns the templates read (:attr:`Rendered.digest`,
part of the job's fingerprint). It keeps no prompt text: :meth:`Rendered.chunks`
renders the texts a chunk at a time when the requests are written, so a
million-row ``map`` never holds a million prompts (or their column strings) at
once.

Most columns need no per-row work in the first pass: an Arrow-backed string
column holds valid UTF-8 by construction and a number always prints, so the
pass only reads their null masks and hashes their buffers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import TemplateError
from .template import Template, display_strings

__all__ = ["Rendered", "Chunk", "render", "CHUNK"]

#: Rows :func:`render` checks and hashes at a time (the inputs' digest is made per chunk: a job's fingerprint
#: depends on it, so a change would keep jobs started before it from re-attaching).
CHUNK = 20_000

#: Most rows :meth:`Rendered.chunks` renders at a time for sending. A chunk's texts are small Python objects
#: that die with it, made among the few that outlive it (a shard's ids): fewer at once leave fewer of the
#: interpreter's small-object arenas held by a survivor (20,000 at a time held ~11 MiB more for a million rows).
SEND_ROWS = 4_096


@dataclass
class Chunk:
    """The texts of rows ``start`` to ``start + len(user) - 1`` (None where a row is skipped)."""

    start: int
    user: List[Optional[str]]
    system: Optional[List[Optional[str]]]
    images: Optional[List[Any]]


@dataclass
class Rendered:
    """Rows checked for sending (see :func:`render`); their texts come from :meth:`chunks`.

    ``skipped`` maps a row position to the reason it is not sent; it grows
    while the requests are made (an unreadable image is found then).
    """

    ids: Sequence[str]
    skipped: Dict[int, str]
    #: blake2b of the spec's input columns (values, dtypes, null masks): what the rows' prompts are made of.
    digest: bytes
    frame: pd.DataFrame = field(repr=False)
    user: Template = field(repr=False)
    system: Optional[Template] = field(default=None, repr=False)
    images: Optional[Template] = field(default=None, repr=False)
    chunk_rows: int = CHUNK

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def per_row_system(self) -> bool:
        """Whether each row has a system text of its own (a system template with fields)."""
        return self.system is not None and bool(self.system.fields)

    def chunks(self) -> Iterator[Chunk]:
        """Render the rows' texts, ``chunk_rows`` rows (at most :data:`SEND_ROWS`) at a time, in row order."""
        n, size = len(self.ids), min(self.chunk_rows, SEND_ROWS)
        for start in range(0, n, size):
            part = self.frame.iloc[start:start + size]
            skip = {p - start: r for p, r in self.skipped.items() if start <= p < start + size} \
                if self.skipped else {}
            ids = self.ids[start:start + size]
            strings = _column_strings(part, _names(self.user, self.system, self.images), self._raw(), None)
            m = len(part)
            user = self.user.render(strings, m, skip, ids)
            system = self.system.render(strings, m, skip, ids) if self.per_row_system else None
            images = None
            if self.images is not None:
                if _plain(self.images):
                    images = _column(part, self.images.fields[0]).tolist()
                else:
                    images = self.images.render(strings, m, skip, ids)
            yield Chunk(start, user, system, images)

    def _raw(self) -> frozenset:
        return self.user.raw_fields | (self.system.raw_fields if self.system is not None else frozenset())


def _names(*templates: Optional[Template]) -> List[str]:
    names: List[str] = []
    for t in templates:
        if t is not None:
            names += [f for f in t.fields if f not in names]
    return names


def _plain(images: Template) -> bool:
    """Whether the images template is a single column, sent as its values (a path, URL, or list of them)."""
    return images.text == "{" + images.fields[0] + "}"


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    by_name = {str(c): c for c in frame.columns}
    col = frame[by_name[name]]
    if isinstance(col, pd.DataFrame):
        raise TemplateError(f"column {name!r} appears more than once in the frame; rename one of them")
    return col


def _column_strings(frame: pd.DataFrame, names: Sequence[str], raw: frozenset,
                    skipped: Optional[Dict[int, str]]) -> Dict[str, list]:
    """Display strings of ``names`` (raw values for ``raw`` fields); missing values go to ``skipped`` if given."""
    out = {}
    for name in names:
        col = _column(frame, name)
        strings = display_strings(col)
        if skipped is not None:
            for pos, s in enumerate(strings):
                if s is None and pos not in skipped:
                    skipped[pos] = f"missing value in column {name!r}"
        out[name] = [None if s is None else v for s, v in zip(strings, col.tolist())] if name in raw else strings
    return out


def _checked_by_construction(col: pd.Series) -> bool:
    """Whether every present value of ``col`` renders without a check (Arrow strings, numbers, dates)."""
    dtype = col.dtype
    if isinstance(dtype, np.dtype):
        return dtype.kind in "biufmM"
    if isinstance(dtype, pd.StringDtype) or isinstance(dtype, pd.ArrowDtype):
        return getattr(dtype, "storage", "pyarrow") == "pyarrow" and _arrow_kind(col) is not None
    return hasattr(dtype, "numpy_dtype") and np.dtype(dtype.numpy_dtype).kind in "biuf"  # Int64, Float64...


def _arrow_kind(col: pd.Series) -> Optional[str]:
    """``"string"`` for an Arrow string column, ``"fixed"`` for an Arrow number/date one, else None."""
    try:
        typ = pa.array(col.array).type if not isinstance(col.dtype, pd.ArrowDtype) else col.dtype.pyarrow_dtype
    except (TypeError, pa.ArrowException):
        return None
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "string"
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) or \
            pa.types.is_temporal(typ):
        return "fixed"
    return None


def _update_digest(h: "hashlib._Hash", col: pd.Series, strings: Optional[list]) -> None:
    """Hash one chunk of one column: its dtype, null mask and values (buffers where the layout is known)."""
    h.update(str(col.dtype).encode() + b"\x00")
    h.update(np.packbits(col.isna().to_numpy()).tobytes())
    dtype = col.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biufmM":
        h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
        return
    if strings is None and _arrow_kind(col) == "string":
        arr = pa.array(col.array).cast(pa.large_string())
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
        first, last = int(offsets[0]), int(offsets[-1])
        h.update((offsets - first).tobytes())
        if arr.buffers()[2] is not None:
            h.update(memoryview(arr.buffers()[2])[first:last])
        return
    if strings is None:
        strings = display_strings(col)
    h.update(pd.util.hash_array(np.array(strings, dtype=object), categorize=False).tobytes())


def render(frame: pd.DataFrame, ids: Sequence[str], user: Template, system: Optional[Template] = None,
           images: Optional[Template] = None, *, chunk_rows: int = CHUNK) -> Rendered:
    """Check every row of ``frame`` for sending and hash its inputs; keep no texts (see :class:`Rendered`).

    Rows with a missing value are marked skipped; a value that cannot be
    rendered raises :class:`~pdbatch.errors.TemplateError` naming the column
    and the first such row.
    """
    names = _names(user, system, images)
    raw = user.raw_fields | (system.raw_fields if system is not None else frozenset())
    with_specs = [t for t in (user, system) if t is not None and t.raw_fields]
    if images is not None and not _plain(images):
        with_specs.append(images)  # rendered here to find values a URL template cannot take
    skipped: Dict[int, str] = {}
    digest = hashlib.blake2b(digest_size=16)
    n = len(frame)
    for start in range(0, n, chunk_rows):
        part = frame.iloc[start:start + chunk_rows]
        local: Dict[int, str] = {}
        strings: Dict[str, list] = {}
        for name in names:  # in template order: a row's reason names the first column it misses
            col = _column(part, name)
            if _checked_by_construction(col) and name not in raw:
                for pos in np.flatnonzero(col.isna().to_numpy()).tolist():
                    local.setdefault(pos, f"missing value in column {name!r}")
            else:
                strings.update(_column_strings(part, [name], raw, local))
            digest.update(name.encode() + b"\x00")
            _update_digest(digest, col, strings.get(name) if name not in raw else None)
        if with_specs:
            need = _names(*with_specs)
            have = dict(strings)
            have.update(_column_strings(part, [f for f in need if f not in have], raw, None))
            for t in with_specs:
                t.render(have, len(part), local, ids[start:start + chunk_rows])
        skipped.update({start + p: r for p, r in sorted(local.items())})
    return Rendered(ids, skipped, digest.digest(), frame, user, system, images, chunk_rows)
