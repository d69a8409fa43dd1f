"""The local Batch API server, exercised only through the real ``openai`` SDK over HTTP."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Optional

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from pdbatch.server.engines import (EngineError, ScriptedEngine, chat_response, echo_engine,
                             example_from_schema)
from pdbatch.errors import ServerError
from pdbatch.server import BatchServer, Faults

pytestmark = pytest.mark.timeout(20)

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


# --------------------------------------------------------------------------- helpers

def line(cid, text="hello", *, model="m", url=CHAT, method="POST", **body):
    return {"custom_id": cid, "method": method, "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}


def jsonl(rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def upload(client, rows, name="input.jsonl", purpose="batch"):
    return client.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose=purpose)


def submit(client, rows, endpoint=CHAT, **kw):
    f = upload(client, rows)
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h",
                                 **kw)


def until(predicate, timeout=5.0, interval=0.01):
    """Poll ``predicate`` until true; bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def read_jsonl(client, file_id):
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x]


# --------------------------------------------------------------------------- files

def test_files_upload_retrieve_content_list_delete(server, client):
    data = jsonl([line("a"), line("b")])
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert (f.object, f.purpose, f.bytes, f.filename) == ("file", "batch", len(data), "in.jsonl")
    assert f.id.startswith("file-") and f.status in ("uploaded", "processed")
    assert client.files.retrieve(f.id) == f
    assert client.files.content(f.id).content == data
    g = client.files.create(file=("b.jsonl", b"{}\n"), purpose="user_data")
    listed = client.files.list()
    assert [x.id for x in listed.data] == [g.id, f.id]  # newest first
    assert [x.id for x in client.files.list(purpose="batch").data] == [f.id]
    deleted = client.files.delete(f.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (f.id, True, "file")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    assert server.stats.uploads == 2 and set(server.files) == {g.id}


def test_unknown_ids_give_openai_shaped_404(client):
    for call in (lambda: client.files.retrieve("file-nope"),
                 lambda: client.files.content("file-nope"),
                 lambda: client.files.delete("file-nope"),
                 lambda: client.batches.retrieve("batch_nope"),
                 lambda: client.batches.cancel("batch_nope")):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.status_code == 404
        assert set(err.value.body) == {"message", "type", "param", "code"}
        assert "nope" in err.value.body["message"]


def test_upload_rejects_bad_purpose(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch_output")
    assert err.value.body["param"] == "purpose"


def test_upload_is_streamed_to_disk_and_round_trips(server, client):
    rows = [line(str(i), "word " * 50) for i in range(3000)]  # ~0.6 MB, several chunks
    f = upload(client, rows)
    assert client.files.content(f.id).content == jsonl(rows)
    assert (server.data_dir / f.id).stat().st_size == f.bytes


# --------------------------------------------------------------------------- batches

def test_create_retrieve_list_paginate(server, client, wait_batch):
    made = [submit(client, [line("a")], metadata={"n": str(i)}) for i in range(3)]
    b = made[0]
    assert (b.object, b.endpoint, b.completion_window, b.status) == \
        ("batch", CHAT, "24h", "validating")
    assert b.expires_at == b.created_at + 24 * 3600 and b.metadata == {"n": "0"}
    assert client.batches.retrieve(b.id).id == b.id
    page = client.batches.list(limit=1)
    assert [x.id for x in page.data] == [made[2].id] and page.has_more is True
    assert page.first_id == page.last_id == made[2].id  # extra fields of the list object
    page2 = client.batches.list(limit=1, after=page.data[0].id)
    assert [x.id for x in page2.data] == [made[1].id]
    assert [x.id for x in client.batches.list(limit=2, after=made[1].id).data] == [made[0].id]
    assert [x.id for x in client.batches.list(limit=1)] == [m.id for m in reversed(made)]  # auto
    last = client.batches.list(limit=100)
    assert len(last.data) == 3 and last.has_more is False
    assert client.batches.list(after="batch_unknown").data == []
    for bad in (0, 101):
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=bad)
    for m in made:
        assert wait_batch(client, m.id).status == "completed"
    assert server.stats.batches_created == 3


@pytest.mark.parametrize("kwargs, param", [
    ({"endpoint": "/v1/images/generations"}, "endpoint"),
    ({"completion_window": "1h"}, "completion_window"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"input_file_id": "file-missing"}, "input_file_id"),
])
def test_create_batch_rejects_bad_arguments(server, client, kwargs, param):
    f = upload(client, [line("a")])
    args = {"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h", **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(**args)
    assert err.value.status_code == 400 and err.value.body["param"] == param
    assert server.stats.batches_created == 0 and not server.batches


def test_create_batch_rejects_non_batch_purpose(client):
    f = client.files.create(file=("x.jsonl", jsonl([line("a")])), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")


def test_full_lifecycle_output_and_error_files(make_client, make_server, wait_batch):
    faults = Faults(error_for=lambda cid, body: (400, "context_length_exceeded", "too long")
                    if cid == "c3" else None)
    srv = make_server(faults=faults)
    client = make_client(srv)
    rows = [line(f"c{i}", f"text number {i}") for i in range(8)]
    b = wait_batch(client, submit(client, rows).id)
    assert b.status == "completed" and b.errors is None and b.model == "m"
    assert b.request_counts.model_dump() == {"total": 8, "completed": 7, "failed": 1}
    assert b.in_progress_at and b.finalizing_at and b.completed_at
    out, err = read_jsonl(client, b.output_file_id), read_jsonl(client, b.error_file_id)
    assert client.files.retrieve(b.output_file_id).purpose == "batch_output"
    assert client.files.retrieve(b.error_file_id).purpose == "batch_output"
    ids = [x["custom_id"] for x in out]
    assert sorted(ids) == sorted(f"c{i}" for i in range(8) if i != 3)
    assert ids != sorted(ids)  # order differs from input order
    for x in out:
        assert set(x) == {"id", "custom_id", "response", "error"} and x["error"] is None
        assert x["id"].startswith("batch_req_") and x["response"]["status_code"] == 200
        assert x["response"]["request_id"]
        i = x["custom_id"][1:]
        assert x["response"]["body"]["choices"][0]["message"]["content"] == f"text number {i}"
    [e] = err
    assert e["custom_id"] == "c3" and e["error"] is None
    assert e["response"]["status_code"] == 400
    assert e["response"]["body"]["error"] == {"message": "too long", "type": "invalid_request_error",
                                              "param": None, "code": "context_length_exceeded"}
    usage = [x["response"]["body"]["usage"] for x in out]
    assert b.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
    assert b.usage.output_tokens == sum(u["completion_tokens"] for u in usage)
    assert b.usage.total_tokens == b.usage.input_tokens + b.usage.output_tokens
    assert srv.stats.requests_executed == 7


def test_busy_seconds_counts_calls_and_batch_work_once(make_server, make_client, wait_batch):
    def reply(text, body):
        time.sleep(0.02)  # engine work: busy
        return text

    srv = make_server(engine=ScriptedEngine(reply), faults=Faults(request_delay=0.1))
    client = make_client(srv)
    time.sleep(0.05)
    assert srv.stats.busy_seconds == 0.0  # started but idle: nothing counted
    t0 = time.perf_counter()
    b = wait_batch(client, submit(client, [line(f"c{i}") for i in range(5)]).id, interval=0.05)
    wall = time.perf_counter() - t0
    assert b.status == "completed"

    def settled():  # no call or batch still open
        before = srv.stats.busy_seconds
        time.sleep(0.02)
        return srv.stats.busy_seconds == before

    until(settled, timeout=2.0)
    busy = srv.stats.busy_seconds
    assert busy >= 5 * 0.02  # the engine calls
    assert busy <= wall - 0.25  # overlaps counted once; the 0.5 s of injected sleep is idle
    read_jsonl(client, b.output_file_id)  # a download is busy time too
    until(settled, timeout=2.0)
    assert srv.stats.busy_seconds > busy


def test_all_failed_batch_has_no_output_file(make_server, make_client, wait_batch):
    def reply(text, body):
        if text == "boom":
            raise RuntimeError("engine crashed")
        raise EngineError(429, "rate_limit_exceeded", "slow down", type="requests")

    srv = make_server(engine=ScriptedEngine(reply))
    client = make_client(srv)
    b = wait_batch(client, submit(client, [line("a", "boom"), line("b")]).id)
    assert b.status == "completed" and b.output_file_id is None and b.error_file_id
    errs = {x["custom_id"]: x["response"] for x in read_jsonl(client, b.error_file_id)}
    assert errs["a"]["status_code"] == 500 and errs["a"]["body"]["error"]["code"] == "server_error"
    assert errs["b"]["status_code"] == 429 and errs["b"]["body"]["error"]["type"] == "requests"
    assert b.request_counts.failed == 2 and b.usage.total_tokens == 0


def test_embeddings_batch(client, wait_batch):
    rows = [{"custom_id": str(i), "method": "POST", "url": EMB,
             "body": {"model": "e", "input": f"text {i}", "dimensions": 4}} for i in range(3)]
    b = wait_batch(client, submit(client, rows, endpoint=EMB).id)
    assert b.status == "completed" and b.request_counts.completed == 3
    for x in read_jsonl(client, b.output_file_id):
        vec = x["response"]["body"]["data"][0]["embedding"]
        assert len(vec) == 4 and abs(sum(v * v for v in vec) - 1) < 1e-9


@pytest.mark.parametrize("rows, code, line_no", [
    ([line("a"), line("a")], "duplicate_custom_id", 2),
    ([line("a"), line("b", url=EMB)], "url_mismatch", 2),
    ([line("a"), line("b", model="other")], "model_mismatch", 2),
    ([line("a"), b"{not json", line("b")], "invalid_json_line", 2),
    ([line("a"), line("b", method="GET")], "invalid_method", 2),
    ([line(str(i)) for i in range(4)], "too_many_tasks", 4),
    ([], "empty_file", None),
])
def test_validation_failures(make_server, make_client, wait_batch, rows, code, line_no):
    srv = make_server(faults=Faults(max_lines=3))
    client = make_client(srv)
    b = wait_batch(client, submit(client, rows).id)
    assert b.status == "failed" and b.failed_at and b.output_file_id is None
    assert b.error_file_id is None and b.errors.object == "list"
    assert b.errors.data[0].code == code and b.errors.data[0].line == line_no
    assert b.errors.data[0].message and srv.stats.requests_executed == 0


def test_validation_failure_too_many_bytes(make_server, make_client, wait_batch):
    srv = make_server(faults=Faults(max_bytes=100))
    client = make_client(srv)
    b = wait_batch(client, submit(client, [line("a", "x" * 200)]).id)
    assert b.status == "failed" and b.errors.data[0].code == "file_too_large"


def test_expire_after_gives_partial_output_and_batch_expired_lines(make_server, make_client,
                                                                    wait_batch):
    srv = make_server(faults=Faults(expire_after=2))
    client = make_client(srv)
    b = wait_batch(client, submit(client, [line(f"r{i}") for i in range(5)]).id)
    assert b.status == "expired" and b.expired_at and b.completed_at is None
    out, err = read_jsonl(client, b.output_file_id), read_jsonl(client, b.error_file_id)
    assert len(out) == 2 and len(err) == 3
    assert {x["custom_id"] for x in out + err} == {f"r{i}" for i in range(5)}
    for e in err:
        assert e["response"] is None and e["error"]["code"] == "batch_expired"
        assert e["error"]["message"]
    assert b.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    assert srv.stats.requests_executed == 2


def test_slow_batch_is_seen_in_progress_with_partial_counts(make_server, make_client, wait_batch):
    srv = make_server(faults=Faults(request_delay=0.03, validating_delay=0.1))
    client = make_client(srv)
    b = submit(client, [line(str(i)) for i in range(8)])
    assert b.status == "validating" and b.request_counts.total == 0
    seen = []
    deadline = time.monotonic() + 5
    for _ in range(500):
        cur = client.batches.retrieve(b.id)
        seen.append((cur.status, cur.request_counts.completed, cur.request_counts.total))
        if cur.status == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert seen[-1] == ("completed", 8, 8) and seen[0][0] == "validating"
    partial = [s for s in seen if s[0] == "in_progress" and 0 < s[1] < s[2] == 8]
    assert partial, seen


def test_cancel_keeps_finished_answers(make_server, make_client, wait_batch):
    srv = make_server(faults=Faults(request_delay=0.05))
    client = make_client(srv)
    b = submit(client, [line(str(i)) for i in range(20)])
    until(lambda: client.batches.retrieve(b.id).request_counts.completed >= 2)
    c = client.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at
    b = wait_batch(client, b.id)
    assert b.status == "cancelled" and b.cancelled_at
    out = read_jsonl(client, b.output_file_id)
    assert 2 <= len(out) < 20 == b.request_counts.total
    assert len(out) == b.request_counts.completed
    assert b.error_file_id is None  # lines never run are not reported
    assert client.batches.cancel(b.id).status == "cancelled"  # idempotent


def test_cancel_while_validating_and_after_completion(make_server, make_client, wait_batch):
    srv = make_server(faults=Faults(validating_delay=0.2))
    client = make_client(srv)
    b = submit(client, [line("a")])
    assert client.batches.cancel(b.id).status == "cancelling"
    b = wait_batch(client, b.id)
    assert b.status == "cancelled" and b.output_file_id is None and srv.stats.requests_executed == 0
    srv.faults.validating_delay = 0
    done = wait_batch(client, submit(client, [line("a")]).id)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(done.id)


def test_an_accepted_cancel_always_ends_cancelled(make_server, make_client, wait_batch):
    """Cancels racing the end of small batches: a 200 ends "cancelled", a refused one (400) "completed"."""
    srv = make_server(faults=Faults(request_delay=0.002))
    client = make_client(srv)
    outcomes = []
    for k in range(30):  # bounded: 30 batches, each waited on for at most 5 s
        b = submit(client, [line(f"{k}-{i}") for i in range(3)])
        time.sleep(0.002 * (k % 6))
        try:
            accepted = client.batches.cancel(b.id).status == "cancelling"
        except openai.BadRequestError as err:
            assert "invalid_state" in str(err) or "Cannot cancel" in str(err)
            accepted = False
        done = wait_batch(client, b.id)
        outcomes.append((accepted, done.status))
        if accepted:
            assert done.status == "cancelled" and done.cancelled_at and done.completed_at is None, done
        else:
            assert done.status == "completed" and done.cancelled_at is None, done
    assert any(a for a, _ in outcomes)  # the race was exercised on the accepting side at least


def test_batches_run_in_creation_order(make_server, make_client, wait_batch):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(request_delay=0.01))
    client = make_client(srv)
    first = submit(client, [line(str(i), "first") for i in range(5)])
    second = submit(client, [line("x", "second")])
    assert wait_batch(client, second.id).status == "completed"
    assert srv.batches[first.id]["status"] == "completed"
    texts = [b["messages"][0]["content"] for b in engine.bodies]
    assert texts == ["first"] * 5 + ["second"]


# --------------------------------------------------------------------------- http faults

def test_injected_http_errors_then_success(make_server, make_client):
    faults = Faults(http_errors={"POST /v1/batches": [429], "GET /v1/batches/*": [500, 503],
                                 "POST /v1/files": [500]})
    srv = make_server(faults=faults)
    client = make_client(srv)
    with pytest.raises(openai.InternalServerError):
        upload(client, [line("a")])
    f = upload(client, [line("a")])
    with pytest.raises(openai.RateLimitError) as err:
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["retry-after-ms"] == "50"
    assert "retry-after" in err.value.response.headers
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.InternalServerError):
        client.batches.retrieve(b.id)
    with pytest.raises(openai.InternalServerError) as err:
        client.batches.retrieve(b.id)
    assert err.value.status_code == 503
    assert client.batches.retrieve(b.id).id == b.id
    assert srv.stats.uploads == 1 and srv.stats.batches_created == 1
    assert [s for _, _, s in srv.stats.log] == [500, 200, 429, 200, 500, 503, 200]
    assert faults.http_errors == {"POST /v1/batches": [], "GET /v1/batches/*": [],
                                  "POST /v1/files": []}


