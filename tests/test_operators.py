"""``classify``, ``extract``, ``filter`` and ``preview`` end to end: the real openai SDK over HTTP against
the local Batch API server (tests/conftest.py), answers from ScriptedEngine. No mocks."""

from __future__ import annotations

import inspect
import json
import warnings

import pandas as pd
import pytest
from pydantic import BaseModel

import pdbatch
from pdbatch.errors import ColumnCollisionError, OptionError
from pdbatch.operators import FILTER_SCHEMA
from pdbatch.server.engines import ScriptedEngine

FAST = dict(poll_interval=0.02, max_poll_interval=0.1, progress=False, timeout=30)
LABELS = ["positive", "neutral", "negative"]  # not alphabetical: the order given must survive


def sent_lines(client):
    """Every request line uploaded to the server, decoded, from the batch input files."""
    out = []
    for f in client.files.list(purpose="batch"):
        out += [json.loads(x) for x in client.files.content(f.id).text.splitlines() if x]
    return out


@pytest.fixture
def reviews():
    return pd.DataFrame({"review": ["loved it", "it was fine", "hated it", "so so"],
                         "stars": [5, 3, 1, 2]}, index=pd.Index(["r9", "r2", "r7", "r1"], name="id"))


def sentiment(text, body):
    if "so so" in text:
        return '{"label": "meh"}'  # not a label: a schema violation, so a failed row
    return json.dumps({"label": "positive" if "loved" in text else "negative" if "hated" in text else "neutral"})


# ------------------------------------------------------------------ classify
def test_classify_gives_a_categorical_in_label_order_and_failed_rows_as_nan(make_server, make_client, reviews):
    eng = ScriptedEngine(sentiment)
    srv = make_server(engine=eng)
    out = reviews.llm.classify("{review}", labels=LABELS, model="gpt-4o-mini", client=make_client(srv), **FAST)
    assert list(out.index) == list(reviews.index) and list(out.columns) == ["review", "stars", "label", "llm_error"]
    assert isinstance(out["label"].dtype, pd.CategoricalDtype)
    assert list(out["label"].cat.categories) == LABELS
    assert out["label"].tolist()[:3] == ["positive", "neutral", "negative"] and pd.isna(out["label"]["r1"])
    assert out["llm_error"][:3].tolist() == [None] * 3 and "schema violation" in out["llm_error"]["r1"]
    schema = eng.bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == LABELS and schema["required"] == ["label"]


def test_classify_output_renames_the_column_and_works_on_a_series(make_server, make_client, reviews):
    srv = make_server(engine=ScriptedEngine(lambda text, body: json.dumps(
        {"mood": "negative" if "hated" in text else "positive"})))
    out = reviews["review"].llm.classify("{}", labels=["positive", "negative"], output="mood", model="m",
                                         client=make_client(srv), **FAST)
    assert list(out.columns) == ["mood", "llm_error"] and list(out.index) == list(reviews.index)
    assert out["mood"].tolist() == ["positive", "positive", "negative", "positive"]
    assert list(out["mood"].cat.categories) == ["positive", "negative"]


@pytest.mark.parametrize("labels, words", [
    ([], "non-empty list"), ("positive", "non-empty list"), (["a", "a"], "'a' appears more than once"),
    (["a", ""], "'' is not a non-empty string"), (["a", 1], "1 is not a non-empty string"), (None, "got None"),
])
def test_classify_bad_labels_raise_before_any_upload(make_server, make_client, reviews, labels, words):
    srv = make_server()
    with pytest.raises(OptionError, match="labels=") as err:
        reviews.llm.classify("{review}", labels=labels, model="m", client=make_client(srv), **FAST)
    assert words in str(err.value)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0


@pytest.mark.parametrize("kw, words", [
    (dict(response_format="json"), "drop response_format="), (dict(wait=False), "drop wait="),
    (dict(tempreature=0), "Did you mean temperature="), (dict(poll_interval=-1), "poll_interval"),
])
def test_classify_refuses_what_it_builds_and_checks_map_options_first(make_server, make_client, reviews, kw, words):
    srv = make_server()
    opts = dict(FAST, **kw)
    with pytest.raises(OptionError, match=words):
        reviews.llm.classify("{review}", labels=LABELS, model="m", client=make_client(srv), **opts)
    assert srv.stats.uploads == 0


