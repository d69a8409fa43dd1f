"""Anthropic Message Batches survive a restart of the local server (clean stop and ``kill -9``).

Driven by the real ``anthropic`` SDK over HTTP; the ``kill -9`` test runs ``pdbatch serve``
as a subprocess.
"""

from __future__ import annotations

import signal

import pytest

from pdbatch.server import BatchServer, Faults
from pdbatch.server.engines import ScriptedEngine

from .test_durable import Serve, complete_lines
from .test_server import until

anthropic = pytest.importorskip("anthropic")
pytestmark = pytest.mark.timeout(60)


def sdk(base_url: str):
    return anthropic.Anthropic(base_url=base_url[: -len("/v1")], api_key="k", max_retries=0, timeout=10.0)


def requests(n: int) -> list:
    return [{"custom_id": f"r-{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 16,
                                               "messages": [{"role": "user", "content": f"text {i}"}]}}
            for i in range(n)]


def ended(client, bid: str, timeout: float = 20.0):
    until(lambda: client.messages.batches.retrieve(bid).processing_status == "ended", timeout=timeout)
    return client.messages.batches.retrieve(bid)


def results_once(client, bid: str, n: int) -> list:
    """The batch's results: every one of the ``n`` ids exactly once, each the echo of its prompt."""
    out = list(client.messages.batches.results(bid))
    assert sorted(r.custom_id for r in out) == sorted(f"r-{i}" for i in range(n))
    assert all(r.result.type == "succeeded" and r.result.message.content[0].text == f"text {r.custom_id[2:]}"
               for r in out)
    return out


def test_a_clean_restart_keeps_ended_batches_and_resumes_the_running_one(tmp_path):
    data, first_engine = tmp_path / "data", ScriptedEngine(lambda text, body: text)
    first = BatchServer(engine=first_engine, faults=Faults(request_delay=0.03), data_dir=data).start()
    try:
        client = sdk(first.base_url)
        done = client.messages.batches.create(requests=requests(3))
        ended(client, done.id)
        running = client.messages.batches.create(requests=requests(40))
        until(lambda: first_engine.calls >= 3 + 8, timeout=20)
    finally:
        first.stop()
    assert 3 + 8 <= first_engine.calls < 3 + 40
    second_engine = ScriptedEngine(lambda text, body: text)
    second = BatchServer(engine=second_engine, data_dir=data).start()
    try:
        client = sdk(second.base_url)
        assert [b.id for b in client.messages.batches.list()] == [running.id, done.id]
        results_once(client, done.id, 3)
        finished = ended(client, running.id)
        assert finished.request_counts.succeeded == 40 and finished.request_counts.processing == 0
        assert finished.created_at == running.created_at
        results_once(client, running.id, 40)
        assert first_engine.calls - 3 + second_engine.calls == 40  # no request answered twice
        client.messages.batches.delete(done.id)
    finally:
        second.stop()
    third = BatchServer(data_dir=data).start()
    try:
        client = sdk(third.base_url)
        assert [b.id for b in client.messages.batches.list()] == [running.id]  # the deletion was stored
        assert not (data / "messages" / done.id).exists()
        results_once(client, running.id, 40)
    finally:
        third.stop()


def test_a_cancel_is_kept_across_a_restart(tmp_path):
    data = tmp_path / "data"
    first = BatchServer(faults=Faults(validating_delay=30), data_dir=data).start()
    try:
        client = sdk(first.base_url)
        batch = client.messages.batches.create(requests=requests(5))
        assert client.messages.batches.cancel(batch.id).processing_status == "canceling"
    finally:
        first.stop()
    second = BatchServer(data_dir=data).start()
    try:
        client = sdk(second.base_url)
        done = ended(client, batch.id)
        assert done.request_counts.canceled == 5 and done.cancel_initiated_at is not None
        assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}
    finally:
        second.stop()


@pytest.mark.timeout(120)  # two interpreters start: slow on a loaded machine
def test_kill_9_mid_batch_then_restart_answers_every_request_once(tmp_path):
    data, n = tmp_path / "data", 80
    first = Serve(tmp_path, data, "--latency", "0.02")
    try:
        client = sdk(first.base_url)
        batch = client.messages.batches.create(requests=requests(n))
        path = data / "messages" / batch.id / "results.jsonl"
        until(lambda: path.exists() and path.read_bytes().count(b"\n") >= 20, timeout=20)
    finally:
        assert first.kill() == -signal.SIGKILL
    kept = complete_lines(path)  # handed to the OS as they were made
    assert 0 < len(kept) < n
    second = Serve(tmp_path, data, "--latency", "0.02")
    try:
        client = sdk(second.base_url)
        done = ended(client, batch.id)
        assert done.request_counts.succeeded == n
        out = {r.custom_id: r for r in results_once(client, batch.id, n)}
        assert all(out[k["custom_id"]].result.message.id == k["result"]["message"]["id"] for k in kept)
    finally:
        assert second.kill(signal.SIGTERM) == 0
