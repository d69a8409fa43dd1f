"""Batch files on disk: write JSONL input shards, read output and error files.

Both directions stream line by line: no file is ever held as one string, so a
frame of millions of rows costs memory for its rows, not for its JSONL.

A line of an output or error file that cannot be read (truncated, not JSON,
no ``custom_id``) is a problem of that line alone, never of the file: every
other line's answer is returned. When the line's ``custom_id`` can still be
found in its raw bytes it becomes a failed answer with the error code
:data:`CORRUPT_LINE` (retried like ``server_error``); otherwise it is counted
and logged as a warning on the ``"pdbatch"`` logger.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import orjson

from ..errors import InputError
from .answers import Answers
from .arrow_answers import arrow_answers
from .columns import paused_steps
from .records import Request, Result

__all__ = ["Shard", "write_shards", "write_lines", "iter_shards", "read_results", "read_answers", "MAX_REQUESTS",
           "MAX_BYTES", "CORRUPT_LINE"]

log = logging.getLogger("pdbatch")

#: Batch API limits per input file (configurable for other providers).
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
_BUFFER = 1 << 20
#: Error code of a result line that could not be read but whose custom_id could.
CORRUPT_LINE = "corrupt_line"
# A complete "custom_id" member near the start of a raw line: a JSON string, or a number followed by , or }.
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*(?:"((?:[^"\\\r\n]|\\.)*)"|(-?\d+)\s*[,}])')
_ID_WINDOW = 4096


@dataclass
class Shard:
    """One input file: its path, how many requests and bytes it holds."""

    index: int
    path: str
    count: int = 0
    bytes: int = 0

    def to_dict(self) -> dict:
        return {"index": self.index, "path": self.path, "count": self.count, "bytes": self.bytes}


def write_shards(requests: Iterable[Request], directory: str, **options) -> List[Shard]:
    """Write :class:`Request` records to JSONL shards; see :func:`write_lines` for ``options``.

    Examples
    --------
    >>> import tempfile
    >>> reqs = [Request(str(i), {"model": "m", "messages": []}) for i in range(5)]
    >>> [s.count for s in write_shards(reqs, tempfile.mkdtemp(), max_requests=2)]
    [2, 2, 1]
    """
    return write_lines(((r.custom_id, r.to_line()) for r in requests), directory, **options)


def write_lines(lines: Iterable[Tuple[str, bytes]], directory: str, **options) -> List[Shard]:
    """Write request lines to JSONL shards; every shard at once (see :func:`iter_shards` for ``options``).

    Returns
    -------
    list of Shard
        Empty when there was nothing to write.
    """
    return [shard for shard, _ids in paused_steps(iter_shards(lines, directory, **options))]


def iter_shards(
    lines: Iterable[Tuple[str, bytes]],
    directory: str,
    *,
    prefix: str = "input",
    start: int = 0,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
    too_large: Optional[Dict[str, str]] = None,
) -> Iterator[Tuple[Shard, List[str]]]:
    """Write request lines to JSONL shards, yielding each shard (and its custom_ids) as soon as it is closed.

    A caller can upload shard ``k`` while shard ``k + 1`` is being written.

    Parameters
    ----------
    lines : iterable of (custom_id, bytes)
        Each request's JSONL line, newline included (as
        :meth:`Request.to_line` or :meth:`pdbatch.core.spec.MapSpec.lines`
        make them). Consumed once, streaming.
    directory : str
        Where the shards go (created if needed). Files are named
        ``{prefix}-{k:04d}.jsonl``, ``k`` counting from ``start``.
    max_requests, max_bytes : int
        Per-shard limits; the Batch API allows 50,000 requests and 200 MB.
    too_large : dict, optional
        Receives ``custom_id -> reason`` for a request whose single line is
        larger than ``max_bytes`` (it is not written; it becomes an error cell).

    Yields
    ------
    (Shard, list of str)
        A closed shard and the custom_ids of its lines, in file order.
    """
    if max_requests < 1 or max_bytes < 1:
        raise InputError("max_requests and max_bytes must be positive (shard_size= / shard_bytes=)")
    os.makedirs(directory, exist_ok=True)
    shard: Optional[Shard] = None
    fh = None
    pending: List[bytes] = []  # lines written in chunks of about 1,000
    ids: List[str] = []
    size = 0  # of the current shard
    index = start
    try:
        for cid, line in lines:
            n = len(line)
            if n > max_bytes:
                if too_large is not None:
                    too_large[cid] = f"request too large for one batch file ({n} bytes > {max_bytes})"
                continue
            if fh is not None and (len(ids) >= max_requests or size + n > max_bytes):
                fh.writelines(pending)
                pending.clear()
                fh.close()
                fh = None
                shard.count, shard.bytes = len(ids), size
                yield shard, ids
            if fh is None:
                shard = Shard(index, os.path.join(directory, f"{prefix}-{index:04d}.jsonl"))
                index += 1
                fh = open(shard.path, "wb", buffering=_BUFFER)
                ids, size = [], 0
            pending.append(line)
            ids.append(cid)
            size += n
            if len(pending) >= 1000:
                fh.writelines(pending)
                pending.clear()
        if fh is not None:
            fh.writelines(pending)
            fh.close()
            fh = None
            shard.count, shard.bytes = len(ids), size
            yield shard, ids
    finally:
        if fh is not None:
            fh.close()


def _recover_id(raw: bytes) -> Optional[str]:
    """The custom_id of an unreadable line, found in its first bytes; None when it cannot be told."""
    found = _CUSTOM_ID.search(raw, 0, _ID_WINDOW)
    if found is None:
        return None
    if found.group(2) is not None:
        return found.group(2).decode("ascii")
    try:
        return orjson.loads(b'"' + found.group(1) + b'"')
    except orjson.JSONDecodeError:
        return None


def _read_line(raw: bytes) -> Tuple[Optional[Result], Optional[str]]:
    """``(result, None)`` for a readable line, else ``(None, what is wrong with it)``."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return None, f"is not valid JSON ({err})"
    if not isinstance(line, dict) or line.get("custom_id") is None:
        return None, "has no custom_id"
    try:
        return Result.from_line(line), None
    except (AttributeError, TypeError, ValueError) as err:  # e.g. a "response" that is not an object
        return None, f"does not have the shape of a result line ({type(err).__name__}: {err})"


