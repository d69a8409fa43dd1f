"""Results to columns on the caller's index: the only place frames are built.

Results arrive in any order; each is placed by its custom_id alone. The
returned frame is a new object with every original column, the original index
and row order, plus the new columns.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ColumnCollisionError
from .answers import NO_ANSWER, Answers, answer_reason
from .columns import RUN_ROWS, Column, spread, to_series
from .fields import Parsed, gc_paused, parse_usable
from .ids import RangeIds, row_positions
from .memory import give_back
from .parsing import as_is
from .records import Usage

__all__ = ["JoinStats", "join_results", "NO_ANSWER", "SUFFIX"]


@dataclass
class JoinStats:
    """Counts and usage gathered while joining."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    unanswered: int = 0
    unknown_ids: int = 0
    usage: Usage = field(default_factory=Usage)

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "sent": self.rows - self.skipped,
            "succeeded": self.succeeded,
            "failed": self.failed + self.unanswered,
            "skipped": self.skipped,
            "unknown_ids": self.unknown_ids,
        }


def _series(values: Any, index: pd.Index, name: Any) -> pd.Series:
    """A column from an object array, or an Arrow array or a list of its chunks (see :func:`to_series`).

    Integers beside gaps stay integers (``Int64``), booleans beside gaps
    ``boolean``; strings take pandas' default string dtype.
    """
    if isinstance(values, list):
        return to_series(values, index, name)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return to_series(values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values]), index, name)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    gaps = kind in ("integer", "boolean") and np.equal(values, None).any()
    if gaps:
        return pd.Series(pd.array(values, dtype="Int64" if kind == "integer" else "boolean"), index=index, name=name)
    s = pd.Series(values, index=index, name=name, copy=False)  # the array is ours: pandas 3 would copy it
    if s.dtype == object and kind not in ("mixed", "empty", "string"):
        s = s.infer_objects()
    return s


#: Joins of this many rows give freed memory back between their steps (a few ms; smaller ones free little).
GIVE_BACK_ROWS = 65536

#: Suffix of a column holding an answer key that names a column already there (``_llm``, then ``_llm2``...).
SUFFIX = "_llm"


def _move_unexpected(values: Dict[str, Any], known: List[str], taken: set) -> Dict[str, Any]:
    """``values`` with each key not in ``known`` that is in ``taken`` moved to a free ``<key>_llm[N]`` name."""
    moved = [key for key in values if key in taken and key not in known]
    if not moved:
        return values
    used = taken | set(values)
    names = {}
    for key in moved:
        name, k = f"{key}{SUFFIX}", 1
        while name in used:
            k += 1
            name = f"{key}{SUFFIX}{k}"
        used.add(name)
        names[key] = name
        warnings.warn(f"the answers have a key {key!r}, which is already a column of the frame or the error "
                      f"column; its values are in the new column {name!r}", UserWarning, stacklevel=3)
    return {names.get(key, key): vals for key, vals in values.items()}


