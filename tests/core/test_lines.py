"""Tests for pdbatch/core/lines.py and MapSpec.encode: spliced lines and hashes equal the slow path's."""

from __future__ import annotations

import pandas as pd
import pytest

from pdbatch.core.ids import custom_ids
from pdbatch.core.lines import LineTemplate
from pdbatch.core.records import CHAT_URL, EMBEDDINGS_URL, request_hash
from pdbatch.core.spec import MapSpec

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}}
SHAPES = {
    "text": ("{t}", {}, {}),
    "const-system": ("T: {t}", {"system": 'Say "hi" 100% \u2713 %s {{x}}'}, {"seed": 3}),
    "row-system": ("{t}", {"system": "Films of {y}: 100%"}, {}),
    "schema": ("{t}", {"response_format": SCHEMA, "extra_body": {"metadata": {"b": 1, "a": [2]}}}, {"temperature": 0}),
    "images": ("{t}", {"images": "https://example.com/{t}.png", "image_detail": "low"}, {}),
    "marker": ("{t}", {"system": "\x00pdbatch:slot:0\x00"}, {}),
    "embedding": ("{t}", {"url": EMBEDDINGS_URL}, {"dimensions": 4}),
}


@pytest.fixture
def frame():
    return pd.DataFrame({"t": ["a", "b \u00e9", None, "d%s"], "y": [1990, 1991, 1992, None]},
                        index=["x", 2, ("t", 1), "z"])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_encode_gives_the_bytes_and_hashes_of_the_slow_path(frame, shape):
    template, args, params = SHAPES[shape]
    spec = MapSpec.build(template, columns=list(frame.columns), model="m", params=params, **args)
    ids = custom_ids(frame.index)
    rendered = spec.render(frame, ids)
    slow = list(spec.requests(spec.render(frame, ids)))
    fast = list(spec.encode(rendered))
    assert [cid for _, cid, _, _ in fast] == [r.custom_id for r in slow]
    assert [line for _, _, line, _ in fast] == [r.to_line() for r in slow]
    assert [h for _, _, _, h in fast] == [request_hash(r) for r in slow]
    assert [ids[pos] for pos, _, _, _ in fast] == [r.custom_id for r in slow]
    assert list(spec.lines(spec.render(frame, ids))) == [(cid, line) for _, cid, line, _ in fast]


def test_hash_ignores_key_order_and_custom_id():
    body = {"temperature": 0, "model": "m", "messages": [{"role": "user", "content": LineTemplate.slot(0)}]}
    t = LineTemplate.build(CHAT_URL, body, 1)
    assert t.hash(("hi",)) == t.hash(("hi",)) != t.hash(("ho",))
    assert t.line("1", ("hi",)) != t.line("2", ("hi",))


def test_build_refuses_markers_out_of_order():
    body = {"model": "m", "messages": [{"role": "user", "content": LineTemplate.slot(1)},
                                       {"role": "user", "content": LineTemplate.slot(0)}]}
    assert LineTemplate.build(CHAT_URL, body, 2) is None