def test_sdk_retries_honour_retry_after(make_server, make_client):
    srv = make_server(faults=Faults(http_errors={"GET /v1/files": [429, 429]}))
    client = make_client(srv, max_retries=2)
    t0 = time.monotonic()
    assert client.files.list().data == []
    assert time.monotonic() - t0 < 2  # 2 × 50 ms, not the SDK's default backoff
    assert [s for _, _, s in srv.stats.log] == [429, 429, 200]


def test_api_key_is_never_logged_or_stored(server, client, wait_batch):
    wait_batch(client, submit(client, [line("a")]).id)
    assert "test-key-do-not-store" not in repr(server.stats.log)
    stored = b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())
    assert b"test-key-do-not-store" not in stored


def test_requests_without_bearer_token_get_401(server):
    bad = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0,
                        default_headers={"Authorization": "Basic abc"})
    with pytest.raises(openai.AuthenticationError):
        bad.files.list()
    bad.close()
    assert server.stats.log == [("GET", "/v1/files", 401)]


# --------------------------------------------------------------------------- realtime

def test_realtime_chat_and_embeddings(server, client):
    out = client.chat.completions.create(model="m", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}])
    assert out.choices[0].message.content == "hi there" and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == 2 and out.usage.prompt_tokens > 0
    emb = client.embeddings.create(model="e", input=["a", "b", "a"])  # SDK asks for base64
    vecs = [d.embedding for d in emb.data]
    assert len(vecs) == 3 and len(vecs[0]) == 8 and vecs[0] == vecs[2] != vecs[1]
    flt = client.embeddings.create(model="e", input="a", dimensions=16, encoding_format="float")
    assert len(flt.data[0].embedding) == 16
    assert abs(flt.data[0].embedding[0] - client.embeddings.create(
        model="e", input="a", dimensions=16).data[0].embedding[0]) < 1e-6
    assert server.stats.realtime_calls == 4