def join_results(
    host: Union[pd.DataFrame, pd.Series],
    ids: Sequence[str],
    answers: Union[Answers, Callable[[], Answers]],
    parse_text: Callable[[str], tuple],
    *,
    kind: str,
    output: str,
    error_column: Optional[str],
    columns: Optional[List[str]] = None,
    skipped: Optional[Mapping[int, str]] = None,
    unanswered: Optional[Callable[[int], str]] = None,
    overwrite: bool = False,
    hint: str = "",
    parsed: Optional[Parsed] = None,
    raw_column: Optional[str] = None,
):
    """Join ``answers`` onto ``host`` by custom_id.

    Parameters
    ----------
    host : DataFrame or Series
        The caller's object; never modified.
    ids : list of str or RangeIds
        custom_id of every row, in row order (see :func:`pdbatch.core.ids.custom_ids`).
    answers : Answers, or a function that returns them
        Column-wise results in any order; a custom_id that matches no row is
        counted and ignored. When a custom_id appears more than once, a success
        wins over a failure. A function is called once, by the matching step,
        and what it returned is let go before the pandas columns are built
        (a million answers' columns are not held beside the result).
    parse_text : callable
        ``str -> (value, error)`` for a usable answer's text
        (see :meth:`ResponseFormat.parse_text`).
    kind : {"text", "json", "schema"}
        Text goes to ``output``; JSON dicts expand into one column per
        top-level key (``columns`` first, in that order).
    skipped : mapping, optional
        Row position -> reason, for rows that were not sent.
    unanswered : callable, optional
        Row position -> reason, for sent rows with no result (default
        :data:`NO_ANSWER`).
    overwrite : bool
        Replace the host's columns named like the *known* new columns
        (``output`` for text, the schema's keys, ``error_column``). Without
        it such a clash raises :class:`ColumnCollisionError` (callers check
        it before anything is sent).
    parsed : Parsed, optional
        Answers parsed earlier (:func:`preparse`); used where a row's
        custom_id and content match, so that no answer is parsed twice.
        Handed over: it is emptied (:meth:`Parsed.clear`) once used, so that a
        million rows' parsed values are not held beside their copies in the result.
    raw_column : str, optional
        Also add this column: the text of every row's answer as it came back,
        failed or not (an answer that is not valid JSON, a truncated one...);
        None where there is no text (skipped, unanswered, an API error line).
        Placed before ``error_column``; a known column, like ``output``.

    Returns
    -------
    (DataFrame or Series, JoinStats, object array of error reasons)
        The reasons: one per row, None where there is none (the array backs the
        error column: read it, do not change it).
        A Series host gives a Series of the text answers named ``output``,
        or a frame of the new columns when there are several (JSON keys, or
        ``raw_column``).

    Notes
    -----
    Columns named by the answers themselves: a key of a free JSON answer
    (``kind="json"``, or a key outside ``columns``) is not known before the
    answers arrive, so it never replaces anything and never raises. When it
    is already a column of ``host`` or is ``error_column``, its values go to
    ``<key>_llm``, or ``<key>_llm2``, ``<key>_llm3``... when that name is
    taken too (by a column of ``host``, the error column or another key), and
    a :class:`UserWarning` names the key and its new column (``raw_column``
    counts as taken too). ``overwrite``
    does not change this: it only applies to the known columns.

    The result keeps ``host.attrs`` (a deep copy, as pandas copies them).
    """
    skipped = dict(skipped or {})
    expand = kind in ("json", "schema")
    values, raw, errors, stats = _values(ids, answers, parse_text, expand=expand, output=output,
                                         columns=columns, skipped=skipped, unanswered=unanswered,
                                         parsed=parsed, raw_column=raw_column)
    if len(ids) >= GIVE_BACK_ROWS:
        give_back()  # what matching and parsing freed, before the pandas columns are built on top
    return _frame(host, values, raw, errors, stats, expand=expand, output=output, error_column=error_column,
                  columns=columns, overwrite=overwrite, hint=hint, raw_column=raw_column)


def _row_of(cid: Column, ids: Sequence[str]) -> np.ndarray:
    """Row position of each answer line by its custom_id (-1 where it names no row).

    Lines stored in row order, one per row (a job answered in one go, in
    order), are recognised by one comparison; chunks that are each a run of
    rows in order (a job's shards, stored in the order they finished) by one
    search and one comparison per chunk; anything else by a hash join in
    Arrow, whose hash table of every custom_id costs tens of MB for a
    million rows. The ids of a ``RangeIndex`` (:class:`RangeIds`) are never
    all made: a line's row is the number its id names.
    """
    cid = cid if isinstance(cid, pa.ChunkedArray) else pa.chunked_array([cid])
    if cid.type != pa.string():
        cid = cid.cast(pa.string())
    if isinstance(ids, RangeIds):
        known = ids
        runs = _runs_of(cid, len(ids), lambda first: int(ids.positions(pa.array([first]))[0]),
                        lambda start, k: RangeIds(ids.start + start * ids.step, ids.step, k).arrow())
    else:
        known = pa.array(ids, type=pa.string())  # made once: the hash join below uses it too
        if len(cid) == len(ids) and cid.equals(pa.chunked_array([known])):
            return np.arange(len(ids), dtype=np.int64)
        runs = _runs_of(cid, len(ids), lambda first: pc.index(known, first).as_py(), known.slice)
    return runs if runs is not None else row_positions(known, cid)


