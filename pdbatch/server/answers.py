"""A batch's answers on disk: append-only JSONL files made durable per chunk.

Each batch being run has ``output.jsonl`` (answers with status < 400) and
``error.jsonl`` (error answers and ``batch_expired`` lines) in its work
directory (:meth:`pdbatch.server.durable.Store.work_dir`). The worker appends
one line per answer (:meth:`AnswerLog.write`) and calls :meth:`AnswerLog.sync`
per chunk: the lines reach the OS (and, at most once a second, the disk)
before the batch's counts are stored. After a crash, :meth:`AnswerLog.recover` reads back what was written
-- dropping a torn last line -- so that the resumed batch skips every line
already answered and runs the others: each line ends up exactly once in one
of the two files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import orjson

from ..core.records import Usage
from .disk import sync_dir

__all__ = ["AnswerLog"]


class AnswerLog:
    """One JSONL file of a batch's answers, opened for appending on first write.

    Parameters
    ----------
    path : Path
        The file (created, with its directory, on the first :meth:`write`).

    Attributes
    ----------
    lines : int
        Complete lines in the file (recovered plus written).
    """

    def __init__(self, path: Path) -> None:
        self.path, self.lines, self._fh = Path(path), 0, None

    def recover(self, usage: bool = False) -> tuple[set, Usage]:
        """Custom ids of the lines already in the file (a torn last line is cut off).

        With ``usage``, also the sum of the answers' token usage.
        """
        ids: set = set()
        total = Usage()
        if not self.path.exists():
            return ids, total
        good = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # written in part when the process died
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    break
                ids.add(line.get("custom_id"))
                if usage and line.get("response"):
                    total = total + Usage.from_body(line["response"].get("body") or {})
                good += len(raw)
        if good < self.path.stat().st_size:
            os.truncate(self.path, good)
        self.lines = len(ids)
        return ids, total

    def write(self, line: dict) -> None:
        """Append one answer line (buffered until :meth:`sync`)."""
        if self._fh is None:
            fresh = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
            if fresh:  # its name (and its directory's) survive the machine
                sync_dir(self.path.parent)
                sync_dir(self.path.parent.parent)
        self._fh.write(orjson.dumps(line) + b"\n")
        self.lines += 1

    def sync(self, fsync: bool = True) -> None:
        """Hand the lines written so far to the OS (they survive the process being
        killed) and, with ``fsync``, to the disk (they survive the machine)."""
        if self._fh is not None:
            self._fh.flush()
            if fsync:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Flush and close the file; it stays on disk for a later resume."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def final(self) -> Optional[Path]:
        """Sync and close; the path when the file has lines, else ``None``."""
        self.sync()
        self.close()
        return self.path if self.lines else None
