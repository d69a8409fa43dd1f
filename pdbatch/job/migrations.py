"""The job store's schema, as an ordered list of migrations.

The schema version lives in SQLite's ``PRAGMA user_version``. Opening a store
applies, in order and in one transaction, every migration above the version
it finds; a store from a newer pdbatch is refused rather than misread.
Stores written before versions were read (``user_version`` 0 with a ``jobs``
table and ``meta.version = 1``) are version 1.

Adding a migration: append ``(version, statements)`` to :data:`MIGRATIONS`
with the next number; never edit a migration that has shipped.
"""

from __future__ import annotations

import sqlite3
from typing import List, Tuple

from ..errors import JobError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "version_of"]

_V1 = """
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

# Version 2: answers arrive in bulk as segments (one Arrow IPC blob per shard's results, see
# pdbatch.job.segments) with an integer index of their successful request hashes for the cache
# (built on the first cache lookup after a segment is stored: ``indexed``);
# a job's row hashes are one blob too. The per-row ``answers`` and ``rows`` tables stay for
# answers that arrive one at a time (realtime, local) and for jobs written by version 1.
_V2 = """
CREATE TABLE segments(
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, attempt INTEGER NOT NULL, source TEXT NOT NULL,
    rows INTEGER NOT NULL, v INTEGER NOT NULL, data BLOB NOT NULL, created_at REAL NOT NULL,
    indexed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX segments_job ON segments(job_id, id);
CREATE TABLE segment_hashes(h INTEGER PRIMARY KEY, segment INTEGER NOT NULL, pos INTEGER NOT NULL);
CREATE TABLE row_sets(job_id TEXT PRIMARY KEY, v INTEGER NOT NULL, data BLOB NOT NULL);
"""

# Version 3: a segment's blob moves to a table of its own (``segment_data``, the blob its last column). In
# version 2 the blob sat between other columns of ``segments``: SQLite then builds the whole row in memory to
# insert it (a shard's segment, tens of MB, twice over for the ``zeroblob`` it is written into), and setting
# ``indexed`` rewrote the row, blob and all. The blobs are moved as they are (the segment format is unchanged).
_V3 = """
CREATE TABLE segment_data(id INTEGER PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO segment_data (id, data) SELECT id, data FROM segments;
CREATE TABLE segments_v3(
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, attempt INTEGER NOT NULL, source TEXT NOT NULL,
    rows INTEGER NOT NULL, v INTEGER NOT NULL, created_at REAL NOT NULL, indexed INTEGER NOT NULL DEFAULT 0);
INSERT INTO segments_v3 (id, job_id, attempt, source, rows, v, created_at, indexed)
    SELECT id, job_id, attempt, source, rows, v, created_at, indexed FROM segments;
DROP TABLE segments;
ALTER TABLE segments_v3 RENAME TO segments;
CREATE INDEX segments_job ON segments(job_id, id);
"""

#: ``(version, DDL)`` in order; the store is at the last one after opening.
MIGRATIONS: List[Tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def version_of(db: sqlite3.Connection) -> int:
    """The schema version of an open database (0 for a new, empty one)."""
    v = db.execute("PRAGMA user_version").fetchone()[0]
    if v == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone():
        return 1  # written before versions were read: meta.version = 1
    return int(v)


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring ``db`` (inside a write transaction) to :data:`SCHEMA_VERSION`; return the version it had."""
    found = version_of(db)
    if found > SCHEMA_VERSION:
        raise JobError(f"the job store {path} has schema version {found}, newer than this pdbatch reads "
                       f"({SCHEMA_VERSION}): upgrade pdbatch, or point PDBATCH_HOME at another directory")
    for version, ddl in MIGRATIONS:
        if version > found:
            for statement in ddl.split(";"):
                if statement.strip():
                    db.execute(statement)
    if found < SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?)", (str(SCHEMA_VERSION),))
    return found
