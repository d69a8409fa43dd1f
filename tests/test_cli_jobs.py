"""``pdbatch jobs / status / result / cancel``: jobs started by ``df.llm.map`` with the
environment a user sets (OPENAI_API_KEY / OPENAI_BASE_URL pointing at the local
server), then looked after from the command line. No mocks."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

import pdbatch
from pdbatch.cli import main
from pdbatch.pricing.prices import cost
from pdbatch.core.records import Usage
from pdbatch.server import Faults

FAST = dict(model="gpt-4o-mini", poll_interval=0.02, max_poll_interval=0.05)


def frame(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"word": [f"w{i}" for i in range(n)]}, index=[f"r{i}" for i in range(n)])


@pytest.fixture
def env(make_server, monkeypatch):
    """A factory: start a server (optionally slow) and point the user's environment at it."""

    def start(**faults):
        srv = make_server(faults=Faults(**faults) if faults else None)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-jobs-key")
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        return srv

    return start


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def finished_job(env, capsys):
    srv = env()
    out = frame().llm.map("say {word}", progress=False, timeout=30, **FAST)
    capsys.readouterr()
    return srv, out.attrs["pdbatch"]["job_id"], out


def test_help_lists_the_job_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("jobs", "status", "cancel", "result", "pdbatch result JOB_ID --out out.parquet"):
        assert word in text
    for cmd, flags in (("result", ("--out", "--overwrite", "--timeout", "--poll-interval", "--quiet")),
                       ("status", ("--json", "OPENAI_API_KEY")), ("jobs", ("--limit",)), ("cancel", ("ID",))):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (cmd, flag)


def test_jobs_lists_the_store(env, capsys):
    code, out, err = run(capsys, "jobs")
    assert code == 0 and out == "" and "no jobs" in err
    srv, job_id, _ = finished_job(env, capsys)
    code, out, _ = run(capsys, "jobs")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == ["job_id", "created", "backend", "model", "rows", "state", "done", "failed"]
    cells = row.split()
    assert cells[0] == job_id and "batch" in cells and "gpt-4o-mini" in cells and "finished" in cells
    assert cells[-2:] == ["4", "0"]  # done, failed
    assert srv.stats.batches_created == 1


def test_status_shows_state_batches_tokens_and_cost(env, capsys):
    srv, job_id, out = finished_job(env, capsys)
    code, text, _ = run(capsys, "status", job_id)
    assert code == 0
    batch_id = out.attrs["pdbatch"]["batch_ids"][0]
    for word in (job_id, "state: completed", "4 sent, 4 completed, 0 failed", f"{batch_id} (completed)",
                 "estimated cost: $", "Batch API, 50% off"):
        assert word in text, word
    usage = out.attrs["pdbatch"]["usage"]
    assert f"{usage['input_tokens']} input ({usage['cached_tokens']} cached), {usage['output_tokens']} output" in text

    code, text, _ = run(capsys, "status", job_id, "--json")
    st = json.loads(text)
    assert st["state"] == "completed" and st["batch_ids"] == [batch_id] and st["usage"] == usage
    assert st["cost"] == cost(Usage(usage["input_tokens"], usage["output_tokens"], usage["cached_tokens"]),
                              "gpt-4o-mini", batch=True)
    assert srv.stats.batches_created == 1 and srv.stats.uploads == 1  # looking never resubmits


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_result_waits_then_writes_by_suffix(env, capsys, tmp_path, suffix):
    srv = env(request_delay=0.02)
    job = frame(6).llm.map("say {word}", wait=False, **FAST)
    path = tmp_path / f"x{suffix}"
    code, _, err = run(capsys, "result", job.id, "--out", str(path), "-q", "--poll-interval", "0.02",
                       "--timeout", "30")
    assert code == 0 and f"wrote {path}: 6 rows, 6 answered" in err and "cost $" in err
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix == ".csv":
        df = pd.read_csv(path, index_col=0)
    else:
        df = pd.read_json(path, lines=True)
    assert df["llm_output"].tolist() == [f"say w{i}" for i in range(6)]
    assert srv.stats.batches_created == 1
    assert not list(tmp_path.glob("*.part"))


def test_result_shows_progress_unless_quiet(env, capsys, tmp_path):
    _, job_id, _ = finished_job(env, capsys)
    code, _, err = run(capsys, "result", job_id, "--out", str(tmp_path / "o.parquet"))
    assert code == 0 and "pdbatch" in err and "4/4" in err  # the tqdm bar
    code, _, err = run(capsys, "result", job_id, "--out", str(tmp_path / "o.parquet"), "-q", "--overwrite")
    assert code == 0 and "4/4" not in err


def test_cancel_a_slow_job_then_write_what_finished(env, capsys, tmp_path):
    srv = env(request_delay=0.2)  # 20 rows: ~4 s of work, cancelled long before
    job = frame(20).llm.map("say {word}", wait=False, **FAST)
    code, text, _ = run(capsys, "cancel", job.id)
    assert code == 0 and "cancel requested" in text
    assert srv.stats.calls("POST", "/v1/batches/*/cancel") == 1
    deadline = time.monotonic() + 20
    for _ in range(200):  # the server finishes cancelling in its own time
        code, text, _ = run(capsys, "status", job.id)
        if "state: cancelled" in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "state: cancelled" in text
    path = tmp_path / "x.parquet"
    code, _, err = run(capsys, "result", job.id, "--out", str(path), "-q", "--timeout", "30")
    assert code == 0
    df = pd.read_parquet(path)
    done = df["llm_error"].isna()
    assert len(df) == 20 and done.sum() < 20
    assert df.loc[~done, "llm_error"].str.startswith("batch_cancelled").all()
    assert (df.loc[done, "llm_output"] == "say " + df.loc[done, "word"]).all()
    code, text, _ = run(capsys, "cancel", job.id)
    assert code == 0 and "nothing to cancel" in text
    assert srv.stats.calls("POST", "/v1/batches/*/cancel") == 1 and srv.stats.batches_created == 1


@pytest.mark.parametrize("args", [["status", "job_nope"], ["cancel", "job_nope"],
                                  ["result", "job_nope", "--out", "OUT"], ["status", "job_nope", "--json"]])
def test_unknown_id_exits_2_with_one_line(env, capsys, tmp_path, args):
    srv = env()
    args = [str(tmp_path / "o.parquet") if a == "OUT" else a for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    err = err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pdbatch: error:") and "'job_nope'" in err
    assert "pdbatch jobs" in err
    assert not (tmp_path / "o.parquet").exists() and srv.stats.log == []


def test_result_bad_out_suffix_exits_2_before_waiting(env, capsys, tmp_path):
    _, job_id, _ = finished_job(env, capsys)
    code, _, err = run(capsys, "result", job_id, "--out", str(tmp_path / "o.xlsx"))
    assert code == 2 and "--out" in err and not list(tmp_path.glob("o.*"))


def test_status_of_a_batch_job_needs_the_key(env, capsys, monkeypatch):
    _, job_id, _ = finished_job(env, capsys)
    monkeypatch.delenv("OPENAI_API_KEY")
    code, out, err = run(capsys, "status", job_id)
    assert code == 1 and out == "" and "OPENAI_API_KEY" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "jobs")  # listing needs no key
    assert code == 0 and job_id in out and pdbatch.jobs()["job_id"].tolist() == [job_id]
