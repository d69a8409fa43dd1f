"""The Anthropic Message Batches backend end to end: the real ``anthropic`` SDK over HTTP against the local server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from pdbatch.core.anthropic_ids import anthropic_id
from pdbatch.errors import BackendUnavailableError, OptionError
from pdbatch.server import Faults
from pdbatch.server.engines import ScriptedEngine

from tests.backends import anthropic_child as child

anthropic = pytest.importorskip("anthropic")
HERE = Path(__file__).resolve().parent


def root(srv) -> str:
    return srv.base_url[: -len("/v1")]


@pytest.fixture
def make_anthropic():
    made = []

    def factory(srv, **kw):
        kw.setdefault("max_retries", 0)
        made.append(anthropic.Anthropic(base_url=root(srv), api_key="sk-ant-test", timeout=10.0, **kw))
        return made[-1]

    yield factory
    for c in made:
        c.close()


def test_text_answers_join_back_on_labels_anthropic_refuses(make_server, make_anthropic):
    engine = ScriptedEngine(lambda text, body: text.upper())
    srv = make_server(engine=engine)
    out = child.run(make_anthropic(srv), system="Shout.")
    assert list(out.index) == child.LABELS
    assert out["llm_output"].tolist() == [f"ROW R{i}: TEXT {i}" for i in range(6)]
    assert out["llm_error"].isna().all()
    assert srv.stats.batches_created == 3  # shard_size=2
    body = engine.bodies[0]
    assert body["messages"][0] == {"role": "system", "content": "Shout."}  # sent as the top-level system
    assert body["max_completion_tokens"] == 1024  # the default max_tokens
    assert out.attrs["pdbatch"]["usage"]["output_tokens"] == 24  # 4 words x 6 rows


def test_schema_answers_are_validated_like_openai(make_server, make_anthropic):
    def reply(text, body):
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["required"] == ["n"]
        return json.dumps({"n": "not a number"}) if "r1" in text else json.dumps({"n": len(text)})

    srv = make_server(engine=ScriptedEngine(reply))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = child.run(make_anthropic(srv), n=3, response_format=schema, max_tokens=64)
    assert out.loc["a b", "n"] == len("Row r0: text 0")
    assert pd.isna(out.loc["x/y|z", "n"]) and "n" in out.loc["x/y|z", "llm_error"]


def test_json_mode_is_an_instruction_and_is_parsed(make_server, make_anthropic):
    seen = []

    def reply(text, body):
        seen.append(body["messages"][0]["content"])
        return json.dumps({"echo": text})

    srv = make_server(engine=ScriptedEngine(reply))
    out = child.run(make_anthropic(srv), n=2, response_format="json")
    assert out["llm_error"].isna().all()
    assert all("JSON object" in s for s in seen)


def test_images_go_as_image_blocks(make_server, make_anthropic):
    srv = make_server(engine=ScriptedEngine(lambda text, body: text))
    df = pd.DataFrame({"q": ["what?"], "img": ["https://example.com/cat.png"]}, index=["a/b"])
    out = df.llm.map("{q}", images="img", model="claude-haiku-4-5", client=make_anthropic(srv),
                     poll_interval=0.02, max_poll_interval=0.05, progress=False, timeout=30)
    assert out.loc["a/b", "llm_output"] == "what? [1 image]"


def test_errored_and_expired_results_retried_invalid_request_kept(make_server, make_anthropic):
    seen, lock = {}, threading.Lock()
    over, bad = anthropic_id("a b"), anthropic_id("x/y|z")

    def flaky(cid, params):
        with lock:
            seen[cid] = seen.get(cid, 0) + 1
            first = seen[cid] == 1
        if cid == over and first:
            return (529, "overloaded", "Overloaded")
        if cid == bad:
            return (400, "invalid", "prompt is too long: 300000 tokens > 200000 maximum")
        return None

    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(error_for=flaky, expire_after=3))
    out = child.run(make_anthropic(srv), shard_size=10, max_retries=4)
    assert out.loc["x/y|z", "llm_error"] == ("invalid_request_error: prompt is too long: 300000 tokens > 200000 "
                                             "maximum")
    assert seen[bad] == 1  # permanent: never sent again
    assert out["llm_error"].drop("x/y|z").isna().all()
    assert out.loc["a b", "llm_output"] == "Row r0: text 0"
    assert srv.stats.batches_created >= 2 and out.attrs["pdbatch"]["resubmitted"] >= 3  # 1 overloaded + 3 expired
    assert engine.calls == 5  # every other row answered exactly once


def test_rerun_reattaches_with_zero_new_batches(make_server, make_anthropic):
    srv = make_server(faults=Faults(request_delay=0.02))
    client = make_anthropic(srv)
    job = child.make_frame().llm.map(child.TEMPLATE, client=client, wait=False, **child.OPTIONS)
    assert srv.stats.batches_created == 3
    again = child.run(client)  # the same map: attaches to the job in flight
    assert srv.stats.batches_created == 3
    assert again["llm_error"].isna().all() and job.id == again.attrs["pdbatch"]["job_id"]
    child.run(client)  # finished: answered from the job, nothing sent
    assert srv.stats.batches_created == 3


@pytest.mark.parametrize("point,delay", [("POST /v1/messages/batches", 0.01), ("POST /v1/messages/batches", 0.4),
                                         ("GET /v1/messages/batches/msgbatch_*", 0.01),
                                         ("GET /v1/messages/batches/*/results", 0.01)],
                         ids=["between-create-and-record", "between-create-and-record-still-running",
                              "while-polling", "while-reading-results"])
def test_sigkill_then_rerun_one_batch_per_shard(make_server, make_anthropic, tmp_path, point, delay, caplog):
    import fnmatch

    srv = make_server(faults=Faults(request_delay=delay))
    fired, box = threading.Event(), {}

    def hook(method, path, status):
        if not fired.is_set() and "pid" in box and fnmatch.fnmatchcase(f"{method} {path}", point) \
                and status < 300:
            fired.set()
            os.kill(box["pid"], signal.SIGKILL)

    srv.faults.on_response = hook
    out = tmp_path / "out.parquet"
    proc = subprocess.Popen([sys.executable, str(HERE / "anthropic_child.py"), root(srv), str(out)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    box["pid"] = proc.pid
    proc.wait(timeout=60)
    assert fired.is_set() and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    srv.faults.on_response = None
    with caplog.at_level("INFO", logger="pdbatch"):
        result = child.run(make_anthropic(srv))
    assert srv.stats.batches_created == 3  # one per shard: a batch created before the kill is adopted
    assert ("adopts Message Batch" in caplog.text) == point.startswith("POST")
    assert result["llm_error"].isna().all()
    assert result["llm_output"].tolist() == [f"Row r{i}: text {i}" for i in range(6)]


def test_embeddings_refused_before_sending(make_server, make_anthropic):
    srv = make_server()
    client = make_anthropic(srv)
    df = child.make_frame(2)
    for backend in ("batch", "realtime"):
        with pytest.raises(BackendUnavailableError, match="embed"):
            df.llm.embed("{text}", model="claude-haiku-4-5", client=client, backend=backend)
    assert srv.stats.log == []


REALTIME = dict(model="claude-haiku-4-5", backend="realtime", progress=False, timeout=30)


def test_realtime_messages_create_with_schema_and_retries(make_server, make_anthropic):
    def reply(text, body):
        assert body["messages"][0] == {"role": "system", "content": "Count."}
        return json.dumps({"n": len(text)})

    srv = make_server(engine=ScriptedEngine(reply), faults=Faults(realtime_errors=[529, 429, 500]))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = child.make_frame().llm.map(child.TEMPLATE, system="Count.", response_format=schema,
                                     client=make_anthropic(srv), max_concurrency=2, **REALTIME)
    assert out["llm_error"].isna().all()
    assert out["n"].tolist() == [len(f"Row r{i}: text {i}") for i in range(6)]
    assert srv.stats.calls("POST", "/v1/messages") == 6 + 3  # three retried
    assert srv.stats.batches_created == 0


def test_realtime_400_is_a_permanent_error_cell(make_server, make_anthropic):
    srv = make_server(faults=Faults(realtime_errors=[400]))
    out = child.make_frame(1).llm.map(child.TEMPLATE, client=make_anthropic(srv), max_concurrency=1, **REALTIME)
    assert out["llm_error"].iloc[0].startswith("invalid_request_error: injected")
    assert srv.stats.calls("POST", "/v1/messages") == 1


def test_anthropic_api_key_and_claude_model_pick_it(make_server, monkeypatch):
    srv = make_server(engine=ScriptedEngine(lambda text, body: "hi"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", root(srv))
    out = child.make_frame(2).llm.map(child.TEMPLATE, **child.OPTIONS)
    assert out["llm_output"].tolist() == ["hi", "hi"]
    assert srv.stats.calls("POST", "/v1/messages/batches") == 1


def test_unsupported_params_refused_before_sending(make_server, make_anthropic):
    srv = make_server()
    for backend in ("batch", "realtime"):
        opts = {} if backend == "batch" else dict(shard_size=None, poll_interval=None, max_poll_interval=None)
        with pytest.raises(OptionError, match="seed"):
            child.run(make_anthropic(srv), n=2, seed=3, backend=backend, **opts)
    assert srv.stats.log == []
    from pdbatch.job.store import default_store
    assert default_store().jobs() == []  # refused before a job was made


def test_job_load_with_the_client_collects(make_server, make_anthropic):
    import pdbatch

    srv = make_server(faults=Faults(request_delay=0.02))
    job = child.make_frame().llm.submit(child.TEMPLATE, client=make_anthropic(srv),
                                        **{k: v for k, v in child.OPTIONS.items() if k not in ("progress", "timeout")})
    loaded = pdbatch.Job.load(job.id, client=make_anthropic(srv))
    out = loaded.wait(progress=False, timeout=30).result()
    assert out["llm_output"].tolist() == [f"Row r{i}: text {i}" for i in range(6)]
    assert list(out.index) == child.LABELS and srv.stats.batches_created == 3


def test_cancel_keeps_answers_and_rerun_sends_only_the_rest(make_server, make_anthropic):
    import time

    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(request_delay=0.1))
    opts = {k: v for k, v in child.OPTIONS.items() if k not in ("progress", "timeout", "shard_size")}
    job = child.make_frame().llm.submit(child.TEMPLATE, client=make_anthropic(srv), **opts)
    for _ in range(300):  # bounded: until the first answers are in
        if engine.calls >= 2:
            break
        time.sleep(0.02)
    job.cancel()
    partial = job.wait(progress=False, timeout=30).result()
    done = int(partial["llm_error"].isna().sum())
    assert 2 <= done < 6
    assert partial["llm_error"].dropna().str.startswith("batch_cancelled").all()
    srv.faults.request_delay = 0.0
    out = child.run(make_anthropic(srv))
    assert out["llm_error"].isna().all() and out.attrs["pdbatch"]["counts"]["cached"] == done
    assert engine.calls == 6  # the rows answered before the cancel were not paid twice


def test_estimate_prices_claude_on_anthropic_only_and_sees_the_cache(make_server, make_anthropic):
    srv = make_server()
    client = make_anthropic(srv)
    df = child.make_frame(2)
    est = df.llm.estimate(child.TEMPLATE, model="claude-haiku-4-5", client=client)
    assert est["cost_batch"] is None and est["provider"] == f"anthropic {root(srv)}"  # not api.anthropic.com
    child.run(client, n=2)
    assert df.llm.estimate(child.TEMPLATE, model="claude-haiku-4-5", client=client)["cached"] == 2
    real = df.llm.estimate(child.TEMPLATE, model="claude-haiku-4-5", client=anthropic.Anthropic(api_key="k"))
    assert real["cost_batch"]["source"].startswith("Anthropic pricing page")


def test_shards_by_bytes_too(make_server, make_anthropic):
    srv = make_server()
    out = child.run(make_anthropic(srv), shard_size=100, shard_bytes=600)
    assert out["llm_error"].isna().all()
    assert srv.stats.batches_created >= 2  # every request line is ~300 bytes


def test_pydantic_model_as_structured_output(make_server, make_anthropic):
    pydantic = pytest.importorskip("pydantic")

    class Movie(pydantic.BaseModel):
        genre: str
        year: int

    def reply(text, body):
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["additionalProperties"] is False and set(schema["required"]) == {"genre", "year"}
        return json.dumps({"genre": "drama", "year": 1999})

    srv = make_server(engine=ScriptedEngine(reply))
    out = child.run(make_anthropic(srv), n=2, response_format=Movie)
    assert out["genre"].tolist() == ["drama", "drama"] and out["year"].tolist() == [1999, 1999]


def test_cli_map_with_anthropic_api_key_and_a_claude_model(make_server, monkeypatch, tmp_path):
    from pdbatch.cli import main

    root_dir = Path(__file__).resolve().parents[2]
    srv = make_server()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-cli")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", root(srv))
    out = tmp_path / "movies.parquet"
    assert main(["map", str(root_dir / "data" / "movies.csv"), "--prompt", str(root_dir / "data" / "prompts" /
                 "movies.toml"), "--model", "claude-haiku-4-5", "--out", str(out), "--limit", "3",
                 "--poll-interval", "0.02", "-q"]) == 0
    df = pd.read_parquet(out)
    assert df["llm_error"].isna().all() and df["summary"].notna().all()
    assert srv.stats.calls("POST", "/v1/messages/batches") == 1


def test_job_load_without_a_client_uses_the_anthropic_environment(make_server, make_anthropic, monkeypatch):
    import pdbatch

    srv = make_server()
    job = child.make_frame(2).llm.submit(child.TEMPLATE, client=make_anthropic(srv),
                                         **{k: v for k, v in child.OPTIONS.items() if k not in ("progress", "timeout")})
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-not-this-one")
    with pytest.raises(BackendUnavailableError, match="ANTHROPIC_API_KEY"):
        pdbatch.Job.load(job.id)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", root(srv))
    out = pdbatch.Job.load(job.id).wait(progress=False, timeout=30).result()
    assert out["llm_error"].isna().all() and srv.stats.batches_created == 1


def test_anthropic_realtime_checks_its_options_and_client_without_an_openai_client(make_server, make_anthropic):
    import openai
    import pickle

    from pdbatch.backends.anthropic_realtime import AnthropicRealtime

    srv = make_server()
    client = make_anthropic(srv)
    backend = AnthropicRealtime(client, max_concurrency=3, rpm=120)
    assert backend.client is client and backend.provider == f"anthropic {root(srv)}"
    assert not any(isinstance(v, openai.OpenAI) for v in vars(backend).values())  # no stand-in OpenAI client
    with pytest.raises(OptionError, match="max_concurrency"):
        AnthropicRealtime(client, max_concurrency=0)
    with pytest.raises(OptionError, match="max_attempts"):
        AnthropicRealtime(client, max_attempts="six")
    with pytest.raises(OptionError, match="synchronous anthropic.Anthropic client, got OpenAI"):
        AnthropicRealtime(openai.OpenAI(api_key="k", base_url=srv.base_url))
    with pytest.raises(OptionError, match="synchronous anthropic.Anthropic client, got AsyncAnthropic"):
        AnthropicRealtime(anthropic.AsyncAnthropic(api_key="k", base_url=root(srv)))
    os.environ["PDBATCH_TEST_ANTHROPIC_KEY"] = "sk-ant-test"  # a key found in the environment pickles by name
    try:
        copy = pickle.loads(pickle.dumps(backend))
    finally:
        del os.environ["PDBATCH_TEST_ANTHROPIC_KEY"]
    assert isinstance(copy.client, anthropic.Anthropic) and copy.provider == backend.provider
    assert srv.stats.log == []  # building, refusing and pickling sent nothing
    out = child.make_frame(2).llm.map(child.TEMPLATE, client=client, max_concurrency=1, **REALTIME)
    assert out["llm_error"].isna().all() and srv.stats.calls("POST", "/v1/messages") == 2
