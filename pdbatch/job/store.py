"""The embedded job store (SQLite, WAL): jobs, shards, batch ids, answers.

Everything that must outlive the process lives here: a job (its request
fingerprint, model, endpoint, backend, the spec that rebuilds its parsing), its
shards with their file and batch ids and state, the request hash of every row,
and every answer received (by job and custom_id, and by request hash — the
cache). No API key, token or other secret is ever written: clients are never
stored, only what the requests and answers contain.

One file, ``$PDBATCH_HOME/store.sqlite3``; many processes may use it at once
(WAL, a busy timeout, ``BEGIN IMMEDIATE`` where a decision must be atomic).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import orjson

from ..core.answers import Answers
from ..core.records import Usage

__all__ = ["Store", "JobRecord", "STORE_VERSION", "default_store", "store_path", "pdbatch_home"]

STORE_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS jobs(
    id TEXT PRIMARY KEY, created_at REAL, fingerprint TEXT, backend TEXT, model TEXT, endpoint TEXT,
    rows INTEGER, sent INTEGER, cached INTEGER, state TEXT, spec TEXT, workdir TEXT, v INTEGER);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs(fingerprint, created_at);
CREATE TABLE IF NOT EXISTS shards(
    job_id TEXT, idx INTEGER, attempt INTEGER, path TEXT, count INTEGER, bytes INTEGER,
    file_id TEXT, batch_id TEXT, status TEXT, output_file_id TEXT, error_file_id TEXT,
    completed INTEGER, failed INTEGER, errors TEXT, ingested INTEGER DEFAULT 0, updated_at REAL,
    PRIMARY KEY(job_id, idx));
CREATE TABLE IF NOT EXISTS rows(
    job_id TEXT, custom_id TEXT, hash TEXT, PRIMARY KEY(job_id, custom_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS answers(
    job_id TEXT, custom_id TEXT, hash TEXT, attempt INTEGER, status_code INTEGER, content TEXT,
    finish_reason TEXT, refusal TEXT, has_choice INTEGER, error_code TEXT, error_message TEXT, ok INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER, reasoning_tokens INTEGER,
    source TEXT, created_at REAL, PRIMARY KEY(job_id, custom_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_hash ON answers(hash) WHERE ok = 1;
"""

#: Answer columns, in table order after (job_id, custom_id, hash, attempt).
_ANSWER_COLS = (
    "status_code", "content", "finish_reason", "refusal", "has_choice", "error_code", "error_message", "ok",
    "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
)
_SHARD_COLS = (
    "attempt", "path", "count", "bytes", "file_id", "batch_id", "status", "output_file_id",
    "error_file_id", "completed", "failed", "errors", "ingested",
)


def pdbatch_home() -> str:
    """Where pdbatch keeps its files: ``$PDBATCH_HOME`` or a per-user cache directory."""
    home = os.environ.get("PDBATCH_HOME")
    if home:
        return os.path.expanduser(home)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pdbatch")


def store_path() -> str:
    """``$PDBATCH_HOME/store.sqlite3`` (see :func:`pdbatch_home`)."""
    return os.path.join(pdbatch_home(), "store.sqlite3")


@dataclass
class JobRecord:
    """One job as stored (``spec`` is the JSON that rebuilds its parsing)."""

    id: str
    created_at: float
    fingerprint: str
    backend: str
    model: Optional[str]
    endpoint: str
    rows: int
    sent: int = 0
    cached: int = 0
    state: str = "created"
    spec: Dict[str, Any] = field(default_factory=dict)
    workdir: str = ""
    v: int = STORE_VERSION

    def to_row(self) -> tuple:
        return (self.id, self.created_at, self.fingerprint, self.backend, self.model, self.endpoint, self.rows,
                self.sent, self.cached, self.state, orjson.dumps(self.spec).decode(), self.workdir, self.v)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "JobRecord":
        (id_, created, fp, backend, model, endpoint, rows, sent, cached, state, spec, workdir, v) = row
        return cls(id_, created, fp, backend, model, endpoint, rows, sent, cached, state,
                   orjson.loads(spec) if spec else {}, workdir, v)


