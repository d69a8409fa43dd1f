"""The batch backend's typed state: one record per input shard and its batch.

A :class:`ShardState` is what the job store keeps of a shard (``fields`` /
``from_store``), plus what one process knows of it in memory (its lines'
custom_ids). Statuses follow the Batch API; ``written``, ``uploaded``,
``creating`` and ``waiting`` are pdbatch's own steps before a batch exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .base import TERMINAL, JobState

__all__ = ["ShardState", "BatchState", "TOKEN_LIMIT", "ORDER", "raw_lines", "retry_shard", "rows_to_retry"]

#: The error code of a batch refused for the enqueued-token limit.
TOKEN_LIMIT = "token_limit_exceeded"
#: Shard statuses from least to most advanced.
ORDER = ["written", "uploaded", "creating", "waiting", "validating", "in_progress", "finalizing", "cancelling",
         "completed", "expired", "cancelled", "failed"]


@dataclass
class ShardState:
    """One input shard and its batch, as the job tracks it (mirrored in the store)."""

    index: int
    path: str
    count: int
    bytes: int
    attempt: int = 0
    file_id: Optional[str] = None
    batch_id: Optional[str] = None
    status: str = "written"
    output_file_id: Optional[str] = None
    error_file_id: Optional[str] = None
    completed: int = 0
    failed: int = 0
    errors: List[dict] = field(default_factory=list)
    ingested: int = 0
    submits: int = 0
    #: custom_ids of the shard's lines, in file order (known in the process that wrote it; else read back),
    #: kept as one Arrow array: a million rows' ids as Python strings would be some 60 MiB until the join
    ids: Optional[pa.Array] = field(default=None, repr=False, compare=False)
    #: whether each of the shard's lines has one plain success (known once stored here: see :meth:`ingest`)
    clean: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ids is not None and not isinstance(self.ids, pa.Array):
            self.ids = pa.array(self.ids, type=pa.string())

    def update(self, batch: Any) -> None:
        """Copy the fields pdbatch tracks from an SDK ``Batch`` object."""
        self.batch_id = batch.id
        self.status = batch.status
        self.output_file_id = batch.output_file_id
        self.error_file_id = batch.error_file_id
        rc = batch.request_counts
        if rc is not None:
            self.completed, self.failed = rc.completed, rc.failed
        errs = getattr(batch, "errors", None)
        data = getattr(errs, "data", None) if errs is not None else None
        if data:
            self.errors = [e.model_dump() if hasattr(e, "model_dump") else dict(e) for e in data]
        if self.status == "failed" and any(e.get("code") == TOKEN_LIMIT for e in self.errors):
            self.status = "waiting"  # the enqueued-token limit: submit again as earlier shards finish

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def fields(self) -> Dict[str, Any]:
        return {"attempt": self.attempt, "path": self.path, "count": self.count, "bytes": self.bytes,
                "file_id": self.file_id, "batch_id": self.batch_id, "status": self.status,
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "completed": self.completed, "failed": self.failed, "errors": self.errors,
                "ingested": self.ingested}

    @classmethod
    def from_store(cls, d: Dict[str, Any]) -> "ShardState":
        st = cls(d["index"], d["path"], d["count"] or 0, d["bytes"] or 0, d["attempt"] or 0)
        for k in ("file_id", "batch_id", "status", "output_file_id", "error_file_id", "errors"):
            setattr(st, k, d[k])
        st.completed, st.failed, st.ingested = d["completed"] or 0, d["failed"] or 0, d["ingested"] or 0
        return st

    def ingest(self, answers: Any) -> None:
        """Mark the shard's ``answers`` (:class:`~pdbatch.core.answers.Answers`) stored.

        When each of its lines has one plain success, the shard is
        :attr:`clean` and its ids are let go: a retry round that does not
        look for invalid answers and the reasons of rows without an answer
        pass over it, and anything else that asks for them (:meth:`line_ids`)
        reads them back from the file.
        """
        self.ingested = 1
        ids, ok = answers.arrow("custom_id").cast(pa.string()), answers.arrow("ok")
        if self.ids is not None and len(answers) == self.count and not ok.null_count and pc.all(ok).as_py() \
                and pc.count_distinct(ids).as_py() == self.count and pc.all(pc.is_in(ids, value_set=self.ids)).as_py():
            self.ids, self.clean = None, True

    def line_ids(self) -> List[str]:
        """The custom_ids of the shard's lines in file order (read from the file once if not known), a new list."""
        if self.ids is None:
            self.ids = pa.array([orjson.loads(raw)["custom_id"] for raw in raw_lines(self.path)], type=pa.string())
        return self.ids.to_pylist()


