"""The ``pdbatch`` command line: the main job, bad input, ``pdbatch serve``."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pandas as pd
import pytest

from pdbatch.cli import main

ROOT = Path(__file__).resolve().parent.parent
MOVIES = ROOT / "data" / "movies.csv"
PROMPT = ROOT / "data" / "prompts" / "movies.toml"



def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "map" in text and "serve" in text and "pdbatch map data/movies.csv" in text
    with pytest.raises(SystemExit):
        main(["map", "--help"])
    text = capsys.readouterr().out
    for flag in ("--prompt", "--template", "--system", "--json", "--schema", "--images", "--model", "--backend", "--out"):
        assert flag in text


def test_map_on_batch_api_writes_parquet(batch_env, tmp_path, capsys):
    out = tmp_path / "movies.parquet"
    code = main(["map", str(MOVIES), "--prompt", str(PROMPT), "--out", str(out), "--limit", "4",
                 "--poll-interval", "0.02", "-q", "--backend", "batch"])
    assert code == 0
    df = pd.read_parquet(out)
    assert len(df) == 4 and {"categories", "summary", "llm_error"} <= set(df.columns)
    assert df["llm_error"].isna().all()
    assert batch_env.stats.batches_created == 1
    err = capsys.readouterr().err
    assert "4 answered" in err and "4 requests sent by this run, 0 rows from the cache or an earlier run" in err
    assert main(["map", str(MOVIES), "--prompt", str(PROMPT), "--out", str(out), "--limit", "4", "--overwrite",
                 "--poll-interval", "0.02", "-q", "--backend", "batch"]) == 0  # the same job: nothing sent
    assert "0 requests sent by this run, 4 rows from the cache or an earlier run" in capsys.readouterr().err
    assert batch_env.stats.batches_created == 1


def test_map_csv_output_with_template_and_params(batch_env, tmp_path):
    src = tmp_path / "in.jsonl"
    pd.DataFrame({"word": ["a", "b"]}).to_json(src, orient="records", lines=True)
    out = tmp_path / "out.csv"
    assert main(["map", str(src), "-t", "say {word}", "-m", "gpt-4o-mini", "--param", "temperature=0",
                 "--out", str(out), "--poll-interval", "0.02", "-q"]) == 0
    df = pd.read_csv(out, index_col=0)
    assert df["llm_output"].tolist() == ["say a", "say b"]


def test_map_raw_column_keeps_every_answer_text(batch_env, tmp_path, capsys):
    """``--raw-column NAME`` is ``raw_column=NAME``: the answer text of every row, the failed ones too."""
    src = tmp_path / "in.csv"
    pd.DataFrame({"word": ["a", "b b b b"]}).to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    assert main(["map", str(src), "-t", "say {word}", "-m", "gpt-4o-mini", "--param", "max_completion_tokens=2",
                 "--raw-column", "llm_raw", "--out", str(out), "--poll-interval", "0.02", "-q"]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["word", "llm_output", "llm_raw", "llm_error"]
    assert df["llm_raw"].tolist() == ["say a", "say b"]  # the second answer was cut at 2 words
    assert pd.isna(df["llm_error"].iloc[0]) and df["llm_error"].iloc[1].startswith("truncated")
    assert "1 answered, 1 failed" in capsys.readouterr().err
    # the column is checked before anything is sent, like every other new column
    assert main(["map", str(src), "-t", "say {word}", "-m", "gpt-4o-mini", "--raw-column", "word",
                 "--out", str(tmp_path / "again.parquet"), "-q"]) == 2
    assert "'word'" in capsys.readouterr().err and batch_env.stats.uploads == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["map", "missing.csv", "-t", "x {a}", "-m", "m"], ["INPUT", "not found"]),
        (["map", str(MOVIES), "-t", "{Titel}", "-m", "m"], ["'Titel'", "Series_Title"]),
        (["map", str(MOVIES), "-t", "{Series_Title}", "-m", "m", "--schema", "BAD"], ["--schema"]),
        (["map", str(MOVIES), "-t", "{Series_Title}", "-m", "m", "--out", "x.xlsx"], ["--out", ".parquet"]),
        (["map", str(MOVIES), "-m", "m"], ["template is required"]),
        (["map", str(MOVIES), "-t", "{Series_Title}", "-m", "m", "--param", "temprature=1"], ["'temprature'"]),
    ],
)
def test_bad_input_exits_2_writes_nothing(batch_env, tmp_path, capsys, args, words):
    if "BAD" in args:
        bad = tmp_path / "schema.json"
        bad.write_text('{"type": "objekt"}')
        args = [str(bad) if a == "BAD" else a for a in args]
    args = list(args)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.parquet")]
    else:
        args[args.index("--out") + 1] = str(tmp_path / args[args.index("--out") + 1])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pdbatch: error:") and len(err.splitlines()) == 1
    for w in words:
        assert w in err
    assert list(tmp_path.glob("out*")) == [] and not (tmp_path / "x.xlsx").exists()
    assert batch_env.stats.uploads == 0


def test_invalid_schema_file_json(batch_env, tmp_path, capsys):
    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    assert main(["map", str(MOVIES), "-t", "{Series_Title}", "--schema", str(bad), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert batch_env.stats.uploads == 0


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llama_cpp"), reason="needs pdbatch[local]")
def test_main_job_on_local_model(tmp_path, monkeypatch):
    """The README's main job, on a slice: the shipped prompt on the shipped model."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "movies.parquet"
    assert main(["map", str(MOVIES), "--prompt", str(PROMPT), "--out", str(out), "--limit", "3", "-q"]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 3 and {"categories", "summary", "llm_error"} <= set(df.columns)
    ok = df["llm_error"].isna()
    assert ok.sum() >= 2  # grammar-constrained decoding: schema-valid JSON
    assert df.loc[ok, "summary"].map(lambda s: isinstance(s, str)).all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(tmp_path, *flags):
    """``pdbatch serve --host 127.0.0.1 --port P FLAGS`` in a subprocess; yields ``(client, stderr file)`` once it answers."""
    port, err = free_port(), tmp_path / "serve-stderr.txt"
    with open(err, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pdbatch", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 *flags], stdout=subprocess.DEVNULL, stderr=fh)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.files.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
        yield client, err
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llama_cpp"), reason="needs pdbatch[local]")
def test_serve_local_answers_a_batch(tmp_path):
    """``pdbatch serve --engine local``: the cookbook's client code, only base_url changed."""
    with serving(tmp_path, "--engine", "local", "-q") as (client, _):
        lines = [
            {"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                      "messages": [{"role": "user", "content": f"Say the number {i}."}]}}
            for i in range(2)
        ]
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        f = client.files.create(file=open(path, "rb"), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        for _ in range(1200):
            b = client.batches.retrieve(b.id)
            if b.status in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert b.status == "completed" and b.request_counts.completed == 2
        out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
        assert sorted(o["custom_id"] for o in out) == ["task-0", "task-1"]
        assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in out)
        reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=8,
                                               messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].message.content is not None


@pytest.mark.parametrize("quiet", [False, True])
def test_serve_request_log_unless_quiet(tmp_path, quiet):
    """``pdbatch serve`` logs one line per request on stderr; ``--quiet`` logs none."""
    pytest.importorskip("uvicorn")
    with serving(tmp_path, "--engine", "echo", *(["--quiet"] if quiet else [])) as (client, err):
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content == "hello"
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_missing")
    lines = err.read_text().splitlines()
    assert lines[0].startswith("pdbatch serve: engine echo; point clients at base_url=http://127.0.0.1:")
    log = [line for line in lines[1:] if line.strip()]
    if quiet:
        assert log == []
    else:  # the polls made before the server was up did not connect: only the one answered is logged
        assert [" ".join(line.split()[1:4]) for line in log] == [
            "GET /v1/files 200", "POST /v1/chat/completions 200", "GET /v1/batches/batch_missing 404"]
        assert all(line.endswith(" ms") for line in log)
