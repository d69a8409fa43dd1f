"""The one rule that decides whether an answer is usable, and :class:`Answers`, many results column-wise.

An answer line is a plain success (``ok``) when it carries no error, its
status is below 400 (or absent), it has a choice with content, no refusal,
and ``finish_reason`` is one of :data:`OK_FINISH`. :func:`usable` states the
rule over Python values and :func:`usable_arrow` over Arrow columns, side by
side: the Arrow reader of output files and :meth:`Answers.from_results` both
use them. :func:`answer_reason` says why a line that is not ``ok`` cannot be
used, or finds its content usable after all. A new ``finish_reason`` is one
edit here. A Responses answer (``endpoint="responses"``) is read into the same
fields by :func:`responses_choice`: its ``status`` and ``incomplete_details``
become a ``finish_reason`` (``completed`` is ``"stop"``), its ``output_text``
parts the content and a ``refusal`` part the refusal.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .loops import repetition_loop
from .records import Usage, embedding_of, usage_counts

__all__ = ["Answers", "Deferred", "OK_FINISH", "NO_ANSWER", "TRUNCATED", "usable", "usable_arrow", "answer_reason",
           "truncated_reason", "responses_choice"]

#: finish_reason values of a complete answer.
OK_FINISH = ("stop",)
#: The error cell of a sent row that no result came back for.
NO_ANSWER = "no_answer: no result came back for this row"
#: The error cell of an answer cut off by the token limit.
TRUNCATED = "truncated: finish_reason=length (raise max_completion_tokens)"


def truncated_reason(content: Any, plain: Optional[str] = None) -> str:
    """The error cell of an answer cut off by the token limit (``finish_reason == "length"``).

    When the text ends in a repetition loop (:func:`~pdbatch.core.loops.repetition_loop`)
    more tokens would only buy more repeats, so the cell says so and names
    what helps instead; otherwise it is ``plain`` (default :data:`TRUNCATED`).

    Examples
    --------
    >>> truncated_reason('{"summary": "A tale')
    'truncated: finish_reason=length (raise max_completion_tokens)'
    >>> truncated_reason('{"summary": "A tale of love, of love, of love, of love, of love, of lo')[:64]
    "truncated: the model repeated itself (' of love,' over and over)"
    """
    unit = repetition_loop(content) if isinstance(content, str) else None
    if unit is None:
        return TRUNCATED if plain is None else plain
    shown = unit if len(unit) <= 40 else unit[:37] + "..."
    return (f"truncated: the model repeated itself ({shown!r} over and over) until the token limit; more "
            "tokens will not help: a repeat penalty (local: extra_body={'repeat_penalty': 1.3}), a "
            "maxLength or maxItems in the schema, a shorter prompt or a bigger model will")


#: finish_reason of a Responses answer cut at its ``max_output_tokens``.
OUTPUT_CAP = "max_output_tokens"
_OUTPUT_CAP_CUT = "truncated: status=incomplete, reason max_output_tokens (raise max_output_tokens)"


def responses_choice(body: Mapping[str, Any]) -> Optional[dict]:
    """A Responses body as a chat choice (``{"message": {"content", "refusal"}, "finish_reason"}``), or None.

    ``finish_reason`` is ``"stop"`` for ``status == "completed"``, the
    ``incomplete_details.reason`` of an incomplete answer (``"max_output_tokens"``,
    ``"content_filter"``), else the status itself. None when ``body`` has no ``output``.

    Examples
    --------
    >>> responses_choice({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
    ...     "output": [{"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": "par"}]}]})
    {'message': {'content': 'par', 'refusal': None}, 'finish_reason': 'max_output_tokens'}
    """
    output = body.get("output")
    if not isinstance(output, list):
        return None
    texts, refusals = [], []
    for item in output:
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue
        for part in item.get("content") or ():
            if isinstance(part, Mapping) and part.get("type") == "output_text" and part.get("text") is not None:
                texts.append(str(part["text"]))
            elif isinstance(part, Mapping) and part.get("type") == "refusal":
                refusals.append(str(part.get("refusal") or "refused"))
    status = body.get("status")
    if status == "completed":
        finish = "stop"
    elif status == "incomplete":
        finish = (body.get("incomplete_details") or {}).get("reason") or "incomplete"
    else:
        finish = status
    return {"message": {"content": "".join(texts) if texts else None, "refusal": "".join(refusals) or None},
            "finish_reason": finish}


def usable(error: Any, status_code: Optional[int], content: Any, refusal: Any, finish_reason: Any) -> bool:
    """Whether one answer is a plain success (the rule; see :func:`usable_arrow` for columns)."""
    return (error is None and content is not None and refusal is None and finish_reason in OK_FINISH
            and (status_code is None or status_code < 400))


def usable_arrow(code, message, status_code, content_valid, refusal, finish_reason):
    """:func:`usable` over Arrow columns (nulls count as False); ``code``/``message`` make the error."""
    no_error = pc.and_kleene(pc.is_null(code), pc.is_null(message))
    complete = pc.and_kleene(content_valid, pc.is_in(finish_reason, value_set=pa.array(OK_FINISH)))
    status_ok = pc.or_kleene(pc.is_null(status_code), pc.less(status_code, 400))
    ok = pc.and_kleene(pc.and_kleene(no_error, pc.is_null(refusal)), pc.and_kleene(complete, status_ok))
    return pc.fill_null(ok, False)


#: Answer columns holding text (a column of them may be held as bare nulls).
_TEXTS = ("custom_id", "content", "finish_reason", "refusal", "error_code", "error_message")
_ANSWER_FIELDS = ("custom_id", "status_code", "content", "finish_reason", "refusal", "has_choice", "error_code",
                  "error_message", "ok", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


class Deferred:
    """A column of ``n`` values read only where asked: ``fetch(rows)`` gives those rows' values as Arrow.

    The job store hands the join its answers' texts this way, so that a
    million answers' texts are not all read to use the few the join needs
    (failed lines, lines not parsed yet); ``Answers.arrow`` reads them all.
    """

    __slots__ = ("n", "fetch")

    def __init__(self, n: int, fetch: Callable[[np.ndarray], pa.Array]) -> None:
        self.n, self.fetch = n, fetch

    def __len__(self) -> int:
        return self.n

    def take(self, rows: Any) -> pa.Array:
        rows = rows.to_numpy(zero_copy_only=False) if isinstance(rows, (pa.Array, pa.ChunkedArray)) else rows
        return self.fetch(np.asarray(rows, dtype=np.int64))

    def to_pylist(self) -> list:
        return self.fetch(np.arange(self.n, dtype=np.int64)).to_pylist()


def _answer_column(name: str) -> property:
    def get(self) -> list:
        col = self._cols[name]
        if not isinstance(col, list):  # an Arrow column becomes a list the first time it is read as one
            col = self._cols[name] = col.to_pylist()
        return col

    def set(self, value) -> None:
        self._cols[name] = value if isinstance(value, (list, pa.Array, pa.ChunkedArray, Deferred)) else list(value)

    return property(get, set, doc=f"The ``{name}`` of every result line, as a list.")


class Answers:
    """Many results, column-wise: the input of the join.

    Column ``i`` of every column describes one result line. Built from output
    files by :func:`pdbatch.batchfile.read_answers` (Arrow, no per-line
    objects), from :class:`Result` records by :meth:`from_results`, or from
    the job store's rows by :meth:`from_rows`.

    Each column is held either as a list or as an Arrow array. Reading an
    attribute (``a.content``) always gives a list, converted once on first
    use; :meth:`arrow` gives an Arrow array without making Python objects,
    which is how the join reads the columns it needs in bulk.

    ``ok`` is True where the answer is a plain success (status < 400, no
    error, a choice with content, finish_reason "stop", no refusal): the
    join's fast path. For embeddings, ``content`` holds the float32 vector and
    ``has_choice`` says one came back.

    Examples
    --------
    >>> from pdbatch.core.records import Result
    >>> a = Answers.from_results([Result("1", {"choices": [{"message": {"content": "hi"},
    ...                                         "finish_reason": "stop"}]})])
    >>> a.custom_id, a.arrow("content").to_pylist(), len(a)
    (['1'], ['hi'], 1)
    """

    #: The per-row columns, in the order the job store keeps them.
    COLUMNS = _ANSWER_FIELDS[1:]
    __slots__ = ("_cols", "origin")

    def __init__(self, **columns: Any) -> None:
        unknown = set(columns) - set(_ANSWER_FIELDS)
        if unknown:
            raise TypeError(f"Answers() got unknown columns {sorted(unknown)}; known: {list(_ANSWER_FIELDS)}")
        self._cols: dict = {}
        #: the job store's segment of each row (-1: stored alone), when read from the store; see fields.Parsed
        self.origin: Optional[np.ndarray] = None
        for name in _ANSWER_FIELDS:
            setattr(self, name, columns.get(name, []))
        lengths = {name: len(col) for name, col in self._cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Answers() columns must all have one length, got {lengths}")

    def __len__(self) -> int:
        return len(self._cols["custom_id"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answers):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _ANSWER_FIELDS)

    def __repr__(self) -> str:
        return f"Answers({len(self)} rows)"

    def arrow(self, name: str) -> pa.ChunkedArray:
        """Column ``name`` as an Arrow array (no Python objects when it was read by Arrow)."""
        col = self._cols[name]
        if isinstance(col, pa.ChunkedArray):
            # A text column kept as bare nulls, or a column kept as its one value (see pdbatch.job.segments.lean),
            # is a plain column to its readers.
            if pa.types.is_dictionary(col.type):
                return col.cast(col.type.value_type)
            return col.cast(pa.string()) if col.type == pa.null() and name in _TEXTS else col
        if isinstance(col, Deferred):
            return pa.chunked_array([col.take(np.arange(len(col)))])
        if isinstance(col, pa.Array):
            return pa.chunked_array([col])
        return pa.chunked_array([pa.array(col)]) if col else pa.chunked_array([], type=pa.null())

    def is_arrow(self, name: str) -> bool:
        """Whether column ``name`` is held as Arrow (not yet turned into a list)."""
        return not isinstance(self._cols[name], list)

    def take(self, name: str, rows: np.ndarray) -> list:
        """Column ``name`` at row positions ``rows``, as a list."""
        col = self._cols[name]
        if isinstance(col, list):
            return [col[i] for i in rows.tolist()]
        return col.take(pa.array(rows, type=pa.int64())).to_pylist()

    @property
    def usage(self) -> Usage:
        """Token usage summed over every row."""
        def total(name: str) -> int:
            col = self._cols[name]
            if isinstance(col, list):
                return sum(col)
            return int(pc.sum(self.arrow(name)).as_py() or 0)
        return Usage(total("prompt_tokens"), total("completion_tokens"), total("cached_tokens"),
                     total("reasoning_tokens"))

    def to_frame(self) -> pd.DataFrame:
        """Every result line as a row: ``custom_id``, then :attr:`COLUMNS` (``content`` is the raw text).

        Several lines may share a custom_id (a failure, then its retry). The
        custom_id of a row of the caller's frame is ``job.ids[position]``.

        Examples
        --------
        >>> from pdbatch.core.records import Result
        >>> a = Answers.from_results([Result("1", {"choices": [{"message": {"content": "{oops"},
        ...                                         "finish_reason": "stop"}]})])
        >>> a.to_frame()[["custom_id", "content", "ok"]].values.tolist()
        [['1', '{oops', True]]
        """
        return pd.DataFrame({name: col if isinstance(col, list) else col.to_pylist()
                             for name, col in self._cols.items()}, columns=list(_ANSWER_FIELDS))

    def columns(self) -> list:
        """The per-row lists named in :attr:`COLUMNS`, in that order."""
        return [getattr(self, name) for name in self.COLUMNS]

    def extend(self, other: "Answers") -> None:
        """Append ``other``'s rows (Arrow columns stay Arrow when both sides are)."""
        self.origin = None  # the rows' segments are no longer all known: the join compares texts instead
        for name in _ANSWER_FIELDS:
            mine, theirs = self._cols[name], other._cols[name]
            if not len(theirs):
                continue
            if isinstance(mine, list) and not mine:
                self._cols[name] = theirs if not isinstance(theirs, list) else list(theirs)
            elif not isinstance(mine, list) and not isinstance(theirs, list):
                self._cols[name] = pa.chunked_array(self.arrow(name).chunks + other.arrow(name).chunks)
            else:
                getattr(self, name).extend(getattr(other, name))

    @classmethod
    def from_rows(cls, rows) -> "Answers":
        """Build from ``(custom_id, *COLUMNS)`` tuples (the store's rows)."""
        a = cls()
        cols = [a.custom_id] + a.columns()
        for row in rows:
            for col, v in zip(cols, row):
                col.append(v)
        # The store keeps an embedding as float32 bytes in the content column.
        a.content[:] = [np.frombuffer(v, dtype=np.float32).copy() if isinstance(v, (bytes, memoryview)) else v
                        for v in a.content]
        a.has_choice[:] = [bool(v) for v in a.has_choice]
        a.ok[:] = [bool(v) for v in a.ok]
        return a

    @classmethod
    def from_results(cls, results) -> "Answers":
        """Collect :class:`Result` records into columns.

        Examples
        --------
        >>> from pdbatch.core.records import Result
        >>> a = Answers.from_results([Result("1", {"choices": [{"message": {"content": "hi"},
        ...                                         "finish_reason": "stop"}]}, status_code=200)])
        >>> a.custom_id, a.content, a.error_code
        (['1'], ['hi'], [None])
        """
        a = cls()
        for r in results:
            a.custom_id.append(r.custom_id)
            a.status_code.append(r.status_code)
            err = r.error
            if err is not None:
                code = err.get("code") or err.get("type")
                if code is None and err.get("message") is None and not (r.status_code or 0) >= 400:
                    code = "error"  # an error with nothing in it is still an error
                a.error_code.append(None if code is None else str(code))
                a.error_message.append(None if err.get("message") is None else str(err.get("message")))
            else:
                a.error_code.append(None)
                a.error_message.append(None)
            choice = None
            body = r.body
            p, c, k, t = usage_counts(body)
            a.prompt_tokens.append(p)
            a.completion_tokens.append(c)
            a.cached_tokens.append(k)
            a.reasoning_tokens.append(t)
            if body is not None:
                choices = body.get("choices") if isinstance(body, Mapping) else None
                if choices:
                    choice = choices[0]
                elif isinstance(body, Mapping) and "output" in body:
                    choice = responses_choice(body)
                elif isinstance(body, Mapping) and "data" in body:
                    # An embeddings answer: the vector stands in the content column.
                    vec = embedding_of(body)
                    choice = {"message": {"content": vec}, "finish_reason": "stop" if vec is not None else None}
            if choice is not None:
                msg = choice.get("message") or {}
                content = msg.get("content")
                content = content if content is None or isinstance(content, (str, np.ndarray)) else str(content)
                a.content.append(content)
                a.refusal.append(msg.get("refusal"))
                a.finish_reason.append(choice.get("finish_reason"))
                a.has_choice.append(True)
                a.ok.append(usable(err, r.status_code, content, msg.get("refusal"), choice.get("finish_reason")))
            else:
                a.content.append(None)
                a.refusal.append(None)
                a.finish_reason.append(None)
                a.has_choice.append(False)
                a.ok.append(False)
        return a


