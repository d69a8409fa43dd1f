"""Tests for pdbatch/options.py and its use by the accessor: every value checked once, before anything is sent.

Each bad input is checked for its message (it names the option and says what
is allowed, or which backend takes it) and for nothing having been uploaded.
"""

from __future__ import annotations

import inspect
import math

import pandas as pd
import pytest

import pdbatch
from pdbatch.errors import BackendUnavailableError, OptionError
from pdbatch.options import OPTIONS, JobOptions, RunOptions, check, check_owner

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}, "tag": {"type": "string"}}}


@pytest.fixture
def frame():
    return pd.DataFrame({"t": ["a", "b", "c"]}, index=["x", "y", "z"])


@pytest.mark.parametrize("name,value,words", [
    ("poll_interval", -1, ["poll_interval", "> 0"]),
    ("poll_interval", math.nan, ["poll_interval", "nan"]),
    ("poll_interval", "2", ["poll_interval", "'2'"]),
    ("shard_size", 0, ["shard_size", ">= 1"]),
    ("shard_size", 2.5, ["shard_size", "whole number"]),
    ("max_retries", -1, ["max_retries", ">= 0"]),
    ("max_retries", True, ["max_retries", "True"]),
    ("cache", "yes", ["cache", "True or False"]),
    ("rpm", 0, ["rpm", "> 0"]),
    ("rpm", math.inf, ["rpm", "inf"]),
    ("timeout", -5, ["timeout", "> 0"]),
    ("workers", 0, ["workers", ">= 1"]),
])
def test_bad_values_name_the_option_and_what_is_allowed(name, value, words):
    with pytest.raises(OptionError) as info:
        check(name, value)
    for w in words:
        assert w in str(info.value)


def test_a_label_names_the_flag():
    with pytest.raises(OptionError, match=r"^--poll-interval must be a number of seconds > 0, got -1$"):
        check("poll_interval", -1, label="--poll-interval")
    assert check("timeout", 2, label="--timeout") == 2.0


def test_extra_body_passes_other_fields_and_n_1(make_server, make_client, frame):
    srv = make_server()
    out = frame.llm.map("{t}", model="m", client=make_client(srv), progress=False, poll_interval=0.02, n=1,
                        extra_body={"provider_flag": "on"})
    assert out["llm_output"].tolist() == ["a", "b", "c"] and srv.stats.batches_created == 1


def test_good_values_pass_and_seconds_become_floats():
    assert check("poll_interval", 1) == 1.0 and isinstance(check("poll_interval", 1), float)
    assert check("shard_size", 10) == 10 and check("rpm", None) is None and check("workers", None) is None
    assert JobOptions(cache=False, max_retries=0).cache is False
    assert RunOptions(timeout=3).timeout == 3.0
    with pytest.raises(OptionError, match="retry_invalid"):
        JobOptions(retry_invalid=-2)


