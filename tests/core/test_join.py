"""Tests for pdbatch/join.py: answers land on the right rows, whatever the order, as new columns."""

from __future__ import annotations

import os
import re
import tempfile

import orjson
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdbatch.core.batchfile import read_answers, write_shards
from pdbatch.errors import ColumnCollisionError, DuplicateIdError
from pdbatch.core.ids import check_unique, custom_ids
from pdbatch.core.answers import NO_ANSWER
from pdbatch.core.join import JoinStats, join_results
from pdbatch.core.parsing import response_format
from pdbatch.core.answers import Answers
from pdbatch.core.records import Request, Result, Usage
from pdbatch.core.template import Template, display_strings

TEXT = response_format(None).parse_text
JSON = response_format("json").parse_text


def ok(cid, content, finish="stop", usage=None):
    body = {"choices": [{"message": {"content": content}, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return Result(cid, body, status_code=200)


def fail(cid, code="server_error", message="boom", status=500):
    return Result(cid, None, {"code": code, "message": message}, status)


def answers(*results):
    return Answers.from_results(results)


def join(host, results, parse=TEXT, kind="text", **kw):
    kw.setdefault("output", "llm_output")
    kw.setdefault("error_column", "llm_error")
    ids = kw.pop("ids", None) or custom_ids(host.index)
    out, stats, errors = join_results(host, ids, answers(*results), parse, kind=kind, **kw)
    return out, stats, errors.tolist()


@pytest.fixture
def df():
    return pd.DataFrame({"city": ["Paris", "Lima", "Oslo", "Rome"], "n": [1, 2, 3, 4]},
                        index=pd.Index(["fr", "pe", "no", "it"], name="code"))


# ------------------------------------------------------------- placement


def test_shuffled_answers_land_on_their_rows(df):
    before = df.copy(deep=True)
    out, stats, errors = join(df, [ok("it", "R"), ok("fr", "P"), ok("no", "O"), ok("pe", "L")])
    assert out is not df
    pd.testing.assert_frame_equal(df, before)  # the host is never modified
    assert out.index.equals(df.index) and out.index.name == "code"
    assert list(out.columns) == ["city", "n", "llm_output", "llm_error"]
    assert out["llm_output"].tolist() == ["P", "L", "O", "R"]
    assert out["llm_error"].tolist() == [None] * 4
    pd.testing.assert_frame_equal(out[["city", "n"]], df)
    assert errors == [None] * 4
    assert (stats.rows, stats.succeeded, stats.failed, stats.unanswered) == (4, 4, 0, 0)


def test_non_unique_order_multiindex_host():
    mi = pd.MultiIndex.from_tuples([("b", 2), ("a", 1), ("b", 1)])
    host = pd.DataFrame({"x": [1, 2, 3]}, index=mi)
    out, _, _ = join(host, [ok("b|1", "third"), ok("b|2", "first"), ok("a|1", "second")])
    assert out.index.equals(mi)
    assert out["llm_output"].tolist() == ["first", "second", "third"]


@pytest.mark.parametrize("order", ["failure_then_success", "success_then_failure"])
def test_duplicate_custom_id_success_wins(df, order):
    pair = [fail("pe"), ok("pe", "L")]
    if order == "success_then_failure":
        pair.reverse()
    out, stats, errors = join(df, [ok("fr", "P"), *pair, ok("no", "O"), ok("it", "R")])
    assert out.loc["pe", "llm_output"] == "L"
    assert out.loc["pe", "llm_error"] is None
    assert errors[1] is None
    assert (stats.succeeded, stats.failed) == (4, 0)


def test_duplicate_failures_keep_an_error(df):
    out, stats, _ = join(df, [fail("pe", "a", "first"), fail("pe", "b", "second")])
    assert out.loc["pe", "llm_error"] in ("a: first", "b: second")
    assert pd.isna(out.loc["pe", "llm_output"])
    assert stats.failed == 1


def test_unknown_custom_ids_are_counted_and_ignored(df):
    out, stats, _ = join(df, [ok("fr", "P"), ok("xx", "?"), fail("yy"), ok("pe", "L")])
    assert stats.unknown_ids == 2
    assert len(out) == 4
    assert out["llm_output"].tolist()[:2] == ["P", "L"]
    assert "?" not in out["llm_output"].tolist()


def test_skipped_and_unanswered_reasons(df):
    out, stats, errors = join(df, [ok("pe", "L")], skipped={0: "missing value in column 'city'"})
    assert errors == ["missing value in column 'city'", None, NO_ANSWER, NO_ANSWER]
    assert out["llm_error"].tolist() == errors
    assert NO_ANSWER == "no_answer: no result came back for this row"
    assert (stats.skipped, stats.unanswered, stats.succeeded, stats.failed) == (1, 2, 1, 0)
    assert stats.to_dict() == {"rows": 4, "sent": 3, "succeeded": 1, "failed": 2, "skipped": 1, "unknown_ids": 0}


def test_unanswered_callable_gets_row_position(df):
    seen = []

    def why(pos):
        seen.append(pos)
        return f"batch_expired: row {pos} never ran"

    _, stats, errors = join(df, [ok("fr", "P")], unanswered=why)
    assert seen == [1, 2, 3]
    assert errors == [None, "batch_expired: row 1 never ran", "batch_expired: row 2 never ran",
                      "batch_expired: row 3 never ran"]
    assert stats.unanswered == 3


def test_per_row_failures_become_error_cells(df):
    results = [
        ok("fr", "partial", finish="length"),
        fail("pe", "context_length_exceeded", "too long", 400),
        Result("no", {"choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}]}, None, 200),
        ok("it", "fine"),
    ]
    out, stats, errors = join(df, results)
    assert errors == ["truncated: finish_reason=length (raise max_completion_tokens)",
                      "context_length_exceeded: too long", "refused: no", None]
    assert out["llm_output"].isna().tolist() == [True, True, True, False]
    assert (stats.succeeded, stats.failed) == (1, 3)


def test_parse_errors_become_error_cells(df):
    out, _, errors = join(df, [ok("fr", '{"a": 1}'), ok("pe", "not json"), ok("no", "[1]")],
                          parse=JSON, kind="json")
    assert errors[0] is None
    assert errors[1].startswith("invalid JSON")
    assert errors[2] == "expected a JSON object, got list"
    assert out["a"].tolist()[:1] == [1]
    assert out["a"].isna().tolist() == [False, True, True, True]


def test_usage_is_carried_into_stats(df):
    u = {"prompt_tokens": 7, "completion_tokens": 2}
    _, stats, _ = join(df, [ok("fr", "P", usage=u), ok("pe", "L", usage=u)])
    assert stats.usage == Usage(14, 4)


def test_no_error_column(df):
    out, _, errors = join(df, [ok("fr", "P")], error_column=None)
    assert list(out.columns) == ["city", "n", "llm_output"]
    assert errors[1] == NO_ANSWER


# --------------------------------------------------------- JSON columns


def test_json_expands_declared_columns_first_then_free_keys(df):
    fmt = response_format({"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}})
    results = [ok("pe", '{"a": "x", "z": 1, "b": 2}'), ok("fr", '{"b": 1, "y": true}'), ok("no", '{"b": "bad"}')]
    out, stats, errors = join(df, results, parse=fmt.parse_text, kind="schema", columns=list(fmt.columns))
    # free keys follow row order, so the columns do not depend on the order of the output file
    assert list(out.columns) == ["city", "n", "b", "a", "y", "z", "llm_error"]
    again, _, _ = join(df, results[::-1], parse=fmt.parse_text, kind="schema", columns=list(fmt.columns))
    pd.testing.assert_frame_equal(out, again)
    assert out["b"].tolist()[:2] == [1, 2]
    assert out.loc["pe", "a"] == "x" and pd.isna(out.loc["fr", "a"])
    assert out.loc["pe", "z"] == 1 and pd.isna(out.loc["fr", "z"])
    assert out.loc["fr", "y"] == True and pd.isna(out.loc["pe", "y"])  # noqa: E712
    assert errors[2].startswith("schema violation at /b")
    assert pd.isna(out.loc["no", "b"])
    assert stats.succeeded == 2


@pytest.mark.parametrize("broken", [False, True], ids=["all-decode", "one-not-json"])
def test_bulk_parser_matches_one_by_one(df, broken):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}},
                                               "k": {"type": "integer"}},
              "required": ["tags", "k"], "additionalProperties": False}
    fmt = response_format(schema)
    results = [ok("pe", '{"tags": ["a", "b"], "k": 1}'), ok("fr", '{"k": 2, "tags": ["c", "d"]}'),
               ok("it", '{"tags": ["x"], "k": "bad"}' if not broken else "not json"), ok("no", '{"tags": [], "k": 4}')]
    bulk, stats, errors = join(df, results, parse=fmt.text_parser(), kind="schema", columns=list(fmt.columns))
    single, stats1, errors1 = join(df, results, parse=fmt.parse_text, kind="schema", columns=list(fmt.columns))
    pd.testing.assert_frame_equal(bulk, single)
    assert errors == errors1 and stats.to_dict() == stats1.to_dict()
    # list values stay whole lists in their cells (equal lengths must not be broadcast into a 2-D array)
    assert bulk.loc["pe", "tags"] == ["a", "b"] and bulk.loc["fr", "tags"] == ["c", "d"]
    assert bulk.loc["no", "tags"] == []
    assert bulk["k"].tolist()[:3] == [2, 1, 4] and pd.isna(bulk.loc["it", "k"])
    assert errors[df.index.get_loc("it")].startswith("invalid JSON" if broken else "schema violation at /k")


def test_schema_columns_exist_even_when_nothing_answered(df):
    out, _, _ = join(df, [], parse=JSON, kind="schema", columns=["p", "q"])
    assert list(out.columns) == ["city", "n", "p", "q", "llm_error"]
    assert out["p"].isna().all()


def test_integers_beside_gaps_stay_integers(df):
    results = [ok("fr", '{"i": 1, "f": 1.5, "b": true, "s": "x", "full": 1}'),
               ok("pe", '{"i": 2, "f": 2, "b": false, "s": "y", "full": 2}'),
               ok("no", '{"full": 3}'), ok("it", '{"full": 4}')]
    out, _, _ = join(df, results, parse=JSON, kind="json")
    assert str(out["i"].dtype) == "Int64"
    assert out["i"].tolist()[:2] == [1, 2] and out["i"].isna().tolist() == [False, False, True, True]
    assert str(out["b"].dtype) == "boolean"
    assert out["f"].dtype == "float64"
    assert out["full"].dtype == "int64"
    assert out["full"].tolist() == [1, 2, 3, 4]


def test_text_integers_beside_gaps(df):
    out, _, _ = join(df, [ok("fr", "1"), ok("pe", "2")], parse=lambda t: (int(t), None))
    assert str(out["llm_output"].dtype) == "Int64"
    assert out["llm_output"].tolist()[:2] == [1, 2]


# ------------------------------------------------------------ collisions


def test_overwrite_replaces_existing_columns(df):
    host = df.assign(llm_output="old", llm_error="old")
    out, _, _ = join(host, [ok("fr", "new")], overwrite=True)
    assert list(out.columns) == ["city", "n", "llm_output", "llm_error"]
    assert out.loc["fr", "llm_output"] == "new"
    assert out.loc["pe", "llm_error"] == NO_ANSWER
    assert host["llm_output"].tolist() == ["old"] * 4


def test_overwrite_never_lets_a_free_json_key_replace_an_input_column(df):
    # overwrite=True is for the columns pdbatch names itself; "n" is a key nobody asked for.
    before = df.copy(deep=True)
    with pytest.warns(UserWarning, match=r"key 'n'.*new column 'n_llm'"):
        out, _, errors = join(df, [ok("fr", '{"n": 10}')], parse=JSON, kind="json", overwrite=True)
    assert list(out.columns) == ["city", "n", "n_llm", "llm_error"]
    assert out["n"].tolist() == [1, 2, 3, 4]  # the input column is intact
    assert out["n_llm"].tolist()[0] == 10 and out["n_llm"].isna().tolist() == [False, True, True, True]
    assert errors[0] is None
    pd.testing.assert_frame_equal(df, before)


def test_existing_output_column_raises_collision(df):
    # regression: join.py passed hint= which ColumnCollisionError did not take, so a collision raised TypeError
    host = df.assign(llm_output="old")
    with pytest.raises(ColumnCollisionError) as info:
        join(host, [ok("fr", "new")], hint="The answers are kept: call job.result(overwrite=True).")
    assert info.value.columns == ["llm_output"]
    assert "overwrite=True" in str(info.value)
    assert str(info.value).endswith("The answers are kept: call job.result(overwrite=True).")


def test_free_json_key_collision_lands_in_a_suffixed_column(df):
    before = df.copy(deep=True)
    with pytest.warns(UserWarning) as caught:
        out, stats, errors = join(df, [ok("fr", '{"city": "x", "new": 1}'), ok("pe", '{"new": 2}')], parse=JSON,
                                  kind="json")
    assert [str(w.message) for w in caught] == [
        "the answers have a key 'city', which is already a column of the frame or the error column; "
        "its values are in the new column 'city_llm'"]
    assert list(out.columns) == ["city", "n", "city_llm", "new", "llm_error"]
    assert out["city"].tolist() == df["city"].tolist()
    assert out["city_llm"].tolist()[0] == "x" and pd.isna(out["city_llm"].tolist()[1])
    assert out["new"].tolist()[:2] == [1, 2]
    assert errors[:2] == [None, None] and stats.succeeded == 2
    pd.testing.assert_frame_equal(df, before)


def test_free_json_key_named_like_error_column_is_not_lost(df):
    # regression: the error column silently replaced the answers' 'llm_error' values; later it raised after paying
    with pytest.warns(UserWarning, match=r"key 'llm_error'.*'llm_error_llm'"):
        out, _, errors = join(df, [ok("fr", '{"llm_error": 5, "a": 1}')], parse=JSON, kind="json")
    assert list(out.columns) == ["city", "n", "llm_error_llm", "a", "llm_error"]
    assert out["llm_error_llm"].tolist()[0] == 5
    assert out["llm_error"].tolist() == [None, NO_ANSWER, NO_ANSWER, NO_ANSWER] == errors


def test_suffix_counts_up_past_taken_names():
    host = pd.DataFrame({"a": [1], "a_llm": [2], "a_llm2": [3]})
    with pytest.warns(UserWarning) as caught:
        out, _, _ = join(host, [ok("0", '{"a": "new", "a_llm3": "own", "llm_error": "e"}')], parse=JSON,
                         kind="json", ids=["0"])
    assert len(caught) == 2
    # a_llm3 is the answers' own key, so "a" skips it; "llm_error" (the error column) goes to llm_error_llm
    assert list(out.columns) == ["a", "a_llm", "a_llm2", "a_llm4", "a_llm3", "llm_error_llm", "llm_error"]
    assert out.iloc[0].tolist() == [1, 2, 3, "new", "own", "e", None]


def test_schema_key_collision_still_follows_overwrite(df):
    # A schema's keys are known before sending: overwrite=True replaces them, as asked.
    schema = response_format({"type": "object", "properties": {"n": {"type": "integer"}}})
    out, _, _ = join(df, [ok("fr", '{"n": 10}')], parse=schema.text_parser(), kind="schema", columns=["n"],
                     overwrite=True)
    assert list(out.columns) == ["city", "n", "llm_error"] and out["n"].tolist()[0] == 10
    with pytest.raises(ColumnCollisionError):
        join(df, [ok("fr", '{"n": 10}')], parse=schema.text_parser(), kind="schema", columns=["n"])


def test_free_json_key_of_a_series_host_named_like_error_column():
    s = pd.Series(["a", "b"], name="w")
    with pytest.warns(UserWarning, match="llm_error_llm"):
        out, _, _ = join(s, [ok("0", '{"llm_error": 1, "w": 2}'), ok("1", '{"w": 3}')], parse=JSON, kind="json",
                         ids=["0", "1"])
    assert list(out.columns) == ["llm_error_llm", "w", "llm_error"]  # a Series host has no columns to avoid


@pytest.mark.parametrize("kind", ["text", "json"])
def test_host_attrs_are_kept(df, kind):
    df.attrs = {"source": "survey.csv", "meta": {"rows": 4}}
    content = "P" if kind == "text" else '{"x": 1}'
    out, _, _ = join(df, [ok("fr", content)], parse=TEXT if kind == "text" else JSON, kind=kind)
    assert out.attrs == {"source": "survey.csv", "meta": {"rows": 4}}
    out.attrs["meta"]["rows"] = 0
    assert df.attrs["meta"]["rows"] == 4  # a copy, not the host's own dict
    s = df["city"].copy()
    s.attrs = {"source": "s"}
    assert join(s, [ok("fr", content)], parse=TEXT if kind == "text" else JSON, kind=kind)[0].attrs == {"source": "s"}


def test_skipped_row_carries_no_value(df):
    # regression: the answer was placed beside the skip reason
    out, _, _ = join(df, [ok("fr", "P")], skipped={0: "missing value in column 'city'"})
    assert out.loc["fr", "llm_error"] == "missing value in column 'city'"
    assert pd.isna(out.loc["fr", "llm_output"])


# ----------------------------------------------------------- Series host


def test_series_host_text_returns_named_series():
    s = pd.Series(["a", "b", "c"], index=[10, 20, 30], name="word")
    out, stats, errors = join(s, [ok("30", "C"), ok("10", "A")])
    assert isinstance(out, pd.Series)
    assert out.name == "llm_output"
    assert out.index.equals(s.index)
    assert out.tolist()[0] == "A" and out.tolist()[2] == "C" and pd.isna(out.tolist()[1])
    assert errors == [None, NO_ANSWER, None]
    assert stats.succeeded == 2


def test_series_host_json_returns_frame_without_host_values():
    s = pd.Series(["a", "b"], index=["x", "y"], name="word")
    out, _, errors = join(s, [ok("y", '{"k": 1}')], parse=JSON, kind="json")
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(s.index)
    assert list(out.columns) == ["k", "llm_error"]
    assert out.loc["y", "k"] == 1 and out.loc["x", "llm_error"] == NO_ANSWER
    assert errors == [NO_ANSWER, None]


def test_join_stats_defaults():
    assert JoinStats().to_dict() == {"rows": 0, "sent": 0, "succeeded": 0, "failed": 0, "skipped": 0,
                                     "unknown_ids": 0}


# ------------------------------------------------------- property: round trip

_INT_ID = re.compile(r"-?[1-9][0-9]{0,17}|0")

indexes = st.one_of(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=25, unique=True).map(pd.Index),  # '' is refused
    st.lists(st.integers(-(2**70), 2**70), min_size=1, max_size=25, unique=True).map(pd.Index),
    st.lists(st.tuples(st.text(max_size=4), st.integers(-50, 50)), min_size=1, max_size=25, unique=True)
    .map(pd.MultiIndex.from_tuples),
    st.lists(st.one_of(st.text(min_size=1, max_size=3), st.integers(-20, 20)), min_size=1, max_size=25, unique=True)
    .map(lambda v: pd.Index(v, dtype=object)),
)


def _output_line(req: dict, outcome: str, numeric: bool) -> dict:
    cid = req["custom_id"]
    if numeric and _INT_ID.fullmatch(cid):
        cid = int(cid)  # a provider that types custom_id as a number: read_answers takes the fallback path
    if outcome == "error":
        return {"id": "batch_req", "custom_id": cid, "error": None,
                "response": {"status_code": 500, "request_id": "r",
                             "body": {"error": {"message": "boom", "type": "server_error", "code": "server_error"}}}}
    content = "echo:" + req["body"]["messages"][0]["content"]
    # "usable": not a plain success (no finish_reason), yet its content is the answer.
    finish = None if outcome == "usable" else "stop"
    return {"id": "batch_req", "custom_id": cid, "error": None,
            "response": {"status_code": 200, "request_id": "r",
                         "body": {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                               "finish_reason": finish}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}}}}


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=indexes, data=st.data())
def test_property_ids_round_trip_through_files_onto_the_right_rows(index, data):
    ids = custom_ids(index)
    if len(set(ids)) < len(ids):  # labels equal once stringified ("1" and 1, "a|b"+"c" and "a"+"b|c")
        with pytest.raises(DuplicateIdError):
            check_unique(ids)
        return
    check_unique(ids)
    n = len(ids)
    host = pd.DataFrame({"v": [f"row {i} {{}}" for i in range(n)]}, index=index)
    tpl = Template.parse("P:{v}")
    prompts = tpl.render({"v": display_strings(host["v"])}, n)
    reqs = [Request(cid, {"model": "m", "messages": [{"role": "user", "content": p}]}) for cid, p in zip(ids, prompts)]
    outcomes = data.draw(st.lists(st.sampled_from(["ok", "ok", "usable", "error", "missing", "skipped"]),
                                  min_size=n, max_size=n))
    # "skipped": the row was not sent this time, but a line for it is in the files; the skip wins.
    skipped = {i: "missing value in column 'v'" for i, o in enumerate(outcomes) if o == "skipped"}
    numeric = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(reqs, os.path.join(tmp, "in"), max_requests=data.draw(st.integers(1, 8)))
        assert sum(s.count for s in shards) == n
        lines = []
        for shard in shards:
            with open(shard.path, "rb") as fh:
                for raw in fh:
                    req = orjson.loads(raw)
                    outcome = outcomes[ids.index(req["custom_id"])]
                    if outcome != "missing":
                        lines.append(_output_line(req, outcome, numeric))
        lines = data.draw(st.permutations(lines))
        n_files = data.draw(st.integers(1, 3))
        paths = []
        for k in range(n_files):
            path = os.path.join(tmp, f"out-{k}.jsonl")
            with open(path, "wb") as fh:
                for line in lines[k::n_files]:
                    fh.write(orjson.dumps(line) + b"\n")
            paths.append(path)
        got = read_answers(paths)
    out, stats, errors = join_results(host, ids, got, TEXT, kind="text", output="llm_output",
                                      error_column="llm_error", skipped=skipped)
    # The same lines as Result records (lists, one parse per answer) join to the same frame.
    listed = Answers.from_results(Result.from_line(line) for line in lines)
    out2, stats2, errors2 = join_results(host, ids, listed, lambda t: (t, None), kind="text", output="llm_output",
                                         error_column="llm_error", skipped=skipped)
    pd.testing.assert_frame_equal(out, out2)
    errors, errors2 = errors.tolist(), errors2.tolist()
    assert errors2 == errors and stats2.to_dict() == stats.to_dict()
    assert out.index.equals(host.index)
    assert out["v"].tolist() == host["v"].tolist()
    values = out["llm_output"].tolist()
    for i, outcome in enumerate(outcomes):
        if outcome in ("ok", "usable"):
            assert values[i] == f"echo:P:row {i} {{}}"
            assert errors[i] is None
        elif outcome == "skipped":
            assert pd.isna(values[i]) and errors[i] == skipped[i]
        elif outcome == "error":
            assert pd.isna(values[i]) and errors[i] == "server_error: boom"
        else:
            assert pd.isna(values[i]) and errors[i] == NO_ANSWER
    assert out["llm_error"].tolist() == errors
    assert stats.succeeded == outcomes.count("ok") + outcomes.count("usable")
    assert stats.skipped == outcomes.count("skipped")
    assert stats.unanswered == outcomes.count("missing")
    assert stats.unknown_ids == 0
    assert stats.usage.prompt_tokens == len(lines) - outcomes.count("error")