def _file_results(path: str) -> Iterator[Result]:
    """The results of one output/error file, line by line; see the module docstring for unreadable lines."""
    lost: List[int] = []
    corrupt = 0
    with open(path, "rb", buffering=_BUFFER) as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            result, problem = _read_line(raw)
            if result is None:
                cid = _recover_id(raw)
                if cid is None:
                    lost.append(n)
                    continue
                corrupt += 1
                result = Result.failure(cid, CORRUPT_LINE, f"line {n} of {path} {problem}")
            yield result
    if corrupt:
        log.warning("%s: %d unreadable line(s) recorded as failed answers (%s) of their custom_id",
                    path, corrupt, CORRUPT_LINE, extra={"path": path, "corrupt_lines": corrupt})
    if lost:
        shown = ", ".join(map(str, lost[:10])) + (", ..." if len(lost) > 10 else "")
        log.warning("%s: %d unreadable line(s) without a custom_id skipped (line %s); "
                    "is this a Batch API output or error file?", path, len(lost), shown,
                    extra={"path": path, "lost_lines": len(lost)})


def read_results(paths: Union[str, Sequence[str]]) -> Iterator[Result]:
    """Read Batch API output and error files into :class:`Result` records, streaming.

    Parameters
    ----------
    paths : str or sequence of str
        Output and/or error JSONL files, in any order.

    Yields
    ------
    Result
        One per line, in file order (which is not the input order). An
        unreadable line whose custom_id can be found yields a failure with the
        code :data:`CORRUPT_LINE`; one without is skipped and logged (a
        warning on the ``"pdbatch"`` logger). Nothing is raised for a line.

    Raises
    ------
    InputError
        When a file does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise InputError(f"results file not found: {path!r}; pass the downloaded output/error files")
        yield from _file_results(path)


def read_answers(paths: Union[str, Sequence[str]], kind: str = "chat") -> Answers:
    """Read output and error files into column-wise :class:`Answers`.

    ``kind`` is ``"chat"`` (chat completions), ``"responses"`` (the Responses
    endpoint; a ``"chat"`` file of Responses answers is read line by line) or
    ``"embedding"`` (embeddings: each row's ``content`` is its float32 vector).

    Arrow parses the files by blocks (no per-line Python objects, bounded
    memory); a file whose lines do not fit the expected shape (a provider that
    types a field differently, a truncated or corrupt line, a line without a
    custom_id) is read line by line through :func:`read_results` instead, with
    the same outcome for every readable line. An unreadable line never raises:
    it becomes a :data:`CORRUPT_LINE` failure of its custom_id when that can be
    recovered from its bytes, else it is logged and skipped (its row, if any,
    is left unanswered). Reading the same files again gives the same answers.

    Raises
    ------
    InputError
        When a file does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = Answers()
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise InputError(f"results file not found: {path!r}; pass the downloaded output/error files")
        if os.path.getsize(path) == 0:
            continue
        part = arrow_answers(path, kind)
        if part is None:  # not a shape Arrow takes as it is: line by line
            part = Answers.from_results(read_results([path]))
        out.extend(part)
    return out
