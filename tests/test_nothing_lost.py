"""Issue 10, "nothing lost, nothing paid in vain", end to end on the batch backend: through the real
openai SDK over HTTP against the local Batch API server (tests/conftest.py). No mocks.

* a corrupt line in a downloaded output file fails its own row only (and that row is sent again);
* answer keys that name existing columns land in ``<key>_llm`` columns, with a warning;
* pydantic Enum fields come back as JSON values (Parquet-ready); the frame's own attrs are kept.
"""

from __future__ import annotations

import enum
import json
import logging

import pandas as pd
import pytest
from pydantic import BaseModel

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch.server.engines import ScriptedEngine

FAST = dict(poll_interval=0.02, max_poll_interval=0.1, progress=False, timeout=30, cache=False)


@pytest.fixture
def words():
    return pd.DataFrame({"w": ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]},
                        index=pd.Index(list("abcdef"), name="k"))


def corrupt_output(srv, batch_id, truncate: str, garble: str) -> None:
    """Cut the line of the row whose answer is ``truncate`` after its custom_id; replace ``garble``'s by junk."""
    path = srv.file_path(srv.batches[batch_id]["output_file_id"])
    lines = path.read_bytes().splitlines(keepends=True)
    out = []
    for raw in lines:
        content = json.loads(raw)["response"]["body"]["choices"][0]["message"]["content"]
        if content == truncate:
            raw = raw[: raw.index(b'"response"') + 20]  # stops mid-line, no newline: a cut download
        elif content == garble:
            raw = b"\x00\xff not json, no id\n"
        out.append(raw)
    out.sort(key=lambda r: not r.endswith(b"\n"))  # the cut line last, as a cut file ends
    path.write_bytes(b"".join(out))


def submit_and_corrupt(df, srv, make_client, wait_batch, **kw):
    client = make_client(srv)
    job = df.llm.map("{w}", model="gpt-4o-mini", client=client, wait=False, **dict(FAST, **kw))
    (batch_id,) = job.batch_ids
    assert wait_batch(client, batch_id).status == "completed"
    corrupt_output(srv, batch_id, truncate="beta", garble="epsilon")
    return job


def test_corrupt_output_lines_are_sent_again_and_nothing_is_lost(make_server, make_client, wait_batch, words,
                                                                caplog):
    caplog.set_level(logging.WARNING, logger="pdbatch")
    before = words.copy(deep=True)
    srv = make_server()
    job = submit_and_corrupt(words, srv, make_client, wait_batch, max_retries=1)
    out = job.wait(progress=False, timeout=30).result()
    assert out["llm_output"].tolist() == words["w"].tolist()  # every row answered, on its own row
    assert out["llm_error"].isna().all()
    assert srv.stats.batches_created == 2  # the two unreadable rows went again, once
    messages = [r.getMessage() for r in caplog.records if r.name == "pdbatch" and r.levelno == logging.WARNING]
    assert any("1 unreadable line(s) recorded as failed answers (corrupt_line)" in m for m in messages)
    assert any("1 unreadable line(s) without a custom_id skipped" in m for m in messages)
    pd.testing.assert_frame_equal(words, before)


def test_corrupt_output_line_without_retries_is_an_error_cell(make_server, make_client, wait_batch, words):
    before = words.copy(deep=True)
    srv = make_server()
    job = submit_and_corrupt(words, srv, make_client, wait_batch, max_retries=0)
    out = job.wait(progress=False, timeout=30).result()
    good = ["a", "c", "d", "f"]
    assert out.loc[good, "llm_output"].tolist() == words.loc[good, "w"].tolist()
    assert out.loc[good, "llm_error"].isna().all()
    error = out.loc["b", "llm_error"]
    assert error.startswith("corrupt_line: line ") and "output-0000.jsonl is not valid JSON" in error
    assert pd.isna(out.loc["b", "llm_output"])
    assert out.loc["e", "llm_error"].startswith("no_answer") and pd.isna(out.loc["e", "llm_output"])
    assert out.attrs["pdbatch"]["counts"]["succeeded"] == 4
    assert job.result()["llm_output"].tolist() == out["llm_output"].tolist()  # read again: same, no raise
    pd.testing.assert_frame_equal(words, before)


def test_json_keys_named_like_columns_land_in_suffixed_columns(make_server, make_client):
    df = pd.DataFrame({"city": ["Paris", "Lima"], "llm_error_llm": ["mine", "mine"]})
    df.attrs = {"source": "cities.csv"}
    before = df.copy(deep=True)
    engine = ScriptedEngine(lambda text, body: json.dumps({"city": text.upper(), "llm_error": "said the model",
                                                           "size": len(text)}))
    srv = make_server(engine=engine)
    with pytest.warns(UserWarning) as caught:
        out = df.llm.map("Describe {city} in JSON", model="gpt-4o-mini", client=make_client(srv),
                         response_format="json", overwrite=True, **FAST)
    assert sorted(str(w.message) for w in caught if issubclass(w.category, UserWarning)) == [
        "the answers have a key 'city', which is already a column of the frame or the error column; "
        "its values are in the new column 'city_llm'",
        "the answers have a key 'llm_error', which is already a column of the frame or the error column; "
        "its values are in the new column 'llm_error_llm2'",
    ]
    assert list(out.columns) == ["city", "llm_error_llm", "city_llm", "llm_error_llm2", "size", "llm_error"]
    assert out["city"].tolist() == ["Paris", "Lima"] and out["llm_error_llm"].tolist() == ["mine", "mine"]
    assert out["city_llm"].tolist() == ["DESCRIBE PARIS IN JSON", "DESCRIBE LIMA IN JSON"]
    assert out["llm_error_llm2"].tolist() == ["said the model"] * 2 and out["llm_error"].isna().all()
    assert out.attrs["source"] == "cities.csv" and out.attrs["pdbatch"]["counts"]["succeeded"] == 2
    assert df.attrs == {"source": "cities.csv"}
    pd.testing.assert_frame_equal(df, before)


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Review(BaseModel):
    mood: Mood
    stars: int


def test_pydantic_enum_answers_write_to_parquet(make_server, make_client, tmp_path):
    df = pd.DataFrame({"text": ["great", "awful"]})
    df.attrs = {"owner": "qa"}
    engine = ScriptedEngine(lambda text, body: json.dumps({"mood": "happy" if "great" in text else "sad",
                                                           "stars": 5 if "great" in text else 1}))
    out = df.llm.map("{text}", model="gpt-4o-mini", client=make_client(make_server(engine=engine)),
                     response_format=Review, **FAST)
    assert out["mood"].tolist() == ["happy", "sad"] and out["stars"].tolist() == [5, 1]
    assert out.attrs["owner"] == "qa" and "pdbatch" in out.attrs
    out.drop(columns=["llm_error"]).to_parquet(tmp_path / "reviews.parquet")
    assert pd.read_parquet(tmp_path / "reviews.parquet")["mood"].tolist() == ["happy", "sad"]
