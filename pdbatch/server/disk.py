"""Disk helpers of the local server's durable state: fsync and the data directory's lock.

:func:`sync_file` and :func:`sync_dir` make what was written survive the
machine, not only the process: an upload's bytes, then its name, before the
upload is answered (:meth:`pdbatch.server.durable.Store.add_file`), and the
names of a batch's answer files (:class:`pdbatch.server.answers.AnswerLog`).
:func:`lock_dir` keeps a second server off a data directory in use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ServerError

__all__ = ["sync_file", "sync_dir", "lock_dir"]


def sync_file(path: Path) -> None:
    """``fsync`` the content of the file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """``fsync`` the directory ``path``: the names created in it or moved into it are durable (no-op on Windows)."""
    if os.name == "nt":  # directories cannot be opened there; NTFS journals names itself
        return
    sync_file(path)


def lock_dir(path: Path) -> Any:
    """Hold an exclusive lock on ``path`` (``DATA_DIR/state/lock``) for the life of the returned handle.

    Raises
    ------
    ServerError
        Another process holds it.
    """
    handle = open(path, "a+b")
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no guard against a second server
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise ServerError(f"the data directory {path.parent.parent} is in use by another pdbatch "
                          "server; stop it or choose another --data-dir") from exc
    return handle
