"""``df.llm`` end to end on the batch backend, through the real openai SDK over HTTP
against the local Batch API server (tests/conftest.py). No mocks."""

from __future__ import annotations

import base64
import json
import os
import struct
import time
import zlib

import pandas as pd
import pytest
from pydantic import BaseModel

import pdbatch
from pdbatch.server.engines import ScriptedEngine
from pdbatch.errors import (
    BackendUnavailableError,
    BatchFailedError,
    ColumnCollisionError,
    DuplicateIdError,
    MissingColumnError,
    OptionError,
    SchemaError,
)
from pdbatch.server import Faults

FAST = dict(poll_interval=0.02, max_poll_interval=0.1, progress=False, timeout=30)
MOVIE_SCHEMA = {
    "title": "Movie",
    "type": "object",
    "properties": {
        "categories": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "summary": {"type": "string"},
    },
    "required": ["categories", "summary"],
    "additionalProperties": False,
}


class Movie(BaseModel):
    categories: list[str]
    summary: str


def movie_reply(text, body):
    """Answers that depend on the row, so a row mix-up cannot pass."""
    title = text.split("\n")[0].removeprefix("Title: ")
    return json.dumps({"categories": ["drama", title.lower()], "summary": f"About {title}."})


@pytest.fixture
def movies():
    return pd.DataFrame(
        {
            "Series_Title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"],
            "Overview": ["a first film", "a second", "third one", "fourth", "fifth"],
            "Released_Year": pd.array([1994, 2001, None, 1980, 1975], dtype="Int64"),
        },
        index=pd.Index(["m5", "m3", "m1", "m4", "m2"], name="id"),
    )


def run(df, srv, make_client, template="Title: {Series_Title}\n{Overview}", **kw):
    opts = dict(FAST)
    opts.update(kw)
    return df.llm.map(template, model="gpt-4o-mini", client=make_client(srv), **opts)


def test_text_answers_land_on_their_rows(make_server, make_client, movies):
    srv = make_server()
    out = run(movies, srv, make_client)
    assert out is not movies and list(out.index) == list(movies.index)
    assert list(out.columns) == list(movies.columns) + ["llm_output", "llm_error"]
    for label, row in out.iterrows():
        assert row["llm_output"] == f"Title: {movies.loc[label, 'Series_Title']}\n{movies.loc[label, 'Overview']}"
    assert out["llm_error"].tolist() == [None] * 5
    assert "llm_output" not in movies.columns  # never in place
    summary = out.attrs["pdbatch"]
    assert summary["counts"] == {"rows": 5, "sent": 5, "succeeded": 5, "failed": 0, "skipped": 0, "unknown_ids": 0,
                                 "cached": 0, "resumed": 0, "unanswered": 0}
    assert len(summary["batch_ids"]) == 1 and summary["usage"]["input_tokens"] > 0
    # the server wrote its output in an order different from the input
    batch = srv.batches[summary["batch_ids"][0]]
    out_file = make_client(srv).files.content(batch["output_file_id"] if isinstance(batch, dict) else batch.output_file_id)
    order = [json.loads(line)["custom_id"] for line in out_file.text.splitlines()]
    assert sorted(order) == sorted(movies.index) and order != list(movies.index)


def test_schema_dict_and_pydantic(make_server, make_client, movies):
    engine = ScriptedEngine(movie_reply)
    srv = make_server(engine=engine)
    for rf in (MOVIE_SCHEMA, Movie):
        out = run(movies, srv, make_client, response_format=rf)
        assert list(out.columns[-3:]) == ["categories", "summary", "llm_error"]
        for label in movies.index:
            title = movies.loc[label, "Series_Title"]
            assert out.loc[label, "categories"] == ["drama", title.lower()]
            assert out.loc[label, "summary"] == f"About {title}."
        assert out["llm_error"].isna().all()
    body = engine.bodies[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Movie"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"]["additionalProperties"] is False


