"""Durable state of the local Batch API server: files and batches in SQLite, answers in JSONL.

:class:`Store` keeps the file and batch objects (the exact JSON the API
returns) in memory for fast reads and writes every change through to SQLite
as it happens: a server started again on the same ``data_dir`` -- after a
clean stop or a ``kill -9`` -- finds every file and batch, and its worker
resumes the batches that had not ended. Layout of ``data_dir``:

* ``state/server.sqlite3``: tables ``files`` and ``batches``, one JSON object
  per row (``user_version``: the schema). WAL, ``synchronous=FULL``: an answered
  upload, batch creation or cancel survives a power cut too (``NORMAL``: only a
  crash); commits are few (one per such call, one per running batch every
  ``SYNC_SECONDS``), so it costs a few fsyncs a second;
  ``state/lock`` is held (``flock``) while a server uses the directory.
* ``<file id>``: an upload, fsync'd (content, then name) before it is answered;
  ``incoming/``: uploads being received.
* ``batches/<batch id>/output.jsonl`` and ``error.jsonl``: a batch's answers,
  appended as they are produced and made durable per chunk by the worker;
  when the batch ends they *are* its output and error files.
* ``messages/<msgbatch id>/requests.jsonl`` and ``results.jsonl``: an Anthropic
  Message Batch (its object in table ``message_batches``), run the same way.

Deadlines, against :attr:`Store.now`: past a file's ``expires_at``
(``expires_after`` of an upload, ``output_expires_after`` of a batch) the
file is deleted (404), except an input file, kept until the batches running
on it end; with ``retention`` (seconds), a batch that ended longer ago is
deleted with its output and error files and its input file (unless another
batch uses it). Deadlines are swept on the first read after them and by the
idle worker, so a client never sees an object past its deadline.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import orjson

from ..errors import ServerError
from .disk import lock_dir, sync_dir, sync_file
from .state import new_id, page, parse_duration

__all__ = ["Store", "parse_duration", "SCHEMA_VERSION", "TERMINAL", "WINDOW_SECONDS"]

SCHEMA_VERSION = 1
WINDOW_SECONDS = 24 * 3600
TERMINAL = ("completed", "failed", "expired", "cancelled")
_ENDED_AT = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
             "cancelled": "cancelled_at"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, obj BLOB NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, obj BLOB NOT NULL, output_ttl INTEGER);
CREATE TABLE IF NOT EXISTS message_batches (id TEXT PRIMARY KEY, obj BLOB NOT NULL);
"""


