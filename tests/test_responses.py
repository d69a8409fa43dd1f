"""The Responses endpoint (``endpoint="responses"``) on the batch and realtime backends.

Through the real ``openai`` SDK over HTTP against the project's own server
(tests/conftest.py), which answers ``/v1/responses`` batch lines and realtime
calls with its engines. No mocks.
"""

from __future__ import annotations

import json

import openai
import pandas as pd
import pytest

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch import pricing
from pdbatch.backends.realtime import Realtime
from pdbatch.core.records import Usage
from pdbatch.errors import OptionError
from pdbatch.server.engines import ScriptedEngine, chat_response

SCHEMA = {"type": "object", "properties": {"country": {"type": "string"}, "population": {"type": "integer"}}}
INDEX = pd.Index(["fr", "pe", "jp", "cut", "no"], name="code")
CITIES = pd.DataFrame({"city": ["Paris", "Lima", "Tokyo", "a very long city name indeed", "Nowhere"]}, index=INDEX)


def reply(text: str, body: dict):
    """Answers by city: a schema answer, a refusal for Nowhere, a cut answer past the output cap."""
    if "Nowhere" in text:
        return {"refusal": "I cannot help with that."}
    limit = body.get("max_completion_tokens")
    words = text.split()
    if limit is not None and len(words) > limit:
        return {"content": " ".join(words[:limit]), "finish_reason": "length"}
    return json.dumps({"country": text.split()[-1].upper(), "population": len(text)})


def run(backend: str, srv, make_client, **kw):
    extra = dict(poll_interval=0.02) if backend == "batch" else {}
    return CITIES.llm.map("in {city}", model="gpt-4o-mini", endpoint="responses", response_format=SCHEMA,
                          system="Answer in JSON.", backend=backend, client=make_client(srv), progress=False,
                          timeout=30, max_output_tokens=4, **extra, **kw)


@pytest.mark.parametrize("backend", ["batch", "realtime"])
def test_responses_schema_answers_land_on_their_rows(make_server, make_client, backend):
    engine = ScriptedEngine(reply)
    srv = make_server(engine=engine)
    out = run(backend, srv, make_client)
    assert list(out.index) == list(INDEX) and list(out.columns) == ["city", "country", "population", "llm_error"]
    assert out.loc[["fr", "pe", "jp"], "country"].tolist() == ["PARIS", "LIMA", "TOKYO"]
    assert out.loc["pe", "population"] == len("in Lima")
    assert out.loc[["fr", "pe", "jp"], "llm_error"].isna().all()
    # status incomplete (max_output_tokens) is the truncation cell; a refusal part the refusal cell
    assert out.loc["cut", "llm_error"].startswith("truncated") and "max_output_tokens" in out.loc["cut", "llm_error"]
    assert out.loc["no", "llm_error"] == "refused: I cannot help with that."
    # the engine saw the chat form of each Responses body: instructions, input, text.format, the output cap
    body = engine.bodies[0]
    assert body["messages"][0] == {"role": "system", "content": "Answer in JSON."}
    assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]
    assert body["max_completion_tokens"] == 4
    counts = out.attrs["pdbatch"]["counts"]
    assert counts["succeeded"] == 3 and counts["failed"] == 2 and counts["sent"] == 5


def test_responses_batch_lines_are_responses_bodies(make_server, make_client, tmp_path):
    """The uploaded file holds /v1/responses lines, byte for byte what to_batch_file writes."""
    srv = make_server()
    client = make_client(srv)
    frame = pd.DataFrame({"t": ["a", "b"], "img": ["https://example.com/a.png", "https://example.com/b.png"]})
    out = frame.llm.map("say {t}", model="gpt-4o-mini", endpoint="/v1/responses", images="img", image_detail="low",
                        client=client, poll_interval=0.02, progress=False, timeout=30)
    assert out["llm_output"].tolist() == ["say a [1 image]", "say b [1 image]"]
    batch = client.batches.retrieve(out.attrs["pdbatch"]["batch_ids"][0])
    assert batch.endpoint == "/v1/responses"
    sent = client.files.content(batch.input_file_id).read()
    path = tmp_path / "in.jsonl"
    frame.llm.to_batch_file(path, "say {t}", model="gpt-4o-mini", endpoint="responses", images="img",
                            image_detail="low")
    assert sorted(sent.splitlines()) == sorted(path.read_bytes().splitlines())
    line = json.loads(path.read_bytes().splitlines()[0])
    assert line["url"] == "/v1/responses" and "messages" not in line["body"]
    assert line["body"]["input"] == [{"role": "user", "content": [
        {"type": "input_text", "text": "say a"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}]}]


