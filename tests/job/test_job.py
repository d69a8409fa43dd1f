"""Jobs that survive: re-attach, never pay twice, retry only what failed.

Crash tests SIGKILL a child process at each dangerous point — the server's
``on_response`` hook fires after the work is done and before the client sees
the answer — then run the same ``map`` again and count what the server saw.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import pdbatch
from pdbatch.server.engines import ScriptedEngine
from pdbatch.errors import JobError
from pdbatch.server import Faults
from pdbatch.job.store import default_store

from tests.job import crashy_child

HERE = Path(__file__).resolve().parent
FAST = dict(model="gpt-4o-mini", poll_interval=0.02, max_poll_interval=0.05, progress=False, timeout=60)


def start_child(srv, tmp_path, name="out", backend=None):
    out = tmp_path / f"{name}.parquet"
    proc = subprocess.Popen([sys.executable, str(HERE / "crashy_child.py"), srv.base_url, str(out)]
                            + ([backend] if backend else []),
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, out


def kill_on(srv, pattern, box):
    """Arm the server to SIGKILL the child once, on the first call matching ``pattern``."""
    fired = threading.Event()

    def hook(method, path, status):
        if not fired.is_set() and "pid" in box and fnmatch.fnmatchcase(f"{method} {path}", pattern) and status < 300:
            fired.set()
            os.kill(box["pid"], signal.SIGKILL)

    srv.faults.on_response = hook
    return fired


@pytest.mark.parametrize(
    "point",
    ["POST /v1/files", "POST /v1/batches", "GET /v1/batches/*", "GET /v1/files/*/content"],
    ids=["after-upload", "between-create-and-record", "while-polling", "while-downloading"],
)
def test_sigkill_then_rerun_one_batch_per_shard(make_server, make_client, tmp_path, point):
    srv = make_server(faults=Faults(request_delay=0.01))
    box = {}
    fired = kill_on(srv, point, box)
    proc, out = start_child(srv, tmp_path)
    box["pid"] = proc.pid
    proc.wait(timeout=60)
    assert fired.is_set() and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    srv.faults.on_response = None
    result = crashy_child.run(make_client(srv))
    assert srv.stats.batches_created == 3  # 6 rows, 2 per shard: exactly one batch per shard
    assert result["llm_error"].isna().all()
    assert result["llm_output"].tolist() == [f"Row r{i}: text {i}" for i in range(6)]
    assert len(result.attrs["pdbatch"]["batch_ids"]) == 3
    # What the re-run sent itself, and what it picked up from the killed run's batches.
    c = result.attrs["pdbatch"]["counts"]
    sent = {"POST /v1/files": 6, "POST /v1/batches": 4, "GET /v1/batches/*": 0, "GET /v1/files/*/content": 0}[point]
    assert c["sent"] == sent and c["sent"] + c["resumed"] + c["cached"] == 6, c


def test_sigkill_mid_submit_resumes_the_shards_not_yet_written(make_server, make_client, tmp_path):
    """Shards go out as they are written: killed after the 2nd batch exists, the 3rd shard was never written.

    The re-run adopts the two batches (no second batch for their rows) and writes only the rows in no shard.
    """
    srv = make_server(faults=Faults(request_delay=0.01))
    box, seen, fired = {}, [], threading.Event()

    def hook(method, path, status):
        if method == "POST" and path == "/v1/batches" and status < 300 and "pid" in box:
            seen.append(path)
            if len(seen) == 2 and not fired.is_set():
                fired.set()
                os.kill(box["pid"], signal.SIGKILL)

    srv.faults.on_response = hook
    proc, out = start_child(srv, tmp_path)
    box["pid"] = proc.pid
    proc.wait(timeout=60)
    assert fired.is_set() and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    srv.faults.on_response = None
    assert srv.stats.batches_created == 2
    result = crashy_child.run(make_client(srv))
    assert srv.stats.batches_created == 3  # the third shard's batch only
    c = result.attrs["pdbatch"]["counts"]
    assert (c["sent"], c["resumed"], c["cached"]) == (2, 4, 0)
    assert result["llm_error"].isna().all()
    assert result["llm_output"].tolist() == [f"Row r{i}: text {i}" for i in range(6)]
    assert len(result.attrs["pdbatch"]["batch_ids"]) == 3


def test_job_load_joins_on_the_ids_sent_not_on_a_round_tripped_index(make_server, make_client):
    """An object index holding 1, None, 3 comes back from Parquet as floats: the stored custom_ids are used."""
    srv = make_server()
    df = pd.DataFrame({"name": ["a", "b", "c"], "text": ["x", "y", "z"]}, index=pd.Index([1, None, 3], dtype=object))
    out = df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), **crashy_child.OPTIONS)
    assert out["llm_error"].isna().all()
    again = pdbatch.Job.load(out.attrs["pdbatch"]["job_id"], client=make_client(srv)).result()
    assert again["llm_error"].isna().all(), again["llm_error"].tolist()
    assert again["llm_output"].tolist() == out["llm_output"].tolist()


@pytest.mark.parametrize("release", ["v1", "v2"])
def test_a_job_of_an_earlier_release_in_flight_is_found_by_its_old_fingerprint(make_server, make_client, release):
    """A job whose fingerprint an earlier release made, still running, is re-attached: its rows are not paid twice."""
    from pdbatch.core.ids import unique_ids
    from pdbatch.core.spec import MapSpec
    from pdbatch.job.fingerprint import FINGERPRINT_PREFIX, legacy_fingerprint, v2_fingerprint

    srv = make_server(faults=Faults(request_delay=0.05))
    client = make_client(srv)
    df = crashy_child.make_frame(4)
    opts = {k: v for k, v in crashy_child.OPTIONS.items() if k not in ("progress", "timeout")}
    job = df.llm.submit(crashy_child.TEMPLATE, client=client, **opts)
    store = default_store()
    assert store.job(job.id).fingerprint.startswith(FINGERPRINT_PREFIX)
    spec = MapSpec.build(crashy_child.TEMPLATE, columns=list(df.columns), model="gpt-4o-mini")
    old = {"v1": legacy_fingerprint, "v2": v2_fingerprint}[release](spec, spec.render(df, unique_ids(df.index)), "batch")
    assert old.startswith("v2:") == (release == "v2")
    store.update_job(job.id, fingerprint=old)  # as an earlier release stored it
    created = srv.stats.batches_created
    out = df.llm.map(crashy_child.TEMPLATE, client=client, **crashy_child.OPTIONS)
    assert out.attrs["pdbatch"]["job_id"] == job.id and srv.stats.batches_created == created
    assert out["llm_error"].isna().all()


def test_parallel_processes_share_one_job(make_server, tmp_path):
    srv = make_server(faults=Faults(request_delay=0.02))
    a, out_a = start_child(srv, tmp_path, "a")
    b, out_b = start_child(srv, tmp_path, "b")
    for p in (a, b):
        p.wait(timeout=90)
        assert p.returncode == 0, p.stderr.read().decode()[-2000:]
    assert srv.stats.batches_created == 3
    fa, fb = pd.read_parquet(out_a), pd.read_parquet(out_b)
    pd.testing.assert_frame_equal(fa, fb)
    assert fa["llm_error"].isna().all()


def test_rerun_after_finish_sends_nothing(make_server, make_client):
    srv = make_server()
    first = crashy_child.run(make_client(srv))
    calls = len(srv.stats.log)
    again = crashy_child.run(make_client(srv))
    assert len(srv.stats.log) == calls  # not a single API call: the stored answers come back
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs["pdbatch"]["job_id"] == first.attrs["pdbatch"]["job_id"]


def test_growing_frame_sends_only_new_rows(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text.upper())
    srv = make_server(engine=engine)
    crashy_child.run(make_client(srv), n=6)
    assert engine.calls == 6
    out = crashy_child.run(make_client(srv), n=9)
    assert engine.calls == 9  # exactly the 3 new rows were sent
    assert out.attrs["pdbatch"]["counts"]["cached"] == 6 and out.attrs["pdbatch"]["counts"]["sent"] == 3
    assert out["llm_output"].tolist() == [f"ROW R{i}: TEXT {i}" for i in range(9)]


def test_changed_rows_are_the_only_ones_sent(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text[::-1])
    srv = make_server(engine=engine)
    df = crashy_child.make_frame(10)
    df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), **crashy_child.OPTIONS)
    changed = df.copy()
    changed.loc[["id2", "id7"], "text"] = "new words"
    out = changed.llm.map(crashy_child.TEMPLATE, client=make_client(srv), **crashy_child.OPTIONS)
    assert engine.calls == 12
    assert out.loc["id2", "llm_output"] == "Row r2: new words"[::-1]
    assert out.loc["id3", "llm_output"] == "Row r3: text 3"[::-1]


def test_cache_false_sends_everything_again(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: "x")
    srv = make_server(engine=engine)
    df = crashy_child.make_frame(4)
    df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), **crashy_child.OPTIONS)
    df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), cache=False, **crashy_child.OPTIONS)
    assert engine.calls == 8


def test_retries_only_what_failed(make_server, make_client):
    """Run-time 500s on some rows and an expiry: every row ends answered; resubmitted == failed."""
    seen = {}
    lock = threading.Lock()

    def flaky(cid, body):
        with lock:
            seen[cid] = seen.get(cid, 0) + 1
            first = seen[cid] == 1
        if cid in ("id1", "id4") and first:
            return (500, "server_error", "try later")
        if cid == "id3":
            return (400, "context_length_exceeded", "too long")
        return None

    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(error_for=flaky, expire_after=4))
    df = crashy_child.make_frame(8)
    # Which lines a batch runs before it expires depends on its (shuffled) order: enough rounds
    # that a row can expire twice and then fail once with a 500, and still end answered.
    out = df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), max_retries=4, **FAST)
    errors = out["llm_error"]
    assert errors["id3"] == "context_length_exceeded: too long"  # permanent: not retried
    assert seen["id3"] == 1
    assert errors.drop("id3").isna().all()
    # Every failed line but id3's 400 was retryable (500s, expired lines): exactly those went again.
    failed_lines = sum(b["request_counts"]["failed"] for b in srv.batches.values())
    assert out.attrs["pdbatch"]["resubmitted"] == failed_lines - 1
    assert srv.stats.batches_created >= 2 and failed_lines >= 6  # 2 x 500 + at least 4 expired
    assert engine.calls == 8 - 1  # every row answered exactly once; id3 never reached the engine


def test_max_retries_zero_keeps_failures(make_server, make_client):
    srv = make_server(faults=Faults(error_for=lambda cid, body: (500, "server_error", "boom") if cid == "id0" else None))
    out = crashy_child.make_frame(3).llm.map(crashy_child.TEMPLATE, client=make_client(srv), max_retries=0, **FAST)
    assert out.loc["id0", "llm_error"] == "server_error: boom"
    assert srv.stats.batches_created == 1


def test_retry_invalid_sends_bad_json_again(make_server, make_client):
    count = {}

    def reply(text, body):
        count[text] = count.get(text, 0) + 1
        return "not json" if text.startswith("Row r1") and count[text] == 1 else json.dumps({"n": len(text)})

    srv = make_server(engine=ScriptedEngine(reply))
    df = crashy_child.make_frame(3)
    opts = dict(crashy_child.OPTIONS, response_format={"type": "object", "properties": {"n": {"type": "integer"}}})
    bad = df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), **opts)
    assert bad.loc["id1", "llm_error"].startswith("invalid JSON")
    count.clear()
    good = df.llm.map(crashy_child.TEMPLATE + " ", client=make_client(srv), retry_invalid=1, **opts)
    assert good["llm_error"].isna().all() and good.loc["id1", "n"] == len("Row r1: text 1 ")
    assert good.attrs["pdbatch"]["resubmitted"] == 1


def test_token_limit_shard_waits_and_goes_again(make_server, make_client):
    srv = make_server(faults=Faults(batch_failures=["token_limit_exceeded"], request_delay=0.01))
    out = crashy_child.run(make_client(srv))
    assert out["llm_error"].isna().all()
    assert srv.stats.batches_created == 4  # one refused for the token limit, then accepted


def test_store_holds_no_api_key(make_server, pdbatch_home):
    srv = make_server()
    secret = "sk-very-secret-key-0123456789"
    client = srv.client(api_key=secret, max_retries=0)
    crashy_child.run(client)
    assert not default_store().raw_bytes_contain(secret.encode())
    for path in Path(pdbatch_home).rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_job_load_and_jobs_listing(make_server, make_client):
    srv = make_server()
    out = crashy_child.run(make_client(srv))
    job_id = out.attrs["pdbatch"]["job_id"]
    listing = pdbatch.jobs()
    assert job_id in listing["job_id"].tolist()
    row = listing.set_index("job_id").loc[job_id]
    assert row["state"] == "finished" and row["rows"] == 6 and row["backend"] == "batch"
    job = pdbatch.Job.load(job_id, client=make_client(srv))
    again = job.wait(progress=False).result()
    pd.testing.assert_frame_equal(out, again, check_dtype=False)
    with pytest.raises(JobError, match="no job"):
        pdbatch.Job.load("job_nope")


def test_submit_then_load_in_flight(make_server, make_client):
    srv = make_server(faults=Faults(request_delay=0.05))
    job = crashy_child.make_frame(4).llm.submit(crashy_child.TEMPLATE, client=make_client(srv),
                                                 **{k: v for k, v in crashy_child.OPTIONS.items()
                                                    if k not in ("progress", "timeout")})
    other = pdbatch.Job.load(job.id, client=make_client(srv))  # as a restarted kernel would
    out = other.wait(progress=False, timeout=30).result()
    assert out["llm_error"].isna().all() and srv.stats.batches_created == 2


def test_rerun_after_cancel_sends_only_the_rest(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(request_delay=0.1))
    df = crashy_child.make_frame(6)
    opts = {k: v for k, v in crashy_child.OPTIONS.items() if k not in ("progress", "timeout", "shard_size")}
    job = df.llm.submit(crashy_child.TEMPLATE, client=make_client(srv), **opts)
    for _ in range(300):  # bounded: until the first answers are in
        if job.status()["completed"] >= 2:
            break
        time.sleep(0.02)
    job.cancel()
    partial = job.wait(progress=False, timeout=30).result()
    done = int(partial["llm_error"].isna().sum())
    assert 2 <= done < 6
    srv.faults.request_delay = 0.0
    out = df.llm.map(crashy_child.TEMPLATE, client=make_client(srv), **crashy_child.OPTIONS)
    assert out["llm_error"].isna().all()
    assert out.attrs["pdbatch"]["job_id"] != job.id and out.attrs["pdbatch"]["counts"]["cached"] == done
    assert engine.calls == 6  # the rows answered before the cancel were not paid twice


def test_parallel_realtime_runs_pay_once(make_server, tmp_path):
    """Two processes running the same realtime map: every row is sent once, both get every answer."""
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(realtime_latency=0.05))
    a, out_a = start_child(srv, tmp_path, "a", backend="realtime")
    b, out_b = start_child(srv, tmp_path, "b", backend="realtime")
    for p in (a, b):
        p.wait(timeout=90)
        assert p.returncode == 0, p.stderr.read().decode()[-2000:]
    assert engine.calls == 6 and srv.stats.realtime_calls == 6
    pd.testing.assert_frame_equal(pd.read_parquet(out_a), pd.read_parquet(out_b))


def test_result_twice_gives_the_same_frame_after_the_early_parses_are_let_go(make_server, make_client):
    """The first result() uses the answers parsed on arrival and drops them; a second one parses the texts again."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "w": {"type": "string"}},
              "required": ["n", "w"], "additionalProperties": False}
    engine = ScriptedEngine(lambda text, body: json.dumps({"n": len(text), "w": "x"}))
    srv = make_server(engine=engine)
    df = pd.DataFrame({"t": [f"row {i}" * (i % 3 + 1) for i in range(150)]})
    job = df.llm.submit("{t}", model="gpt-4o-mini", response_format=schema,
                        backend=pdbatch.Batch(make_client(srv), poll_interval=0.02,
                                              max_poll_interval=0.05))
    first = job.wait(progress=False, timeout=60).result()
    assert job.hashes is None  # the rows' request hashes are in the store: the join did not hold them
    second = job.result()
    pd.testing.assert_frame_equal(first, second)
    assert first["n"].tolist() == [len(t) for t in df["t"]] and first["llm_error"].isna().all()
    job.record_written()  # what needs them again reads them back from the store, the same
    loaded = pdbatch.Job.load(job.id, client=make_client(srv))
    assert len(job.hashes) == 150 and loaded.hashes.values() == job.hashes.values()