def test_realtime_echo_features(client):
    vision = client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert vision.choices[0].message.content == "describe [2 images]"
    js = client.chat.completions.create(model="m", response_format={"type": "json_object"},
                                        messages=[{"role": "user", "content": "JSON please"}])
    assert json.loads(js.choices[0].message.content) == {"echo": "JSON please"}
    cut = client.chat.completions.create(model="m", max_completion_tokens=2,
                                         messages=[{"role": "user", "content": "one two three"}])
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "one two"


def test_realtime_errors_latency_and_rate_limit(make_server, make_client):
    def reply(text, body):
        if text == "bad":
            raise EngineError(400, "context_length_exceeded", "too long")
        return {"refusal": "I can't"} if text == "refuse" else text

    faults = Faults(realtime_errors=[429, 500], realtime_latency=0.01)
    srv = make_server(engine=ScriptedEngine(reply), faults=faults)
    client = make_client(srv)
    msgs = [{"role": "user", "content": "ok"}]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=msgs)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=msgs)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "bad"}])
    assert err.value.code == "context_length_exceeded"
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "refuse"}])
    assert r.choices[0].message.refusal == "I can't" and r.choices[0].message.content is None
    faults.realtime_rpm = 2
    raw = client.chat.completions.with_raw_response.create(model="m", messages=msgs)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.parse().choices[0].message.content == "ok"
    client.chat.completions.create(model="m", messages=msgs)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="m", messages=msgs)
    assert float(err.value.response.headers["retry-after-ms"]) > 1000


