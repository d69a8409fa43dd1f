"""``pdbatch serve --upstream``: batch lines and realtime calls answered by another OpenAI-compatible server.

A second local :class:`BatchServer` plays the upstream (its ``Faults`` give it a
rate limit and a latency); its engine counts and times the calls it answers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from pdbatch.cli import main
from pdbatch.server import BatchServer, Faults
from pdbatch.server.engines import ScriptedEngine
from pdbatch.server.upstream import UpstreamEngine

ROOT = Path(__file__).resolve().parents[2]
URL = "/v1/chat/completions"


class Counting(ScriptedEngine):
    """Echoes the prompt; records when each call ran and the most calls seen at once."""

    def __init__(self, hold: float = 0.0):
        super().__init__(self._reply)
        self.hold, self.stamps, self.inflight, self.peak = hold, [], 0, 0
        self._count = threading.Lock()

    def _reply(self, text: str, body: dict) -> str:
        with self._count:
            self.stamps.append(time.monotonic())
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
        time.sleep(self.hold)
        with self._count:
            self.inflight -= 1
        return text


def submit(client, n: int, model: str = "m"):
    lines = [{"custom_id": f"r-{i}", "method": "POST", "url": URL,
              "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}]}} for i in range(n)]
    up = client.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()),
                             purpose="batch")
    return client.batches.create(input_file_id=up.id, endpoint=URL, completion_window="24h")


def output(client, batch) -> list[dict]:
    assert batch.status == "completed" and batch.error_file_id is None, batch
    return [json.loads(x) for x in client.files.content(batch.output_file_id).content.splitlines()]


def answered_once(client, batch, n: int) -> list[dict]:
    out = output(client, batch)
    assert sorted(x["custom_id"] for x in out) == sorted(f"r-{i}" for i in range(n))
    assert all(x["response"]["body"]["choices"][0]["message"]["content"] == f"line {x['custom_id'][2:]}"
               for x in out)
    return out


def until(check, timeout: float, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if check():
            return
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
    raise AssertionError("timed out")


def limited(srv: BatchServer) -> int:
    return sum(1 for _, _, status in srv.stats.log if status == 429)


@pytest.mark.timeout(60)
def test_a_batch_runs_at_the_upstream_rate_each_line_sent_once(make_server, make_client, wait_batch):
    rpm, n = 1200, 100  # 20 calls a second, each answered after 50 ms
    engine = Counting()
    upstream = make_server(engine, Faults(realtime_rpm=rpm, realtime_latency=0.05))
    srv = make_server(UpstreamEngine(upstream.base_url, rpm=rpm, max_concurrency=8))
    client = make_client(srv)
    done = wait_batch(client, submit(client, n).id, timeout=40)
    answered_once(client, done, n)
    assert engine.calls == n and upstream.stats.realtime_calls == n  # not one line twice, no 429
    assert limited(upstream) == 0
    achieved = (n - 1) / (engine.stamps[-1] - engine.stamps[0]) * 60
    assert 0.95 * rpm <= achieved <= 1.02 * rpm, achieved
    assert done.request_counts.completed == n and done.usage.total_tokens > 0


def test_lines_run_concurrently_up_to_max_concurrency(make_server, make_client, wait_batch):
    engine = Counting(hold=0.15)
    upstream = make_server(engine)
    srv = make_server(UpstreamEngine(upstream.base_url, max_concurrency=6))
    client = make_client(srv)
    done = wait_batch(client, submit(client, 30).id, timeout=20)
    answered_once(client, done, 30)
    assert 3 <= engine.peak <= 6 and engine.calls == 30


def test_limits_learned_from_the_upstream_headers_keep_429s_rare(make_server, make_client, wait_batch):
    upstream = make_server(Counting(), Faults(realtime_rpm=600))
    eng = UpstreamEngine(upstream.base_url, max_concurrency=4)  # no --rpm: the headers say 600
    client = make_client(make_server(eng))
    done = wait_batch(client, submit(client, 12).id, timeout=20)
    answered_once(client, done, 12)
    assert eng.limiter.rpm == 600 and limited(upstream) == 0


@pytest.mark.timeout(60)
def test_upstream_killed_mid_batch_and_restarted_the_batch_completes(make_server, make_client, wait_batch):
    n, engine = 60, Counting(hold=0.02)
    first = make_server(engine)
    port = first.port
    srv = make_server(UpstreamEngine(first.base_url, max_concurrency=4))
    client = make_client(srv)
    batch = submit(client, n)
    until(lambda: engine.calls >= 15, timeout=20)
    first.stop()  # the upstream goes away mid-batch: calls fail, the retry policy waits
    time.sleep(0.3)
    make_server(engine, port=port)
    done = wait_batch(client, batch.id, timeout=40)
    answered_once(client, done, n)
    assert n <= engine.calls <= n + 4  # a call in flight at the kill may have been answered unseen


@pytest.mark.timeout(60)
def test_a_restarted_server_sends_only_the_unanswered_lines(make_server, make_client, wait_batch, tmp_path):
    n, engine = 40, Counting(hold=0.05)
    upstream = make_server(engine)
    srv = make_server(UpstreamEngine(upstream.base_url, max_concurrency=2), data_dir=tmp_path / "data")
    batch = submit(make_client(srv), n)
    until(lambda: engine.calls >= 10, timeout=20)
    srv.stop()  # calls in flight finish and are stored
    sent = engine.calls
    assert sent < n
    again = make_server(UpstreamEngine(upstream.base_url, max_concurrency=2), data_dir=tmp_path / "data")
    client = make_client(again)
    answered_once(client, wait_batch(client, batch.id, timeout=30), n)
    assert engine.calls == n  # no line answered before the restart went upstream again


def test_cancel_mid_batch_ends_cancelled_with_what_was_answered(make_server, make_client, wait_batch):
    engine = Counting(hold=0.05)
    upstream = make_server(engine)
    srv = make_server(UpstreamEngine(upstream.base_url, max_concurrency=2))
    client = make_client(srv)
    batch = submit(client, 60)
    until(lambda: engine.calls >= 6, timeout=20)
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = wait_batch(client, batch.id, timeout=20)
    assert done.status == "cancelled"
    out = [json.loads(x) for x in client.files.content(done.output_file_id).content.splitlines()]
    assert 6 <= len(out) < 60 and len({x["custom_id"] for x in out}) == len(out)
    assert engine.calls == len(out)  # the calls in flight at the cancel were kept, nothing more was sent


def test_refused_lines_and_expiry_never_reach_the_upstream(make_server, make_client, wait_batch):
    engine = Counting()
    upstream = make_server(engine)
    srv = make_server(UpstreamEngine(upstream.base_url, max_concurrency=4),
                      Faults(expire_after=5, shuffle_output=False,
                             error_for=lambda cid, body: (500, "server_error", "boom") if cid == "r-0" else None))
    client = make_client(srv)
    lines = [{"custom_id": f"r-{i}", "method": "POST", "url": URL, "body": {"model": "m", "messages": (
        "hi" if i == 1 else [{"role": "user", "content": f"line {i}"}])}} for i in range(30)]
    del lines[2]["body"]["model"]  # that line's own 400, never sent
    up = client.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()),
                             purpose="batch")
    done = wait_batch(client, client.batches.create(input_file_id=up.id, endpoint=URL,
                                                    completion_window="24h").id, timeout=20)
    assert done.status == "expired"
    errors = {x["custom_id"]: x for x in (json.loads(y) for y in
                                          client.files.content(done.error_file_id).content.splitlines())}
    assert errors["r-1"]["response"]["status_code"] == 400
    assert errors["r-1"]["response"]["body"]["error"]["param"] == "messages"
    assert errors["r-2"]["response"]["status_code"] == 400
    assert errors["r-2"]["response"]["body"]["error"]["message"] == "Missing required parameter: 'model'."
    assert errors["r-0"]["response"]["status_code"] == 500
    out = [json.loads(x) for x in client.files.content(done.output_file_id).content.splitlines()]
    expired = [c for c, x in errors.items() if x["error"] and x["error"]["code"] == "batch_expired"]
    assert engine.calls == len(out) >= 3 and sorted(expired + list(errors.keys() - set(expired)) +
                                                   [x["custom_id"] for x in out]) == sorted(f"r-{i}" for i in range(30))


def test_429s_and_5xx_are_retried_by_the_retry_policy(make_server, make_client, wait_batch):
    engine = Counting()
    upstream = make_server(engine, Faults(realtime_errors=[429], retry_after=0.05))
    srv = make_server(UpstreamEngine(upstream.base_url, max_concurrency=4))
    client = make_client(srv)
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "hi" and upstream.stats.realtime_calls == 2
    upstream.faults.realtime_errors.extend([503, 500, 429])
    answered_once(client, wait_batch(client, submit(client, 10).id, timeout=20), 10)
    assert engine.calls == 11 and upstream.stats.realtime_calls == 2 + 13


def test_realtime_calls_go_upstream_with_the_model_map(make_server, make_client):
    engine = Counting()
    upstream = make_server(engine, Faults(realtime_errors=[400]))
    srv = make_server(UpstreamEngine(upstream.base_url, model_map={"gpt-4o-mini": "qwen"}))
    client = make_client(srv)
    with pytest.raises(openai.BadRequestError):  # an upstream 400 comes back as it is, not retried
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert upstream.stats.realtime_calls == 1 and engine.calls == 0
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "hi" and engine.bodies[-1]["model"] == "qwen"
    resp = client.responses.create(model="gpt-4o-mini", input="hello")
    assert resp.output_text == "hello" and upstream.stats.calls("POST", "/v1/responses") == 1
    emb = client.embeddings.create(model="e", input=["a", "b"])
    assert len(emb.data) == 2 and upstream.stats.calls("POST", "/v1/embeddings") == 1
    assert [m.id for m in client.models.list().data] == ["echo"]  # the upstream's own list; it has no "qwen"
    # a body the API refuses is refused here and never sent
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages="hi")
    assert err.value.body["param"] == "messages" and upstream.stats.realtime_calls == 4


@pytest.mark.parametrize("argv, message", [
    (["--engine", "echo", "--rpm", "60"],
     "--rpm, --tpm, --max-concurrency, --model-map and --upstream-key-env go with --upstream"),
    (["--upstream", "127.0.0.1:8000"], "--upstream: give the server's OpenAI base URL"),
    (["--upstream", "http://127.0.0.1:9/v1", "--engine", "echo"], "leave out --engine echo"),
    (["--upstream", "http://127.0.0.1:9/v1", "--max-concurrency", "0"], "--max-concurrency at least 1"),
    (["--upstream", "http://127.0.0.1:9/v1", "--model-map", "gpt-4o"], "--model-map: 'gpt-4o' is not SERVED=UPSTREAM"),
    (["--engine", "echo", "--tpm", "1000"],
     "--rpm, --tpm, --max-concurrency, --model-map and --upstream-key-env go with --upstream"),
    (["--upstream", "http://127.0.0.1:9/v1", "--tpm", "0"], "--rpm and --tpm must be > 0"),
    (["--upstream", "http://127.0.0.1:9/v1", "--tpm", "-5"], "--rpm and --tpm must be > 0"),
    (["--upstream", "http://127.0.0.1:9/v1", "--tpm", "inf"], "--rpm and --tpm must be > 0"),
])
def test_serve_upstream_bad_options(argv, message, capsys, tmp_path):
    assert main(["serve", "--port", "0", "--data-dir", str(tmp_path / "d"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # nothing started


class Serve:
    """``pdbatch serve --upstream URL`` in a subprocess; its stdout and stderr go to ``log``."""

    def __init__(self, log: Path, data: Path, upstream: str, *flags: str, env=None) -> None:
        before = log.read_text().count("base_url=") if log.exists() else 0
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pdbatch", "serve", "--upstream", upstream, "--port", "0",
                 "--data-dir", str(data), *flags], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        until(lambda: log.read_text().count("base_url=") > before or self.proc.poll() is not None, timeout=30,
              interval=0.05)
        self.banner = [x for x in log.read_text().splitlines() if "base_url=" in x][-1]
        self.client = openai.OpenAI(base_url=re.search(r"base_url=(\S+?);", self.banner).group(1), api_key="k",
                                    max_retries=0, timeout=10)

    def stop(self, sig=signal.SIGTERM) -> None:
        self.client.close()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)


@pytest.mark.timeout(90)
def test_the_upstream_key_stays_out_of_the_data_dir_and_the_log(make_server, tmp_path):
    secret = "sk-upstream-secret-3f9a1c"
    upstream = make_server(Counting())
    data, log = tmp_path / "data", tmp_path / "serve.txt"
    serve = Serve(log, data, upstream.base_url, "--upstream-key-env", "MY_UPSTREAM_KEY", "--max-concurrency", "4",
                  env={"MY_UPSTREAM_KEY": secret})
    try:
        assert "key from $MY_UPSTREAM_KEY: set" in serve.banner, serve.banner
        client = serve.client
        batch = submit(client, 10)
        until(lambda: client.batches.retrieve(batch.id).status == "completed", timeout=30, interval=0.05)
        answered_once(client, client.batches.retrieve(batch.id), 10)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert [m.id for m in client.models.list()] == ["echo"]  # the upstream's list, asked with the key
    finally:
        serve.stop()
    text = log.read_bytes()
    assert b"POST /v1/batches" in text  # the request log was on
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files and not [p for p in files if secret.encode() in p.read_bytes()]
    assert secret.encode() not in text


@pytest.mark.timeout(120)
def test_kill_9_mid_batch_then_restart_sends_no_answered_line_again(make_server, tmp_path):
    n, engine = 60, Counting(hold=0.05)
    upstream = make_server(engine)
    data, log = tmp_path / "data", tmp_path / "serve.txt"
    first = Serve(log, data, upstream.base_url, "--max-concurrency", "3", "-q")
    try:
        batch = submit(first.client, n)
        until(lambda: engine.calls >= 15, timeout=30)
    finally:
        first.stop(signal.SIGKILL)
    time.sleep(0.2)  # the calls in flight at the kill reach the upstream's engine
    sent = engine.calls
    second = Serve(log, data, upstream.base_url, "--max-concurrency", "3", "-q")
    try:
        client = second.client
        until(lambda: client.batches.retrieve(batch.id).status == "completed", timeout=30, interval=0.05)
        answered_once(client, client.batches.retrieve(batch.id), n)
    finally:
        second.stop()
    assert sent < n and n <= engine.calls <= n + 3  # at most the calls in flight at the kill went again
