"""Tests for pdbatch/records.py: Request / Result / Usage / Answers and every output-line shape."""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pyarrow as pa
import pytest

from pdbatch.core.answers import answer_reason
from pdbatch.core.answers import Answers
from pdbatch.core.records import (CHAT_URL, EMBEDDINGS_URL, RECORD_VERSION, Request, Result, Usage, usage_counts)

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
         "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}


def chat_body(content="hi", finish="stop", refusal=None, usage=USAGE):
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": refusal},
                         "finish_reason": finish}],
            "usage": usage}


# Every output / error line shape in shared/reference/batch-api.md.
SUCCESS = {"id": "batch_req_1", "custom_id": "row-1",
           "response": {"status_code": 200, "request_id": "req_1", "body": chat_body()}, "error": None}
API_ERROR = {"id": "batch_req_2", "custom_id": "row-2",
             "response": {"status_code": 400, "request_id": "req_2",
                          "body": {"error": {"message": "too many tokens", "type": "invalid_request_error",
                                             "param": "messages", "code": "context_length_exceeded"}}},
             "error": None}
EXPIRED = {"id": "batch_req_3", "custom_id": "row-3", "response": None,
           "error": {"code": "batch_expired", "message": "not executed before the window expired"}}


# ------------------------------------------------------------------ Usage


def test_usage_add_and_total():
    u = Usage(10, 2) + Usage(5, 1, cached_tokens=4, reasoning_tokens=1)
    assert u == Usage(15, 3, 4, 1)
    assert u.total_tokens == 18


def test_usage_from_chat_body():
    assert Usage.from_body(chat_body()) == Usage(12, 5, 4, 2)


def test_usage_from_responses_style_body():
    body = {"usage": {"input_tokens": 5, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 2},
                      "output_tokens_details": {"reasoning_tokens": 1}}}
    assert Usage.from_body(body) == Usage(5, 3, 2, 1)


@pytest.mark.parametrize("body", [None, {}, {"usage": None}, {"usage": {}}])
def test_usage_absent_is_zero(body):
    assert Usage.from_body(body) == Usage()
    assert usage_counts(body) == (0, 0, 0, 0)