def test_responses_reasoning_tokens_count_in_usage_and_cost(make_server, make_client):
    def with_reasoning(text, body):
        out = chat_response(text, model="o4-mini", prompt_tokens=10, completion_tokens=30)
        out["usage"]["completion_tokens_details"]["reasoning_tokens"] = 25
        return out

    srv = make_server(engine=ScriptedEngine(with_reasoning))
    pricing.set_price("o4-mini", input=1.0, output=10.0)
    try:
        out = pd.DataFrame({"t": ["a", "b"]}).llm.map(
            "{t}", model="o4-mini", endpoint="responses", backend=Realtime(make_client(srv)), progress=False)
    finally:
        pricing.reset_prices()
    info = out.attrs["pdbatch"]
    assert info["usage"] == {"input_tokens": 20, "cached_tokens": 0, "output_tokens": 60, "reasoning_tokens": 50,
                             "total_tokens": 80}
    assert info["cost"]["total"] == pytest.approx((20 * 1.0 + 60 * 10.0) / 1e6)  # reasoning is billed as output


def test_responses_estimate_counts_the_prompt_and_the_output_cap():
    frame = pd.DataFrame({"t": ["one two three four", "five six"]})
    chat = frame.llm.estimate("{t}", model="gpt-4o-mini", system="Be brief.", max_completion_tokens=7, show=False)
    resp = frame.llm.estimate("{t}", model="gpt-4o-mini", system="Be brief.", endpoint="responses",
                              max_output_tokens=7, show=False)
    assert resp["input_tokens"] == chat["input_tokens"] and resp["output_tokens"] == chat["output_tokens"] == 14


@pytest.mark.parametrize("kwargs, words", [
    (dict(endpoint="completions"), ["endpoint must be 'chat'", "'responses'"]),
    (dict(endpoint="responses", max_completion_tokens=5), ["max_completion_tokens=", "max_output_tokens="]),
    (dict(endpoint="responses", reasoning_effort="low"), ["reasoning={'effort'"]),
    (dict(endpoint="responses", extra_body={"instructions": "x"}), ["extra_body may not set 'instructions'"]),
])
def test_responses_mistakes_fail_before_anything_is_sent(make_server, make_client, kwargs, words):
    srv = make_server()
    with pytest.raises(OptionError) as info:
        pd.DataFrame({"t": ["a"]}).llm.map("{t}", model="m", client=make_client(srv), progress=False, **kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)
    assert srv.stats.log == [] and len(pdbatch.jobs()) == 0


def test_responses_answers_are_read_by_the_one_rule():
    from pdbatch.core.answers import Answers
    from pdbatch.core.records import Result

    body = {"object": "response", "status": "completed", "output": [
        {"type": "reasoning", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "Hel"}, {"type": "output_text", "text": "lo"}]}],
        "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 9,
                  "output_tokens_details": {"reasoning_tokens": 7}}}
    failed = {"object": "response", "status": "failed", "output": []}
    a = Answers.from_results([Result("1", body, status_code=200), Result("2", failed, status_code=200)])
    assert a.content == ["Hello", None] and a.ok == [True, False] and a.finish_reason == ["stop", "failed"]
    assert a.usage == Usage(5, 9, cached_tokens=2, reasoning_tokens=7)


