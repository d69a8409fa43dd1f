"""Values and labels the API cannot take, end to end: ``df.llm.map`` on the batch backend, through the
real openai SDK over HTTP against the local Batch API server (tests/conftest.py). No mocks.

A value that breaks the whole map (a format spec it refuses, a lone surrogate, an empty custom_id)
raises before anything is uploaded; an image the API would refuse becomes that row's error cell
while the other rows are sent.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest

import pdbatch
from pdbatch.core.images import IMAGE_MAX_BYTES
from pdbatch.errors import EmptyIdError, InputError, TemplateError
from pdbatch.server.engines import ScriptedEngine

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def films():
    return pd.DataFrame(
        {"title": ["Alpha", "Beta", "Gamma", "Delta"],
         "year": [1994.0, np.nan, 2001.0, 1980.0],
         "score": [7.5, 8.25, 6.0, 9.0]},
        index=pd.Index(["f1", "f2", "f3", "f4"], name="id"),
    )


def mapped(df, client, template, **kw):
    return df.llm.map(template, model="gpt-4o-mini", backend=pdbatch.Batch(client, poll_interval=0.05),
                      progress=False, timeout=30, **kw)


def sent_lines(client):
    """Every request line uploaded to the server, from the batch input files."""
    out = []
    for f in client.files.list(purpose="batch"):
        out += [json.loads(x) for x in client.files.content(f.id).text.splitlines() if x]
    return out


@pytest.mark.parametrize("change, template, kw, error, words", [
    (lambda df: df, "{title} ({year:d})", {}, TemplateError,
     ["template field '{year:d}'", "column 'year'", "index label 'f1'", "astype('Int64')"]),
    (lambda df: df.assign(score=["7.5", "8", "n/a", "9"]), "{title}: {score:.2f}", {}, TemplateError,
     ["template field '{score:.2f}'", "column 'score'", "index label 'f1'", "'7.5' (str)", "pd.to_numeric"]),
    (lambda df: df, "{title}", {"system": "Rate it {score:d}"}, TemplateError,
     ["system field '{score:d}'", "column 'score'", "index label 'f1'"]),
    (lambda df: df.set_axis(pd.Index(["f1", "f2\udcff", "f3", "f4"], dtype=object)), "{title}", {}, TemplateError,
     ["index label 'f2\\udcff' at row 1", "lone surrogate", "df.reset_index()"]),
    (lambda df: df.assign(title=pd.Series(["Alpha", "Beta", "Gam\ud800ma", "Delta"], index=df.index, dtype=object)),
     "{title}", {}, TemplateError,
     ["column 'title' holds a lone surrogate", "index label 'f3'", ".str.encode('utf-8', 'replace')"]),
    (lambda df: df.set_axis(["f1", "", "f3", "f4"]), "{title}", {}, EmptyIdError,
     ["index label '' at row 1", "empty custom_id", "df.reset_index()"]),
    (lambda df: df.assign(pic=pd.Series(["a.png", "b\udc80.png", "c.png", "d.png"], index=df.index, dtype=object)),
     "{title}", {"images": "pic"}, TemplateError, ["column 'pic' holds a lone surrogate", "index label 'f2'"]),
])
def test_values_the_api_cannot_take_raise_before_upload(make_server, make_client, films, change, template, kw,
                                                         error, words):
    srv = make_server()
    client = make_client(srv)
    df = change(films)
    before = df.copy()
    with pytest.raises(error) as info:
        mapped(df, client, template, **kw)
    assert isinstance(info.value, InputError)
    for w in words:
        assert w in str(info.value)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0 and sent_lines(client) == []
    pd.testing.assert_frame_equal(df, before)


def test_float_years_render_without_a_spec(make_server, make_client, films):
    # the fix the {year:d} message gives works
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine)
    out = mapped(films, make_client(srv), "{title} ({year})")
    assert out["llm_output"].tolist()[::2] == ["Alpha (1994)", "Gamma (2001)"]
    assert out.loc["f2", "llm_error"] == "missing value in column 'year'"


def tiny_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def test_refused_images_become_error_cells_and_the_other_rows_are_sent(make_server, make_client, tmp_path):
    png = tmp_path / "kettle.png"
    png.write_bytes(tiny_png())
    big = tmp_path / "huge.png"
    with open(big, "wb") as fh:
        fh.truncate(IMAGE_MAX_BYTES + 1)
    full, rest = divmod(IMAGE_MAX_BYTES + 1, 3)
    big_url = "data:image/png;base64," + "AAAA" * full + {0: "", 1: "AA==", 2: "AAA="}[rest]
    engine = ScriptedEngine(lambda text, body: "a caption")
    srv = make_server(engine=engine)
    client = make_client(srv)
    df = pd.DataFrame({
        "name": ["upper", "text", "gap", "nan", "file", "dataurl", "local", "ftp"],
        "pics": ["HTTPS://example.com/Mug.JPG",
                 "data:text/plain;base64," + base64.b64encode(b"hello").decode(),
                 ["https://example.com/a.png", None],
                 [str(png), np.nan],
                 str(big),
                 big_url,
                 [str(png), "Http://example.com/b.png"],
                 "ftp://example.com/c.png"],
    }, index=pd.Index(["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"], name="id"))
    before = df.copy()
    out = mapped(df, client, "Product: {name}", images="pics", image_detail="low")
    pd.testing.assert_frame_equal(df, before)
    errors = out["llm_error"]
    assert errors["r1"] is None or pd.isna(errors["r1"])
    assert errors["r2"].startswith("data URL is not an image (media type 'text/plain')")
    assert errors["r3"].startswith("missing value (None or NaN) in a list of images")
    assert errors["r4"].startswith("missing value (None or NaN) in a list of images")
    assert errors["r5"].startswith("image is too large (20.0 MB; the API takes at most 20 MB per image)")
    assert str(big) in errors["r5"]
    assert errors["r6"].startswith("image is too large") and len(errors["r6"]) < 300
    assert pd.isna(errors["r7"])
    assert errors["r8"].startswith("unsupported image URL scheme 'ftp'")
    assert out.loc[["r1", "r7"], "llm_output"].tolist() == ["a caption", "a caption"]
    assert out.attrs["pdbatch"]["counts"]["skipped"] == 6
    # what went over the wire: the two good rows only, schemes in lower case
    lines = sent_lines(client)
    assert sorted(x["custom_id"] for x in lines) == ["r1", "r7"]
    parts = {x["custom_id"]: x["body"]["messages"][-1]["content"][1:] for x in lines}
    assert parts["r1"] == [{"type": "image_url", "image_url": {"url": "https://example.com/Mug.JPG", "detail": "low"}}]
    assert [p["image_url"]["url"] for p in parts["r7"]] == [
        "data:image/png;base64," + base64.b64encode(tiny_png()).decode(), "http://example.com/b.png"]
    assert engine.calls == 2