class Store:
    """Files and batch objects, in memory and in SQLite, guarded by one lock.

    Parameters
    ----------
    root : Path
        The data directory (created when missing).
    now : callable
        The clock (``time.time`` by default): every timestamp and deadline.
    retention : float, optional
        Seconds a finished batch is kept; forever when ``None``.

    Attributes
    ----------
    files, batches : dict
        Objects by id, in creation order; read them under :attr:`lock`.
    """

    def __init__(self, root: Path, now: Callable[[], float] = time.time,
                 retention: Optional[float] = None) -> None:
        self.root, self.now, self.retention = Path(root), now, retention
        self.lock = threading.RLock()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._paths: dict[str, Path] = {}
        self._output_ttl: dict[str, int] = {}  # output_expires_after of a batch, in seconds
        self._due = 0.0  # the earliest deadline of a sweep: sweep on the first read
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        self._lock_handle = lock_dir(self.root / "state" / "lock")
        shutil.rmtree(self.root / "incoming", ignore_errors=True)  # uploads cut off by a crash
        for sub in ("incoming", "batches"):
            (self.root / sub).mkdir(exist_ok=True)
        self._db: Optional[sqlite3.Connection] = None
        try:
            self._db = self._open(self.root / "state" / "server.sqlite3")
            self._load()
        except BaseException:
            self.close()
            raise

    # -- the database --------------------------------------------------------
    def _open(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ServerError(f"{path} was written by a newer pdbatch (schema {version}, this "
                                  f"one reads {SCHEMA_VERSION}): upgrade pdbatch or choose "
                                  "another --data-dir")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # every commit answered is on the disk (module doc)
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ServerError(f"cannot read the server state {path}: {exc}; move it away or "
                              "choose another --data-dir") from exc
        except BaseException:
            db.close()
            raise
        return db

    def _load(self) -> None:
        for file_id, obj, rel in self._db.execute("SELECT id, obj, path FROM files ORDER BY rowid"):
            self.files[file_id] = orjson.loads(obj)
            self._paths[file_id] = self.root / rel
        for batch_id, obj, ttl in self._db.execute(
                "SELECT id, obj, output_ttl FROM batches ORDER BY rowid"):
            self.batches[batch_id] = orjson.loads(obj)
            if ttl is not None:
                self._output_ttl[batch_id] = ttl

    def _write(self, *ops: tuple[str, Iterable[tuple]]) -> None:
        """Run each ``(sql, rows)`` of ``ops`` in one transaction (nothing once closed)."""
        with self.lock:
            if self._db is None:
                return
            self._db.execute("BEGIN")
            try:
                for sql, rows in ops:
                    self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _batch_row(self, batch_id: str) -> tuple:
        return batch_id, orjson.dumps(self.batches[batch_id])

    def _file_row(self, file_id: str) -> tuple:
        return (file_id, orjson.dumps(self.files[file_id]),
                os.path.relpath(self._paths[file_id], self.root))

    def close(self) -> None:
        """Close the database and release the directory (later changes stay in memory)."""
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_handle is not None:
                self._lock_handle.close()
                self._lock_handle = None

    # -- files ---------------------------------------------------------------
    def incoming_path(self) -> Path:
        """A fresh path where an upload is written first."""
        return self.root / "incoming" / uuid.uuid4().hex

    def add_file(self, tmp: Path, filename: str, purpose: str, *, move: bool = True,
                 expires_after: Optional[int] = None, status: str = "processed") -> dict:
        """Register the finished file ``tmp`` as a new file object.

        ``move`` moves it to ``root/<file id>``; otherwise it stays where it is
        (a batch's output). ``expires_after`` (seconds) sets ``expires_at``.
        """
        file_id = new_id("file-")
        path = self.root / file_id if move else Path(tmp)
        if move:  # its bytes, then its name, reach the disk before the upload is answered
            sync_file(tmp)
            os.replace(tmp, path)
            sync_dir(self.root)
        with self.lock:
            obj = self._register(file_id, path, filename, purpose, expires_after, status)
            self._write(("INSERT INTO files VALUES (?, ?, ?)", [self._file_row(file_id)]))
        return obj

    def _register(self, file_id: str, path: Path, filename: str, purpose: str,
                  expires_after: Optional[int], status: str = "processed") -> dict:
        created = int(self.now())
        obj = {"id": file_id, "object": "file", "bytes": path.stat().st_size,
               "created_at": created, "filename": filename, "purpose": purpose,
               "status": status, "expires_at": None if expires_after is None
               else created + int(expires_after), "status_details": None}
        self.files[file_id], self._paths[file_id] = obj, path
        if obj["expires_at"] is not None:
            self._due = min(self._due, obj["expires_at"])
        return obj

    def path(self, file_id: str) -> Optional[Path]:
        """Where the content of ``file_id`` lives, or ``None``."""
        with self.lock:
            self.maybe_sweep()
            return self._paths.get(file_id)

    def delete_file(self, file_id: str) -> bool:
        """Forget ``file_id`` and remove its content; ``False`` if unknown."""
        with self.lock:
            if self.files.pop(file_id, None) is None:
                return False
            path = self._paths.pop(file_id)
            self._write(("DELETE FROM files WHERE id = ?", [(file_id,)]))
        path.unlink(missing_ok=True)
        return True

    def list_files(self, after: Optional[str], limit: int, order: str,
                   purpose: Optional[str]) -> dict:
        with self.lock:
            self.maybe_sweep()
            items = [dict(f) for f in self.files.values() if purpose in (None, f["purpose"])]
        if order != "asc":
            items.reverse()
        return page(items, after, limit)

    # -- batches -------------------------------------------------------------
    def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                     metadata: Optional[dict], output_expires_after: Optional[int] = None) -> dict:
        """A new ``validating`` batch; its output and error files will expire
        ``output_expires_after`` seconds after they are made, when given."""
        now = int(self.now())
        obj = {
            "id": new_id("batch_"), "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": completion_window,
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + WINDOW_SECONDS,
            "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata, "model": None,
            "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 0},
        }
        with self.lock:
            self.batches[obj["id"]] = obj
            if output_expires_after is not None:
                self._output_ttl[obj["id"]] = int(output_expires_after)
            self._write(("INSERT INTO batches VALUES (?, ?, ?)",
                         [(*self._batch_row(obj["id"]), output_expires_after)]))
        return obj

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        """Set top-level fields of a batch and store it, atomically."""
        with self.lock:
            self.batches[batch_id].update(fields)
            self.save_batch(batch_id)

    def save_batch(self, batch_id: str, *more: tuple[str, Iterable[tuple]]) -> None:
        """Store the batch as it is now (its live counts included), with ``more`` writes."""
        with self.lock:
            self._write(*more, ("UPDATE batches SET obj = ? WHERE id = ?",
                                [self._batch_row(batch_id)[::-1]]))
            if self.batches[batch_id]["status"] in TERMINAL:
                # its input may have expired meanwhile; it leaves after the retention period
                self._due = min(self._due, self.now())

    def finish_batch(self, batch_id: str, output: Optional[Path], error: Optional[Path],
                     **fields: Any) -> None:
        """End a batch in one transaction: ``output`` and ``error`` (paths left in
        place, or ``None``) become its ``batch_output`` files and ``fields`` are set."""
        with self.lock:
            ids = []
            for path, kind in ((output, "output"), (error, "error")):
                ids.append(None if path is None else self._register(
                    new_id("file-"), path, f"{batch_id}_{kind}.jsonl", "batch_output",
                    self._output_ttl.get(batch_id))["id"])
            self.batches[batch_id].update(output_file_id=ids[0], error_file_id=ids[1], **fields)
            self.save_batch(batch_id, ("INSERT INTO files VALUES (?, ?, ?)",
                                       [self._file_row(i) for i in ids if i is not None]))

    def work_dir(self, batch_id: str) -> Path:
        """Where the answers of ``batch_id`` are appended as they are produced."""
        return self.root / "batches" / batch_id

    def count(self, batch_id: str, completed: int = 0, failed: int = 0) -> None:
        """Add to a batch's live ``request_counts`` (stored by :meth:`save_batch`)."""
        with self.lock:
            rc = self.batches[batch_id]["request_counts"]
            rc["completed"] += completed
            rc["failed"] += failed

    def status(self, batch_id: str) -> str:
        with self.lock:
            return self.batches[batch_id]["status"]

    def unfinished(self) -> list[str]:
        """Ids of the batches that have not ended, oldest first (to resume)."""
        with self.lock:
            return [b["id"] for b in self.batches.values() if b["status"] not in TERMINAL]

    def list_batches(self, after: Optional[str], limit: int) -> dict:
        with self.lock:
            self.maybe_sweep()
            items = [orjson.loads(orjson.dumps(b)) for b in reversed(list(self.batches.values()))]
        return page(items, after, limit)

    def dump(self, kind: str, obj_id: str) -> Optional[bytes]:
        """JSON bytes of file or batch ``obj_id`` (``None`` if unknown)."""
        with self.lock:
            self.maybe_sweep()
            obj = (self.files if kind == "file" else self.batches).get(obj_id)
            return None if obj is None else orjson.dumps(obj)

    # -- Anthropic Message Batches (pdbatch.server.anthropic_api) -----------
    def save_message_batch(self, obj: dict) -> None:
        """Store a Message Batch object as it is now."""
        self._write(("INSERT INTO message_batches VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET obj = excluded.obj",
                     [(obj["id"], orjson.dumps(obj))]))

    def drop_message_batch(self, batch_id: str) -> None:
        """Forget a Message Batch and remove its directory."""
        self._write(("DELETE FROM message_batches WHERE id = ?", [(batch_id,)]))
        shutil.rmtree(self.message_dir(batch_id), ignore_errors=True)

    def message_batches(self) -> list:
        """The stored Message Batch objects, oldest first."""
        with self.lock:
            rows = [] if self._db is None else self._db.execute(
                "SELECT obj FROM message_batches ORDER BY rowid").fetchall()
        return [orjson.loads(obj) for (obj,) in rows]

    def message_dir(self, batch_id: str) -> Path:
        """Where a Message Batch's requests and results are kept."""
        return self.root / "messages" / batch_id

    # -- expiry and retention ------------------------------------------------
    def maybe_sweep(self) -> None:
        """:meth:`sweep` when a deadline has passed (cheap otherwise)."""
        if self.now() >= self._due:
            self.sweep()

    def sweep(self) -> tuple[list[str], list[str]]:
        """Delete expired files and batches past ``retention``; return their ids."""
        with self.lock:
            now, due = self.now(), float("inf")
            gone_batches = []
            for b in list(self.batches.values()):
                if b["status"] not in TERMINAL or self.retention is None:
                    continue
                end = (b.get(_ENDED_AT[b["status"]]) or b["created_at"]) + self.retention
                if end <= now:
                    gone_batches.append(b["id"])
                else:
                    due = min(due, end)
            self._drop_batches(gone_batches)
            busy = {b["input_file_id"] for b in self.batches.values()
                    if b["status"] not in TERMINAL}
            gone_files = []
            for f in list(self.files.values()):
                if f["expires_at"] is not None and f["id"] not in busy:
                    if f["expires_at"] <= now:
                        gone_files.append(f["id"])
                    else:
                        due = min(due, f["expires_at"])
            for file_id in gone_files:
                self.delete_file(file_id)
            self._due = due
        return gone_files, gone_batches

    def _drop_batches(self, batch_ids: list[str]) -> None:
        dropped = [self.batches.pop(bid) for bid in batch_ids]
        for bid in batch_ids:
            self._output_ttl.pop(bid, None)
        if not dropped:
            return
        self._write(("DELETE FROM batches WHERE id = ?", [(b["id"],) for b in dropped]))
        inputs = {b["input_file_id"] for b in self.batches.values()}
        for b in dropped:
            for file_id in (b["output_file_id"], b["error_file_id"], b["input_file_id"]):
                if file_id is not None and file_id not in inputs:
                    self.delete_file(file_id)
            shutil.rmtree(self.work_dir(b["id"]), ignore_errors=True)