def _runs_of(cid: pa.ChunkedArray, n: int, row_of: Callable[[str], int],
             ids_at: Callable[[int, int], pa.Array]) -> Optional[np.ndarray]:
    """The row of each line when every chunk of ``cid`` is the ids of a run of rows in order, else None.

    ``row_of(custom_id)`` is the row of one id (-1: none); ``ids_at(start, k)``
    the ids of rows ``start`` to ``start + k - 1``.
    """
    chunks = [c for c in cid.chunks if len(c)]
    if not chunks or len(chunks) * RUN_ROWS > len(cid):
        return None
    where = []
    for chunk in chunks:
        first = chunk[0].as_py()
        start = row_of(first) if first is not None else -1
        if start < 0 or start + len(chunk) > n or not ids_at(start, len(chunk)).equals(chunk):
            return None
        where.append(np.arange(start, start + len(chunk), dtype=np.int64))
    return np.concatenate(where)


def _values(ids: Sequence[str], answers: Union[Answers, Callable[[], Answers]], parse_text: Callable[[str], tuple], *, expand: bool,
            output: str, columns: Optional[List[str]], skipped: Dict[int, str],
            unanswered: Optional[Callable[[int], str]], parsed: Optional[Parsed],
            raw_column: Optional[str]) -> tuple:
    """``(new columns by name, raw text column or None, error of each row, JoinStats)``: the join before pandas."""
    n = len(ids)
    a = answers() if callable(answers) else answers
    stats = JoinStats(rows=n, skipped=len(skipped), usage=a.usage)
    m = len(a)
    index = np.int32 if max(n, m) < 2**31 else np.int64  # the join's row and line numbers: half the memory
    where = _row_of(a.arrow("custom_id"), ids).astype(index, copy=False)
    if n >= GIVE_BACK_ROWS:
        give_back()  # the hash join's tables (tens of MB for a million rows), kept by Arrow's allocator once freed
    ok = a.arrow("ok").to_numpy().astype(bool) if m else np.zeros(0, dtype=bool)
    lines = np.flatnonzero(where >= 0).astype(index, copy=False)
    stats.unknown_ids = int(m - len(lines))
    answered = np.zeros(n, dtype=bool)
    answered[where[lines]] = True
    if int(answered.sum()) < len(lines):
        # A custom_id on several lines: keep its last success, else its last line.
        order = np.lexsort((lines, ok[lines], where[lines]))
        ranked = lines[order]
        last = np.r_[where[ranked][1:] != where[ranked][:-1], True]
        lines = ranked[last]
    errors = np.full(n, None, dtype=object)
    good, bad = lines[ok[lines]], lines[~ok[lines]]
    # Lines that are not plain successes: say why, or find them usable after all.
    cols = [a.take(name, bad) for name in ("status_code", "content", "finish_reason", "refusal", "has_choice",
                                            "error_code", "error_message")]
    reasons = [answer_reason(*line) for line in zip(*cols)]
    errors[where[bad]] = np.fromiter(reasons, dtype=object, count=len(bad))
    usable = np.concatenate([good, bad[np.fromiter((r is None for r in reasons), dtype=bool, count=len(bad))]])
    skipped_pos = np.fromiter(skipped, dtype=np.int64, count=len(skipped))
    raw = None
    if raw_column is not None:  # the kept line of every answered row, in one gather
        src = np.full(n, -1, dtype=np.int64)
        src[where[lines]] = lines
        src[skipped_pos] = -1
        raw = a.arrow("content").take(pa.array(src, mask=src < 0))
    text_column = out_values = None
    fields: Dict[str, Any] = {}
    if parse_text is as_is and a.is_arrow("content"):
        # Nothing to parse and the text is in Arrow: one gather builds the column, no Python strings.
        src = np.full(n, -1, dtype=np.int64)
        src[where[usable]] = usable
        src[skipped_pos] = -1
        text_column = a.arrow("content").take(pa.array(src, mask=src < 0))
    else:
        line_of = np.full(n, -1, dtype=index)  # each row's line (one line a row by now): usable lines in row order
        line_of[where[usable]] = usable
        usable = line_of[line_of >= 0]  # in row order: keys are met in row order
        del line_of
        rows = where[usable]
        del where, lines, good, bad, ok  # the matching is done: a million rows' index arrays are let go
        with gc_paused():
            got, errs = parse_usable(a, usable, parse_text, parsed, expand_objects=expand, columns=columns)
            a = answers = None  # the answers' columns are not needed any more (their usage is in ``stats``)
            if parsed is not None:
                parsed.clear()  # handed over by the caller: let go of it before the pandas columns are built
            if n >= GIVE_BACK_ROWS:
                give_back()
            if expand:  # one column per key, over the usable lines: spread onto the rows (skipped ones blank)
                fields = {key: spread(got.pop(key), rows, n, skipped_pos) for key in list(got)}
            else:
                out_values = np.full(n, None, dtype=object)
                out_values[rows] = np.fromiter(got, dtype=object, count=len(rows))
        if errs is not None:
            errors[rows] = errs if isinstance(errs, np.ndarray) else np.fromiter(errs, dtype=object, count=len(rows))
        errs = usable = rows = None
    if expand and not fields:
        fields = {key: np.full(n, None, dtype=object) for key in columns or ()}
    errors[skipped_pos] = np.fromiter(skipped.values(), dtype=object, count=len(skipped))
    if out_values is not None:
        out_values[skipped_pos] = None
    for col in fields.values():
        if isinstance(col, np.ndarray):
            col[skipped_pos] = None
    missing = np.flatnonzero(~answered)
    for pos in missing.tolist():
        if pos not in skipped:
            errors[pos] = unanswered(pos) if unanswered else NO_ANSWER
            stats.unanswered += 1
    done = answered.copy()
    done[skipped_pos] = False
    is_ok = np.equal(errors, None)
    stats.succeeded = int((done & is_ok).sum())
    stats.failed = int((done & ~is_ok).sum())
    values: Dict[str, Any] = {}
    if expand:
        values = fields
    else:
        values[output] = out_values if text_column is None else text_column
    return values, raw, errors, stats