# ------------------------------------------------------------------- extract
def test_extract_gives_one_column_per_field_in_the_order_given(make_server, make_client):
    eng = ScriptedEngine(lambda text, body: json.dumps({"price": text.split("$")[1], "city": None}))
    srv = make_server(engine=eng)
    df = pd.DataFrame({"listing": ["Loft, $1200", "Flat, $900"]}, index=[10, 20])
    out = df.llm.extract("{listing}", fields={"price": "the listed price in dollars", "city": None},
                         model="m", client=make_client(srv), **FAST)
    assert list(out.columns) == ["listing", "price", "city", "llm_error"] and list(out.index) == [10, 20]
    assert out["price"].tolist() == ["1200", "900"] and out["city"].tolist() == [None, None]
    props = eng.bodies[0]["response_format"]["json_schema"]["schema"]["properties"]
    assert list(props) == ["price", "city"]
    assert props["price"] == {"type": ["string", "null"], "description": "the listed price in dollars"}
    assert props["city"] == {"type": ["string", "null"]}  # None: no description


class Listing(BaseModel):
    rooms: int
    price: float


def test_extract_takes_a_pydantic_model_for_typed_columns(make_server, make_client):
    srv = make_server(engine=ScriptedEngine(lambda text, body: json.dumps(
        {"rooms": int(text[0]), "price": 99.5} if text[0].isdigit() else {"rooms": "many", "price": 1})))
    df = pd.DataFrame({"listing": ["3 rooms", "2 rooms", "lots"]})
    out = df.llm.extract("{listing}", fields=Listing, model="m", client=make_client(srv), **FAST)
    assert list(out.columns) == ["listing", "rooms", "price", "llm_error"]
    assert out["rooms"][:2].tolist() == [3, 2] and out["price"][:2].tolist() == [99.5, 99.5]
    assert out["llm_error"][2].startswith("schema violation")


@pytest.mark.parametrize("fields", [{}, {"price": 3}, {"": "x"}, "price", int, None])
def test_extract_bad_fields_raise_before_any_upload(make_server, make_client, fields):
    srv = make_server()
    with pytest.raises(OptionError, match="fields="):
        pd.DataFrame({"t": ["a"]}).llm.extract("{t}", fields=fields, model="m", client=make_client(srv), **FAST)
    assert srv.stats.uploads == 0


def test_extract_field_naming_the_error_column_is_refused_before_upload(make_server, make_client):
    srv = make_server()
    with pytest.raises(OptionError, match="error_column"):
        pd.DataFrame({"t": ["a"]}).llm.extract("{t}", fields=["llm_error"], model="m", client=make_client(srv),
                                               **FAST)
    assert srv.stats.uploads == 0


# -------------------------------------------------------------------- filter
def oracle(text, body):
    if "broken" in text:
        return "not json at all"
    return json.dumps({"reason": f"because {text.split()[0]}", "keep": text.startswith("folds")})


@pytest.fixture
def abstracts():
    return pd.DataFrame({"abstract": ["sorts lists", "folds proteins", "broken text", "folds RNA", None],
                         "year": [2001, 2002, 2003, 2004, 2005]}, index=["a", "b", "c", "d", "e"])


def test_filter_keeps_the_true_rows_with_index_and_columns(make_server, make_client, abstracts):
    eng = ScriptedEngine(oracle)
    srv = make_server(engine=eng)
    with pytest.warns(UserWarning) as record:
        out = abstracts.llm.filter("{abstract} is about protein folding", model="m", client=make_client(srv), **FAST)
    pd.testing.assert_frame_equal(out, abstracts.loc[["b", "d"]])
    assert out.attrs["pdbatch"]["filter"] == {"kept": 2, "dropped": 3, "failed": 2}
    assert eng.bodies[0]["response_format"]["json_schema"]["schema"]["properties"] == FILTER_SCHEMA["properties"]
    # failed rows are never dropped silently: the warning counts them and names their custom_ids
    message = str(record[0].message)
    assert "2 row(s)" in message and "'c', 'e'" in message and "keep_failed=True" in message