for _name in _ANSWER_FIELDS:
    setattr(Answers, _name, _answer_column(_name))
del _name


def answer_reason(status_code, content, finish_reason, refusal, has_choice, error_code, error_message) -> Optional[str]:
    """Why an answer (given as its fields) cannot be used, or None when its content can.

    Covers API errors (``"<code>: <message>"``), truncation
    (``finish_reason == "length"``, worded by :func:`truncated_reason`),
    content filtering, refusals and empty answers.
    """
    if error_code is not None or error_message is not None or (status_code is not None and status_code >= 400):
        code = error_code or (f"http_{status_code}" if status_code else "error")
        msg = str(error_message or "").strip()
        return f"{code}: {msg}" if msg else str(code)
    if not has_choice:
        return "malformed response: no choices"
    if refusal:
        return f"refused: {str(refusal)[:200]}"
    if finish_reason == "length":
        return truncated_reason(content)
    if finish_reason == OUTPUT_CAP:
        return truncated_reason(content, _OUTPUT_CAP_CUT)
    if finish_reason == "content_filter":
        return "content_filter: the answer was withheld by the provider's filter"
    if finish_reason in ("failed", "cancelled", "incomplete", "in_progress", "queued"):
        return f"response {finish_reason}: the answer did not complete"
    if content is None:
        return "tool_call: the answer is a tool call, not text" if finish_reason == "tool_calls" else "empty answer"
    return None
