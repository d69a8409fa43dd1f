"""The answers half of the job store: answers one at a time (rows) or in bulk (segments), and the cache.

:class:`AnswerStore` is mixed into :class:`~pdbatch.job.store.Store`, which
owns the connection; see :mod:`pdbatch.job.segments` for the segment format.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.answers import Answers, Deferred
from ..core.records import Usage
from . import segments
from .hashes import RowHashes
from ..core.memory import give_back

__all__ = ["AnswerStore", "segment_table"]

#: Answer columns of the per-row table, after (job_id, custom_id, hash, attempt).
_ANSWER_COLS = Answers.COLUMNS
#: The columns of a segment that say which rows are answered (see ``AnswerStore._status``).
_STATUS = {"custom_id": pa.string(), "attempt": pa.int32(), "seq": segments.SEQ, "ok": pa.bool_()}
_STATUS_SCHEMA = pa.schema(list(_STATUS.items()))
#: Below this many answers a put goes to the per-row table, from it on to one segment.
SEGMENT_MIN = 64
#: The ``seq`` of answers stored one at a time: after every segment in precedence.
_ALONE = 1 << 62


def _lookup(hashes: Union[RowHashes, Mapping[str, str]], ids: Sequence[str]) -> List[Optional[str]]:
    """The request hash of each of ``ids`` (None for an id the job did not send)."""
    if isinstance(hashes, RowHashes):
        return hashes.get_many(ids)
    return [hashes.get(cid) for cid in ids]


def segment_table(answers: Answers, hashes: Union[RowHashes, Mapping[str, str]], attempt: int = 0) -> pa.Table:
    """``answers`` as one segment's table, each with its request hash (answers for ids the job did not send left out).

    With :class:`RowHashes`, the answers are put in the order of the job's
    rows (an output file may list them in any order): a job's segments are
    then runs of rows that its join matches and takes as slices, without a
    hash table or a copy of every answer.
    """
    ids = answers.arrow("custom_id") if answers.is_arrow("custom_id") else answers.custom_id
    keep = None  # rows of the table to keep, in row order (None: all, as they are)
    if isinstance(hashes, RowHashes):
        pos = hashes.positions(ids)
        row_hashes = hashes.arrow_at(pos)
        if len(pos) and (bool((pos < 0).any()) or bool((pos[1:] < pos[:-1]).any())):
            order = np.argsort(pos, kind="stable")
            keep = pa.array(order[pos[order] >= 0])  # an id the job did not send has no hash: left out
    else:
        row_hashes = pa.array(_lookup(hashes, ids.to_pylist() if isinstance(ids, pa.ChunkedArray) else ids), pa.string())
    table = segments.table_of(answers, row_hashes, attempt)
    if keep is not None:
        return table.take(keep)
    return table.filter(pc.is_valid(table.column("hash"))) if row_hashes.null_count else table


def _origins(seq: pa.ChunkedArray) -> np.ndarray:
    """The segment of each answer from its ``seq`` (-1: stored one at a time), 32 bits wide where ids fit.

    Made a chunk at a time: ``seq`` is kept as one value per segment (see
    :func:`~pdbatch.job.segments.lean`), not as 64 bits a row.
    """
    parts = []
    for chunk in seq.chunks:
        values = chunk.to_numpy(zero_copy_only=False)
        parts.append(np.where(values == _ALONE, -1, values))
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return out.astype(np.int32) if not len(out) or int(out.max()) < 2**31 else out


def _adds_no_row_twice(known: pa.ChunkedArray, added: List[pa.Table]) -> bool:
    """Whether the ``custom_id`` of ``added`` tables name each row once and none of ``known`` (distinct ids).

    The hash table is made of the added ids only (a shard's), not of every
    answered row: a poll after each shard of a million rows stays small.
    """
    new = pa.chunked_array([c for t in added for c in t.column("custom_id").chunks], type=pa.string()).combine_chunks()
    if pc.count_distinct(new).as_py() != len(new):
        return False
    return not len(known) or not len(new) or not pc.any(pc.is_in(known, value_set=new)).as_py()


class AnswerStore:
    """Answers by job and custom_id, and successful answers by request hash (needs ``_db``, ``_lock``, ``_tx``)."""

    def put_answers(self, job_id: str, answers: Answers, hashes: Union[RowHashes, Mapping[str, str]], *, attempt: int = 0,
                    source: str = "api") -> int:
        """Store answers by custom_id; ``hashes`` holds each row's request hash (answers of other ids are ignored).

        A few answers (arriving one at a time) become rows of the per-row
        table; many (a shard's results, a cache hit list) become one segment.
        Either way a later attempt replaces an earlier one, and within one
        attempt a success is never replaced by a failure. Returns how many
        answers were stored.
        """
        if len(answers) >= SEGMENT_MIN:
            return self.put_segment(job_id, answers, hashes, attempt=attempt, source=source)[0]
        t0 = time.perf_counter()
        now = time.time()
        cols = answers.columns()
        content = cols[1]  # an embedding vector is kept as float32 bytes
        cols[1] = [v.astype(np.float32).tobytes() if isinstance(v, np.ndarray) else v for v in content]
        rows = []
        for i, (cid, h) in enumerate(zip(answers.custom_id, _lookup(hashes, answers.custom_id))):
            if h is None:
                continue
            rows.append((job_id, cid, h, attempt, *(c[i] for c in cols), source, now))
        if not rows:
            return 0
        names = ("job_id", "custom_id", "hash", "attempt") + _ANSWER_COLS + ("source", "created_at")
        updates = ", ".join(f"{k} = excluded.{k}" for k in names[2:])
        with self._tx() as db:
            db.executemany(
                f"INSERT INTO answers ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
                f"ON CONFLICT(job_id, custom_id) DO UPDATE SET {updates} "
                f"WHERE answers.ok = 0 OR excluded.attempt > answers.attempt",
                rows,
            )
        self._count("write", t0, len(rows))
        return len(rows)

    def put_segment(self, job_id: str, answers: Union[Answers, pa.Table], hashes: Union[RowHashes, Mapping[str, str], None],
                    *, attempt: int = 0, source: str = "api") -> Tuple[int, Optional[int]]:
        """Store many answers as one segment (one blob); its successes are indexed for the cache on first lookup.

        ``hashes`` gives each answer's request hash by custom_id; ``answers``
        may instead be the table :func:`segment_table` made of them (``hashes``
        then unused).

        Returns how many answers were stored and the segment's id (None when none was).
        """
        t0 = time.perf_counter()
        table = answers if isinstance(answers, pa.Table) else segment_table(answers, hashes, attempt)
        if not table.num_rows:
            return 0, None
        blob = segments.Encoded(table)
        with self._tx() as db:
            seg = segments.insert_segment(db, {
                "job_id": job_id, "attempt": attempt, "source": source, "rows": table.num_rows,
                "v": segments.SEGMENT_VERSION, "created_at": time.time(), "indexed": 0}, blob)
        if segments.textual(table):  # kept as read back (seq: the segment's id), for this job's polls and join
            kept = self.__dict__.setdefault("_written", {})
            if any(job != job_id for job, _ in kept):
                kept.clear()  # one job at a time: another job's are read from the store when asked
            kept[job_id, seg] = segments.lean(table.set_column(
                table.schema.get_field_index("seq"), "seq", pa.array(np.full(table.num_rows, seg))))
        self._count("write", t0, table.num_rows)
        return table.num_rows, seg

    def _index_segments(self) -> None:
        """Index the successful answers of segments not indexed yet by request hash (done once per segment).

        Deferred from :meth:`put_segment` to the first cache lookup after it:
        a ``map`` that runs once never pays for an index nothing reads.
        """
        with self._lock:
            pending = self._db.execute(f"{segments.DATA} WHERE s.indexed = 0 ORDER BY s.id").fetchall()
        for seg, blob in pending:
            table = segments.decode(blob, seg)
            ok = np.flatnonzero(table.column("ok").to_numpy(zero_copy_only=False))
            keys = table.column("hash").take(pa.array(ok)).to_pylist()
            index = sorted(zip(map(segments.hash_key, keys), ok.tolist()))
            with self._tx() as db:
                if db.execute("SELECT indexed FROM segments WHERE id = ?", (seg,)).fetchone() != (0,):
                    continue  # another process indexed it meanwhile
                db.executemany("INSERT OR REPLACE INTO segment_hashes (h, segment, pos) VALUES (?, ?, ?)",
                               ((h, seg, pos) for h, pos in index))
                db.execute("UPDATE segments SET indexed = 1 WHERE id = ?", (seg,))

    def _count(self, what: str, t0: float, rows: int) -> None:
        self.cost[f"{what}_seconds"] += time.perf_counter() - t0
        self.cost["written" if what == "write" else "read"] += rows

    def _segment_tables(self, job_id: str) -> List[pa.Table]:
        with self._lock:
            rows = self._db.execute(f"{segments.DATA} WHERE s.job_id = ? ORDER BY s.id",
                                    (job_id,)).fetchall()
        return [segments.decode(blob, seq) for seq, blob in rows]

    def _generation(self, job_id: str) -> tuple:
        """What changes whenever an answer of the job is stored, by any process (cheap: two indexed queries)."""
        with self._lock:
            seg = self._db.execute("SELECT COUNT(*), MAX(id) FROM segments WHERE job_id = ?", (job_id,)).fetchone()
            one = self._db.execute("SELECT COUNT(*), MAX(created_at), SUM(attempt) FROM answers WHERE job_id = ?",
                                   (job_id,)).fetchone()
        return tuple(seg) + tuple(one)

    def answers(self, job_id: str) -> Answers:
        """Every stored answer of a job, column-wise (Arrow columns; one answer per custom_id).

        Read afresh at each call and not kept. The texts (``content``) are
        not read with the rest: they are a :class:`~pdbatch.core.answers.Deferred`
        column, read a segment at a time for the rows asked for, so a join
        that parsed its answers as they arrived reads only the failed ones.
        ``origin`` says which segment each answer is in. Progress polls use
        :meth:`count_answers`, which reads no text.
        """
        t0 = time.perf_counter()
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM segments WHERE job_id = ? ORDER BY id", (job_id,))]
        tables = []
        kept = self.__dict__.get("_written", {})
        for seg in ids:
            lean = kept.pop((job_id, seg), None)  # written by this process: not read back (and let go once used)
            if lean is not None:
                tables.append(lean)
                continue
            table = self._segment(seg)
            if not segments.textual(table):  # embeddings: vectors are read whole (see segments.answers_of)
                return self._answers_whole(job_id, t0)
            tables.append(segments.lean(table))  # a copy (see lean): the blob is let go
        alone = self._alone(job_id)
        if alone is not None:
            if not segments.textual(alone):
                return self._answers_whole(job_id, t0)
            tables.append(segments.lean(alone))
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return Answers()
        table = segments.concat_kept(tables)
        if self.__dict__.get("_distinct") != (job_id, self._generation(job_id)):  # else a poll found no id twice
            table = segments.latest(table)
        origin = _origins(table.column("seq"))
        pos = table.column("pos").to_numpy()
        alone_text = alone.column("content").cast(pa.string()) if alone is not None else None
        cols = {name: table.column(name) for name in ("custom_id",) + _ANSWER_COLS if name != "content"}
        out = Answers(content=Deferred(table.num_rows, lambda rows: self._texts(origin[rows], pos[rows], alone_text)),
                      **cols)
        out.origin = origin
        self._count("read", t0, len(out))
        return out

    def _segment(self, seg: int) -> pa.Table:
        with self._lock:
            blob = self._db.execute("SELECT data FROM segment_data WHERE id = ?", (seg,)).fetchone()[0]
        self.cost["segments_read"] += 1
        return segments.decode(blob, seg)

    def _alone(self, job_id: str) -> Optional[pa.Table]:
        """The job's answers stored one at a time, as a segment table (after every segment in precedence)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT custom_id, hash, attempt, {', '.join(_ANSWER_COLS)} FROM answers WHERE job_id = ?",
                (job_id,)).fetchall()
        if not rows:
            return None
        one = Answers.from_rows([(r[0],) + tuple(r[3:]) for r in rows])
        table = segments.table_of(one, [r[1] for r in rows], 0, seq=_ALONE)
        return table.set_column(2, "attempt", pa.array([r[2] for r in rows], pa.int64()))

    def _texts(self, origin: np.ndarray, pos: np.ndarray, alone: Optional[pa.ChunkedArray]) -> pa.Array:
        """The texts at (segment, position) pairs (segment -1: the answers stored one at a time), in the order given.

        One segment is read at a time.
        """
        if not len(origin):
            return pa.array([], pa.string())
        self.cost["texts_read"] += len(origin)
        order = np.argsort(origin, kind="stable")
        cuts = np.flatnonzero(np.diff(origin[order])) + 1
        parts = []
        for group in np.split(order, cuts):
            seg = int(origin[group[0]])
            col = alone if seg < 0 else self._segment(seg).column("content")
            parts.append(col.take(pa.array(pos[group])).cast(pa.string()).combine_chunks())
        back = np.empty(len(origin), dtype=np.int64)
        back[order] = np.arange(len(origin))
        return pa.concat_arrays(parts).take(pa.array(back))

    def _answers_whole(self, job_id: str, t0: float) -> Answers:
        """Every answer with its content read at once (embedding vectors)."""
        tables = self._segment_tables(job_id)
        alone = self._alone(job_id)
        if alone is not None:
            tables.append(alone)
        out = segments.answers_of(tables)
        self._count("read", t0, len(out))
        return out

    def _status(self, job_id: str) -> pa.Table:
        """``custom_id`` and ``ok`` of the latest answer of every answered row of a job, no texts.

        A segment never changes once stored, so each is read once and only
        its four small columns are kept (a copy: the blob is let go); the
        result is kept until the job's answers change, for one job at a time.
        When the last result had each row once and only segments were added,
        the new ones are checked against it (:func:`_adds_no_row_twice`)
        instead of ranking every answer again.
        """
        key = (job_id, self._generation(job_id))
        memo = getattr(self, "_status_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        seen = memo[2] if memo is not None and memo[0][0] == job_id else {}
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM segments WHERE job_id = ? ORDER BY id", (job_id,))]
        kept = self.__dict__.get("_written", {})
        before = dict(seen)
        for seg in ids:
            if seg in seen:
                continue
            if (job_id, seg) in kept:
                seen[seg] = kept[job_id, seg].select(list(_STATUS)).cast(_STATUS_SCHEMA)  # no copy: already narrow
                continue
            t = self._segment(seg).select(list(_STATUS))
            t = t.set_column(t.schema.get_field_index("seq"), "seq",
                             segments.one_value(t.num_rows, seg, pa.int64())).cast(_STATUS_SCHEMA)
            seen[seg] = t.take(pa.array(np.arange(t.num_rows, dtype=np.int64)))
        with self._lock:
            rows = self._db.execute("SELECT custom_id, attempt, ok FROM answers WHERE job_id = ?", (job_id,)).fetchall()
        tables = [seen[seg] for seg in ids]
        if rows:
            cid, attempt, ok = zip(*rows)
            tables.append(pa.table({"custom_id": pa.array(cid, pa.string()), "attempt": pa.array(attempt, pa.int32()),
                                    "seq": segments.one_value(len(rows), _ALONE, pa.int64()),
                                    "ok": pa.array([bool(v) for v in ok], pa.bool_())}))
        both = pa.concat_tables(tables) if tables else pa.table({k: pa.array([], t) for k, t in _STATUS.items()})
        distinct_before = memo is not None and memo[0][0] == job_id and self.__dict__.get("_distinct") == memo[0]
        if (not rows and distinct_before and set(before) <= set(ids)
                and _adds_no_row_twice(memo[1].column("custom_id"), [seen[seg] for seg in ids if seg not in before])):
            table = both
        else:
            table = segments.latest(both)
        self._distinct = key if table.num_rows == both.num_rows else None  # each answered row once: answers() knows
        self._status_memo = (key, table, {seg: seen[seg] for seg in ids})
        return table

    def release(self) -> None:
        """Let go of the answered-rows table kept for progress polls (read again when next asked).

        Freed memory then goes back to the system (:func:`~pdbatch.core.memory.give_back`): a job calls
        this before its join, which would otherwise peak on top of what the polls left behind.
        """
        self._status_memo = None
        give_back()

    def usage(self, job_id: str) -> Usage:
        """Token usage summed over a job's stored answers."""
        return self.answers(job_id).usage

    def count_answers(self, job_id: str, ok_only: bool = False) -> int:
        """How many custom_ids have a stored answer (with ``ok_only``, a plain success) in this job."""
        t = self._status(job_id)
        if not ok_only or not t.num_rows:
            return t.num_rows
        return int(pc.sum(t.column("ok")).as_py() or 0)

    def answered_ids(self, job_id: str, ok_only: bool = False) -> set:
        """custom_ids with a stored answer (with ``ok_only``, a plain success) in this job."""
        t = self._status(job_id)
        if not t.num_rows:
            return set()
        cid = t.column("custom_id")
        return set((cid.filter(t.column("ok")) if ok_only else cid).to_pylist())

    def cached(self, hashes: Iterable[str]) -> Dict[str, tuple]:
        """Successful answers stored under any of ``hashes`` (the cache), by hash: ``(*COLUMNS)`` tuples."""
        hashes = list(hashes)
        out: Dict[str, tuple] = {}
        self._index_segments()
        with self._tx() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS want(hash TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS want_key(h INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM want")
            db.execute("DELETE FROM want_key")
            db.executemany("INSERT OR IGNORE INTO want VALUES (?)", ((h,) for h in hashes))
            rows = db.execute(
                f"SELECT a.hash, {', '.join('a.' + c for c in _ANSWER_COLS)} FROM answers a "
                f"JOIN want w ON a.hash = w.hash WHERE a.ok = 1"
            ).fetchall()
            db.executemany("INSERT OR IGNORE INTO want_key VALUES (?)", ((segments.hash_key(h),) for h in hashes))
            hits = db.execute("SELECT s.segment, s.pos FROM segment_hashes s JOIN want_key w ON s.h = w.h").fetchall()
            blobs = {}
            for seg in {h[0] for h in hits}:
                blobs[seg] = db.execute("SELECT data FROM segment_data WHERE id = ?", (seg,)).fetchone()[0]
            db.execute("DELETE FROM want")
            db.execute("DELETE FROM want_key")
        for r in rows:
            out[r[0]] = tuple(r[1:])
        if hits:
            wanted = set(hashes)
            by_segment: Dict[int, List[int]] = {}
            for seg, pos in hits:
                by_segment.setdefault(seg, []).append(pos)
            for seg, positions in by_segment.items():
                table = segments.decode(blobs[seg], seg).take(pa.array(positions))
                one = segments.answers_of([table])
                for i, h in enumerate(table.column("hash").to_pylist()):
                    if h in wanted and h not in out:  # the full hash confirms the 64-bit key
                        out[h] = tuple(getattr(one, name)[i] for name in _ANSWER_COLS)
        return out