def _chunks(col: Any) -> Any:
    """An Arrow column as a list of its chunks, which :func:`to_series` lets go of one by one; else as it is."""
    return col.chunks if isinstance(col, pa.ChunkedArray) and col.num_chunks else col


def _frame(host, values: Dict[str, Any], raw: Any, errors: np.ndarray, stats: JoinStats, *, expand: bool, output: str,
           error_column: Optional[str], columns: Optional[List[str]], overwrite: bool, hint: str,
           raw_column: Optional[str]) -> tuple:
    """``(result, stats, errors)``: the new columns as pandas columns beside the host's (see :func:`join_results`)."""
    index = host.index
    existing = [str(c) for c in host.columns] if isinstance(host, pd.DataFrame) else []
    if expand:
        taken = set(existing) | {c for c in (error_column, raw_column) if c}
        values = _move_unexpected(values, list(columns or ()), taken)
    if raw is not None:
        values[raw_column] = raw
    new_names = list(values) + ([error_column] if error_column else [])
    if isinstance(host, pd.Series) and raw is None and not expand:
        out = _series(values[output], index, host.name if output is None else output)
        out.attrs = copy.deepcopy(host.attrs)
        return out, stats, errors
    clash = [c for c in new_names if c in existing]
    if clash and not overwrite:
        raise ColumnCollisionError(clash, hint=hint)
    # Not copied: a million rows of lists are not held twice while the frame is made.
    new = pd.DataFrame({name: _series(_chunks(values.pop(name)), index, name) for name in list(values)}, index=index,
                       copy=False)
    if error_column:
        new[error_column] = pd.Series(errors, index=index, dtype=object, copy=False)
    if isinstance(host, pd.Series):
        new.attrs = copy.deepcopy(host.attrs)
        return new, stats, errors
    base = host.drop(columns=[c for c in host.columns if str(c) in clash]) if clash else host
    out = pd.concat([base, new], axis=1)
    out.attrs = copy.deepcopy(host.attrs)
    return out, stats, errors