def test_json_mode_mentions_json_and_expands_keys(make_server, make_client, movies):
    engine = ScriptedEngine(lambda text, body: json.dumps({"len": len(text), "first": text[7]}))
    srv = make_server(engine=engine)
    out = run(movies, srv, make_client, response_format="json", temperature=0)
    assert list(out.columns[-3:]) == ["len", "first", "llm_error"]
    assert out.loc["m1", "first"] == "G" and out["len"].dtype.kind == "i"
    body = engine.bodies[0]
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0
    assert "JSON" in body["messages"][0]["content"]  # the API requires the prompt to mention JSON


def test_bad_answers_become_error_cells(make_server, make_client):
    replies = {
        "ok": json.dumps({"categories": ["x"], "summary": "fine"}),
        "notjson": "I think it is a drama",
        "schema": json.dumps({"categories": "drama", "summary": "s"}),
        "cut": {"content": '{"categories": ["a"], "summ', "finish_reason": "length"},
        "refuse": {"refusal": "I can't help with that"},
        "toolong": json.dumps({"categories": ["a", "b", "c", "d"], "summary": "s"}),
    }
    srv = make_server(engine=ScriptedEngine(lambda text, body: replies[text]))
    df = pd.DataFrame({"k": list(replies)}, index=list(replies))
    out = run(df, srv, make_client, template="{k}", response_format=MOVIE_SCHEMA)
    err = out["llm_error"]
    assert err["ok"] is None and out.loc["ok", "summary"] == "fine"
    assert err["notjson"].startswith("invalid JSON")
    assert err["schema"].startswith("schema violation at /categories")
    assert err["cut"].startswith("truncated")
    assert err["refuse"] == "refused: I can't help with that"
    assert err["toolong"].startswith("schema violation")
    assert out.loc[["notjson", "schema", "cut", "refuse"], "summary"].isna().all()
    assert out.attrs["pdbatch"]["counts"]["failed"] == 5


def test_index_kinds(make_server, make_client):
    srv = make_server()
    frames = [
        pd.DataFrame({"t": ["x", "y"]}, index=pd.DatetimeIndex(["2024-01-02", "2024-03-04"])),
        pd.DataFrame({"t": ["x", "y"]}, index=pd.MultiIndex.from_tuples([("a", 1), ("a", 2)])),
        pd.DataFrame({"t": ["x", "y", "z"]}, index=[10, 3, 7]),
    ]
    for df in frames:
        out = run(df, srv, make_client, template="{t}!")
        assert out.index.equals(df.index)
        assert out["llm_output"].tolist() == [v + "!" for v in df["t"]]


def test_shards(make_server, make_client, movies):
    srv = make_server()
    out = run(movies, srv, make_client, shard_size=2)
    assert len(out.attrs["pdbatch"]["batch_ids"]) == 3 and srv.stats.batches_created == 3
    assert out["llm_error"].isna().all()
    assert out.loc["m2", "llm_output"].startswith("Title: Epsilon")


def test_error_file_rows(make_server, make_client, movies):
    faults = Faults(error_for=lambda cid, body: (400, "context_length_exceeded", "too long") if cid == "m3" else None)
    srv = make_server(faults=faults)
    out = run(movies, srv, make_client)
    assert out.loc["m3", "llm_error"] == "context_length_exceeded: too long"
    assert pd.isna(out.loc["m3", "llm_output"])
    assert out.drop("m3")["llm_error"].isna().all()


def test_expired_batch_keeps_partial_results(make_server, make_client, movies):
    srv = make_server(faults=Faults(expire_after=2))
    out = run(movies, srv, make_client, max_retries=0)
    assert out.attrs["pdbatch"]["state"] == "expired"
    ok = out["llm_error"].isna()
    assert ok.sum() == 2
    assert all(e.startswith("batch_expired") for e in out.loc[~ok, "llm_error"])
    assert out.loc[ok, "llm_output"].notna().all()


