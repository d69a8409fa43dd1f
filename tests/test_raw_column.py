"""``raw_column=`` and schema columns of failed rows, end to end through the real openai SDK over HTTP
against the local Batch API server (tests/conftest.py). No mocks."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import BaseModel

import pdbatch
from pdbatch.errors import ColumnCollisionError, OptionError
from pdbatch.server import Faults
from pdbatch.server.engines import ScriptedEngine

FAST = dict(poll_interval=0.02, max_poll_interval=0.1, progress=False, timeout=30, max_retries=0)


class City(BaseModel):
    country: str
    population: int


def reply(text, body):
    """What the model answers, chosen by the row's text."""
    if text.startswith("good"):
        return '{"country": "France", "population": 2}'
    if text.startswith("broken"):
        return '{"country": "Peru", "popul'
    if text.startswith("cut"):
        return {"content": '{"country": "No', "finish_reason": "length"}
    return "plain words"


def api_error(cid, body):
    return (400, "invalid_request_error", "bad row") if cid == "e" else None


def texts(col):
    return [None if pd.isna(v) else v for v in col.tolist()]


@pytest.fixture
def rows():
    return pd.DataFrame({"t": ["good", "broken", "cut", "error", None], "n": [1, 2, 3, 4, 5]},
                        index=pd.Index(["g", "b", "c", "e", "s"], name="key"))


def test_raw_column_keeps_the_text_of_failed_rows(make_server, make_client, rows):
    srv = make_server(engine=ScriptedEngine(reply), faults=Faults(error_for=api_error))
    out = rows.llm.map("{t}", model="m", response_format=City, raw_column="llm_raw", client=make_client(srv),
                       **FAST)
    assert list(out.columns) == ["t", "n", "country", "population", "llm_raw", "llm_error"]
    assert texts(out["llm_raw"]) == ['{"country": "France", "population": 2}', '{"country": "Peru", "popul',
                                     '{"country": "No', None, None]
    assert out.loc["g", "country"] == "France" and out["country"].iloc[1:].isna().all()
    err = out["llm_error"]
    assert pd.isna(err["g"]) and err["b"].startswith("invalid JSON") and err["c"].startswith("truncated")
    assert err["e"].startswith("invalid_request_error") and err["s"].startswith("missing value")


def test_job_answers_give_the_raw_text_too(make_server, make_client, rows):
    srv = make_server(engine=ScriptedEngine(reply), faults=Faults(error_for=api_error))
    job = rows.llm.submit("{t}", model="m", response_format=City, client=make_client(srv),
                          poll_interval=0.02, max_poll_interval=0.1, max_retries=0)
    out = job.wait(progress=False, timeout=30).result()
    assert "llm_raw" not in out.columns  # off by default
    frame = job.answers().to_frame().set_index("custom_id")
    assert frame.loc[job.ids[rows.index.get_loc("b")], "content"] == '{"country": "Peru", "popul'
    assert frame.loc["e", "error_code"] == "invalid_request_error" and pd.isna(frame.loc["e", "content"])
    assert "s" not in frame.index  # a skipped row was never sent


@pytest.mark.parametrize("answer", ["api_errors", "invalid_json"])
def test_schema_columns_exist_in_order_when_every_row_failed(make_server, make_client, answer):
    faults = Faults(error_for=lambda cid, body: (500, "server_error", "down")) if answer == "api_errors" else None
    srv = make_server(engine=ScriptedEngine(lambda text, body: "{nope"), faults=faults)
    df = pd.DataFrame({"t": ["a", "b"]})
    out = df.llm.map("{t}", model="m", response_format=City, client=make_client(srv), **FAST)
    assert list(out.columns) == ["t", "country", "population", "llm_error"]
    assert out[["country", "population"]].isna().all().all() and out["llm_error"].notna().all()


def test_schema_columns_exist_when_every_row_is_skipped(make_server, make_client):
    srv = make_server()
    df = pd.DataFrame({"t": [None, None]}, dtype=object)
    out = df.llm.map("{t}", model="m", response_format=City, raw_column="raw", client=make_client(srv), **FAST)
    assert list(out.columns) == ["t", "country", "population", "raw", "llm_error"]
    assert out[["country", "population", "raw"]].isna().all().all()


def test_series_host_with_raw_column_gives_a_frame(make_server, make_client):
    srv = make_server(engine=ScriptedEngine(reply), faults=Faults(error_for=api_error))
    s = pd.Series(["broken", "good"], index=["x", "y"], name="t")
    out = s.llm.map("{}", model="m", response_format=City, raw_column="raw", client=make_client(srv), **FAST)
    assert list(out.columns) == ["country", "population", "raw", "llm_error"]
    assert texts(out["raw"])[0] == '{"country": "Peru", "popul' and out.loc["y", "population"] == 2
    text = s.llm.map("{}", model="m", raw_column="raw", client=make_client(srv), **FAST)
    assert list(text.columns) == ["llm_output", "raw", "llm_error"]


def test_raw_column_on_the_realtime_backend(make_server, make_client, rows):
    srv = make_server(engine=ScriptedEngine(reply))
    out = rows.llm.map("{t}", model="m", response_format="json", raw_column="raw",
                       backend=pdbatch.Realtime(make_client(srv)), progress=False, timeout=30, max_retries=0)
    assert texts(out["raw"])[:3] == ['{"country": "France", "population": 2}', '{"country": "Peru", "popul',
                                     '{"country": "No']
    assert out.loc["b", "llm_error"].startswith("invalid JSON")


@pytest.mark.parametrize("kwargs, error", [
    (dict(raw_column="llm_output"), OptionError),
    (dict(raw_column="llm_error"), OptionError),
    (dict(raw_column="oops", error_column="oops"), OptionError),
    (dict(raw_column="country", response_format=City), OptionError),
    (dict(raw_column=""), OptionError),
    (dict(raw_column=3), OptionError),
    (dict(raw_column=["r"]), OptionError),
    (dict(raw_column="n"), ColumnCollisionError),
], ids=["output", "error_column", "named-error_column", "schema-key", "empty", "int", "list", "existing"])
def test_bad_raw_column_raises_before_anything_is_sent(make_server, make_client, rows, kwargs, error):
    srv = make_server()
    with pytest.raises(error, match="raw_column|'n'"):
        rows.llm.map("{t}", model="m", client=make_client(srv), **kwargs, **FAST)
    with pytest.raises(error):
        rows.llm.submit("{t}", model="m", client=make_client(srv), **kwargs)
    with pytest.raises(error):
        rows.llm.estimate("{t}", model="m", show=False, **kwargs)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0


def test_existing_raw_column_is_replaced_with_overwrite(make_server, make_client, rows):
    srv = make_server(engine=ScriptedEngine(reply))
    out = rows.llm.map("{t}", model="m", raw_column="n", overwrite=True, client=make_client(srv), **FAST)
    assert texts(out["n"])[:2] == ['{"country": "France", "population": 2}', '{"country": "Peru", "popul']


def test_read_results_takes_raw_column(tmp_path, rows):
    import orjson

    line = {"id": "r", "custom_id": "b", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "{half"}, "finish_reason": "stop"}]}}, "error": None}
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    out = rows.llm.read_results(str(path), "{t}", response_format=City, raw_column="raw")
    assert list(out.columns) == ["t", "n", "country", "population", "raw", "llm_error"]
    assert texts(out["raw"]) == [None, "{half", None, None, None]
    assert out.loc["s", "llm_error"].startswith("missing value")
    with pytest.raises(OptionError, match="raw_column"):
        rows.llm.read_results(str(path), raw_column="llm_error")