class Store:
    """The SQLite job store.

    Parameters
    ----------
    path : str, optional
        The database file; default :func:`store_path`.

    Examples
    --------
    >>> import tempfile, os
    >>> s = Store(os.path.join(tempfile.mkdtemp(), "store.sqlite3"))
    >>> rec = JobRecord("job_1", 0.0, "fp", "batch", "m", "/v1/chat/completions", 2)
    >>> s.create_or_attach(rec)[1]
    True
    >>> s.create_or_attach(JobRecord("job_2", 1.0, "fp", "batch", "m", "/v1/chat/completions", 2))[0].id
    'job_1'
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path or store_path()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
        self._init()

    def _init(self, seconds: float = 60.0) -> None:
        """Switch to WAL and create the tables, waiting for other processes doing the same.

        Turning a new database to WAL takes an exclusive lock that SQLite does
        not wait for (no busy handler): two processes opening a new store at
        once would otherwise fail with "database is locked".
        """
        deadline = time.monotonic() + seconds
        delay = 0.01
        while True:
            try:
                with self._lock:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute("PRAGMA synchronous=NORMAL")
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                self._db.execute(statement)
                        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (str(STORE_VERSION),))
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                    self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------- jobs
    def create_or_attach(self, record: JobRecord, reuse: bool = True) -> Tuple[JobRecord, bool]:
        """Atomically find the newest job with ``record.fingerprint`` or insert ``record``.

        Returns ``(job, created)``. Two processes running the same ``map`` at
        once get the same job: one creates it, the other attaches to it.
        A cancelled job (``cancelling``, ``cancelled``) is never reused: running the same map
        after ``cancel()`` starts a new job, which takes the answers that did
        arrive from the cache and sends the rest.
        """
        with self._tx(immediate=True) as db:
            if reuse:
                row = db.execute(
                    "SELECT * FROM jobs WHERE fingerprint = ? AND state NOT IN ('abandoned', 'cancelling', 'cancelled') "
                    "ORDER BY created_at DESC LIMIT 1",
                    (record.fingerprint,),
                ).fetchone()
                if row is not None:
                    return JobRecord.from_row(row), False
            db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", record.to_row())
            return record, True

    def job(self, job_id: str) -> Optional[JobRecord]:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def jobs(self, limit: int = 100) -> List[JobRecord]:
        """The newest jobs first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        if "spec" in fields:
            fields["spec"] = orjson.dumps(fields["spec"]).decode()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    # ------------------------------------------------------------------- rows
    def put_rows(self, job_id: str, custom_ids: Sequence[str], hashes: Sequence[str]) -> None:
        """Record the request hash of each row that was sent or answered from the cache."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO rows (job_id, custom_id, hash) VALUES (?,?,?)",
                           ((job_id, c, h) for c, h in zip(custom_ids, hashes)))

    def row_hashes(self, job_id: str) -> Dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT custom_id, hash FROM rows WHERE job_id = ?", (job_id,)))

    # ----------------------------------------------------------------- shards
    def put_shard(self, job_id: str, idx: int, **fields: Any) -> None:
        """Insert or update one shard's fields (``errors`` as a list)."""
        if "errors" in fields and not isinstance(fields["errors"], (str, type(None))):
            fields["errors"] = orjson.dumps(fields["errors"]).decode()
        fields["updated_at"] = time.time()
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{k} = excluded.{k}" for k in fields)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO shards (job_id, idx, {cols}) VALUES (?, ?, {marks}) "
                f"ON CONFLICT(job_id, idx) DO UPDATE SET {updates}",
                (job_id, idx, *fields.values()),
            )

    def shards(self, job_id: str) -> List[Dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                f"SELECT idx, {', '.join(_SHARD_COLS)} FROM shards WHERE job_id = ? ORDER BY idx", (job_id,)
            )
            rows = cur.fetchall()
        out = []
        for r in rows:
            d = dict(zip(("index",) + _SHARD_COLS, r))
            d["errors"] = orjson.loads(d["errors"]) if d["errors"] else []
            out.append(d)
        return out

    # ---------------------------------------------------------------- answers
    def put_answers(self, job_id: str, answers: Answers, hashes: Dict[str, str], *, attempt: int = 0,
                    source: str = "api") -> int:
        """Store answers by custom_id: a later attempt replaces an earlier one, and within one
        attempt a success is never replaced by a failure (duplicate lines).

        ``hashes`` maps custom_id to request hash (answers for unknown ids are
        ignored). Returns how many rows were written.
        """
        now = time.time()
        cols = answers.columns()
        content = cols[1]  # an embedding vector is kept as float32 bytes
        cols[1] = [v.astype(np.float32).tobytes() if isinstance(v, np.ndarray) else v for v in content]
        rows = []
        for i, cid in enumerate(answers.custom_id):
            h = hashes.get(cid)
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
        return len(rows)

    def answers(self, job_id: str) -> Answers:
        """Every stored answer of a job, column-wise."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT custom_id, {', '.join(_ANSWER_COLS)} FROM answers WHERE job_id = ?", (job_id,)
            ).fetchall()
        return Answers.from_rows(rows)

    def usage(self, job_id: str) -> Usage:
        """Token usage summed over a job's stored answers (without loading them)."""
        with self._lock:
            row = self._db.execute(
                "SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(reasoning_tokens) "
                "FROM answers WHERE job_id = ?", (job_id,)).fetchone()
        return Usage(*(int(v or 0) for v in row))

    def count_answers(self, job_id: str, ok_only: bool = False) -> int:
        q = "SELECT COUNT(*) FROM answers WHERE job_id = ?" + (" AND ok = 1" if ok_only else "")
        with self._lock:
            return self._db.execute(q, (job_id,)).fetchone()[0]

    def answered_ids(self, job_id: str, ok_only: bool = False) -> set:
        q = "SELECT custom_id FROM answers WHERE job_id = ?" + (" AND ok = 1" if ok_only else "")
        with self._lock:
            return {r[0] for r in self._db.execute(q, (job_id,))}

    def cached(self, hashes: Iterable[str]) -> Dict[str, tuple]:
        """Successful answers stored under any of ``hashes`` (the cache), by hash."""
        with self._tx() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS want(hash TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM want")
            db.executemany("INSERT OR IGNORE INTO want VALUES (?)", ((h,) for h in hashes))
            rows = db.execute(
                f"SELECT a.hash, {', '.join('a.' + c for c in _ANSWER_COLS)} FROM answers a "
                f"JOIN want w ON a.hash = w.hash WHERE a.ok = 1"
            ).fetchall()
            db.execute("DELETE FROM want")
        return {r[0]: tuple(r[1:]) for r in rows}

    def raw_bytes_contain(self, needle: bytes) -> bool:
        """True if ``needle`` occurs anywhere in the database files (a secrets check)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(FULL)")
        for suffix in ("", "-wal", "-shm"):
            p = self.path + suffix
            if os.path.exists(p):
                with open(p, "rb") as fh:
                    if needle in fh.read():
                        return True
        return False


_DEFAULT: Dict[str, Store] = {}
_DEFAULT_LOCK = threading.Lock()


def default_store() -> Store:
    """The store under the current ``$PDBATCH_HOME`` (one connection per path per process)."""
    path = store_path()
    with _DEFAULT_LOCK:
        s = _DEFAULT.get(path)
        if s is None:
            s = _DEFAULT[path] = Store(path)
        return s