def test_usage_embeddings_body_without_completion():
    assert Usage.from_body({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == Usage(4, 0, 0, 0)


def test_usage_to_dict():
    assert Usage(10, 3, 2, 1).to_dict() == {"input_tokens": 10, "cached_tokens": 2, "output_tokens": 3,
                                           "reasoning_tokens": 1, "total_tokens": 13}


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Usage().prompt_tokens = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        Request("1", {}).custom_id = "2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Result("1").body = {}


# ---------------------------------------------------------------- Request


def test_request_line_is_batch_api_input_line():
    r = Request("7", {"model": "m", "messages": [{"role": "user", "content": "é {x}"}]})
    line = r.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {"custom_id": "7", "method": "POST", "url": CHAT_URL,
                                  "body": {"model": "m", "messages": [{"role": "user", "content": "é {x}"}]}}


def test_request_newlines_in_content_stay_on_one_line():
    line = Request("a", {"messages": [{"content": "x\ny\r\n"}]}).to_line()
    assert line.count(b"\n") == 1
    assert orjson.loads(line)["body"]["messages"][0]["content"] == "x\ny\r\n"


def test_request_round_trips_through_dict_with_version():
    r = Request("a|1", {"input": ["x"]}, EMBEDDINGS_URL)
    d = r.to_dict()
    assert d["v"] == RECORD_VERSION
    back = Request.from_dict(orjson.loads(orjson.dumps(d)))
    assert back == r and back.url == EMBEDDINGS_URL


def test_request_from_input_line_and_numeric_id():
    back = Request.from_dict(orjson.loads(Request("5", {"a": 1}).to_line()))
    assert back == Request("5", {"a": 1})
    assert Request.from_dict({"custom_id": 5, "body": {}}).custom_id == "5"
    assert Request.from_dict({"custom_id": "x", "body": {}}).url == CHAT_URL


# ----------------------------------------------------------------- Result


def test_success_line():
    r = Result.from_line(SUCCESS)
    assert r.ok
    assert r.custom_id == "row-1"
    assert r.status_code == 200
    assert r.request_id == "req_1"
    assert r.error is None
    assert r.body["choices"][0]["message"]["content"] == "hi"
    assert r.usage == Usage(12, 5, 4, 2)


def test_runtime_api_error_line():
    r = Result.from_line(API_ERROR)
    assert not r.ok
    assert r.body is None
    assert r.status_code == 400
    assert r.request_id == "req_2"
    assert r.error["code"] == "context_length_exceeded"
    assert r.error["message"] == "too many tokens"
    assert r.error["type"] == "invalid_request_error"
    assert r.error["status_code"] == 400


def test_expired_line():
    r = Result.from_line(EXPIRED)
    assert not r.ok
    assert r.body is None and r.status_code is None and r.request_id is None
    assert r.error == {"code": "batch_expired", "message": "not executed before the window expired"}


def test_error_line_with_null_code_keeps_type_and_status():
    line = {"custom_id": "x", "response": {"status_code": 429, "body": {"error": {
        "message": "slow down", "type": "requests", "code": None}}}, "error": None}
    r = Result.from_line(line)
    assert r.error["code"] is None
    assert r.error["type"] == "requests" and r.error["status_code"] == 429


def test_error_line_with_non_json_body():
    line = {"custom_id": "x", "response": {"status_code": 502, "body": "Bad gateway"}, "error": None}
    r = Result.from_line(line)
    assert r.error == {"message": "Bad gateway", "code": None, "status_code": 502}


def test_line_with_neither_response_nor_error():
    r = Result.from_line({"custom_id": "x", "response": None, "error": None})
    assert r.error["code"] == "no_response"
    assert not r.ok


def test_top_level_error_beside_ok_response_is_a_failure():
    line = dict(SUCCESS, error={"code": "server_error", "message": "boom"})
    r = Result.from_line(line)
    assert not r.ok and r.error["code"] == "server_error"  # the body stays: its tokens were billed
    assert r.error["code"] == "server_error" and r.status_code == 200


def test_numeric_custom_id_becomes_string():
    assert Result.from_line(dict(SUCCESS, custom_id=17)).custom_id == "17"


def test_from_line_does_not_alias_input_error_dict():
    line = orjson.loads(orjson.dumps(API_ERROR))
    r = Result.from_line(line)
    assert "status_code" not in line["response"]["body"]["error"]
    assert r.error is not line["response"]["body"]["error"]


@pytest.mark.parametrize("line", [SUCCESS, API_ERROR, EXPIRED], ids=["success", "api_error", "expired"])
def test_result_round_trips_through_dict(line):
    r = Result.from_line(line)
    d = orjson.loads(orjson.dumps(r.to_dict()))
    assert d["v"] == RECORD_VERSION
    back = Result.from_dict(d)
    assert back == r
    assert back.request_id == r.request_id  # request_id is not part of ==


def test_failure_records_local_reason():
    r = Result.failure("9", "too_large", "request too large", status_code=400)
    assert not r.ok
    assert r.error == {"code": "too_large", "message": "request too large", "status_code": 400}
    assert Result.failure("9", "c", "m").error == {"code": "c", "message": "m"}


# ---------------------------------------------------------------- Answers


def test_answers_from_every_line_shape():
    refusal = {"custom_id": "r", "response": {"status_code": 200, "body": chat_body(None, "stop", "no")}}
    truncated = {"custom_id": "t", "response": {"status_code": 200, "body": chat_body("par", "length", usage=None)}}
    nochoice = {"custom_id": "n", "response": {"status_code": 200, "body": {"choices": []}}}
    bad_gateway = {"custom_id": "g", "response": {"status_code": 502, "body": "Bad gateway"}}
    lines = [SUCCESS, API_ERROR, EXPIRED, refusal, truncated, nochoice, bad_gateway]
    a = Answers.from_results(Result.from_line(x) for x in lines)
    assert len(a) == 7
    assert a.custom_id == ["row-1", "row-2", "row-3", "r", "t", "n", "g"]
    assert a.status_code == [200, 400, None, 200, 200, 200, 502]
    assert a.content == ["hi", None, None, None, "par", None, None]
    assert a.refusal == [None, None, None, "no", None, None, None]
    assert a.finish_reason == ["stop", None, None, "stop", "length", None, None]
    assert a.has_choice == [True, False, False, True, True, False, False]
    assert a.error_code == [None, "context_length_exceeded", "batch_expired", None, None, None, None]
    assert a.error_message == [None, "too many tokens", "not executed before the window expired",
                               None, None, None, "Bad gateway"]
    assert a.ok == [True, False, False, False, False, False, False]
    reasons = [answer_reason(*row) for row in zip(a.status_code, a.content, a.finish_reason, a.refusal,
                                                  a.has_choice, a.error_code, a.error_message)]
    assert reasons == [None, "context_length_exceeded: too many tokens",
                       "batch_expired: not executed before the window expired", "refused: no",
                       "truncated: finish_reason=length (raise max_completion_tokens)",
                       "malformed response: no choices", "http_502: Bad gateway"]
    assert a.usage == Usage(24, 10, 8, 4)  # SUCCESS and the refusal carry USAGE


def test_answers_error_code_falls_back_to_type():
    line = {"custom_id": "x", "response": {"status_code": 429, "body": {"error": {
        "message": "slow", "type": "requests", "code": None}}}}
    a = Answers.from_results([Result.from_line(line)])
    assert a.error_code == ["requests"]


def test_answers_non_string_content_is_stringified():
    a = Answers.from_results([Result("1", {"choices": [{"message": {"content": 42}, "finish_reason": "stop"}]})])
    assert a.content == ["42"]


def test_answers_extend_appends_and_adds_usage():
    a = Answers.from_results([Result.from_line(SUCCESS)])
    b = Answers.from_results([Result.from_line(EXPIRED), Result.from_line(SUCCESS)])
    a.extend(b)
    assert a.custom_id == ["row-1", "row-3", "row-1"]
    assert a.error_code == [None, "batch_expired", None]
    assert a.usage == Usage(24, 10, 8, 4)
    assert all(len(getattr(a, name)) == 3 for name in ("custom_id",) + Answers.COLUMNS)


def test_empty_answers():
    a = Answers.from_results([])
    assert len(a) == 0 and a.usage == Usage()


def _arrow_answers(ids, content, tokens):
    n = len(ids)
    return Answers(custom_id=pa.chunked_array([pa.array(ids)]), status_code=pa.array([200] * n),
                   content=pa.array(content, pa.string()), finish_reason=pa.array(["stop"] * n),
                   refusal=pa.nulls(n, pa.string()), has_choice=pa.array([True] * n),
                   error_code=pa.nulls(n, pa.string()), error_message=pa.nulls(n, pa.string()),
                   ok=pa.array([c is not None for c in content]), prompt_tokens=pa.array(tokens, pa.int64()),
                   completion_tokens=pa.array([1] * n, pa.int64()), cached_tokens=pa.array([0] * n, pa.int64()),
                   reasoning_tokens=pa.array([0] * n, pa.int64()))


def test_answers_arrow_columns_read_as_lists_and_stay_arrow_when_extended():
    a = _arrow_answers(["1", "2"], ["x", None], [3, 4])
    b = _arrow_answers(["3"], ["z"], [5])
    assert a.usage == Usage(7, 2) and len(a) == 2
    a.extend(b)
    assert a.is_arrow("content") and a.arrow("content").num_chunks == 2
    assert a.take("content", np.array([2, 0])) == ["z", "x"]
    assert a.usage == Usage(12, 3)
    assert a.content == ["x", None, "z"] and a.ok == [True, False, True]  # lists on attribute access
    assert not a.is_arrow("content") and a.is_arrow("custom_id")
    assert a.take("content", np.array([1])) == [None]


def test_answers_mixed_arrow_and_list_extend_and_compare():
    listed = Answers.from_results([Result.from_line(SUCCESS)])
    arrow = _arrow_answers(["9"], ["y"], [2])
    empty = Answers()
    empty.extend(arrow)  # an empty start takes the Arrow columns as they are
    assert empty == arrow and empty.arrow("custom_id").to_pylist() == ["9"]
    arrow.extend(listed)  # Arrow then list: becomes lists
    assert arrow.custom_id == ["9", "row-1"] and arrow.content == ["y", "hi"]
    assert arrow.usage == Usage(2 + 12, 1 + 5, 4, 2)
    listed.extend(_arrow_answers(["8"], ["w"], [1]))
    assert listed.custom_id == ["row-1", "8"] and listed.prompt_tokens == [12, 1]
    assert listed != arrow and Answers() == Answers()
    with pytest.raises(TypeError, match="unknown columns"):
        Answers(contents=[])
    with pytest.raises(ValueError, match="one length"):
        Answers(custom_id=["1"], content=["hi"])
