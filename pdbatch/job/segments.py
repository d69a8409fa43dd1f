"""Answer segments: many answers stored at once as one Arrow IPC blob.

A batch shard's results (tens of thousands of answers) are stored as one
segment instead of one SQLite row each: writing costs one blob plus one
integer-keyed index row per successful answer (for the cache), and reading a
job's answers gives Arrow columns that the join uses without making a Python
object per answer. Every segment carries :data:`SEGMENT_VERSION` in its
schema metadata, checked when it is read.

A job's answers are the union of its segments and of the answers stored one
at a time (realtime, local). Where a custom_id has several answers, the
latest attempt wins, and within one attempt a success wins over a failure
(:func:`latest`).
"""

from __future__ import annotations

import sqlite3
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.answers import Answers
from ..errors import JobError

__all__ = ["SEGMENT_VERSION", "Encoded", "insert_blob", "insert_segment", "DATA", "decode", "table_of", "answers_of",
           "latest", "hash_key", "textual", "lean", "plain", "concat_kept", "one_value", "SEQ"]

SEGMENT_VERSION = 1
_META = b"pdbatch_segment"
_S, _I, _B = pa.string(), pa.int64(), pa.bool_()
_TYPES = {"custom_id": _S, "hash": _S, "attempt": _I, "seq": _I, "status_code": _I, "finish_reason": _S,
          "refusal": _S, "has_choice": _B, "error_code": _S, "error_message": _S, "ok": _B, "prompt_tokens": _I,
          "completion_tokens": _I, "cached_tokens": _I, "reasoning_tokens": _I}


def hash_key(h: str) -> int:
    """The signed 64-bit index key of a hex request hash (its first 8 bytes); verified against the full hash."""
    return int.from_bytes(bytes.fromhex(h[:16]), "little", signed=True)


