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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import orjson
import pyarrow as pa

from ..errors import JobError
from . import segments
from .answer_store import AnswerStore
from .hashes import RowHashes
from .migrations import SCHEMA_VERSION, migrate

__all__ = ["Store", "JobRecord", "STORE_VERSION", "RECORD_VERSION", "default_store", "store_path", "pdbatch_home"]

#: The schema version this release writes (``PRAGMA user_version``; see :mod:`pdbatch.job.migrations`).
STORE_VERSION = SCHEMA_VERSION
#: The version of a job record (its ``v`` column): the shape of its ``spec`` JSON.
RECORD_VERSION = 1

_JOB_COLS = ("id", "created_at", "fingerprint", "backend", "model", "endpoint", "rows", "sent", "cached", "state",
             "spec", "workdir", "v")
_SHARD_COLS = (
    "attempt", "path", "count", "bytes", "file_id", "batch_id", "status", "output_file_id",
    "error_file_id", "completed", "failed", "errors", "ingested",
)
_ROWS_VERSION = 1


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
    """One job as stored (``spec`` is the JSON that rebuilds its parsing; ``v`` its version)."""

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
    v: int = RECORD_VERSION

    def to_row(self) -> tuple:
        """The values of :data:`_JOB_COLS`, in that order."""
        return (self.id, self.created_at, self.fingerprint, self.backend, self.model, self.endpoint, self.rows,
                self.sent, self.cached, self.state, orjson.dumps(self.spec).decode(), self.workdir, self.v)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "JobRecord":
        """From the values of :data:`_JOB_COLS`; refuses a record newer than this release reads."""
        (id_, created, fp, backend, model, endpoint, rows, sent, cached, state, spec, workdir, v) = row
        if (v or 1) > RECORD_VERSION:
            raise JobError(f"job {id_} was written by a newer pdbatch (record version {v}); upgrade pdbatch")
        return cls(id_, created, fp, backend, model, endpoint, rows, sent, cached, state,
                   orjson.loads(spec) if spec else {}, workdir, v or 1)


_SELECT_JOB = f"SELECT {', '.join(_JOB_COLS)} FROM jobs"
_INSERT_JOB = f"INSERT INTO jobs ({', '.join(_JOB_COLS)}) VALUES ({', '.join('?' for _ in _JOB_COLS)})"


class Store(AnswerStore):
    """The SQLite job store.

    Parameters
    ----------
    path : str, optional
        The database file; default :func:`store_path`.

    Attributes
    ----------
    cost : dict
        Seconds spent and answers moved by this connection: ``write_seconds``,
        ``written``, ``read_seconds``, ``read`` (what the benchmark reports as
        the store's cost per row).

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
        self.cost = {"write_seconds": 0.0, "written": 0, "read_seconds": 0.0, "read": 0, "segments_read": 0,
                     "texts_read": 0}
        self._init()

    def _init(self, seconds: float = 60.0) -> None:
        """Switch to WAL and migrate the schema, waiting for other processes doing the same.

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
                        migrate(self._db, self.path)
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

    @property
    def version(self) -> int:
        """The schema version of the open store."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

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
    def create_or_attach(self, record: JobRecord, reuse: bool = True,
                         also: Sequence[str] = ()) -> Tuple[JobRecord, bool]:
        """Atomically find the newest job with ``record.fingerprint`` or insert ``record``.

        Returns ``(job, created)``. Two processes running the same ``map`` at
        once get the same job: one creates it, the other attaches to it.
        A cancelled job (``cancelling``, ``cancelled``) is never reused: running the same map
        after ``cancel()`` starts a new job, which takes the answers that did
        arrive from the cache and sends the rest.
        """
        with self._tx(immediate=True) as db:
            if reuse:
                prints = [record.fingerprint, *also]
                row = db.execute(
                    f"{_SELECT_JOB} WHERE fingerprint IN ({', '.join('?' for _ in prints)}) "
                    "AND state NOT IN ('abandoned', 'cancelling', 'cancelled') ORDER BY created_at DESC LIMIT 1",
                    prints,
                ).fetchone()
                if row is not None:
                    return JobRecord.from_row(row), False
            db.execute(_INSERT_JOB, record.to_row())
            return record, True

    def has_open_jobs(self, fingerprint_prefix: str) -> bool:
        """Whether an unfinished job whose fingerprint does *not* start with ``fingerprint_prefix`` exists.

        Such a job was fingerprinted by an earlier release; a re-run must
        still find it (it may have batches in flight).
        """
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE substr(fingerprint, 1, ?) != ? "
                "AND state NOT IN ('abandoned', 'cancelling', 'cancelled', 'finished') LIMIT 1",
                (len(fingerprint_prefix), fingerprint_prefix)).fetchone()
        return row is not None

    def job(self, job_id: str) -> Optional[JobRecord]:
        with self._lock:
            row = self._db.execute(f"{_SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def jobs(self, limit: int = 100) -> List[JobRecord]:
        """The newest jobs first."""
        with self._lock:
            rows = self._db.execute(f"{_SELECT_JOB} ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        unknown = set(fields) - set(_JOB_COLS[1:])
        if unknown:
            raise TypeError(f"update_job: unknown job fields {sorted(unknown)}")
        if "spec" in fields:
            fields["spec"] = orjson.dumps(fields["spec"]).decode()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    # ------------------------------------------------------------------- rows
    def put_rows(self, job_id: str, hashes: RowHashes) -> None:
        """Record the request hash of each row that was sent or answered from the cache (one blob a job)."""
        t0 = time.perf_counter()
        table = hashes.arrow()
        blob = segments.Encoded(table.append_column("seq", pa.array(np.zeros(len(table), dtype=np.int64))))
        with self._tx() as db:
            segments.insert_blob(db, "INSERT OR REPLACE", "row_sets", {"job_id": job_id, "v": _ROWS_VERSION}, blob)
        self.cost["write_seconds"] += time.perf_counter() - t0

    def row_hashes(self, job_id: str) -> RowHashes:
        """custom_id -> request hash of a job's rows (from its blob, or the per-row table of older stores)."""
        with self._lock:
            row = self._db.execute("SELECT v, data FROM row_sets WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                pairs = self._db.execute("SELECT custom_id, hash FROM rows WHERE job_id = ?", (job_id,)).fetchall()
                out = RowHashes()
                out.add([p[0] for p in pairs], [p[1] for p in pairs])
                return out
        v, blob = row
        if v > _ROWS_VERSION:
            raise JobError(f"job {job_id}: its rows were written by a newer pdbatch (version {v}); upgrade pdbatch")
        table = segments.decode(blob, 0)
        return RowHashes.from_arrow(table.column("custom_id"), table.column("hash"))

    # ----------------------------------------------------------------- shards
    def put_shard(self, job_id: str, idx: int, **fields: Any) -> None:
        """Insert or update one shard's fields (``errors`` as a list)."""
        unknown = set(fields) - set(_SHARD_COLS)
        if unknown:
            raise TypeError(f"put_shard: unknown shard fields {sorted(unknown)}")
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
