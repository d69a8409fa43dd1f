"""Request bodies the hosted API refuses are refused by the local server too, through the real SDK.

A table of bad bodies per endpoint: each one is an HTTP 400 ``invalid_request_error``
with the API's ``param`` when sent realtime (``openai.BadRequestError``), and that
line's error-file entry (``status_code`` 400) in a batch whose good lines are
answered; no refused body reaches the engine. Also: streamed realtime chat, and the
upload purposes.
"""

from __future__ import annotations

import io
import json
import typing
import urllib.error
import urllib.request

import openai
import pytest
from openai.types import FilePurpose

from pdbatch.server import BatchServer
from pdbatch.server.engines import ScriptedEngine, echo_engine

pytestmark = pytest.mark.timeout(30)

CHAT, EMB, RESP = "/v1/chat/completions", "/v1/embeddings", "/v1/responses"
HI = [{"role": "user", "content": "hi"}]
JS = {"type": "json_schema", "json_schema": {"name": "row", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["a", "b"], "properties": {
        "a": {"type": "array", "items": {"$ref": "#/$defs/item"}}, "b": {"anyOf": [{"type": "null"}, {
            "type": "object", "properties": {}, "additionalProperties": False}]}},
    "$defs": {"item": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
                       "additionalProperties": False}}}}}
GOOD = {CHAT: {"model": "m", "messages": HI}, EMB: {"model": "m", "input": "hi"},
        RESP: {"model": "m", "input": "hi"}}
BATCH_AND_REALTIME, REALTIME, BATCH = "both", "realtime", "batch"