def test_cancelled_job(make_server, make_client, movies):
    srv = make_server(faults=Faults(request_delay=0.15))
    job = movies.llm.submit("{Series_Title}", model="m", client=make_client(srv), poll_interval=0.02)
    assert isinstance(job, pdbatch.Job) and len(job.batch_ids) == 1
    for _ in range(200):  # bounded: until the first answer is in
        if job.status()["completed"] >= 1:
            break
        time.sleep(0.02)
    job.cancel()
    out = job.wait(progress=False, timeout=30).result()
    assert out.attrs["pdbatch"]["state"] == "cancelled"
    done = out["llm_error"].isna()
    assert 1 <= done.sum() < 5
    assert out.loc[done, "llm_output"].notna().all()
    assert all(e.startswith("batch_cancelled") for e in out.loc[~done, "llm_error"])


def test_missing_values_are_not_sent(make_server, make_client, movies):
    engine = ScriptedEngine(lambda text, body: json.dumps({"n": 1}) if body.get("response_format") else "ok")
    srv = make_server(engine=engine)
    movies.loc["m4", "Overview"] = None
    out = run(movies, srv, make_client, template="{Series_Title} ({Released_Year}) {Overview}")
    jout = run(movies, srv, make_client, template="{Series_Title} ({Released_Year}) {Overview}",
               response_format={"type": "object", "properties": {"n": {"type": "integer"}}})
    assert jout["n"].dtype == "Int64" and jout["n"].isna().sum() == 2  # integers stay integers beside gaps
    assert out.loc["m1", "llm_error"] == "missing value in column 'Released_Year'"
    assert out.loc["m4", "llm_error"] == "missing value in column 'Overview'"
    assert engine.calls == 6
    sent = [b["messages"][-1]["content"] for b in engine.bodies]
    assert "Alpha (1994) a first film" in sent  # nullable integers render as integers
    assert out.attrs["pdbatch"]["counts"]["skipped"] == 2


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda df, c: df.llm.map("{Titel}", model="m", client=c), MissingColumnError, ["'Titel'", "Series_Title"]),
        (lambda df, c: df.llm.map("{Series_Title}", system="Use {nope}", model="m", client=c),
         MissingColumnError, ["system", "'nope'"]),
        (lambda df, c: df.set_axis(["a", "b", "a", "c", "d"]).llm.map("{Series_Title}", model="m", client=c),
         DuplicateIdError, ["'a'", "reset_index()"]),
        (lambda df, c: df.set_axis([1, "1", 2, 3, 4]).llm.map("{Series_Title}", model="m", client=c),
         DuplicateIdError, ["'1'"]),
        (lambda df, c: df.assign(llm_output=1).llm.map("{Series_Title}", model="m", client=c),
         ColumnCollisionError, ["'llm_output'", "overwrite=True"]),
        (lambda df, c: df.assign(summary=1).llm.map("{Series_Title}", model="m", client=c, response_format=Movie),
         ColumnCollisionError, ["'summary'"]),
        (lambda df, c: df.llm.map("{Series_Title}", model="m", client=c, response_format={"type": "objekt"}),
         SchemaError, ["not a valid JSON Schema"]),
        (lambda df, c: df.llm.map("{Series_Title}", model="m", client=c, response_format={"type": "array"}),
         SchemaError, ["top level", "object"]),
        (lambda df, c: df.llm.map("{Series_Title}", model="m", client=c, temprature=0.2),
         OptionError, ["'temprature'", "temperature"]),
        (lambda df, c: df.llm.map("{Series_Title", model="m", client=c), pdbatch.errors.TemplateError, ["template"]),
        (lambda df, c: df.llm.map("{}", model="m", client=c), pdbatch.errors.TemplateError, ["positional"]),
        (lambda df, c: df.llm.map("{Series_Title}", client=c), OptionError, ["model="]),
        (lambda df, c: df.llm.map("{Series_Title}", model="m", client=c, images="poster"),
         MissingColumnError, ["images", "'poster'"]),
    ],
)
def test_bad_input_raises_before_upload(make_server, make_client, movies, call, error, words):
    srv = make_server()
    before = movies.copy()
    with pytest.raises(error) as info:
        call(movies, make_client(srv))
    for w in words:
        assert w in str(info.value)
    assert isinstance(info.value, pdbatch.PdbatchError)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0
    pd.testing.assert_frame_equal(movies, before)


