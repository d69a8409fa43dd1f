"""Responses answers (``endpoint="responses"``) read from an output file by Arrow, column-wise.

:func:`pdbatch.core.batchfile.read_answers` parses a file of Responses answers
with :data:`PARSE` and takes the answer columns from :func:`columns`: the same
fields :func:`pdbatch.core.answers.responses_choice` reads from one body (the
``output_text`` parts of the ``message`` items joined, the first ``refusal``
part, ``status`` / ``incomplete_details`` as the ``finish_reason``), without a
Python object per line.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

__all__ = ["PARSE", "columns"]


def _schema() -> pa.Schema:
    s, i = pa.string(), pa.int64()
    err = pa.struct([("code", s), ("message", s), ("type", s)])
    part = pa.struct([("type", s), ("text", s), ("refusal", s)])
    item = pa.struct([("type", s), ("content", pa.list_(part))])
    usage = pa.struct([
        ("input_tokens", i), ("output_tokens", i),
        ("input_tokens_details", pa.struct([("cached_tokens", i)])),
        ("output_tokens_details", pa.struct([("reasoning_tokens", i)])),
    ])
    body = pa.struct([("status", s), ("incomplete_details", pa.struct([("reason", s)])),
                      ("output", pa.list_(item)), ("usage", usage), ("error", err)])
    resp = pa.struct([("status_code", i), ("body", body)])
    return pa.schema([("custom_id", s), ("response", resp), ("error", err)])


#: How a file of Responses answers is parsed (fields pdbatch does not read are dropped).
PARSE = pajson.ParseOptions(explicit_schema=_schema(), unexpected_field_behavior="ignore")


def _one(values: pa.Array) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _per_row(rows: pa.Array, texts: pa.Array, n: int) -> pa.Array:
    """The ``texts`` of each row (``rows`` gives each one's row, in order) joined, null where a row has none."""
    if len(texts) == 0:
        return pa.nulls(n, pa.string())
    grouped = pa.table({"row": rows, "text": texts}).group_by("row", use_threads=False).aggregate([("text", "list")])
    joined = pc.binary_join(grouped.column("text_list"), "")
    at = np.full(n, len(grouped), dtype=np.int64)
    at[grouped.column("row").to_numpy()] = np.arange(len(grouped))
    return pc.take(pa.concat_arrays([_one(joined), pa.nulls(1, pa.string())]), pa.array(at))


def columns(body: pa.ChunkedArray, n: int) -> Tuple[pa.Array, pa.Array, pa.Array, pa.Array, Dict[str, pa.Array]]:
    """``(content, refusal, finish_reason, has_choice, tokens)`` of ``n`` Responses bodies.

    Examples
    --------
    >>> body = pa.array([{"status": "completed", "output": [{"type": "reasoning", "content": None},
    ...     {"type": "message", "content": [{"type": "output_text", "text": "He"}, {"type": "output_text", "text": "y"}]}]},
    ...     {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []}],
    ...     type=_schema().field("response").type.field("body").type)
    >>> content, refusal, finish, has, _ = columns(pa.chunked_array([body]), 2)
    >>> content.to_pylist(), finish.to_pylist(), has.to_pylist()
    (['Hey', None], ['stop', 'max_output_tokens'], [True, True])
    """
    output = _one(pc.struct_field(body, "output"))
    items = pc.list_flatten(output)
    item_row = pc.list_parent_indices(output)
    contents = pc.struct_field(items, "content")
    parts = pc.list_flatten(contents)
    part_item = pc.list_parent_indices(contents)
    part_row = pc.take(item_row, part_item)
    in_message = pc.take(pc.equal(pc.struct_field(items, "type"), "message"), part_item)
    kind = pc.struct_field(parts, "type")
    text = pc.and_(pc.and_(in_message, pc.equal(kind, "output_text")), pc.is_valid(pc.struct_field(parts, "text")))
    said = pc.and_(in_message, pc.equal(kind, "refusal"))
    content = _per_row(pc.filter(part_row, text), pc.filter(pc.struct_field(parts, "text"), text), n)
    refusal = _per_row(pc.filter(part_row, said), pc.fill_null(pc.filter(pc.struct_field(parts, "refusal"), said),
                                                                   "refused"), n)
    status = _one(pc.struct_field(body, "status"))
    reason = pc.coalesce(_one(pc.struct_field(pc.struct_field(body, "incomplete_details"), "reason")),
                         pa.scalar("incomplete"))
    finish = pc.if_else(pc.equal(status, "completed"), pa.scalar("stop"),
                        pc.if_else(pc.equal(status, "incomplete"), reason, status))
    usage = pc.struct_field(body, "usage")
    tokens = {
        "prompt_tokens": pc.struct_field(usage, "input_tokens"),
        "completion_tokens": pc.struct_field(usage, "output_tokens"),
        "cached_tokens": pc.struct_field(pc.struct_field(usage, "input_tokens_details"), "cached_tokens"),
        "reasoning_tokens": pc.struct_field(pc.struct_field(usage, "output_tokens_details"), "reasoning_tokens"),
    }
    return content, refusal, finish, pc.is_valid(output), tokens