# (endpoint, body fields over the endpoint's good body (None removes a field), param, code, where)
BAD = [
    (CHAT, {"messages": None}, "messages", "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"model": None}, "model", "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"model": ["m"]}, "model", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"model": ""}, "model", "invalid_value", BATCH_AND_REALTIME),
    (CHAT, {"messages": "hi"}, "messages", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"messages": []}, "messages", "empty_array", BATCH_AND_REALTIME),
    (CHAT, {"messages": ["hi"]}, "messages[0]", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"content": "hi"}]}, "messages[0].role", "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "invalid_value",
     BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"messages": HI + [{"role": "user", "content": 5}]}, "messages[1].content", "invalid_type",
     BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}, "messages[0].content[0].type",
     "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a/b"}}]}]},
     "messages[0].content[0].type", "invalid_value", BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://a/b"}}]}]},
     "messages[0].content[0].image_url.url", "invalid_image_url", BATCH_AND_REALTIME),
    (CHAT, {"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id",
     "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"temperature": "hot"}, "temperature", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"temperature": 3}, "temperature", "decimal_above_max_value", BATCH_AND_REALTIME),
    (CHAT, {"temperature": -0.5}, "temperature", "decimal_below_min_value", BATCH_AND_REALTIME),
    (CHAT, {"top_p": 1.5}, "top_p", "decimal_above_max_value", BATCH_AND_REALTIME),
    (CHAT, {"frequency_penalty": -3}, "frequency_penalty", "decimal_below_min_value", BATCH_AND_REALTIME),
    (CHAT, {"max_tokens": 0}, "max_tokens", "integer_below_min_value", BATCH_AND_REALTIME),
    (CHAT, {"max_tokens": 1.5}, "max_tokens", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"max_completion_tokens": "10"}, "max_completion_tokens", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"max_completion_tokens": True}, "max_completion_tokens", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"n": 0}, "n", "integer_below_min_value", BATCH_AND_REALTIME),
    (CHAT, {"n": "2"}, "n", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"seed": "1"}, "seed", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"logprobs": "yes"}, "logprobs", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length", BATCH_AND_REALTIME),
    (CHAT, {"metadata": {"k": 1}}, "metadata.k", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"tools": "search"}, "tools", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"tool_choice": "maybe"}, "tool_choice", "invalid_value", BATCH_AND_REALTIME),
    (CHAT, {"response_format": "json"}, "response_format", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {}}, "response_format.type", "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {"type": "xml"}}, "response_format.type", "invalid_value", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {"type": "json_schema"}}, "response_format.json_schema",
     "missing_required_parameter", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "a row", "schema": {}}}},
     "response_format.json_schema.name", "invalid_value", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "row", "schema": "{}"}}},
     "response_format.json_schema.schema", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "row", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}}},
     "response_format", "invalid_json_schema", BATCH_AND_REALTIME),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "row", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                                               "additionalProperties": False}},
        "required": ["a"], "additionalProperties": False}}}},
     "response_format", "invalid_json_schema", BATCH_AND_REALTIME),
    (CHAT, {"stream": "yes"}, "stream", "invalid_type", BATCH_AND_REALTIME),
    (CHAT, {"stream": True}, "stream", "unsupported_value", BATCH),  # batch lines never stream
    (CHAT, {"stream_options": {"include_usage": True}}, "stream_options", "invalid_value", BATCH_AND_REALTIME),
    (CHAT, {"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage",
     "invalid_type", REALTIME),
    (EMB, {"input": None}, "input", "missing_required_parameter", BATCH_AND_REALTIME),
    (EMB, {"model": 5}, "model", "invalid_type", BATCH_AND_REALTIME),
    (EMB, {"input": 5}, "input", "invalid_type", BATCH_AND_REALTIME),
    (EMB, {"input": []}, "input", "empty_array", BATCH_AND_REALTIME),
    (EMB, {"input": ""}, "input", "invalid_value", BATCH_AND_REALTIME),
    (EMB, {"input": ["a", 3]}, "input[1]", "invalid_type", BATCH_AND_REALTIME),
    (EMB, {"input": ["a", ""]}, "input[1]", "invalid_value", BATCH_AND_REALTIME),
    (EMB, {"input": ["a"] * 2049}, "input", "array_above_max_length", BATCH_AND_REALTIME),
    (EMB, {"encoding_format": "int8"}, "encoding_format", "invalid_value", BATCH_AND_REALTIME),
    (EMB, {"dimensions": 0}, "dimensions", "integer_below_min_value", BATCH_AND_REALTIME),
    (RESP, {"input": None}, "input", "missing_required_parameter", BATCH_AND_REALTIME),
    (RESP, {"model": None}, "model", "missing_required_parameter", BATCH_AND_REALTIME),
    (RESP, {"input": 5}, "input", "invalid_type", BATCH_AND_REALTIME),
    (RESP, {"input": []}, "input", "empty_array", BATCH_AND_REALTIME),
    (RESP, {"input": [{"content": "hi"}]}, "input[0].role", "missing_required_parameter", BATCH_AND_REALTIME),
    (RESP, {"input": [{"role": "bot", "content": "hi"}]}, "input[0].role", "invalid_value", BATCH_AND_REALTIME),
    (RESP, {"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter", BATCH_AND_REALTIME),
    (RESP, {"input": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "input[0].content[0].type",
     "invalid_value", BATCH_AND_REALTIME),
    (RESP, {"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text",
     "missing_required_parameter", BATCH_AND_REALTIME),
    (RESP, {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://a/b"}]}]},
     "input[0].content[0].image_url", "invalid_image_url", BATCH_AND_REALTIME),
    (RESP, {"instructions": 5}, "instructions", "invalid_type", BATCH_AND_REALTIME),
    (RESP, {"temperature": "hot"}, "temperature", "invalid_type", BATCH_AND_REALTIME),
    (RESP, {"max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value", BATCH_AND_REALTIME),
    (RESP, {"text": "json"}, "text", "invalid_type", BATCH_AND_REALTIME),
    (RESP, {"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
     "missing_required_parameter", BATCH_AND_REALTIME),
    (RESP, {"text": {"format": {"type": "json_schema", "name": "row", "strict": True, "schema": {"type": "array"}}}},
     "text.format.schema", "invalid_json_schema", BATCH_AND_REALTIME),
    (RESP, {"truncation": "sometimes"}, "truncation", "invalid_value", BATCH_AND_REALTIME),
    (RESP, {"stream": True}, "stream", "unsupported_value", BATCH),
]


def raw_post(url: str, data: bytes, content_type: str) -> tuple[int, dict, bytes]:
    """POST ``data`` with the standard library (no SDK): status, headers and body."""
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Authorization": "Bearer k", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def bad_body(url: str, fields: dict) -> dict:
    body = dict(GOOD[url], **fields)
    return {k: v for k, v in body.items() if v is not None}


def case_id(case) -> str:
    return f"{case[0].rsplit('/', 1)[-1]}:{case[2]}:{case[3]}"


@pytest.fixture(scope="module")
def shared_counted():
    """One server for the module whose engine records every body it is asked to answer."""
    seen: list = []

    def engine(body, url):
        seen.append((url, body))
        return echo_engine(body, url)

    srv = BatchServer(engine=engine).start(timeout=5.0)
    yield srv, seen
    srv.stop(timeout=3.0)


@pytest.fixture
def counted(shared_counted):
    """The shared counting server, its record of engine calls emptied for this test."""
    shared_counted[1].clear()
    return shared_counted


@pytest.mark.parametrize("case", [c for c in BAD if c[4] != BATCH], ids=case_id)
def test_a_bad_realtime_body_is_a_400_naming_its_param(counted, make_client, case):
    url, fields, param, code, _ = case
    srv, seen = counted
    client = make_client(srv)
    with pytest.raises(openai.BadRequestError) as err:
        client.post(url.removeprefix("/v1"), body=bad_body(url, fields), cast_to=object)
    assert err.value.status_code == 400
    assert err.value.param == param and err.value.code == code and err.value.type == "invalid_request_error"
    named = "response_format '" if code == "invalid_json_schema" else f"'{param}'"  # the API's wording
    assert named in err.value.message
    assert seen == []  # never reached the engine
    client.post(url.removeprefix("/v1"), body=GOOD[url], cast_to=object)  # the good body still answers
    assert len(seen) == 1


@pytest.mark.parametrize("url", [CHAT, EMB, RESP])
def test_bad_batch_lines_are_400s_in_the_error_file_and_the_batch_completes(counted, make_client, wait_batch, url):
    srv, seen = counted
    client = make_client(srv)
    cases = [c for c in BAD if c[0] == url and c[4] != REALTIME]
    rows = [{"custom_id": f"good-{i}", "method": "POST", "url": url, "body": GOOD[url]} for i in range(2)]
    rows[1:1] = [{"custom_id": f"bad-{i}", "method": "POST", "url": url, "body": bad_body(url, c[1])}
                 for i, c in enumerate(cases)]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")
    b = wait_batch(client, b.id, timeout=10)
    assert b.status == "completed"
    assert (b.request_counts.completed, b.request_counts.failed) == (2, len(cases))
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["good-0", "good-1"]
    assert all(o["response"]["status_code"] == 200 for o in out)
    errors = {e["custom_id"]: e for e in map(json.loads, client.files.content(b.error_file_id).text.splitlines())}
    assert len(errors) == len(cases)
    for i, (_, fields, param, code, _) in enumerate(cases):
        entry = errors[f"bad-{i}"]
        assert entry["error"] is None and entry["response"]["status_code"] == 400, (fields, entry)
        error = entry["response"]["body"]["error"]
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), fields
        named = "response_format '" if code == "invalid_json_schema" else f"'{param}'"
        assert named in error["message"], (fields, error)
    assert len(seen) == 2  # only the good lines reached the engine
    assert b.model == "m" and b.errors is None


def test_a_batch_whose_lines_all_lack_a_model_completes_with_each_line_refused(counted, make_client, wait_batch):
    srv, seen = counted
    client = make_client(srv)
    rows = [{"custom_id": "none", "method": "POST", "url": CHAT, "body": {"messages": HI}},
            {"custom_id": "int", "method": "POST", "url": CHAT, "body": {"model": 7, "messages": HI}}]
    f = client.files.create(file=("in.jsonl", io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in rows))),
                            purpose="batch")
    b = wait_batch(client, client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert (b.status, b.output_file_id, b.model, b.errors) == ("completed", None, None, None)
    assert (b.request_counts.completed, b.request_counts.failed) == (0, 2)
    errors = {e["custom_id"]: e["response"]["body"]["error"]
              for e in map(json.loads, client.files.content(b.error_file_id).text.splitlines())}
    assert errors["none"]["message"] == "Missing required parameter: 'model'."
    assert errors["int"]["code"] == "invalid_type" and "'model'" in errors["int"]["message"]
    assert {e["param"] for e in errors.values()} == {"model"} and seen == []


@pytest.mark.parametrize("rows, code, param", [
    ([{"model": "a"}, {"model": "b"}], "model_mismatch", "body.model"),  # still the whole file
    ([{"model": "a"}, {}, {"model": "b"}], "model_mismatch", "body.model"),  # a line without one is not a model
    ([{"model": "a"}, None], "missing_required_parameter", "body"),  # no body object: the line's shape
])
def test_what_fails_the_whole_file_still_does(counted, make_client, wait_batch, rows, code, param):
    srv, seen = counted
    client = make_client(srv)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": CHAT,
              **({} if body is None else {"body": {**body, "messages": HI}})} for i, body in enumerate(rows)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(b"".join(json.dumps(x).encode() + b"\n" for x in lines))),
                            purpose="batch")
    b = wait_batch(client, client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id)
    assert b.status == "failed" and b.output_file_id is None and b.error_file_id is None
    assert [(e.code, e.param, e.line) for e in b.errors.data] == [(code, param, len(rows))]
    assert seen == []


def test_good_bodies_with_every_checked_field_pass(counted, make_client):
    srv, seen = counted
    client = make_client(srv)
    client.chat.completions.create(
        model="m", messages=[{"role": "developer", "content": "be brief"},
                             {"role": "user", "content": [{"type": "text", "text": "look"}, {
                                 "type": "image_url", "image_url": {"url": "https://a/b.png", "detail": "low"}}]},
                             {"role": "assistant", "content": None,
                              "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
                             {"role": "tool", "tool_call_id": "c", "content": "42"}],
        temperature=0, top_p=1, max_completion_tokens=5, n=1, seed=3, stop=["x"], logprobs=False,
        metadata={"k": "v"}, response_format=JS, store=False, user="u", presence_penalty=2)
    client.embeddings.create(model="m", input=[[1, 2, 3], [4]], encoding_format="base64", dimensions=8)
    client.responses.create(model="m", instructions="be brief", max_output_tokens=5, temperature=1.5,
                            text={"format": {"type": "json_schema", "name": "row", "schema": {"type": "object"}}},
                            input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}, {
                                "type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    assert [u for u, _ in seen] == [CHAT, EMB, CHAT]


# --------------------------------------------------------------------------- streaming

def test_streamed_chat_matches_the_plain_answer(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: f"you said: {text}  twice")
    srv = make_server(engine=engine)
    client = make_client(srv)
    plain = client.chat.completions.create(model="m", messages=HI)
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True))
    assert 3 <= len(chunks) <= 50
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "stop"]
    assert all(c.usage is None for c in chunks)
    assert all("stream" not in b and "stream_options" not in b for b in engine.bodies)