# ------------------------------------------------------------- answers parsed as they arrive


SCHEMA = {"type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"], "additionalProperties": False}


def test_preparsed_answers_join_the_same_and_a_stale_entry_is_parsed_again(df):
    from pdbatch.core.fields import Parsed, preparse

    parse = response_format(SCHEMA).text_parser()
    first = answers(ok("fr", '{"v": 1}'), ok("pe", '{"v": "x"}'), fail("no"), ok("it", '{"v": 4}'))
    early = preparse(first, parse)
    assert isinstance(early, Parsed) and len(early) == 3  # the plain successes only
    from pdbatch.core.columns import objects
    assert objects(early.columns["v"]).tolist() == [1, None, 4]  # "pe" fails the schema: no value
    # "it" was answered again since (another attempt): its stored content differs from the parsed one.
    now = answers(ok("fr", '{"v": 1}'), ok("pe", '{"v": "x"}'), fail("no"), ok("it", '{"v": 40}'))
    kw = dict(kind="schema", output="llm_output", error_column="llm_error", columns=["v"])
    plain, _, plain_errors = join_results(df, custom_ids(df.index), now, parse, **kw)
    fast, _, fast_errors = join_results(df, custom_ids(df.index), now, parse, parsed=early, **kw)
    pd.testing.assert_frame_equal(plain, fast)
    assert fast_errors.tolist() == plain_errors.tolist()
    assert fast["v"].tolist()[0] == 1 and fast["v"].tolist()[3] == 40  # not the stale 4
    assert fast_errors[1] is not None and fast_errors[2] is not None


