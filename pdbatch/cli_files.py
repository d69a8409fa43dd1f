"""Files of the ``pdbatch`` command line: reading INPUT, checking and writing OUTPUT.

Shared by the commands in :mod:`pdbatch.cli` and :mod:`pdbatch.cli_jobs`,
with :class:`CliError`, the mistake every command reports as one line with
exit status 2.
"""

from __future__ import annotations

import os
from typing import Optional

from .errors import PdbatchError

__all__ = ["CliError", "READERS", "WRITERS", "read_frame", "check_out", "write_frame"]

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "json"}
WRITERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}


class CliError(PdbatchError):
    """A command-line mistake, reported as one line with exit status 2."""


def read_frame(path: str, limit: Optional[int] = None):
    """Read CSV, Parquet or JSONL by suffix."""
    import pandas as pd

    if not os.path.isfile(path):
        raise CliError(f"INPUT: file not found: {path}")
    kind = READERS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise CliError(f"INPUT: cannot tell the format of {path}; use a .csv, .parquet or .jsonl file")
    try:
        if kind == "csv":
            df = pd.read_csv(path, nrows=limit)
        elif kind == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_json(path, lines=(kind == "jsonl"))
    except Exception as err:
        raise CliError(f"INPUT: could not read {path}: {err}") from err
    return df.head(limit) if limit is not None else df


def check_out(path: str) -> str:
    """The writer kind of an output path (by suffix), after checking its directory exists."""
    kind = WRITERS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise CliError(f"--out: unknown format for {path}; use .parquet, .csv or .jsonl")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"--out: directory does not exist: {parent}")
    return kind


def write_frame(df, path: str, kind: str) -> None:
    """Write by kind, through a temporary file so a failure leaves nothing behind."""
    tmp = path + ".part"
    try:
        if kind == "parquet":
            df.to_parquet(tmp)
        elif kind == "csv":
            df.to_csv(tmp)
        else:
            df.to_json(tmp, orient="records", lines=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