def _content(answers: Answers) -> pa.Array:
    col = answers.arrow("content")
    if pa.types.is_null(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(_S)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return col.cast(pa.list_(pa.float32()))
    return col


def table_of(answers: Answers, hashes: Sequence[Optional[str]], attempt: int, seq: int = 0) -> pa.Table:
    """``answers`` as a table with their request ``hashes`` (one per row), ``attempt`` and order ``seq``."""
    n = len(answers)
    cols = {"custom_id": answers.arrow("custom_id").cast(_S), "hash": hashes if isinstance(hashes, pa.Array) else pa.array(hashes, type=_S),
            "attempt": pa.array(np.full(n, attempt, dtype=np.int64)),
            "seq": pa.array(np.full(n, seq, dtype=np.int64))}
    for name in Answers.COLUMNS:
        cols[name] = _content(answers) if name == "content" else answers.arrow(name).cast(_TYPES[name])
    # The answers' own chunks, not a copy (a shard's answers are not held twice while stored); but the ids in one
    # buffer: the job keeps them (see lean), and so do the answers parsed on arrival, which then share it.
    ids = cols["custom_id"]
    cols["custom_id"] = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    return pa.table(cols)


#: Rows per record batch of a stored table's IPC stream: the stream goes into its blob a batch at a time.
BATCH_ROWS = 8192


class Encoded:
    """A segment table (see :func:`table_of`) or row set to store: its versioned IPC stream, ``len()`` bytes.

    The stream is made as it is written.

    :func:`insert_blob` writes it into its row a record batch at a time, so
    the whole stream (a shard's answers: tens of MB) is never in memory
    beside the table it is made of.
    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table.replace_schema_metadata({_META: str(SEGMENT_VERSION).encode()})
        counter = pa.MockOutputStream()  # the size first: the row's blob is made that size, then filled
        self.write_into(counter)
        self._size = counter.size()

    def __len__(self) -> int:
        return self._size

    def write_into(self, sink: Any) -> None:
        """Write the stream to ``sink`` (an Arrow output stream, or an object with ``write``)."""
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table, max_chunksize=BATCH_ROWS)

    def to_buffer(self) -> pa.Buffer:
        """The whole stream in one buffer."""
        buf = pa.allocate_buffer(self._size)
        self.write_into(pa.FixedSizeBufferWriter(buf))
        return buf


class _BlobSink:
    """``sqlite3.Blob`` as the file object Arrow writes to (it asks for ``closed`` and ``flush``)."""

    closed = False

    def __init__(self, blob: Any) -> None:
        self._blob = blob

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._blob.write(view)  # past the blob's end raises: the stream cannot silently be cut
        return view.nbytes

    def flush(self) -> None:
        pass


def insert_blob(db: sqlite3.Connection, verb: str, table: str, fields: Mapping[str, Any], blob: Encoded) -> int:
    """``verb`` (``INSERT``, ``INSERT OR REPLACE``) a row of ``fields`` whose ``data`` column is ``blob``; its rowid.

    The blob is written into the new row in place (``Connection.blobopen``),
    a record batch at a time, not bound as a parameter: SQLite would copy a
    bound blob, and Python's statement cache keeps that copy alive until the
    statement next runs (the row hashes of a million-row job: 50 MB held for
    the whole job). Python 3.10, which has no ``blobopen``, binds it.
    ``data`` must be the table's last column: SQLite builds a row whose blob
    is followed by other columns whole in memory (zeros and all).
    """
    names = ", ".join([*fields, "data"])
    marks = ", ".join("?" for _ in fields)
    if not hasattr(db, "blobopen"):
        return db.execute(f"{verb} INTO {table} ({names}) VALUES ({marks}, ?)",
                          (*fields.values(), memoryview(blob.to_buffer()))).lastrowid
    rowid = db.execute(f"{verb} INTO {table} ({names}) VALUES ({marks}, zeroblob(?))",
                       (*fields.values(), len(blob))).lastrowid
    if len(blob):
        with db.blobopen(table, "data", rowid) as out:
            blob.write_into(_BlobSink(out))
    return rowid


def insert_segment(db: sqlite3.Connection, fields: Mapping[str, Any], blob: Encoded) -> int:
    """Insert a segment: its row of ``fields`` in ``segments``, its stream in ``segment_data``; its id."""
    names = ", ".join(fields)
    seg = db.execute(f"INSERT INTO segments ({names}) VALUES ({', '.join('?' for _ in fields)})",
                     tuple(fields.values())).lastrowid
    insert_blob(db, "INSERT", "segment_data", {"id": seg}, blob)
    return seg


#: The streams of segments, by id (``segment_data`` rows: see :func:`insert_segment`).
DATA = "SELECT s.id, d.data FROM segments s JOIN segment_data d ON d.id = s.id"


def decode(blob: bytes, seq: int) -> pa.Table:
    """A segment read back; its ``seq`` column set to ``seq`` (the order segments were stored in)."""
    table = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
    version = (table.schema.metadata or {}).get(_META)
    if version is None or int(version) > SEGMENT_VERSION:
        raise JobError(f"an answer segment has version {version!r}, which this pdbatch cannot read "
                       f"(it reads up to {SEGMENT_VERSION}): upgrade pdbatch")
    return table.set_column(table.schema.get_field_index("seq"), "seq",
                            pa.array(np.full(table.num_rows, seq, dtype=np.int64)))


def latest(table: pa.Table) -> pa.Table:
    """One row per custom_id: the latest attempt, a success before a failure, then the latest stored."""
    n = table.num_rows
    if n == 0:
        return table
    if pc.count_distinct(table.column("custom_id")).as_py() == n:
        return table  # one answer per custom_id: nothing to choose
    codes = pc.dictionary_encode(table.column("custom_id")).combine_chunks().indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(n), table.column("seq").to_numpy(), table.column("ok").to_numpy(),
                        table.column("attempt").to_numpy(), codes))
    ranked = codes[order]
    keep = np.sort(order[np.r_[ranked[1:] != ranked[:-1], True]])
    return table.take(pa.array(keep))


def _vectors(col: pa.ChunkedArray) -> list:
    arr = col.combine_chunks()
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [flat[e - k:e] if ok else None for e, k, ok in zip(ends.tolist(), lengths.tolist(), valid.tolist())]


def answers_of(tables: List[pa.Table]) -> Answers:
    """The :class:`Answers` (Arrow columns) of segment tables, one row per custom_id (see :func:`latest`)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return Answers()
    table = latest(pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0])
    cols = {name: table.column(name) for name in ("custom_id",) + Answers.COLUMNS}
    content = cols["content"]
    if pa.types.is_list(content.type) or pa.types.is_large_list(content.type):
        cols["content"] = _vectors(content)  # embeddings: one float32 vector per row
    return Answers(**cols)


def textual(table: pa.Table) -> bool:
    """Whether a segment table's answers are texts (or none at all), not embedding vectors."""
    t = table.schema.field("content").type
    return pa.types.is_string(t) or pa.types.is_null(t)


