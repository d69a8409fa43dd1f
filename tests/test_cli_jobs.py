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
from pdbatch.pricing import reset_prices, set_price
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


@pytest.fixture(autouse=True)
def _prices():
    reset_prices()
    yield
    reset_prices()


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
    assert header.split() == ["job_id", "name", "created", "backend", "model", "rows", "state", "done", "failed",
                              "not_answered"]
    cells = row.split()
    assert cells[0] == job_id and "batch" in cells and "gpt-4o-mini" in cells and "finished" in cells
    assert " say {word} " in row  # the name: the template's first words
    assert cells[-3:] == ["4", "0", "0"]  # done, failed, not answered
    assert srv.stats.batches_created == 1


def test_status_shows_state_batches_tokens_and_cost(env, capsys):
    srv, job_id, out = finished_job(env, capsys)
    code, text, _ = run(capsys, "status", job_id)
    assert code == 0
    batch_id = out.attrs["pdbatch"]["batch_ids"][0]
    for word in (job_id, "(say {word})", "state: completed", "4 sent, 4 completed, 0 failed\n",
                 f"{batch_id} (completed)", "rows: 4 (0 skipped, 0 from pdbatch's answer cache)"):
        assert word in text, word
    usage = out.attrs["pdbatch"]["usage"]
    assert (f"tokens paid (answers stored so far): {usage['input_tokens']} input ({usage['cached_tokens']} at the "
            f"cached-input rate), {usage['output_tokens']} output") in text
    # The local server is not OpenAI's API: its prices are unknown, whatever OpenAI charges for the model.
    assert "estimated cost: unknown" in text and f"on {srv.base_url.rstrip('/')}" in text
    assert out.attrs["pdbatch"]["cost"] is None and "OpenAI's" in out.attrs["pdbatch"]["cost_note"]

    set_price("gpt-4o-mini", input=1.0, cached_input=0.5, output=2.0)  # the user prices that server
    code, text, _ = run(capsys, "status", job_id, "--json")
    st = json.loads(text)
    assert st["state"] == "completed" and st["batch_ids"] == [batch_id] and st["usage"] == usage
    assert st["cost"] == cost(Usage(usage["input_tokens"], usage["output_tokens"], usage["cached_tokens"]),
                              "gpt-4o-mini", batch=True) and st["cost"]["source"] == "set_price"
    code, text, _ = run(capsys, "status", job_id)
    assert "estimated cost: $" in text and "Batch API, 50% off" in text
    assert srv.stats.batches_created == 1 and srv.stats.uploads == 1  # looking never resubmits


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_result_waits_then_writes_by_suffix(env, capsys, tmp_path, suffix):
    srv = env(request_delay=0.02)
    job = frame(6).llm.map("say {word}", wait=False, **FAST)
    path = tmp_path / f"x{suffix}"
    code, _, err = run(capsys, "result", job.id, "--out", str(path), "-q", "--poll-interval", "0.02",
                       "--timeout", "30")
    assert code == 0 and f"wrote {path}: 6 rows, 6 answered" in err and "cost unknown" in err  # a local server
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


def test_cancel_a_slow_job_then_write_what_finished(env, capsys, tmp_path, monkeypatch):
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
    code, text, _ = run(capsys, "status", job.id)  # the cancelled requests, as they are
    left = int((~done).sum())
    assert f"requests: 20 sent, {20 - left} completed, 0 failed; cancelled: {left} not answered" in text
    code, text, _ = run(capsys, "jobs")
    assert text.splitlines()[1].split()[-4:] == ["cancelled", str(20 - left), "0", str(left)]
    code, text, _ = run(capsys, "cancel", job.id)
    assert code == 0 and "nothing to cancel" in text
    assert srv.stats.calls("POST", "/v1/batches/*/cancel") == 1 and srv.stats.batches_created == 1
    monkeypatch.delenv("OPENAI_API_KEY")  # a cancelled job is known from the store
    code, text, _ = run(capsys, "cancel", job.id)
    assert code == 0 and f"job {job.id} is already cancelled: nothing to cancel" in text


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