def test_answers_in_row_order_join_as_shuffled_ones_do_and_the_parsed_columns_are_handed_over(df):
    from pdbatch.core.fields import preparse

    parse = response_format(SCHEMA).text_parser()
    lines = [ok("fr", '{"v": 1}'), ok("pe", '{"v": 2}'), ok("no", '{"v": 3}'), ok("it", '{"v": 4}')]
    kw = dict(kind="schema", output="llm_output", error_column="llm_error", columns=["v"])
    got = {}
    for name, order in {"in order": lines, "shuffled": lines[::-1], "one unknown": lines + [ok("xx", '{"v": 9}')]}.items():
        early = preparse(answers(*order), parse)
        got[name], stats, _ = join_results(df, custom_ids(df.index), answers(*order), parse, parsed=early, **kw)
        assert early.columns == {} and len(early) == 0  # handed over and emptied: a million rows' values are not held twice
        assert stats.unknown_ids == (name == "one unknown")
    for name in ("shuffled", "one unknown"):
        pd.testing.assert_frame_equal(got["in order"], got[name])
    assert got["in order"]["v"].tolist() == [1, 2, 3, 4]


TAGGED = {"type": "object", "properties": {"v": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["v", "tags"], "additionalProperties": False}


def _arrow_answers(parts):
    """Answers whose Arrow columns hold one chunk per part, as the job store gives a job's shards."""
    shards = [answers(*p) for p in parts]
    return Answers(**{name: pa.chunked_array([c for a in shards for c in a.arrow(name).chunks])
                      for name in ("custom_id",) + Answers.COLUMNS})


@pytest.mark.parametrize("labels", ["range", "text"])
@pytest.mark.parametrize("case", ["shards out of order", "one line moved to another shard", "a gap in a shard"])
def test_shards_stored_out_of_order_join_as_answers_in_row_order_do(case, labels):
    from pdbatch.core.columns import RUN_ROWS
    from pdbatch.core.fields import Parsed, preparse

    n = 3 * RUN_ROWS
    host = pd.DataFrame({"x": range(n)}, index=None if labels == "range" else [f"r{i}" for i in range(n)])
    ids = custom_ids(host.index)
    lines = [ok(cid, f'{{"v": {i}, "tags": ["t{i % 3}", "u"]}}') for i, cid in enumerate(ids)]
    shards = [lines[k:k + RUN_ROWS] for k in range(0, n, RUN_ROWS)]
    parts = [shards[2], shards[0], shards[1]]
    if case == "one line moved to another shard":
        parts = [shards[2] + shards[0][:1], shards[0][1:], shards[1]]
    gap = case == "a gap in a shard"
    if gap:
        parts = [shards[2], shards[0][:10] + shards[0][11:], shards[1]]
    parse = response_format(TAGGED).text_parser()
    kw = dict(kind="schema", output="llm_output", error_column="llm_error", columns=["v", "tags"])
    want, _, _ = join_results(host, ids, answers(*lines), parse, **kw)
    parsed = Parsed.concat([preparse(answers(*p), parse) for p in parts])
    got, stats, _ = join_results(host, ids, _arrow_answers(parts), parse, parsed=parsed, **kw)
    if gap:  # the row with no answer says so, the others are as if answered in order
        assert got["llm_error"].iloc[10] == NO_ANSWER and stats.unanswered == 1
        got, want = got.drop(index=got.index[10]), want.astype({"v": "Int64"}).drop(index=want.index[10])  # a gap makes v nullable
    pd.testing.assert_frame_equal(got, want)
    assert got["tags"].iloc[4] == ["t1", "u"] and got["v"].iloc[-1] == n - 1


def test_answers_parsed_in_pieces_join_as_answers_parsed_at_once():
    from pdbatch.core.fields import PARSE_ROWS, preparse

    n = PARSE_ROWS + 300  # two pieces; a key only the second has, and failures in both
    host = pd.DataFrame({"x": range(n)})
    ids = custom_ids(host.index)
    texts = [f'{{"v": {i}}}' for i in range(n)]
    texts[5] = "not json"
    texts[PARSE_ROWS + 7] = '{"v": 1, "late": [1, 2]}'
    texts[PARSE_ROWS + 9] = "[1]"
    lines = [ok(cid, t) for cid, t in zip(ids, texts)]
    parse = response_format("json").text_parser()
    kw = dict(kind="json", output="llm_output", error_column="llm_error")
    want, _, want_errors = join_results(host, ids, answers(*lines), parse, **kw)
    early = preparse(answers(*lines), parse)
    assert [len(c.chunks) for c in early.columns.values() if isinstance(c, pa.ChunkedArray)] == [1, 1]  # one buffer each
    got, _, errors = join_results(host, ids, answers(*lines), parse, parsed=early, **kw)
    pd.testing.assert_frame_equal(got, want)
    assert errors.tolist() == want_errors.tolist() and errors[5].startswith("invalid JSON") and errors[PARSE_ROWS + 9] is not None
    assert list(got.columns) == ["x", "v", "late", "llm_error"] and got["late"].iloc[PARSE_ROWS + 7] == [1, 2]
    assert got["late"].isna().sum() == n - 1


def test_preparse_of_text_answers_is_nothing(df):
    from pdbatch.core.fields import preparse

    assert preparse(answers(ok("fr", "x")), response_format(None).text_parser()) is None
    assert preparse(answers(), response_format(SCHEMA).text_parser()) is None


# ------------------------------------------------------------ raw_column


def texts(col):
    """A column's cells with missing values as None (a text column may hold NaN or pd.NA for them)."""
    return [None if pd.isna(v) else v for v in col.tolist()]


def test_raw_column_keeps_the_text_of_every_answer_failed_or_not(df):
    results = [ok("fr", '{"p": 1}'), ok("pe", "{not json"), ok("no", '{"p": 3', finish="length"), fail("it")]
    out, stats, errors = join(df, results, parse=JSON, kind="schema", columns=["p"], raw_column="llm_raw")
    assert list(out.columns) == ["city", "n", "p", "llm_raw", "llm_error"]
    assert texts(out["llm_raw"]) == ['{"p": 1}', "{not json", '{"p": 3', None]
    assert out.loc["fr", "p"] == 1 and out["p"].iloc[1:].isna().all()
    assert errors[1].startswith("invalid JSON") and errors[2].startswith("truncated") and errors[3]
    assert stats.succeeded == 1 and stats.failed == 3


def test_raw_column_is_none_for_skipped_and_unanswered_rows(df):
    # a skipped row's stray answer is not shown as its raw text
    out, _, _ = join(df, [ok("fr", "P"), ok("pe", "L")], skipped={0: "missing value in column 'city'"},
                     raw_column="llm_raw")
    assert texts(out["llm_raw"]) == [None, "L", None, None]
    assert out.loc["pe", "llm_output"] == "L"


def test_raw_column_of_a_duplicate_custom_id_is_the_kept_answer(df):
    out, _, _ = join(df, [ok("fr", "first"), fail("fr"), ok("fr", "second"), fail("pe")], raw_column="raw")
    assert out.loc["fr", "raw"] == "second" and out.loc["fr", "llm_output"] == "second"
    assert pd.isna(out.loc["pe", "raw"])


def test_raw_column_from_arrow_answers_of_a_results_file(df, tmp_path):
    line = {"id": "b", "custom_id": "pe", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "oops{"}, "finish_reason": "stop"}]}}, "error": None}
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    a = read_answers([str(path)], "chat")
    out, _, errors = join_results(df, custom_ids(df.index), a, JSON, kind="json", output="o",
                                  error_column="e", raw_column="raw")
    assert texts(out["raw"]) == [None, "oops{", None, None]
    assert errors[1].startswith("invalid JSON")