#: Integer columns a job keeps in memory as 32 bits (read back as Python ints: only Arrow sees the width).
_NARROW = ("attempt", "status_code", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


#: Text columns a job keeps as a column of nulls (no buffer) when a segment has no value in them.
_SPARSE = ("refusal", "error_code", "error_message", "finish_reason")


#: Columns a job keeps as one value when every row of a segment has it (the usual: status 200, ``"stop"``,
#: no cached or reasoning tokens; ``seq``, the segment's id, always).
_ONE_VALUE = ("seq", "status_code", "finish_reason", "has_choice", "prompt_tokens", "completion_tokens",
              "cached_tokens", "reasoning_tokens")

#: The type of ``seq`` as a job keeps it, and as the progress polls read it (see ``AnswerStore._status``).
SEQ = pa.dictionary(pa.int8(), pa.int64())


def one_value(n: int, value: Any, type: pa.DataType, zeros: Optional[pa.Array] = None) -> pa.DictionaryArray:
    """``n`` rows of ``value`` as a dictionary of that one value (indices: ``zeros``, made if not given)."""
    zeros = zeros if zeros is not None else pa.array(np.zeros(n, dtype=np.int8))
    return pa.DictionaryArray.from_arrays(zeros, pa.array([value], type=type))


def _one_value(col: pa.ChunkedArray, zeros: pa.Array) -> Optional[pa.Array]:
    """``col`` as a dictionary of its one value when every row has that value (indices: ``zeros``), else None."""
    if col.null_count or pc.count_distinct(col).as_py() != 1:
        return None
    return one_value(len(col), col[0].as_py(), col.type, zeros)


def lean(table: pa.Table) -> pa.Table:
    """A segment table without its texts and hashes, as a job keeps it for its polls and join.

    Its small integers are narrowed to 32 bits where every value fits (a
    count of a million answers' tokens in 64 bits is 32 MB); a column with a
    larger value stays as it is. A text column with no value in the segment
    (no refusal, no error: the usual) is kept as nulls, which hold no
    offsets, and a column of :data:`_ONE_VALUE` that has one value in every
    row as a dictionary of that value whose indices (one byte a row) the
    columns share. Readers see the plain columns (:meth:`Answers.arrow`,
    :func:`plain`). The result shares no buffer with ``table`` but those of
    its ``custom_id`` column; a row's position in it is its position in ``table``.
    """
    out = table.drop_columns(["content", "hash"])
    for name in _NARROW:
        i = out.schema.get_field_index(name)
        try:
            out = out.set_column(i, name, out.column(i).cast(pa.int32()))  # a safe cast: raises on overflow
        except pa.ArrowInvalid:
            pass
    for name in _SPARSE:
        i = out.schema.get_field_index(name)
        if out.column(i).null_count == out.num_rows:
            out = out.set_column(i, name, pa.nulls(out.num_rows))
    zeros = pa.array(np.zeros(out.num_rows, dtype=np.int8))
    ones = {name: _one_value(out.column(name), zeros) for name in _ONE_VALUE
            if out.num_rows and not pa.types.is_null(out.schema.field(name).type)}
    kept = {name: col for name, col in ones.items() if col is not None}
    # The rest is copied into buffers of its own (one gather) by the thread that stores the segment: held for the
    # whole job, columns made with the shard's other buffers would keep the C heap's pages around those resident.
    # The ids are not: the answers parsed on arrival hold the same ones (one buffer each, a column of its own).
    ids = out.column("custom_id")
    kept["custom_id"] = ids if ids.num_chunks == 1 else pa.chunked_array([ids.combine_chunks()])
    copied = out.drop_columns(list(kept)).take(pa.array(np.arange(out.num_rows)))
    return pa.table({name: kept[name] if name in kept else copied.column(name) for name in out.column_names})


def plain(table: pa.Table, names: Optional[set] = None) -> pa.Table:
    """``table`` with its dictionary columns (see :func:`lean`; those in ``names`` only, if given) made plain."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type) and (names is None or f.name in names):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def concat_kept(tables: List[pa.Table]) -> pa.Table:
    """Kept tables (see :func:`lean`) end to end, each row with its position in its own table (``pos``, int32).

    A column kept as one value in some tables and not in others is made
    plain in those (a segment with a failure beside clean ones).
    """
    tables = [t.append_column("pos", pa.array(np.arange(t.num_rows, dtype=np.int32))) for t in tables]
    types: dict = {}
    for t in tables:
        for f in t.schema:
            if not pa.types.is_null(f.type):  # a column of bare nulls takes any type
                types.setdefault(f.name, set()).add(f.type)
    mixed = {name for name, kinds in types.items() if len(kinds) > 1}
    if mixed:
        tables = [plain(t, mixed) for t in tables]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