def test_the_local_backend_refuses_the_responses_endpoint():
    with pytest.raises(OptionError, match="endpoint='responses' runs on backend='batch' or 'realtime', not 'local'"):
        pd.DataFrame({"t": ["a"]}).llm.map("{t}", endpoint="responses", backend="local", progress=False)
    assert len(pdbatch.jobs()) == 0


def test_read_results_joins_downloaded_responses_files(make_server, make_client, tmp_path):
    """Output files of a /v1/responses batch join back without being told the endpoint."""
    srv = make_server(engine=ScriptedEngine(reply))
    client = make_client(srv)
    job = CITIES.llm.submit("in {city}", model="gpt-4o-mini", endpoint="responses", response_format=SCHEMA,
                            max_output_tokens=4, client=client, poll_interval=0.02)
    job.wait(progress=False, timeout=30)
    batch = client.batches.retrieve(job.batch_ids[0])
    paths = []
    for name, fid in (("out", batch.output_file_id), ("err", batch.error_file_id)):
        if fid:
            paths.append(tmp_path / f"{name}.jsonl")
            paths[-1].write_bytes(client.files.content(fid).read())
    out = CITIES.llm.read_results(paths, "in {city}", response_format=SCHEMA)
    assert out.loc[["fr", "pe", "jp"], "country"].tolist() == ["PARIS", "LIMA", "TOKYO"]
    assert out.loc["cut", "llm_error"].startswith("truncated") and out.loc["no", "llm_error"].startswith("refused")


def test_the_server_answers_the_sdk_responses_create(make_server, make_client):
    """The project's server speaks the Responses shape the SDK parses (output_text, status, usage)."""
    srv = make_server()
    client = make_client(srv)
    r = client.responses.create(model="gpt-4o-mini", instructions="Be brief.", input="hello there",
                                max_output_tokens=1)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "hello" and r.usage.output_tokens == 1 and r.usage.input_tokens > 0
    r = client.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "hi"}]}], text={"format": {"type": "json_object"}})
    assert r.status == "completed" and json.loads(r.output_text) == {"echo": "hi"}
    with pytest.raises(openai.BadRequestError, match="image"):
        client.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "ftp://example.com/a.png"}]}])


def test_responses_bodies_say_store_false_unless_store_is_given(make_server, make_client):
    """The Responses API keeps every response unless told not to: pdbatch's bodies say ``store: false``."""
    frame = pd.DataFrame({"t": ["a", "b"]})
    lines = frame.llm.preview("say {t}", model="gpt-4o-mini", endpoint="responses", show=False)
    assert [line["body"]["store"] for line in lines] == [False, False]
    kept = frame.llm.preview("say {t}", model="gpt-4o-mini", endpoint="responses", store=True, show=False)
    assert [line["body"]["store"] for line in kept] == [True, True]  # the user's choice wins
    assert "store" not in frame.llm.preview("say {t}", model="gpt-4o-mini", show=False)[0]["body"]  # chat: off already
    # through the server: the uploaded batch file carries it, and the server's checks accept it
    srv = make_server()
    client = make_client(srv)
    out = frame.llm.map("say {t}", model="gpt-4o-mini", endpoint="responses", client=client, poll_interval=0.02,
                        progress=False, timeout=30)
    assert out["llm_error"].isna().all()
    sent = client.files.content(client.batches.retrieve(out.attrs["pdbatch"]["batch_ids"][0]).input_file_id).read()
    assert [json.loads(line)["body"]["store"] for line in sent.splitlines()] == [False, False]
    live = frame.llm.map("say {t}", model="gpt-4o-mini", endpoint="responses", backend="realtime", client=client,
                         progress=False, timeout=30, cache=False)
    assert live["llm_error"].isna().all() and srv.stats.calls("POST", "/v1/responses") == 2
    # the server does check the field: a store that is not a boolean is refused, naming it
    bad = frame.head(1).llm.map("say {t}", model="gpt-4o-mini", endpoint="responses", backend="realtime",
                                client=client, progress=False, timeout=30, cache=False, store="no")
    assert "store" in bad["llm_error"].iloc[0]