def test_raw_column_on_a_series_host_gives_a_frame():
    s = pd.Series(["a", "b"], index=["x", "y"], name="word")
    out, _, errors = join(s, [ok("y", "B"), ok("x", "A", finish="length")], raw_column="raw")
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["llm_output", "raw", "llm_error"]
    assert texts(out["raw"]) == ["A", "B"] and pd.isna(out.loc["x", "llm_output"])
    assert errors[0].startswith("truncated")


def test_raw_column_clash_follows_overwrite(df):
    with pytest.raises(ColumnCollisionError):
        join(df, [ok("fr", "P")], raw_column="city")
    out, _, _ = join(df, [ok("fr", "P")], raw_column="city", overwrite=True)
    assert texts(out["city"]) == ["P", None, None, None]


def test_free_json_key_named_like_the_raw_column_is_moved(df):
    with pytest.warns(UserWarning, match="raw_llm"):
        out, _, _ = join(df, [ok("fr", '{"raw": 1}')], parse=JSON, kind="json", raw_column="raw")
    assert out.loc["fr", "raw_llm"] == 1 and out.loc["fr", "raw"] == '{"raw": 1}'


def test_no_raw_column_by_default(df):
    out, _, _ = join(df, [ok("fr", "P")])
    assert list(out.columns) == ["city", "n", "llm_output", "llm_error"]