def test_filter_keep_failed_keeps_them_with_their_reason(make_server, make_client, abstracts):
    srv = make_server(engine=ScriptedEngine(oracle))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the user asked for them: no warning
        out = abstracts.llm.filter("{abstract} is about protein folding", keep_failed=True, error_column="why_not",
                                   model="m", client=make_client(srv), **FAST)
    assert list(out.index) == ["b", "c", "d", "e"] and list(out.columns) == ["abstract", "year", "why_not"]
    assert out["why_not"]["b"] is None and out["why_not"]["d"] is None
    assert "invalid JSON" in out["why_not"]["c"] and "missing value in column 'abstract'" in out["why_not"]["e"]


def test_filter_reason_keeps_the_models_reason(make_server, make_client, abstracts):
    srv = make_server(engine=ScriptedEngine(oracle))
    df = abstracts.loc[["a", "b", "d"]].assign(keep="mine", llm_error="mine")  # the map's own names are no clash
    out = df.llm.filter("{abstract} is about protein folding", reason=True, model="m", client=make_client(srv),
                        **FAST)
    assert list(out.index) == ["b", "d"] and list(out.columns) == ["abstract", "year", "keep", "llm_error", "reason"]
    assert out["reason"].tolist() == ["because folds", "because folds"] and out["keep"].tolist() == ["mine"] * 2
    named = df["abstract"].llm.filter("{} is about protein folding", reason="why", model="m",
                                      client=make_client(srv), **FAST)
    assert list(named.columns) == ["abstract", "why"] and list(named.index) == ["b", "d"]
    plain = df["abstract"].llm.filter("{} is about protein folding", model="m", client=make_client(srv), **FAST)
    pd.testing.assert_series_equal(plain, df["abstract"].loc[["b", "d"]])


@pytest.mark.parametrize("kw, error, words", [
    (dict(reason=True), ColumnCollisionError, "'reason'"),
    (dict(reason=1), OptionError, "reason="), (dict(keep_failed="yes"), OptionError, "keep_failed="),
    (dict(keep_failed=True, error_column="reason", reason=True), OptionError, "both name"),
    (dict(response_format=FILTER_SCHEMA), OptionError, "drop response_format="),
])
def test_filter_bad_arguments_raise_before_any_upload(make_server, make_client, kw, error, words):
    srv = make_server()
    df = pd.DataFrame({"abstract": ["x"], "reason": ["mine"]})
    with pytest.raises(error, match=words):
        df.llm.filter("{abstract} is true", model="m", client=make_client(srv), **kw, **FAST)
    assert srv.stats.uploads == 0


# ------------------------------------------------------------------- preview
MAP_ARGS = dict(model="gpt-4o-mini", system="You rate {stars}-star reviews.", temperature=0, seed=7,
                response_format={"type": "object", "properties": {"score": {"type": "integer"}}})


def test_preview_lines_are_what_map_uploads_and_nothing_is_sent(make_server, make_client, reviews, tmp_path, capsys):
    srv = make_server()
    client = make_client(srv)
    df = reviews.assign(review=["loved it", None, "hated it", "so so"])  # r2 is not sent, so not previewed
    lines = df.llm.preview("Review: {review}", rows=2, client=client, **MAP_ARGS, **FAST)
    assert srv.stats.uploads == 0 and srv.stats.batches_created == 0 and srv.stats.log == []
    assert len(pdbatch.jobs()) == 0  # no job created
    assert [x["custom_id"] for x in lines] == ["r9", "r7"]
    shown = capsys.readouterr().out
    assert "[system] You rate 5-star reviews." in shown and "[user] Review: loved it" in shown
    assert "input tokens" in shown and "Nothing was sent." in shown and "so so" not in shown

    df.llm.to_batch_file(tmp_path / "in.jsonl", "Review: {review}", **{k: v for k, v in MAP_ARGS.items()})
    written = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
    assert lines == written[:2]
    df.llm.map("Review: {review}", client=client, **MAP_ARGS, **FAST)
    assert lines == sent_lines(client)[:2] and len(pdbatch.jobs()) == 1


