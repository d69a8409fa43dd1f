"""Files of the ``pdbatch`` command line: reading INPUT, checking and writing OUTPUT.

Shared by the commands in :mod:`pdbatch.cli` and :mod:`pdbatch.cli_jobs`,
with :class:`CliError`, the mistake every command reports as one line with
exit status 2.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Optional, Sequence

from .errors import PdbatchError

__all__ = ["CliError", "READERS", "WRITERS", "read_frame", "check_out", "check_writable", "write_frame"]

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


def check_out(path: str, input_path: Optional[str] = None) -> str:
    """The writer kind of an output path (by suffix), after checking the place can take a file.

    Refuses an existing directory, a directory that does not exist and the
    input file itself (``input_path``); :func:`check_writable` then tries
    the place and the format.
    """
    if os.path.isdir(path):
        example = os.path.join(path, "out.parquet")
        raise CliError(f"--out: {path} is a directory; give a file in it, e.g. --out {example}")
    kind = WRITERS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise CliError(f"--out: unknown format for {path}; use .parquet, .csv or .jsonl")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"--out: directory does not exist: {parent}")
    if input_path is not None and os.path.exists(path) and os.path.exists(input_path) \
            and os.path.samefile(path, input_path):
        raise CliError(f"--out: {path} is the INPUT file, which writing would replace; give another file, "
                       f"e.g. --out {os.path.splitext(path)[0]}.llm{os.path.splitext(path)[1]}")
    return kind


def check_writable(frame, new_columns: Sequence[str], path: str, kind: str) -> None:
    """Write the result's first row next to ``path`` and remove it, or raise :class:`CliError`.

    The result is ``frame`` with ``new_columns`` added (their values are not
    known yet: they are written as object columns holding None); a Series
    stays a Series. Writing its first row, with the result's dtypes, finds a
    directory that takes no new file and a frame the format cannot hold
    (a Series as Parquet, Periods as JSON...) before anything is sent.
    """
    import pandas as pd

    probe = frame.iloc[:1].copy()
    if isinstance(probe, pd.DataFrame):
        for name in new_columns:
            probe[name] = pd.Series([None] * len(probe), index=probe.index, dtype=object)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pdbatch-probe-", suffix=os.path.splitext(path)[1], dir=parent)
    except OSError as err:
        raise CliError(f"--out: cannot create a file in {parent} ({err.strerror or err}); "
                       f"give a --out in a directory you can write to") from err
    try:
        os.close(fd)
        with warnings.catch_warnings():  # pandas' deprecation notes would break the one-line report
            warnings.simplefilter("ignore")
            _write(probe, tmp, kind)
    except Exception as err:
        why = " ".join(str(err).split())  # one line
        raise CliError(f"--out: the result cannot be written as {kind} ({type(err).__name__}: {why}); "
                       f"give --out another format (.parquet, .csv or .jsonl)") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write(df, path: str, kind: str) -> None:
    if kind == "parquet":
        df.to_parquet(path)
    elif kind == "csv":
        df.to_csv(path)
    else:
        df.to_json(path, orient="records", lines=True)


def write_frame(df, path: str, kind: str) -> None:
    """Write by kind, through a temporary file so a failure leaves nothing behind."""
    tmp = path + ".part"
    try:
        _write(df, tmp, kind)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