# --------------------------------------------------------------------------- engines

class Address(BaseModel):
    city: str
    zip_code: Optional[str]


class Person(BaseModel):
    name: str = Field(min_length=3, max_length=40)
    age: int = Field(ge=18, le=99)
    score: float
    active: bool
    sentiment: Literal["positive", "negative", "neutral"]
    tags: list[str] = Field(min_length=2, max_length=3)
    home: Address
    past: list[Address]
    nickname: Optional[str] = None


def test_echo_engine_json_schema_satisfies_pydantic_schema(client):
    parsed = client.chat.completions.parse(model="m", response_format=Person,
                                           messages=[{"role": "user", "content": "Bob"}])
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and person.sentiment == "positive"
    raw = json.loads(parsed.choices[0].message.content)
    jsonschema.validate(raw, Person.model_json_schema())
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "p", "schema": Person.model_json_schema()}}}
    direct = json.loads(echo_engine(body, CHAT)["choices"][0]["message"]["content"])
    jsonschema.validate(direct, Person.model_json_schema())


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer", "enum": [1, 2, 3]}, "minItems": 3,
     "uniqueItems": True},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}], "maxItems": 2},
    {"type": ["null", "string"], "format": "date-time"},
    {"type": "integer", "exclusiveMinimum": 5, "multipleOf": 4},
    {"type": "number", "minimum": 0, "maximum": 1},
    {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}], "$defs": {"Node": {
        "type": "object", "required": ["kids"], "additionalProperties": False,
        "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}},
    {"allOf": [{"type": "object", "properties": {"a": {"const": 7}}, "required": ["a"]}]},
    {"type": "string", "pattern": '^[A-Z][^.!?"\\\n]{20,200}[.!?]$'},  # the movie example's summary
    {"type": "string", "pattern": "^(yes|no)-\\d{2,3}$"},
    {"type": "string", "pattern": "t"},  # the text itself matches: kept
])
def test_example_from_schema_validates(schema):
    jsonschema.validate(example_from_schema(schema, "t"), schema)