# ------------------------------------------- schema columns when all fail


SCHEMA_COLS = ["p", "q"]


@pytest.mark.parametrize("case", ["api_errors", "invalid_json", "all_skipped", "truncated"])
@pytest.mark.parametrize("raw", [None, "llm_raw"])
def test_schema_columns_exist_in_order_when_every_row_failed(df, case, raw):
    ids = custom_ids(df.index)
    skipped = {}
    if case == "api_errors":
        results = [fail(c) for c in ids]
    elif case == "invalid_json":
        results = [ok(c, "{nope") for c in ids]
    elif case == "truncated":
        results = [ok(c, '{"p": 1', finish="length") for c in ids]
    else:
        results, skipped = [], {i: "missing value in column 'city'" for i in range(len(ids))}
    out, stats, errors = join(df, results, parse=JSON, kind="schema", columns=SCHEMA_COLS, skipped=skipped,
                              raw_column=raw)
    assert list(out.columns) == ["city", "n", *SCHEMA_COLS, *([raw] if raw else []), "llm_error"]
    assert out[SCHEMA_COLS].isna().all().all()
    assert all(e is not None for e in errors) and stats.succeeded == 0


@pytest.mark.parametrize("case", ["api_errors", "invalid_json", "all_skipped"])
def test_schema_columns_exist_on_a_series_host_when_every_row_failed(case):
    s = pd.Series(["a", None], index=["x", "y"], name="word")
    results = {"api_errors": [fail("x"), fail("y")], "invalid_json": [ok("x", "{"), ok("y", "[")],
               "all_skipped": []}[case]
    skipped = {0: "missing", 1: "missing"} if case == "all_skipped" else {}
    out, _, _ = join(s, results, parse=JSON, kind="schema", columns=SCHEMA_COLS, skipped=skipped)
    assert list(out.columns) == [*SCHEMA_COLS, "llm_error"]
    assert out.index.equals(s.index) and out[SCHEMA_COLS].isna().all().all()


