"""Durable state of the local server: restarts (clean and ``kill -9``), expiry, retention.

Everything goes through the real ``openai`` SDK over HTTP; the ``kill -9`` test
runs ``pdbatch serve`` as a subprocess.
"""

from __future__ import annotations

import importlib
import importlib.util
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

from pdbatch.errors import ServerError
from pdbatch.server import BatchServer, Faults
from pdbatch.server.engines import ScriptedEngine, SlowEcho

from .test_server import line, read_jsonl, submit, until

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DAY = 24 * 3600


def rows(n, prefix="r"):
    return [line(f"{prefix}-{i}", f"text {i}") for i in range(n)]


def answered_once(client, batch, n, prefix="r"):
    """Output + error lines of ``batch``: every one of the ``n`` ids exactly once."""
    out = read_jsonl(client, batch.output_file_id) if batch.output_file_id else []
    err = read_jsonl(client, batch.error_file_id) if batch.error_file_id else []
    ids = [x["custom_id"] for x in out + err]
    assert sorted(ids) == sorted(f"{prefix}-{i}" for i in range(n))
    return out, err


def complete_lines(path: Path) -> list[dict]:
    """The whole lines of a JSONL file being appended to."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x]


class Serve:
    """``pdbatch serve --engine echo`` in a subprocess on ``data_dir`` (port chosen by the OS)."""

    def __init__(self, tmp_path: Path, data_dir: Path, *flags: str) -> None:
        self.err_path = tmp_path / f"serve-{time.monotonic_ns()}.txt"
        with open(self.err_path, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pdbatch", "serve", "--engine", "echo", "--port", "0", "-q",
                 "--data-dir", str(data_dir), *flags],
                stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline, text = time.monotonic() + 30, ""
        while "base_url=" not in text:  # the banner is printed once the server listens
            assert self.proc.poll() is None and time.monotonic() < deadline, self.err_path.read_text()
            time.sleep(0.05)
            text = self.err_path.read_text()
        self.banner = text.splitlines()[0]
        self.base_url = re.search(r"base_url=(\S+?);", self.banner).group(1)
        self.client = openai.OpenAI(base_url=self.base_url, api_key="k", max_retries=0, timeout=10)

    def kill(self, sig=signal.SIGKILL) -> int:
        self.client.close()
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)


@pytest.mark.timeout(120)  # two interpreters start: slow on a loaded machine
def test_kill_9_mid_batch_then_restart_finishes_every_line_once(tmp_path, wait_batch):
    data = tmp_path / "data"
    first = Serve(tmp_path, data, "--latency", "0.02")
    try:
        other = first.client.files.create(file=("notes.txt", b"keep me\n"), purpose="user_data")
        batch = submit(first.client, rows(100))
        until(lambda: first.client.batches.retrieve(batch.id).request_counts.completed >= 30,
              timeout=20, interval=0.02)
        started = first.client.batches.retrieve(batch.id).in_progress_at
    finally:
        assert first.kill() == -signal.SIGKILL
    kept = complete_lines(data / "batches" / batch.id / "output.jsonl")  # made durable before the kill
    assert 0 < len(kept) < 100

    second = Serve(tmp_path, data, "--latency", "0.02")
    try:
        client = second.client
        assert "1 resumed" in second.banner
        assert {f.id for f in client.files.list().data} >= {batch.input_file_id, other.id}
        assert client.files.content(other.id).content == b"keep me\n"
        assert [b.id for b in client.batches.list().data] == [batch.id]
        done = wait_batch(client, batch.id, timeout=20)
        assert done.status == "completed" and done.error_file_id is None
        assert (done.request_counts.total, done.request_counts.completed,
                done.request_counts.failed) == (100, 100, 0)
        assert done.in_progress_at == started  # the same run, resumed
        out, _ = answered_once(client, done, 100)
        by_id = {o["custom_id"]: o for o in out}
        assert all(by_id[k["custom_id"]] == k for k in kept)  # answers made before the kill are kept as they were
        assert all(o["response"]["body"]["choices"][0]["message"]["content"] ==
                   "text " + o["custom_id"].split("-")[1] for o in out)
    finally:
        assert second.kill(signal.SIGTERM) == 0


def test_clean_restart_keeps_files_and_batches_and_resumes(make_client, wait_batch, tmp_path):
    data = tmp_path / "data"
    srv = BatchServer(engine=SlowEcho(0.01), data_dir=data).start()
    client = make_client(srv)
    finished = submit(client, rows(5, "a"))
    finished = wait_batch(client, finished.id)
    running = submit(client, rows(80, "b"))
    until(lambda: client.batches.retrieve(running.id).request_counts.completed >= 5)
    srv.stop()
    ran_before = srv.stats.requests_executed - 5
    assert 5 <= ran_before < 80
    with pytest.raises(openai.APIConnectionError):
        client.batches.retrieve(running.id)

    with BatchServer(engine=SlowEcho(0.001), data_dir=data) as again:
        client = make_client(again)
        assert client.batches.retrieve(finished.id).model_dump() == finished.model_dump()
        answered_once(client, finished, 5, "a")
        done = wait_batch(client, running.id, timeout=20)
        assert done.status == "completed" and done.request_counts.completed == 80
        answered_once(client, done, 80, "b")
        assert again.stats.requests_executed == 80 - ran_before  # a clean stop loses no answer
        assert [b.id for b in client.batches.list().data] == [running.id, finished.id]
        listed = {f.id: f.purpose for f in client.files.list().data}
        assert listed == {finished.input_file_id: "batch", finished.output_file_id: "batch_output",
                          running.input_file_id: "batch", done.output_file_id: "batch_output"}


def test_a_cancel_the_worker_never_saw_ends_cancelled_after_the_restart(make_client, wait_batch,
                                                                        tmp_path):
    """The server stops while the worker is inside line 4 and the cancel is accepted: the
    restarted server ends the batch ``cancelled`` with the 4 answers, none run again."""
    gate, data = threading.Event(), tmp_path / "data"

    def reply(text, body):
        if text == "text 3":
            gate.wait(10)
        return text

    before = set(threading.enumerate())
    srv = BatchServer(engine=ScriptedEngine(reply), faults=Faults(shuffle_output=False),
                      data_dir=data).start()
    client = make_client(srv)
    batch = submit(client, rows(20))
    until(lambda: client.batches.retrieve(batch.id).request_counts.completed == 3)
    assert client.batches.cancel(batch.id).status == "cancelling"
    srv.stop(timeout=0.2)  # the worker is still waiting inside line 4
    gate.set()  # it answers line 4 (kept on disk), sees the stop and ends
    until(lambda: not any(t.name == "pdbatch-batch-worker"
                          for t in set(threading.enumerate()) - before))
    engine = ScriptedEngine(lambda text, body: text)
    with BatchServer(engine=engine, data_dir=data) as again:
        client = make_client(again)
        done = wait_batch(client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at >= done.cancelling_at
        out = read_jsonl(client, done.output_file_id)
        assert sorted(o["custom_id"] for o in out) == ["r-0", "r-1", "r-2", "r-3"]
        assert (done.request_counts.completed, done.request_counts.failed) == (4, 0)
        assert done.error_file_id is None and engine.calls == 0


def test_a_data_dir_serves_one_server_at_a_time(tmp_path):
    with BatchServer(data_dir=tmp_path):
        with pytest.raises(ServerError, match="in use by another pdbatch server.*--data-dir"):
            BatchServer(data_dir=tmp_path)


def test_a_state_it_cannot_read_is_refused_naming_the_fix(tmp_path):
    import sqlite3

    newer = tmp_path / "newer"
    with BatchServer(data_dir=newer):
        pass
    db = sqlite3.connect(newer / "state" / "server.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(ServerError, match="newer pdbatch.*upgrade pdbatch or choose another --data-dir"):
        BatchServer(data_dir=newer)
    broken = tmp_path / "broken"
    (broken / "state").mkdir(parents=True)
    (broken / "state" / "server.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ServerError, match="cannot read the server state.*--data-dir"):
        BatchServer(data_dir=broken)
    with BatchServer(data_dir=tmp_path / "fine"):  # and the lock went with the failures
        pass


def test_upload_expires_after_its_seconds(make_server, make_client, tmp_path):
    srv = make_server(data_dir=tmp_path / "data")
    client = make_client(srv)
    f = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    plain = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    assert f.expires_at == f.created_at + 3600 and plain.expires_at is None
    assert client.files.retrieve(f.id).expires_at == f.expires_at
    srv.faults.time_shift = 3590  # 10 s before (created_at is whole seconds)
    assert client.files.content(f.id).content == b"{}\n"
    srv.faults.time_shift = 3601
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    assert [x.id for x in client.files.list().data] == [plain.id]
    assert not (srv.data_dir / f.id).exists() and (srv.data_dir / plain.id).exists()


@pytest.mark.parametrize("expires, param", [
    ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds"),
    ({"anchor": "created_at", "seconds": 2_592_001}, "expires_after.seconds"),
    ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor"),
])
def test_bad_expires_after_is_refused_and_nothing_is_kept(server, client, expires, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch", expires_after=expires)
    assert info.value.body["param"] == param and "expires_after" in info.value.body["message"]
    assert client.files.list().data == []
    assert [p for p in server.data_dir.rglob("*") if p.is_file() and p.parent.name != "state"] == []


def test_output_expires_after_sets_the_output_files_expiry(make_server, make_client, wait_batch):
    srv = make_server()
    client = make_client(srv)
    with pytest.raises(openai.BadRequestError) as info:
        submit(client, rows(2), output_expires_after={"anchor": "created_at", "seconds": 5})
    assert info.value.body["param"] == "output_expires_after.seconds"
    assert client.batches.list().data == []  # nothing was created
    batch = submit(client, rows(2), output_expires_after={"anchor": "created_at", "seconds": 7200})
    done = wait_batch(client, batch.id)
    out = client.files.retrieve(done.output_file_id)
    assert out.expires_at == out.created_at + 7200
    assert client.files.retrieve(done.input_file_id).expires_at is None
    srv.faults.time_shift = 7201
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)
    assert client.batches.retrieve(batch.id).output_file_id == out.id  # the batch stays


def test_batch_past_its_24h_window_expires_keeping_what_was_done(make_server, make_client,
                                                                  wait_batch):
    srv = make_server(engine=SlowEcho(0.01))
    client = make_client(srv)
    batch = submit(client, rows(100))
    until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5)
    srv.faults.time_shift = DAY
    done = wait_batch(client, batch.id)
    assert done.status == "expired" and done.expired_at >= batch.expires_at
    out, err = answered_once(client, done, 100)
    assert 5 <= len(out) < 100
    assert {e["error"]["code"] for e in err} == {"batch_expired"}
    assert all(e["response"] is None for e in err)
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))


def test_a_window_that_ends_while_the_server_is_down_expires_the_batch_at_restart(
        make_client, wait_batch, tmp_path):
    data = tmp_path / "data"
    srv = BatchServer(engine=SlowEcho(0.01), data_dir=data).start()
    client = make_client(srv)
    batch = submit(client, rows(200))
    until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5)
    srv.stop()
    with BatchServer(faults=Faults(time_shift=DAY), data_dir=data) as again:
        client = make_client(again)
        done = wait_batch(client, batch.id)
        assert done.status == "expired" and again.stats.requests_executed == 0
        out, err = answered_once(client, done, 200)
        assert len(out) >= 5 and {e["error"]["code"] for e in err} == {"batch_expired"}


def test_retention_prunes_finished_batches_and_their_files(make_server, make_client, wait_batch):
    srv = make_server(engine=SlowEcho(0.05), retention=3600)
    client = make_client(srv)
    old = wait_batch(client, submit(client, rows(3)).id)
    assert old.status == "completed"
    srv.faults.time_shift = 1800
    slow = submit(client, rows(400, "s"))  # still running when the first one leaves
    until(lambda: client.batches.retrieve(slow.id).status == "in_progress")
    assert client.batches.retrieve(old.id).status == "completed"
    srv.faults.time_shift = 3601
    for gone in (lambda: client.batches.retrieve(old.id),
                 lambda: client.files.retrieve(old.output_file_id),
                 lambda: client.files.content(old.output_file_id),
                 lambda: client.files.retrieve(old.input_file_id)):
        with pytest.raises(openai.NotFoundError):
            gone()
    assert [b.id for b in client.batches.list().data] == [slow.id]
    assert [f.id for f in client.files.list().data] == [slow.input_file_id]
    assert not (srv.data_dir / "batches" / old.id).exists()
    client.batches.cancel(slow.id)
    assert wait_batch(client, slow.id).status == "cancelled"


@pytest.mark.parametrize("flags, message", [
    (["--retention", "7x"], "--retention: '7x' is not a duration; write seconds (3600) or a number"),
    (["--retention=-3h"], "--retention: '-3h' is not a duration"),
    (["--retention", "0"], "--retention: '0' is not a duration"),
    (["--latency=-1"], "--latency: give seconds >= 0, with --engine echo"),
    (["--engine", "local", "--latency", "1"], "--latency: give seconds >= 0, with --engine echo"),
])
def test_serve_refuses_bad_retention_and_latency(tmp_path, capsys, flags, message):
    from pdbatch.cli import main

    assert main(["serve", "--engine", "echo", "--port", "0", "--data-dir", str(tmp_path / "d"),
                 *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was written


@pytest.mark.timeout(150)  # four interpreters start: slow on a loaded machine
def _openai_batch_problem() -> str:
    """Why the ``openai-batch`` CLI cannot run here ("" when it can)."""
    if importlib.util.find_spec("openai_batch") is None:
        return "the openai-batch package is not installed (pip install openai-batch httpx)"
    try:
        importlib.import_module("openai_batch.run")  # it imports httpx, which openai 3 no longer brings
    except Exception as exc:
        return f"the openai-batch CLI does not import here: {exc!r} (pip install openai-batch httpx)"
    return ""


@pytest.mark.skipif(bool(_openai_batch_problem()), reason=_openai_batch_problem() or "-")
def test_openai_batch_cli_resumes_across_a_server_restart(tmp_path, wait_batch):
    """The third-party ``openai-batch`` CLI: ``--create``, the server killed and started
    again, then ``--resume BATCH_ID`` downloads every answer once."""
    data, src = tmp_path / "data", tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows(40)))

    def cli(base_url, *args):
        return subprocess.run([sys.executable, "-m", "openai_batch.run", *args, "--base-url", base_url,
                               "--api-key", "k"], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)

    first = Serve(tmp_path, data, "--latency", "0.02")
    try:
        created = cli(first.base_url, str(src), "--create")
        assert created.returncode == 0, created.stderr
        batch_id = re.search(r"Created (batch_\w+)\.", created.stdout).group(1)
        until(lambda: first.client.batches.retrieve(batch_id).request_counts.completed >= 5,
              timeout=20, interval=0.02)
    finally:
        first.kill()
    second = Serve(tmp_path, data)
    try:
        assert wait_batch(second.client, batch_id, timeout=20).status == "completed"
        resumed = cli(second.base_url, "--resume", batch_id, "-o", "out.jsonl", "-e", "err.jsonl")
        assert resumed.returncode == 0, resumed.stderr
        assert f"Status of {batch_id}: completed" in resumed.stdout
        out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(o["custom_id"] for o in out) == sorted(f"r-{i}" for i in range(40))
        assert not (tmp_path / "err.jsonl").exists()
    finally:
        second.kill(signal.SIGTERM)
