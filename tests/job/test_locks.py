"""A call that waits for another process running the same job says so at once, and shows its progress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdbatch.job.locks import holder, job_lock
from pdbatch.errors import JobError
from pdbatch.server import Faults
from pdbatch.server.engines import ScriptedEngine

from tests.job import crashy_child

HERE = Path(__file__).resolve().parent


def held_by(home: Path, pid: int, name: str = "run.lock", seconds: float = 30.0) -> bool:
    """Whether process ``pid`` comes to hold a job's ``name`` lock (bounded)."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.02) + 1):
        if any(holder(str(p)) == pid for p in home.glob(f"jobs/*/{name}")):
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return False


def test_a_second_process_says_whom_it_waits_for_and_shows_its_progress(make_server, make_client, tmp_path,
                                                                          pdbatch_home, capsys):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine, faults=Faults(realtime_latency=0.25))
    out = tmp_path / "child.parquet"
    child = subprocess.Popen([sys.executable, str(HERE / "crashy_child.py"), srv.base_url, str(out), "realtime"],
                             env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert held_by(pdbatch_home, child.pid), child.stderr.read().decode()[-2000:] if child.poll() else ""
        with pytest.warns(UserWarning) as seen:
            mine = crashy_child.run(make_client(srv), backend="realtime", progress=True, max_concurrency=2)
        child.wait(timeout=60)
        assert child.returncode == 0, child.stderr.read().decode()[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    notes = [str(w.message) for w in seen if "is being run by" in str(w.message)]
    assert len(notes) == 1, [str(w.message) for w in seen]
    assert f"is being run by process {child.pid}; waiting for it -- Ctrl-C stops only this wait" in notes[0]
    assert "leaves the job running there" in notes[0]
    assert "(another process)" in capsys.readouterr().err  # the other process's progress, as it ran
    assert engine.calls == 6  # every row sent once, by the other process
    c = mine.attrs["pdbatch"]["counts"]
    assert c["sent"] == 0 and c["cached"] + c["resumed"] == 6 and c["succeeded"] == 6


def test_a_lock_wait_with_a_timeout_names_the_holder(tmp_path):
    workdir = str(tmp_path / "jobs" / "job_x")
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from pdbatch.job.locks import job_lock\n"
            "with job_lock(sys.argv[1], 'run.lock'):\n    print('held', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code, workdir, str(HERE.parents[1])], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"held"
        with pytest.warns(UserWarning, match=f"job job_x is being run by process {child.pid}; waiting"):
            with pytest.raises(JobError, match=f"job job_x is being run by process {child.pid}; it goes on there"):
                with job_lock(workdir, "run.lock", timeout=0.3):
                    pass
    finally:
        child.kill()
        child.wait(timeout=10)
    with job_lock(workdir, "run.lock", timeout=5):  # the holder is gone: taken at once, silently
        assert holder(os.path.join(workdir, "run.lock")) == os.getpid()