def test_answers_to_frame_gives_the_raw_text_by_custom_id():
    a = answers(ok("1", "{oops"), fail("2"))
    frame = a.to_frame()
    assert list(frame.columns) == ["custom_id", *Answers.COLUMNS]
    assert texts(frame["content"]) == ["{oops", None] and frame["ok"].tolist() == [True, False]
    assert texts(frame["error_code"]) == [None, "server_error"]


def test_preparsed_answers_known_by_their_segment_read_no_text_and_a_newer_segment_wins(df):
    """With ``origin`` (the store's segment of each answer) the join reads the texts of only the rows it must parse."""
    import numpy as np
    import pyarrow as pa

    from pdbatch.core.answers import Deferred
    from pdbatch.core.fields import preparse

    parse = response_format(SCHEMA).text_parser()
    early = preparse(answers(ok("fr", '{"v": 1}'), ok("pe", '{"v": 2}'), ok("it", '{"v": 4}')), parse, origin=7)
    assert early.origin.tolist() == [7, 7, 7]
    now = answers(ok("fr", '{"v": 1}'), ok("pe", '{"v": 2}'), fail("no"), ok("it", '{"v": 40}'))
    texts = now.arrow("content").combine_chunks()
    asked = []

    def fetch(rows):
        asked.extend(rows.tolist())
        return texts.take(pa.array(rows))

    lazy = Answers(content=Deferred(len(now), fetch), **{k: now.arrow(k) for k in ("custom_id",) + Answers.COLUMNS
                                                        if k != "content"})
    lazy.origin = np.array([7, 7, 8, 9])  # "it" was answered again, in a later segment
    kw = dict(kind="schema", output="llm_output", error_column="llm_error", columns=["v"])
    out, _, errors = join_results(df, custom_ids(df.index), lazy, parse, parsed=early, **kw)
    assert out["v"].tolist()[:2] == [1, 2] and out["v"].tolist()[3] == 40 and errors[2] is not None
    assert sorted(asked) == [2, 3]  # the failed line (for its reason) and the re-answered one; never fr, pe
    plain, _, plain_errors = join_results(df, custom_ids(df.index), now, parse, **kw)
    pd.testing.assert_frame_equal(plain, out)
    assert plain_errors.tolist() == errors.tolist()