def test_preview_of_a_claude_model_counts_each_line_as_the_estimate_does(reviews, capsys):
    lines = reviews.llm.preview("Review: {review}", model="claude-haiku-4-5", max_tokens=50, rows=1)
    shown = capsys.readouterr().out
    est = reviews.llm.estimate("Review: {review}", model="claude-haiku-4-5", max_tokens=50, show=False)
    factor = est["token_factor"]
    assert factor > 1 and len(lines) == 1
    n = int(shown.split("counted x", 1)[0].rsplit("(", 1)[1].replace(",", ""))
    assert f"~{round(n * factor):,} input tokens ({n:,} counted x {factor:.2f} for Claude's tokenizer)" in shown
    assert "Nothing was sent." in shown


def test_preview_show_false_writes_nothing_and_rows_caps(reviews, capsys):
    lines = reviews.llm.preview("{review}", model="m", rows=10, show=False)
    assert [x["body"]["messages"][0]["content"] for x in lines] == reviews["review"].tolist()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("kw, words", [
    (dict(rows=0), "rows="), (dict(rows=True), "rows="), (dict(show="yes"), "show"),
    (dict(temprature=0), "Did you mean temperature="), (dict(backend="batch", workers=2), "workers="),
])
def test_preview_checks_its_arguments_like_map(make_server, make_client, reviews, kw, words):
    srv = make_server()
    with pytest.raises(OptionError, match=words):
        reviews.llm.preview("{review}", model="m", client=make_client(srv), **kw)
    assert srv.stats.uploads == 0


@pytest.mark.parametrize("method, own, absent", [
    ("classify", {"labels", "output"}, {"response_format", "wait"}),
    ("extract", {"fields"}, {"response_format", "wait", "output"}),
    ("filter", {"reason", "keep_failed", "error_column", "overwrite"}, {"response_format", "wait", "output"}),
    ("preview", {"rows", "show", "response_format", "wait"}, set()),
])
def test_operators_show_maps_parameters_beside_their_own(method, own, absent):
    params = inspect.signature(getattr(pdbatch.LLMAccessor, method)).parameters
    assert own | {"model", "system", "backend", "client", "cache", "poll_interval", "extra_body"} <= set(params)
    assert not absent & set(params)
    assert [n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD] == ["params"]


def test_operators_share_maps_cache_and_backends(make_server, make_client, reviews):
    eng = ScriptedEngine(sentiment)
    srv = make_server(engine=eng)
    first = reviews.llm.classify("{review}", labels=LABELS, model="m", client=make_client(srv), **FAST)
    again = reviews.llm.classify("{review}", labels=LABELS, model="m", client=make_client(srv), **FAST)
    pd.testing.assert_frame_equal(first, again)
    assert srv.stats.uploads == 1 and eng.calls == 4  # the second call is answered by map's cache
    live = reviews.loc[["r9", "r7"]].llm.classify("{review}", labels=LABELS, model="m", backend="realtime",
                                                  client=make_client(srv), cache=False, progress=False)
    assert live["label"].tolist() == ["positive", "negative"] and srv.stats.realtime_calls == 2


def test_preview_takes_map_options_and_passes_over_rows_not_sent(make_server, make_client):
    """raw_column= (a map option) is accepted; rows with a missing value are passed over, however many lead."""
    srv = make_server()
    df = pd.DataFrame({"t": [None] * 5 + ["a", "b", None, "c", "d"]})
    lines = df.llm.preview("{t}", model="m", raw_column="raw", rows=3, show=False, client=make_client(srv))
    assert [x["custom_id"] for x in lines] == ["5", "6", "8"]
    assert [x["body"]["messages"][0]["content"] for x in lines] == ["a", "b", "c"]
    assert len(df.llm.preview("{t}", model="m", rows=30, show=False, client=make_client(srv))) == 4
    assert srv.stats.uploads == 0 and len(srv.stats.log) == 0
