"""Output and error files read by Arrow, column-wise: the fast path of :func:`~pdbatch.core.batchfile.read_answers`.

Only the fields pdbatch reads are kept, as Arrow arrays: no Python object is
made per line. A file whose lines do not fit the expected shape gives None,
and the caller reads it line by line. :func:`arrow_answers` takes a path or
any readable stream, so a download can be parsed as it arrives.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from .answers import Answers, usable_arrow
from .arrow_responses import PARSE as RESPONSES_PARSE, columns as responses_columns
from .records import NO_RESPONSE

__all__ = ["arrow_answers"]


class _Unfit(Exception):
    """A file the Arrow reader cannot take as it is: the line-by-line path reads it."""


def _arrow_schema() -> pa.Schema:
    s, i = pa.string(), pa.int64()
    err = pa.struct([("code", s), ("message", s), ("type", s)])
    msg = pa.struct([("content", s), ("refusal", s)])
    choice = pa.struct([("message", msg), ("finish_reason", s)])
    usage = pa.struct([
        ("prompt_tokens", i), ("completion_tokens", i),
        ("prompt_tokens_details", pa.struct([("cached_tokens", i)])),
        ("completion_tokens_details", pa.struct([("reasoning_tokens", i)])),
    ])
    body = pa.struct([("choices", pa.list_(choice)), ("usage", usage), ("error", err), ("object", s)])
    resp = pa.struct([("status_code", i), ("body", body)])
    return pa.schema([("custom_id", s), ("response", resp), ("error", err)])


def _arrow_embedding_schema() -> pa.Schema:
    s, i = pa.string(), pa.int64()
    err = pa.struct([("code", s), ("message", s), ("type", s)])
    data = pa.list_(pa.struct([("embedding", pa.list_(pa.float64()))]))
    usage = pa.struct([("prompt_tokens", i)])
    body = pa.struct([("data", data), ("usage", usage), ("error", err)])
    resp = pa.struct([("status_code", i), ("body", body)])
    return pa.schema([("custom_id", s), ("response", resp), ("error", err)])


_SCHEMA = _arrow_schema()
_EMBED_PARSE = pajson.ParseOptions(explicit_schema=_arrow_embedding_schema(), unexpected_field_behavior="ignore")
_PARSE = pajson.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")


def _first(lists: pa.Array):
    """Element 0 of each list (null where the list is null or empty), and where there was one."""
    has = pc.greater(pc.fill_null(pc.list_value_length(lists), 0), 0)
    return pc.list_element(pc.if_else(has, lists, pa.scalar([None], type=lists.type)), 0), has


def _vectors(lists: pa.Array) -> list:
    """float32 NumPy vectors (views of one buffer) from a list<double> array; None where null."""
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float32)
    ends = np.cumsum(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False))
    starts = ends - pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    valid = pc.is_valid(lists).to_pylist()
    return [flat[a:b] if ok else None for a, b, ok in zip(starts.tolist(), ends.tolist(), valid)]


def arrow_answers(source: Any, kind: str = "chat") -> Optional[Answers]:
    """The answers of an output/error file (a path or a readable stream), or None when Arrow cannot take its lines.

    ``kind`` as for :func:`~pdbatch.core.batchfile.read_answers`.
    """
    try:
        return _answers_arrow(source, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, _Unfit):
        return None


def _answers_arrow(path: Any, kind: str = "chat") -> Answers:
    """Columns of an output/error file, parsed by Arrow (by blocks, in parallel).

    Only the fields named in the schema are kept, and they stay Arrow arrays:
    no Python object is made per line (see :class:`Answers`).
    """
    embed, responses = kind == "embedding", kind == "responses"
    reader = pajson.open_json(path, read_options=pajson.ReadOptions(block_size=4 << 20),
                              parse_options=_EMBED_PARSE if embed else RESPONSES_PARSE if responses else _PARSE)
    table = pa.Table.from_batches(list(reader), schema=reader.schema)
    n = table.num_rows
    ids = table.column("custom_id")
    if ids.null_count:
        raise _Unfit(f"{path}: a line has no custom_id")
    resp = table.column("response")
    body = pc.struct_field(resp, "body")
    none = pa.scalar(None, pa.string())
    if embed:
        first, has = _first(pc.struct_field(body, "data"))
        vectors = pc.struct_field(first, "embedding")
        has = pc.and_(has, pc.is_valid(vectors))
        content = _vectors(vectors.combine_chunks() if isinstance(vectors, pa.ChunkedArray) else vectors)
        refusal = pa.nulls(n, pa.string())
        finish = pc.if_else(has, "stop", none)
        valid = pc.is_valid(vectors)
    elif responses:
        content, refusal, finish, has, tokens = responses_columns(body, n)
        valid = pc.is_valid(content)
    else:
        if pc.any(pc.equal(pc.struct_field(body, "object"), "response")).as_py():
            raise _Unfit(f"{path}: Responses answers (read line by line when not asked for)")
        first, has = _first(pc.struct_field(body, "choices"))
        msg = pc.struct_field(first, "message")
        content = pc.struct_field(msg, "content")
        refusal = pc.struct_field(msg, "refusal")
        finish = pc.struct_field(first, "finish_reason")
        valid = pc.is_valid(content)
    top_err = table.column("error")
    body_err = pc.struct_field(body, "error")
    # A line with neither a response nor an error: Result.from_line's "no_response".
    empty = pc.and_(pc.is_null(resp), pc.is_null(top_err))
    code = pc.coalesce(pc.struct_field(top_err, "code"), pc.struct_field(body_err, "code"),
                       pc.struct_field(body_err, "type"), pc.if_else(empty, "no_response", none))
    message = pc.coalesce(pc.struct_field(top_err, "message"), pc.struct_field(body_err, "message"),
                          pc.if_else(empty, NO_RESPONSE, none))
    status = pc.struct_field(resp, "status_code")
    ok = usable_arrow(code, message, status, valid, refusal, finish)
    usage = pc.struct_field(body, "usage")
    zeros = pa.array(np.zeros(n, dtype=np.int64))
    tokens = tokens if responses else {"prompt_tokens": pc.struct_field(usage, "prompt_tokens")}
    if not embed and not responses:
        tokens.update(
            completion_tokens=pc.struct_field(usage, "completion_tokens"),
            cached_tokens=pc.struct_field(pc.struct_field(usage, "prompt_tokens_details"), "cached_tokens"),
            reasoning_tokens=pc.struct_field(pc.struct_field(usage, "completion_tokens_details"), "reasoning_tokens"),
        )
    tokens = {name: pc.fill_null(tokens.get(name, zeros), 0)
              for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")}
    return Answers(custom_id=ids, status_code=status, content=content, finish_reason=finish, refusal=refusal,
                   has_choice=has, error_code=code, error_message=message, ok=ok, **tokens)
