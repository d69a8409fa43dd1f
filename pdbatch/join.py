"""Results to columns on the caller's index: the only place frames are built.

Results arrive in any order; each is placed by its custom_id alone. The
returned frame is a new object with every original column, the original index
and row order, plus the new columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ColumnCollisionError
from .parsing import answer_reason, as_is
from .records import Answers, Usage

__all__ = ["JoinStats", "join_results", "NO_ANSWER"]

NO_ANSWER = "no_answer: no result came back for this row"


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


def _series(values: List[Any], index: pd.Index, name: str) -> pd.Series:
    """A column from Python values: integers beside gaps stay integers (``Int64``)."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "integer" and any(v is None for v in values):
        return pd.Series(pd.array(values, dtype="Int64"), index=index, name=name)
    if kind == "boolean" and any(v is None for v in values):
        return pd.Series(pd.array(values, dtype="boolean"), index=index, name=name)
    s = pd.Series(values, index=index, name=name)
    if s.dtype == object and kind not in ("mixed", "empty"):
        s = s.infer_objects()
    return s


def join_results(
    host: Union[pd.DataFrame, pd.Series],
    ids: List[str],
    answers: Answers,
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
):
    """Join ``answers`` onto ``host`` by custom_id.

    Parameters
    ----------
    host : DataFrame or Series
        The caller's object; never modified.
    ids : list of str
        custom_id of every row, in row order.
    answers : Answers
        Column-wise results in any order; a custom_id that matches no row is
        counted and ignored. When a custom_id appears more than once, a success
        wins over a failure.
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

    Returns
    -------
    (DataFrame or Series, JoinStats, list of error reasons)
    """
    n = len(ids)
    skipped = dict(skipped or {})
    stats = JoinStats(rows=n, skipped=len(skipped), usage=answers.usage)
    expand = kind in ("json", "schema")
    a = answers
    m = len(a)
    # Row position of every line by a hash join in Arrow; -1 where a custom_id matches no row.
    where = pc.fill_null(pc.index_in(pa.array(a.custom_id, type=pa.string()),
                                     value_set=pa.array(ids, type=pa.string())), -1).to_numpy().astype(np.int64)
    ok = np.fromiter(a.ok, dtype=bool, count=m)
    lines = np.flatnonzero(where >= 0)
    stats.unknown_ids = int(m - len(lines))
    if m and np.bincount(where[lines], minlength=n).max(initial=0) > 1:
        # A custom_id on several lines: keep its last success, else its last line.
        order = np.lexsort((lines, ok[lines], where[lines]))
        ranked = lines[order]
        last = np.r_[where[ranked][1:] != where[ranked][:-1], True]
        lines = ranked[last]
    errors = np.full(n, None, dtype=object)
    parsed = np.full(n, None, dtype=object)
    answered = np.zeros(n, dtype=bool)
    answered[where[lines]] = True
    content = a.content
    good = lines[ok[lines]]
    if parse_text is as_is:  # nothing to parse: place every success at once
        parsed[where[good]] = np.fromiter((content[i] for i in good), dtype=object, count=len(good))
    else:
        for i in good.tolist():
            value, err = parse_text(content[i])
            if err is None:
                parsed[where[i]] = value
            else:
                errors[where[i]] = err
    for i in lines[~ok[lines]].tolist():  # the rest: say why, or parse what is usable after all
        err = answer_reason(a.status_code[i], content[i], a.finish_reason[i], a.refusal[i], a.has_choice[i],
                            a.error_code[i], a.error_message[i])
        if err is None:
            value, err = parse_text(content[i])
            if err is None:
                parsed[where[i]] = value
        errors[where[i]] = err
    for pos, reason in skipped.items():
        errors[pos] = reason
        parsed[pos] = None
    missing = np.flatnonzero(~answered)
    for pos in missing.tolist():
        if pos not in skipped:
            errors[pos] = unanswered(pos) if unanswered else NO_ANSWER
            stats.unanswered += 1
    done = answered.copy()
    if skipped:
        done[list(skipped)] = False
    is_ok = np.equal(errors, None)
    stats.succeeded = int((done & is_ok).sum())
    stats.failed = int((done & ~is_ok).sum())
    parsed = parsed.tolist()
    errors = errors.tolist()
    values: Dict[str, List[Any]] = {}
    if expand:
        keys = dict.fromkeys(columns or ())
        for obj in parsed:
            if obj is not None and obj.keys() != keys.keys():
                keys.update(dict.fromkeys(obj))
        if error_column and error_column in keys:
            raise ColumnCollisionError(
                [error_column], hint=f"The answers have a key {error_column!r}: pass another error_column= name. {hint}"
            )
        for key in keys:
            values[key] = [None if obj is None else obj.get(key) for obj in parsed]
    else:
        values[output] = parsed
    index = host.index
    new_names = list(values) + ([error_column] if error_column else [])
    if isinstance(host, pd.Series) and not expand:
        out = _series(values[output], index, host.name if output is None else output)
        return out, stats, errors
    existing = [str(c) for c in host.columns] if isinstance(host, pd.DataFrame) else []
    clash = [c for c in new_names if c in existing]
    if clash and not overwrite:
        raise ColumnCollisionError(clash, hint=hint)
    new = pd.DataFrame({name: _series(vals, index, name) for name, vals in values.items()}, index=index)
    if error_column:
        new[error_column] = pd.Series(errors, index=index, dtype=object)
    if isinstance(host, pd.Series):
        return new, stats, errors
    base = host.drop(columns=[c for c in host.columns if str(c) in clash]) if clash else host
    out = pd.concat([base, new], axis=1)
    return out, stats, errors