def test_status_of_a_finished_job_works_offline(env, capsys, monkeypatch):
    srv, job_id, out = finished_job(env, capsys)
    calls = len(srv.stats.log)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    code, text, err = run(capsys, "status", job_id)
    assert code == 0 and err == ""
    assert "state: completed" in text and "4 sent, 4 completed, 0 failed" in text
    assert f"{out.attrs['pdbatch']['batch_ids'][0]} (completed)" in text
    code, text, _ = run(capsys, "status", job_id, "--json")
    st = json.loads(text)
    assert code == 0 and st["usage"] == out.attrs["pdbatch"]["usage"] and st["not_answered"] == 0
    code, text, _ = run(capsys, "jobs")  # listing needs no key
    assert code == 0 and job_id in text and pdbatch.jobs()["job_id"].tolist() == [job_id]
    srv.stop()  # not even a server: nothing is asked
    code, text, _ = run(capsys, "status", job_id)
    assert code == 0 and "state: completed" in text and len(srv.stats.log) == calls


def test_status_of_an_unfinished_job_needs_the_key(env, capsys, monkeypatch):
    env(request_delay=0.5)
    job = frame(4).llm.map("say {word}", wait=False, **FAST)
    monkeypatch.delenv("OPENAI_API_KEY")
    code, out, err = run(capsys, "status", job.id)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "OPENAI_API_KEY" in err and f"job {job.id} is submitted, not finished" in err


def test_status_separates_paid_tokens_from_cached_rows(env, capsys):
    srv = env()
    first = frame(4).llm.map("say {word}", progress=False, timeout=30, **FAST)
    out = frame(6).llm.map("say {word}", progress=False, timeout=30, **FAST)  # 4 rows from the cache
    capsys.readouterr()
    assert out.attrs["pdbatch"]["counts"]["cached"] == 4 and out.attrs["pdbatch"]["counts"]["sent"] == 2
    old, both = first.attrs["pdbatch"]["usage"], out.attrs["pdbatch"]["usage"]
    assert out.attrs["pdbatch"]["usage_from_cache"]["input_tokens"] == old["input_tokens"]
    paid_in, paid_out = both["input_tokens"] - old["input_tokens"], both["output_tokens"] - old["output_tokens"]
    set_price("gpt-4o-mini", input=1.0, output=2.0)
    code, text, _ = run(capsys, "status", out.attrs["pdbatch"]["job_id"])
    assert code == 0
    assert "2 sent, 2 completed, 0 failed" in text and "rows: 6 (0 skipped, 4 from pdbatch's answer cache)" in text
    assert f"tokens paid (answers stored so far): {paid_in} input (0 at the cached-input rate), {paid_out} output" in text
    assert (f"tokens of the 4 row(s) from pdbatch's answer cache (paid by an earlier job): {old['input_tokens']} "
            f"input, {old['output_tokens']} output") in text
    st = json.loads(run(capsys, "status", out.attrs["pdbatch"]["job_id"], "--json")[1])
    assert st["cost"] == cost(Usage(paid_in, paid_out), "gpt-4o-mini", batch=True)
    assert srv.stats.batches_created == 2


def test_map_name_flag_names_the_job(env, capsys, tmp_path):
    env()
    src = tmp_path / "in.csv"
    frame(3).to_csv(src)
    code = main(["map", str(src), "-t", "say {word}", "-m", "gpt-4o-mini", "--name", "nightly words",
                 "--poll-interval", "0.02", "--out", str(tmp_path / "o.parquet"), "-q"])
    assert code == 0 and pdbatch.jobs()["name"].tolist() == ["nightly words"]
    code, text, _ = run(capsys, "jobs")
    assert " nightly words " in text.splitlines()[1]