@dataclass
class BatchState(JobState):
    """The batch backend's job: its shards (mirrored in the store) and what this process derived from them."""

    shards: List[ShardState] = field(default_factory=list)
    #: custom_id -> status of the batch the row last went out in (built when a row has no answer)
    row_status: Optional[Dict[str, str]] = None
    #: shard index -> how many shards were busy when it had to wait (the enqueued-token limit)
    busy_at_wait: Dict[int, int] = field(default_factory=dict)

    @property
    def batch_ids(self) -> List[str]:
        return [s.batch_id for s in self.shards if s.batch_id]


def raw_lines(path: str) -> Iterator[bytes]:
    """The non-blank lines of a JSONL file, as bytes, streaming."""
    with open(path, "rb", buffering=1 << 20) as fh:
        for raw in fh:
            if raw.strip():
                yield raw if raw.endswith(b"\n") else raw + b"\n"


def retry_shard(last: List[ShardState], again: set, index: int, path: str, attempt: int) -> ShardState:
    """Write the shard of a retry round: the input lines of ``last`` whose custom_id is in ``again``, as they are.

    One pass over the last round's input files; no line is decoded.
    """
    ids: List[str] = []
    size = 0
    with open(path, "wb") as fh:
        for st in last:
            for cid, raw in zip(st.line_ids(), raw_lines(st.path)):
                if cid in again:
                    fh.write(raw)
                    ids.append(cid)
                    size += len(raw)
    return ShardState(index, path, len(ids), size, attempt=attempt, ids=ids)


def rows_to_retry(answers: Any, last_ids: List[str], *, retryable_codes: frozenset, retry_failed: bool,
                  parse: Any = None) -> set:
    """The custom_ids of the last round's rows that go again, decided on Arrow columns.

    A row goes again when ``retry_failed`` and it has no answer, or its
    answer failed for a retryable reason (an error code in
    ``retryable_codes``, HTTP 429 or 5xx); and, with a ``parse`` (the format's
    text parser, when ``retry_invalid`` allows another round), when its
    answer came back but cannot be used: a success whose content fails to
    parse or validate, or a choice without an API error that is not a plain
    success (cut off, refused, empty).
    """
    if not last_ids:
        return set()
    want = pa.array(last_ids, type=pa.string())
    where = pc.index_in(want, value_set=answers.arrow("custom_id").cast(pa.string()))
    found = where.is_valid().to_numpy(zero_copy_only=False)
    again = ~found if retry_failed else np.zeros(len(last_ids), dtype=bool)
    rows = pc.drop_null(where)
    if len(rows):
        def col(name):
            return answers.arrow(name).take(rows)

        code, status = col("error_code"), pc.fill_null(col("status_code"), 0)
        ok = pc.fill_null(col("ok"), False).to_numpy(zero_copy_only=False)
        failed = pc.or_(pc.fill_null(pc.is_in(code, value_set=pa.array(sorted(retryable_codes), pa.string())), False),
                        pc.or_(pc.equal(status, 429), pc.greater_equal(status, 500))).to_numpy(zero_copy_only=False)
        hit = np.zeros(len(rows), dtype=bool)
        if retry_failed:
            hit |= failed
        if parse is not None:
            plain = pc.and_(pc.fill_null(col("has_choice"), False),
                            pc.and_(pc.is_null(code), pc.less(status, 400))).to_numpy(zero_copy_only=False)
            hit |= plain & ~ok
            good = np.flatnonzero(ok)
            if len(good):
                many = getattr(parse, "many", None)
                texts = answers.arrow("content").take(rows.take(pa.array(good))).to_pylist()
                errors = many(texts)[1] if many else [parse(t)[1] for t in texts]
                hit[good[[e is not None for e in errors]]] = True
        again[np.flatnonzero(found)[hit]] = True
    return {cid for cid, a in zip(last_ids, again.tolist()) if a}