def test_every_backend_option_has_one_owner():
    owners = {o.owner for o in OPTIONS.values()}
    assert owners == {"job", "run", "batch", "realtime", "local"}
    with pytest.raises(OptionError, match=r"backend='realtime'.*pdbatch\.Realtime\(rpm=\.\.\.\)"):
        check_owner("local", {"rpm": 10})
    check_owner("realtime", {"rpm": 10, "cache": True})  # job options go with any backend


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(backend="batch", workers=4), OptionError, ["workers=", "backend='local'", "not of backend='batch'"]),
    (dict(backend="realtime", shard_size=10), OptionError, ["shard_size=", "backend='batch'"]),
    (dict(poll_interval=-1), OptionError, ["poll_interval must be", "> 0"]),
    (dict(poll_interval=2.0, max_poll_interval=1.0), OptionError, ["max_poll_interval", ">= poll_interval"]),
    (dict(output="llm_error"), OptionError, ["output and error_column", "'llm_error'"]),
    (dict(output="x", error_column="x"), OptionError, ["'x'"]),
    (dict(response_format=SCHEMA, error_column="tag"), OptionError, ["error_column='tag'", "schema"]),
    (dict(max_retries=-1), OptionError, ["max_retries"]),
    (dict(cache="no"), OptionError, ["cache must be True or False"]),
    (dict(timeout=0), OptionError, ["timeout"]),
    (dict(extra_body=["x"]), OptionError, ["extra_body must be a dict"]),
    (dict(extra_body={"model": "gpt-4o"}), OptionError, ["extra_body may not set 'model'", "use model=..."]),
    (dict(extra_body={"messages": []}), OptionError, ["extra_body may not set 'messages'", "the template, system="]),
    (dict(extra_body={"input": "x"}), OptionError, ["extra_body may not set 'input'", "the template"]),
    (dict(extra_body={"response_format": {"type": "json_object"}}), OptionError,
     ["extra_body may not set 'response_format'", "use response_format=..."]),
    (dict(extra_body={"stream": True}), OptionError, ["extra_body may not set 'stream'", "drop it"]),
    (dict(extra_body={"n": 3}), OptionError, ["extra_body may not set 'n'", "n must be 1", "cache=False"]),
    (dict(n=2), OptionError, ["n=2", "one answer per row", "n must be 1", "cache=False", "index.repeat(k)"]),
    (dict(n=0), OptionError, ["n=0", "n must be 1"]),
    (dict(n=2, response_format=SCHEMA), OptionError, ["n=2", "n must be 1"]),
])
def test_bad_options_raise_before_anything_is_sent(make_server, make_client, frame, kwargs, error, words):
    srv = make_server()
    before = frame.copy()
    with pytest.raises(error) as info:
        frame.llm.map("{t}", model="m", client=make_client(srv), progress=False, **kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0
    pd.testing.assert_frame_equal(frame, before)


def test_local_backend_refuses_realtime_and_client_options(frame, make_server, make_client):
    with pytest.raises(OptionError, match=r"rpm=.*backend='realtime'"):
        frame.llm.map("{t}", backend="local", rpm=10)
    with pytest.raises(OptionError, match="client= is for backend='batch'"):
        frame.llm.map("{t}", backend="local", client=make_client(make_server()))


def test_backend_objects_carry_their_options(make_server, make_client, frame):
    srv = make_server()
    be = pdbatch.Batch(make_client(srv), shard_size=2, poll_interval=0.02, max_poll_interval=0.05)
    out = frame.llm.map("{t}", model="m", backend=be, progress=False)
    assert out["llm_output"].tolist() == ["a", "b", "c"] and srv.stats.batches_created == 2
    with pytest.raises(OptionError, match=r"shard_size= cannot be given beside a backend object"):
        frame.llm.map("{t}", model="m", backend=be, shard_size=5)
    with pytest.raises(OptionError, match="poll_interval"):
        pdbatch.Batch(make_client(srv), poll_interval=-1)
    with pytest.raises(OptionError, match="max_concurrency"):
        pdbatch.Realtime(make_client(srv), max_concurrency=0)
    with pytest.raises(OptionError, match=r"\.gguf"):
        pdbatch.Local(model="model.bin")
    assert srv.stats.batches_created == 2


def test_a_backend_needing_a_key_says_which_variable(frame, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendUnavailableError, match="OPENAI_API_KEY"):
        frame.llm.map("{t}", model="m", backend="batch")


SHOWN = {
    "map": {"model", "response_format", "backend", "client", "cache", "poll_interval", "workers", "rpm", "timeout"},
    "submit": {"model", "response_format", "backend", "shard_size", "max_concurrency", "retry_invalid"},
    "embed": {"model", "dimensions", "backend", "shard_size", "max_concurrency", "wait"},
    "estimate": {"model", "response_format", "cache", "show", "backend"},
    "to_batch_file": {"path", "model", "shard_size", "shard_bytes", "response_format"},
    "read_results": {"paths", "response_format", "output", "error_column", "overwrite"},
}


@pytest.mark.parametrize("method", list(SHOWN))
def test_methods_show_their_real_parameters(method):
    params = inspect.signature(getattr(pdbatch.LLMAccessor, method)).parameters
    assert SHOWN[method] <= set(params)
    var_kw = [n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
    # only request-body parameters (temperature, seed...) go through a ** catch-all, and they are checked
    assert var_kw == (["params"] if method in ("map", "submit", "estimate", "to_batch_file") else [])


def test_read_results_rejects_unknown_keywords(frame, tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("")
    with pytest.raises(TypeError, match="error_colum"):
        frame.llm.read_results([str(path)], error_colum="e")