def test_scripted_engine_forms_and_thread_safe_count():
    full = chat_response("whole", model="x")
    eng = ScriptedEngine(lambda text, body: full if text == "full" else
                         {"content": text, "finish_reason": "length"} if text == "cut" else text)
    body = lambda t: {"model": "m", "messages": [{"role": "user", "content": t}]}  # noqa: E731
    assert eng(body("full"), CHAT) is not full and eng(body("full"), CHAT)["id"] == full["id"]
    assert eng(body("cut"), CHAT)["choices"][0]["finish_reason"] == "length"
    threads = [threading.Thread(target=lambda: [eng(body("s"), CHAT) for _ in range(50)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert eng.calls == 203 and len(eng.bodies) == 203
    assert eng({"model": "e", "input": "a"}, EMB)["data"][0]["embedding"]  # delegated to echo


# --------------------------------------------------------------------------- lifecycle

def test_start_fails_cleanly_on_busy_port(server):
    with pytest.raises(ServerError, match="port"):
        BatchServer(port=server.port).start(timeout=2)


def test_serve_forever_stops_on_sigterm(tmp_path):
    script = ("import sys; from pdbatch.server import BatchServer\n"
              "srv = BatchServer(data_dir=sys.argv[1]).start()\n"
              "print(srv.base_url, flush=True)\n"
              "srv.serve_forever()\n"
              "print('stopped', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        base_url = proc.stdout.readline().strip()
        client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=5)
        assert client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch").bytes == 3
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "stopped"
    assert len([p for p in tmp_path.iterdir() if p.is_file()]) == 1  # data_dir is kept


def test_context_manager_and_serve_forever_stop(make_client):
    with BatchServer() as srv:
        assert make_client(srv).files.list().data == []
    srv2 = BatchServer()
    runner = threading.Thread(target=srv2.serve_forever, daemon=True)
    runner.start()
    until(lambda: srv2.running)
    assert make_client(srv2).files.list().data == []
    srv2.stop()
    runner.join(5)
    assert not runner.is_alive() and not srv2.running


def test_models_are_listed_and_every_response_has_a_request_id(make_server, make_client):
    srv = make_server()
    client = make_client(srv)
    names = [m.id for m in client.models.list()]
    assert names and client.models.retrieve(names[0]).id == names[0]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    raw = client.files.with_raw_response.list()
    assert raw.headers["x-request-id"].startswith("req_")
    try:
        client.batches.retrieve("batch_missing")
    except openai.NotFoundError as err:
        assert err.response.headers["x-request-id"].startswith("req_")
    else:
        raise AssertionError("a missing batch must be a 404")
