"""``df.llm.embed`` on the batch backend, through the real SDK against the local server."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pdbatch.errors import BackendUnavailableError, MissingColumnError, OptionError
from pdbatch.server import Faults

FAST = dict(poll_interval=0.02, max_poll_interval=0.05, progress=False, timeout=30)


@pytest.fixture
def texts():
    return pd.DataFrame({"t": ["a red kettle", "a blue mug", None, "a lamp"]}, index=["k", "m", "x", "l"])


def test_vectors_land_on_their_rows(make_server, make_client, texts, tmp_path):
    srv = make_server()
    out = texts.llm.embed("Item: {t}", dimensions=6, client=make_client(srv), **FAST)
    assert list(out.columns) == ["t", "embedding", "llm_error"]
    vec = out.loc["m", "embedding"]
    assert isinstance(vec, np.ndarray) and vec.dtype == np.float32 and vec.shape == (6,)
    # the echo engine's vectors are a function of the input text: compare with a direct call
    direct = make_client(srv).embeddings.create(model="text-embedding-3-small", input="Item: a blue mug",
                                                dimensions=6, encoding_format="float")
    np.testing.assert_allclose(vec, np.asarray(direct.data[0].embedding, dtype=np.float32), rtol=1e-6)
    assert out.loc["x", "llm_error"] == "missing value in column 't'" and out.loc["x", "embedding"] is None
    assert np.stack(out.loc[["k", "m", "l"], "embedding"]).shape == (3, 6)
    assert out.attrs["pdbatch"]["usage"]["input_tokens"] > 0
    path = tmp_path / "e.parquet"
    out.to_parquet(path)
    back = pd.read_parquet(path)
    np.testing.assert_allclose(np.asarray(back.loc["m", "embedding"], dtype=np.float32), vec)


def test_embed_batch_body_and_cache(make_server, make_client, texts):
    srv = make_server()
    texts.llm.embed("{t}", client=make_client(srv), **FAST)
    batch = next(iter(srv.batches.values()))
    lines = [json.loads(x) for x in make_client(srv).files.content(batch["input_file_id"]).text.splitlines()]
    assert all(x["url"] == "/v1/embeddings" for x in lines)
    assert lines[0]["body"] == {"model": "text-embedding-3-small", "input": "a red kettle", "encoding_format": "float"}
    calls = srv.stats.batches_created
    again = texts.llm.embed("{t}", client=make_client(srv), **FAST)
    assert srv.stats.batches_created == calls  # answered from the job store
    assert again.loc["k", "embedding"].shape == (8,)


def test_embed_error_rows(make_server, make_client, texts):
    srv = make_server(faults=Faults(error_for=lambda cid, body: (400, "invalid_input", "bad") if cid == "l" else None))
    out = texts.llm.embed("{t}", client=make_client(srv), **FAST)
    assert out.loc["l", "llm_error"] == "invalid_input: bad" and out.loc["l", "embedding"] is None
    assert out.loc["k", "llm_error"] is None


def test_series_embed(make_server, make_client):
    srv = make_server()
    s = pd.Series(["one", "two"], name="w")
    out = s.llm.embed("{}", client=make_client(srv), dimensions=3, **FAST)
    assert isinstance(out, pd.Series) and out[1].shape == (3,)


def test_embed_bad_input_sends_nothing(make_server, make_client, texts, monkeypatch):
    srv = make_server()
    c = make_client(srv)
    with pytest.raises(OptionError, match="dimensions"):
        texts.llm.embed("{t}", client=c, dimensions=0)
    with pytest.raises(TypeError, match="'system'"):  # not a parameter of embed(): Python says so
        texts.llm.embed("{t}", client=c, system="x")
    with pytest.raises(TypeError, match="'temperature'"):
        texts.llm.embed("{t}", client=c, temperature=0)
    with pytest.raises(MissingColumnError, match="'nope'"):
        texts.llm.embed("{nope}", client=c)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    import anthropic
    import pdbatch  # a backend without embeddings; the local one has them (tests/backends/test_local_embed.py)

    with pytest.raises(BackendUnavailableError, match="cannot embed"):
        texts.llm.embed("{t}", backend=pdbatch.AnthropicBatch(client=anthropic.Anthropic(api_key="sk-ant-test")))
    assert srv.stats.uploads == 0


def test_embed_on_realtime_backend(make_server, make_client, texts):
    srv = make_server()
    out = texts.llm.embed("{t}", dimensions=5, backend="realtime", client=make_client(srv), progress=False)
    assert out.loc["l", "embedding"].shape == (5,) and out.loc["l", "embedding"].dtype == np.float32
    assert out.loc["x", "llm_error"].startswith("missing value")
    assert srv.stats.realtime_calls == 3 and srv.stats.uploads == 0
    batch = texts.llm.embed("{t}", dimensions=5, client=make_client(srv), **FAST)
    np.testing.assert_allclose(np.stack(batch.loc[["k", "m", "l"], "embedding"]),
                               np.stack(out.loc[["k", "m", "l"], "embedding"]), rtol=1e-6)