def test_streamed_chat_ends_with_a_usage_chunk_when_asked(make_server, make_client):
    srv = make_server(engine=ScriptedEngine(lambda text, body: {"content": "one two three", "finish_reason": "length"}))
    client = make_client(srv)
    plain = client.chat.completions.create(model="m", messages=HI)
    with client.chat.completions.create(model="m", messages=HI, stream=True,
                                        stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "one two three"


def test_streamed_refusal_and_raw_event_framing(make_server, make_client):
    srv = make_server(engine=ScriptedEngine(lambda text, body: {"refusal": "I cannot help."}))
    client = make_client(srv)
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == "I cannot help."
    status, headers, raw = raw_post(f"{srv.base_url}/chat/completions", json.dumps(
        {"model": "m", "messages": HI, "stream": True}).encode(), "application/json")
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-request-id"].startswith("req_")
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: {") for e in events[:-2])


def test_a_bad_streamed_request_raises_before_any_chunk(counted, make_client):
    srv, seen = counted
    client = make_client(srv)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "robot", "content": "hi"}], stream=True)
    assert err.value.param == "messages[0].role" and seen == []


# --------------------------------------------------------------------------- upload purposes

@pytest.mark.parametrize("purpose", typing.get_args(FilePurpose))
def test_every_sdk_file_purpose_uploads(client, purpose):
    f = client.files.create(file=("a.jsonl", b"{}\n"), purpose=purpose)
    assert f.purpose == purpose and client.files.retrieve(f.id).purpose == purpose


@pytest.mark.parametrize("purpose", ["batch_output", "nope", ""])
def test_a_bad_purpose_is_a_400_naming_purpose_and_stores_nothing(client, purpose):
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose=purpose)
    assert err.value.param == "purpose" and err.value.code == "invalid_value"
    assert "'evals'" in err.value.message and repr(purpose) in err.value.message
    assert client.files.list().data == []


def test_an_upload_without_purpose_is_a_400(server, client):
    form = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n{}\n\r\n--XyZ--\r\n")
    status, _, raw = raw_post(f"{server.base_url}/files", form, "multipart/form-data; boundary=XyZ")
    error = json.loads(raw)["error"]
    assert status == 400 and (error["param"], error["code"]) == ("purpose", "missing_required_parameter")
    assert client.files.list().data == []