def test_answers_given_as_a_function_are_read_once_and_join_as_the_answers_do(df):
    parse = response_format(SCHEMA).text_parser()
    lines = [ok("fr", '{"v": 1}'), fail("pe"), ok("it", '{"v": "x"}'), ok("zz", '{"v": 9}')]
    kw = dict(kind="schema", output="llm_output", error_column="llm_error", columns=["v"])
    calls = []

    def read():
        calls.append(1)
        return answers(*lines)

    want, want_stats, want_errors = join_results(df, custom_ids(df.index), answers(*lines), parse, **kw)
    got, stats, errors = join_results(df, custom_ids(df.index), read, parse, **kw)
    assert calls == [1]
    pd.testing.assert_frame_equal(want, got)
    assert errors.tolist() == want_errors.tolist() and stats == want_stats and stats.unknown_ids == 1 and stats.failed == 2


def test_a_clean_shards_origin_and_errors_hold_one_value_not_one_per_row_and_join_the_same(df):
    """A shard parsed without an error keeps one origin and one (absent) error, not a million; the join is unchanged."""
    import numpy as np

    from pdbatch.core.fields import Parsed, preparse

    parse = response_format(SCHEMA).text_parser()
    clean, dirty = answers(ok("fr", '{"v": 1}'), ok("pe", '{"v": 2}')), answers(ok("no", '{"v": "x"}'), ok("it", '{"v": 4}'))
    a, b = preparse(clean, parse, origin=7), preparse(dirty, parse, origin=8)
    assert a.origin.strides == (0,) and a.errors.strides == (0,) and a.content_hash.strides == (0,)
    assert a.origin.tolist() == [7, 7] and a.errors.tolist() == [None, None]
    assert b.errors.strides != (0,) and b.errors[0] is not None and b.errors[1] is None  # a parse error: one per row
    same = Parsed.concat([a, preparse(clean, parse, origin=7)])
    assert same.origin.strides == (0,) and same.origin.tolist() == [7] * 4  # one value still
    both = Parsed.concat([a, b])
    assert both.origin.tolist() == [7, 7, 8, 8] and [e is None for e in both.errors] == [True, True, False, True]
    stored = Answers(**{name: pa.chunked_array([c for x in (clean, dirty) for c in x.arrow(name).chunks])
                        for name in ("custom_id",) + Answers.COLUMNS})
    stored.origin = np.array([7, 7, 8, 8])
    kw = dict(kind="schema", output="llm_output", error_column="llm_error", columns=["v"])
    want, _, want_errors = join_results(df, custom_ids(df.index), answers(*[ok("fr", '{"v": 1}'), ok("pe", '{"v": 2}'),
                                                                             ok("no", '{"v": "x"}'), ok("it", '{"v": 4}')]),
                                        parse, **kw)
    got, _, errors = join_results(df, custom_ids(df.index), stored, parse, parsed=both, **kw)
    pd.testing.assert_frame_equal(got, want)
    assert errors.tolist() == want_errors.tolist() and errors[2] is not None