def test_overwrite_replaces_columns(make_server, make_client, movies):
    srv = make_server()
    out = run(movies.assign(llm_output="old"), srv, make_client, overwrite=True)
    assert out["llm_output"].str.startswith("Title:").all()
    assert list(out.columns).count("llm_output") == 1


def test_series_map(make_server, make_client):
    srv = make_server(engine=ScriptedEngine(lambda text, body: json.dumps({"n": len(text)}) if body.get("response_format") else text[::-1]))
    s = pd.Series(["abc", None, "hello"], index=["x", "y", "z"], name="word")
    out = s.llm.map("{}", model="m", client=make_client(srv), **FAST)
    assert isinstance(out, pd.Series) and out.to_dict() == {"x": "cba", "y": None, "z": "olleh"} or \
        (out["x"] == "cba" and out["z"] == "olleh" and pd.isna(out["y"]))
    assert out.attrs["pdbatch"]["errors"] == {"y": "missing value in column 'value'"}
    out = s.llm.map("{value}", model="m", client=make_client(srv), response_format="json", **FAST)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["n", "llm_error"]
    assert out.loc["z", "n"] == len("hello\n\nAnswer with a JSON object.") or out.loc["z", "n"] > 0


def tiny_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"\x00\xff\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_vision_url_and_local_png(make_server, make_client, tmp_path):
    png = tmp_path / "kettle.png"
    png.write_bytes(tiny_png())
    engine = ScriptedEngine(lambda text, body: "a caption")
    srv = make_server(engine=engine)
    df = pd.DataFrame(
        {"title": ["Kettle", "Mug", "Lamp"],
         "image": [str(png), "https://example.com/mug.jpg", str(tmp_path / "missing.png")]}
    )
    out = run(df, srv, make_client, template="Product: {title}", images="image", image_detail="low")
    assert out.loc[0, "llm_output"] == "a caption" and out.loc[1, "llm_output"] == "a caption"
    assert out.loc[2, "llm_error"].startswith("image file not found")
    assert engine.calls == 2
    parts = {b["messages"][-1]["content"][0]["text"]: b["messages"][-1]["content"][1] for b in engine.bodies}
    assert parts["Product: Kettle"]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    assert parts["Product: Mug"]["image_url"] == {"url": "https://example.com/mug.jpg", "detail": "low"}


def test_batch_file_round_trip(make_server, make_client, movies, tmp_path, wait_batch):
    """to_batch_file, a hand-run batch with the SDK, then read_results: the same frame as map."""
    srv = make_server(engine=ScriptedEngine(movie_reply))
    client = make_client(srv)
    paths = movies.llm.to_batch_file(tmp_path / "in.jsonl", "Title: {Series_Title}\n{Overview}", model="gpt-4o-mini",
                                     response_format=MOVIE_SCHEMA, temperature=0.1)
    assert paths == [str(tmp_path / "in.jsonl")] and srv.stats.uploads == 0
    lines = [json.loads(x) for x in open(paths[0])]
    assert [x["custom_id"] for x in lines] == list(movies.index)
    assert lines[0]["body"]["temperature"] == 0.1 and lines[0]["url"] == "/v1/chat/completions"
    up = client.files.create(file=open(paths[0], "rb"), purpose="batch")
    batch = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_batch(client, batch.id)
    out_path = tmp_path / "out.jsonl"
    out_path.write_bytes(client.files.content(batch.output_file_id).content)
    got = movies.llm.read_results([str(out_path)], "Title: {Series_Title}\n{Overview}", response_format=MOVIE_SCHEMA)
    expected = run(movies, srv, make_client, response_format=MOVIE_SCHEMA)
    pd.testing.assert_frame_equal(got, expected)


def test_to_batch_file_shards(movies, tmp_path):
    paths = movies.llm.to_batch_file(tmp_path / "in.jsonl", "{Series_Title}", model="m", shard_size=2)
    assert [os.path.basename(p) for p in paths] == ["in-0000.jsonl", "in-0001.jsonl", "in-0002.jsonl"]
    assert sum(1 for p in paths for _ in open(p)) == 5


