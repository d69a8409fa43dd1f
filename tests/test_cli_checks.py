"""What cannot succeed is refused before the upload: the command line's checks.

Each bad command exits 2 with one line naming the flag, uploads nothing to the
local Batch API server (real ``openai`` SDK over HTTP), writes no output and
leaves the input file as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch.cli import main



@pytest.fixture
def data(tmp_path):
    """A small CSV input in its own directory; returns (input path, work dir)."""
    work = tmp_path / "work"
    work.mkdir()
    src = work / "in.csv"
    pd.DataFrame({"word": ["a", "b", "c"]}).to_csv(src, index=False)
    return src, work


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory no file can be created in: a read-only one, else (as root) /sys; skip if none."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    for cand in (locked, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        os.close(fd)
        os.remove(probe)
    pytest.skip("every directory is writable here")


def refused(capsys, srv, args, words, src: Path, work: Path):
    """Run ``args``: exit 2, one error line with ``words``, nothing sent, input unchanged, no file left."""
    before = src.read_bytes()
    files = sorted(work.rglob("*"))
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pdbatch: error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0
    assert src.read_bytes() == before
    assert sorted(work.rglob("*")) == files  # no output, no probe file left behind
    return err


def test_out_that_is_a_directory(batch_env, data, capsys):
    src, work = data
    (work / "results").mkdir()
    (work / "results.parquet").mkdir()
    for out in ("results", "results.parquet"):
        refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--out", work / out],
                ["--out", "is a directory", os.path.join(str(work / out), "out.parquet")], src, work)


def test_out_that_is_the_input(batch_env, data, capsys):
    src, work = data
    (work / "sub").mkdir()
    for out in (src, work / "sub" / ".." / "in.csv"):
        refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--out", out],
                ["--out", "is the INPUT file", "in.llm.csv"], src, work)


def test_out_in_an_unwritable_place(batch_env, data, tmp_path, capsys):
    src, work = data
    place = unwritable_dir(tmp_path)
    refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--out", place / "out.parquet"],
            ["--out", f"cannot create a file in {place}", "directory you can write to"], src, work)
    assert not (place / "out.parquet").exists()


def test_out_in_a_format_that_cannot_hold_the_result(batch_env, tmp_path, capsys):
    """A Period column (kept by Parquet) cannot be written as JSON: refused before the upload, not after."""
    work = tmp_path / "work"
    work.mkdir()
    src = work / "in.parquet"
    pd.DataFrame({"month": pd.period_range("2024-01", periods=2, freq="M"), "word": ["a", "b"]}).to_parquet(src)
    refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--out", work / "out.jsonl"],
            ["--out", "the result cannot be written as jsonl", "Unable to serialize", "another format"], src, work)
    # The same input into a format that can hold it runs, and leaves no probe file behind.
    out = work / "out.parquet"
    assert main(["map", str(src), "-t", "say {word}", "-m", "m", "--out", str(out), "--poll-interval", "0.02",
                 "-q"]) == 0
    assert pd.read_parquet(out)["llm_output"].tolist() == ["say a", "say b"]
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet", "out.parquet"]
    assert batch_env.stats.batches_created == 1


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_below_one(batch_env, data, capsys, limit):
    src, work = data
    refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--limit", limit,
                                "--out", work / "out.parquet"],
            ["--limit must be a whole number >= 1", f"got {limit}", "leave it out"], src, work)


def test_jobs_limit_below_one(batch_env, data, capsys):
    src, work = data
    refused(capsys, batch_env, ["jobs", "--limit", "0"], ["--limit must be a whole number >= 1", "got 0"], src, work)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_poll_interval_goes_through_the_option_checks(batch_env, data, capsys, value):
    src, work = data
    refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--poll-interval", value,
                                "--out", work / "out.parquet"],
            ["--poll-interval must be a number of seconds > 0", "got"], src, work)


@pytest.mark.parametrize("params, shown", [
    ('params = "hot"', "'hot'"),
    ("params = [1, 2]", "[1, 2]"),
    ("params = 0.2", "0.2"),
])
def test_prompt_params_must_be_a_table(batch_env, data, capsys, params, shown):
    src, work = data
    prompt = work / "p.toml"
    prompt.write_text(f'template = "say {{word}}"\nmodel = "m"\n{params}\n')
    refused(capsys, batch_env, ["map", src, "--prompt", prompt, "--out", work / "out.parquet"],
            ["--prompt", "params", "must be a table", shown, "[params]"], src, work)


@pytest.mark.parametrize("line, words", [
    ('modle = "m"', ["'modle'", "did you mean 'model'", "known keys: template"]),
    ('sytem = "be brief"', ["'sytem'", "did you mean 'system'"]),
    ('zzz = 1', ["'zzz'", "rename or drop it", "known keys:"]),
])
def test_prompt_unknown_key_names_the_closest(batch_env, data, capsys, line, words):
    src, work = data
    prompt = work / "p.toml"
    prompt.write_text(f'template = "say {{word}}"\nmodel = "m"\n{line}\n')
    err = refused(capsys, batch_env, ["map", src, "--prompt", prompt, "--out", work / "out.parquet"],
                  ["--prompt", "unknown key", *words], src, work)
    if line.startswith("zzz"):
        assert "did you mean" not in err


def test_prompt_params_table_is_used(batch_env, data, capsys):
    src, work = data
    prompt = work / "p.toml"
    prompt.write_text('template = "say {word}"\nmodel = "m"\n[params]\ntemperature = 0\n')
    out = work / "out.parquet"
    assert main(["map", str(src), "--prompt", str(prompt), "--out", str(out), "--poll-interval", "0.02", "-q"]) == 0
    assert pd.read_parquet(out)["llm_output"].tolist() == ["say a", "say b", "say c"]


@pytest.mark.parametrize("param, words", [
    ("n=2", ["n=2", "n must be 1", "cache=False", "index.repeat"]),
    ('extra_body={"model": "gpt-4o"}', ["extra_body may not set 'model'", "use model="]),
    ('extra_body={"response_format": {"type": "json_object"}}',
     ["extra_body may not set 'response_format'", "use response_format="]),
    ('extra_body={"stream": true}', ["extra_body may not set 'stream'"]),
])
def test_request_body_params_are_checked_before_the_upload(batch_env, data, capsys, param, words):
    src, work = data
    refused(capsys, batch_env, ["map", src, "-t", "say {word}", "-m", "m", "--param", param,
                                "--out", work / "out.parquet"], words, src, work)


@pytest.fixture
def finished(batch_env, capsys):
    """A finished batch job started from Python; returns its id."""
    out = pd.DataFrame({"word": ["a", "b"]}).llm.map("say {word}", model="m", progress=False, timeout=30,
                                                     poll_interval=0.02)
    capsys.readouterr()
    assert batch_env.stats.batches_created == 1
    return out.attrs["pdbatch"]["job_id"]


@pytest.mark.parametrize("args, words", [
    (["--timeout", "0"], ["--timeout must be a number of seconds > 0", "got 0"]),
    (["--poll-interval", "-1"], ["--poll-interval must be a number of seconds > 0", "got -1"]),
    (["--out", "DIR"], ["--out", "is a directory"]),
])
def test_result_checks_its_flags_before_waiting(batch_env, finished, tmp_path, capsys, args, words):
    work = tmp_path / "res"
    work.mkdir()
    (work / "DIR").mkdir()
    args = [str(work / a) if a == "DIR" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(work / "out.parquet")]
    assert main(["result", finished, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pdbatch: error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert sorted(p.name for p in work.iterdir()) == ["DIR"]
    assert batch_env.stats.batches_created == 1 and batch_env.stats.uploads == 1
    assert main(["result", finished, "--out", str(work / "ok.parquet"), "-q"]) == 0  # the job is as it was
    assert pd.read_parquet(work / "ok.parquet")["llm_output"].tolist() == ["say a", "say b"]


def test_result_of_a_series_job_refuses_parquet_before_waiting(batch_env, tmp_path, capsys):
    """A map over a Series gives a Series, which has no Parquet form; CSV takes it."""
    job = pd.Series(["a", "b"], name="w").llm.map("say {}", model="m", wait=False, poll_interval=0.02)
    uploads = batch_env.stats.uploads
    assert main(["result", job.id, "--out", str(tmp_path / "out.parquet"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "cannot be written as parquet" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.parquet").exists() and batch_env.stats.uploads == uploads
    assert main(["result", job.id, "--out", str(tmp_path / "out.csv"), "-q"]) == 0
    assert pd.read_csv(tmp_path / "out.csv", index_col=0)["llm_output"].tolist() == ["say a", "say b"]
