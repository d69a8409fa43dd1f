"""A finished batch's output file, downloaded to disk and parsed by Arrow while it arrives.

The bytes go to a ``.part`` file (renamed into place once complete, as
before) and, through a queue, to :func:`~pdbatch.core.arrow_answers.arrow_answers`
in a thread: the last shard's answers are parsed while the provider is still
sending them, not after. The queue holds up to :data:`AHEAD` bytes, so the
download waits only when the parser is that far behind.

The parse is only a head start: the caller uses it when the download completed
in one go and Arrow took every line; otherwise (a retried download, a file
Arrow cannot take) it reads the file on disk, as
:func:`~pdbatch.core.batchfile.read_answers` always did.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from typing import Any, Callable, Optional

import pyarrow as pa

from ..core.answers import Answers
from ..core.arrow_answers import arrow_answers

__all__ = ["Download"]

#: Bytes handed on at a time.
CHUNK = 1 << 20
#: Bytes the download may be ahead of the parser (in chunks of :data:`CHUNK`).
AHEAD = 64 << 20


class Download:
    """Fetch one file to ``path``; :attr:`answers` is its parse when one ran over the whole file, else None.

    ``open_stream(file_id)`` is a context manager giving a response with
    ``iter_bytes(n)`` (the SDK's ``files.with_streaming_response.content``).
    Call the instance to fetch (it may be called again by a retry: only a
    fetch that ends well keeps its parse).
    """

    def __init__(self, open_stream: Callable[[str], Any], file_id: str, path: str, kind: str) -> None:
        self.open_stream, self.file_id, self.path, self.kind = open_stream, file_id, path, kind
        self.answers: Optional[Answers] = None

    def __call__(self) -> None:
        self.answers = None
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.part"  # two processes may fetch the same file
        got: dict = {}
        chunks: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=AHEAD // CHUNK)
        reader = threading.Thread(target=self._parse, args=(chunks, got), name="pdbatch-parse", daemon=True)
        reader.start()
        try:
            with self.open_stream(self.file_id) as resp, open(tmp, "wb") as out:
                for chunk in resp.iter_bytes(CHUNK):
                    out.write(chunk)
                    _hand_on(chunks, chunk, reader)
            os.replace(tmp, self.path)
        finally:
            _hand_on(chunks, None, reader)
            reader.join()
            _end(chunks)
            if os.path.exists(tmp):
                os.remove(tmp)
        self.answers = got.get("answers")

    def _parse(self, chunks: "queue.Queue[Optional[bytes]]", got: dict) -> None:
        try:
            got["answers"] = arrow_answers(pa.PythonFile(_Chunks(chunks), mode="r"), self.kind)
        except Exception:  # noqa: BLE001 - a head start only: the file on disk is read instead
            got["answers"] = None


def _hand_on(chunks: "queue.Queue[Optional[bytes]]", chunk: Optional[bytes], reader: threading.Thread) -> None:
    """Queue ``chunk`` for the parser, waiting while the queue is full; dropped once the parser has stopped."""
    while reader.is_alive():  # a parser that stopped early (a line Arrow cannot take) reads no more
        try:
            chunks.put(chunk, timeout=0.05)
            return
        except queue.Full:
            continue


def _end(chunks: "queue.Queue[Optional[bytes]]") -> None:
    """Queue the end of the input once the parser has stopped, whatever is left in the queue.

    A parser that stopped early (a line Arrow cannot take) may leave one of
    Arrow's read-ahead reads waiting on the queue in Arrow's own thread pool:
    without an end to read, that thread never finishes, and the process
    hangs at exit waiting for it.
    """
    while True:
        try:
            chunks.get_nowait()
        except queue.Empty:
            break
    chunks.put_nowait(None)


class _Chunks(io.RawIOBase):
    """A readable stream over the chunks put in a queue (None ends it)."""

    def __init__(self, chunks: "queue.Queue[Optional[bytes]]") -> None:
        super().__init__()
        self._chunks, self._left, self._done = chunks, memoryview(b""), False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._left and not self._done:
            chunk = self._chunks.get()
            if chunk is None:
                self._done = True
            else:
                self._left = memoryview(chunk)
        n = min(len(buf), len(self._left))
        buf[:n] = self._left[:n]
        self._left = self._left[n:]
        return n