SHAPES = {
    "text": ("{Series_Title}", {}),
    "const-system": ("T: {Series_Title}\n{Overview}", {"system": 'Say "hi" 100% \u2713 %s {{x}}', "seed": 3}),
    "row-system": ("{Overview}", {"system": "Films of {Released_Year}: 100%"}),
    "json": ("{Series_Title} as JSON", {"response_format": "json", "temperature": 0}),
    "schema": ("{Series_Title}", {"response_format": MOVIE_SCHEMA, "extra_body": {"metadata": {"k": [1, 2]}}}),
    "pydantic": ("{Series_Title}", {"response_format": Movie, "max_completion_tokens": 50}),
    "images": ("{Series_Title}", {"images": "https://example.com/{Series_Title}.png", "image_detail": "low"}),
    # a system prompt holding the splice marker: the lines are made the slow way, with the same bytes
    "marker": ("{Series_Title}", {"system": "\x00pdbatch:slot:0\x00"}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_to_batch_file_bytes_are_the_requests_map_sends(movies, tmp_path, shape):
    from pdbatch.core.ids import custom_ids
    template, opts = SHAPES[shape]
    paths = movies.llm.to_batch_file(tmp_path / "in.jsonl", template, model="gpt-4o-mini", **opts)
    from pdbatch.core.spec import MapSpec
    spec_args = ("system", "response_format", "images", "image_detail", "extra_body")
    spec = MapSpec.build(template, columns=list(movies.columns), model="gpt-4o-mini",
                         params={k: v for k, v in opts.items() if k not in spec_args},
                         **{k: v for k, v in opts.items() if k in spec_args})
    rendered = spec.render(movies, custom_ids(movies.index))
    expected = b"".join(r.to_line() for r in spec.requests(rendered))
    assert open(paths[0], "rb").read() == expected
    assert len(expected.splitlines()) == (4 if shape == "row-system" else 5)  # Released_Year has a gap


def test_to_batch_file_warns_about_rows_too_large_for_a_file(movies, tmp_path):
    big = movies.assign(Overview=["x" * 5000 if i == 2 else "short" for i in range(5)])
    with pytest.warns(UserWarning, match=rf"1 request\(s\) left out .*custom_id '{movies.index[2]}'.*shard_bytes="):
        paths = big.llm.to_batch_file(tmp_path / "in.jsonl", "{Overview}", model="m", shard_bytes=2000)
    ids = [json.loads(x)["custom_id"] for p in paths for x in open(p)]
    assert ids == [str(i) for k, i in enumerate(movies.index) if k != 2]


def test_validation_failure_raises_with_server_errors(make_server, make_client, movies):
    srv = make_server(faults=Faults(max_lines=3))
    with pytest.raises(BatchFailedError) as info:
        run(movies, srv, make_client)
    assert "failed validation" in str(info.value) and info.value.errors


def test_create_retried_after_server_error_without_duplicates(make_server, make_client, movies):
    srv = make_server(faults=Faults(http_errors={"POST /v1/batches": [500]}))
    out = run(movies, srv, make_client)
    assert out["llm_error"].isna().all()
    assert srv.stats.batches_created == 1
    assert [s for m, p, s in srv.stats.log if m == "POST" and p == "/v1/batches"] == [500, 200]


def test_wait_false_returns_job(make_server, make_client, movies):
    srv = make_server(faults=Faults(request_delay=0.05))
    job = movies.llm.map("{Series_Title}", model="m", client=make_client(srv), wait=False, poll_interval=0.02)
    assert isinstance(job, pdbatch.Job) and job.id in repr(job)
    with pytest.raises(pdbatch.errors.JobError, match="job.wait"):
        job.result()  # still running
    out = job.wait(progress=False, timeout=30).result()
    assert out["llm_output"].tolist() == movies["Series_Title"].tolist()


def test_no_key_no_client_is_a_clear_error(movies, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendUnavailableError, match="OPENAI_API_KEY"):
        movies.llm.map("{Series_Title}", model="m", backend="batch")


def test_accessor_rejects_other_hosts():
    with pytest.raises(AttributeError):
        pdbatch.LLMAccessor([1, 2])
